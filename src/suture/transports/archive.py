"""Tar archives of images: ``oci-archive:`` (a tarred OCI layout) and ``docker-archive:``.

Reading never extracts to disk. The archive's member headers are indexed once;
blobs are then read in place with ``pread`` on a file descriptor the source
keeps open for its lifetime (so an archive can be replaced on disk by a write
while an image read from it is still in use). An archive that is itself gzip
or zstd compressed (``docker save | gzip``) is first decompressed into an
anonymous temporary file. A tar without its end-of-archive marker, or whose
last member is cut short, is a :class:`~suture.errors.TransportError`.

``oci-archive:FILE[:TAG|@DIGEST]`` selects an image as ``oci:`` does (see
:mod:`suture.transports.layout`). Writing replaces the whole file with a
layout holding just the one image (as skopeo does): tags of an earlier archive
at that path are not kept.

``docker-archive:FILE[:NAME:TAG]`` is the ``docker save`` format:
``manifest.json`` lists each image's ``Config``, ``RepoTags`` and ``Layers``
(paths inside the tar). Every variant is read through ``manifest.json``: the
legacy ``<id>/layer.tar`` layout of docker < 25, skopeo's ``<diff_id>.tar``
files with ``<id>/layer.tar`` symlinks, and docker 25+'s ``blobs/sha256/<hex>``.
Reading gives an :class:`~suture.oci.image.Image` with a Docker schema 2
manifest built from the config and the layers as stored: an uncompressed layer
is ``application/vnd.docker.image.rootfs.diff.tar`` with its diff_id as digest;
a compressed one (detected by magic bytes) keeps its gzip/zstd media type and
the digest of its stored bytes (taken from a ``blobs/<alg>/<hex>`` name, else
hashed once when the archive is opened).

Compared with skopeo 1.9 (``skopeo inspect --raw docker-archive:F``): the
config digest and, for uncompressed layers (what ``docker save`` and skopeo
write), every layer digest and size are the same. skopeo labels every layer
``...diff.tar.gzip`` whatever its real compression, and for a compressed layer
reports the diff_id and uncompressed size while serving decompressed bytes;
with different media types (and key order) its manifest digest differs from
ours. The manifest digest of a docker-archive image is synthetic either way:
the archive holds no manifest.

Writing a docker-archive stores every layer uncompressed (gzip/zstd layers are
decompressed, and each tar checked against its diff_id), the config, a
``manifest.json`` whose ``RepoTags`` come from the reference, legacy
``<id>/{VERSION,json,layer.tar}`` entries and a ``repositories`` file. An index
cannot be written: choose one platform first.

Every archive written is deterministic (entries sorted by path, mtime 0, owner
root, fixed modes) and goes to a temporary file beside the destination that
is renamed into place only once complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import posixpath
import re
import tarfile
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from suture.errors import (
    LayerError,
    ManifestError,
    NotFound,
    SizeMismatch,
    SutureError,
    TransportError,
    UsageError,
)
from suture.oci import mediatypes as mt
from suture.oci.compression import open_decompressed
from suture.oci.digest import (
    CHUNK,
    MAX_CONFIG,
    MAX_MANIFEST,
    HashingWriter,
    VerifyingReader,
    check_digest,
    is_digest,
    sha256,
    verify_bytes,
)
from suture.oci.image import (
    Artifact,
    BlobRef,
    Image,
    ImageIndex,
    ManifestRef,
    Origin,
    read_blob,
    walk_blobs,
)
from suture.oci.model import (
    JSON,
    Descriptor,
    Manifest,
    build_manifest,
    canonical_json,
    loads_object,
)
from suture.transports.layout import (
    LAYOUT_FILE,
    LAYOUT_FILE_BYTES,
    atomic_file,
    blob_path,
    check_write_ref,
    copy_verified,
    index_entry,
    make_parents,
    merged_index_json,
    read_layout,
    read_small_file,
    verify_digest_string,
)
from suture.transports.reference import DEFAULT_REGISTRY, Reference, parse_docker

__all__ = [
    "TarArchive",
    "open_docker_archive",
    "open_oci_archive",
    "write_docker_archive",
    "write_oci_archive",
]

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_MAX_LINK_HOPS = 16
_BLOB_NAME = re.compile(r"^blobs/(sha256|sha512)/([a-f0-9]{64,128})$")
_HEX64 = re.compile(r"^[a-f0-9]{64}$")


def sniff_compression(head: bytes) -> str:
    """``gzip``, ``zstd`` or ``none`` from the first bytes of a stream."""
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    return "none"


# --- reading a tar in place ------------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    name: str
    offset: int
    size: int
    type: bytes
    linkname: str


class _MemberReader(io.RawIOBase, BinaryIO):
    """The bytes of one member, read with ``pread`` (several may be open at once)."""

    def __init__(self, archive: TarArchive, member: _Member) -> None:
        super().__init__()
        self._archive = archive  # keeps the descriptor open while we read
        self._member = member
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        left = self._member.size - self._pos
        view = memoryview(buffer).cast("B")
        n = min(len(view), left)
        if n <= 0:
            return 0
        data = self._archive.pread(n, self._member.offset + self._pos)
        if not data:
            raise TransportError(f"{self._archive.where}: {self._member.name} is cut short")
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


class TarArchive:
    """An uncompressed tar indexed once, its members readable in place.

    Implements :class:`~suture.transports.layout.LayoutStore`. Symbolic and hard
    links between members are followed inside the archive (never out of it).
    The file stays open until this object is garbage collected.
    """

    def __init__(self, path: Path, where: str) -> None:
        self.where = where
        self._file = self._open(path)
        self._finalizer = weakref.finalize(self, self._file.close)
        self.members = self._scan()

    def _open(self, path: Path) -> BinaryIO:
        try:
            f: BinaryIO = open(path, "rb")  # noqa: SIM115 - held for the archive's lifetime
        except FileNotFoundError:
            raise NotFound(f"{self.where}: no such file") from None
        except IsADirectoryError:
            raise TransportError(f"{self.where}: is a directory, not an archive") from None
        except OSError as exc:
            raise TransportError(f"{self.where}: cannot read: {exc.strerror}") from None
        kind = sniff_compression(f.read(4))
        f.seek(0)
        if kind == "none":
            return f
        size = os.fstat(f.fileno()).st_size
        ceiling = max(16 << 30, 64 * size)
        plain_copy: BinaryIO = tempfile.TemporaryFile()  # noqa: SIM115 - kept open
        try:
            with open_decompressed(f, kind) as plain:
                total = 0
                while chunk := plain.read(CHUNK):
                    total += len(chunk)
                    if total > ceiling:
                        raise SizeMismatch(f"{self.where}: decompressed archive", ceiling,
                                           total, ceiling=True)
                    plain_copy.write(chunk)
            plain_copy.flush()
        except LayerError as exc:
            plain_copy.close()
            raise TransportError(f"{self.where}: {exc.message}") from None
        except BaseException:
            plain_copy.close()
            raise
        return plain_copy

    def pread(self, n: int, offset: int) -> bytes:
        try:
            return os.pread(self._file.fileno(), n, offset)
        except OSError as exc:
            raise TransportError(f"{self.where}: cannot read: {exc.strerror}") from None

    def _scan(self) -> dict[str, _Member]:
        size = os.fstat(self._file.fileno()).st_size
        members: dict[str, _Member] = {}
        try:
            self._file.seek(0)
            with tarfile.open(fileobj=self._file, mode="r:") as tar:
                for info in tar:
                    name = _normalize(info.name)
                    if info.type in _REGULAR and info.offset_data + info.size > size:
                        raise TransportError(f"{self.where}: truncated archive "
                                             f"({name} is cut short)")
                    members[name] = _Member(name, info.offset_data, info.size, info.type,
                                            info.linkname)
                end = tar.offset
        except (tarfile.TarError, EOFError) as exc:
            raise TransportError(f"{self.where}: not a readable tar archive: {exc}") from None
        # tarfile stops quietly at a cut-off or garbled header; the end-of-archive
        # marker (a zero block) tells a complete archive from a truncated one.
        marker = self.pread(512, end)
        if len(marker) < 512 or marker.strip(b"\0"):
            raise TransportError(f"{self.where}: truncated or corrupt archive (no end-of-archive "
                                 f"marker after {len(members)} entries)")
        return members

    def _resolve(self, name: str) -> _Member | None:
        key = _normalize(name)
        for _ in range(_MAX_LINK_HOPS):
            member = self.members.get(key)
            if member is None:
                return None
            if member.type in _REGULAR:
                return member
            if member.type == tarfile.SYMTYPE:
                target = member.linkname
                if target.startswith("/"):
                    raise TransportError(f"{self.where}: {key} links outside the archive")
                key = posixpath.normpath(posixpath.join(posixpath.dirname(key), target))
            elif member.type == tarfile.LNKTYPE:
                key = _normalize(member.linkname)
            else:
                raise TransportError(f"{self.where}: {key} is not a regular file")
            if key == ".." or key.startswith("../"):
                raise TransportError(f"{self.where}: {member.name} links outside the archive")
        raise TransportError(f"{self.where}: too many links resolving {name}")

    def resolved_name(self, name: str) -> str | None:
        """The member ``name`` ends at after links, or ``None`` when missing."""
        member = self._resolve(name)
        return member.name if member else None

    def open_file(self, name: str) -> BinaryIO:
        member = self._resolve(name)
        if member is None:
            raise NotFound(f"{self.where}: no {name} in the archive")
        return _MemberReader(self, member)

    def file_size(self, name: str) -> int | None:
        member = self._resolve(name)
        return None if member is None else member.size


def _normalize(name: str) -> str:
    out = posixpath.normpath(name.lstrip("/")) if name else ""
    return "" if out == "." else out


# --- writing a deterministic tar -------------------------------------------------------


class _TarWriter:
    """A deterministic tar (GNU headers, mtime 0, root:root) written to a seekable stream.

    File sizes need not be known in advance: a header is written first and
    rewritten once the data is in. The stream is not closed.
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out

    @staticmethod
    def _header(name: str, kind: bytes, size: int = 0, mode: int = 0o644,
                linkname: str = "") -> bytes:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.size = size
        info.mode = mode
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.linkname = linkname
        return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")

    def add_dir(self, name: str) -> None:
        self._out.write(self._header(name + "/", tarfile.DIRTYPE, mode=0o755))

    def add_symlink(self, name: str, target: str) -> None:
        self._out.write(self._header(name, tarfile.SYMTYPE, mode=0o777, linkname=target))

    def add_bytes(self, name: str, data: bytes) -> None:
        self.add_file(name, lambda out: out.write(data))

    def add_file(self, name: str, fill: Callable[[BinaryIO], object]) -> int:
        """Add ``name`` with the bytes ``fill(out)`` writes; return their count."""
        start = self._out.tell()
        placeholder = self._header(name, tarfile.REGTYPE)
        self._out.write(placeholder)
        fill(self._out)
        end = self._out.tell()
        size = end - start - len(placeholder)
        header = self._header(name, tarfile.REGTYPE, size)
        if len(header) != len(placeholder):  # pragma: no cover - GNU headers are fixed-size
            raise TransportError(f"tar header of {name} changed length")
        self._out.write(b"\0" * (-size % 512))
        after = self._out.tell()
        self._out.seek(start)
        self._out.write(header)
        self._out.seek(after)
        return size

    def close(self) -> None:
        """Write the end-of-archive marker and pad to a whole record."""
        self._out.write(b"\0" * 1024)
        self._out.write(b"\0" * (-self._out.tell() % tarfile.RECORDSIZE))


def _archive_destination(ref: Reference, where: str) -> tuple[Path, list[Path]]:
    assert ref.path is not None
    dest = Path(ref.path)
    if dest.is_dir():
        raise TransportError(f"{where}: is a directory")
    made = make_parents(dest.parent) if not dest.parent.exists() else []
    return dest, made


def _write_archive(ref: Reference, where: str, fill: Callable[[_TarWriter], None]) -> None:
    """Write a tar to ``ref.path`` atomically; on failure nothing new is left behind."""
    dest, made = _archive_destination(ref, where)
    try:
        with atomic_file(dest) as out:
            writer = _TarWriter(out)
            fill(writer)
            writer.close()
    except OSError as exc:
        _remove_dirs(made)
        raise TransportError(f"{where}: cannot write: {exc.strerror or exc}") from None
    except BaseException:
        _remove_dirs(made)
        raise


def _remove_dirs(made: list[Path]) -> None:
    for d in reversed(made):
        with contextlib.suppress(OSError):
            d.rmdir()


# --- oci-archive ----------------------------------------------------------------------


def open_oci_archive(ref: Reference) -> Artifact:
    """Open the image or index ``ref`` (``oci-archive:FILE[:TAG|@DIGEST]``) names.

    Selection as for ``oci:``. Blobs are read from the archive lazily, verified.
    """
    assert ref.path is not None
    where = f"oci-archive:{ref.path}"
    return read_layout(TarArchive(Path(ref.path), where), ref)


def write_oci_archive(artifact: Artifact, ref: Reference) -> str:
    """Write ``artifact`` as a tarred OCI layout to ``ref.path``; return its digest.

    The file is replaced as a whole (earlier tags are not kept) and appears only
    when complete. Streams opened from the artifact's sources are closed here.
    """
    check_write_ref(artifact, ref)
    where = f"oci-archive:{ref.path}"
    items: dict[str, BlobRef | ManifestRef] = {}
    for item in walk_blobs(artifact):
        items[blob_path(item.descriptor.digest)] = item
    index = merged_index_json(None, index_entry(artifact, ref.tag), ref.tag)
    dirs = {"blobs"} | {posixpath.dirname(p) for p in items}

    def fill(tar: _TarWriter) -> None:
        entries: list[tuple[tuple[str, ...], str]] = [
            (tuple(n.split("/")), n) for n in [*dirs, *items, "index.json", LAYOUT_FILE]]
        for _key, name in sorted(entries):
            if name in dirs:
                tar.add_dir(name)
            elif name == "index.json":
                tar.add_bytes(name, index)
            elif name == LAYOUT_FILE:
                tar.add_bytes(name, LAYOUT_FILE_BYTES)
            else:
                tar.add_file(name, _blob_filler(items[name], f"{where}: blob"))

    _write_archive(ref, where, fill)
    return artifact.digest


def _blob_filler(item: BlobRef | ManifestRef, what: str) -> Callable[[BinaryIO], None]:
    desc = item.descriptor

    def fill(out: BinaryIO) -> None:
        if isinstance(item, ManifestRef):
            out.write(verify_bytes(item.raw, desc.digest, f"{what} {desc.digest}", desc.size))
            return
        with item.open() as stream:
            copy_verified(stream, out, desc, f"{what} {desc.digest}")

    return fill


# --- docker-archive: reading -----------------------------------------------------------


@dataclass(frozen=True)
class _DockerEntry:
    config: str
    repo_tags: tuple[str, ...]
    layers: tuple[str, ...]


class DockerArchiveSource:
    """Serves the config and layers of docker-archive images, verified as read."""

    def __init__(self, archive: TarArchive) -> None:
        self.archive = archive
        self._names: dict[str, str] = {}
        self._manifests: dict[str, bytes] = {}

    def __repr__(self) -> str:
        return f"DockerArchiveSource({self.archive.where})"

    def add_blob(self, digest: str, name: str) -> None:
        self._names[digest] = name

    def add_manifest(self, raw: bytes) -> None:
        self._manifests[sha256(raw)] = raw

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        """The blob as stored in the archive, checked against ``desc``; caller closes."""
        if desc.digest in self._manifests:
            return VerifyingReader(io.BytesIO(self._manifests[desc.digest]), desc.digest,
                                   desc.size, f"manifest {desc.digest}")
        name = self._names.get(desc.digest)
        if name is None:
            raise NotFound(f"{self.archive.where}: no blob {desc.digest}")
        return VerifyingReader(self.archive.open_file(name), desc.digest, desc.size,
                               f"{self.archive.where}: {name}")

    def read_manifest(self, desc: Descriptor) -> bytes:
        raw = self._manifests.get(desc.digest)
        if raw is None:
            raise NotFound(f"{self.archive.where}: no manifest {desc.digest}")
        if len(raw) != desc.size:
            raise SizeMismatch(f"manifest {desc.digest}", desc.size, len(raw))
        return raw

    def origin(self) -> Origin | None:
        return None


def _parse_docker_manifest(raw: bytes, where: str) -> list[_DockerEntry]:
    try:
        import json

        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"{where}: manifest.json is not valid JSON: {exc}") from None
    if not isinstance(doc, list):
        raise ManifestError(f"{where}: manifest.json is not a list")
    out = []
    for item in doc:
        if not isinstance(item, dict):
            raise ManifestError(f"{where}: manifest.json entry is not an object")
        config, tags, layers = item.get("Config"), item.get("RepoTags") or [], item.get("Layers")
        if not isinstance(config, str) or not isinstance(layers, list) or not all(
                isinstance(x, str) for x in layers):
            raise ManifestError(f"{where}: manifest.json entry without Config and Layers")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ManifestError(f"{where}: manifest.json RepoTags is not a list of strings")
        out.append(_DockerEntry(config, tuple(tags), tuple(layers)))
    return out


def _named_digest(name: str) -> str | None:
    """The digest a ``blobs/<alg>/<hex>`` member name states, else ``None``."""
    m = _BLOB_NAME.match(name)
    if not m:
        return None
    digest = f"{m.group(1)}:{m.group(2)}"
    return digest if is_digest(digest) else None


def docker_manifest(config_bytes: bytes, layers: list[Descriptor]) -> Manifest:
    """The Docker schema 2 manifest a docker-archive image is read as."""
    config = Descriptor(mt.DOCKER_CONFIG, sha256(config_bytes), len(config_bytes))
    return build_manifest(config, layers, media_type=mt.DOCKER_MANIFEST)


def _hash_member(archive: TarArchive, name: str) -> str:
    h = hashlib.sha256()
    with archive.open_file(name) as stream:
        while chunk := stream.read(CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _diff_ids(config: JSON, what: str) -> list[str]:
    rootfs = config.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ManifestError(f"{what}: config has no rootfs.diff_ids list")
    try:
        return [check_digest(i) for i in ids]
    except ManifestError as exc:
        raise ManifestError(f"{what}: config rootfs.diff_ids: {exc}") from None


def _docker_image(archive: TarArchive, entry: _DockerEntry, source: DockerArchiveSource) -> Image:
    where = archive.where
    config_bytes = read_small_file(archive, entry.config, MAX_CONFIG)
    config_digest = sha256(config_bytes)
    resolved = archive.resolved_name(entry.config) or entry.config
    stem = posixpath.basename(resolved).removesuffix(".json")
    named = _named_digest(resolved) or (f"sha256:{stem}" if _HEX64.match(stem) else None)
    if named is not None:
        verify_digest_string(config_digest, named, f"{where}: {entry.config}")
    config = loads_object(config_bytes, f"{where}: {entry.config}", MAX_CONFIG)
    diff_ids = _diff_ids(config, f"{where}: {entry.config}")
    if len(diff_ids) != len(entry.layers):
        raise ManifestError(f"{where}: {len(entry.layers)} layers but {len(diff_ids)} diff_ids "
                            f"in {entry.config}")
    source.add_blob(config_digest, entry.config)
    layers = []
    for name, diff_id in zip(entry.layers, diff_ids, strict=True):
        size = archive.file_size(name)
        if size is None:
            raise NotFound(f"{where}: layer {name} named by manifest.json is missing")
        with archive.open_file(name) as stream:
            kind = sniff_compression(stream.read(4))
        named = _named_digest(archive.resolved_name(name) or name)
        if kind == "none":
            # An uncompressed layer's digest is its diff_id (checked when it is read).
            if named is not None:
                verify_digest_string(diff_id, named, f"{where}: layer {name}")
            digest = diff_id
        else:
            digest = named or _hash_member(archive, name)
        layers.append(Descriptor(mt.layer_media_type(kind, docker=True), digest, size))
        source.add_blob(digest, name)
    manifest = docker_manifest(config_bytes, layers)
    source.add_manifest(manifest.raw)
    return Image(manifest, source, config_bytes=config_bytes)


def _same_name(tag: str, ref: Reference) -> bool:
    try:
        named = parse_docker(tag)
    except SutureError:
        return False
    return (named.registry, named.repository, named.tag) == (ref.registry, ref.repository,
                                                             ref.tag)


def open_docker_archive(ref: Reference) -> Image:
    """Open the image ``ref`` (``docker-archive:FILE[:NAME:TAG|@DIGEST]``) names.

    With a name, the image whose ``RepoTags`` holds it (``foo/bar:t`` and
    ``docker.io/foo/bar:t`` are the same name); with only a digest, the image
    whose manifest (as read here) or config has that digest; with neither, the
    only image of the archive. See the module docstring for the manifest built.
    """
    assert ref.path is not None
    where = f"docker-archive:{ref.path}"
    archive = TarArchive(Path(ref.path), where)
    entries = _parse_docker_manifest(read_small_file(archive, "manifest.json", MAX_MANIFEST),
                                     where)
    source = DockerArchiveSource(archive)
    have = ", ".join(t for e in entries for t in e.repo_tags) or "no tags"
    if ref.name:
        found = [e for e in entries if any(_same_name(t, ref) for t in e.repo_tags)]
        if not found:
            raise NotFound(f"{where}: no image named {ref.image_name()} (the archive has: "
                           f"{have})")
        image = _docker_image(archive, found[0], source)
        if ref.digest and ref.digest not in (image.digest, image.manifest.config.digest):
            raise NotFound(f"{where}: {ref.image_name()} has digest {image.digest}")
        return image
    if ref.digest:
        for entry in entries:
            image = _docker_image(archive, entry, source)
            if ref.digest in (image.digest, image.manifest.config.digest):
                return image
        raise NotFound(f"{where}: no image with digest {ref.digest}")
    if not entries:
        raise NotFound(f"{where}: the archive holds no image")
    if len(entries) > 1:
        raise UsageError(f"{where} holds {len(entries)} images; name one of: {have}",
                         hint="add :NAME:TAG to the reference")
    return _docker_image(archive, entries[0], source)


# --- docker-archive: writing -----------------------------------------------------------


def _familiar(registry: str, repository: str) -> str:
    """``docker save``'s short form of a name: ``nginx``, ``foo/bar``, ``host/x``."""
    if registry == DEFAULT_REGISTRY:
        return repository.removeprefix("library/")
    return f"{registry}/{repository}"


def _legacy_ids(diff_ids: list[str]) -> list[str]:
    """Unique ids for the legacy per-layer directories, each over all layers below it."""
    ids: list[str] = []
    parent = ""
    for diff_id in diff_ids:
        parent = hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()
        ids.append(parent)
    return ids


_LEGACY_TOP_FIELDS = ("architecture", "config", "container", "container_config", "created",
                      "docker_version", "os", "variant")


def write_docker_archive(artifact: Artifact, ref: Reference) -> str:
    """Write ``artifact`` (one image) in the ``docker save`` format to ``ref.path``.

    Returns the digest of the manifest the archive reads back as (see
    :func:`open_docker_archive`). Layers are written uncompressed and checked
    against the config's diff_ids. The file is replaced as a whole and appears
    only when complete. Streams opened from the image's source are closed here.
    """
    where = f"docker-archive:{ref.path}"
    if isinstance(artifact, ImageIndex):
        raise UsageError(f"{where}: a docker archive holds single images, and "
                         f"{artifact.digest} is a multi-platform index",
                         hint="choose one image with --platform")
    if not artifact.is_container_image:
        raise UsageError(f"{where}: {artifact.digest} is not a container image "
                         f"(config type {artifact.manifest.config.media_type})")
    blobs: dict[str, BlobRef] = {}
    for item in walk_blobs(artifact):
        if isinstance(item, BlobRef):
            blobs[item.descriptor.digest] = item
    config_desc = artifact.manifest.config
    config_bytes = read_blob(blobs[config_desc.digest].source, config_desc, MAX_CONFIG)
    config = loads_object(config_bytes, f"{artifact.digest}: image config", MAX_CONFIG)
    layer_descs = list(artifact.manifest.layers)
    diff_ids = _diff_ids(config, f"image {artifact.digest}")
    if len(diff_ids) != len(layer_descs):
        raise ManifestError(f"image {artifact.digest}: {len(layer_descs)} layers but "
                            f"{len(diff_ids)} diff_ids in its config")
    for desc in layer_descs:
        if desc.digest not in blobs:
            raise UsageError(f"{where}: layer {desc.digest} is a foreign layer "
                             "(not distributable) and cannot be written to a docker archive")
        mt.layer_compression(desc.media_type)  # unknown layer types refused before writing

    tags: list[str] = []
    if ref.name and ref.tag:
        assert ref.registry is not None and ref.repository is not None
        tags.append(f"{_familiar(ref.registry, ref.repository)}:{ref.tag}")
    config_name = f"{config_desc.digest.split(':', 1)[1]}.json"
    layer_names = [f"{d.split(':', 1)[1]}.tar" for d in diff_ids]
    legacy = _legacy_ids(diff_ids)
    manifest_json = canonical_json([{"Config": config_name, "RepoTags": tags,
                                     "Layers": layer_names}])
    files: dict[str, Callable[[_TarWriter], object]] = {}
    sizes: dict[str, int] = {}

    def layer_writer(desc: Descriptor, diff_id: str, name: str) -> Callable[[_TarWriter], object]:
        def write(tar: _TarWriter) -> None:
            sizes[diff_id] = tar.add_file(name, _layer_filler(blobs[desc.digest], diff_id))
        return write

    for desc, diff_id, name in zip(layer_descs, diff_ids, layer_names, strict=True):
        files.setdefault(name, layer_writer(desc, diff_id, name))
    files[config_name] = lambda tar: tar.add_bytes(config_name, config_bytes)
    for i, (layer_id, name) in enumerate(zip(legacy, layer_names, strict=True)):
        doc: dict[str, Any] = {"id": layer_id}
        if i:
            doc["parent"] = legacy[i - 1]
        if i == len(legacy) - 1:
            doc.update({k: config[k] for k in _LEGACY_TOP_FIELDS if k in config})
        files[layer_id] = _dir_writer(layer_id)
        files[f"{layer_id}/VERSION"] = _bytes_writer(f"{layer_id}/VERSION", b"1.0")
        files[f"{layer_id}/json"] = _bytes_writer(f"{layer_id}/json", canonical_json(doc))
        files[f"{layer_id}/layer.tar"] = _link_writer(f"{layer_id}/layer.tar", f"../{name}")
    files["manifest.json"] = _bytes_writer("manifest.json", manifest_json)
    if tags and legacy:
        repos: dict[str, dict[str, str]] = {}
        assert ref.registry is not None and ref.repository is not None and ref.tag is not None
        repos.setdefault(_familiar(ref.registry, ref.repository), {})[ref.tag] = legacy[-1]
        files["repositories"] = _bytes_writer("repositories", canonical_json(repos))

    def fill(tar: _TarWriter) -> None:
        for name in sorted(files, key=lambda n: tuple(n.split("/"))):
            files[name](tar)

    _write_archive(ref, where, fill)
    layers = [Descriptor(mt.DOCKER_LAYER_TAR, d, sizes[d]) for d in diff_ids]
    return docker_manifest(config_bytes, layers).digest


def _bytes_writer(name: str, data: bytes) -> Callable[[_TarWriter], object]:
    return lambda tar: tar.add_bytes(name, data)


def _dir_writer(name: str) -> Callable[[_TarWriter], object]:
    return lambda tar: tar.add_dir(name)


def _link_writer(name: str, target: str) -> Callable[[_TarWriter], object]:
    return lambda tar: tar.add_symlink(name, target)


def _layer_filler(blob: BlobRef, diff_id: str) -> Callable[[BinaryIO], None]:
    """Writes the layer's uncompressed tar, checked against ``diff_id`` and bounded."""
    desc = blob.descriptor

    def fill(out: BinaryIO) -> None:
        compression = mt.layer_compression(desc.media_type)
        ceiling = max(16 << 30, 64 * desc.size)
        sink = HashingWriter(out, diff_id.split(":", 1)[0])
        try:
            with open_decompressed(blob.open(), compression) as plain:
                while chunk := plain.read(CHUNK):
                    sink.write(chunk)
                    if sink.size > ceiling:
                        raise SizeMismatch(f"layer {desc.digest}", ceiling, sink.size,
                                           ceiling=True)
        except LayerError:
            # Undecodable bytes are most often a blob that is not what its digest says:
            # read it through once more so that is what gets reported.
            with blob.open() as again:
                while again.read(CHUNK):
                    pass
            raise
        verify_digest_string(sink.digest, diff_id, f"layer {desc.digest} (diff_id)")

    return fill
