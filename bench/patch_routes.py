"""Patching one real image three ways, same run: suture, the chroot apt-get route, the floor.

    .venv/bin/python bench/patch_routes.py [--suite bookworm|trixie] [--runs 3]

Needs root (overlayfs and an apt-get chroot), bubblewrap, umoci, mmdebstrap and the
Debian archive. The image is a real mmdebstrap root filesystem of the suite's point
release with openssl, ca-certificates and curl (tests/fixtures/debian.py, cached per
day), as one gzip layer in an OCI layout. Every route starts from that layout and
ends with a patched image written to a fresh OCI layout. Each repetition runs every
route once, in the same order, so network drift hits all of them; medians are printed.
Every route works under /dev/shm by default (``--workdir`` to change): a disk adds
noise (umoci unpacking this image took 1.3 s to 9 s on the project machine's disk),
and tmpfs is generous to apt-get, whose dpkg fsyncs every file it unpacks.

suture (``suture patch -i oci:... --dest oci:...`` in a subprocess, stage times from
its ``--progress plain`` lines), three ways:

- ``cold``: a fresh ``--cache-dir``: Release files, Packages indexes and .debs are
  all downloaded, as apt's route downloads them. Compared with the apt route.
- ``index-warm``: the indexes cached, no .deb cached. Compared with the floor.
- ``warm``: everything cached (a re-run): no network but Release revalidation.

apt route (what copa does in BuildKit, minus BuildKit and copa's tooling-image probe):
``umoci raw unpack`` the image; overlay 1 over it: ``apt-get update`` (with the
suite's -security and -updates added, as suture adds them) and ``apt-get -s
upgrade``; overlay 2 over that: ``apt-get upgrade -y && apt-get clean -y && apt-get
autoremove -y`` (copa's update-all command) in a bubblewrap chroot; overlay 2's upper
directory is the diff (copa's ``llb.Diff(aptGetUpdated, aptGetInstalled)``), turned
into a layer (whiteouts, opaque directories, hard links) by suture's own writer and
compressor (generous to this route: BuildKit's Go gzip is slower) and appended to the
image, written to a layout.

floor: download the same .debs suture chose (fresh, 4 at a time as suture does, the
SHA256 checked while streaming), then decompress every ``data.tar`` and gzip the
concatenation with suture's compressor: the least any tool must do. A second floor
adds downloading and decompressing the three suites' InRelease and Packages.xz, for
the cold comparison.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import requests
import zstandard
from benchlib import measured_suture

from suture.devtools.debian_image import image_from_layers
from suture.distro.dpkg.control import parse_status
from suture.oci.compression import CompressingWriter
from suture.oci.image import Image
from suture.oci.layer import DIR, FILE, HARDLINK, SYMLINK, Entry, write_layer
from suture.oci.model import Platform
from suture.oci.mutate import AddedLayer, append_layers
from suture.transports import open_artifact, write_artifact

MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
INCLUDE = ("openssl", "ca-certificates", "curl")
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C",
       "DEBIAN_FRONTEND": "noninteractive"}


@dataclass
class Run:
    """One route's run: total wall time and named stages (seconds, in order)."""

    total: float
    stages: dict[str, float] = field(default_factory=dict)
    note: str = ""


class _Null:
    def write(self, data: bytes) -> int:
        return len(data)


class _Clock:
    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.stages: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name] = self.stages.get(name, 0.0) + now - self.last
        self.last = now

    def run(self, note: str = "") -> Run:
        return Run(time.perf_counter() - self.start, self.stages, note)


# ------------------------------------------------------------------------ suture


# A progress line starting with the key begins the stage named by the value. The first
# stage is the interpreter's start and the one pass over the layers (inspection and the
# engine's tree); "tree, indexes, plan" is the engine's repositories and the plan. The
# scripts' root is written by a helper process from the end of the first stage on, in
# parallel; "scripts" includes any wait for it, writing the patch entries into it, the
# snapshots and the maintainer scripts themselves.
_SUTURE_STAGES = {"reading repositories": "tree, indexes, plan", "fetching": "download",
                  "unpacking": "unpack, dpkg db", "running": "scripts",
                  "writing the patch layer": "layer, image"}


def run_suture(ref: str, dest: str, cache: Path, result: Path) -> Run:
    """``suture patch`` in a subprocess; stage times from its progress lines."""
    cmd = [sys.executable, "-m", "suture", "patch", "-i", ref, "--dest", dest,
           "--cache-dir", str(cache), "--progress", "plain", "--result", str(result)]
    start = last = time.perf_counter()
    stages: dict[str, float] = {}
    label = "start, inspect"
    tmp = cache.parent / "tmp"  # suture's temporary files beside the cache (same file system)
    tmp.mkdir(exist_ok=True)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, TMPDIR=str(tmp))) as proc:
        assert proc.stderr is not None and proc.stdout is not None
        tail = []
        for line in proc.stderr:
            tail.append(line)
            now = time.perf_counter()
            message = line.split(": ", 2)[-1]
            for prefix, stage in _SUTURE_STAGES.items():
                if message.startswith(prefix):
                    stages[label] = now - last
                    label, last = stage, now
        out = proc.stdout.read()
    end = time.perf_counter()
    stages[label] = end - last
    if proc.returncode != 0:
        raise SystemExit(f"suture failed ({proc.returncode}):\n{out}{''.join(tail)}")
    [platform] = json.loads(result.read_text())["platforms"]
    return Run(end - start, stages, f"layer {platform['layer']['size'] / 1e6:.1f} MB")


def index_only_cache(warm: Path, dest: Path) -> None:
    """A copy of the cache ``warm`` without its .deb files (ar archives)."""
    shutil.copytree(warm, dest)
    for path in (dest / "apt" / "sha256").iterdir():
        with path.open("rb") as f:
            if f.read(8) == b"!<arch>\n":
                path.unlink()


# ------------------------------------------------------------------ apt route


def _mount_overlay(lower: list[Path], upper: Path, work: Path, merged: Path) -> None:
    for d in (upper, work, merged):
        d.mkdir(parents=True, exist_ok=True)
    opts = f"lowerdir={':'.join(map(str, lower))},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], check=True)


def _umount(merged: Path) -> None:
    subprocess.run(["umount", str(merged)], check=False)


def _chroot(root: Path, script: str) -> None:
    """The fidelity harness's bubblewrap chroot (tests/fixtures/fidelity.py), the one the
    apt-get oracle runs in."""
    from tests.fixtures.fidelity import chroot_sh

    try:
        chroot_sh(root, script, timeout=1800, env=ENV)
    except AssertionError as e:
        raise SystemExit(f"apt route: {e}") from None


def _opener(path: Path) -> Callable[[], IO[bytes]]:
    def open_file() -> IO[bytes]:
        return path.open("rb")

    return open_file


def upper_entries(upper: Path) -> list[Entry]:
    """An overlayfs upper directory as OCI layer entries, as BuildKit's differ makes
    them: 0/0 character devices become whiteouts, ``trusted.overlay.opaque`` an opaque
    marker, files sharing an inode one file and hard links."""
    entries: list[Entry] = []
    inodes: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(upper):
        base = Path(dirpath)
        rel_dir = str(base.relative_to(upper))
        rel_dir = "" if rel_dir == "." else rel_dir
        if rel_dir:
            try:
                opaque = os.getxattr(base, "trusted.overlay.opaque", follow_symlinks=False)
            except OSError:
                opaque = b""
            if opaque == b"y":
                entries.append(Entry.opaque(rel_dir))
        for name in sorted(dirnames + filenames):
            path = base / name
            rel = f"{rel_dir}/{name}" if rel_dir else name
            st = path.lstat()
            xattrs = {}
            for key in os.listxattr(path, follow_symlinks=False):
                if not key.startswith("trusted.overlay."):
                    xattrs[key] = os.getxattr(path, key, follow_symlinks=False)
            common: dict[str, Any] = {"mode": st.st_mode & 0o7777, "uid": st.st_uid,
                                      "gid": st.st_gid, "mtime": int(st.st_mtime),
                                      "xattrs": xattrs}
            if (st.st_mode & 0o170000) == 0o020000 and st.st_rdev == 0:
                entries.append(Entry.whiteout(rel))
            elif os.path.islink(path):
                entries.append(Entry(rel, SYMLINK, linkname=os.readlink(path), **common))
            elif path.is_dir():
                entries.append(Entry(rel, DIR, **common))
            elif path.is_file():
                inode = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and inode in inodes:
                    entries.append(Entry(rel, HARDLINK, linkname=inodes[inode], **common))
                    continue
                inodes[inode] = rel
                entries.append(Entry(rel, FILE, size=st.st_size, data=_opener(path), **common))
            else:
                raise SystemExit(f"apt route: unexpected special file {rel}")
    return entries


def run_apt(ref: str, image: Image, suite: str, work: Path, dest: str) -> tuple[Run, Path]:
    """The chroot apt-get route; returns its run and the dpkg status it wrote."""
    layout, _, tag = ref[len("oci:"):].rpartition(":")
    clock = _Clock()
    rootfs = work / "rootfs"
    subprocess.run(["umoci", "raw", "unpack", "--image", f"{layout}:{tag}", str(rootfs)],
                   check=True, capture_output=True)
    clock.lap("unpack")
    merged1, upper1 = work / "m1", work / "u1"
    _mount_overlay([rootfs], upper1, work / "w1", merged1)
    try:
        (merged1 / "etc/apt/sources.list.d/bench.list").write_text(
            f"deb {SECURITY} {suite}-security main\ndeb {MIRROR} {suite}-updates main\n")
        _chroot(merged1, "apt-get -qq -o Acquire::Retries=3 update && "
                         "apt-get -s upgrade | grep -q ^Inst")
    finally:
        _umount(merged1)
    clock.lap("apt-get update")
    merged2, upper2 = work / "m2", work / "u2"
    _mount_overlay([upper1, rootfs], upper2, work / "w2", merged2)
    try:
        _chroot(merged2, "apt-get -qq -o Acquire::Retries=3 -o Dpkg::Options::=--force-confold"
                         " upgrade -y && apt-get clean -y && apt-get -qq autoremove -y")
    finally:
        _umount(merged2)
    clock.lap("apt-get upgrade")
    entries = upper_entries(upper2)
    blob = work / "layer.tar.gz"
    with blob.open("wb") as out:
        info = write_layer(entries, out, compression="gzip")
    clock.lap("diff, layer")
    added = AddedLayer(info, lambda: blob.open("rb"),
                       history={"created_by": "apt-get upgrade", "comment": "bench"})
    write_artifact(append_layers(image, [added]), dest)
    clock.lap("image")
    run = clock.run(f"{len(entries)} entries, layer {info.size / 1e6:.1f} MB")
    return run, upper2 / "var/lib/dpkg/status"


# ------------------------------------------------------------------------ floor


@dataclass(frozen=True)
class Deb:
    url: str
    sha256: str
    size: int


def planned_debs(ref: str, cache: Path) -> list[Deb]:
    """The .debs suture's plan chose, from the warm cache (no network)."""
    from suture.inspect import inspect_image, wants_detection_data
    from suture.oci.fs import read_tree
    from suture.patch.engines import engine_for, wants_data
    from suture.patch.model import PatchOptions

    image = open_artifact(ref)
    assert isinstance(image, Image)
    tree = read_tree(image, lambda p: wants_detection_data(p) or wants_data(p))
    inspection = inspect_image(image, tree)
    engine = engine_for("dpkg")
    state = engine.prepare(image, inspection, PatchOptions(cache_dir=cache, offline=True),
                           tree)
    plan = state.plan(None)
    return [Deb(u.base_uri.rstrip("/") + "/" + u.filename, u.sha256, u.size)
            for u in plan.updates]


def _download(session: requests.Session, url: str, dest: Path, sha256: str | None) -> int:
    h = hashlib.sha256()
    with session.get(url, stream=True, timeout=60) as resp, dest.open("wb") as out:
        resp.raise_for_status()
        for chunk in resp.iter_content(1 << 16):
            h.update(chunk)
            out.write(chunk)
    if sha256 is not None and h.hexdigest() != sha256:
        raise SystemExit(f"floor: {url}: sha256 mismatch")
    return dest.stat().st_size


def _data_tar(path: Path) -> tuple[str, bytes]:
    """The ``data.tar.*`` member of a .deb: its name and compressed bytes."""
    with path.open("rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise SystemExit(f"floor: {path}: not an ar archive")
        while header := f.read(60):
            name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58])
            if name.startswith("data.tar"):
                return name, f.read(size)
            f.seek(size + (size & 1), os.SEEK_CUR)
    raise SystemExit(f"floor: {path}: no data.tar")


def _data_tar_chunks(path: Path) -> Iterator[bytes]:
    name, raw = _data_tar(path)
    if name.endswith(".xz"):
        yield lzma.decompress(raw)
    elif name.endswith(".zst"):
        reader = zstandard.ZstdDecompressor().stream_reader(raw)
        while chunk := reader.read(1 << 20):
            yield chunk
    elif name.endswith(".gz"):
        yield zlib.decompress(raw, 31)
    else:
        yield raw


def run_floor(debs: list[Deb], work: Path) -> Run:
    clock = _Clock()
    work.mkdir()
    with requests.Session() as session, ThreadPoolExecutor(max_workers=4) as pool:
        paths = [work / f"{n}.deb" for n in range(len(debs))]
        sizes = list(pool.map(lambda d, p: _download(session, d.url, p, d.sha256), debs,
                              paths))
    clock.lap("download")
    sink = _Null()
    comp = CompressingWriter(sink, "gzip")
    raw = 0
    for path in paths:
        for chunk in _data_tar_chunks(path):
            raw += len(chunk)
            comp.write(chunk)
    comp.close()
    clock.lap("data.tar -> gzip")
    return clock.run(f"{len(debs)} debs, {sum(sizes) / 1e6:.1f} MB, "
                     f"{raw / 1e6:.1f} MB of data.tar")


def run_index_floor(suite: str, work: Path) -> Run:
    """Download and decompress InRelease and main/binary-amd64/Packages.xz of the
    suite, -updates and -security (what any route reads before planning)."""
    clock = _Clock()
    work.mkdir()
    dists = [(MIRROR, suite), (MIRROR, f"{suite}-updates"), (SECURITY, f"{suite}-security")]
    urls = []
    for base, dist in dists:
        urls += [f"{base}/dists/{dist}/InRelease",
                 f"{base}/dists/{dist}/main/binary-amd64/Packages.xz"]
    with requests.Session() as session, ThreadPoolExecutor(max_workers=4) as pool:
        paths = [work / f"{n}" for n in range(len(urls))]
        list(pool.map(lambda u, p: _download(session, u, p, None), urls, paths))
    for url, path in zip(urls, paths, strict=True):
        if url.endswith(".xz"):
            lzma.decompress(path.read_bytes())
    clock.lap("indexes")
    return clock.run()


# ------------------------------------------------------------------------ main


def _median(runs: list[Run]) -> Run:
    names = list(runs[0].stages)
    return Run(statistics.median(r.total for r in runs),
               {n: statistics.median(r.stages.get(n, 0.0) for r in runs) for n in names},
               runs[-1].note)


def _row(name: str, runs: list[Run]) -> str:
    m = _median(runs)
    spread = f"{min(r.total for r in runs):.1f}-{max(r.total for r in runs):.1f}"
    stages = ", ".join(f"{k} {v:.2f}" for k, v in m.stages.items())
    return f"{name:22} {m.total:7.2f} s  (runs {spread:>11} s)  {stages}" + (
        f"  [{m.note}]" if m.note else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--suite", default="bookworm", choices=["bookworm", "trixie"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path,
                        help="where every route works (default: /dev/shm when it has 8 GiB "
                             "free, else the system's temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("patch_routes: run as root (overlayfs and an apt-get chroot)")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.fixtures.debian import debian_rootfs

    rootfs = debian_rootfs(args.suite, include=INCLUDE)
    where = args.workdir
    shm = Path("/dev/shm")
    if where is None and shm.is_dir() and shutil.disk_usage(shm).free > 8 << 30:
        where = shm
    work = Path(tempfile.mkdtemp(prefix="suture-bench-", dir=where))
    try:
        return _bench(args, rootfs, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _bench(args: argparse.Namespace, rootfs: Path, work: Path) -> int:
    (work / "image").mkdir()
    image = image_from_layers([rootfs], Platform.parse("linux/amd64"), work / "image")
    ref = f"oci:{work}/layout:{args.suite}"
    write_artifact(image, ref)
    source = open_artifact(ref)
    assert isinstance(source, Image)
    # Set-up, not timed: one run fills the warm cache and says what gets updated.
    warm = work / "cache-warm"
    run_suture(ref, f"oci:{work}/setup:x", warm, work / "setup.json")
    doc = json.loads((work / "setup.json").read_text())
    updates = {u["name"]: u["to"] for u in doc["platforms"][0]["updates"]}
    index_only_cache(warm, work / "cache-index")
    debs = planned_debs(ref, warm)
    print(measured_suture())
    print(f"image: {rootfs.name} ({rootfs.stat().st_size / 1e6:.0f} MB rootfs), "
          f"{len(updates)} updates: {' '.join(sorted(updates))}")
    print(f"{len(debs)} .debs, {sum(d.size for d in debs) / 1e6:.1f} MB; {args.runs} runs each")
    results: dict[str, list[Run]] = {k: [] for k in (
        "suture cold", "suture index-warm", "suture warm", "apt route", "floor", "floor indexes")}
    for n in range(args.runs):
        cold = work / f"cache-cold-{n}"
        results["suture cold"].append(
            run_suture(ref, f"oci:{work}/out-cold-{n}:x", cold, work / f"r-cold-{n}.json"))
        index = work / f"cache-index-{n}"
        shutil.copytree(work / "cache-index", index)
        results["suture index-warm"].append(
            run_suture(ref, f"oci:{work}/out-index-{n}:x", index, work / f"r-index-{n}.json"))
        results["suture warm"].append(
            run_suture(ref, f"oci:{work}/out-warm-{n}:x", warm, work / f"r-warm-{n}.json"))
        apt_work = work / f"apt-{n}"
        apt_work.mkdir()
        run, status = run_apt(ref, source, args.suite, apt_work, f"oci:{work}/out-apt-{n}:x")
        got = {p.name: p.version for p in parse_status(status.read_bytes())}
        differ = sorted(k for k, v in updates.items() if got.get(k) != v)
        if differ:
            run.note += f"; versions differ from suture's: {', '.join(differ)}"
        results["apt route"].append(run)
        results["floor"].append(run_floor(debs, work / f"floor-{n}"))
        results["floor indexes"].append(run_index_floor(args.suite, work / f"floor-idx-{n}"))
        if not args.keep:
            for path in (cold, index, apt_work, work / f"floor-{n}", work / f"floor-idx-{n}"):
                shutil.rmtree(path, ignore_errors=True)
        print(f"run {n + 1}/{args.runs}: " + ", ".join(
            f"{k} {v[-1].total:.1f} s" for k, v in results.items()), flush=True)
    print()
    for name, runs in results.items():
        print(_row(name, runs))
    med = {k: _median(v).total for k, v in results.items()}
    floor_cold = med["floor"] + med["floor indexes"]
    print()
    print(f"suture {med['suture cold']:.1f} s | apt route {med['apt route']:.1f} s "
          f"(suture x{med['apt route'] / med['suture cold']:.1f} faster) | "
          f"floor {floor_cold:.1f} s with indexes (suture x"
          f"{med['suture cold'] / floor_cold:.2f} of floor)   [cold caches]")
    print(f"suture {med['suture index-warm']:.1f} s | floor {med['floor']:.1f} s "
          f"(suture x{med['suture index-warm'] / med['floor']:.2f} of floor)   "
          "[indexes cached, .debs not]")
    print(f"suture {med['suture warm']:.1f} s   [everything cached]")
    # Not a target: the floor does not run maintainer scripts, which a faithful route
    # must (the apt route runs the same ones). Added here for scale.
    scripts = statistics.median(r.stages.get("scripts", 0.0) for r in results["suture warm"])
    print(f"extra: floor + suture's scripts stage {med['floor'] + scripts:.1f} s "
          f"(suture index-warm x{med['suture index-warm'] / (med['floor'] + scripts):.2f} "
          "of it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
