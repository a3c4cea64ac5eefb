"""The rpm upgrade closure on hand-made package values, and against dnf --installroot on
packages built with rpmbuild (the oracle module below)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from suture.distro.rpm.model import (
    SENSE_EQUAL,
    SENSE_GREATER,
    SENSE_LESS,
    SENSE_SCRIPT_POST,
    Dep,
    PackageInfo,
    RepoPackage,
)
from suture.distro.rpm.resolve import Resolver, compare_floor, source_name
from suture.distro.rpm.version import parse_evr
from tests.fixtures.rpmbuild import RPM_DB, build_rpm, rpm_root

GE = SENSE_GREATER | SENSE_EQUAL


def dep(text: str) -> Dep:
    """``name``, ``name = evr``, ``name >= evr``..."""
    if text.startswith("("):
        return Dep(text)
    parts = text.split()
    if len(parts) == 1:
        return Dep(text)
    flags = {"=": SENSE_EQUAL, ">=": GE, "<": SENSE_LESS, ">": SENSE_GREATER,
             "<=": SENSE_LESS | SENSE_EQUAL}[parts[1]]
    return Dep(parts[0], flags, parts[2])


def inst(nevr: str, arch: str = "x86_64", *, provides: tuple[str, ...] = (),
         requires: tuple[str, ...] = (), conflicts: tuple[str, ...] = (),
         files: tuple[str, ...] = (), source: str = "") -> PackageInfo:
    name, evr = nevr.split(" ")
    e, v, r = parse_evr(evr)
    return PackageInfo(name, e, v, r or "1", arch, tuple(map(dep, provides)),
                       tuple(map(dep, requires)), (), tuple(map(dep, conflicts)), files,
                       source)


def cand(nevr: str, arch: str = "x86_64", *, provides: tuple[str, ...] = (),
         requires: tuple[str, ...] = (), obsoletes: tuple[str, ...] = (),
         conflicts: tuple[str, ...] = (), files: tuple[str, ...] = (), priority: int = 99,
         repo: str = "base", source: str = "") -> RepoPackage:
    name, evr = nevr.split(" ")
    e, v, r = parse_evr(evr)
    return RepoPackage(name, e, v, r or "1", arch, tuple(map(dep, provides)),
                       tuple(map(dep, requires)), tuple(map(dep, obsoletes)),
                       tuple(map(dep, conflicts)), files, source,
                       location=f"Packages/{name}-{evr}.{arch}.rpm", base_url="file:///repo",
                       checksum="ab" * 32, size=100, repo_id=repo, priority=priority)


def changes(res: object) -> list[tuple[str, str | None, str, bool]]:
    return [(c.new.nevra, c.old.nevra if c.old else None, c.arch, c.requested)
            for c in res.changes]  # type: ignore[attr-defined]


def test_plain_upgrade_to_newest_and_floor() -> None:
    r = Resolver([inst("a 1.0-1")], [cand("a 1.1-1"), cand("a 1.2-1"), cand("a 0.9-1")],
                 arch="x86_64")
    res = r.resolve({"a": "1.1-1"})
    assert changes(res) == [("a-1.2-1.x86_64", "a-1.0-1.x86_64", "x86_64", True)]
    assert r.newest("a") == "1.2-1"
    res = r.resolve({"a": "1.3"})
    assert res.changes == [] and "fixed version 1.3" in res.failures["a"]


def test_up_to_date_not_installed_and_older() -> None:
    r = Resolver([inst("a 1.0-1"), inst("b 2.0-1")], [cand("a 1.0-1"), cand("b 1.0-1")],
                 arch="x86_64")
    res = r.resolve({"a": None, "b": None, "c": None})
    assert res.up_to_date == ["a"] and res.not_installed == ["c"]
    assert "only older b-1.0-1.x86_64" in res.failures["b"]
    assert res.changes == []


def test_arch_rules() -> None:
    # noarch stays noarch, an arch package stays on its arch
    r = Resolver([inst("n 1-1", "noarch"), inst("x 1-1")],
                 [cand("n 2-1", "x86_64"), cand("x 2-1", "noarch"), cand("x 1.5-1")],
                 arch="x86_64")
    res = r.resolve(None)
    assert changes(res) == [("x-1.5-1.x86_64", "x-1-1.x86_64", "x86_64", True)]


def test_multilib_both_or_refused() -> None:
    installed = [inst("lib 1-1"), inst("lib 1-1", "i686")]
    r = Resolver(installed, [cand("lib 2-1"), cand("lib 2-1", "i686")], arch="x86_64")
    assert [c.new.nevra for c in r.resolve({"lib": None}).changes] == [
        "lib-2-1.i686", "lib-2-1.x86_64"]
    r = Resolver(installed, [cand("lib 2-1")], arch="x86_64")
    res = r.resolve({"lib": None})
    assert res.changes == [] and "i686" in res.failures["lib"]


def test_install_only_refused() -> None:
    r = Resolver([inst("kernel 5.14-1"), inst("kernel 5.14-2")], [cand("kernel 5.14-3")],
                 arch="x86_64")
    res = r.resolve(None)
    assert res.changes == [] and "install-only" in res.failures["kernel"]


def test_priority_wins_over_newer() -> None:
    r = Resolver([inst("a 1-1")], [cand("a 2-1", priority=10, repo="pinned"),
                                   cand("a 3-1", priority=50, repo="extra")], arch="x86_64")
    assert [c.new.evr for c in r.resolve(None).changes] == ["2-1"]
    assert r.held("a") is not None and "extra" in r.held("a")  # type: ignore[operator]
    res = r.resolve({"a": "3-1"})
    assert "a" in res.held and res.changes == []


def test_exact_pair_pulls_partner() -> None:
    installed = [inst("openssl-libs 1:3.0.7-27"),
                 inst("openssl 1:3.0.7-27", requires=("openssl-libs = 1:3.0.7-27",))]
    cands = [cand("openssl-libs 1:3.0.7-28"),
             cand("openssl 1:3.0.7-28", requires=("openssl-libs = 1:3.0.7-28",))]
    res = Resolver(installed, cands, arch="x86_64").resolve({"openssl-libs": None})
    assert changes(res) == [
        ("openssl-1:3.0.7-28.x86_64", "openssl-1:3.0.7-27.x86_64", "x86_64", False),
        ("openssl-libs-1:3.0.7-28.x86_64", "openssl-libs-1:3.0.7-27.x86_64", "x86_64", True)]
    # without the partner's new build the target is refused, nothing half-done
    res = Resolver(installed, cands[:1], arch="x86_64").resolve({"openssl-libs": None})
    assert res.changes == [] and "breaks openssl-1:3.0.7-27" in res.failures["openssl-libs"]


def test_new_dependency_installed_and_file_dep() -> None:
    installed = [inst("app 1-1")]
    cands = [cand("app 2-1", requires=("libnew >= 1", "/usr/bin/helper")),
             cand("libnew 1-1"), cand("libnew 0.5-1"),
             cand("helpers 1-1", "noarch", files=("/usr/bin/helper",))]
    res = Resolver(installed, cands, arch="x86_64").resolve({"app": None})
    assert changes(res) == [("app-2-1.x86_64", "app-1-1.x86_64", "x86_64", True),
                            ("helpers-1-1.noarch", None, "noarch", False),
                            ("libnew-1-1.x86_64", None, "x86_64", False)]
    res = Resolver(installed, cands[:1], arch="x86_64").resolve({"app": None})
    assert "nothing provides libnew >= 1" in res.failures["app"]


def test_rich_and_scriptlet_requires_rpmlib_ignored() -> None:
    installed = [inst("app 1-1"), inst("b 1-1")]
    cands = [cand("app 2-1", requires=("(b >= 2 or c)", "rpmlib(PayloadIsZstd) <= 5.4.18-1")),
             cand("b 2-1"), cand("c 1-1")]
    res = Resolver(installed, cands, arch="x86_64").resolve({"app": None})
    assert [c.new.nevra for c in res.changes] == ["app-2-1.x86_64", "b-2-1.x86_64"]
    post = RepoPackage("app", None, "3", "1", "x86_64",
                       requires=(Dep("d", SENSE_SCRIPT_POST),))
    res = Resolver(installed, [post], arch="x86_64").resolve({"app": None})
    assert "nothing provides d" in res.failures["app"]


def test_rich_and_needs_two_packages() -> None:
    installed = [inst("app 1-1"), inst("b 1-1")]
    cands = [cand("app 2-1", requires=("(b >= 2 and (c if b) and (d if x))",)),
             cand("b 2-1"), cand("c 1-1"), cand("d 1-1")]
    res = Resolver(installed, cands, arch="x86_64").resolve({"app": None})
    assert [c.new.nevra for c in res.changes] == ["app-2-1.x86_64", "b-2-1.x86_64",
                                                  "c-1-1.x86_64"]


def test_obsoletes_rename() -> None:
    installed = [inst("oldname 1-1")]
    cands = [cand("newname 2-1", obsoletes=("oldname < 2",), provides=("oldname = 2-1",))]
    res = Resolver(installed, cands, arch="x86_64").resolve({"oldname": None})
    assert changes(res) == [("newname-2-1.x86_64", "oldname-1-1.x86_64", "x86_64", True)]
    assert [p.nevra for p in res.erased] == ["oldname-1-1.x86_64"]


def test_conflicts_refuse() -> None:
    installed = [inst("a 1-1"), inst("b 1-1", conflicts=("a >= 2",))]
    res = Resolver(installed, [cand("a 2-1")], arch="x86_64").resolve({"a": None})
    assert res.changes == [] and "conflicts" in res.failures["a"]
    installed = [inst("a 1-1"), inst("b 1-1")]
    res = Resolver(installed, [cand("a 2-1", conflicts=("b < 2",))],
                   arch="x86_64").resolve({"a": None})
    assert "conflicts with b-1-1.x86_64" in res.failures["a"]


def test_one_failure_does_not_sink_the_others() -> None:
    installed = [inst("a 1-1"), inst("b 1-1")]
    cands = [cand("a 2-1", requires=("missing",)), cand("b 2-1")]
    res = Resolver(installed, cands, arch="x86_64").resolve(None)
    assert [c.new.nevra for c in res.changes] == ["b-2-1.x86_64"]
    assert list(res.failures) == ["a"]


def test_series_and_helpers() -> None:
    r = Resolver([inst("libcrypto 1-1", source="openssl-1-1.src.rpm")],
                 [cand("libcrypto3 3-1", source="openssl-3-1.src.rpm")], arch="x86_64")
    assert r.series("libcrypto") == ["libcrypto3"]
    assert source_name("openssl-3.0.7-27.el9.src.rpm") == "openssl"
    assert source_name("") == ""
    assert compare_floor("1:3.0.7-28.el9", "3.0.7-28.el9") == 0
    assert compare_floor("1:3.0.7-27.el9", "3.0.7-28.el9") < 0
    assert compare_floor("1:3.0.7-27.el9", "0:3.0.7-28.el9") > 0
    assert compare_floor("3.0.7-28", "3.0.7") == 0


# -- the oracle: dnf --installroot on packages built with rpmbuild ---------------------

ORACLE_TOOLS = ("rpm", "rpmbuild", "createrepo_c", "dnf")


def _spec(name: str, evr: str, *lines: str) -> str:
    """A package without files; a line ``file PATH`` gives it an (empty) file."""
    e, v, r = parse_evr(evr)
    head = f"Epoch: {e}\n" if e is not None else ""
    files = [line.split(" ", 1)[1] for line in lines if line.startswith("file ")]
    extra = "\n".join(line for line in lines if not line.startswith("file "))
    install = "".join(f"mkdir -p %{{buildroot}}{f.rsplit('/', 1)[0]}\n"
                      f"touch %{{buildroot}}{f}\n" for f in files)
    return (f"Name: {name}\n{head}Version: {v}\nRelease: {r or '1'}\nSummary: t\n"
            f"License: MIT\n{extra}\n%description\nt\n%install\n{install}"
            f"%files\n" + "".join(f"{f}\n" for f in files))


# (name, evr, spec lines, where): where is "root" (installed), "base" or "extra"
ORACLE_PACKAGES = [
    ("plain", "1.0-1", (), "root"), ("plain", "1.1-1", (), "base"),
    ("plain", "1.2-1", (), "base"), ("plain", "0.9-1", (), "base"),
    ("libp", "1:1.0-1", (), "root"), ("tool", "1.0-1", ("Requires: libp = 1:1.0-1",), "root"),
    ("libp", "1:1.1-1", (), "base"), ("tool", "1.1-1", ("Requires: libp = 1:1.1-1",), "base"),
    ("app", "1-1", (), "root"), ("app", "2-1", ("Requires: libnew >= 1",), "base"),
    ("libnew", "1-1", (), "base"), ("libnew", "0.5-1", (), "base"),
    ("oldname", "1-1", (), "root"),
    ("newname", "2-1", ("Obsoletes: oldname < 2", "Provides: oldname = 2-1"), "base"),
    ("prio", "1-1", (), "root"), ("prio", "2-1", (), "base"), ("prio", "3-1", (), "extra"),
    ("steady", "1-1", (), "root"), ("steady", "1-1", (), "base"),
    ("fapp", "1-1", (), "root"), ("fapp", "2-1", ("Requires: /usr/libexec/sut/helper",), "base"),
    ("helpers", "1-1", ("file /usr/libexec/sut/helper",), "base"),
    ("rapp", "1-1", (), "root"), ("richb", "1-1", (), "root"),
    ("rapp", "2-1", ("Requires: (richb >= 2 or richc)",), "base"),
    ("richb", "2-1", (), "base"), ("richc", "1-1", (), "base"),
    ("capp", "1-1", (), "root"), ("cblock", "1-1", ("Conflicts: capp >= 2",), "root"),
    ("capp", "2-1", (), "base"),
    ("blib", "1-1", (), "root"), ("buser", "1-1", ("Requires: blib = 1-1",), "root"),
    ("blib", "2-1", (), "base"),
    ("randapp", "1-1", (), "root"),
    ("randapp", "2-1", ("Requires: (richd and (riche >= 1 if richb))",), "base"),
    ("richd", "1-1", (), "base"), ("riche", "1-1", (), "base"),
    ("ml", "1-1", (), "root"), ("ml", "1-1", ("arch i686",), "root"),
    ("ml", "2-1", (), "base"), ("ml", "2-1", ("arch i686",), "base"),
]

QF = ("@@%{NAME}\\t%{EPOCH}\\t%{VERSION}\\t%{RELEASE}\\t%{ARCH}\\t%{SOURCERPM}\\n"
      "[P\\t%{PROVIDENAME}\\t%{PROVIDEFLAGS}\\t%{PROVIDEVERSION}\\n]"
      "[R\\t%{REQUIRENAME}\\t%{REQUIREFLAGS}\\t%{REQUIREVERSION}\\n]"
      "[O\\t%{OBSOLETENAME}\\t%{OBSOLETEFLAGS}\\t%{OBSOLETEVERSION}\\n]"
      "[C\\t%{CONFLICTNAME}\\t%{CONFLICTFLAGS}\\t%{CONFLICTVERSION}\\n]"
      "[F\\t%{FILENAMES}\\n]")


def _query(args: list[str]) -> list[dict[str, object]]:
    """Packages as rpm's query format gives them (a header each)."""
    text = subprocess.run(["rpm", *args, "--qf", QF], check=True, capture_output=True,
                          text=True).stdout
    out: list[dict[str, object]] = []
    for block in text.split("@@")[1:]:
        lines = block.splitlines()
        name, epoch, version, release, arch, source = lines[0].split("\t")
        deps: dict[str, list[Dep]] = {"P": [], "R": [], "O": [], "C": []}
        files: list[str] = []
        for line in lines[1:]:
            kind, *rest = line.split("\t")
            if kind == "F":
                files.append(rest[0])
            elif kind in deps:
                deps[kind].append(Dep(rest[0], int(rest[1]), rest[2]))
        out.append({"name": name, "epoch": None if epoch == "(none)" else int(epoch),
                    "version": version, "release": release, "arch": arch,
                    "provides": tuple(deps["P"]), "requires": tuple(deps["R"]),
                    "obsoletes": tuple(deps["O"]), "conflicts": tuple(deps["C"]),
                    "files": tuple(files), "sourcerpm": "" if source == "(none)" else source})
    return out


@dataclass
class DnfWorld:
    top: Path
    root: Path
    home: Path
    installed: list[PackageInfo]
    candidates: list[RepoPackage]


@pytest.fixture(scope="module")
def dnf_world(tmp_path_factory: pytest.TempPathFactory) -> DnfWorld:
    missing = [t for t in ORACLE_TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)}")
    top = tmp_path_factory.mktemp("dnf-oracle")
    built: dict[str, list[Path]] = {"root": [], "base": [], "extra": []}
    for name, evr, lines, where in ORACLE_PACKAGES:
        arch = "i686" if "arch i686" in lines else None
        lines = tuple(line for line in lines if line != "arch i686")
        built[where] += build_rpm(_spec(name, evr, *lines), top / f"rpms-{where}",
                                  payload="gzip", arch=arch)
    for repo in ("base", "extra"):
        subprocess.run(["createrepo_c", "-q", str(top / f"rpms-{repo}")], check=True)
    root = top / "root"
    root.mkdir()
    rpm_root(root, "--initdb")
    rpm_root(root, "-i", *map(str, built["root"]))
    home = top / "home"
    home.mkdir()
    (home / ".rpmmacros").write_text("%_dbpath /var/lib/rpm\n")
    repos = root / "etc/yum.repos.d"
    repos.mkdir(parents=True)
    priorities = {"base": 10, "extra": 50}
    (repos / "sut.repo").write_text("".join(
        f"[sut-{r}]\nname={r}\nbaseurl=file://{top}/rpms-{r}\ngpgcheck=0\nenabled=1\n"
        f"priority={p}\n\n" for r, p in priorities.items()))
    installed = [PackageInfo(**d) for d in _query(  # type: ignore[arg-type]
        ["--root", str(root), *RPM_DB, "-qa"])]
    candidates: list[RepoPackage] = []
    for order, repo in enumerate(("base", "extra")):
        paths = built[repo]
        for path, d in zip(paths, _query(["-qp", *map(str, paths)]), strict=True):
            candidates.append(RepoPackage(
                **d, location=path.name, base_url=f"file://{top}/rpms-{repo}",  # type: ignore[arg-type]
                checksum=hashlib.sha256(path.read_bytes()).hexdigest(),
                size=path.stat().st_size, repo_id=f"sut-{repo}", repo_order=order,
                priority=priorities[repo]))
    return DnfWorld(top, root, home, installed, candidates)


def _nevras(root: Path) -> set[str]:
    out = rpm_root(root, "-qa", "--qf", "%{NAME}-%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}"
                                        ".%{ARCH}\\n").stdout
    return set(out.split())


def _dnf(world: DnfWorld, tmp: Path, *args: str, best: bool = False
         ) -> tuple[set[str], set[str]] | None:
    """What ``dnf upgrade ARGS`` installs and removes in a copy of the root (``None``: dnf
    refused)."""
    root = tmp / "root"
    shutil.copytree(world.root, root, symlinks=True)
    before = _nevras(root)
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(world.home), "LC_ALL": "C"}
    proc = subprocess.run(["dnf", "-y", "-q", f"--installroot={root}", "--releasever=9",
                           f"--setopt=reposdir={root}/etc/yum.repos.d",
                           f"--setopt=cachedir={tmp}/cache", "--setopt=install_weak_deps=False",
                           f"--setopt=best={best}", "upgrade", *args], env=env,
                          capture_output=True)
    if proc.returncode:
        return None
    after = _nevras(root)
    return after - before, before - after


def _ours(world: DnfWorld, targets: dict[str, str | None] | None
          ) -> tuple[tuple[set[str], set[str]], dict[str, str]]:
    res = Resolver(world.installed, world.candidates, arch="x86_64").resolve(targets)
    added = {c.new.nevra for c in res.changes}
    removed = {c.old.nevra for c in res.changes if c.old} | {p.nevra for p in res.erased}
    return (added, removed), res.failures


@pytest.mark.parametrize("targets", [
    ["plain"], ["libp"], ["app"], ["oldname"], ["prio"], ["steady", "plain"], ["fapp"],
    ["rapp"], ["randapp"], ["ml"], None,
], ids=["plain", "exact-pair", "new-dependency", "obsoletes", "priority", "up-to-date",
        "file-dependency", "rich-dependency", "rich-and-if", "multilib", "update-all"])
def test_against_dnf(dnf_world: DnfWorld, tmp_path: Path, targets: list[str] | None) -> None:
    want = _dnf(dnf_world, tmp_path, *(targets or []))
    got, failures = _ours(dnf_world, None if targets is None else dict.fromkeys(targets))
    assert want is not None and got == want
    assert want[0]  # every case changes something
    # update-all leaves out what cannot be upgraded, as dnf (best=False) does
    assert sorted(failures) == ([] if targets else ["blib", "capp"])


@pytest.mark.parametrize("target", ["capp", "blib"], ids=["conflict", "broken-dependent"])
def test_refusals_against_dnf_best(dnf_world: DnfWorld, tmp_path: Path, target: str) -> None:
    # dnf with best=True must install the newest or fail; so must we
    assert _dnf(dnf_world, tmp_path, target, best=True) is None
    got, failures = _ours(dnf_world, {target: None})
    assert got == (set(), set()) and list(failures) == [target]
