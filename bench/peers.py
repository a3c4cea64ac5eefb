"""suture against copa v0.11.0 itself (with buildkitd v0.34.2), same images, same run.

    .venv/bin/python bench/peers.py [--runs 3] [--images debian,distroless,index]

Needs root, runc, skopeo, umoci, docker-registry, mmdebstrap, the Debian archive, and
the peers built by ``scripts/peers`` (copa, buildkitd, buildctl; built here if missing
and Go is present). Everything runs against one ``docker-registry`` on 127.0.0.1: the
images to patch are pushed there, both tools read them from there and push their result
back there (``copa patch --push``, ``suture patch --push``), so both do the same work:
pull, patch, push. copa's Debian tooling image (a bookworm mmdebstrap root with the
release, -updates and -security suites) is served from that registry as
``ghcr.io/project-copacetic/copacetic/debian:12-slim`` and ``docker.io/library/debian:12-slim``
through buildkitd's registry mirrors (tests/fixtures/buildkit.py).

Images (amd64):

- ``debian``: two layers, a bookworm minbase root of the point release plus a layer
  adding openssl, ca-certificates, curl, perl and others (``BOOKWORM_30``) and an
  ``etc/apt/sources.list`` naming the three suites (as Docker Hub's debian images
  do); 30+ updates in -security/-updates.
- ``distroless``: that root recast as distroless images are (``var/lib/dpkg/status.d``
  listing a few packages, as gcr.io/distroless/base-debian12; no apt, no dpkg): copa's
  tooling-image route, run with ``--ignore-errors`` (without it copa fails on this
  image, see docs/copa-comparison.md).
- ``index`` (not by default: one copa run takes minutes): a two-platform index of
  bookworm minbase roots, linux/amd64 and linux/arm64/v8 (the arm64 root made by
  mmdebstrap through QEMU), each with the three suites; the arm64 platform's scripts
  run through the host's binfmt_misc QEMU for both tools; copa's tooling image is an
  index of both platforms too; copa gets ``--timeout 60m``.

Suture's warm run reuses the patch layers it kept (``patch.results``) after planning
afresh against the repositories; ``--no-result-cache`` is not used.

Each repetition runs, in this order: copa cold (a new buildkitd with an empty
``--root``), copa warm (the same buildkitd again: its image, layer and exec caches
full; copa's own ``apt-get update`` steps are marked IgnoreCache and rerun), suture cold
(an empty ``--cache-dir``), suture warm (the same cache again). Wall time is the
patching command's own (buildkitd's start, about a second, is not counted against copa).
Peak memory: copa's own max RSS (wait4) plus buildkitd's ``VmHWM`` over the run (reset
before it through ``/proc/PID/clear_refs``); suture's own max RSS. Neither counts the
processes the build steps or maintainer scripts run (apt-get and dpkg for copa in runc
containers, maintainer scripts for suture in bubblewrap). Medians of ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchlib import measured_suture

# copa's distroless route fails on this image without --ignore-errors (ca-certificates'
# postinst runs outside the image: docs/copa-comparison.md); with it copa writes an image.
COPA_ARGS = {"distroless": ("--ignore-errors",),
             # copa's default 5m is too short for the emulated platform here.
             "index": ("--timeout", "60m")}


@dataclass
class Sample:
    seconds: float
    peak_mib: float


def _median(samples: list[Sample]) -> Sample:
    return Sample(statistics.median(s.seconds for s in samples),
                  statistics.median(s.peak_mib for s in samples))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--images", default="debian,distroless",
                        help="comma-separated: debian, distroless, index")
    parser.add_argument("--workdir", type=Path, help="default: the system's temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    work = Path(tempfile.mkdtemp(prefix="suture-peers-", dir=args.workdir))
    try:
        return _bench(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _bench(args: argparse.Namespace, work: Path) -> int:
    from tests.fixtures.buildkit import (
        BOOKWORM_30,
        distroless_like,
        peer_binary,
        push_image,
        push_index,
        push_tooling_images,
        run_copa,
        sources_entry,
        start_buildkitd,
        timed_run,
    )
    from tests.fixtures.debian import debian_rootfs
    from tests.fixtures.registry import RegistryServer

    from suture.devtools.rootfs import diff_entries

    names = [n for n in args.images.split(",") if n]
    unknown = set(names) - {"debian", "distroless", "index"}
    if unknown:
        raise SystemExit(f"peers: unknown image(s): {', '.join(sorted(unknown))}")
    base = debian_rootfs("bookworm")
    full = debian_rootfs("bookworm", include=BOOKWORM_30)
    registry = RegistryServer(work / "registry")
    registry.start()
    try:
        push_tooling_images(work / "tooling", registry.host, arm64="index" in names)
        sources: dict[str, str] = {}
        if "debian" in names:
            sources["debian"] = push_image([base, [*diff_entries(base, full), sources_entry()]],
                                           work / "img-debian", f"{registry.host}/debian:12")
        if "distroless" in names:
            sources["distroless"] = push_image([distroless_like(full)],
                                               work / "img-distroless",
                                               f"{registry.host}/distroless:12")
        if "index" in names:
            # Two platforms, arm64 run through the host's binfmt_misc QEMU by both tools.
            sources["index"] = push_index(
                {"linux/amd64": [base, [sources_entry()]],
                 "linux/arm64/v8": [debian_rootfs("bookworm", arch="arm64"),
                                    [sources_entry()]]},
                work / "img-index", f"{registry.host}/multi:12")
        print(measured_suture())
        print(f"{peer_binary('copa').parent.name}, {peer_binary('buildkitd').parent.name} "
              "(runc worker); "
              f"{args.runs} runs each")
        results: dict[tuple[str, str], list[Sample]] = {}
        for name, src in sources.items():
            plan = work / f"plan-{name}.json"
            proc = timed_run([sys.executable, "-m", "suture", "patch", "-i", src, "--dry-run",
                              "--result", str(plan), "--cache-dir", str(work / "plan-cache")])
            assert proc.proc.returncode == 0, proc.proc.stderr
            updates = json.loads(plan.read_text())["platforms"][0]["updates"]
            print(f"{name}: {src}, {len(updates)} updates")
            for n in range(args.runs):
                kit = start_buildkitd(work / f"bk-{name}-{n}", registry.host)
                try:
                    for mode in ("cold", "warm"):
                        kit.reset_peak()
                        run = run_copa(kit, "-i", src, "-t", f"12-copa-{mode}-{n}", "--push",
                                       *COPA_ARGS.get(name, ()), timeout=1800)
                        assert run.proc.returncode == 0, run.proc.stderr[-3000:]
                        peak = (run.peak_rss_kib + kit.peak_rss_kib()) / 1024
                        if mode == "warm" and n == 0:
                            # What BuildKit took from its cache instead of running again.
                            cached = re.findall(r"^#\d+ (.*)\n#\d+ CACHED$", run.proc.stderr,
                                                re.MULTILINE)
                            print(f"{name}: copa warm, {len(cached)} steps from BuildKit's "
                                  f"cache: {'; '.join(c[:60] for c in cached)}", flush=True)
                        results.setdefault((name, f"copa {mode}"), []).append(
                            Sample(run.seconds, peak))
                finally:
                    kit.stop()
                    shutil.rmtree(kit.root, ignore_errors=True)
                cache = work / f"cache-{name}-{n}"
                for mode in ("cold", "warm"):
                    run = timed_run([sys.executable, "-m", "suture", "patch", "-i", src, "-t",
                                     f"12-suture-{mode}-{n}", "--push", "--cache-dir",
                                     str(cache), "--progress", "quiet"], timeout=1800)
                    assert run.proc.returncode == 0, run.proc.stderr[-3000:]
                    results.setdefault((name, f"suture {mode}"), []).append(
                        Sample(run.seconds, run.peak_rss_kib / 1024))
                shutil.rmtree(cache, ignore_errors=True)
                print(f"run {n + 1}/{args.runs} {name}: " + ", ".join(
                    f"{k[1]} {v[-1].seconds:.1f} s" for k, v in results.items() if k[0] == name),
                    flush=True)
        print()
        print(f"{'image':11} {'route':12} {'median':>8} {'runs':>22} {'peak MiB':>9}")
        for (name, route), samples in results.items():
            m = _median(samples)
            runs = " ".join(f"{s.seconds:.1f}" for s in samples)
            print(f"{name:11} {route:12} {m.seconds:7.1f}s {runs:>22} {m.peak_mib:9.0f}")
        print()
        for name in sources:
            for mode in ("cold", "warm"):
                copa = _median(results[(name, f"copa {mode}")])
                ours = _median(results[(name, f"suture {mode}")])
                print(f"{name} {mode}: suture {ours.seconds:.1f} s vs copa {copa.seconds:.1f} s "
                      f"= x{copa.seconds / ours.seconds:.1f} faster; peak memory "
                      f"{ours.peak_mib:.0f} MiB vs {copa.peak_mib:.0f} MiB "
                      f"(x{copa.peak_mib / ours.peak_mib:.1f})")
    finally:
        registry.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
