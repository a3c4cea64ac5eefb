"""Where suture's time goes on the 34-update Debian image, and the floor it is held to.

    sudo .venv/bin/python bench/stages.py [--runs 3] [--json FILE] [--workdir DIR]

The image is the one ``bench/peers.py`` patches as ``debian``: a bookworm minbase root
of the point release plus a layer adding ``BOOKWORM_30`` (openssl, ca-certificates,
curl, perl and others) and an ``etc/apt/sources.list`` naming the three suites, pushed
to a ``docker-registry`` on 127.0.0.1. Needs root (a chroot), umoci, skopeo,
docker-registry, mmdebstrap, dpkg-deb and the Debian archive.

**suture**: ``suture patch -i R -t T --push --cache-dir C --progress json`` in a
subprocess, three times on one cache: *cold* (an empty cache), *rebuild* (the same cache,
``--no-result-cache``: .debs, indexes and the extracted root of the image cached, the
patch layer built again) and *warm* (the same cache: the result cache's patch layer
reused after a fresh plan). Stages come
from the JSON events' ``elapsed`` (seconds since suture's progress began; the offset
from process start is the smallest gap between an event's arrival and its
``elapsed``): *start, read image* (interpreter, the pass over the layers) up to
"reading repositories"; *indexes, plan* up to "plan: ..."; *download* up to
"unpacking packages"; *unpack, dpkg db* up to "running N maintainer scripts";
*scripts* (writing the patch entries into the scripts' root, any wait for that root,
the scripts) up to "writing the patch layer"; *layer, push* to the process's end (or
from "the patch layer for this plan was made before: reused", when it is). A
stage whose event never comes (no scripts, or a run answered from a cache) is folded
into the stage before it and shown as absent.

**floor**, each component on its own, same image, same .debs (the plan's, from
``suture patch --dry-run --result``):

a. *download ‖ read layers*: the .debs downloaded afresh, 4 at a time, SHA-256 checked
   while streamed; and, separately, the image's layer blobs read from the registry
   (SHA-256 checked, gunzipped with the ISA-L suture uses, every tar header walked).
   Timed one after the other; the component is the larger of the two, as if they ran
   perfectly in parallel.
b. *unpack (files only)*, for scale, not in the floor: ``dpkg-deb -x`` of every .deb into
   one scratch directory (the data.tar decompressed and written out).
c. *dpkg in a ready root*: the image's root extracted (``umoci raw unpack``, untimed),
   ``/usr/sbin/policy-rc.d`` exiting 101 as suture writes it, ``/dev`` and ``/proc``
   mounted, then in a plain chroot (no sandbox) Debian's own ``dpkg --force-unsafe-io
   --unpack <debs>`` (old prerm, new preinst, files, old postrm, the database) and
   ``dpkg --force-unsafe-io --configure -a`` (postinsts, triggers), each timed; in
   batches when some update pre-depends on another (libpam-modules on
   libpam-modules-bin here: that one is unpacked and configured first, as apt does). The
   versions dpkg wrote are checked against the plan's. This is the same maintainer
   scripts in a ready root at their own cost; it includes the unpack, so the floor is
   a + c + d (b is printed for scale: how much of c-unpack is writing files).
d. *compress the layer*: suture's patch layer from the first cold run (read back from
   the registry and gunzipped, untimed), recompressed with suture's own
   ``CompressingWriter`` (ISA-L level 2) into a null sink.

floor = a + c(unpack) + c(configure) + d. For the cold run only, a second figure adds
what it must download before planning (``bench/patch_routes.py``'s index floor:
InRelease and Packages.xz of the three suites, fetched and decompressed); the issue's
floor has no indexes. Printed: medians per stage and component,
each suture mode / floor, the load average before and after (the machine is shared),
and ``measured_suture()``. Each repetition runs suture cold, rebuild and warm, then the
floor, so drift hits all of them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import requests
from benchlib import measured_suture
from patch_routes import run_index_floor

from suture.distro.dpkg.control import parse_status
from suture.oci.compression import CompressingWriter, open_decompressed

CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "HOME": "/root",
              "DEBIAN_FRONTEND": "noninteractive"}
MANIFEST_TYPES = ", ".join(("application/vnd.oci.image.manifest.v1+json",
                            "application/vnd.docker.distribution.manifest.v2+json"))

# The event whose message starts with the key ends the stage before it and begins the
# stage named by the value (the first stage, from process start, is "start, read image").
STAGE_EVENTS = (("reading repositories", "indexes, plan"), ("plan:", "download"),
                ("unpacking packages", "unpack, dpkg db"), ("running ", "scripts"),
                ("writing the patch layer", "layer, push"),
                ("the patch layer for this plan was made before", "layer, push"))  # reused
STAGES = tuple(dict.fromkeys(("start, read image", *(s for _, s in STAGE_EVENTS))))
# Each repetition, one cache: cold (empty), rebuild (.debs, indexes and the image's
# extracted root cached, the patch layer built again), warm (the result cache answers).
MODES: dict[str, tuple[str, ...]] = {"cold": (), "rebuild": ("--no-result-cache",),
                                     "warm": ()}
FLOOR = ("download .debs", "read layers", "a: max(download, read)", "b: dpkg-deb -x (scale)",
         "c: dpkg --unpack", "c: dpkg --configure", "d: compress layer", "floor a+c+d",
         "indexes (cold only)", "cold floor a+c+d+indexes")


@dataclass
class Run:
    total: float
    stages: dict[str, float] = field(default_factory=dict)  # absent stages are not keys


class _Null:
    def write(self, data: bytes) -> int:
        return len(data)


def _env() -> dict[str, str]:
    """This environment without PYTHONDONTWRITEBYTECODE (it costs suture ~0.1 s a start)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ------------------------------------------------------------------------ suture


def stage_times(events: list[tuple[float, dict[str, Any]]], total: float) -> dict[str, float]:
    """Stage durations from progress events, each ``(arrival since process start, doc)``.

    suture's ``elapsed`` counts from when its progress began, after the interpreter
    started and imported; the smallest arrival - elapsed is that offset (pipe latency
    only makes the gap bigger)."""
    stage_docs = [(t, d) for t, d in events if d.get("event") == "stage"]
    if not stage_docs:
        return {STAGES[0]: total}
    offset = min(t - float(d["elapsed"]) for t, d in events)
    stages: dict[str, float] = {}
    label, since = STAGES[0], 0.0
    for _, doc in stage_docs:
        message = str(doc.get("message", ""))
        for prefix, name in STAGE_EVENTS:
            if message.startswith(prefix):
                at = offset + float(doc["elapsed"])
                stages[label] = stages.get(label, 0.0) + at - since
                label, since = name, at
                break
    stages[label] = stages.get(label, 0.0) + total - since
    return stages


def run_suture(src: str, tag: str, cache: Path, tmp: Path, *extra: str) -> Run:
    cmd = [sys.executable, "-m", "suture", "patch", "-i", src, "-t", tag, "--push",
           "--cache-dir", str(cache), "--progress", "json", *extra]
    events: list[tuple[float, dict[str, Any]]] = []
    other: list[str] = []
    start = time.monotonic()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**_env(), "TMPDIR": str(tmp)}) as proc:
        assert proc.stderr is not None and proc.stdout is not None
        for line in proc.stderr:
            now = time.monotonic() - start
            try:
                events.append((now, json.loads(line)))
            except ValueError:
                other.append(line)
        out = proc.stdout.read()
    total = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"suture failed ({proc.returncode}):\n{out}{''.join(other)}")
    return Run(total, stage_times(events, total))


# ------------------------------------------------------------------------ floor


def planned_debs(ref: str, cache: Path) -> list[dict[str, Any]]:
    """The .debs suture's plan chose (the dry run's cache, offline): name, version, URL,
    SHA-256, size. (The result JSON names packages and versions, not where they are.)"""
    from suture.inspect import inspect_image, wants_detection_data
    from suture.oci.fs import read_tree
    from suture.oci.image import Image
    from suture.patch.engines import engine_for, wants_data
    from suture.patch.model import PatchOptions
    from suture.transports import open_artifact

    image = open_artifact(ref)
    assert isinstance(image, Image)
    tree = read_tree(image, lambda p: wants_detection_data(p) or wants_data(p))
    inspection = inspect_image(image, tree)
    assert inspection.package_db is not None
    engine = engine_for(inspection.package_db.family)
    state = engine.prepare(image, inspection, PatchOptions(cache_dir=cache, offline=True),
                           tree)
    return [{"name": u.name, "to": u.to_version, "sha256": u.sha256, "size": u.size,
             "url": u.base_uri.rstrip("/") + "/" + u.filename}
            for u in state.plan(None).updates]


def _get(session: requests.Session, url: str, sha256: str, dest: Path | None) -> int:
    """GET ``url`` streaming, checking its SHA-256; into ``dest`` (or only hashed)."""
    h = hashlib.sha256()
    size = 0
    with session.get(url, stream=True, timeout=120) as resp:
        resp.raise_for_status()
        out = dest.open("wb") if dest is not None else None
        try:
            for chunk in resp.iter_content(1 << 20):
                h.update(chunk)
                size += len(chunk)
                if out is not None:
                    out.write(chunk)
        finally:
            if out is not None:
                out.close()
    if h.hexdigest() != sha256:
        raise SystemExit(f"floor: {url}: sha256 mismatch")
    return size


def download_debs(debs: list[dict[str, Any]], dest: Path) -> list[Path]:
    dest.mkdir(parents=True)
    paths = [dest / d["url"].rpartition("/")[2] for d in debs]
    with requests.Session() as session, ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda d, p: _get(session, d["url"], d["sha256"], p), debs, paths))
    return paths


class _Hashing:
    """A readable stream over a response that hashes what is read."""

    def __init__(self, resp: requests.Response) -> None:
        self.raw = resp.raw
        self.hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.hash.update(data)
        return bytes(data)

    def close(self) -> None:
        pass


def read_layers(registry_url: str, repo: str, layers: list[str]) -> int:
    """Read every layer blob from the registry as any patcher must: digest checked,
    gunzipped (ISA-L), each tar header parsed; returns the number of entries."""
    entries = 0
    with requests.Session() as session:
        for digest in layers:
            with session.get(f"{registry_url}/v2/{repo}/blobs/{digest}", stream=True,
                             timeout=120) as resp:
                resp.raise_for_status()
                raw = _Hashing(resp)
                with open_decompressed(cast(IO[bytes], raw), "gzip") as stream, \
                        tarfile.open(fileobj=stream, mode="r|") as tar:
                    for _ in tar:
                        entries += 1
                    while stream.read(1 << 20):  # the end-of-archive padding
                        pass
                while raw.read(1 << 20):
                    pass
                if "sha256:" + raw.hash.hexdigest() != digest:
                    raise SystemExit(f"floor: layer {digest}: digest mismatch")
    return entries


def unpack_files(debs: list[Path], dest: Path) -> None:
    dest.mkdir(parents=True)
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)


def ready_root(layout: str, root: Path) -> None:
    """The image's root as it would be after a ``docker run``: extracted, policy-rc.d in
    place (as suture's scripts runner writes it), /dev and /proc mounted. Untimed."""
    subprocess.run(["nice", "umoci", "raw", "unpack", "--image", layout, str(root)],
                   check=True, capture_output=True)
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    (root / "dev").mkdir(exist_ok=True)
    (root / "proc").mkdir(exist_ok=True)
    subprocess.run(["mount", "--rbind", "/dev", str(root / "dev")], check=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)


def release_root(root: Path) -> None:
    for sub in ("proc", "dev"):
        subprocess.run(["umount", "-R", "-l", str(root / sub)], check=False,
                       capture_output=True)


def dpkg_batches(debs: list[Path]) -> list[list[Path]]:
    """The .debs in batches such that a package pre-depending on another of them comes in
    a later batch (dpkg needs a pre-dependency configured first; apt splits its dpkg calls
    the same way). Read with ``dpkg-deb -f``, untimed."""
    pre: dict[str, set[str]] = {}
    by_name: dict[str, Path] = {}
    for deb in debs:
        fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Pre-Depends"],
                                check=True, capture_output=True, text=True).stdout
        info = dict(line.split(": ", 1) for line in fields.splitlines() if ": " in line)
        names = {alt.split("(")[0].split(":")[0].strip()
                 for dep in info.get("Pre-Depends", "").split(",") for alt in dep.split("|")}
        by_name[info["Package"]] = deb
        pre[info["Package"]] = names
    left = set(by_name)
    batches = []
    while left:
        batch = sorted(n for n in left if not (pre[n] & left) - {n})
        if not batch:
            raise SystemExit(f"floor: a pre-dependency cycle among {sorted(left)}")
        batches.append([by_name[n] for n in batch])
        left -= set(batch)
    return batches


def run_dpkg(root: Path, debs: list[Path]) -> tuple[float, float, int]:
    """``dpkg --unpack`` then ``dpkg --configure -a`` per batch, in a chroot of ``root``;
    seconds unpacking, seconds configuring, number of batches."""
    inside = root / "tmp/stages-debs"
    inside.mkdir(parents=True)
    for deb in debs:
        shutil.copy(deb, inside / deb.name)
    batches = dpkg_batches(debs)
    times = [0.0, 0.0]
    for batch in batches:
        names = [f"/tmp/stages-debs/{d.name}" for d in batch]
        for n, args in enumerate((["--unpack", *names], ["--configure", "-a"])):
            start = time.monotonic()
            proc = subprocess.run(["chroot", str(root), "dpkg", "--force-unsafe-io",
                                   "--force-confold", *args], env=CHROOT_ENV,
                                  capture_output=True, text=True, check=False)
            times[n] += time.monotonic() - start
            if proc.returncode != 0:
                raise SystemExit(f"floor: dpkg {args[0]} exited {proc.returncode}:\n"
                                 f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    shutil.rmtree(inside)
    return times[0], times[1], len(batches)


def compress(tar_bytes: bytes) -> float:
    start = time.monotonic()
    comp = CompressingWriter(_Null(), "gzip")
    view = memoryview(tar_bytes)
    for at in range(0, len(view), 1 << 20):
        comp.write(view[at:at + (1 << 20)])
    comp.close()
    return time.monotonic() - start


# ------------------------------------------------------------------------ main


def _manifest(session: requests.Session, registry_url: str, repo: str, ref: str
              ) -> dict[str, Any]:
    resp = session.get(f"{registry_url}/v2/{repo}/manifests/{ref}",
                       headers={"Accept": MANIFEST_TYPES}, timeout=60)
    resp.raise_for_status()
    doc: dict[str, Any] = resp.json()
    return doc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the runs and medians here")
    parser.add_argument("--workdir", type=Path, help="default: the system's temporary directory "
                        "(suture's TMPDIR and the floor's root are both under it)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("stages: run as root (the floor's dpkg runs in a chroot)")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    work = Path(tempfile.mkdtemp(prefix="suture-stages-", dir=args.workdir))
    try:
        return _bench(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _finite(value: float) -> float | None:
    return None if value != value else value


def _bench(args: argparse.Namespace, work: Path) -> int:
    from tests.fixtures.buildkit import BOOKWORM_30, push_image, sources_entry
    from tests.fixtures.debian import debian_rootfs
    from tests.fixtures.registry import RegistryServer

    from suture.devtools.rootfs import diff_entries

    base = debian_rootfs("bookworm")
    full = debian_rootfs("bookworm", include=BOOKWORM_30)
    registry = RegistryServer(work / "registry")
    registry.start()
    roots: list[Path] = []
    try:
        img = work / "img"
        src = push_image([base, [*diff_entries(base, full), sources_entry()]], img,
                         f"{registry.host}/debian:12")
        layout = f"{img}/layout:image"
        session = requests.Session()
        layers = [d["digest"] for d in _manifest(session, registry.url, "debian", "12")["layers"]]
        plan_cache = work / "plan-cache"
        proc = subprocess.run([sys.executable, "-m", "suture", "patch", "-i", src, "--dry-run",
                               "--cache-dir", str(plan_cache), "--progress", "quiet"],
                              env=_env(), capture_output=True, text=True, check=False)
        updates = planned_debs(f"oci:{layout}", plan_cache)
        if not updates:
            raise SystemExit(f"stages: no updates planned:\n{proc.stdout}{proc.stderr}")
        wanted = {u["name"]: u["to"] for u in updates}
        header = [measured_suture(),
                  f"image: {src} ({len(layers)} layers), {len(updates)} updates, "
                  f"{sum(int(u['size']) for u in updates) / 1e6:.1f} MB of .debs",
                  f"{args.runs} runs; work under {work}"]
        print("\n".join(header), flush=True)
        loads = {"before": load()}
        runs: dict[str, list[Run]] = {f"suture {mode}": [] for mode in MODES}
        floor: dict[str, list[float]] = {k: [] for k in FLOOR}
        notes: list[str] = []
        layer_tar: bytes | None = None
        tmp = work / "tmp"
        tmp.mkdir()
        for n in range(args.runs):
            cache = work / f"cache-{n}"
            for mode, extra in MODES.items():
                os.sync()  # no writeback of earlier work during a timed run
                runs[f"suture {mode}"].append(run_suture(src, f"12-stages-{mode}-{n}", cache, tmp,
                                                         *extra))
            shutil.rmtree(cache, ignore_errors=True)
            if layer_tar is None:  # suture's patch layer, as pushed by this cold run
                top = _manifest(session, registry.url, "debian", f"12-stages-cold-{n}")
                blob = registry.blob_file(top["layers"][-1]["digest"])
                with blob.open("rb") as f, open_decompressed(f, "gzip") as stream:
                    layer_tar = stream.read()
                notes.append(f"patch layer: {blob.stat().st_size / 1e6:.1f} MB gzip, "
                             f"{len(layer_tar) / 1e6:.1f} MB tar")
            # a: download and read, each timed on its own.
            debs_dir = work / f"debs-{n}"
            os.sync()
            t0 = time.monotonic()
            debs = download_debs(updates, debs_dir)
            t1 = time.monotonic()
            entries = read_layers(registry.url, "debian", layers)
            t2 = time.monotonic()
            floor["download .debs"].append(t1 - t0)
            floor["read layers"].append(t2 - t1)
            floor["a: max(download, read)"].append(max(t1 - t0, t2 - t1))
            scratch = work / f"scratch-{n}"
            t0 = time.monotonic()
            unpack_files(debs, scratch)
            floor["b: dpkg-deb -x (scale)"].append(time.monotonic() - t0)
            shutil.rmtree(scratch, ignore_errors=True)
            root = work / f"root-{n}"
            roots.append(root)
            ready_root(layout, root)
            os.sync()  # umoci's writes are not charged to dpkg
            try:
                unpack, configure, batches = run_dpkg(root, debs)
            finally:
                release_root(root)
            got = {p.name: p.version for p in parse_status(
                (root / "var/lib/dpkg/status").read_bytes())}
            differ = sorted(k for k, v in wanted.items() if got.get(k) != v)
            if n == 0:
                notes.append(f"dpkg ran in {batches} batch(es) of --unpack + --configure -a "
                             "(pre-dependencies among the updates)")
            if differ:
                notes.append(f"run {n + 1}: dpkg installed other versions than suture's plan: "
                             + ", ".join(f"{k} {got.get(k)} (plan {wanted[k]})" for k in differ))
            floor["c: dpkg --unpack"].append(unpack)
            floor["c: dpkg --configure"].append(configure)
            floor["d: compress layer"].append(compress(layer_tar))
            floor["floor a+c+d"].append(floor["a: max(download, read)"][-1] + unpack + configure
                                        + floor["d: compress layer"][-1])
            # Not in the floor: what a cold run must also download before planning
            # (bench/patch_routes.py's: InRelease and Packages.xz of the three suites,
            # fetched 4 at a time and decompressed).
            floor["indexes (cold only)"].append(run_index_floor("bookworm", work / f"idx-{n}")
                                                .total)
            floor["cold floor a+c+d+indexes"].append(floor["floor a+c+d"][-1]
                                                     + floor["indexes (cold only)"][-1])
            for path in (root, debs_dir, work / f"idx-{n}"):
                shutil.rmtree(path, ignore_errors=True)
            print(f"run {n + 1}/{args.runs}: suture " + ", ".join(
                  f"{k.split()[1]} {v[-1].total:.1f} s" for k, v in runs.items()) + ", floor "
                  f"{floor['floor a+c+d'][-1]:.1f} s ({entries} layer entries read); "
                  f"load {load()}", flush=True)
        loads["after"] = load()
        return _report(args, header, runs, floor, notes, loads)
    finally:
        for root in roots:
            release_root(root)
        registry.stop()


def _report(args: argparse.Namespace, header: list[str], runs: dict[str, list[Run]],
            floor: dict[str, list[float]], notes: list[str], loads: dict[str, str]) -> int:
    med = {name: {s: _median([r.stages[s] for r in rs if s in r.stages]) for s in STAGES}
           for name, rs in runs.items()}
    totals = {name: _median([r.total for r in rs]) for name, rs in runs.items()}
    fmed = {k: _median(v) for k, v in floor.items()}
    print()
    print(f"{'stage (median s)':22}" + "".join(f"{n:>16}" for n in runs))
    for s in STAGES:
        cells = []
        for name, rs in runs.items():
            present = sum(s in r.stages for r in rs)
            cell = "absent" if not present else f"{med[name][s]:.2f}" + (
                f" ({present}/{len(rs)})" if present < len(rs) else "")
            cells.append(f"{cell:>16}")
        print(f"{s:22}" + "".join(cells))
    print(f"{'total':22}" + "".join(f"{totals[n]:>16.2f}" for n in runs))
    for name, rs in runs.items():
        print(f"  {name} runs: " + " ".join(f"{r.total:.1f}" for r in rs))
    print()
    print("floor components (median s, runs):")
    for k, v in fmed.items():
        print(f"  {k:26} {v:6.2f}   " + " ".join(f"{x:.2f}" for x in floor[k]))
    print()
    f = fmed["floor a+c+d"]
    for name in runs:
        print(f"{name}: {totals[name]:.2f} s = x{totals[name] / f:.2f} of the floor "
              f"({f:.2f} s; target x1.2)")
    if "suture cold" in totals:
        fc = fmed["cold floor a+c+d+indexes"]
        print(f"suture cold: x{totals['suture cold'] / fc:.2f} of the floor with the indexes "
              f"downloaded ({fc:.2f} s)")
    print(f"load average: before {loads['before']}, after {loads['after']}")
    for note in notes:
        print(note)
    if args.json:
        doc = {"suture": header[0], "header": header, "loads": loads, "notes": notes,
               "stages": STAGES, "runs": {k: [{"total": r.total, "stages": r.stages} for r in v]
                                          for k, v in runs.items()},
               "medians": {"suture": {k: {"total": totals[k],
                                             "stages": {s: _finite(v) for s, v in med[k].items()}}
                                     for k in runs},
                           "floor": fmed},
               "floor_runs": floor,
               "ratios": {**{k: totals[k] / f for k in runs},
                          "suture cold (floor with indexes)":
                              totals["suture cold"] / fmed["cold floor a+c+d+indexes"]}}
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
