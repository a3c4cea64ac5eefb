from __future__ import annotations

import gzip
import io
import tracemalloc
import zlib

import pytest
import zstandard

from suture.errors import LayerError
from suture.oci.compression import open_decompressed


def _drain(kind: str, data: bytes) -> tuple[int, int]:
    tracemalloc.start()
    try:
        reader = open_decompressed(io.BytesIO(data), kind)
        total = 0
        while chunk := reader.read(1 << 20):
            total += len(chunk)
        return total, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_bombs_decompress_in_bounded_memory(kind: str) -> None:
    size = 200 << 20
    if kind == "gzip":
        comp = zlib.compressobj(9, zlib.DEFLATED, 31)
        bomb = comp.compress(bytes(size)) + comp.flush()
    else:
        bomb = zstandard.ZstdCompressor(level=19).compress(bytes(size))
    assert len(bomb) < 1 << 20
    total, peak = _drain(kind, bomb)
    assert total == size
    assert peak < 16 << 20


def test_concatenated_gzip_members_are_one_stream() -> None:
    data = gzip.compress(b"first ", mtime=0) + gzip.compress(b"second", mtime=0)
    assert open_decompressed(io.BytesIO(data), "gzip").read() == b"first second"


def test_truncated_and_corrupt_streams() -> None:
    data = gzip.compress(bytes(range(256)) * 4000, mtime=0)
    with pytest.raises(LayerError, match="truncated"):
        open_decompressed(io.BytesIO(data[: len(data) // 2]), "gzip").read()
    with pytest.raises(LayerError, match="corrupt"):
        open_decompressed(io.BytesIO(data[:10] + b"\xff" * 50 + data[60:]), "gzip").read()
    with pytest.raises(LayerError, match="corrupt"):
        open_decompressed(io.BytesIO(b"\x28\xb5\x2f\xfd" + b"\xff" * 64), "zstd").read()
