from __future__ import annotations

import gzip
import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from suture.errors import LayerError
from suture.oci.digest import sha256
from suture.oci.layer import DIR, HARDLINK, SYMLINK, Entry, write_layer


def _entries(opener_calls: list[int] | None = None) -> list[Entry]:
    big = b"x" * 300_000

    def opener() -> io.BytesIO:
        if opener_calls is not None:
            opener_calls.append(1)
        return io.BytesIO(big)

    return [
        Entry.file("usr/bin/tool", b"#!/bin/sh\necho hi\n", 0o4755, uid=0, gid=0),
        Entry("usr", DIR, 0o755),
        Entry("usr/bin", DIR, 0o755),
        Entry("usr/lib/big", "file", 0o644, size=len(big), data=opener),
        Entry("usr/bin/tool2", HARDLINK, 0o755, linkname="usr/bin/tool"),
        Entry("bin", SYMLINK, 0o777, linkname="usr/bin"),
        Entry.file("usr/share/" + "long-ünïcode-" * 12 + ".txt", b"u"),
        Entry.file("usr/bin/ping", b"elf", 0o755,
                   xattrs={"security.capability": b"\x01\x00\x00\x02\x00\x20\x00\x00"}),
        Entry.whiteout("etc/removed"),
        Entry.opaque("var/cache"),
    ]


def test_same_entries_same_bytes_in_any_order() -> None:
    a, b = io.BytesIO(), io.BytesIO()
    info_a = write_layer(_entries(), a)
    info_b = write_layer(list(reversed(_entries())), b)
    assert a.getvalue() == b.getvalue()
    assert info_a == info_b
    assert info_a.digest == sha256(a.getvalue()) and info_a.size == len(a.getvalue())
    assert info_a.diff_id == sha256(gzip.decompress(a.getvalue()))
    # gzip header: no mtime, no name.
    assert a.getvalue()[4:8] == b"\0\0\0\0" and a.getvalue()[3] & 0x08 == 0


def test_gnu_tar_reads_it_back(tmp_path: Path) -> None:
    blob = tmp_path / "layer.tar.gz"
    with blob.open("wb") as out:
        write_layer(_entries(), out)
    listing = subprocess.run(["tar", "--numeric-owner", "-tvzf", str(blob)], check=True,
                             capture_output=True, text=True).stdout
    lines = listing.splitlines()
    names = [line.split()[-1] if "->" not in line and " link to " not in line else line
             for line in lines]
    assert any(n.startswith("bin -> usr/bin") or "bin -> usr/bin" in n for n in names)
    assert "usr/bin/tool2 link to usr/bin/tool" in listing
    assert "-rwsr-xr-x 0/0" in listing  # setuid kept
    assert "1970-01-01" in listing
    # Directory entries come before what they hold.
    order = [line.split()[5] for line in lines]
    assert order.index("usr/") < order.index("usr/bin/") < order.index("usr/bin/tool")
    root = tmp_path / "x"
    root.mkdir()
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "-xzf", str(blob), "-C", str(root)],
                   check=True)
    assert (root / "usr/lib/big").read_bytes() == b"x" * 300_000
    assert (root / "usr/share" / ("long-ünïcode-" * 12 + ".txt")).read_bytes() == b"u"
    assert (root / "etc/.wh.removed").exists() and (root / "var/cache/.wh..wh..opq").exists()


def test_xattrs_round_trip_through_python_tar() -> None:
    buf = io.BytesIO()
    write_layer(_entries(), buf)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(buf.getvalue()))) as tar:
        ping = tar.getmember("usr/bin/ping")
        raw = ping.pax_headers["SCHILY.xattr.security.capability"]
        assert raw.encode("utf-8", "surrogateescape") == b"\x01\x00\x00\x02\x00\x20\x00\x00"


def test_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    buf = io.BytesIO()
    write_layer([Entry.file("a", b"1")], buf, compression="none")
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        assert tar.getmember("a").mtime == 1700000000


def test_zstd_layers_decompress_with_zstd_tool(tmp_path: Path) -> None:
    blob = tmp_path / "l.tar.zst"
    with blob.open("wb") as out:
        info = write_layer(_entries(), out, compression="zstd")
    assert info.media_type.endswith("+zstd")
    plain = subprocess.run(["zstd", "-dc", str(blob)], check=True, capture_output=True).stdout
    assert sha256(plain) == info.diff_id


@pytest.mark.parametrize("path", ["../evil", "a/../../b", "/", "a/./b"])
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(LayerError):
        write_layer([Entry.file(path, b"x")], io.BytesIO())


def test_wrong_sizes_are_refused() -> None:
    with pytest.raises(LayerError, match="shorter"):
        write_layer([Entry("a", "file", size=10, data=lambda: io.BytesIO(b"123"))], io.BytesIO())
    with pytest.raises(LayerError, match="longer"):
        write_layer([Entry("a", "file", size=2, data=lambda: io.BytesIO(b"123"))], io.BytesIO())
    with pytest.raises(LayerError, match="duplicate"):
        write_layer([Entry.file("a", b"1"), Entry.file("a", b"2")], io.BytesIO())


def test_memory_flat_for_big_streamed_files() -> None:
    """A 256 MiB file streams through in chunks: peak traced memory stays small."""
    import tracemalloc

    size = 256 << 20

    class Zeros(io.RawIOBase):
        def __init__(self) -> None:
            self.left = size

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
            n = min(len(b), self.left)
            b[:n] = bytes(n)
            self.left -= n
            return n

    class Sink:
        def write(self, data: bytes) -> int:
            return len(data)

    tracemalloc.start()
    write_layer([Entry("zeros", "file", size=size,
                       data=lambda: io.BufferedReader(Zeros()))], Sink())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 32 << 20
