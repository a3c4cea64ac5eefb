"""Reading ``.deb`` archives from a stream, without extracting anything to disk.

A ``.deb`` is an ``ar`` archive: ``debian-binary`` (``2.0``), then
``control.tar[.gz|.xz|.zst]``, then ``data.tar[.gz|.xz|.zst|.bz2|.lzma]``;
members whose name starts with ``_`` may sit between them and are skipped.
The stream is read once, sequentially; it is never seeked and never closed.
These functions do not check the archive's checksum: hash the stream on the
way in (the repository's ``Packages`` index says what it must be).

Everything read is bounded (DESIGN rule 4): the decompressed control and data
tarballs each have a ceiling, and so has a single file held in memory. Member
paths are normalised (no leading ``./`` or ``/``) and an entry that could land
outside the root, or that is a device node, is refused with a
:class:`~suture.errors.LayerError` naming the member.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from suture.distro.dpkg.control import (
    Conffile,
    Paragraph,
    parse_conffiles,
    parse_md5sums,
    parse_paragraphs,
)
from suture.distro.streams import Decoded, decompressing_reader
from suture.errors import LayerError, PackageDBError, SizeMismatch
from suture.oci.layer import DIR, FIFO, FILE, HARDLINK, SYMLINK, Entry

__all__ = [
    "MAINTAINER_SCRIPTS",
    "MAX_CONTROL_SIZE",
    "MAX_DATA_SIZE",
    "MAX_FILE_SIZE",
    "ControlFile",
    "DataEntry",
    "DebControl",
    "iter_deb_data",
    "read_deb",
    "read_deb_control",
]

MAX_CONTROL_SIZE = 256 << 20
"""Ceiling on the decompressed ``control.tar`` (the largest in Debian are a few MiB)."""
MAX_DATA_SIZE = 16 << 30
"""Ceiling on the decompressed ``data.tar`` of one package."""
MAX_FILE_SIZE = 1 << 30
"""Ceiling on one regular file of a package."""
SPOOL_MIN = 1 << 20
"""Regular files at least this large go to the spool directory when one is given."""

MAINTAINER_SCRIPTS = ("preinst", "postinst", "prerm", "postrm", "config")
"""Control members dpkg runs (``config`` is debconf's)."""

_AR_MAGIC = b"!<arch>\n"
_AR_HEADER = 60
_COMPRESSIONS = {"": "none", ".gz": "gzip", ".xz": "xz", ".zst": "zstd", ".bz2": "bzip2",
                 ".lzma": "lzma"}
_CHUNK = 1 << 16


# --------------------------------------------------------------------------- models

@dataclass(frozen=True, slots=True)
class ControlFile:
    """One member of ``control.tar``: its name (``postinst``), permission bits and bytes."""

    name: str
    mode: int
    data: bytes


@dataclass(frozen=True)
class DebControl:
    """The control part of a ``.deb``.

    ``paragraph`` is the parsed ``control`` file; ``files`` holds every member
    of ``control.tar`` by name (``control``, ``md5sums``, ``conffiles``,
    ``postinst``, ``triggers``, ``shlibs``, ``symbols``, ``templates``...), in
    archive order, bytes as shipped. ``control_compression`` and
    ``data_compression`` name the compressors (``gzip``, ``xz``, ``zstd``,
    ``bzip2``, ``lzma`` or ``none``); the latter is ``""`` when only the
    control part was read.
    """

    paragraph: Paragraph
    files: Mapping[str, ControlFile]
    format_version: str = "2.0"
    control_compression: str = "none"
    data_compression: str = ""

    @property
    def name(self) -> str:
        return self.paragraph.get("Package") or ""

    @property
    def version(self) -> str:
        return self.paragraph.get("Version") or ""

    @property
    def architecture(self) -> str:
        return self.paragraph.get("Architecture") or ""

    def get(self, name: str) -> bytes | None:
        """The bytes of control member ``name``, or ``None`` when the package has none."""
        member = self.files.get(name)
        return None if member is None else member.data

    @property
    def conffiles(self) -> list[Conffile]:
        """The package's declared conffiles (without hashes), ``[]`` when none."""
        data = self.get("conffiles")
        return parse_conffiles(data) if data else []

    @property
    def md5sums(self) -> dict[str, str]:
        """``{path: md5}`` from the ``md5sums`` member (paths relative, as shipped)."""
        data = self.get("md5sums")
        return parse_md5sums(data) if data else {}

    @property
    def scripts(self) -> dict[str, ControlFile]:
        """The maintainer scripts present, by name (``preinst``... ``config``)."""
        return {n: self.files[n] for n in MAINTAINER_SCRIPTS if n in self.files}


@dataclass(frozen=True, slots=True)
class DataEntry:
    """One member of ``data.tar``, in archive order.

    ``path`` is relative to the root, without ``./``, a leading or trailing
    ``/`` or ``.``/empty components. ``kind`` is one of the layer kinds
    (``file``, ``dir``, ``symlink``, ``hardlink``, ``fifo``). ``mode`` holds the
    permission bits, setuid/setgid/sticky included. ``uname``/``gname`` are the
    owner names the archive records (dpkg maps them through the target's
    ``passwd``/``group`` when they resolve there). For a symlink ``linkname``
    is the target as written (it may be absolute: it is never followed); for a
    hard link it is the normalised path of an earlier regular file of the same
    package. ``data`` is the file's contents for a regular file, else ``None``:
    bytes, or for a large file read with a spool directory an opener of its
    copy there (the caller owns the directory). ``md5`` is the file's MD5 (hex)
    when it was computed while reading, else empty.
    """

    path: str
    kind: str
    mode: int
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mtime: int = 0
    size: int = 0
    linkname: str = ""
    data: bytes | Callable[[], IO[bytes]] | None = field(default=None, repr=False)
    md5: str = ""

    def read(self) -> bytes:
        """A regular file's contents as bytes (from the spool when it was spooled)."""
        if callable(self.data):
            with self.data() as stream:
                return stream.read()
        return self.data or b""

    def md5sum(self) -> str:
        """A regular file's MD5 (hex), as ``md5sums`` lists it."""
        if self.md5:
            return self.md5
        return hashlib.md5(self.read(), usedforsecurity=False).hexdigest()

    def to_entry(self, *, uid: int | None = None, gid: int | None = None,
                 mtime: int | None = None) -> Entry:
        """This member as a layer :class:`~suture.oci.layer.Entry`, with optional overrides."""
        return Entry(
            self.path, self.kind, self.mode,
            uid=self.uid if uid is None else uid,
            gid=self.gid if gid is None else gid,
            mtime=self.mtime if mtime is None else mtime,
            size=self.size if self.kind == FILE else 0,
            linkname=self.linkname,
            data=self.data if self.kind == FILE else None,
        )


# --------------------------------------------------------------------------- ar

def _read_exact(stream: IO[bytes], n: int, what: str) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise LayerError(f"{what}: truncated archive ({n - left} of {n} bytes)")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class _MemberReader(io.RawIOBase):
    """Reads exactly the ``size`` bytes of one ``ar`` member from the shared stream."""

    def __init__(self, stream: IO[bytes], size: int, what: str) -> None:
        super().__init__()
        self._stream, self._left, self._what = stream, size, what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._left)
        if want == 0:
            return 0
        data = self._stream.read(want)
        if not data:
            raise LayerError(f"{self._what}: truncated archive ({self._left} bytes missing)")
        view[: len(data)] = data
        self._left -= len(data)
        return len(data)

    def drain(self) -> None:
        while self._left:
            self.read(min(self._left, _CHUNK))

    def close(self) -> None:  # never closes the shared stream
        super().close()


class _ArReader:
    """Walks the members of an ``ar`` archive, one at a time, on a forward-only stream."""

    def __init__(self, stream: IO[bytes], source: str) -> None:
        self._stream = stream
        self._source = source
        self._current: _MemberReader | None = None
        self._pad = 0
        if _read_exact(stream, len(_AR_MAGIC), source) != _AR_MAGIC:
            raise LayerError(f"{source}: not a .deb (no ar archive header)")

    def next_member(self) -> tuple[str, _MemberReader] | None:
        if self._current is not None:
            self._current.drain()
            if self._pad:
                _read_exact(self._stream, self._pad, self._source)
        header = self._stream.read(_AR_HEADER)
        if not header:
            return None
        if len(header) < _AR_HEADER:
            header += _read_exact(self._stream, _AR_HEADER - len(header), self._source)
        if header[58:60] != b"`\n":
            raise LayerError(f"{self._source}: corrupt ar member header")
        name = header[:16].decode("ascii", "replace").rstrip(" ")
        if name.endswith("/") and name != "/":  # GNU ar terminates names with a slash
            name = name[:-1]
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise LayerError(f"{self._source}: member {name!r}: bad size field") from None
        self._pad = size % 2
        self._current = _MemberReader(self._stream, size, f"{self._source}: {name}")
        return name, self._current


# --------------------------------------------------------------------------- decompression

def _decompressed(raw: _MemberReader, kind: str, limit: int, what: str) -> IO[bytes]:
    # The decompressor wraps ``raw`` without owning it and lives as long as the tar
    # reader does: there is nothing to close here.
    inner = decompressing_reader(cast(IO[bytes], raw), kind)

    def error(message: str) -> Exception:
        return LayerError(f"{what}: cannot decompress: {message}")

    def ceiling(count: int) -> None:
        if count > limit:
            raise SizeMismatch(what, limit, count, ceiling=True)

    return io.BufferedReader(Decoded(inner, error, ceiling), _CHUNK)


def _tar_kind(member: str, prefix: str, source: str) -> str:
    suffix = member[len(prefix):]
    if not member.startswith(prefix) or suffix not in _COMPRESSIONS:
        raise LayerError(f"{source}: unexpected member {member!r} where {prefix}* should be",
                         path=member)
    return _COMPRESSIONS[suffix]


# --------------------------------------------------------------------------- paths

def _normalise(name: str, source: str) -> str:
    """``./usr/bin/x`` -> ``usr/bin/x``; ``./`` -> ``""``; refuses ``..`` and newlines."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerError(f"{source}: member {name!r} has a '..' component", path=name)
    if "\n" in name or "\0" in name:
        raise LayerError(f"{source}: member {name!r} has a newline in its name", path=name)
    return "/".join(parts)


def _tar_members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while True:
        info = tar.next()
        if info is None:
            return
        # A stream is read once: do not keep every header in memory.
        cast(Any, tar).members.clear()
        yield info


def _open_tar(stream: IO[bytes], what: str) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=stream, mode="r|", encoding="utf-8",
                            errors="surrogateescape")
    except tarfile.TarError as exc:
        raise LayerError(f"{what}: not a tar archive: {exc}") from None


def _read_file(tar: tarfile.TarFile, info: tarfile.TarInfo, what: str, limit: int) -> bytes:
    if info.size > limit:
        raise SizeMismatch(f"{what}: {info.name}", limit, info.size, ceiling=True)
    handle = tar.extractfile(info)
    data = handle.read() if handle is not None else b""
    if len(data) != info.size:
        raise LayerError(f"{what}: member {info.name!r} is truncated", path=info.name)
    return data


# --------------------------------------------------------------------------- reading

def _read_control_member(reader: _MemberReader, kind: str, source: str,
                         max_size: int) -> tuple[Paragraph, dict[str, ControlFile]]:
    what = f"{source}: control.tar"
    files: dict[str, ControlFile] = {}
    stream = _decompressed(reader, kind, max_size, what)
    tar = _open_tar(stream, what)
    try:
        for info in _tar_members(tar):
            name = _normalise(info.name, what)
            if name == "" and info.isdir():
                continue
            if not info.isreg() or "/" in name:
                raise LayerError(f"{what}: unexpected member {info.name!r} (control members "
                                 "are plain files)", path=info.name)
            if name in files:
                raise LayerError(f"{what}: member {name!r} given twice", path=info.name)
            files[name] = ControlFile(name, info.mode & 0o7777,
                                      _read_file(tar, info, what, max_size))
    except tarfile.TarError as exc:
        raise LayerError(f"{what}: corrupt tar: {exc}") from None
    if "control" not in files:
        raise LayerError(f"{what}: no control file", path="control")
    paragraphs = parse_paragraphs(files["control"].data, source=f"{source}: control")
    if len(paragraphs) != 1:
        raise PackageDBError(f"{len(paragraphs)} paragraphs, expected one", path=f"{source}: "
                             "control")
    return paragraphs[0], files


class _Deb:
    """The member sequence of one ``.deb``: debian-binary, control.tar, data.tar."""

    def __init__(self, stream: IO[bytes], source: str) -> None:
        self.source = source
        self._ar = _ArReader(stream, source)
        member = self._ar.next_member()
        if member is None or member[0] != "debian-binary":
            raise LayerError(f"{source}: not a .deb (first member is not debian-binary)")
        version = member[1].read(64).decode("ascii", "replace")
        if not version.startswith("2."):
            raise LayerError(f"{source}: unsupported .deb format version {version.strip()!r}")
        self.format_version = version.strip()

    def next_tar(self, prefix: str) -> tuple[str, _MemberReader]:
        while True:
            member = self._ar.next_member()
            if member is None:
                raise LayerError(f"{self.source}: no {prefix}* member", path=prefix)
            if not member[0].startswith("_"):  # "_"-members are extensions dpkg ignores
                return _tar_kind(member[0], prefix, self.source), member[1]


def read_deb_control(stream: IO[bytes], *, source: str = "<deb>",
                     max_size: int = MAX_CONTROL_SIZE) -> DebControl:
    """Read the control part of a ``.deb`` from ``stream`` (positioned at its start).

    Reads up to the end of ``control.tar`` and no further; ``stream`` is not
    closed. ``source`` names the package in errors: :class:`LayerError` for a
    malformed archive, :class:`SizeMismatch` over ``max_size`` decompressed
    bytes, :class:`PackageDBError` for a ``control`` file that does not parse.
    """
    deb = _Deb(stream, source)
    kind, reader = deb.next_tar("control.tar")
    paragraph, files = _read_control_member(reader, kind, source, max_size)
    return DebControl(paragraph, files, deb.format_version, kind)


def iter_deb_data(stream: IO[bytes], *, source: str = "<deb>", max_size: int = MAX_DATA_SIZE,
                  max_file_size: int = MAX_FILE_SIZE) -> Iterator[DataEntry]:
    """Yield the members of a ``.deb``'s ``data.tar`` in archive order.

    ``stream`` is positioned at the start of the ``.deb``; the control part is
    skipped unread. The root directory entry (``./``) is not yielded. Each
    regular file's bytes are read into :attr:`DataEntry.data` (at most
    ``max_file_size`` each, ``max_size`` in all, decompressed; beyond either,
    :class:`SizeMismatch`). Refused with :class:`LayerError` naming the member:
    a ``..`` component or a newline in a name, a path given twice, a path
    below a symlink of the package, a hard link to anything but an earlier
    regular file of the package, device nodes and any other special member.
    The generator reads ``stream`` lazily; it does not close it.
    """
    deb = _Deb(stream, source)
    deb.next_tar("control.tar")
    kind, reader = deb.next_tar("data.tar")
    return _iter_data(reader, kind, source, max_size, max_file_size)


def read_deb(stream: IO[bytes], *, source: str = "<deb>",
             max_control_size: int = MAX_CONTROL_SIZE, max_size: int = MAX_DATA_SIZE,
             max_file_size: int = MAX_FILE_SIZE, include_root: bool = False,
             spool: Path | None = None) -> tuple[DebControl, Iterator[DataEntry]]:
    """Read a ``.deb`` in one pass: its control part now, its data lazily.

    The same contracts as :func:`read_deb_control` and :func:`iter_deb_data`;
    iterate the data before reading anything else from ``stream``. With
    ``include_root`` the archive's root directory member (``./``), when it has
    one, is yielded too, first, as a directory with the empty path. With
    ``spool`` (an existing directory the caller removes), regular files of
    :data:`SPOOL_MIN` bytes or more are copied there as they are read, not held
    in memory (see :attr:`DataEntry.data`).
    """
    deb = _Deb(stream, source)
    control_kind, reader = deb.next_tar("control.tar")
    paragraph, files = _read_control_member(reader, control_kind, source, max_control_size)
    data_kind, reader = deb.next_tar("data.tar")
    control = DebControl(paragraph, files, deb.format_version, control_kind, data_kind)
    return control, _iter_data(reader, data_kind, source, max_size, max_file_size,
                               include_root, spool)


def _iter_data(reader: _MemberReader, kind: str, source: str, max_size: int,
               max_file_size: int, include_root: bool = False,
               spool: Path | None = None) -> Iterator[DataEntry]:
    what = f"{source}: data.tar"
    stream = _decompressed(reader, kind, max_size, what)
    tar = _open_tar(stream, what)
    seen: set[str] = set()
    regular: set[str] = set()  # files (and hard links to them) a hard link may point to
    symlinks: set[str] = set()
    try:
        for info in _tar_members(tar):
            path = _normalise(info.name, what)
            if not path:
                if info.isdir():
                    if include_root and not seen:
                        seen.add(path)
                        yield DataEntry("", DIR, mode=info.mode & 0o7777, uid=info.uid,
                                        gid=info.gid, uname=info.uname, gname=info.gname,
                                        mtime=int(info.mtime))
                    continue
                raise LayerError(f"{what}: member {info.name!r} has an empty path",
                                 path=info.name)
            if path in seen:
                raise LayerError(f"{what}: member {path!r} given twice", path=path)
            seen.add(path)
            parent = path
            while "/" in parent:
                parent = parent.rpartition("/")[0]
                if parent in symlinks:
                    raise LayerError(f"{what}: member {path!r} lies below the symlink "
                                     f"{parent!r}", path=path)
            yield _data_entry(tar, info, path, what, regular, symlinks, max_file_size, spool)
    except tarfile.TarError as exc:
        raise LayerError(f"{what}: corrupt tar: {exc}") from None


def _spooled(tar: tarfile.TarFile, info: tarfile.TarInfo, what: str, limit: int,
             spool: Path) -> tuple[Callable[[], IO[bytes]], str]:
    """Copy a regular member into ``spool``: an opener of the copy, and its MD5."""
    if info.size > limit:
        raise SizeMismatch(f"{what}: {info.name}", limit, info.size, ceiling=True)
    handle = tar.extractfile(info)
    md5 = hashlib.md5(usedforsecurity=False)
    fd, name = tempfile.mkstemp(dir=spool, prefix="member-")
    copied = 0
    with os.fdopen(fd, "wb") as out:
        while handle is not None and (chunk := handle.read(_CHUNK * 16)):
            md5.update(chunk)
            out.write(chunk)
            copied += len(chunk)
    if copied != info.size:
        raise LayerError(f"{what}: member {info.name!r} is truncated", path=info.name)

    def opener() -> IO[bytes]:
        return open(name, "rb")  # the caller closes it

    return opener, md5.hexdigest()


def _data_entry(tar: tarfile.TarFile, info: tarfile.TarInfo, path: str, what: str,
                regular: set[str], symlinks: set[str], max_file_size: int,
                spool: Path | None = None) -> DataEntry:
    common: dict[str, Any] = {
        "mode": info.mode & 0o7777, "uid": info.uid, "gid": info.gid, "uname": info.uname,
        "gname": info.gname, "mtime": int(info.mtime),
    }
    if info.isreg():
        if info.issparse():
            raise LayerError(f"{what}: sparse member {info.name!r} is not supported", path=path)
        regular.add(path)
        if spool is not None and info.size >= SPOOL_MIN:
            opener, md5 = _spooled(tar, info, what, max_file_size, spool)
            return DataEntry(path, FILE, size=info.size, data=opener, md5=md5, **common)
        return DataEntry(path, FILE, size=info.size,
                         data=_read_file(tar, info, what, max_file_size), **common)
    if info.isdir():
        return DataEntry(path, DIR, **common)
    if info.issym():
        if not info.linkname:
            raise LayerError(f"{what}: symlink {info.name!r} has no target", path=path)
        symlinks.add(path)
        return DataEntry(path, SYMLINK, linkname=info.linkname, **common)
    if info.islnk():
        target = _normalise(info.linkname, what)
        if target not in regular:
            raise LayerError(f"{what}: hard link {info.name!r} points to {info.linkname!r}, "
                             "which is not an earlier file of the package", path=path)
        regular.add(path)
        return DataEntry(path, HARDLINK, linkname=target, **common)
    if info.isfifo():
        return DataEntry(path, FIFO, **common)
    if info.ischr() or info.isblk():
        raise LayerError(f"{what}: refusing device node {info.name!r}", path=path)
    raise LayerError(f"{what}: member {info.name!r} has unsupported type {info.type!r}",
                     path=path)
