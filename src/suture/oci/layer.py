"""A deterministic, streaming layer writer.

Entries are written as PAX tar, sorted by path components (a directory before
what it holds; hard links after everything else, so their targets come first),
with the ownership and times the caller gives (or ``SOURCE_DATE_EPOCH``, or 0),
empty user and group names, and through a deterministic compressor. The same
entries give the same bytes, digest and diff_id. Memory stays flat: file contents
are streamed from their openers.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Protocol, cast

from suture.errors import LayerError
from suture.oci import mediatypes as mt
from suture.oci.compression import CompressingWriter
from suture.oci.digest import HashingWriter
from suture.oci.model import Descriptor

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"

FILE, DIR, SYMLINK, HARDLINK, CHAR, BLOCK, FIFO = "file", "dir", "symlink", "hardlink", "char", \
    "block", "fifo"
_TAR_TYPES = {FILE: tarfile.REGTYPE, DIR: tarfile.DIRTYPE, SYMLINK: tarfile.SYMTYPE,
              HARDLINK: tarfile.LNKTYPE, CHAR: tarfile.CHRTYPE, BLOCK: tarfile.BLKTYPE,
              FIFO: tarfile.FIFOTYPE}


def default_mtime() -> int:
    """``SOURCE_DATE_EPOCH`` when set (reproducible builds), else 0."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(value) if value.isdigit() else 0


@dataclass(frozen=True)
class Entry:
    """One entry of a layer. ``path`` is relative to the root, without a leading slash."""

    path: str
    kind: str = FILE
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int | None = None
    size: int = 0
    linkname: str = ""
    # Contents of a regular file: bytes, or an opener returning a stream the writer closes.
    data: bytes | Callable[[], IO[bytes]] | None = None
    xattrs: dict[str, bytes] = field(default_factory=dict)
    devmajor: int = 0
    devminor: int = 0

    @classmethod
    def whiteout(cls, path: str, mtime: int | None = None) -> Entry:
        parent, _, name = path.rstrip("/").rpartition("/")
        return cls(join(parent, WHITEOUT_PREFIX + name), FILE, 0o644, mtime=mtime)

    @classmethod
    def opaque(cls, directory: str, mtime: int | None = None) -> Entry:
        return cls(join(directory.rstrip("/"), OPAQUE), FILE, 0o644, mtime=mtime)

    @classmethod
    def file(cls, path: str, data: bytes, mode: int = 0o644, **kw: object) -> Entry:
        return cls(path, FILE, mode, size=len(data), data=data, **kw)  # type: ignore[arg-type]


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def sort_key(path: str) -> tuple[str, ...]:
    return tuple(path.strip("/").split("/"))


@dataclass(frozen=True)
class LayerInfo:
    """What a written layer is: its blob digest and size, its diff_id, its media type."""

    digest: str
    diff_id: str
    size: int
    media_type: str
    compression: str

    def descriptor(
        self, *, docker: bool = False, annotations: dict[str, str] | None = None
    ) -> Descriptor:
        return Descriptor(mt.layer_media_type(self.compression, docker=docker), self.digest,
                          self.size, annotations=dict(annotations or {}))


def _tarinfo(entry: Entry, mtime: int) -> tarfile.TarInfo:
    if entry.kind not in _TAR_TYPES:
        raise LayerError(f"unknown entry kind {entry.kind!r}", path=entry.path)
    path = entry.path.strip("/")
    if not path or any(part in ("", ".", "..") for part in path.split("/")):
        raise LayerError(f"refusing unsafe path {entry.path!r}", path=entry.path)
    info = tarfile.TarInfo(path + ("/" if entry.kind == DIR else ""))
    info.type = _TAR_TYPES[entry.kind]
    info.mode = entry.mode & 0o7777
    info.uid, info.gid = entry.uid, entry.gid
    info.uname = info.gname = ""
    info.mtime = entry.mtime if entry.mtime is not None else mtime
    info.size = entry.size if entry.kind == FILE else 0
    info.linkname = entry.linkname
    info.devmajor, info.devminor = entry.devmajor, entry.devminor
    if entry.xattrs:
        info.pax_headers = {
            "SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape")
            for k, v in sorted(entry.xattrs.items())
        }
    return info


class Writable(Protocol):
    """Anything with ``write(bytes)``: a file, a hashing or compressing stream."""

    def write(self, data: bytes, /) -> int: ...


def write_tar(entries: Iterable[Entry], out: Writable, *, mtime: int | None = None) -> None:
    """Write ``entries`` as a sorted, deterministic PAX tar stream into ``out``."""
    when = default_mtime() if mtime is None else mtime
    # Hard links go last, so their targets always precede them in the stream.
    ordered = sorted(entries, key=lambda e: (e.kind == HARDLINK, sort_key(e.path)))
    seen: set[str] = set()
    with tarfile.open(fileobj=cast(IO[bytes], out), mode="w|", format=tarfile.PAX_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tar:
        for entry in ordered:
            key = entry.path.strip("/")
            if key in seen:
                raise LayerError(f"duplicate entry {entry.path!r}", path=entry.path)
            seen.add(key)
            info = _tarinfo(entry, when)
            if entry.kind != FILE:
                tar.addfile(info)
                continue
            if isinstance(entry.data, bytes | bytearray):
                if len(entry.data) != entry.size:
                    raise LayerError(f"{entry.path}: size {entry.size} but {len(entry.data)} "
                                     "bytes of data", path=entry.path)
                tar.addfile(info, io.BytesIO(entry.data))
            elif entry.data is None:
                if entry.size:
                    raise LayerError(f"{entry.path}: no data for {entry.size} bytes",
                                     path=entry.path)
                tar.addfile(info)
            else:
                with entry.data() as stream:
                    tar.addfile(info, _ExactReader(stream, entry.size, entry.path))


class _ExactReader:
    """Reads exactly ``size`` bytes, failing if the stream is shorter or longer."""

    def __init__(self, stream: IO[bytes], size: int, path: str) -> None:
        self._stream, self._left, self._path = stream, size, path

    def read(self, n: int = -1) -> bytes:
        want = self._left if n < 0 else min(n, self._left)
        data = self._stream.read(want) if want else b""
        if len(data) < want:
            raise LayerError(f"{self._path}: file shorter than its recorded size",
                             path=self._path)
        self._left -= len(data)
        if self._left == 0 and self._stream.read(1):
            raise LayerError(f"{self._path}: file longer than its recorded size",
                             path=self._path)
        return data


def write_layer(
    entries: Iterable[Entry],
    out: Writable,
    *,
    compression: str = "gzip",
    mtime: int | None = None,
    threads: int = 0,
) -> LayerInfo:
    """Write a compressed layer blob into ``out`` and return its digests.

    The diff_id (uncompressed) and digest (compressed) are computed while writing.
    ``out`` is written sequentially and not closed.
    """
    compressed = HashingWriter(out)
    compressor = CompressingWriter(compressed, compression, threads=threads)
    plain = HashingWriter(compressor)
    write_tar(entries, plain, mtime=mtime)
    compressor.close()
    if compression == "none":
        media = mt.OCI_LAYER
    else:
        media = mt.layer_media_type(compression, docker=False)
    return LayerInfo(compressed.digest, plain.digest, compressed.size, media, compression)


def layer_from_tar(tar_stream: IO[bytes], out: Writable, *,
                   compression: str = "gzip", threads: int = 0) -> LayerInfo:
    """Compress an existing tar stream into a layer blob, as is (entries not rewritten).

    The stream is checked to be a readable tar afterwards by the caller, if it cares;
    here it is only hashed and compressed. Neither stream is closed.
    """
    compressed = HashingWriter(out)
    compressor = CompressingWriter(compressed, compression, threads=threads)
    plain = HashingWriter(compressor)
    while chunk := tar_stream.read(1 << 20):
        plain.write(chunk)
    compressor.close()
    media = mt.layer_media_type(compression, docker=False)
    return LayerInfo(compressed.digest, plain.digest, compressed.size, media, compression)
