"""Trivy (the real scanner, v0.74.0 built from source) finds vulnerabilities in an image,
its report drives ``suture patch -r``, it finds none of the fixed ones in the patched
image, and it accepts the OpenVEX document suture writes.

Trivy reads a vulnerability database written for the test image
(:mod:`tests.fixtures.trivydb`): real CVE identifiers from the Debian changelogs of
the packages ``bookworm-security`` upgrades in the image, with the fixed (source)
versions the archive serves today, plus one advisory no update fixes. Both images
are in a registry on 127.0.0.1 and scanned there: Trivy identifies an image by the
digest it pulled (``pkg:oci/<name>@<digest>?repository_url=..&arch=..``), which is
what a VEX document's product must name; an image scanned from a directory has no
such identity and no VEX product can match it.

VEX only changes findings the scanner still reports. With the database that knows
the fixes, the patched image has no fixed finding left to suppress; the database
a scanner has before its feed learns of a fix (each CVE affected, no fixed version:
``stale``) still flags them, and that is where ``--vex`` must suppress exactly the
vulnerabilities suture fixed, in the patched image only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from suture.devtools.debian_image import image_from_layers
from suture.distro.dpkg.control import InstalledPackage
from suture.distro.dpkg.version import compare_versions
from suture.oci.image import Image
from suture.oci.model import Platform
from suture.transports import Options, open_artifact, write_artifact
from tests.fixtures import rpmrepo
from tests.fixtures._served import ServedDirectory
from tests.fixtures.apkrepo import (
    ApkFile,
    ApkKeys,
    ApkRepoServer,
    ApkSpec,
    apk_image,
    apk_version_compare,
    build_apk,
)
from tests.fixtures.images import make_index
from tests.fixtures.patchimages import installed
from tests.fixtures.peers import peer
from tests.fixtures.registry import RegistryServer
from tests.fixtures.rpmbuild import build_rpm, make_gpg_key, sign_rpms
from tests.fixtures.rpmrepo import RpmWorld
from tests.fixtures.trivydb import Advisory, debian_advisories, debian_security_fixes

AMD64 = Platform.parse("linux/amd64")
# coreutils' chroot --userspec TIOCSTI issue: Debian never fixed it (no-dsa, ignored).
UNFIXED = Advisory("debian 12", "coreutils", "CVE-2016-2781", "", severity="LOW",
                   title="chroot --userspec can escape to the parent session")

WriteDb = Callable[[Path, Iterable[Advisory]], Path]


class Trivy:
    """``trivy image`` against a registry on 127.0.0.1, with a database in ``cache``."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.home = home
        (home / "docker").mkdir(parents=True, exist_ok=True)

    def scan(self, cache: Path, ref: str, out: Path, *extra: str) -> dict[str, Any]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
               "DOCKER_CONFIG": str(self.home / "docker"), "TRIVY_NO_PROGRESS": "true"}
        proc = subprocess.run(
            [str(self.binary), "image", "--cache-dir", str(cache), "--skip-db-update",
             "--skip-java-db-update", "--skip-version-check", "--disable-telemetry",
             "--offline-scan", "--scanners", "vuln", "--pkg-types", "os",
             "--image-src", "remote", "--insecure", "--format", "json",
             "--output", str(out), *extra, ref],
            capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr
        doc: dict[str, Any] = json.loads(out.read_text())
        return doc


def findings(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(vulnerability, package) -> the finding, for every OS-package result."""
    out = {}
    for result in report.get("Results") or []:
        for vuln in result.get("Vulnerabilities") or []:
            out[(vuln["VulnerabilityID"], vuln["PkgName"])] = vuln
    return out


def modified(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(vulnerability, package) -> Trivy's record of a finding a VEX statement changed
    (``--show-suppressed``; Trivy 0.74 calls the list ``ExperimentalModifiedFindings``)."""
    out = {}
    for result in report.get("Results") or []:
        for m in result.get("ExperimentalModifiedFindings") or []:
            f = m["Finding"]
            out[(f["VulnerabilityID"], f["PkgName"])] = m
    return out


def affected(packages: Iterable[InstalledPackage], advisories: Iterable[Advisory]
             ) -> set[tuple[str, str]]:
    """(vulnerability, binary package) pairs the advisories apply to, as Debian's tracker
    means them: the binary's source package, its source version below the fix (or no
    fix at all)."""
    pkgs = [p for p in packages if p.is_installed]
    return {(a.id, p.name) for a in advisories for p in pkgs
            if p.source_name == a.package and (
                not a.fixed_version or compare_versions(p.source_version, a.fixed_version) < 0)}


def patch_loop(tmp: Path, trivy: Trivy, write_db: WriteDb, registry: RegistryServer,
               repo: str, advisories: list[Advisory],
               applicable: Callable[[list[Advisory]], set[tuple[str, str]]],
               versions: dict[str, str], *patch_args: str,
               stale: Callable[[Advisory], Advisory] = lambda a: replace(a, fixed_version="")
               ) -> dict[str, Any]:
    """The loop on ``<repo>:orig`` (already pushed): Trivy's findings with ``advisories``
    are ``applicable(advisories)`` (at the installed ``versions``), its report drives
    ``suture patch -r`` to ``<repo>:patched``, no fixed one is left there, and with a
    stale database (each advisory through ``stale``: by default no fix known)
    ``--vex`` suppresses exactly the fixed ones, in the patched image only. Returns the
    patched platform of suture's result."""
    fixed_ids = {a.id for a in advisories if a.fixed_version}
    unfixed_ids = {a.id for a in advisories if not a.fixed_version}
    assert fixed_ids
    db = write_db(tmp / "db-current", advisories)

    # Trivy on the original: exactly the advisories that apply, at the archive's versions.
    report_path = tmp / "orig.json"
    before = findings(trivy.scan(db, f"{repo}:orig", report_path))
    expected = applicable(advisories)
    assert set(before) == expected
    fixed_in = {a.id: a.fixed_version for a in advisories}
    for (vid, name), finding in before.items():
        assert finding["InstalledVersion"] == versions[name], finding
        assert finding.get("FixedVersion", "") == fixed_in[vid], finding

    # The report drives the patch; the VEX names what it fixed.
    vex_path, result_path = tmp / "suture.vex.json", tmp / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "suture", "patch", "-i", f"{repo}:orig", "-r", str(report_path),
         "--dest", f"{repo}:patched", "--insecure-registry", registry.host,
         "-o", str(vex_path), "--result", str(result_path), *patch_args],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [platform] = json.loads(result_path.read_text())["platforms"]
    assert platform["status"] == "patched", platform
    vex = json.loads(vex_path.read_text())
    assert {s["vulnerability"]["name"] for s in vex["statements"]} == fixed_ids

    # Trivy on the patched image: none of the fixed ones; the unfixed ones stay.
    after = findings(trivy.scan(db, f"{repo}:patched", tmp / "patched.json"))
    assert set(after) == {k for k in expected if k[0] in unfixed_ids}

    # A database that does not know the fixes yet flags them in the patched image too...
    stale_advisories = [stale(a) for a in advisories]
    stale_db = write_db(tmp / "db-stale", stale_advisories)
    flagged = findings(trivy.scan(stale_db, f"{repo}:patched", tmp / "stale.json"))
    assert set(flagged) == applicable(stale_advisories)
    # ... and suture's VEX suppresses exactly the fixed ones, recorded as fixed by it.
    with_vex = trivy.scan(stale_db, f"{repo}:patched", tmp / "stale-vex.json",
                          "--vex", str(vex_path), "--show-suppressed")
    assert set(findings(with_vex)) == {k for k in flagged if k[0] in unfixed_ids}
    suppressed = modified(with_vex)
    assert set(suppressed) == {k for k in flagged if k[0] in fixed_ids}
    assert {(m["Status"], m["Source"]) for m in suppressed.values()} == {("fixed", str(vex_path))}
    # The statements name the patched image: the original keeps every finding.
    orig_vex = trivy.scan(stale_db, f"{repo}:orig", tmp / "orig-vex.json",
                          "--vex", str(vex_path), "--show-suppressed")
    assert set(findings(orig_vex)) == applicable(stale_advisories)
    assert not modified(orig_vex)
    return dict(platform)


@pytest.mark.network
@pytest.mark.tools
def test_trivy_finds_patches_and_accepts_vex_debian(
        tmp_path: Path, registry: RegistryServer, bookworm_openssl_rootfs: Path,
        trivy_db: WriteDb) -> None:
    trivy = Trivy(peer("trivy"), tmp_path / "home")
    (tmp_path / "work").mkdir()
    image = image_from_layers([bookworm_openssl_rootfs], AMD64, tmp_path / "work")
    repo = f"{registry.host}/bookworm"
    write_artifact(image, f"{repo}:orig", Options(registry.options()))
    packages = list(installed(image).values())

    fixes = [f for f in debian_security_fixes(packages, "bookworm") if f.cves]
    assert fixes, "bookworm-security upgrades nothing with a CVE in this image"
    advisories = [*debian_advisories(fixes, "12"), UNFIXED]
    platform = patch_loop(tmp_path, trivy, trivy_db, registry, repo, advisories,
                          lambda advs: affected(packages, advs),
                          {p.name: p.version for p in packages})

    patched = open_artifact(f"{repo}:patched", Options(registry.options()))
    assert isinstance(patched, Image) and patched.digest == platform["digest"]
    now = installed(patched)
    for fix in fixes:
        for name in fix.binaries:
            assert compare_versions(now[name].source_version, fix.fixed) >= 0, now[name]


ALPINE_URL = "https://dl-cdn.alpinelinux.org/alpine/v3.20/main"
MUSL = ApkSpec("musl", "1.2.5-r0", origin="musl", files={
    "lib/ld-musl-x86_64.so.1": ApkFile(b"musl 1\n", 0o755)},
    provides=["so:libc.musl-x86_64.so.1=1"])
LIBCRYPTO = ApkSpec("libcrypto3", "3.3.2-r0", origin="openssl", files={
    "usr/lib/libcrypto.so.3": b"crypto 1\n"}, provides=["so:libcrypto.so.3=3"],
    depends=["so:libc.musl-x86_64.so.1"])
LIBSSL = ApkSpec("libssl3", "3.3.2-r0", origin="openssl", files={
    "usr/lib/libssl.so.3": b"ssl 1\n"}, provides=["so:libssl.so.3=3"],
    depends=["so:libcrypto.so.3", "so:libc.musl-x86_64.so.1"])
ZLIB = ApkSpec("zlib", "1.3.1-r0", origin="zlib", files={"usr/lib/libz.so.1": b"zlib\n"},
               provides=["so:libz.so.1=1"])


def test_trivy_finds_patches_and_accepts_vex_alpine(
        tmp_path: Path, registry: RegistryServer, apk_repo_server: ApkRepoServer,
        apk_keys: ApkKeys, trivy_db: WriteDb) -> None:
    """The same loop on an Alpine image whose repository is served on loopback: Trivy
    looks advisories up by origin (``openssl`` for ``libcrypto3`` and ``libssl3``) in
    the ``alpine 3.20`` bucket its ``/etc/apk/repositories`` line names."""
    trivy = Trivy(peer("trivy"), tmp_path / "home")
    key = apk_keys.good
    installed_specs = [MUSL, LIBCRYPTO, LIBSSL, ZLIB]
    newer = [MUSL.with_(version="1.2.5-r1", files={
                 "lib/ld-musl-x86_64.so.1": ApkFile(b"musl 2\n", 0o755)}),
             LIBCRYPTO.with_(version="3.3.2-r1", files={"usr/lib/libcrypto.so.3": b"crypto 2\n"}),
             LIBSSL.with_(version="3.3.2-r1", files={"usr/lib/libssl.so.3": b"ssl 2\n"})]
    apk_repo_server.publish([*installed_specs, *newer], key, path="main")
    built = [build_apk(s, key, tmp_path / "v1") for s in installed_specs]
    repo = f"{registry.host}/alpine"
    write_artifact(apk_image(built, [ALPINE_URL], key, flavor="alpine"), f"{repo}:orig",
                   Options(registry.options()))
    advisories = [
        Advisory("alpine 3.20", "musl", "CVE-2025-26519", "1.2.5-r1", source="alpine"),
        Advisory("alpine 3.20", "openssl", "CVE-2024-9143", "3.3.2-r1", source="alpine"),
        Advisory("alpine 3.20", "zlib", "CVE-2023-45853", "", source="alpine"),
    ]

    def applicable(advs: list[Advisory]) -> set[tuple[str, str]]:
        return {(a.id, s.name) for a in advs for s in installed_specs
                if (s.origin or s.name) == a.package and (
                    not a.fixed_version or apk_version_compare(s.version, a.fixed_version) < 0)}

    platform = patch_loop(tmp_path, trivy, trivy_db, registry, repo, advisories, applicable,
                          {s.name: s.version for s in installed_specs},
                          "--mirror", f"{ALPINE_URL}={apk_repo_server.sub('main')}",
                          "--sandbox", "none")
    assert {(u["name"], u["to"]) for u in platform["updates"]} == {
        (s.name, s.version) for s in newer}


def test_trivy_accepts_vex_for_a_two_platform_index(
        tmp_path: Path, registry: RegistryServer, apk_repo_server: ApkRepoServer,
        apk_keys: ApkKeys, trivy_db: WriteDb) -> None:
    """A two-platform Alpine index, one Trivy report per platform (``--platform``) in a
    directory driving one ``suture patch -r DIR``. Trivy scanning the patched index by
    tag names it by the index digest (suture's index product), by a platform's manifest
    digest names it by that (the platform's product): ``--vex`` suppresses the fixed
    findings both ways, and none in the original index."""
    trivy = Trivy(peer("trivy"), tmp_path / "home")
    key = apk_keys.good
    arches = {"amd64": "x86_64", "arm64": "aarch64"}
    specs = {a: [s.with_(arch=arch) for s in (MUSL, LIBCRYPTO, LIBSSL, ZLIB)]
             for a, arch in arches.items()}
    images = []
    for a, arch in arches.items():
        newer = [s.with_(version=s.version.replace("-r0", "-r1")) for s in specs[a][:3]]
        apk_repo_server.publish([*specs[a], *newer], key, path="main", arch=arch)
        built = [build_apk(s, key, tmp_path / a) for s in specs[a]]
        images.append(apk_image(built, [ALPINE_URL], key, flavor="alpine", arch=arch))
    repo = f"{registry.host}/multi"
    write_artifact(make_index(*images), f"{repo}:orig", Options(registry.options()))
    advisories = [
        Advisory("alpine 3.20", "musl", "CVE-2025-26519", "1.2.5-r1", source="alpine"),
        Advisory("alpine 3.20", "openssl", "CVE-2024-9143", "3.3.2-r1", source="alpine"),
        Advisory("alpine 3.20", "zlib", "CVE-2023-45853", "", source="alpine"),
    ]
    fixed_ids = {"CVE-2025-26519", "CVE-2024-9143"}
    every = {(a.id, s.name) for a in advisories for s in specs["amd64"]
             if (s.origin or s.name) == a.package}
    db = trivy_db(tmp_path / "db-current", advisories)
    reports = tmp_path / "reports"
    reports.mkdir()
    for a in arches:
        found = findings(trivy.scan(db, f"{repo}:orig", reports / f"{a}.json",
                                    "--platform", f"linux/{a}"))
        assert set(found) == every

    vex_path, result_path = tmp_path / "suture.vex.json", tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "suture", "patch", "-i", f"{repo}:orig", "-r", str(reports),
         "--dest", f"{repo}:patched", "--insecure-registry", registry.host,
         "-o", str(vex_path), "--result", str(result_path), "--sandbox", "none",
         "--mirror", f"{ALPINE_URL}={apk_repo_server.sub('main')}"],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(result_path.read_text())
    assert [p["status"] for p in result["platforms"]] == ["patched", "patched"]
    manifests = {p["platform"].split("/")[1]: p["digest"] for p in result["platforms"]}

    stale_db = trivy_db(tmp_path / "db-stale",
                        [replace(a, fixed_version="") for a in advisories])
    for a in arches:
        for ref in (f"{repo}:patched", f"{repo}@{manifests[a]}"):
            out = tmp_path / f"vex-{a}-{len(list(tmp_path.glob('vex-*')))}.json"
            report = trivy.scan(stale_db, ref, out, "--platform", f"linux/{a}",
                                "--vex", str(vex_path), "--show-suppressed")
            assert set(findings(report)) == {k for k in every if k[0] not in fixed_ids}, ref
            assert set(modified(report)) == {k for k in every if k[0] in fixed_ids}, ref
        original = trivy.scan(stale_db, f"{repo}:orig", tmp_path / f"orig-{a}.json",
                              "--platform", f"linux/{a}", "--vex", str(vex_path))
        assert set(findings(original)) == every


@pytest.fixture(scope="module")
def rocky_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RpmWorld]:
    """:func:`tests.fixtures.rpmrepo.rpm_world`'s packages and repositories, built with
    the vendor Rocky Linux's packages carry: Trivy scans only packages whose vendor is
    the distribution's (others are third-party, which the OS advisories do not cover)."""
    if not rpmrepo.have_tools():
        pytest.skip("needs rpm, rpmbuild, rpmsign, gpg, createrepo_c and busybox-static")
    tmp = tmp_path_factory.mktemp("rockyworld")
    key = make_gpg_key(tmp / "gnupg", "sut@suture.test")
    other = make_gpg_key(tmp / "gnupg-other", "other@suture.test")
    vendor = {"vendor": "Rocky Enterprise Software Foundation"}
    with ServedDirectory(tmp / "served") as server:
        world = RpmWorld(tmp, key, other, server)
        out = tmp / "pkgs"
        built = [*build_rpm(rpmrepo._SH_SPEC, out, arch="x86_64", defines=vendor),
                 *build_rpm(rpmrepo._RENAMED_SPEC, out, arch="x86_64", defines=vendor)]
        for version in ("0.9", "1.0", "2.0"):
            built += build_rpm(rpmrepo._lib_spec(version), out, arch="x86_64", defines=vendor)
            built += build_rpm(rpmrepo._prog_spec(version), out, arch="x86_64", defines=vendor)
        built += build_rpm(rpmrepo._release_spec("9"), out, defines=vendor)
        sign_rpms(built, key)
        world.packages = {p.name: p for p in built}
        rpmrepo._publish(world)
        yield world


def test_trivy_finds_patches_and_accepts_vex_rocky(
        tmp_path: Path, registry: RegistryServer, rocky_world: RpmWorld, trivy_db: WriteDb
) -> None:
    """The loop on a Rocky Linux 9 image (rpm packages built by rpmbuild, a signed
    repository on loopback): Trivy looks advisories up by binary package in the
    ``rocky 9`` bucket and reports no unfixed ones, so the stale database says a later
    release (``-2``) fixes it; suture's rpm purls are Trivy's."""
    trivy = Trivy(peer("trivy"), tmp_path / "home")
    ref, _root = rocky_world.image(tmp_path, "rocky")
    repo = f"{registry.host}/rocky"
    write_artifact(open_artifact(ref), f"{repo}:orig", Options(registry.options()))
    installed_rpms = {"libsut": "1.0-1", "sutprog": "1.0-1", "sut-sh": "1.0-1",
                      "sut-release": "9-1"}
    advisories = [Advisory("rocky 9", "libsut", "CVE-2024-31337", "2.0-1", source="rocky")]

    def applicable(advs: list[Advisory]) -> set[tuple[str, str]]:
        return {(a.id, a.package) for a in advs
                if rpm_version_less(installed_rpms[a.package], a.fixed_version)}

    platform = patch_loop(tmp_path, trivy, trivy_db, registry, repo, advisories, applicable,
                          installed_rpms, "--mirror", rocky_world.mirror(),
                          "--allow-private-repos", "127.0.0.1", "--sandbox", "none",
                          stale=lambda a: replace(a, fixed_version="2.0-2"))
    assert {(u["name"], u["to"]) for u in platform["updates"]} >= {("libsut", "2.0-1")}


def rpm_version_less(a: str, b: str) -> bool:
    """``a`` sorts before ``b`` by rpm's own comparison (the host's rpm, ``rpm.vercmp``)."""
    proc = subprocess.run(["rpm", "--eval", f"%{{lua: print(rpm.vercmp('{a}', '{b}'))}}"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout.strip()) < 0
