"""Fleet patching: one ``suture fleet`` run against one ``suture patch`` per image.

    .venv/bin/python bench/fleet.py [--bases 3] [--tags 10] [--kb 2048] [--runs 1]

Everything runs on 127.0.0.1: the CNCF registry (``docker-registry``) and a signed apk
repository (tests/fixtures/apkrepo.py). The fleet: ``--bases`` Alpine-style bases
(``musl`` and a library of ``--kb`` KiB of incompressible data, both with an update in
the repository), ``--tags`` tags per base, each its base plus an app layer of its own
(30 images on 3 bases by default), pushed to ``<registry>/src/app<base>:1.0.<n>``. The
config is copa's PatchConfig: one image entry per base, ``strategy: pattern``.

Timed, each from a cold package cache and into fresh target repositories:

- **singles**: ``suture patch -i <image> -t <target>`` once per image, one after the
  other, sharing one cache dir (cold for the first only: this favours the singles);
- **fleet, 1 shard**: ``suture fleet plan`` then ``suture fleet run --shard 0/1``
  (default ``--jobs``); **no reuse**: the same with ``--no-reuse`` (every image patched
  on its own, still one process and one cache);
- **fleet, 4 shards**: ``suture fleet plan`` then four ``suture fleet run --shard i/4``
  processes at once, each with its own cold cache (as four pods would be), on this
  machine; **4 shards apart**: the same four shards one after the other, timed alone:
  the plan plus the slowest shard is the wall time of four machines.

Printed: seconds per variant (medians of ``--runs``), the plan's share, and the goal of
docs/benchmarks.md: fleet <= 3 single patches + 0.5 s per image.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import measured_suture

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.apkrepo import ApkKeys, ApkRepoServer
from tests.fixtures.fleet import FleetScene
from tests.fixtures.registry import RegistryServer


def suture(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "suture", *args], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"suture {' '.join(args[:3])} failed:\n{proc.stderr[-3000:]}")
    return proc


def config(scene: FleetScene, bases: list[str], target: str) -> str:
    images = "".join(f"  - name: app{b}\n    image: {scene.host}/src/app{b}\n"
                     f"    tags:\n      strategy: pattern\n      pattern: '^1\\.'\n"
                     for b in bases)
    return (f"apiVersion: copa.sh/v1alpha1\nkind: PatchConfig\ntarget:\n"
            f"  registry: {scene.host}/{target}\nimages:\n{images}")


def flags(scene: FleetScene, cache: Path) -> list[str]:
    return [*scene.mirror_args(), "--sandbox", "none", "--cache-dir", str(cache)]


def singles(scene: FleetScene, images: list[tuple[str, str]], work: Path, run: int) -> float:
    cache = work / f"cache-single-{run}"
    started = time.monotonic()
    for repo, tag in images:
        suture("patch", "-i", f"{scene.host}/src/{repo}:{tag}", "-t",
               f"{scene.host}/single{run}/{repo}:{tag}-patched", "--progress", "quiet",
               *flags(scene, cache))
    return time.monotonic() - started


def fleet(scene: FleetScene, bases: list[str], work: Path, name: str, shards: int,
          extra: list[str], apart: bool = False) -> tuple[float, float, dict[str, int]]:
    cfg = work / f"{name}.yaml"
    cfg.write_text(config(scene, bases, name))
    plan = work / f"{name}.json"
    started = time.monotonic()
    suture("fleet", "plan", "-c", str(cfg), "-o", str(plan))
    planned = time.monotonic() - started
    def start(i: int) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "suture", "fleet", "run", "--plan", str(plan), "--shard",
             f"{i}/{shards}", "--results", str(work / f"{name}-results"), *extra,
             *flags(scene, work / f"cache-{name}-{i}")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(proc: subprocess.Popen[str]) -> None:
        _out, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"fleet run failed:\n{err[-3000:]}")

    if apart:  # one machine per shard: each alone, the slowest decides
        longest = 0.0
        for i in range(shards):
            began = time.monotonic()
            finish(start(i))
            longest = max(longest, time.monotonic() - began)
        total = planned + longest
    else:
        for proc in [start(i) for i in range(shards)]:
            finish(proc)
        total = time.monotonic() - started
    merged = suture("fleet", "merge", "--plan", str(plan), str(work / f"{name}-results"),
                    "--json", str(work / f"{name}-summary.json"))
    del merged
    summary = json.loads((work / f"{name}-summary.json").read_text())
    reused = sum(1 for j in summary["jobs"] if j.get("reusedFrom"))
    counts = dict(summary["counts"], reused=reused)
    return total, planned, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bases", type=int, default=3)
    parser.add_argument("--tags", type=int, default=10)
    parser.add_argument("--kb", type=int, default=2048,
                        help="KiB of data in each base's library package")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    bases = [chr(ord("a") + i) for i in range(args.bases)]
    with tempfile.TemporaryDirectory(prefix="suture-bench-fleet-") as tmp:
        work = Path(tmp)
        registry = RegistryServer(work / "registry")
        registry.start()
        server = ApkRepoServer(work / "apkrepo").start()
        try:
            scene = FleetScene(work, registry, server,
                               ApkKeys(work / "keys").create("bench"), size=args.kb << 10)
            scene.publish(bases)
            images = []
            for b in bases:
                for n in range(args.tags):
                    scene.push(f"app{b}", f"1.0.{n}", b)
                    images.append((f"app{b}", f"1.0.{n}"))
            rows: dict[str, list[float]] = {}
            plans: dict[str, list[float]] = {}
            counts: dict[str, dict[str, int]] = {}
            for run in range(args.runs):
                rows.setdefault("singles", []).append(singles(scene, images, work, run))
                for label, shards, extra in (("fleet-1", 1, []),
                                             ("fleet-1-no-reuse", 1, ["--no-reuse"]),
                                             ("fleet-4", 4, []),
                                             ("fleet-4-apart", 4, [])):
                    total, planned, seen = fleet(scene, bases, work, f"{label}-{run}",
                                                 shards, extra, label.endswith("apart"))
                    rows.setdefault(label, []).append(total)
                    plans.setdefault(label, []).append(planned)
                    counts[label] = seen
        finally:
            server.close()
            registry.stop()
    n = len(images)
    med = {k: statistics.median(v) for k, v in rows.items()}
    per_single = med["singles"] / n
    goal = 3 * per_single + 0.5 * n
    result = {"suture": measured_suture(), "images": n, "bases": args.bases,
              "kb": args.kb, "runs": args.runs, "cpus": os.cpu_count(),
              "seconds": {k: round(v, 2) for k, v in med.items()},
              "plan_seconds": {k: round(statistics.median(v), 2) for k, v in plans.items()},
              "per_single": round(per_single, 3), "goal_seconds": round(goal, 2),
              "counts": counts}
    print(json.dumps(result, indent=2))
    print("\n| variant | seconds | vs singles |\n|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.1f} | x{med['singles'] / v:.1f} |")
    print(f"\ngoal: fleet-1 {med['fleet-1']:.1f} s <= 3 x {per_single:.2f} + 0.5 x {n} "
          f"= {goal:.1f} s: {'met' if med['fleet-1'] <= goal else 'NOT met'}; "
          f"4 shards {med['fleet-4']:.1f} s vs half of 1 shard {med['fleet-1'] / 2:.1f} s: "
          f"{'met' if med['fleet-4'] < med['fleet-1'] / 2 else 'NOT met'} on this machine; "
          f"one machine per shard (plan + slowest shard) {med['fleet-4-apart']:.1f} s: "
          f"{'met' if med['fleet-4-apart'] < med['fleet-1'] / 2 else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
