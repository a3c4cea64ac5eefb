"""Peak memory of ``suture patch`` on images of growing size: is it flat?

    .venv/bin/python bench/patch_memory.py [--sizes 0,256,512,1024] [--file-kib 1024]
                                           [--zeros-mib 512] [--env NAME=VALUE ...]
                                           [--root-in-shm]

Images: the bookworm root filesystem with openssl, ca-certificates and curl
(tests/fixtures/debian.py, mmdebstrap from the point release, cached per day) as one
layer, plus, for each size N in ``--sizes`` (MiB), a second layer of N MiB of
incompressible (random) data in files of ``--file-kib`` KiB under ``/opt/bench``; and
one more image whose second layer is a single file of ``--zeros-mib`` MiB of zeros
(highly compressible: a layer that inflates a thousandfold, as sparse files and disk
images do). All go into one OCI layout. Every image gets the same updates: a first run
fills a package cache that every measured run then uses (no network while measuring).

Each patch runs ``suture.cli.main`` in a child process that reports its own peak RSS
(``ru_maxrss``). This process imports nothing of suture and builds the images in
another child, so it stays small: a child's ``ru_maxrss`` counts the parent's RSS at
fork. (The maintainer scripts' processes are not counted: they are small, and their
``ru_maxrss`` would only repeat suture's, which they are forked from.)

The child also samples how much of ``/dev/shm`` is in use every 20 ms: suture builds
the root for maintainer scripts there, which is memory though not the process's RSS.
As root the child gets a private, empty ``/dev/shm`` (a mount namespace), so other
processes' use of it does not count; otherwise the shared one is sampled. It samples
the peak RSS of suture's extraction helper too (the child process that writes that
root from the layers; its memory is not in suture's ``ru_maxrss``).
``--env`` sets variables for the child only (e.g. ``MALLOC_MMAP_THRESHOLD_=131072``
to see how much of the peak is the C allocator keeping freed memory).

"total" is what the run holds in memory that the kernel cannot take back: suture's
peak RSS + the helper's + the peak of ``/dev/shm`` (tmpfs pages are not reclaimable
without swap). Since the scripts' root is written to the work directory on disk, the
child also samples the peak growth of the file system holding its temporary
directory ("disk": the root, the patch layer and the output; page cache, which the
kernel reclaims). ``--root-in-shm`` gives the child ``TMPDIR=/dev/shm`` to see the
placement suture used before (the root in memory).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import measured_suture

SHM = Path("/dev/shm")
INCLUDE = ("openssl", "ca-certificates", "curl")
# Runs the rest of the command line with a private, empty tmpfs on /dev/shm.
_PRIVATE_SHM = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount -t tmpfs -o size=64g,mode=1777 bench-shm /dev/shm && exec "$0" "$@"']


def _child_build(layout: Path, tags: list[str], file_kib: int, work: Path) -> None:
    """Write one image per tag into ``layout``: ``x<N>`` (N MiB random), ``z<N>``
    (one file of N MiB of zeros)."""
    import io
    import random
    from collections.abc import Callable
    from typing import IO

    from suture.devtools.debian_image import image_from_layers
    from suture.oci.layer import DIR, Entry
    from suture.oci.model import Platform
    from suture.transports import write_artifact

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.fixtures.debian import debian_rootfs

    rootfs = debian_rootfs("bookworm", include=INCLUDE)
    file_size = file_kib << 10

    def random_file(seed: int) -> Callable[[], IO[bytes]]:
        def open_random() -> IO[bytes]:
            return io.BytesIO(random.Random(seed).randbytes(file_size))

        return open_random

    def zeros_file(size: int) -> Callable[[], IO[bytes]]:
        def open_zeros() -> IO[bytes]:
            return io.BufferedReader(Zeros(size))

        return open_zeros

    class Zeros(io.RawIOBase):
        def __init__(self, size: int) -> None:
            self.left = size

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
            n = min(len(b), self.left)
            memoryview(b).cast("B")[:n] = bytes(n)
            self.left -= n
            return n

    for tag in tags:
        size = int(tag[1:]) << 20
        layers: list[Path | list[Entry]] = [rootfs]
        if tag.startswith("x") and size:
            entries = [Entry("opt/bench", DIR, 0o755)]
            entries += [Entry(f"opt/bench/blob-{n:06d}.bin", size=file_size,
                              data=random_file(n)) for n in range(size // file_size)]
            layers.append(entries)
        elif tag.startswith("z"):
            layers.append([Entry("opt/bench", DIR, 0o755),
                           Entry("opt/bench/zeros.bin", size=size, data=zeros_file(size))])
        tmp = work / f"build-{tag}"
        tmp.mkdir()
        image = image_from_layers(layers, Platform.parse("linux/amd64"), tmp)
        write_artifact(image, f"oci:{layout}:{tag}")
        shutil.rmtree(tmp)


class _ShmSampler(threading.Thread):
    """Peak bytes in use on /dev/shm above what was in use at the start, and the peak RSS
    (``VmHWM``) of suture's extraction helper, a child process that writes the scripts'
    root (not counted in this process's ``ru_maxrss``)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.base = shutil.disk_usage(SHM).used
        self.tmp = tempfile.gettempdir()
        self.tmp_base = shutil.disk_usage(self.tmp).used
        self.peak = 0
        self.disk = 0
        self.helper_kib = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, shutil.disk_usage(SHM).used - self.base)
            self.disk = max(self.disk, shutil.disk_usage(self.tmp).used - self.tmp_base)
            self.helper_kib = max(self.helper_kib, _helper_hwm_kib())


def _helper_hwm_kib() -> int:
    """The largest ``VmHWM`` of this process's children that are extraction helpers."""
    me = str(os.getpid())
    peak = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
            if f"\nPPid:\t{me}\n" not in status or \
                    b"suture.oci.extract" not in (proc / "cmdline").read_bytes():
                continue
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]))
    return peak


def _child_patch(argv: list[str], out: Path) -> None:
    from suture.cli import main

    sampler = _ShmSampler()
    sampler.start()
    code = main(argv)
    sampler.stop.set()
    sampler.join()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.write_text(json.dumps({"code": code, "self_kib": own, "shm": sampler.peak,
                               "helper_kib": sampler.helper_kib, "disk": sampler.disk}))


def _patch(layout: Path, tag: str, cache: Path, work: Path, env: dict[str, str],
           private_shm: bool, extra: list[str]) -> dict[str, float]:
    out = work / f"rss-{tag}.json"
    result = work / f"result-{tag}.json"
    argv = ["patch", "-i", f"oci:{layout}:{tag}", "--dest", f"oci:{work}/out-{tag}:x",
            "--cache-dir", str(cache), "--result", str(result), "--progress", "quiet", *extra]
    cmd = [sys.executable, __file__, "--child-patch", str(out), "--", *argv]
    start = time.perf_counter()
    subprocess.run([*_PRIVATE_SHM, *cmd] if private_shm else cmd, check=True,
                   stdout=subprocess.DEVNULL, env=dict(os.environ, **env))
    seconds = time.perf_counter() - start
    rss = json.loads(out.read_text())
    doc = json.loads(result.read_text())
    [platform] = doc["platforms"]
    if rss["code"] != 0 or platform["status"] != "patched":
        raise SystemExit(f"patch of {tag} failed: {platform['message']}")
    shutil.rmtree(work / f"out-{tag}")
    return {"self": rss["self_kib"] / 1024, "shm": rss["shm"] / (1 << 20),
            "helper": rss.get("helper_kib", 0) / 1024, "disk": rss["disk"] / (1 << 20),
            "seconds": seconds, "updates": len(platform["updates"])}


def _blob_bytes(layout: Path, tag: str) -> int:
    index = json.loads((layout / "index.json").read_text())
    [desc] = [m for m in index["manifests"]
              if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    manifest = json.loads((layout / "blobs" / "sha256" / desc["digest"][7:]).read_text())
    return sum(int(layer["size"]) for layer in manifest["layers"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="0,256,512,1024",
                        help="MiB of random data in the extra layer, comma-separated")
    parser.add_argument("--file-kib", type=int, default=1024,
                        help="size of each random file (default 1024 KiB)")
    parser.add_argument("--zeros-mib", type=int, default=512,
                        help="MiB of the file of zeros (0: no such image)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="set in the patching child's environment (repeatable)")
    parser.add_argument("--workdir", type=Path, help="default: the system's temporary directory")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--patch-arg", action="append", default=[], metavar="ARG",
                        help="one more argument for `suture patch` (repeatable)")
    parser.add_argument("--root-in-shm", action="store_true",
                        help="TMPDIR=/dev/shm for the patching child (the scripts' root in "
                             "memory, as before)")
    parser.add_argument("--child-build", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-patch", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tags", default="", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_patch:
        _child_patch(args.rest, args.child_patch)
        return 0
    if args.child_build:
        _child_build(args.child_build, args.tags.split(","), args.file_kib, Path(args.rest[0]))
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    tags = [f"x{n}" for n in sizes] + ([f"z{args.zeros_mib}"] if args.zeros_mib else [])
    env = dict(item.split("=", 1) for item in args.env)
    if args.root_in_shm:
        env["TMPDIR"] = str(SHM)
    private_shm = os.geteuid() == 0 and shutil.which("unshare") is not None
    work = Path(tempfile.mkdtemp(prefix="suture-membench-", dir=args.workdir))
    try:
        layout = work / "layout"
        subprocess.run([sys.executable, __file__, "--child-build", str(layout), "--tags",
                        ",".join(dict.fromkeys(["x0", *tags])), "--file-kib",
                        str(args.file_kib), "--", str(work)], check=True)
        cache = work / "cache"
        _patch(layout, "x0", cache, work, env, private_shm,
               args.patch_arg)  # fills the cache; not measured
        print(measured_suture())
        if env:
            print("child environment: " + " ".join(f"{k}={v}" for k, v in env.items()))
        parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"this process: {parent:.0f} MiB peak RSS (a floor under the figures below); "
              f"/dev/shm {'private to each run' if private_shm else 'shared (not root)'}")
        print(f"{'image':>22} {'image MB':>9} {'peak RSS':>9} {'helper':>9} {'/dev/shm':>9} "
              f"{'total':>9} {'disk':>9} {'time':>7}")
        rows = {}
        for tag in tags:
            row = _patch(layout, tag, cache, work, env, private_shm, args.patch_arg)
            rows[tag] = row
            what = (f"+{tag[1:]} MiB random" if tag.startswith("x") else
                    f"+{tag[1:]} MiB zeros")
            total = row["self"] + row["helper"] + row["shm"]
            print(f"{what:>22} {_blob_bytes(layout, tag) / 1e6:>9.0f} {row['self']:>5.0f} MiB "
                  f"{row['helper']:>5.0f} MiB {row['shm']:>5.0f} MiB {total:>5.0f} MiB "
                  f"{row['disk']:>5.0f} MiB {row['seconds']:>5.1f} s"
                  f"   ({row['updates']:.0f} updates)", flush=True)
        if len(sizes) > 1:
            low, high = rows[f"x{sizes[0]}"]["self"], rows[f"x{sizes[-1]}"]["self"]
            flat = high - low <= max(16.0, 0.1 * low)
            print(f"peak RSS {low:.0f} -> {high:.0f} MiB from +{sizes[0]} to +{sizes[-1]} MiB "
                  "random: " + ("flat" if flat else "grows with the image"))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
