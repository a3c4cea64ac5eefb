"""Where `suture patch` spends its time on the bench image: wall time per step, warm cache.

    .venv/bin/python bench/patch_profile.py [--suite bookworm|trixie] [--runs 5]

The image is the one bench/patch_routes.py patches (a real mmdebstrap root of the
suite's point release with openssl, ca-certificates and curl, one gzip layer, in an
OCI layout under /dev/shm). One untimed run fills the cache; then each run is a fresh
``suture patch`` process whose library steps are wrapped with timers (wall time in
the thread that calls them; the scripts' root is written by a helper process beside
them, so steps overlap it). Printed: per step, the median over the runs of its time
and of when it started; and the slowest maintainer scripts. Needs what suture needs
to run scripts (bubblewrap, or root for chroot).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib import measured_suture

INCLUDE = ("openssl", "ca-certificates", "curl")

# (label, module, attribute path) of what is timed, in pipeline order.
STEPS = [
    ("read_tree (inspection + engine pass)", "suture.patch", "read_tree"),
    ("inspect_image", "suture.patch", "inspect_image"),
    ("start_root (scripts' root, background)", "suture.patch.scripts", "start_root"),
    ("engine prepare (sources, Release, Packages)", "suture.patch.dpkg", "DpkgEngine.prepare"),
    ("engine plan", "suture.patch.dpkg", "DpkgEngine.plan"),
    ("engine fetch", "suture.patch.dpkg", "DpkgEngine.fetch"),
    ("engine build (unpack .debs, dpkg db)", "suture.patch.dpkg", "DpkgEngine.build"),
    ("run_scripts", "suture.patch.scripts", "run_scripts"),
    ("  wait for the scripts' root", "suture.patch.scripts", "ScriptRoot.wait"),
    ("  write the patch entries", "suture.patch.scripts", "_write_entries"),
    ("  snapshots (before + after)", "suture.patch.scripts", "_snapshot"),
    ("  maintainer scripts", "suture.patch.sandbox", "run_one"),
    ("  diff", "suture.patch.scripts", "_diff"),
    ("  release the root", "suture.patch.scripts", "ScriptRoot.release"),
    ("write_layer", "suture.patch", "write_layer"),
    ("close the scripts' root (waits for its removal)", "suture.oci.extract",
     "Extraction.close"),
    ("write_artifact", "suture.patch", "write_artifact"),
]


# ------------------------------------------------------------------ in the child


def _child(out: Path, argv: list[str]) -> int:
    import importlib

    t0 = time.perf_counter()
    timings: dict[str, list[tuple[float, float]]] = {}
    scripts: list[tuple[str, float]] = []

    def timed(label: str, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                end = time.perf_counter()
                timings.setdefault(label, []).append((start - t0, end - start))
                if func.__name__ == "_run_one" and args:
                    scripts.append((args[0].describe(), end - start))
        return run

    for label, module_name, attr in STEPS:
        owner: Any = importlib.import_module(module_name)
        *parents, name = attr.split(".")
        for parent in parents:
            owner = getattr(owner, parent, None)
        if owner is None or not hasattr(owner, name):
            continue
        setattr(owner, name, timed(label, getattr(owner, name)))
    from suture.cli import main

    code = main(argv)
    total = time.perf_counter() - t0
    out.write_text(json.dumps({"code": code, "total": total, "timings": timings,
                               "scripts": scripts}))
    return 0


# ------------------------------------------------------------------ the bench


def _run(ref: str, dest: str, cache: Path, out: Path) -> dict[str, Any]:
    argv = ["patch", "-i", ref, "--dest", dest, "--cache-dir", str(cache), "--progress",
            "quiet"]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", str(out), *argv],
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"suture failed:\n{proc.stdout}{proc.stderr}")
    doc: dict[str, Any] = json.loads(out.read_text())
    if doc["code"] != 0:
        raise SystemExit(f"suture exited {doc['code']}:\n{proc.stdout}{proc.stderr}")
    doc["wall"] = wall
    return doc


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return _child(Path(sys.argv[2]), sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--suite", default="bookworm", choices=["bookworm", "trixie"])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.fixtures.debian import debian_rootfs

    from suture.devtools.debian_image import image_from_layers
    from suture.oci.model import Platform
    from suture.transports import write_artifact

    rootfs = debian_rootfs(args.suite, include=INCLUDE)
    shm = Path("/dev/shm")
    where = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    work = Path(tempfile.mkdtemp(prefix="suture-profile-", dir=where))
    try:
        (work / "image").mkdir()
        image = image_from_layers([rootfs], Platform.parse("linux/amd64"), work / "image")
        ref = f"oci:{work}/layout:{args.suite}"
        write_artifact(image, ref)
        cache = work / "cache"
        _run(ref, f"oci:{work}/setup:x", cache, work / "setup.json")  # fills the cache
        print(measured_suture())
        print(f"image: {rootfs.name}; {args.runs} warm runs")
        docs = []
        for n in range(args.runs):
            docs.append(_run(ref, f"oci:{work}/out-{n}:x", cache, work / f"run-{n}.json"))
            shutil.rmtree(work / f"out-{n}", ignore_errors=True)
            print(f"run {n + 1}: {docs[-1]['wall']:.2f} s", flush=True)
        _report(docs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _report(docs: list[dict[str, Any]]) -> None:
    med = statistics.median
    print()
    print(f"{'step':48} {'calls':>5} {'s':>6} {'starts at':>9}")
    print(f"{'process (interpreter start to exit)':48} {1:5} "
          f"{med(d['wall'] for d in docs):6.2f} {0:9.2f}")
    print(f"{'  outside main() (interpreter, imports, exit)':48} {1:5} "
          f"{med(d['wall'] - d['total'] for d in docs):6.2f} {0:9.2f}")
    for label, _module, _attr in STEPS:
        runs = [d["timings"].get(label, []) for d in docs]
        if not any(runs):
            continue
        calls = len(runs[0])
        seconds = med(sum(s for _, s in r) for r in runs)
        begins = med(min((t for t, _ in r), default=0.0) for r in runs)
        print(f"{label:48} {calls:5} {seconds:6.2f} {begins:9.2f}")
    per_script: dict[str, list[float]] = {}
    for d in docs:
        for name, seconds in d["scripts"]:
            per_script.setdefault(name, []).append(seconds)
    slow = sorted(per_script.items(), key=lambda kv: -med(kv[1]))[:6]
    print()
    print("slowest maintainer scripts: " + ", ".join(
        f"{name} {med(times):.2f}" for name, times in slow))


if __name__ == "__main__":
    raise SystemExit(main())
