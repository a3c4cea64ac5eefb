"""The dpkg resolver: dpkg's relation rules on hand-written status and Packages texts, and
apt-get itself as the oracle (same status, same Packages, ``apt-get -s``).

The helpers here (``inst``, ``cand``, ``apt_simulate``, ``debian_index``) are also used by
tests/test_plan.py.
"""

from __future__ import annotations

import datetime
import lzma
import os
import random
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from suture.distro.dpkg.control import (
    InstalledPackage,
    Relation,
    format_paragraph,
    parse_relations,
    parse_status,
)
from suture.distro.dpkg.repo import PackageEntry, parse_packages_index
from suture.distro.dpkg.resolve import Resolution, Resolver, resolve
from suture.distro.dpkg.version import compare_versions

# ---------------------------------------------------------------- helpers

FAKE_SHA = "0" * 64
DEBIAN = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
CACHE = Path(os.environ.get("SUTURE_TEST_CACHE", Path.home() / ".cache" / "suture-tests"))


def _fields(fields: Mapping[str, str]) -> str:
    return "".join(f"{name.replace('_', '-').title()}: {value}\n"
                   for name, value in fields.items())


def inst(name: str, version: str, arch: str = "amd64", *, status: str = "install ok installed",
         **fields: str) -> str:
    """One dpkg status stanza; fields as keywords (``pre_depends="..."`` is Pre-Depends)."""
    return (f"Package: {name}\nStatus: {status}\nPriority: optional\nSection: misc\n"
            f"Installed-Size: 1\nMaintainer: T <t@example.org>\nArchitecture: {arch}\n"
            f"Version: {version}\n" + _fields(fields) + "Description: test\n\n")


def cand(name: str, version: str, arch: str = "amd64", **fields: str) -> str:
    """One Packages stanza (a made-up Filename and SHA256)."""
    safe = version.replace(":", "%3a")
    return (f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\n"
            f"Maintainer: T <t@example.org>\nInstalled-Size: 1\nPriority: optional\n"
            f"Section: misc\n" + _fields(fields)
            + f"Filename: pool/main/{name[0]}/{name}/{name}_{safe}_{arch}.deb\n"
              f"Size: 100\nSHA256: {FAKE_SHA}\nDescription: test\n\n")


def status_of(*stanzas: str) -> list[InstalledPackage]:
    return parse_status("".join(stanzas))


def index_of(*stanzas: str, base_uri: str = "http://deb.example/debian") -> list[PackageEntry]:
    return parse_packages_index("".join(stanzas), base_uri=base_uri)


def changes_of(res: Resolution, native: str = "amd64") -> dict[str, str]:
    """``{name: version}`` (``name:arch`` for a foreign architecture), as apt prints them."""
    return {(c.name if c.architecture in (native, "all") else f"{c.name}:{c.architecture}"):
            c.to_version for c in res.changes}


@dataclass(frozen=True)
class AptResult:
    """What ``apt-get -s`` said. ``installs``: ``{name (name:arch if foreign): version}``;
    ``removes``; ``kept_back`` (held back by an upgrade); ``ok``: apt found a solution."""

    installs: dict[str, str]
    removes: tuple[str, ...]
    kept_back: tuple[str, ...]
    ok: bool
    output: str


_INST = re.compile(r"^Inst (\S+) (?:\[(\S+)\] )?\((\S+) ")
_REMV = re.compile(r"^Remv (\S+)")


def apt_simulate(tmp: Path, status: str, indexes: Mapping[str, str], args: Sequence[str], *,
                 architecture: str = "amd64", foreign: Sequence[str] = (),
                 host: str = "deb.example") -> AptResult:
    """``apt-get -s ARGS`` with ``status`` as dpkg's database and ``indexes`` as the only lists.

    ``indexes``: ``{"suite/arch": Packages text}`` (``"arch"`` alone: suite ``bookworm``).
    Every apt directory and the configuration live under ``tmp`` (``APT_CONFIG``; the host's
    apt.conf.d is not read). Recommends are off: the resolver follows Depends/Pre-Depends.
    """
    if shutil.which("apt-get") is None:
        pytest.skip("needs apt-get")
    tmp.mkdir(parents=True, exist_ok=True)
    lists = tmp / "lists"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    (tmp / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (tmp / "no-parts").mkdir(exist_ok=True)
    (tmp / "status").write_text(status)
    (tmp / "extended_states").write_text("")
    arches = [architecture, *foreign]
    suites: dict[str, list[str]] = {}
    for where, text in indexes.items():
        suite, _, arch = where.rpartition("/")
        suite = suite or "bookworm"
        suites.setdefault(suite, []).append(arch)
        (lists / f"{host}_debian_dists_{suite}_main_binary-{arch}_Packages").write_text(text)
    sources = []
    for suite, suite_arches in sorted(suites.items()):
        (lists / f"{host}_debian_dists_{suite}_InRelease").write_text(
            f"Origin: Test\nLabel: Test\nSuite: {suite}\nCodename: {suite}\n"
            f"Date: Sat, 01 Jan 2022 00:00:00 UTC\n"
            f"Architectures: {' '.join(sorted(set(arches)))}\nComponents: main\n")
        sources.append(f"deb [trusted=yes arch={','.join(sorted(set(suite_arches)))}] "
                       f"http://{host}/debian {suite} main\n")
    (tmp / "sources.list").write_text("".join(sources))
    arch_list = " ".join(f'"{a}";' for a in arches)
    (tmp / "apt.conf").write_text(f"""
Dir::Etc::main "/dev/null";
Dir::Etc::parts "{tmp}/no-parts";
Dir::Etc::SourceList "{tmp}/sources.list";
Dir::Etc::SourceParts "{tmp}/no-parts";
Dir::Etc::Preferences "/dev/null";
Dir::Etc::PreferencesParts "{tmp}/no-parts";
Dir::State "{tmp}";
Dir::State::status "{tmp}/status";
Dir::State::Lists "{lists}";
Dir::State::extended_states "{tmp}/extended_states";
Dir::Cache "{tmp}/cache";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Dir::Log "{tmp}";
Debug::NoLocking "1";
APT::Architecture "{architecture}";
APT::Architectures {{ {arch_list} }};
APT::Install-Recommends "0";
APT::Install-Suggests "0";
Acquire::AllowInsecureRepositories "1";
""")
    env = {**os.environ, "APT_CONFIG": str(tmp / "apt.conf"), "LC_ALL": "C.UTF-8"}
    proc = subprocess.run(["apt-get", "-s", "-q", *args], env=env, capture_output=True,
                          text=True, check=False, timeout=600)
    installs: dict[str, str] = {}
    removes: list[str] = []
    kept: list[str] = []
    lines = proc.stdout.splitlines()
    for i, line in enumerate(lines):
        if m := _INST.match(line):
            installs[m[1]] = m[3]
        elif m := _REMV.match(line):
            removes.append(m[1])
        elif line.startswith("The following packages have been kept back"):
            for more in lines[i + 1:]:
                if not more.startswith("  "):
                    break
                kept.extend(more.split())
    return AptResult(installs, tuple(removes), tuple(sorted(kept)), proc.returncode == 0,
                     proc.stdout + proc.stderr)


def debian_index(base: str, suite: str, arch: str = "amd64") -> str:
    """The main component's Packages of a suite of the real archive, cached for the day.

    Plain download and xz decompression (checking it against the Release is the
    repository code's job, tested elsewhere).
    """
    day = datetime.date.today().isoformat()
    path = CACHE / "indexes" / f"{suite}-{arch}-{day}.Packages"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f"{suite}-{arch}-*.Packages"):
            stale.unlink()
        url = f"{base}/dists/{suite}/main/binary-{arch}/Packages.xz"
        resp = requests.get(url, timeout=(15, 120))
        resp.raise_for_status()
        tmp = path.with_suffix(".partial")
        tmp.write_bytes(lzma.decompress(resp.content))
        tmp.rename(path)
    return path.read_text(encoding="utf-8", errors="surrogateescape")


def _resolve(status: str, packages: str, targets: Mapping[str, str | None] | None,
             **kw: object) -> Resolution:
    return resolve(status_of(status), index_of(packages), targets, architecture="amd64",
                   **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- candidates and targets


def test_update_all_takes_the_newest_candidate_of_any_suite():
    status = inst("a", "1.0-1") + inst("b", "1.0-1") + inst("c", "2.0-1")
    old = index_of(cand("a", "1.0-2") + cand("b", "1.0-1") + cand("c", "2.0-1"),
                   base_uri="http://x/debian")
    new = index_of(cand("a", "1.0-1+deb12u1") + cand("a", "1.0-3"), base_uri="http://y/sec")
    res = resolve(status_of(status), old + new, None, architecture="amd64")
    assert changes_of(res) == {"a": "1.0-3"}
    (change,) = res.changes
    assert change.from_version == "1.0-1" and change.requested
    assert change.entry.base_uri == "http://y/sec"
    assert res.up_to_date == () and res.failures == ()


def test_first_entry_wins_for_the_same_version():
    status = inst("a", "1")
    first = index_of(cand("a", "2"), base_uri="http://first")
    second = index_of(cand("a", "2"), base_uri="http://second")
    res = resolve(status_of(status), first + second, None, architecture="amd64")
    assert [c.entry.base_uri for c in res.changes] == ["http://first"]


def test_never_downgrades():
    status = inst("a", "2.0-1") + inst("b", "1:1.0") + inst("c", "1.0~rc1")
    res = _resolve(status, cand("a", "1.9-9") + cand("b", "9.0") + cand("c", "1.0~beta"), None)
    assert res.changes == ()
    res = _resolve(status, cand("a", "1.9-9"), {"a": None})
    assert res.changes == () and res.up_to_date == ("a",)


def test_targets_not_installed_are_not_added():
    status = inst("a", "1") + inst("gone", "1", status="deinstall ok config-files")
    packages = cand("a", "2") + cand("b", "1") + cand("gone", "2")
    res = _resolve(status, packages, {"b": None, "gone": None, "zzz": None})
    assert res.changes == ()
    assert res.not_installed == ("b", "gone", "zzz")
    assert changes_of(_resolve(status, packages, None)) == {"a": "2"}


def test_minimum_version():
    status = inst("a", "1.0-1") + inst("b", "1.0-1") + inst("c", "1.0-1")
    packages = cand("a", "1.0-2") + cand("a", "1.0-3") + cand("b", "1.0-2") + cand("c", "1.0-2")
    res = _resolve(status, packages, {"a": "1.0-2", "b": "1.0-5", "c": "1.0-1"})
    assert changes_of(res) == {"a": "1.0-3"}  # the newest, not the minimum
    assert [(f.package, f.kind, f.message) for f in res.failures] == [
        ("b", "unavailable", "fixed version 1.0-5 not available, newest candidate is 1.0-2")]
    assert res.up_to_date == ("c",)


def test_candidates_of_other_architectures_are_ignored():
    status = inst("a", "1") + inst("b", "1", "all")
    packages = cand("a", "2", "arm64") + cand("a", "3", "i386") + cand("b", "2", "all")
    assert changes_of(_resolve(status, packages, None)) == {"b": "2"}
    res = resolve(status_of(status), index_of(packages), None, architecture="amd64",
                  foreign_architectures=["i386"])
    assert changes_of(res) == {"b": "2"}  # a:i386 is another package than a:amd64


def test_architecture_all_and_native_are_one_package():
    status = inst("a", "1", "all") + inst("b", "1", "amd64")
    res = _resolve(status, cand("a", "2", "amd64") + cand("b", "2", "all"), None)
    assert {(c.name, c.architecture, c.from_version) for c in res.changes} == {
        ("a", "amd64", "1"), ("b", "all", "1")}


def test_candidate_with_unparsable_relations_or_version_is_not_chosen():
    status = inst("a", "1") + inst("b", "1")
    res = _resolve(status, cand("a", "3", depends="b (>> )") + cand("a", "2")
                   + cand("b", "2 2") + cand("b", "1.5"), None)
    assert changes_of(res) == {"a": "2", "b": "1.5"}


# ---------------------------------------------------------------- dependencies


def test_versioned_depends_upgrades_and_adds():
    status = (inst("libc6", "2.36-9", multi_arch="same") + inst("zlib1g", "1:1.2-1")
              + inst("app", "1.0", depends="libc6 (>= 2.36)"))
    packages = (cand("libc6", "2.36-10", multi_arch="same") + cand("libc6", "2.36-11")
                + cand("zlib1g", "1:1.2-2")
                + cand("app", "1.1", pre_depends="libc6 (>= 2.36-10)", depends="libnew1")
                + cand("libnew1", "1.0") + cand("unrelated", "1.0"))
    res = _resolve(status, packages, {"app": None})
    assert changes_of(res) == {"app": "1.1", "libc6": "2.36-11", "libnew1": "1.0"}
    by_name = {c.name: c for c in res.changes}
    assert by_name["app"].requested and not by_name["libc6"].requested
    assert by_name["libnew1"].from_version is None
    assert by_name["libc6"].needed_by == "app 1.1 (Pre-Depends: libc6 (>= 2.36-10))"
    assert by_name["libnew1"].needed_by == "app 1.1 (Depends: libnew1)"


def test_dependency_goes_to_the_highest_candidate_that_meets_it():
    status = inst("a", "1") + inst("b", "1")
    packages = cand("a", "2", depends="b (= 2)") + cand("b", "2") + cand("b", "3")
    assert changes_of(_resolve(status, packages, {"a": None})) == {"a": "2", "b": "2"}
    # Both asked for: b's newest breaks a's pin. Each target on its own, in name order:
    # a goes to 2 with b at 2; b cannot then go to 3.
    res = _resolve(status, packages, {"a": None, "b": None})
    assert changes_of(res) == {"a": "2", "b": "2"}
    assert [(c.name, c.requested) for c in res.changes] == [("a", True), ("b", False)]
    assert [f.package for f in res.failures] == ["b"]
    assert res.failures[0].message == ("a 2 needs 'b (= 2)' (Depends), which no available "
                                       "package meets (b installed 1, going to 3)")
    assert changes_of(_resolve(status, packages, {"b": None})) == {"b": "3"}


def test_unsatisfiable_dependency_is_a_failure_naming_it():
    status = inst("app", "1") + inst("libc6", "2.36-9")
    res = _resolve(status, cand("app", "2", depends="libc6 (>= 2.37)") + cand("libc6", "2.36-10"),
                   {"app": None})
    assert res.changes == ()
    (failure,) = res.failures
    assert failure.package == "app" and failure.kind == "unsatisfiable"
    assert failure.message == ("app 2 needs 'libc6 (>= 2.37)' (Depends), which no available "
                               "package meets (libc6 installed 2.36-9, newest candidate 2.36-10)")


def test_alternatives():
    status = inst("app", "1") + inst("libold", "1")
    # An alternative already met: nothing else moves.
    packages = (cand("app", "2", depends="libnew | libold") + cand("libnew", "1")
                + cand("libold", "2"))
    assert changes_of(_resolve(status, packages, {"app": None})) == {"app": "2"}
    # An installed alternative that can be upgraded is preferred to a new package.
    packages = (cand("app", "2", depends="libnew | libold (>= 2)") + cand("libnew", "1")
                + cand("libold", "2"))
    assert changes_of(_resolve(status, packages, {"app": None})) == {"app": "2", "libold": "2"}
    # Otherwise the first alternative a candidate meets is added.
    packages = (cand("app", "2", depends="libnone | libnew (>= 2) | libnew2 | libnew")
                + cand("libnew", "1") + cand("libnew2", "1"))
    assert changes_of(_resolve(status, packages, {"app": None})) == {"app": "2", "libnew2": "1"}


def test_virtual_packages():
    mta = cand("exim4", "4.96", provides="mail-transport-agent")
    packages = cand("mailer", "2", depends="mail-transport-agent") + mta
    # Met by an installed provider.
    status = inst("mailer", "1") + inst("postfix", "3.7", provides="mail-transport-agent")
    assert changes_of(_resolve(status, packages, {"mailer": None})) == {"mailer": "2"}
    # Otherwise a provider is added (the only one, or the first by name).
    status = inst("mailer", "1")
    assert changes_of(_resolve(status, packages, {"mailer": None})) == {
        "mailer": "2", "exim4": "4.96"}
    more = packages + cand("dma", "1", provides="mail-transport-agent")
    assert changes_of(_resolve(status, more, {"mailer": None})) == {"mailer": "2", "dma": "1"}
    # A real package of that name comes before providers.
    more = packages + cand("mail-transport-agent", "1")
    assert changes_of(_resolve(status, more, {"mailer": None})) == {
        "mailer": "2", "mail-transport-agent": "1"}


def test_versioned_provides():
    status = inst("app", "1") + inst("impl", "1", provides="libx (= 1)")
    packages = (cand("app", "2", depends="libx (>= 2)") + cand("impl", "2", provides="libx (= 2)")
                + cand("other", "1", provides="libx"))  # unversioned: cannot meet (>= 2)
    assert changes_of(_resolve(status, packages, {"app": None})) == {"app": "2", "impl": "2"}


def test_source_pinned_pair_moves_together():
    # libssl3/openssl: one source, binaries pinned with (= ${binary:Version}).
    status = (inst("libc6", "2.36-9", multi_arch="same")
              + inst("libssl3", "3.0.11-1", multi_arch="same", source="openssl")
              + inst("openssl", "3.0.11-1", depends="libssl3 (= 3.0.11-1), libc6 (>= 2.34)"))
    packages = (cand("libssl3", "3.0.13-1", multi_arch="same", source="openssl",
                     depends="libc6 (>= 2.36-10)")
                + cand("openssl", "3.0.13-1", source="openssl",
                       depends="libssl3 (= 3.0.13-1), libc6 (>= 2.34)")
                + cand("libc6", "2.36-10", multi_arch="same"))
    expected = {"libssl3": "3.0.13-1", "openssl": "3.0.13-1", "libc6": "2.36-10"}
    for target in ("libssl3", "openssl"):  # forward (openssl pulls libssl3) and reverse
        res = _resolve(status, packages, {target: None})
        assert changes_of(res) == expected
        assert [c.name for c in res.changes if c.requested] == [target]
    res = _resolve(status, packages, {"libssl3": None})
    openssl = next(c for c in res.changes if c.name == "openssl")
    assert openssl.needed_by == ("openssl 3.0.11-1 no longer has its Depends "
                                 "'libssl3 (= 3.0.11-1)' met")


def test_libc6_and_libc_bin_upper_bound():
    status = (inst("libc6", "2.36-9", multi_arch="same")
              + inst("libc-bin", "2.36-9", depends="libc6 (>> 2.36), libc6 (<< 2.37)"))
    packages = (cand("libc6", "2.37-1", multi_arch="same")
                + cand("libc-bin", "2.37-1", depends="libc6 (>> 2.37), libc6 (<< 2.38)"))
    assert changes_of(_resolve(status, packages, {"libc6": None})) == {
        "libc6": "2.37-1", "libc-bin": "2.37-1"}
    # No libc-bin that accepts the new libc6: libc6 cannot be updated.
    res = _resolve(status, cand("libc6", "2.37-1"), {"libc6": None})
    assert res.changes == ()
    assert res.failures[0].message.startswith("libc-bin 2.36-9 needs 'libc6 (<< 2.37)'")


def test_update_all_leaves_every_dependency_met():
    status = (inst("a", "1", depends="b (= 1)") + inst("b", "1", depends="c (<< 2)")
              + inst("c", "1") + inst("d", "1", depends="a (>= 1)"))
    packages = (cand("a", "2", depends="b (= 2)") + cand("b", "2", depends="c (<< 3)")
                + cand("c", "2") + cand("d", "1.1", depends="a (>= 2), e") + cand("e", "1"))
    res = _resolve(status, packages, None)
    assert changes_of(res) == {"a": "2", "b": "2", "c": "2", "d": "1.1", "e": "1"}
    assert {c.name for c in res.changes if not c.requested} == {"e"}


# ---------------------------------------------------------------- breaks and conflicts


def test_breaks_upgrades_the_broken_package():
    status = inst("libgnutls30", "3.7-1") + inst("wget", "1.21-1")
    packages = (cand("libgnutls30", "3.7-2", breaks="wget (<< 1.21-2)") + cand("wget", "1.21-2")
                + cand("wget", "1.21-3"))
    res = _resolve(status, packages, {"libgnutls30": None})
    assert changes_of(res) == {"libgnutls30": "3.7-2", "wget": "1.21-3"}


def test_installed_package_that_breaks_the_new_version_is_upgraded():
    status = inst("libfoo", "1.0") + inst("foo-tools", "1.0", breaks="libfoo (>= 2)")
    packages = cand("libfoo", "2.0") + cand("foo-tools", "1.1")
    assert changes_of(_resolve(status, packages, {"libfoo": None})) == {
        "libfoo": "2.0", "foo-tools": "1.1"}
    res = _resolve(status, cand("libfoo", "2.0") + cand("foo-tools", "1.1", breaks="libfoo"),
                   {"libfoo": None})
    assert res.changes == ()
    assert res.failures[0].message == (
        "foo-tools 1.0 breaks libfoo 2.0 (Breaks: libfoo (>= 2)), and no newer version of "
        "libfoo or foo-tools resolves it")


def test_conflicts_nothing_resolves_is_a_failure():
    status = inst("a", "1") + inst("b", "1")
    res = _resolve(status, cand("a", "2", conflicts="b"), {"a": None})
    assert res.changes == ()
    assert res.failures[0].message == ("a 2 conflicts with b 1 (Conflicts: b), and no newer "
                                       "version of b or a resolves it")


def test_conflicts_on_a_virtual_package_and_self_provides():
    status = inst("a", "1") + inst("b", "1", provides="logger")
    res = _resolve(status, cand("a", "2", provides="logger", conflicts="logger"), {"a": None})
    assert [f.package for f in res.failures] == ["a"]
    status = inst("a", "1")  # conflicting with what it provides itself is fine
    res = _resolve(status, cand("a", "2", provides="logger", conflicts="logger"), {"a": None})
    assert changes_of(res) == {"a": "2"}


def test_breaks_on_a_new_dependency():
    status = inst("app", "1") + inst("old", "1")
    packages = cand("app", "2", depends="newlib") + cand("newlib", "1", breaks="old (<< 2)")
    res = _resolve(status, packages, {"app": None})
    assert res.changes == () and "newlib 1 breaks old 1" in res.failures[0].message
    res = _resolve(status, packages + cand("old", "2"), {"app": None})
    assert changes_of(res) == {"app": "2", "newlib": "1", "old": "2"}


# ---------------------------------------------------------------- holds


def test_held_packages_are_never_touched():
    hold = "hold ok installed"
    status = (inst("libc6", "2.36-9", status=hold) + inst("libssl3", "3.0.11-1")
              + inst("openssl", "3.0.11-1", depends="libssl3 (= 3.0.11-1)") + inst("zlib", "1"))
    packages = (cand("libc6", "2.36-10") + cand("libssl3", "3.0.13-1", depends="libc6 (>= 2.36-10)")
                + cand("openssl", "3.0.13-1", depends="libssl3 (= 3.0.13-1)") + cand("zlib", "2"))
    res = _resolve(status, packages, None)
    assert changes_of(res) == {"zlib": "2"}
    assert res.held == ("libc6",)
    assert {f.package: f.kind for f in res.failures} == {"libssl3": "held", "openssl": "held"}
    assert res.failures[0].message == ("libssl3 3.0.13-1 needs 'libc6 (>= 2.36-10)' (Depends), "
                                       "but libc6 2.36-9 is held")
    res = _resolve(status, packages, {"libc6": "2.36-10"})
    assert res.changes == () and res.held == ("libc6",)


def test_held_package_in_the_way_of_a_pin_or_a_break():
    hold = "hold ok installed"
    status = inst("libssl3", "3.0.11-1") + inst("openssl", "3.0.11-1", status=hold,
                                                 depends="libssl3 (= 3.0.11-1)")
    packages = (cand("libssl3", "3.0.13-1")
                + cand("openssl", "3.0.13-1", depends="libssl3 (= 3.0.13-1)"))
    res = _resolve(status, packages, {"libssl3": None})
    assert res.changes == ()
    assert res.failures[0].message == ("openssl 3.0.11-1 is held and its Depends "
                                       "'libssl3 (= 3.0.11-1)' would no longer be met")
    status = inst("a", "1") + inst("b", "1", status=hold)
    res = _resolve(status, cand("a", "2", breaks="b (<< 2)") + cand("b", "2"), {"a": None})
    assert res.failures[0].kind == "held"
    assert res.failures[0].message.endswith("and b 1 is held")


# ---------------------------------------------------------------- same source (apt 2.x)


SRC_STATUS = (inst("foo", "1.0-1") + inst("foo-doc", "1.0-1", "all", source="foo")
              + inst("libfoo1", "1.0-1", source="foo") + inst("foo-extra", "0.9-1", source="foo")
              + inst("foo-held", "1.0-1", source="foo", status="hold ok installed")
              + inst("foo-broken", "1.0-1", source="foo"))
SRC_PACKAGES = (cand("foo", "1.0-2") + cand("foo-doc", "1.0-2+b1", "all", source="foo (1.0-2)")
                + cand("libfoo1", "1.0-3", source="foo") + cand("foo-extra", "1.0-2", source="foo")
                + cand("foo-held", "1.0-2", source="foo")
                + cand("foo-broken", "1.0-2", source="foo", depends="missing"))


def test_installed_binaries_of_the_same_source_version_come_along():
    res = _resolve(SRC_STATUS, SRC_PACKAGES, {"foo": None})
    # libfoo1's newest is another source version; held and unresolvable ones stay.
    assert changes_of(res) == {"foo": "1.0-2", "foo-doc": "1.0-2+b1", "foo-extra": "1.0-2"}
    assert res.ok
    doc = next(c for c in res.changes if c.name == "foo-doc")
    assert not doc.requested and doc.needed_by == "same source as foo 1.0-2"
    res = _resolve(SRC_STATUS, SRC_PACKAGES, {"foo": None}, by_source=False)
    assert changes_of(res) == {"foo": "1.0-2"}


def test_same_source_follows_dependencies_too():
    status = (inst("app", "1") + inst("libc6", "2.36-9", source="glibc")
              + inst("libc-bin", "2.36-9", source="glibc"))
    packages = (cand("app", "2", depends="libc6 (>= 2.36-10)")
                + cand("libc6", "2.36-10", source="glibc")
                + cand("libc-bin", "2.36-10", source="glibc"))
    assert changes_of(_resolve(status, packages, {"app": None})) == {
        "app": "2", "libc6": "2.36-10", "libc-bin": "2.36-10"}


# ---------------------------------------------------------------- multi-arch


MA_STATUS = (inst("libc6", "2.36-9", multi_arch="same")
             + inst("libc6", "2.36-9", "i386", multi_arch="same")
             + inst("libfoo1", "1.0", "i386", multi_arch="same", depends="libc6 (>= 2.36)")
             + inst("tool", "1.0", multi_arch="foreign"))
MA_AMD64 = cand("libc6", "2.36-10", multi_arch="same") + cand("tool", "1.1", multi_arch="foreign")
MA_I386 = (cand("libc6", "2.36-10", "i386", multi_arch="same")
           + cand("libfoo1", "1.1", "i386", multi_arch="same",
                  depends="libc6 (>= 2.36-10), tool (>= 1.1), libbar1")
           + cand("libbar1", "1", "i386", multi_arch="same")
           + cand("libbar1", "2", "amd64", multi_arch="same")
           + cand("tool", "1.1", "i386", multi_arch="foreign"))


def _ma(targets: Mapping[str, str | None] | None, amd64: str = MA_AMD64,
        i386: str = MA_I386) -> Resolution:
    return resolve(status_of(MA_STATUS), index_of(amd64) + index_of(i386), targets,
                   architecture="amd64", foreign_architectures=["i386"])


def test_multiarch_same_packages_move_in_lockstep():
    assert changes_of(_ma({"libc6:amd64": None})) == {"libc6": "2.36-10", "libc6:i386": "2.36-10"}
    assert changes_of(_ma({"libc6": None})) == {"libc6": "2.36-10", "libc6:i386": "2.36-10"}
    res = _ma({"libc6:amd64": None}, i386="")
    assert res.changes == ()
    assert res.failures[0].message == ("Multi-Arch: same needs libc6:i386 at 2.36-10 like "
                                       "libc6 2.36-10, but no candidate has that version")


def test_foreign_architecture_dependencies():
    # libfoo1:i386 needs libc6:i386 (and so libc6:amd64), libbar1:i386 (not the amd64 one)
    # and tool, Multi-Arch: foreign, met by the native tool.
    expected = {"libfoo1:i386": "1.1", "libc6": "2.36-10", "libc6:i386": "2.36-10",
                "libbar1:i386": "1", "tool": "1.1"}
    assert changes_of(_ma({"libfoo1": None})) == expected
    assert changes_of(_ma(None)) == expected


def test_any_qualifier_needs_multi_arch_allowed():
    status = inst("app", "1") + inst("python3", "3.11.2-1", "i386")
    packages = cand("app", "2", depends="python3:any (>= 3.11)")
    res = resolve(status_of(status), index_of(packages), {"app": None}, architecture="amd64",
                  foreign_architectures=["i386"])
    assert res.failures and res.changes == ()  # python3 is not Multi-Arch: allowed
    status = inst("app", "1") + inst("python3", "3.11.2-1", "i386", multi_arch="allowed")
    res = resolve(status_of(status), index_of(packages), {"app": None}, architecture="amd64",
                  foreign_architectures=["i386"])
    assert changes_of(res) == {"app": "2"}


# ---------------------------------------------------------------- failures, order


def test_one_failing_target_does_not_stop_the_others():
    status = inst("a", "1") + inst("b", "1") + inst("c", "1")
    packages = (cand("a", "2", depends="missing") + cand("b", "2")
                + cand("c", "2", depends="b (>= 2)"))
    res = _resolve(status, packages, None)
    assert changes_of(res) == {"b": "2", "c": "2"}
    assert [f.package for f in res.failures] == ["a"]
    assert res.failures[0].message == ("a 2 needs 'missing' (Depends), which no available "
                                       "package meets")
    assert not res.ok


def test_what_was_broken_before_is_left_alone():
    status = (inst("a", "1") + inst("broken", "1", depends="a, nothing-provides-this")
              + inst("b", "1", breaks="a (<< 9)") + inst("c", "1", conflicts="a"))
    res = _resolve(status, cand("a", "2") + cand("broken", "2", depends="a"), {"a": None})
    assert changes_of(res) == {"a": "2"} and res.ok
    # What a change breaks anew still counts.
    status = inst("a", "1") + inst("c", "1", conflicts="a (>= 2)")
    res = _resolve(status, cand("a", "2"), {"a": None})
    assert changes_of(res) == {} and [f.package for f in res.failures] == ["a"]


def test_result_does_not_depend_on_input_order():
    status = [MA_STATUS]
    entries = index_of(MA_AMD64) + index_of(MA_I386)
    installed = status_of(*status)
    want = resolve(installed, entries, None, architecture="amd64",
                   foreign_architectures=["i386"])
    rng = random.Random(7)
    for _ in range(5):
        rng.shuffle(entries)
        rng.shuffle(installed)
        got = Resolver(installed, entries, architecture="amd64",
                       foreign_architectures=["i386"]).resolve(None)
        assert got == want
    assert [(c.name, c.architecture) for c in want.changes] == sorted(
        (c.name, c.architecture) for c in want.changes)


def test_resolver_queries():
    r = Resolver(status_of(MA_STATUS), index_of(MA_AMD64) + index_of(MA_I386),
                 architecture="amd64", foreign_architectures=["i386"])
    assert r.installed("libc6") == [("amd64", "2.36-9"), ("i386", "2.36-9")]
    assert r.installed("nope") == []
    assert r.newest("libc6") == "2.36-10"
    assert r.newest("libbar1") is None
    assert not r.held("libc6")
    assert Resolver(status_of(inst("a", "1", status="hold ok installed")), [],
                    architecture="amd64").held("a")


# ---------------------------------------------------------------- apt-get as the oracle


@dataclass(frozen=True)
class Scenario:
    name: str
    status: str
    indexes: dict[str, str]
    targets: dict[str, str | None] | None
    apt_args: tuple[str, ...]
    foreign: tuple[str, ...] = ()


_PAIR_STATUS = (inst("libssl3", "3.0.11-1", multi_arch="same", source="openssl",
                     depends="libc6 (>= 2.34)")
                + inst("openssl", "3.0.11-1", depends="libssl3 (= 3.0.11-1), libc6 (>= 2.34)")
                + inst("libc6", "2.36-9", multi_arch="same") + inst("zlib1g", "1:1.2.13-1"))
_PAIR_PACKAGES = (cand("libssl3", "3.0.13-1", multi_arch="same", source="openssl",
                       depends="libc6 (>= 2.36-10)")
                  + cand("openssl", "3.0.13-1", depends="libssl3 (= 3.0.13-1), libc6 (>= 2.34)")
                  + cand("libc6", "2.36-10", multi_arch="same") + cand("zlib1g", "1:1.2.13-2"))
_HOLD_STATUS = (inst("libc6", "2.36-9", status="hold ok installed") + inst("libssl3", "3.0.11-1")
                + inst("openssl", "3.0.11-1", depends="libssl3 (= 3.0.11-1)") + inst("zlib", "1"))
_HOLD_PACKAGES = (cand("libc6", "2.36-10") + cand("libssl3", "3.0.13-1",
                                                   depends="libc6 (>= 2.36-10)")
                  + cand("openssl", "3.0.13-1", depends="libssl3 (= 3.0.13-1)") + cand("zlib", "2"))

SCENARIOS = [
    Scenario("pair-upgrade", _PAIR_STATUS, {"amd64": _PAIR_PACKAGES}, None, ("upgrade",)),
    Scenario("pair-reverse", _PAIR_STATUS, {"amd64": _PAIR_PACKAGES}, {"libssl3": None},
             ("install", "--only-upgrade", "libssl3")),
    Scenario("pair-forward", _PAIR_STATUS, {"amd64": _PAIR_PACKAGES}, {"openssl": None},
             ("install", "--only-upgrade", "openssl")),
    Scenario("new-dependency", inst("libc6", "2.36-9") + inst("app", "1", depends="libc6"),
             {"amd64": cand("libc6", "2.36-10") + cand("app", "2", depends="libc6 (>= 2.36-10), "
                                                      "libnew1 | libnew2") + cand("libnew2", "1")},
             None, ("--with-new-pkgs", "upgrade")),
    Scenario("libc-breaks",
             inst("libc6", "2.36-9", multi_arch="same")
             + inst("libc-bin", "2.36-9", depends="libc6 (>> 2.36), libc6 (<< 2.37)"),
             {"amd64": cand("libc6", "2.36-10", multi_arch="same", breaks="libc-bin (<< 2.36-10)")
              + cand("libc-bin", "2.36-10", depends="libc6 (>> 2.36), libc6 (<< 2.37)")},
             {"libc6": None}, ("install", "--only-upgrade", "libc6")),
    Scenario("old-breaks-new", inst("libfoo", "1.0") + inst("foo-tools", "1.0",
                                                             breaks="libfoo (>= 2)"),
             {"amd64": cand("libfoo", "2.0") + cand("foo-tools", "1.1")}, {"libfoo": None},
             ("install", "--only-upgrade", "libfoo")),
    Scenario("alternative-upgrade", inst("app", "1", depends="libold") + inst("libold", "1"),
             {"amd64": cand("app", "2", depends="libnew | libold (>= 2)") + cand("libold", "2")
              + cand("libnew", "1")}, {"app": None}, ("install", "--only-upgrade", "app")),
    Scenario("virtual-new", inst("mailer", "1"),
             {"amd64": cand("mailer", "2", depends="mail-transport-agent")
              + cand("exim4", "4.96", provides="mail-transport-agent")}, {"mailer": None},
             ("install", "--only-upgrade", "mailer")),
    Scenario("virtual-installed",
             inst("mailer", "1") + inst("postfix", "3.7", provides="mail-transport-agent"),
             {"amd64": cand("mailer", "2", depends="mail-transport-agent")
              + cand("exim4", "4.96", provides="mail-transport-agent")}, {"mailer": None},
             ("install", "--only-upgrade", "mailer")),
    Scenario("versioned-provides", inst("app", "1") + inst("impl", "1", provides="libx (= 1)"),
             {"amd64": cand("app", "2", depends="libx (>= 2)")
              + cand("impl", "2", provides="libx (= 2)")}, None, ("upgrade",)),
    Scenario("multiarch-upgrade", MA_STATUS, {"amd64": MA_AMD64, "i386": MA_I386}, None,
             ("--with-new-pkgs", "upgrade"), ("i386",)),
    Scenario("multiarch-target", MA_STATUS, {"amd64": MA_AMD64, "i386": MA_I386},
             {"libfoo1": None}, ("install", "--only-upgrade", "libfoo1:i386"), ("i386",)),
    Scenario("multiarch-libc6", MA_STATUS, {"amd64": MA_AMD64, "i386": MA_I386},
             {"libc6:amd64": None}, ("install", "--only-upgrade", "libc6:amd64"), ("i386",)),
    Scenario("held-upgrade", _HOLD_STATUS, {"amd64": _HOLD_PACKAGES}, None,
             ("--with-new-pkgs", "upgrade")),
    Scenario("held-target", _HOLD_STATUS, {"amd64": _HOLD_PACKAGES}, {"libssl3": None},
             ("install", "--only-upgrade", "libssl3")),
    Scenario("no-downgrade", inst("a", "2") + inst("b", "1:1"),
             {"amd64": cand("a", "1") + cand("b", "2")}, None, ("upgrade",)),
    Scenario("suites", inst("a", "1") + inst("b", "1"),
             {"bookworm/amd64": cand("a", "2", pre_depends="b (>= 3)") + cand("b", "2"),
              "bookworm-security/amd64": cand("b", "3") + cand("a", "1.5")},
             None, ("upgrade",)),
    Scenario("chain", inst("a", "1", depends="b (= 1)") + inst("b", "1", depends="c (<< 2)")
             + inst("c", "1") + inst("d", "1", depends="a (>= 1)"),
             {"amd64": cand("a", "2", depends="b (= 2)") + cand("b", "2", depends="c (<< 3)")
              + cand("c", "2") + cand("d", "1.1", depends="a (>= 2), e") + cand("e", "1")},
             {"c": None}, ("install", "--only-upgrade", "c")),
    Scenario("same-source", SRC_STATUS, {"amd64": SRC_PACKAGES}, {"foo": None},
             ("install", "--only-upgrade", "foo")),
    Scenario("same-source-new-install",
             inst("app", "1") + inst("bar-utils", "1.0-1", source="bar"),
             {"amd64": cand("app", "2", depends="libbar2") + cand("libbar2", "1.0-2", source="bar")
              + cand("bar-utils", "1.0-2", source="bar")},
             {"app": None}, ("install", "--only-upgrade", "app")),
    Scenario("same-source-reverse",
             inst("lib", "1") + inst("tool", "1", source="toolsrc", depends="lib (<< 2)")
             + inst("tool-doc", "1", source="toolsrc"),
             {"amd64": cand("lib", "2") + cand("tool", "2", source="toolsrc")
              + cand("tool-doc", "2", source="toolsrc")},
             {"lib": None}, ("install", "--only-upgrade", "lib")),
]


@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda s: s.name)
def test_matches_apt(sc: Scenario, tmp_path: Path):
    entries = [e for text in sc.indexes.values() for e in index_of(text)]
    res = resolve(status_of(sc.status), entries, sc.targets, architecture="amd64",
                  foreign_architectures=sc.foreign)
    apt = apt_simulate(tmp_path, sc.status, sc.indexes, sc.apt_args, foreign=sc.foreign)
    assert changes_of(res) == apt.installs, apt.output
    assert apt.removes == ()
    if sc.apt_args[-1] == "upgrade":
        # What apt keeps back is what we cannot update (or leave alone because held).
        assert apt.ok
        assert {f.package for f in res.failures} | set(res.held) == set(apt.kept_back)
    else:
        assert apt.ok == res.ok, apt.output


def test_apt_removes_where_we_refuse(tmp_path: Path):
    """A Conflicts only a removal resolves: apt removes, we never do and fail instead."""
    status, packages = inst("a", "1") + inst("b", "1"), cand("a", "2", conflicts="b")
    res = _resolve(status, packages, {"a": None})
    apt = apt_simulate(tmp_path, status, {"amd64": packages}, ("install", "--only-upgrade", "a"))
    assert apt.removes == ("b",) and apt.installs == {"a": "2"}
    assert res.changes == () and [f.package for f in res.failures] == ["a"]
    res = _resolve(status, packages, None)
    apt = apt_simulate(tmp_path / "up", status, {"amd64": packages}, ("upgrade",))
    assert apt.kept_back == ("a",) and [f.package for f in res.failures] == ["a"]


def _universe(seed: int) -> tuple[str, str]:
    """A random, tangled but consistent installed set (status text) and Packages text."""
    rng = random.Random(seed)
    names = [f"p{i}" for i in range(10)]
    versions = {n: sorted(rng.sample(range(1, 6), rng.randint(1, 4))) for n in names}
    installed = {n: versions[n][0] for n in names if rng.random() < 0.6}

    def relations(name: str, consistent: bool) -> dict[str, str]:
        # consistent: only relations the installed set meets (for installed stanzas).
        pool = sorted(installed) if consistent else names
        fields: dict[str, str] = {}
        groups = []
        for _ in range(rng.randint(0, 2)):
            alternatives = []
            for _ in range(rng.choice([1, 1, 1, 2])):
                other = rng.choice(pool)
                if other == name:
                    continue
                if consistent:
                    v = installed[other]
                    op, ver = rng.choice([("", 0), (">=", v), ("=", v),
                                          ("<<", v + rng.randint(1, 3)), (">=", max(1, v - 1))])
                else:
                    op, ver = rng.choice(["", "", ">=", "<<", "="]), rng.choice(versions[other])
                alternatives.append(f"{other} ({op} {ver})" if op else other)
            if alternatives:
                groups.append(" | ".join(alternatives))
        if groups:
            fields["depends"] = ", ".join(groups)
        if rng.random() < 0.2:
            other = rng.choice(names)
            if other != name:
                ver = installed[other] if consistent and other in installed else rng.choice(
                    versions[other])
                fields["breaks"] = f"{other} (<< {ver})"
        if rng.random() < 0.1:
            fields["provides"] = "virt"
        if rng.random() < 0.1 and "depends" not in fields and not consistent:
            fields["depends"] = "virt"
        if rng.random() < 0.3:
            fields["source"] = rng.choice(["s1", "s2"])
        return fields

    stanzas = {(n, v): relations(n, False) for n in names for v in versions[n]}
    for n, v in installed.items():
        stanzas[n, v] = relations(n, True)
    status = "".join(
        inst(n, str(v), status="hold ok installed" if rng.random() < 0.05 else
             "install ok installed", **stanzas[n, v]) for n, v in sorted(installed.items()))
    packages = "".join(cand(n, str(v), **fields) for (n, v), fields in stanzas.items()
                       if installed.get(n) != v or rng.random() < 0.5)
    return status, packages


def _applied(status: str, res: Resolution) -> str:
    """The status text after the resolution's changes (every package configured)."""
    changed = {(c.name, c.architecture) for c in res.changes}
    out = [format_paragraph(p.paragraph) + "\n" for p in status_of(status)
           if (p.name, p.architecture) not in changed]
    for c in res.changes:
        fields = [f"{k}: {v}" for k, v in c.entry.paragraph.items()
                  if k not in ("Package", "Filename", "Size", "SHA256")]
        out.append("\n".join([f"Package: {c.name}", "Status: install ok installed", *fields])
                   + "\n\n")
    return "".join(out)


@pytest.mark.parametrize("block", range(8))
def test_random_universes_leave_a_consistent_system(block: int, tmp_path: Path):
    """apt-get check as the judge: on random tangled package sets, whatever update-all
    decides leaves every dependency met and nothing broken; nothing is downgraded or
    removed, held packages stay, and every package left behind is accounted for."""
    for seed in range(block * 25, block * 25 + 25):
        status, packages = _universe(seed)
        before = apt_simulate(tmp_path / f"{seed}-before", status, {"amd64": packages},
                              ("check",))
        assert before.ok, before.output
        installed = status_of(status)
        entries = index_of(packages)
        res = resolve(installed, entries, None, architecture="amd64")
        after = apt_simulate(tmp_path / f"{seed}-after", _applied(status, res),
                             {"amd64": packages}, ("check",))
        assert after.ok, (seed, res, after.output)
        was = {p.name: p for p in installed}
        for c in res.changes:
            if c.name in was:
                assert compare_versions(c.to_version, was[c.name].version) > 0
                assert str(was[c.name].status).split()[0] != "hold"
        newest: dict[str, str] = {}
        for e in entries:
            if e.package not in newest or compare_versions(e.version, newest[e.package]) > 0:
                newest[e.package] = e.version
        behind = {n for n, p in was.items()
                  if n in newest and compare_versions(newest[n], p.version) > 0}
        done = {c.name for c in res.changes if c.to_version == newest[c.name]}
        assert behind - done <= {f.package for f in res.failures} | set(res.held), seed
        # One target, as a report names it: the same guarantees.
        target = sorted(was)[seed % len(was)]
        one = resolve(installed, entries, {target: None}, architecture="amd64")
        after = apt_simulate(tmp_path / f"{seed}-one", _applied(status, one),
                             {"amd64": packages}, ("check",))
        assert after.ok, (seed, target, one, after.output)
        assert (target in {c.name for c in one.changes if c.requested}
                or target in {f.package for f in one.failures} | set(one.held)
                or target in one.up_to_date)


@pytest.mark.parametrize("block", range(4))
def test_random_multiarch_universes_leave_a_consistent_system(block: int, tmp_path: Path):
    """The same with every package Multi-Arch: same and installed for amd64 and i386, and
    some i386 candidates missing (version skew must then be refused, not produced)."""
    for seed in range(block * 25, block * 25 + 25):
        status, packages = _universe(seed)
        rng = random.Random(seed + 1000)
        arch = "Architecture: amd64\n"
        same64, same32 = arch + "Multi-Arch: same\n", "Architecture: i386\nMulti-Arch: same\n"
        status = status.replace(arch, same64) + status.replace(arch, same32)
        amd64 = packages.replace(arch, same64)
        i386 = "".join(stanza + "\n\n" for stanza in packages.split("\n\n")
                       if stanza and rng.random() < 0.85)
        i386 = i386.replace(arch, same32).replace("_amd64.deb", "_i386.deb")
        indexes = {"amd64": amd64, "i386": i386}
        before = apt_simulate(tmp_path / f"{seed}-before", status, indexes, ("check",),
                              foreign=("i386",))
        assert before.ok, before.output
        installed = status_of(status)
        entries = index_of(amd64) + index_of(i386)
        names = sorted({p.name for p in installed})
        for targets in (None, {names[seed % len(names)]: None}):
            res = resolve(installed, entries, targets, architecture="amd64",
                          foreign_architectures=["i386"])
            after = apt_simulate(tmp_path / f"{seed}-{bool(targets)}", _applied(status, res),
                                 indexes, ("check",), foreign=("i386",))
            assert after.ok, (seed, targets, res, after.output)


# ---------------------------------------------------------------- the real archive


def _installable_closure(main: list[PackageEntry], roots: list[str]) -> list[PackageEntry]:
    """A set of bookworm packages that apt-get check accepts: each root with what it depends
    on (first alternative a package meets), roots that would conflict with what is already
    chosen are left out."""
    by_name = {e.package: e for e in main if e.architecture in ("amd64", "all")}
    rels: dict[tuple[str, str], list[list[Relation]]] = {}

    def rel(name: str, field: str) -> list[list[Relation]]:
        if (name, field) not in rels:
            rels[name, field] = parse_relations(by_name[name].paragraph.get(field) or "")
        return rels[name, field]

    providers: dict[str, set[str]] = {}
    for e in by_name.values():
        for group in parse_relations(e.provides):
            for r in group:
                providers.setdefault(r.name, set()).add(e.package)

    def meets(r: Relation, name: str) -> bool:
        e = by_name[name]
        return r.satisfied_by(e.package, e.version, [p for g in rel(name, "Provides") for p in g])

    chosen: set[str] = set()
    names: dict[str, set[str]] = {}  # name or provided name -> chosen packages
    mentions: dict[str, set[str]] = {}  # name -> chosen packages that break/conflict with it

    def closure(root: str) -> set[str]:
        new: set[str] = set()
        stack = [root]
        while stack:
            n = stack.pop()
            if n in chosen or n in new:
                continue
            new.add(n)
            for group in rel(n, "Pre-Depends") + rel(n, "Depends"):
                have = chosen | new
                if any(meets(r, m) for r in group
                       for m in ({r.name} | providers.get(r.name, set())) & have if m in by_name):
                    continue
                for r in group:
                    if r.name in by_name and meets(r, r.name):
                        stack.append(r.name)
                        break
                    options = sorted(m for m in providers.get(r.name, ()) if meets(r, m))
                    if options:
                        stack.append(options[0])
                        break
        return new

    def clashes(new: set[str]) -> bool:
        local: dict[str, set[str]] = {}
        for n in new:
            local.setdefault(n, set()).add(n)
            for g in rel(n, "Provides"):
                for r in g:
                    local.setdefault(r.name, set()).add(n)
        for n in new:  # what the new packages break, among old and new
            for field in ("Breaks", "Conflicts"):
                for g in rel(n, field):
                    for r in g:
                        for m in names.get(r.name, set()) | local.get(r.name, set()):
                            if m != n and meets(r, m):
                                return True
        for provided, pkgs in local.items():  # what old packages break among the new
            for m in mentions.get(provided, ()):
                for field in ("Breaks", "Conflicts"):
                    for g in rel(m, field):
                        if any(r.name == provided and meets(r, p) for r in g for p in pkgs):
                            return True
        return False

    for root in roots:
        if root in chosen or root not in by_name:
            continue
        new = closure(root)
        if clashes(new):
            continue
        chosen |= new
        for n in new:
            names.setdefault(n, set()).add(n)
            for g in rel(n, "Provides"):
                for r in g:
                    names.setdefault(r.name, set()).add(n)
            for field in ("Breaks", "Conflicts"):
                for g in rel(n, field):
                    for r in g:
                        mentions.setdefault(r.name, set()).add(n)
    return [by_name[n] for n in sorted(chosen)]


def _as_status(entries: list[PackageEntry]) -> str:
    out = []
    for e in entries:
        lines = [f"Package: {e.package}", "Status: install ok installed"]
        for name, value in e.paragraph.items():
            if name not in ("Package", "Filename", "Size", "MD5sum", "SHA256",
                            "Description-md5"):
                lines.append(f"{name}: {value}")
        out.append("\n".join(lines) + "\n\n")
    return "".join(out)


@pytest.mark.network
def test_bookworm_updates_of_thousands_of_packages_match_apt(tmp_path: Path):
    """Real bookworm relations: every package of bookworm that -security or -updates has a
    newer version of, installed at its bookworm version with all it depends on (some
    thousand packages); update-all must equal ``apt-get upgrade --with-new-pkgs``, and what
    apt keeps back must be exactly what we report as failures."""
    texts = {"bookworm/amd64": debian_index(DEBIAN, "bookworm"),
             "bookworm-security/amd64": debian_index(SECURITY, "bookworm-security"),
             "bookworm-updates/amd64": debian_index(DEBIAN, "bookworm-updates")}
    indexes = {k: parse_packages_index(v) for k, v in texts.items()}
    main = indexes["bookworm/amd64"]
    newer = indexes["bookworm-security/amd64"] + indexes["bookworm-updates/amd64"]
    roots = sorted({e.package for e in newer} - {e.package for e in newer
                                                  if e.package.startswith(("linux-", "firmware"))})
    status = _as_status(_installable_closure(main, roots))
    check = apt_simulate(tmp_path / "check", status, texts, ("check",))
    assert check.ok, check.output[-2000:]
    installed = parse_status(status)
    assert len(installed) > 1000
    resolver = Resolver(installed, main + newer, architecture="amd64")
    res = resolver.resolve(None)
    apt = apt_simulate(tmp_path / "upgrade", status, texts, ("--with-new-pkgs", "upgrade"))
    assert apt.ok and apt.removes == ()
    assert len(apt.installs) > 100
    assert changes_of(res) == apt.installs
    assert {f.package for f in res.failures} == set(apt.kept_back)
    # Single targets, as copa's report mode asks for them. Where apt removes packages to
    # make room (we never do), what we install must be part of what apt installs.
    for target in sorted({c.name for c in res.changes if c.requested})[::97]:
        one = resolver.resolve({target: None})
        apt = apt_simulate(tmp_path / target, status, texts,
                           ("install", "--only-upgrade", target))
        assert apt.ok, apt.output[-3000:]
        if apt.removes:
            assert changes_of(one).items() <= apt.installs.items(), target
        else:
            assert changes_of(one) == apt.installs, (target, apt.output[-3000:])
