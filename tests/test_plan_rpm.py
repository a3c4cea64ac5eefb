"""The rpm planner: targets from a report (or update-all), outcome per package, the
epoch rule for fixed versions."""

from __future__ import annotations

import json

from suture.plan import DEPENDENCY, REPORT, UPDATE_ALL, Failure, Plan, Skip
from suture.plan.rpm import RPM_ORDER, plan_rpm
from suture.reports.model import Finding
from tests.distro.test_rpm_resolve import cand, inst

SRC = "openssl-3.0.7-27.el9.src.rpm"
INSTALLED = [
    inst("openssl-libs 1:3.0.7-27.el9", source=SRC),
    inst("openssl 1:3.0.7-27.el9", requires=("openssl-libs = 1:3.0.7-27.el9",), source=SRC),
    inst("zlib 1.2.11-40.el9", source="zlib-1.2.11-40.el9.src.rpm"),
    inst("tzdata 2024a-1.el9", "noarch", source="tzdata-2024a-1.el9.src.rpm"),
    inst("curl 7.76.1-26.el9", source="curl-7.76.1-26.el9.src.rpm"),
]
NEW_SRC = "openssl-3.0.7-28.el9.src.rpm"
CANDIDATES = [
    cand("openssl-libs 1:3.0.7-28.el9", source=NEW_SRC),
    cand("openssl 1:3.0.7-28.el9", requires=("openssl-libs = 1:3.0.7-28.el9",), source=NEW_SRC),
    cand("openssl-devel 1:3.0.7-28.el9", source=NEW_SRC),
    cand("zlib 1.2.11-40.el9"),
    cand("tzdata 2024b-2.el9", "noarch", source="tzdata-2024b-2.el9.src.rpm"),
    cand("curl 7.76.1-29.el9", requires=("libnghttp2 >= 1.43",),
         source="curl-7.76.1-29.el9.src.rpm"),
    cand("libnghttp2 1.43.0-5.el9", source="nghttp2-1.43.0-5.el9.src.rpm"),
]


def _plan(findings: list[Finding] | None, **kw: object) -> Plan:
    return plan_rpm(INSTALLED, CANDIDATES, findings, architecture="x86_64",
                    **kw)  # type: ignore[arg-type]


def _f(vid: str, package: str, installed: str, *fixed: str, cls: str = "os-pkgs") -> Finding:
    return Finding(vulnerability_id=vid, package=package, installed_version=installed,
                   fixed_versions=tuple(fixed), package_class=cls)


def test_update_all() -> None:
    plan = _plan(None)
    assert plan.family == "rpm" and plan.architecture == "x86_64"
    got = {u.name: (u.from_version, u.to_version, u.reason) for u in plan.updates}
    assert got == {
        "openssl-libs": ("1:3.0.7-27.el9", "1:3.0.7-28.el9", UPDATE_ALL),
        "openssl": ("1:3.0.7-27.el9", "1:3.0.7-28.el9", UPDATE_ALL),
        "tzdata": ("2024a-1.el9", "2024b-2.el9", UPDATE_ALL),
        "curl": ("7.76.1-26.el9", "7.76.1-29.el9", UPDATE_ALL),
        "libnghttp2": (None, "1.43.0-5.el9", DEPENDENCY),
    }
    u = next(u for u in plan.updates if u.name == "openssl")
    assert (u.architecture, u.source, u.filename, u.size, u.sha256, u.base_uri) == (
        "x86_64", "openssl", "Packages/openssl-1:3.0.7-28.el9.x86_64.rpm", 100, "ab" * 32,
        "file:///repo")
    assert plan.failures == () and plan.skipped == ()


def test_plan_is_json_and_deterministic() -> None:
    findings = [_f("CVE-1", "openssl-libs", "1:3.0.7-27.el9", "1:3.0.7-28.el9"),
                _f("CVE-2", "curl", "7.76.1-26.el9", "7.76.1-29.el9")]
    a = _plan(findings)
    b = plan_rpm(list(reversed(INSTALLED)), list(reversed(CANDIDATES)),
                 list(reversed(findings)), architecture="x86_64")
    dump = [json.dumps([u.to_json() for u in p.updates], sort_keys=True) for p in (a, b)]
    assert dump[0] == dump[1]


def test_report_targets_and_dependencies() -> None:
    plan = _plan([_f("CVE-1", "openssl-libs", "1:3.0.7-27.el9", "1:3.0.7-28.el9")])
    got = {u.name: (u.reason, u.vulnerabilities) for u in plan.updates}
    assert got == {"openssl-libs": (REPORT, ("CVE-1",)), "openssl": (DEPENDENCY, ())}


def test_report_skips() -> None:
    plan = _plan([
        _f("CVE-2", "zlib", "1.2.11-40.el9", "1.2.11-39.el9"),   # already fixed
        _f("CVE-3", "bash", "5.1-1", "5.1-2"),                    # not installed
        _f("CVE-4", "tzdata", "2024a-1.el9"),                     # no fix known
        _f("CVE-5", "lodash", "1", "2", cls="lang-pkgs"),
    ])
    assert plan.updates == ()
    assert plan.skipped == (
        Skip("bash", "not-installed", "not installed in the image", ("CVE-3",)),
        Skip("tzdata", "unfixed", "no fixed version known", ("CVE-4",)),
        Skip("zlib", "up-to-date", "installed 1.2.11-40.el9", ("CVE-2",)),
    )
    assert any("not about OS packages" in n for n in plan.notes)


def test_fixed_version_not_available_names_the_series() -> None:
    plan = _plan([_f("CVE-6", "openssl-libs", "1:3.0.7-27.el9", "1:3.0.7-30.el9")])
    assert plan.updates == ()
    assert plan.failures == (Failure(
        "openssl-libs",
        "fixed version 1:3.0.7-30.el9 not available, newest candidate is 1:3.0.7-28.el9; the "
        "fix may be in openssl-devel (a new package name: not installed in its place)",
        ("CVE-6",)),)


def test_epoch_rule() -> None:
    # an epoch-less fixed version is reached by the same V-R at the installed epoch
    plan = _plan([_f("CVE-7", "openssl-libs", "1:3.0.7-27.el9", "3.0.7-28.el9")])
    assert [u.name for u in plan.updates] == ["openssl", "openssl-libs"]
    plan = _plan([_f("CVE-8", "openssl-libs", "3.0.7-27.el9", "3.0.7-27.el9")])
    assert plan.updates == () and plan.skipped[0].reason == "up-to-date"
    assert plan.notes == ()  # the report's epoch-less installed version names the image's
    # one that names an epoch is held to it: 2:... is beyond every candidate
    plan = _plan([_f("CVE-9", "openssl-libs", "1:3.0.7-27.el9", "2:3.0.7-1.el9")])
    assert plan.updates == () and plan.failures[0].name == "openssl-libs"
    assert RPM_ORDER.compare("1:3.0.7-28.el9", "0:3.0.7-29.el9") > 0
    assert not RPM_ORDER.valid("x:1.0") and not RPM_ORDER.valid("1.0-") and RPM_ORDER.valid("1.0")


def test_held_by_priority() -> None:
    cands = [cand("zlib 1.2.11-41.el9", priority=10, repo="pinned"),
             cand("zlib 1.2.11-45.el9", priority=90, repo="extra")]
    plan = plan_rpm(INSTALLED, cands, [_f("CVE-10", "zlib", "", "1.2.11-44.el9")],
                    architecture="x86_64")
    assert plan.updates == ()
    assert [(s.name, s.reason) for s in plan.skipped] == [("zlib", "held")]
    assert "extra" in plan.skipped[0].detail


def test_unresolvable_target_is_a_failure() -> None:
    cands = [cand("curl 7.76.1-29.el9", requires=("libmissing",))]
    plan = plan_rpm(INSTALLED, cands, [_f("CVE-11", "curl", "", "7.76.1-29.el9")],
                    architecture="x86_64")
    assert plan.updates == ()
    assert plan.failures == (Failure("curl", "nothing provides libmissing needed by "
                                     "curl-7.76.1-29.el9.x86_64", ("CVE-11",)),)


def test_obsoletes_rename_in_plan() -> None:
    installed = [inst("oldname 1-1")]
    cands = [cand("newname 2-1", obsoletes=("oldname < 2",))]
    plan = plan_rpm(installed, cands, [_f("CVE-12", "oldname", "1-1", "2-1")],
                    architecture="x86_64")
    assert [(u.name, u.from_version, u.to_version, u.vulnerabilities) for u in plan.updates] == [
        ("newname", "1-1", "2-1", ("CVE-12",))]
    assert plan.notes == ("oldname-1-1.x86_64 is obsoleted and erased",)
