"""Streaming decompression of package payloads, shared by the families (a ``.deb``'s
``data.tar.*``, an rpm's cpio payload).

:func:`decompressing_reader` wraps a stream without owning it: the caller bounds what
it reads (a ceiling on the decompressed size) and turns the decompressors' errors
into its own, since only it can name the package.
"""

from __future__ import annotations

import bz2
import lzma
from typing import IO, Any, cast

__all__ = ["KINDS", "decompressing_reader"]

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
