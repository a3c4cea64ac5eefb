"""The apk resolver and planner: targets, dependency closure, provides, conflicts,
world constraints, repository tags, renamed series."""

from __future__ import annotations

from dataclasses import dataclass

from suture.distro.apk.checksum import q1
from suture.distro.apk.index import IndexEntry
from suture.distro.apk.installed import InstalledPackage, parse_installed, parse_world
from suture.distro.apk.resolve import Resolver
from suture.plan import Plan
from suture.plan.apk import plan_apk


def installed(*records: str) -> list[InstalledPackage]:
    return parse_installed("\n".join(records).encode() + b"\n")


def rec(name: str, version: str, depends: str = "", provides: str = "", origin: str = "",
        tag: str = "") -> str:
    lines = [f"C:{q1(f'{name}-{version}'.encode())}", f"P:{name}", f"V:{version}",
             "A:x86_64"]
    if origin:
        lines.append(f"o:{origin}")
    if depends:
        lines.append(f"D:{depends}")
    if provides:
        lines.append(f"p:{provides}")
    if tag:
        lines.append(f"s:{tag}")
    return "\n".join(lines) + "\n"


def cand(name: str, version: str, depends: str = "", provides: str = "", origin: str = "",
         tag: str = "", order: int = 0, k: int = 0) -> IndexEntry:
    fields = [("C", q1(f"{name}-{version}".encode())), ("P", name), ("V", version),
              ("A", "x86_64"), ("S", "100")]
    if origin:
        fields.append(("o", origin))
    if depends:
        fields.append(("D", depends))
    if provides:
        fields.append(("p", provides))
    if k:
        fields.append(("k", str(k)))
    return IndexEntry(tuple(fields), "http://repo/main", tag, order)


@dataclass(frozen=True)
class F:
    vulnerability_id: str
    package: str
    installed_version: str
    fixed_versions: tuple[str, ...]
    package_class: str = "os-pkgs"


def changes(plan: Plan) -> list[tuple[str, str | None, str, str]]:
    return [(u.name, u.from_version, u.to_version, u.reason) for u in plan.updates]


def test_update_all_picks_newest_and_skips_up_to_date() -> None:
    image = installed(rec("a", "1.0-r0"), rec("b", "2.0-r0"))
    repo = [cand("a", "1.0-r0"), cand("a", "1.0-r2"), cand("a", "1.0-r1"), cand("b", "2.0-r0"),
            cand("b", "1.9-r0")]
    plan = plan_apk(image, repo, None, architecture="x86_64")
    assert changes(plan) == [("a", "1.0-r0", "1.0-r2", "update-all")]
    assert plan.family == "apk" and not plan.failures


def test_dependency_by_so_provide_is_installed_when_missing() -> None:
    image = installed(rec("curl", "8.0-r0", depends="so:libcurl.so.4"),
                      rec("libcurl", "8.0-r0", provides="so:libcurl.so.4=4"))
    repo = [cand("curl", "8.1-r0", depends="so:libcurl.so.4 so:libnghttp2.so.14"),
            cand("libcurl", "8.1-r0", provides="so:libcurl.so.4=4"),
            cand("nghttp2-libs", "1.5-r0", provides="so:libnghttp2.so.14=14.0")]
    plan = plan_apk(image, repo, [F("CVE-1", "curl", "8.0-r0", ("8.1-r0",))],
                    architecture="x86_64")
    assert changes(plan) == [("curl", "8.0-r0", "8.1-r0", "report"),
                             ("nghttp2-libs", None, "1.5-r0", "dependency")]
    assert plan.updates[0].vulnerabilities == ("CVE-1",)


def test_versioned_dependency_upgrades_the_holder() -> None:
    image = installed(rec("openssl", "3.1-r0", depends="libcrypto3=3.1-r0"),
                      rec("libcrypto3", "3.1-r0"))
    repo = [cand("openssl", "3.2-r0", depends="libcrypto3=3.2-r0"),
            cand("libcrypto3", "3.2-r0"), cand("libcrypto3", "3.3-r0")]
    plan = plan_apk(image, repo, [F("CVE-2", "openssl", "", ("3.2-r0",))],
                    architecture="x86_64")
    assert changes(plan) == [("libcrypto3", "3.1-r0", "3.2-r0", "dependency"),
                             ("openssl", "3.1-r0", "3.2-r0", "report")]


def test_reverse_dependency_is_upgraded_when_a_change_breaks_it() -> None:
    image = installed(rec("openssl", "3.1-r0", depends="libcrypto3=3.1-r0"),
                      rec("libcrypto3", "3.1-r0"))
    repo = [cand("openssl", "3.2-r0", depends="libcrypto3=3.2-r0"),
            cand("libcrypto3", "3.2-r0")]
    plan = plan_apk(image, repo, [F("CVE-3", "libcrypto3", "", ("3.2-r0",))],
                    architecture="x86_64")
    assert changes(plan) == [("libcrypto3", "3.1-r0", "3.2-r0", "report"),
                             ("openssl", "3.1-r0", "3.2-r0", "dependency")]


def test_unsatisfiable_dependency_fails_that_target_only() -> None:
    image = installed(rec("a", "1-r0"), rec("b", "1-r0"))
    repo = [cand("a", "2-r0", depends="so:missing.so.1"), cand("b", "2-r0")]
    plan = plan_apk(image, repo, None, architecture="x86_64")
    assert changes(plan) == [("b", "1-r0", "2-r0", "update-all")]
    assert [(f.name, f.message) for f in plan.failures] == [
        ("a", "a 2-r0 depends on so:missing.so.1, which no allowed candidate provides")]


def test_conflict_is_a_failure() -> None:
    image = installed(rec("a", "1-r0"), rec("b", "1-r0"))
    repo = [cand("a", "2-r0", depends="!b")]
    plan = plan_apk(image, repo, None, architecture="x86_64")
    assert not plan.updates
    assert plan.failures[0].name == "a" and "conflicts with b" in plan.failures[0].message


def test_installed_conflict_lifted_by_upgrading_the_conflicting_package() -> None:
    image = installed(rec("a", "1-r0", depends="!b>=2"), rec("b", "1-r0"))
    repo = [cand("b", "2-r0"), cand("a", "2-r0")]
    plan = plan_apk(image, repo, [F("CVE-4", "b", "", ("2-r0",))], architecture="x86_64")
    assert changes(plan) == [("a", "1-r0", "2-r0", "dependency"),
                             ("b", "1-r0", "2-r0", "report")]


def test_world_constraint_holds_a_package() -> None:
    image = installed(rec("a", "1.0-r0"))
    repo = [cand("a", "1.0-r1"), cand("a", "1.1-r0")]
    world = parse_world(b"a~1.0\n")
    plan = plan_apk(image, repo, [F("CVE-5", "a", "", ("1.1-r0",))], architecture="x86_64",
                    world=world)
    assert not plan.updates
    assert [(s.name, s.reason, s.detail) for s in plan.skipped] == [
        ("a", "held", "/etc/apk/world pins a~1.0")]
    # Update-all stays within the pin.
    plan = plan_apk(image, repo, None, architecture="x86_64", world=world)
    assert changes(plan) == [("a", "1.0-r0", "1.0-r1", "update-all")]


def test_tagged_repository_needs_a_pin() -> None:
    image = installed(rec("a", "1-r0"), rec("b", "1-r0", tag="edge"))
    repo = [cand("a", "2-r0", tag="edge"), cand("b", "2-r0", tag="edge")]
    plan = plan_apk(image, repo, None, architecture="x86_64")
    assert changes(plan) == [("b", "1-r0", "2-r0", "update-all")]
    plan = plan_apk(image, repo, None, architecture="x86_64", world=parse_world(b"a@edge"))
    assert [u.name for u in plan.updates] == ["a", "b"]


def test_new_series_is_reported_not_installed() -> None:
    image = installed(rec("libcrypto1.1", "1.1.1t-r0", origin="openssl1.1"))
    repo = [cand("libcrypto1.1", "1.1.1t-r0", origin="openssl1.1"),
            cand("libcrypto3", "3.0.8-r0", origin="openssl1.1")]
    plan = plan_apk(image, repo, [F("CVE-6", "libcrypto1.1", "", ("3.0.8-r0",))],
                    architecture="x86_64")
    assert not plan.updates
    (failure,) = plan.failures
    assert failure.name == "libcrypto1.1" and failure.vulnerabilities == ("CVE-6",)
    assert "libcrypto3" in failure.message and "not installed in its place" in failure.message


def test_report_vocabulary() -> None:
    image = installed(rec("a", "2.0-r0"), rec("b", "1.0-r0"))
    repo = [cand("b", "1.1-r0")]
    findings = [F("CVE-7", "a", "2.0-r0", ("1.5-r0",)), F("CVE-8", "zz", "1", ("2",)),
                F("CVE-9", "b", "1.0-r0", ()), F("CVE-10", "b", "0.9-r0", ("1.1-r0",)),
                F("GHSA-1", "lib", "1", ("2",), package_class="lang-pkgs")]
    plan = plan_apk(image, repo, findings, architecture="x86_64")
    assert changes(plan) == [("b", "1.0-r0", "1.1-r0", "report")]
    assert [(s.name, s.reason) for s in plan.skipped] == [
        ("a", "up-to-date"), ("b", "unfixed"), ("zz", "not-installed")]
    assert any("left to other planners" in n for n in plan.notes)
    assert any("the report says 0.9-r0" in n for n in plan.notes)


def test_provider_priority_chooses_among_virtuals() -> None:
    image = installed(rec("app", "1-r0"))
    repo = [cand("app", "2-r0", depends="cmd:sh"),
            cand("busybox", "1.36-r0", provides="cmd:sh=1.36-r0", k=100),
            cand("bash", "5.2-r0", provides="cmd:sh=5.2-r0")]
    plan = plan_apk(image, repo, None, architecture="x86_64")
    assert changes(plan) == [("app", "1-r0", "2-r0", "update-all"),
                             ("busybox", None, "1.36-r0", "dependency")]


def test_an_image_already_broken_is_not_ours_to_fix() -> None:
    image = installed(rec("a", "1-r0", depends="so:gone.so.1"), rec("b", "1-r0"))
    repo = [cand("b", "2-r0")]
    plan = plan_apk(image, repo, None, architecture="x86_64")
    assert changes(plan) == [("b", "1-r0", "2-r0", "update-all")]


def test_resolver_queries() -> None:
    image = installed(rec("a", "1-r0"))
    r = Resolver(image, [cand("a", "3-r0"), cand("a", "2-r0")], parse_world(b"a<3"))
    assert r.newest("a") == "2-r0" and r.held("a") == "/etc/apk/world pins a<3"
    assert r.installed("zz") is None and r.newest("zz") is None


def test_apk2_order_decides_what_is_newer() -> None:
    """apk-tools 2 reads 1.00 as older than 1.0 (extra leading zeros count below it);
    apk-tools 3 compares the component as a string. The plan follows the image's order."""
    image = installed(rec("a", "1.00-r5"), rec("b", "1.0-r0", depends="a>1.00-r5"))
    repo = [cand("a", "1.0-r1"), cand("a", "1.00-r4")]
    assert changes(plan_apk(image, repo, None, architecture="x86_64")) == []
    assert changes(plan_apk(image, repo, None, architecture="x86_64", apk2=True)) == [
        ("a", "1.00-r5", "1.0-r1", "update-all")]
    finding = [F("CVE-7", "a", "1.00-r5", ("1.0-r1",))]
    assert changes(plan_apk(image, repo, finding, architecture="x86_64", apk2=True)) == [
        ("a", "1.00-r5", "1.0-r1", "report")]
    plan = plan_apk(image, repo, finding, architecture="x86_64")
    assert changes(plan) == [] and [s.reason for s in plan.skipped] == ["up-to-date"]


def test_apk2_order_in_dependencies_and_world() -> None:
    image = installed(rec("a", "1.0-r0"), rec("b", "1.0-r0", depends="a"))
    repo = [cand("a", "1.0-r0"), cand("a", "1.010-r0"), cand("a", "1.09-r0"),
            cand("b", "1.1-r0", depends="a>=1.010")]
    # apk-tools 3: 1.010 < 1.09, so b's dependency is met by 1.09 (a's newest)
    assert changes(plan_apk(image, repo, None, architecture="x86_64")) == [
        ("a", "1.0-r0", "1.09-r0", "update-all"), ("b", "1.0-r0", "1.1-r0", "update-all")]
    # apk-tools 2: 1.010 > 1.09, newest is 1.010
    assert changes(plan_apk(image, repo, None, architecture="x86_64", apk2=True)) == [
        ("a", "1.0-r0", "1.010-r0", "update-all"), ("b", "1.0-r0", "1.1-r0", "update-all")]
    world = parse_world(b"a<1.05")
    r2 = Resolver(image, repo, world, apk2=True)
    r3 = Resolver(image, repo, world)
    assert r2.newest("a") == "1.0-r0" and r2.held("a") == "/etc/apk/world pins a<1.05"
    assert r3.newest("a") == "1.010-r0"
