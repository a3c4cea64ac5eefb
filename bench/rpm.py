"""Updating every package of an rpm image: suture against ``dnf --installroot upgrade``.

    .venv/bin/python bench/rpm.py [--packages 40] [--updates 20] [--kb 150] [--runs 3]
                                  [--sandbox auto]

Needs root (rpm and dnf run the packages' scriptlets in a chroot), rpmbuild, rpmsign,
gpg, createrepo_c, dnf and busybox-static. Everything is built here: a signing key;
``--packages`` packages ``bench-NN`` 1.0-1 (each with ``--kb`` KiB of incompressible
files in four files, a zstd payload, a ``%post`` run by the root's busybox ``/bin/sh``,
every one but the first requiring ``bench-00``), of which ``--updates`` also come as
2.0-1; ``sut-sh`` (busybox as ``/bin/sh``) and ``sut-release`` (releasever 9). One
signed createrepo_c repository holds all of them and is served on 127.0.0.1. The root:
RHEL 9's os-release, the version 1 set installed by the real ``rpm --root``, the key
imported, ``/etc/yum.repos.d/bench.repo`` naming the served repository (gpgcheck=1).

Both sides start from the same root and the same served repository, and update all:

- **suture**: ``suture patch -i oci:<layout>:v1 --dest oci:<out>:patched`` in a
  subprocess. Includes: interpreter start, reading the image (an OCI layout whose one
  gzip layer is the root), repository metadata, package downloads and signature checks,
  building the new rpmdb and files, the scriptlets (bubblewrap), writing the patch layer
  (gzip) and the new image (an OCI layout on the same file system).
- **dnf**: ``dnf -y upgrade --installroot <copy of the root>`` (with the three
  workarounds Debian's dnf needs: ``HOME`` with a ``.rpmmacros`` of ``%_dbpath
  /var/lib/rpm``, ``reposdir`` inside the root, the gpgkey path inside the root).
  Includes: interpreter start, metadata, downloads, signature checks, the rpm
  transaction writing into the directory. Not included: copying the root before each
  run (untimed), and what a container route adds (unpacking an image, diffing the tree,
  writing a layer and an image) -- dnf writes a directory, suture reads and writes an
  image, which favours dnf.

Each side runs *cold* (suture: an empty ``--cache-dir``; dnf: an empty ``cachedir``) and
*warm* (suture: a cache filled by an untimed run; dnf: a cachedir kept from an untimed
run with ``keepcache=1``, so neither metadata nor packages are fetched again). Each
repetition runs the four in the same order; medians of ``--runs`` are printed, with the
peak RSS of each process tree (``wait4``'s ``ru_maxrss``: the largest process in it).
Work happens under /dev/shm when it has room (``--workdir`` to change). ``--sandbox
none`` times suture without running the scriptlets (dnf still runs them): what the
scriptlet stage costs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchlib import measured_suture

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures._served import ServedDirectory
from tests.fixtures.patchimages import write_image
from tests.fixtures.rpmbuild import GpgKey, build_rpm, make_gpg_key, sign_rpms
from tests.fixtures.rpmrepo import _SH_SPEC, FAMILIES, createrepo

KEY_PATH = "etc/pki/rpm-gpg/RPM-GPG-KEY-bench"
ENV = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LC_ALL": "C"}


@dataclass(frozen=True)
class Run:
    seconds: float
    peak_kib: int  # ru_maxrss of the process tree's largest process


def timed(cmd: list[str], env: dict[str, str]) -> Run:
    """Run ``cmd``; its wall time and peak RSS. Fails loudly with its output."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = proc.stdout.read()  # the pipe closes when the tree exits
    _pid, status, usage = os.wait4(proc.pid, 0)
    end = time.perf_counter()
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}):\n{out.decode(errors='replace')}")
    return Run(end - start, usage.ru_maxrss)


def _spec(n: int, version: str, kib: int) -> str:
    name = f"bench-{n:02d}"
    requires = "" if n == 0 else "Requires: bench-00\n"
    make = "".join(f"head -c {kib * 256} /dev/urandom > %{{buildroot}}/usr/share/{name}/f{i}\n"
                   for i in range(4))
    return f"""Name: {name}
Version: {version}
Release: 1
Summary: bench package {n}
License: MIT
AutoReqProv: no
{requires}
%description
Bench package.

%install
mkdir -p %{{buildroot}}/usr/share/{name} %{{buildroot}}/usr/bin
{make}printf '#!/bin/sh\\necho {name} {version}\\n' > %{{buildroot}}/usr/bin/{name}
chmod 755 %{{buildroot}}/usr/bin/{name}

%post
echo "{name} post {version} $1" >> /var/log/bench.log

%files
/usr/bin/{name}
/usr/share/{name}
"""


def _release_spec() -> str:
    return """Name: sut-release
Version: 9
Release: 1
Summary: release
License: MIT
BuildArch: noarch
AutoReqProv: no
Provides: system-release = 9-1
Provides: system-release(releasever) = 9

%description
The release.

%install
mkdir -p %{buildroot}/etc
printf 'bench 9\\n' > %{buildroot}/etc/sut-release

%files
/etc/sut-release
"""


def build_packages(out: Path, key: GpgKey, count: int, updates: int, kib: int
                   ) -> tuple[list[Path], list[Path]]:
    """(version 1 set, version 2 packages), signed."""
    v1 = build_rpm(_SH_SPEC, out, arch="x86_64") + build_rpm(_release_spec(), out)
    v2: list[Path] = []
    for n in range(count):
        v1 += build_rpm(_spec(n, "1.0", kib), out, arch="x86_64")
        if n < updates:
            v2 += build_rpm(_spec(n, "2.0", kib), out, arch="x86_64")
    sign_rpms(v1 + v2, key)
    return v1, v2


def make_root(root: Path, key: GpgKey, v1: list[Path], baseurl: str) -> None:
    """RHEL 9's os-release, the key, the repository file, ``v1`` installed by rpm."""
    (root / "etc/yum.repos.d").mkdir(parents=True)
    (root / "etc/os-release").write_text(FAMILIES["rhel"][0])
    (root / "var/log").mkdir(parents=True)
    (root / "var/lib/rpm").mkdir(parents=True)
    (root / KEY_PATH).parent.mkdir(parents=True)
    (root / KEY_PATH).write_bytes(key.armored)
    (root / "etc/yum.repos.d/bench.repo").write_text(
        f"[bench]\nname=bench\nbaseurl={baseurl}\nenabled=1\ngpgcheck=1\n"
        f"gpgkey=file:///{KEY_PATH}\n")
    rpm = ["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm"]
    env = dict(ENV, HOME=str(root.parent))
    subprocess.run([*rpm, "--initdb"], check=True, env=env, capture_output=True)
    subprocess.run([*rpm, "--import", str(root / KEY_PATH)], check=True, env=env,
                   capture_output=True)
    subprocess.run([*rpm, "-i", *map(str, v1)], check=True, env=env, capture_output=True)


def run_suture(ref: str, dest: str, cache: Path, result: Path, tmp: Path,
               sandbox: str = "auto") -> Run:
    cmd = [sys.executable, "-m", "suture", "patch", "-i", ref, "--dest", dest,
           "--cache-dir", str(cache), "--allow-private-repos", "127.0.0.1",
           "--sandbox", sandbox, "--progress", "quiet", "--result", str(result)]
    tmp.mkdir(parents=True, exist_ok=True)
    run = timed(cmd, dict(os.environ, TMPDIR=str(tmp)))
    [platform] = json.loads(result.read_text())["platforms"]
    if platform["status"] != "patched":
        raise SystemExit(f"suture did not patch: {platform}")
    return run


def run_dnf(root: Path, cache: Path, home: Path) -> Run:
    cmd = ["dnf", "-y", "-q", f"--installroot={root}", "--releasever=9",
           f"--setopt=reposdir={root}/etc/yum.repos.d",
           f"--setopt=bench.gpgkey=file://{root}/{KEY_PATH}",
           f"--setopt=cachedir={cache}", "--setopt=keepcache=1",
           "--disablerepo=*", "--enablerepo=bench", "upgrade"]
    return timed(cmd, dict(ENV, HOME=str(home)))


def upgraded(root: Path) -> list[str]:
    """Packages at 2.0 in ``root``'s rpmdb, as rpm reads it."""
    out = subprocess.run(["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "-qa",
                          "--qf", "%{NAME}-%{VERSION}\\n"], check=True, capture_output=True,
                         text=True, env=dict(ENV, HOME=str(root.parent))).stdout
    return sorted(line for line in out.splitlines() if line.endswith("-2.0"))


def _fmt(runs: list[Run]) -> tuple[float, float, str]:
    secs = [r.seconds for r in runs]
    med = statistics.median(secs)
    mem = statistics.median(r.peak_kib for r in runs) / 1024
    return med, mem, f"{med:6.2f} s ({min(secs):.2f}-{max(secs):.2f})  peak RSS {mem:6.1f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--packages", type=int, default=40)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--kb", type=int, default=150, help="KiB of files per package")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sandbox", default="auto", choices=["auto", "bwrap", "chroot", "none"],
                        help="suture's --sandbox for the timed runs (none: scriptlets not run)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("rpm bench: run as root (rpm and dnf chroot for scriptlets)")
    where = args.workdir
    shm = Path("/dev/shm")
    if where is None and shm.is_dir() and shutil.disk_usage(shm).free > 4 << 30:
        where = shm
    work = Path(tempfile.mkdtemp(prefix="suture-bench-rpm-", dir=where))
    try:
        return _bench(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _bench(args: argparse.Namespace, work: Path) -> int:
    t0 = time.perf_counter()
    key = make_gpg_key(work / "gnupg", "bench@suture.test")
    v1, v2 = build_packages(work / "pkgs", key, args.packages, args.updates, args.kb)
    with ServedDirectory(work / "served") as server:
        pool = server.root / "repo"
        pool.mkdir(parents=True)
        for pkg in v1 + v2:
            shutil.copy(pkg, pool)
        createrepo(pool)
        pristine = work / "root"
        make_root(pristine, key, v1, f"{server.url}/repo/")
        ref = write_image(pristine, work, "v1")
        home = work / "home"
        home.mkdir()
        (home / ".rpmmacros").write_text("%_dbpath /var/lib/rpm\n")
        size = sum(p.stat().st_size for p in v2)
        layer = sum(f.stat().st_size for f in (work / "image-v1").iterdir())
        print(measured_suture())
        print(f"set-up {time.perf_counter() - t0:.1f} s: {len(v1)} packages installed, "
              f"{len(v2)} updates ({size / 1e6:.1f} MB of rpms), root tar "
              f"{layer / 1e6:.1f} MB, runs {args.runs}, suture --sandbox {args.sandbox}")

        # untimed: fill the warm caches, and check both sides do the same upgrade
        warm_suture, warm_dnf = work / "suture-warm", work / "dnf-warm"
        run_suture(ref, f"oci:{work}/out-setup:patched", warm_suture, work / "r-setup.json",
                   work / "tmp")
        setup_root = work / "root-setup"
        shutil.copytree(pristine, setup_root, symlinks=True)
        run_dnf(setup_root, warm_dnf, home)
        done = upgraded(setup_root)
        [platform] = json.loads((work / "r-setup.json").read_text())["platforms"]
        by_suture = sorted(f"{u['name']}-{u['to'].split('-')[0]}" for u in platform["updates"])
        if done != by_suture or len(done) != len(v2):
            raise SystemExit(f"the sides disagree: dnf {done}, suture {by_suture}")
        shutil.rmtree(setup_root)

        runs: dict[str, list[Run]] = {k: [] for k in
                                      ("suture cold", "dnf cold", "suture warm", "dnf warm")}
        for i in range(args.runs):
            out = work / f"out-{i}"
            runs["suture cold"].append(run_suture(
                ref, f"oci:{out}-cold:patched", work / f"suture-cold-{i}",
                work / f"r-cold-{i}.json", work / "tmp", args.sandbox))
            target = work / f"root-cold-{i}"
            shutil.copytree(pristine, target, symlinks=True)
            runs["dnf cold"].append(run_dnf(target, work / f"dnf-cold-{i}", home))
            runs["suture warm"].append(run_suture(
                ref, f"oci:{out}-warm:patched", warm_suture, work / f"r-warm-{i}.json",
                work / "tmp", args.sandbox))
            target = work / f"root-warm-{i}"
            shutil.copytree(pristine, target, symlinks=True)
            runs["dnf warm"].append(run_dnf(target, warm_dnf, home))
            for name in ("cold", "warm"):
                shutil.rmtree(work / f"root-{name}-{i}")
                shutil.rmtree(f"{out}-{name}")
            shutil.rmtree(work / f"suture-cold-{i}")
            shutil.rmtree(work / f"dnf-cold-{i}")

    medians = {}
    for name, got in runs.items():
        med, mem, line = _fmt(got)
        medians[name] = (med, mem)
        print(f"{name:12} {line}")
    for temp in ("cold", "warm"):
        (s, sm), (d, dm) = medians[f"suture {temp}"], medians[f"dnf {temp}"]
        faster = f"x{d / s:.2f} faster" if s <= d else f"x{s / d:.2f} slower"
        print(f"[{temp}] suture {s:.2f} s | dnf {d:.2f} s (suture {faster}); "
              f"peak RSS suture {sm:.0f} MiB | dnf {dm:.0f} MiB (x{sm / dm:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
