"""The dpkg planner: targets from a report (or update-all), outcome per package, apt as oracle."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import pytest

from suture.distro.dpkg.control import parse_status
from suture.distro.dpkg.repo import parse_packages_index
from suture.plan import DEPENDENCY, REPORT, UPDATE_ALL, Failure, Plan, Skip, Update
from suture.plan.dpkg import plan_dpkg
from suture.reports.model import Finding
from tests.distro.test_dpkg_resolve import (
    DEBIAN,
    SECURITY,
    apt_simulate,
    cand,
    debian_index,
    index_of,
    inst,
    status_of,
)

HOLD = "hold ok installed"

STATUS = (
    inst("libc6", "2.36-9", multi_arch="same", source="glibc")
    + inst("libc-bin", "2.36-9", source="glibc", depends="libc6 (>> 2.36), libc6 (<< 2.37)")
    + inst("libssl3", "3.0.11-1~deb12u1", multi_arch="same", source="openssl",
           depends="libc6 (>= 2.34)")
    + inst("openssl", "3.0.11-1~deb12u1", depends="libssl3 (= 3.0.11-1~deb12u1)")
    + inst("zlib1g", "1:1.2.13.dfsg-1", multi_arch="same", source="zlib")
    + inst("tar", "1.34+dfsg-1.2")
    + inst("bash", "5.2.15-2+b2", source="bash (5.2.15-2)")
    + inst("perl-base", "5.36.0-7", status=HOLD)
    + inst("curl", "7.88.1-10", depends="libcurl4 (= 7.88.1-10)")
    + inst("libcurl4", "7.88.1-10", source="curl")
)
PACKAGES = (
    cand("libc6", "2.36-9+deb12u4", multi_arch="same", source="glibc")
    + cand("libc-bin", "2.36-9+deb12u4", source="glibc",
           depends="libc6 (>> 2.36), libc6 (<< 2.37)")
    + cand("libssl3", "3.0.15-1~deb12u1", multi_arch="same", source="openssl",
           depends="libc6 (>= 2.36-9+deb12u4)")
    + cand("openssl", "3.0.15-1~deb12u1", depends="libssl3 (= 3.0.15-1~deb12u1)")
    + cand("zlib1g", "1:1.2.13.dfsg-1", multi_arch="same", source="zlib")
    + cand("tar", "1.34+dfsg-1.2+deb12u1", depends="libacl1")
    + cand("libacl1", "2.3.1-3")
    + cand("perl-base", "5.36.0-7+deb12u1")
    + cand("curl", "7.88.1-10+deb12u8", depends="libcurl4 (= 7.88.1-10+deb12u8)")
    + cand("libcurl4", "7.88.1-10+deb12u8", source="curl", depends="libnghttp2-14 (>= 9)")
)
BASE = "http://deb.debian.org/debian-security"


def _plan(findings: list[Finding] | None, status: str = STATUS, packages: str = PACKAGES,
          **kw: object) -> Plan:
    return plan_dpkg(status_of(status), index_of(packages, base_uri=BASE), findings,
                     architecture="amd64", **kw)  # type: ignore[arg-type]


def _f(vid: str, package: str, installed: str, *fixed: str, cls: str = "os-pkgs") -> Finding:
    return Finding(vulnerability_id=vid, package=package, installed_version=installed,
                   fixed_versions=tuple(fixed), package_class=cls)


def _versions(plan: Plan) -> dict[str, tuple[str, str]]:
    return {u.name: (u.to_version, u.reason) for u in plan.updates}


# ---------------------------------------------------------------- update-all


def test_update_all():
    plan = _plan(None)
    assert plan.family == "dpkg" and plan.architecture == "amd64"
    assert _versions(plan) == {
        "libc6": ("2.36-9+deb12u4", UPDATE_ALL),
        "libc-bin": ("2.36-9+deb12u4", UPDATE_ALL),
        "libssl3": ("3.0.15-1~deb12u1", UPDATE_ALL),
        "openssl": ("3.0.15-1~deb12u1", UPDATE_ALL),
        "tar": ("1.34+dfsg-1.2+deb12u1", UPDATE_ALL),
        "libacl1": ("2.3.1-3", DEPENDENCY),  # new: tar needs it
    }
    assert plan.skipped == (Skip("perl-base", "held", "held in the dpkg database (want=hold)"),)
    # curl's new libcurl4 needs libnghttp2-14, which no repository has: curl and libcurl4
    # fail (each as a target), nothing of theirs is updated.
    assert [f.name for f in plan.failures] == ["curl", "libcurl4"]
    assert plan.failures[1].message == (
        "libcurl4 7.88.1-10+deb12u8 needs 'libnghttp2-14 (>= 9)' (Depends), which no "
        "available package meets")
    assert not plan.ok
    tar = next(u for u in plan.updates if u.name == "tar")
    assert tar == Update(
        name="tar", architecture="amd64", from_version="1.34+dfsg-1.2",
        to_version="1.34+dfsg-1.2+deb12u1", source="tar", reason=UPDATE_ALL,
        filename="pool/main/t/tar/tar_1.34+dfsg-1.2+deb12u1_amd64.deb", size=100,
        sha256="0" * 64, base_uri=BASE)
    libacl = next(u for u in plan.updates if u.name == "libacl1")
    assert libacl.from_version is None
    assert next(u for u in plan.updates if u.name == "libssl3").source == "openssl"


def test_plan_is_json_and_deterministic():
    findings = [_f("CVE-2", "libssl3", "3.0.11-1~deb12u1", "3.0.13-1~deb12u1"),
                _f("CVE-1", "tar", "1.34+dfsg-1.2", "1.34+dfsg-1.2+deb12u1"),
                _f("CVE-3", "nope", "1")]
    want = _plan(findings).to_json()
    text = json.dumps(want, sort_keys=True)
    assert json.loads(text) == want
    installed = status_of(STATUS)
    entries = index_of(PACKAGES, base_uri=BASE)
    rng = random.Random(3)
    for _ in range(4):
        rng.shuffle(installed)
        rng.shuffle(findings)
        got = plan_dpkg(installed, entries, findings, architecture="amd64").to_json()
        assert json.dumps(got, sort_keys=True) == text
    names = [u["name"] for u in want["updates"]]
    assert names == sorted(names)


# ---------------------------------------------------------------- with a report


def test_report_targets_only_what_findings_name():
    plan = _plan([_f("CVE-2024-1", "libssl3", "3.0.11-1~deb12u1", "3.0.13-1~deb12u1"),
                  _f("CVE-2024-2", "openssl", "3.0.11-1~deb12u1", "3.0.13-1~deb12u1")])
    assert _versions(plan) == {
        "libssl3": ("3.0.15-1~deb12u1", REPORT),  # the newest, not the fixed version
        "openssl": ("3.0.15-1~deb12u1", REPORT),
        "libc6": ("2.36-9+deb12u4", DEPENDENCY),  # libssl3 needs it
        "libc-bin": ("2.36-9+deb12u4", DEPENDENCY),  # built from glibc, as apt does
    }
    vulns = {u.name: u.vulnerabilities for u in plan.updates}
    assert vulns == {"libssl3": ("CVE-2024-1",), "openssl": ("CVE-2024-2",), "libc6": (),
                     "libc-bin": ()}
    assert plan.skipped == () and plan.failures == () and plan.ok


def test_report_skips():
    plan = _plan([
        _f("CVE-1", "nginx", "1.22.1-9"),  # not installed
        _f("CVE-2", "nginx", "1.22.1-9", "1.22.1-9+deb12u1"),
        _f("CVE-3", "tar", "1.34+dfsg-1.2"),  # no fix
        _f("CVE-4", "tar", "1.34+dfsg-1.2", ""),
        _f("CVE-5", "zlib1g", "1:1.2.13.dfsg-1", "1:1.2.13.dfsg-1"),  # already there
        _f("CVE-6", "zlib1g", "1:1.2.13.dfsg-1", "1:1.2.11.dfsg-4"),  # below
        _f("CVE-7", "perl-base", "5.36.0-7", "5.36.0-7+deb12u1"),  # held
        _f("CVE-8", "perl-base", "5.36.0-7", "5.36.0-7+deb12u9"),  # held, even if not there
    ])
    assert plan.updates == ()
    assert plan.skipped == (
        Skip("nginx", "not-installed", "not installed in the image", ("CVE-1", "CVE-2")),
        Skip("perl-base", "held", "held in the dpkg database (want=hold)", ("CVE-7", "CVE-8")),
        Skip("tar", "unfixed", "no fixed version known", ("CVE-3", "CVE-4")),
        Skip("zlib1g", "up-to-date", "installed 1:1.2.13.dfsg-1", ("CVE-5", "CVE-6")),
    )
    assert plan.ok


def test_fixed_version_not_available():
    plan = _plan([_f("CVE-1", "tar", "1.34+dfsg-1.2", "1.34+dfsg-1.2+deb12u2"),
                  _f("CVE-2", "bash", "5.2.15-2+b2", "5.2.15-3")])
    assert plan.updates == ()
    assert plan.failures == (
        Failure("bash", "fixed version 5.2.15-3 not available, newest candidate is 5.2.15-2+b2",
                ("CVE-2",)),
        Failure("tar", "fixed version 1.34+dfsg-1.2+deb12u2 not available, newest candidate "
                       "is 1.34+dfsg-1.2+deb12u1", ("CVE-1",)),
    )
    assert not plan.ok


def test_partly_fixable_package_is_updated_for_what_it_fixes():
    plan = _plan([_f("CVE-1", "tar", "1.34+dfsg-1.2", "1.34+dfsg-1.2+deb12u1"),
                  _f("CVE-2", "tar", "1.34+dfsg-1.2", "1.34+dfsg-1.2+deb12u9")])
    assert _versions(plan)["tar"] == ("1.34+dfsg-1.2+deb12u1", REPORT)
    assert next(u for u in plan.updates if u.name == "tar").vulnerabilities == ("CVE-1",)
    assert plan.failures == (Failure(
        "tar", "fixed version 1.34+dfsg-1.2+deb12u9 not available, newest candidate is "
               "1.34+dfsg-1.2+deb12u1", ("CVE-2",)),)


def test_highest_fixed_version_that_applies():
    # Per finding, the lowest listed fix above the installed version applies (Trivy lists
    # one per stream); over the package's findings, the highest of those.
    status = inst("tar", "1.34+dfsg-1.2")
    packages = cand("tar", "1.34+dfsg-1.2+deb12u1") + cand("tar", "1.35+dfsg-3")
    findings = [_f("CVE-1", "tar", "1.34+dfsg-1.2", "1.35+dfsg-1", "1.34+dfsg-1.2+deb12u1"),
                _f("CVE-2", "tar", "1.34+dfsg-1.2", "1.34+dfsg-1.1")]
    plan = _plan(findings, status, packages)
    assert _versions(plan) == {"tar": ("1.35+dfsg-3", REPORT)}
    assert plan.updates[0].vulnerabilities == ("CVE-1",)
    assert plan.skipped == (Skip("tar", "up-to-date", "installed 1.34+dfsg-1.2", ("CVE-2",)),)
    # Only the lower stream is available: that fix is enough.
    plan = _plan(findings, status, cand("tar", "1.34+dfsg-1.2+deb12u1"))
    assert _versions(plan) == {"tar": ("1.34+dfsg-1.2+deb12u1", REPORT)} and plan.ok


def test_report_installed_version_differs_from_the_image():
    plan = _plan([_f("CVE-1", "tar", "1.34+dfsg-1.1", "1.34+dfsg-1.2")], notes=["given"])
    assert plan.updates == ()
    assert plan.skipped == (Skip("tar", "up-to-date", "installed 1.34+dfsg-1.2", ("CVE-1",)),)
    assert plan.notes == ("given", "tar: the report says 1.34+dfsg-1.1 is installed, the image "
                                   "has 1.34+dfsg-1.2; planning from the image")


def test_language_findings_are_left_alone():
    plan = _plan([_f("CVE-1", "requests", "2.0", "2.32", cls="lang-pkgs"),
                  _f("CVE-2", "tar", "1.34+dfsg-1.2", "1.34+dfsg-1.2+deb12u1")])
    assert list(_versions(plan)) == ["libacl1", "tar"]
    assert plan.notes == ("1 finding(s) not about OS packages left to other planners",)


def test_report_target_that_cannot_be_resolved():
    plan = _plan([_f("CVE-1", "curl", "7.88.1-10", "7.88.1-10+deb12u8"),
                  _f("CVE-2", "tar", "1.34+dfsg-1.2", "1.34+dfsg-1.2+deb12u1")])
    assert list(_versions(plan)) == ["libacl1", "tar"]
    assert [(f.name, f.vulnerabilities) for f in plan.failures] == [("curl", ("CVE-1",))]
    assert "libnghttp2-14" in plan.failures[0].message


def test_empty_report_changes_nothing():
    plan = _plan([])
    assert plan == Plan("dpkg", "amd64")


def test_multiarch_findings():
    status = (inst("libc6", "2.36-9", multi_arch="same")
              + inst("libc6", "2.36-9", "i386", multi_arch="same"))
    entries = (index_of(cand("libc6", "2.36-9+deb12u4", multi_arch="same"))
               + index_of(cand("libc6", "2.36-9+deb12u4", "i386", multi_arch="same")))
    plan = plan_dpkg(status_of(status), entries, [_f("CVE-1", "libc6", "2.36-9",
                                                     "2.36-9+deb12u3")],
                     architecture="amd64", foreign_architectures=["i386"])
    assert [(u.name, u.architecture, u.to_version, u.reason, u.vulnerabilities)
            for u in plan.updates] == [
        ("libc6", "amd64", "2.36-9+deb12u4", REPORT, ("CVE-1",)),
        ("libc6", "i386", "2.36-9+deb12u4", REPORT, ("CVE-1",))]


# ---------------------------------------------------------------- apt as the oracle


def test_report_plan_matches_apt_install(tmp_path: Path):
    """copa installs the packages a report names; apt's answer and ours agree."""
    findings = [_f("CVE-1", "libssl3", "3.0.11-1~deb12u1", "3.0.13-1~deb12u1"),
                _f("CVE-2", "tar", "1.34+dfsg-1.2", "1.34+dfsg-1.2+deb12u1")]
    plan = _plan(findings)
    apt = apt_simulate(tmp_path, STATUS, {"amd64": PACKAGES},
                       ("install", "--only-upgrade", "libssl3", "tar"))
    assert apt.ok
    assert {u.name: u.to_version for u in plan.updates} == apt.installs


def test_update_all_plan_matches_apt_upgrade(tmp_path: Path):
    plan = _plan(None)
    apt = apt_simulate(tmp_path, STATUS, {"amd64": PACKAGES}, ("--with-new-pkgs", "upgrade"))
    assert apt.ok
    assert {u.name: u.to_version for u in plan.updates} == apt.installs
    assert {f.name for f in plan.failures} | {s.name for s in plan.skipped} == set(
        apt.kept_back)


def _status_from_rootfs(tar_path: Path) -> str:
    with tarfile.open(tar_path) as tar:
        member = tar.extractfile("./var/lib/dpkg/status")
        assert member is not None
        return io.TextIOWrapper(member, encoding="utf-8").read()


@pytest.mark.network
@pytest.mark.parametrize(("rootfs", "suite"), [("bookworm_rootfs", "bookworm"),
                                               ("bookworm_openssl_rootfs", "bookworm"),
                                               ("trixie_rootfs", "trixie")])
def test_minbase_update_all_matches_apt(rootfs: str, suite: str, tmp_path: Path,
                                        request: pytest.FixtureRequest):
    """A real root filesystem (mmdebstrap of the release alone) against the real -security
    and -updates suites: the update-all plan is apt-get upgrade's set, names and versions."""
    status = _status_from_rootfs(request.getfixturevalue(rootfs))
    texts = {f"{suite}-security/amd64": debian_index(SECURITY, f"{suite}-security"),
             f"{suite}-updates/amd64": debian_index(DEBIAN, f"{suite}-updates")}
    entries = [e for text in texts.values() for e in parse_packages_index(text)]
    installed = parse_status(status)
    plan = plan_dpkg(installed, entries, None, architecture="amd64")
    apt = apt_simulate(tmp_path / "upgrade", status, texts, ("upgrade",))
    assert apt.ok and apt.removes == () and apt.kept_back == ()
    assert {u.name: u.to_version for u in plan.updates} == apt.installs
    assert plan.ok and all(u.reason == UPDATE_ALL for u in plan.updates)
    if suite == "bookworm":  # a point release behind -security and -updates, always
        assert plan.updates
    assert all(u.from_version for u in plan.updates)
    # The same as a report: each package apt upgrades named by a finding fixed there.
    findings = [_f(f"CVE-{i}", u.name, u.from_version or "", u.to_version)
                for i, u in enumerate(plan.updates)]
    report = plan_dpkg(installed, entries, findings, architecture="amd64")
    assert [(u.name, u.to_version) for u in report.updates] == [
        (u.name, u.to_version) for u in plan.updates]
    assert all(u.reason == REPORT and len(u.vulnerabilities) == 1 for u in report.updates)
