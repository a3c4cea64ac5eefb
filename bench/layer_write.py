"""Layer writing speed and memory: suture's writer against the stdlib baseline, same run.

    .venv/bin/python bench/layer_write.py [ROOTFS.tar] [--big-mb 1024]

Writes the entries of a real root filesystem tar (default: a cached bookworm
minbase from the test fixtures) as a deterministic layer with: the stdlib's
gzip level 6 (baseline), suture's gzip (ISA-L), and zstd; prints throughput and
the ratio to the baseline. Then streams a synthetic file of ``--big-mb`` MiB
through the writer in a child process and prints that process's peak RSS.
"""

from __future__ import annotations

import argparse
import gzip
import io
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from suture.devtools.rootfs import tar_entries
from suture.oci.digest import HashingWriter
from suture.oci.layer import Entry, write_layer, write_tar


class _Null:
    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass


def _stdlib_gzip(entries: list[Entry]) -> int:
    sink = HashingWriter(None)
    with gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=6, mtime=0) as gz:
        write_tar(entries, gz)
    return sink.size


def _suture(entries: list[Entry], compression: str) -> int:
    return write_layer(entries, _Null(), compression=compression).size


def _big(mb: int) -> None:
    size = mb << 20

    class Zeros(io.RawIOBase):
        left = size

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
            n = min(len(b), self.left)
            b[:n] = b"\x5a" * n
            self.left -= n
            return n

    write_layer([Entry("big", "file", size=size, data=lambda: io.BufferedReader(Zeros()))],
                _Null())
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("rootfs", nargs="?", type=Path)
    parser.add_argument("--big-mb", type=int, default=1024)
    parser.add_argument("--child-big", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_big:
        _big(args.child_big)
        return 0
    # First, while this process is small (Linux keeps the peak RSS across exec).
    out = subprocess.run([sys.executable, __file__, "--child-big", str(args.big_mb)],
                         check=True, capture_output=True, text=True).stdout.strip()
    print(f"peak RSS writing a {args.big_mb} MiB file into a layer: {out} MiB")
    rootfs = args.rootfs
    if rootfs is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.fixtures.debian import debian_rootfs

        rootfs = debian_rootfs("bookworm")
    entries = list(tar_entries(rootfs))
    raw = sum(e.size for e in entries)
    print(f"rootfs {rootfs.name}: {len(entries)} entries, {raw / 1e6:.1f} MB of file data")
    rows = []
    runs: list[tuple[str, Callable[[], int]]] = [
        ("stdlib gzip-6 (baseline)", lambda: _stdlib_gzip(entries)),
        ("suture gzip (isal)", lambda: _suture(entries, "gzip")),
        ("suture zstd", lambda: _suture(entries, "zstd")),
    ]
    for name, fn in runs:
        start = time.perf_counter()
        size = fn()
        rows.append((name, time.perf_counter() - start, size))
    base = rows[0][1]
    for name, seconds, size in rows:
        print(f"{name:26} {seconds:6.2f} s  {raw / seconds / 1e6:6.1f} MB/s  "
              f"{size / 1e6:6.1f} MB out  speed x{base / seconds:4.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
