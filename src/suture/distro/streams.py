"""Streaming decompression of package payloads, shared by the families (a ``.deb``'s
``data.tar.*``, an rpm's cpio payload).

:func:`decompressing_reader` wraps a stream without owning it: the caller bounds what
it reads (a ceiling on the decompressed size) and turns the decompressors' errors
into its own, since only it can name the package.
"""

from __future__ import annotations

import bz2
import io
import lzma
from collections.abc import Callable
from typing import IO, Any, cast

from suture.errors import SutureError

__all__ = ["KINDS", "Decoded", "decompressing_reader"]

KINDS = ("none", "gzip", "xz", "lzma", "bzip2", "zstd")


def decompressing_reader(raw: IO[bytes], kind: str) -> IO[bytes]:
    """A stream of ``raw`` decompressed as ``kind`` (one of :data:`KINDS`; gzip through
    ISA-L). Closing it does not close ``raw``."""
    inner: Any
    if kind == "none":
        return raw
    if kind == "gzip":
        from isal import igzip

        inner = igzip.IGzipFile(fileobj=raw, mode="rb")  # type: ignore[no-untyped-call]
    elif kind == "xz":
        inner = lzma.LZMAFile(raw, "rb", format=lzma.FORMAT_XZ)  # noqa: SIM115
    elif kind == "lzma":
        inner = lzma.LZMAFile(raw, "rb", format=lzma.FORMAT_ALONE)  # noqa: SIM115
    elif kind == "bzip2":
        inner = bz2.BZ2File(raw, "rb")
    elif kind == "zstd":
        import zstandard

        inner = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True,
                                                           closefd=False)
    else:
        raise ValueError(f"unknown compression {kind!r}")
    return cast(IO[bytes], inner)


class Decoded(io.RawIOBase):
    """The bytes of a decompressing stream ``inner``, with its decoder's failures (zlib,
    lzma, bz2, zstd, EOFError, OSError) turned into ``error(message)`` and, with
    ``ceiling``, a check called with the running total after every read (it raises
    when too much has come out). Wrap it in a :class:`io.BufferedReader`."""

    def __init__(self, inner: Any, error: Callable[[str], Exception],
                 ceiling: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self._inner, self._error, self._ceiling, self.count = inner, error, ceiling, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = self._inner.read(len(view))
        except SutureError:
            raise
        except Exception as exc:  # the decoders' own errors
            raise self._error(str(exc)) from None
        self.count += len(data)
        if self._ceiling is not None:
            self._ceiling(self.count)
        view[: len(data)] = data
        return len(data)
