"""OCI image layouts (``oci:DIR[:TAG|@DIGEST]``): read and write.

A layout is a directory with an ``oci-layout`` file, an ``index.json`` and
content-addressed ``blobs/<alg>/<hex>`` (OCI image-spec, image-layout).

Reading
    ``oci:DIR:TAG`` names the ``index.json`` entry whose
    ``org.opencontainers.image.ref.name`` annotation is ``TAG``;
    ``oci:DIR@DIGEST`` the entry with that digest (or, failing that, any
    manifest blob in the layout, e.g. one platform of an index). ``oci:DIR``
    with neither names the only entry of ``index.json``; with several entries it
    is a :class:`~suture.errors.UsageError` listing the tags. There is no
    implicit ``latest``: a layout with several images must be read by name.
    An entry that is an index gives an :class:`~suture.oci.image.ImageIndex`.
    Only ``oci-layout`` and ``index.json`` are read when opening (and the one
    manifest); every blob is streamed and verified when asked for.

Writing
    Every blob is written through :func:`~suture.oci.image.walk_blobs`, each to
    a temporary file that is fsynced and renamed into ``blobs/``; a blob already
    present with the right size is not written again. Only then is
    ``index.json`` replaced (temporary file, fsync, rename), so it never names a
    blob that is not there. Writing a tag into an existing layout keeps every
    other entry; an entry with the same tag is replaced in place. A brand-new
    layout is built in a temporary sibling directory and renamed into place, so
    a failed write leaves nothing behind; a failed write into an existing layout
    removes the blobs it added and leaves ``index.json`` untouched.

Concurrent writers
    Writers of one existing layout (suture processes, or threads) do not lose each
    other's updates: ``index.json`` is re-read, merged and renamed while holding an
    exclusive ``flock`` on the layout's ``oci-layout`` file (the one file no writer
    replaces, so no lock file of our own appears in the layout). Blobs are written
    without the lock; under it, a writer checks that every blob it names is still
    there (writing again any that a failing writer's undo removed) before it
    names them in ``index.json``, and a failing writer's undo removes only the
    blobs it added that ``index.json`` does not reach. Two writers creating the
    same new layout: the second merges its entry into the first's layout.

The tar-based ``oci-archive:`` transport (:mod:`suture.transports.archive`)
reuses the reading half through :class:`LayoutStore`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from suture.errors import (
    DigestMismatch,
    ManifestError,
    NotFound,
    SizeMismatch,
    TransportError,
    UnsupportedMediaType,
    UsageError,
)
from suture.oci import mediatypes as mt
from suture.oci.digest import (
    CHUNK,
    MAX_MANIFEST,
    HashingWriter,
    VerifyingReader,
    check_digest,
    verify_bytes,
)
from suture.oci.image import (
    Artifact,
    BlobRef,
    Image,
    ManifestRef,
    Origin,
    load_artifact,
    walk_blobs,
)
from suture.oci.model import JSON, Descriptor, canonical_json, loads_object, parse_manifest
from suture.transports.reference import Reference

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LAYOUT_VERSION = "1.0.0"
LAYOUT_FILE_BYTES = canonical_json({"imageLayoutVersion": LAYOUT_VERSION})

__all__ = [
    "LAYOUT_FILE",
    "LAYOUT_FILE_BYTES",
    "REF_NAME",
    "DirStore",
    "LayoutSource",
    "LayoutStore",
    "atomic_file",
    "blob_path",
    "check_write_ref",
    "copy_verified",
    "index_entry",
    "make_parents",
    "merged_index_json",
    "open_layout_image",
    "read_layout",
    "read_small_file",
    "verify_digest_string",
    "write_layout_image",
]


# --- reading -----------------------------------------------------------------------


class LayoutStore(Protocol):
    """Named files of a layout, wherever they live (a directory, a tar)."""

    where: str  # how the layout is named in messages, e.g. ``oci:/tmp/x``

    def open_file(self, name: str) -> BinaryIO:
        """A stream of the file ``name`` (``/``-separated, relative); caller closes.

        Raises :class:`NotFound` when there is no such file.
        """
        ...

    def file_size(self, name: str) -> int | None:
        """The size of ``name``, or ``None`` when there is no such file."""
        ...


def blob_path(digest: str) -> str:
    """``blobs/<alg>/<hex>`` for a well-formed digest."""
    algorithm, _, hexpart = check_digest(digest).partition(":")
    return f"blobs/{algorithm}/{hexpart}"


def read_small_file(store: LayoutStore, name: str, limit: int) -> bytes:
    """The whole of a small file; over ``limit`` bytes is a :class:`ManifestError`."""
    size = store.file_size(name)
    if size is None:
        raise NotFound(f"{store.where}: no {name}")
    if size > limit:
        raise ManifestError(f"{store.where}: {name} is larger than {limit} bytes")
    with store.open_file(name) as stream:
        return stream.read(limit + 1)


class LayoutSource:
    """A :class:`~suture.oci.image.BlobSource` over the blobs of a layout."""

    def __init__(self, store: LayoutStore) -> None:
        self.store = store

    def __repr__(self) -> str:
        return f"LayoutSource({self.store.where})"

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        """The blob, checked against ``desc``'s size and digest as read; caller closes."""
        name = blob_path(desc.digest)
        stream = self.store.open_file(name)
        return VerifyingReader(stream, desc.digest, desc.size,
                               f"{self.store.where}: blob {desc.digest}")

    def read_manifest(self, desc: Descriptor) -> bytes:
        if desc.size > MAX_MANIFEST:
            raise ManifestError(f"{self.store.where}: manifest {desc.digest} is {desc.size} "
                                f"bytes, over the {MAX_MANIFEST} limit")
        with self.open_blob(desc) as stream:
            assert isinstance(stream, VerifyingReader)
            return stream.read_all_verified()

    def origin(self) -> Origin | None:
        return None


def _parse_index_json(raw: bytes, where: str) -> tuple[JSON, list[Descriptor]]:
    doc = loads_object(raw, f"{where}: {INDEX_FILE}", MAX_MANIFEST)
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise ManifestError(f"{where}: {INDEX_FILE} has no manifests list")
    try:
        return doc, [Descriptor.from_json(e) for e in entries]
    except ManifestError as exc:
        raise ManifestError(f"{where}: {INDEX_FILE}: {exc}") from None


def _tag_list(entries: list[Descriptor]) -> str:
    tags = [e.annotations.get(REF_NAME) or f"@{e.digest}" for e in entries]
    return ", ".join(tags) if tags else "none"


def _select(store: LayoutStore, entries: list[Descriptor], ref: Reference) -> Descriptor:
    where = store.where
    if ref.tag:
        found = [e for e in entries if e.annotations.get(REF_NAME) == ref.tag]
        if ref.digest:
            found = [e for e in found if e.digest == ref.digest]
        if not found:
            raise NotFound(f"{where}: no image tagged {ref.tag!r}"
                           + (f" with digest {ref.digest}" if ref.digest else "")
                           + f" (the layout has: {_tag_list(entries)})")
        return found[0]
    if ref.digest:
        for entry in entries:
            if entry.digest == ref.digest:
                return entry
        # Not a top-level entry: any manifest blob in the layout (one platform of an index).
        return _descriptor_of_blob(store, ref.digest)
    if len(entries) == 1:
        return entries[0]
    if not entries:
        raise NotFound(f"{where}: the layout holds no image")
    raise UsageError(f"{where} holds {len(entries)} images; name one of: {_tag_list(entries)}",
                     hint="add :TAG or @DIGEST to the reference")


def _descriptor_of_blob(store: LayoutStore, digest: str) -> Descriptor:
    name = blob_path(digest)
    size = store.file_size(name)
    if size is None:
        raise NotFound(f"{store.where}: no image with digest {digest}")
    raw = read_small_file(store, name, MAX_MANIFEST)
    verify_bytes(raw, digest, f"{store.where}: blob {digest}", size)
    parsed = parse_manifest(raw)
    return Descriptor(parsed.media_type, digest, len(raw))


def read_layout(store: LayoutStore, ref: Reference) -> Artifact:
    """The artifact ``ref`` names in the layout ``store`` (see the module docstring).

    Reads ``oci-layout``, ``index.json`` and one manifest; nothing else.
    """
    where = store.where
    if store.file_size(LAYOUT_FILE) is None:
        raise TransportError(f"{where}: not an OCI image layout (no {LAYOUT_FILE} file)")
    layout = loads_object(read_small_file(store, LAYOUT_FILE, 4096), f"{where}: {LAYOUT_FILE}")
    version = layout.get("imageLayoutVersion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise TransportError(f"{where}: unsupported image layout version {version!r}")
    if store.file_size(INDEX_FILE) is None:
        raise TransportError(f"{where}: not an OCI image layout (no {INDEX_FILE})")
    _doc, entries = _parse_index_json(read_small_file(store, INDEX_FILE, MAX_MANIFEST), where)
    entry = _select(store, entries, ref)
    if entry.media_type not in mt.MANIFEST_TYPES | mt.INDEX_TYPES:
        raise UnsupportedMediaType(entry.media_type)
    source = LayoutSource(store)
    try:
        raw = source.read_manifest(entry)
    except NotFound:
        raise NotFound(f"{where}: manifest {entry.digest} named by {INDEX_FILE} is missing "
                       "from blobs/") from None
    # The ref.name annotation names the entry in this layout only; it does not travel.
    annotations = {k: v for k, v in entry.annotations.items() if k != REF_NAME}
    return load_artifact(raw, source, entry.media_type, descriptor=entry.with_annotations(
        annotations))


class DirStore:
    """A :class:`LayoutStore` over a directory."""

    def __init__(self, root: Path, where: str) -> None:
        self.root = root
        self.where = where

    def _path(self, name: str) -> Path:
        return self.root.joinpath(*name.split("/"))

    def open_file(self, name: str) -> BinaryIO:
        try:
            return open(self._path(name), "rb")
        except FileNotFoundError:
            raise NotFound(f"{self.where}: no {name}") from None
        except OSError as exc:
            raise TransportError(f"{self.where}: cannot read {name}: {exc.strerror}") from None

    def file_size(self, name: str) -> int | None:
        try:
            st = self._path(name).stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TransportError(f"{self.where}: cannot read {name}: {exc.strerror}") from None
        return st.st_size


def open_layout_image(ref: Reference) -> Artifact:
    """Open the image or index ``ref`` (``oci:DIR[:TAG|@DIGEST]``) names; see the module doc.

    The returned artifact reads blobs from the directory lazily, each verified.
    """
    assert ref.path is not None
    where = f"oci:{ref.path}"
    root = Path(ref.path)
    if not root.exists():
        raise NotFound(f"{where}: no such directory")
    if not root.is_dir():
        raise TransportError(f"{where}: not a directory")
    return read_layout(DirStore(root, where), ref)


# --- writing helpers shared with the archive transports ----------------------------


def fsync_dir(path: Path) -> None:
    """Make renames inside ``path`` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(dest: Path, *, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A file that appears at ``dest`` complete, or not at all.

    Yields a stream on a temporary file beside ``dest``. When the block ends
    normally the file is fsynced and renamed over ``dest``; when it raises, the
    temporary file is removed and ``dest`` is left as it was. The caller does
    not close the stream.
    """
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(dest.parent)


def copy_verified(stream: BinaryIO, out: BinaryIO, desc: Descriptor, what: str) -> None:
    """Copy ``stream`` into ``out``, checking it is exactly ``desc``'s size and digest.

    Neither stream is closed. Raises :class:`SizeMismatch` or
    :class:`~suture.errors.DigestMismatch` (after some bytes may have been written:
    write into something you can throw away).
    """
    algorithm = desc.digest.split(":", 1)[0]
    sink = HashingWriter(out, algorithm)
    while chunk := stream.read(CHUNK):
        if sink.size + len(chunk) > desc.size:
            raise SizeMismatch(what, desc.size, sink.size + len(chunk))
        sink.write(chunk)
    if sink.size != desc.size:
        raise SizeMismatch(what, desc.size, sink.size)
    verify_digest_string(sink.digest, desc.digest, what)


def verify_digest_string(actual: str, expected: str, what: str) -> None:
    if actual != expected:
        raise DigestMismatch(what, expected, actual)


def index_entry(artifact: Artifact, tag: str | None) -> JSON:
    """The ``index.json`` entry naming ``artifact`` (an image or an index) as ``tag``."""
    kind = artifact.manifest.json.get("artifactType") if isinstance(artifact, Image) else None
    desc = Descriptor(artifact.media_type, artifact.digest, len(artifact.raw_manifest),
                      annotations={REF_NAME: tag} if tag else {},
                      artifact_type=kind if isinstance(kind, str) and kind else None)
    return desc.to_json()


def merged_index_json(existing: JSON | None, entry: JSON, tag: str | None) -> bytes:
    """``index.json`` bytes: ``existing`` with ``entry`` added as ``tag``.

    An entry with the same tag is replaced in place (others with that tag are
    dropped); without a tag, an untagged entry with the same digest is replaced.
    Other entries and top-level fields are kept. Canonical JSON, so the same
    inputs give the same bytes.
    """
    doc: JSON = dict(existing or {})
    old = list(doc.get("manifests") or [])

    def same(e: JSON) -> bool:
        names = e.get("annotations") or {}
        if tag:
            return isinstance(names, dict) and names.get(REF_NAME) == tag
        return e.get("digest") == entry["digest"] and not (
            isinstance(names, dict) and names.get(REF_NAME))

    out: list[JSON] = []
    placed = False
    for e in old:
        if isinstance(e, dict) and same(e):
            if not placed:
                out.append(entry)
                placed = True
            continue
        out.append(e)
    if not placed:
        out.append(entry)
    doc["schemaVersion"] = 2
    doc.setdefault("mediaType", mt.OCI_INDEX)
    doc["manifests"] = out
    return canonical_json(doc)


def check_write_ref(artifact: Artifact, ref: Reference) -> None:
    """A write reference may carry a digest only when it is the artifact's own."""
    if ref.digest and ref.digest != artifact.digest:
        raise UsageError(f"cannot write {artifact.digest} to {ref}: the reference names "
                         f"another digest")


# --- writing a layout directory ------------------------------------------------------


class _BlobWriter:
    """Writes blobs into a layout root, remembering what it added (to undo on failure)."""

    def __init__(self, root: Path, where: str) -> None:
        self.root = root
        self.where = where
        self.added: list[Path] = []
        self.made_dirs: list[Path] = []

    def _ensure_dir(self, path: Path) -> None:
        self.made_dirs.extend(make_parents(path, mode=0o755))

    def write(self, item: BlobRef | ManifestRef) -> None:
        desc = item.descriptor
        dest = self.root.joinpath(*blob_path(desc.digest).split("/"))
        existed = False
        try:
            st = dest.stat()
            if st.st_size == desc.size:
                return
            existed = True  # wrong size (a torn copy from elsewhere): replace it
        except FileNotFoundError:
            pass
        self._ensure_dir(dest.parent)
        what = f"{self.where}: blob {desc.digest}"
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".suture-blob-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(item, ManifestRef):
                    out.write(verify_bytes(item.raw, desc.digest, what, desc.size))
                else:
                    with item.open() as stream:
                        copy_verified(stream, out, desc, what)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if not existed:
            self.added.append(dest)

    def sync(self) -> None:
        for d in sorted({p.parent for p in self.added}):
            fsync_dir(d)

    def undo(self, keep: Collection[str] = ()) -> None:
        """Remove the blobs this writer added, but those whose digest is in ``keep``
        (what another writer's ``index.json`` names), and the directories it made."""
        for p in reversed(self.added):
            if f"{p.parent.name}:{p.name}" in keep:
                continue
            with contextlib.suppress(OSError):
                p.unlink()
        for d in reversed(self.made_dirs):
            with contextlib.suppress(OSError):
                d.rmdir()


def _is_layout(path: Path) -> bool:
    return (path / LAYOUT_FILE).is_file()


def make_parents(path: Path, *, mode: int = 0o777) -> list[Path]:
    """Create the missing directories down to ``path`` (``mode`` before the umask);
    return those made, outermost first."""
    made: list[Path] = []
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=mode)
        made.append(d)
    return made


def write_layout_image(artifact: Artifact, ref: Reference) -> str:
    """Write ``artifact`` into the layout ``ref`` names (``oci:DIR[:TAG]``); return its digest.

    See the module docstring for atomicity. Streams opened from the artifact's
    sources are closed here. Without a tag the entry has no ``ref.name``.
    """
    assert ref.path is not None
    check_write_ref(artifact, ref)
    where = f"oci:{ref.path}"
    root = Path(ref.path)
    try:
        if _is_layout(root):
            _write_into_layout(artifact, root, where, ref.tag)
        elif root.exists() and (not root.is_dir() or any(root.iterdir())):
            if not _is_layout(root):  # (another writer may have just renamed one into place)
                raise TransportError(f"{where}: exists and is not an OCI image layout")
            _write_into_layout(artifact, root, where, ref.tag)
        else:
            _write_new_layout(artifact, root, where, ref.tag)
    except OSError as exc:
        raise TransportError(f"{where}: cannot write: {exc.strerror or exc}") from None
    return artifact.digest


@contextlib.contextmanager
def _layout_lock(root: Path) -> Iterator[None]:
    """Hold the exclusive lock every suture writer of the layout at ``root`` takes
    (an ``flock`` on its ``oci-layout`` file) for the duration of the block."""
    fd = os.open(root / LAYOUT_FILE, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_index(store: DirStore) -> JSON | None:
    if store.file_size(INDEX_FILE) is None:
        return None
    # A broken index.json is refused rather than overwritten: it may name other images.
    doc, _ = _parse_index_json(read_small_file(store, INDEX_FILE, MAX_MANIFEST), store.where)
    return doc


_CHILD_KEYS = ("config", "layers", "manifests", "blobs", "subject")


def _reachable(store: DirStore, index: JSON | None) -> set[str]:
    """Every digest ``index`` (an ``index.json``) reaches through the layout's manifests
    and indexes. A manifest that is missing or does not parse counts as reaching
    nothing more: the result decides what may be deleted, so only blobs are missed
    that nothing readable names."""
    seen: set[str] = set()
    stack: list[object] = list((index or {}).get("manifests") or [])
    while stack:
        desc = stack.pop()
        if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str):
            continue
        digest = desc["digest"]
        if digest in seen:
            continue
        seen.add(digest)
        kind = desc.get("mediaType")
        if isinstance(kind, str) and kind not in mt.MANIFEST_TYPES | mt.INDEX_TYPES:
            continue  # a config or a layer: names nothing
        try:
            name = blob_path(digest)
            size = store.file_size(name)
            if size is None or size > MAX_MANIFEST:
                continue
            with store.open_file(name) as stream:
                doc = json.loads(stream.read(MAX_MANIFEST + 1))
        except (ValueError, ManifestError, NotFound, TransportError):
            continue
        if not isinstance(doc, dict):
            continue
        for key in _CHILD_KEYS:
            value = doc.get(key)
            stack.extend(value if isinstance(value, list) else [value])
    return seen


def _write_into_layout(artifact: Artifact, root: Path, where: str, tag: str | None) -> None:
    store = DirStore(root, where)
    _read_index(store)  # refuse a broken index.json before writing anything
    writer = _BlobWriter(root, where)
    try:
        items = list(walk_blobs(artifact))
        for item in items:
            writer.write(item)
        writer.sync()
        entry = index_entry(artifact, tag)
        with _layout_lock(root):
            # Under the lock: another writer's failed run may have removed a blob that
            # was there when this one looked; index.json may have changed since.
            for item in items:
                writer.write(item)
            writer.sync()
            data = merged_index_json(_read_index(store), entry, tag)
            with atomic_file(root / INDEX_FILE) as out:
                out.write(data)
    except BaseException:
        try:
            with _layout_lock(root):
                writer.undo(keep=_reachable(store, _read_index_or_none(store)))
        except OSError:
            pass  # cannot lock (the layout went away): leave the blobs, never a dangling name
        raise


def _read_index_or_none(store: DirStore) -> JSON | None:
    try:
        return _read_index(store)
    except (ManifestError, TransportError, NotFound):
        return None


def _write_new_layout(artifact: Artifact, root: Path, where: str, tag: str | None) -> None:
    made = make_parents(root.parent) if not root.parent.exists() else []
    try:
        tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.", suffix=".tmp"))
        try:
            os.chmod(tmp, 0o755)
            writer = _BlobWriter(tmp, where)
            for item in walk_blobs(artifact):
                writer.write(item)
            writer.sync()
            with atomic_file(tmp / LAYOUT_FILE) as out:
                out.write(LAYOUT_FILE_BYTES)
            with atomic_file(tmp / INDEX_FILE) as out:
                out.write(merged_index_json(None, index_entry(artifact, tag), tag))
            fsync_dir(tmp)
            # Replaces ``root`` if it is an empty directory; fails if anything appeared in it.
            try:
                os.rename(tmp, root)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not _is_layout(root):
                    raise
                # Another writer made the layout first: add this entry to it.
                shutil.rmtree(tmp, ignore_errors=True)
                _write_into_layout(artifact, root, where, tag)
                return
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(root.parent)
    except BaseException:
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
