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
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from suture.devtools.debian_image import image_from_layers
from suture.distro.dpkg.control import InstalledPackage
from suture.distro.dpkg.version import compare_versions
from suture.oci.image import Image
from suture.oci.model import Platform
from suture.transports import Options, open_artifact, write_artifact
from tests.fixtures.patchimages import installed
from tests.fixtures.registry import RegistryServer
from tests.fixtures.trivydb import Advisory, debian_advisories, debian_security_fixes

pytestmark = [pytest.mark.network, pytest.mark.tools]

AMD64 = Platform.parse("linux/amd64")
ROOT = Path(__file__).resolve().parents[1]
# coreutils' chroot --userspec TIOCSTI issue: Debian never fixed it (no-dsa, ignored).
UNFIXED = Advisory("debian 12", "coreutils", "CVE-2016-2781", "", severity="LOW",
                   title="chroot --userspec can escape to the parent session")

WriteDb = Callable[[Path, Iterable[Advisory]], Path]


def trivy_binary() -> Path:
    """Trivy v0.74.0 from ``scripts/peers`` (built now when this machine has none).
    Trivy's own release build sets GOEXPERIMENT=jsonv2 (it imports encoding/json/v2)."""
    if shutil.which("go") is None:
        pytest.skip("no Go toolchain (go) on PATH")
    peers = ROOT / "scripts" / "peers"
    path = Path(subprocess.run([str(peers), "--path", "trivy"], capture_output=True, text=True,
                               check=True).stdout.strip())
    if not path.is_file():
        env = {**os.environ, "GOEXPERIMENT": "jsonv2"}
        proc = subprocess.run([str(peers), "trivy"], capture_output=True, text=True, env=env,
                              timeout=3600)
        assert proc.returncode == 0 and path.is_file(), proc.stderr
    return path


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


def test_trivy_finds_patches_and_accepts_vex_debian(
        tmp_path: Path, registry: RegistryServer, bookworm_openssl_rootfs: Path,
        trivy_db: WriteDb) -> None:
    trivy = Trivy(trivy_binary(), tmp_path / "home")
    (tmp_path / "work").mkdir()
    image = image_from_layers([bookworm_openssl_rootfs], AMD64, tmp_path / "work")
    repo = f"{registry.host}/bookworm"
    write_artifact(image, f"{repo}:orig", Options(registry.options()))
    packages = list(installed(image).values())

    fixes = [f for f in debian_security_fixes(packages, "bookworm") if f.cves]
    assert fixes, "bookworm-security upgrades nothing with a CVE in this image"
    advisories = [*debian_advisories(fixes, "12"), UNFIXED]
    fixed_ids = {a.id for a in advisories if a.fixed_version}
    db = trivy_db(tmp_path / "db-current", advisories)

    # Trivy on the original: exactly the advisories that apply, at the archive's versions.
    report_path = tmp_path / "orig.json"
    before = findings(trivy.scan(db, f"{repo}:orig", report_path))
    expected = affected(packages, advisories)
    assert set(before) == expected
    by_name = {p.name: p for p in packages}
    fixed_in = {a.id: a.fixed_version for a in advisories}
    for (vid, name), finding in before.items():
        assert finding["InstalledVersion"] == by_name[name].version, finding
        assert finding.get("FixedVersion", "") == fixed_in[vid], finding

    # The report drives the patch; the VEX names what it fixed.
    vex_path, result_path = tmp_path / "suture.vex.json", tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "suture", "patch", "-i", f"{repo}:orig", "-r", str(report_path),
         "--dest", f"{repo}:patched", "--insecure-registry", registry.host,
         "-o", str(vex_path), "--result", str(result_path)],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(result_path.read_text())
    [platform] = result["platforms"]
    assert platform["status"] == "patched", platform
    patched = open_artifact(f"{repo}:patched", Options(registry.options()))
    assert isinstance(patched, Image) and patched.digest == platform["digest"]
    now = installed(patched)
    for fix in fixes:
        for name in fix.binaries:
            assert compare_versions(now[name].source_version, fix.fixed) >= 0, now[name]
    vex = json.loads(vex_path.read_text())
    assert {s["vulnerability"]["name"] for s in vex["statements"]} == fixed_ids

    # Trivy on the patched image: none of the fixed ones; the unfixed one stays.
    after = findings(trivy.scan(db, f"{repo}:patched", tmp_path / "patched.json"))
    assert set(after) == {k for k in expected if k[0] == UNFIXED.id}

    # A database that does not know the fixes yet flags them in the patched image too...
    stale = [Advisory(a.platform, a.package, a.id, "", title=a.title) for a in advisories]
    stale_db = trivy_db(tmp_path / "db-stale", stale)
    flagged = findings(trivy.scan(stale_db, f"{repo}:patched", tmp_path / "stale.json"))
    assert set(flagged) == affected(packages, stale)
    # ... and suture's VEX suppresses exactly the fixed ones, recorded as fixed by it.
    with_vex = trivy.scan(stale_db, f"{repo}:patched", tmp_path / "stale-vex.json",
                          "--vex", str(vex_path), "--show-suppressed")
    assert set(findings(with_vex)) == {k for k in flagged if k[0] not in fixed_ids}
    suppressed = modified(with_vex)
    assert set(suppressed) == {k for k in flagged if k[0] in fixed_ids}
    assert {(m["Status"], m["Source"]) for m in suppressed.values()} == {("fixed", str(vex_path))}
    # The statements name the patched image: the original keeps every finding.
    orig_vex = trivy.scan(stale_db, f"{repo}:orig", tmp_path / "orig-vex.json",
                          "--vex", str(vex_path), "--show-suppressed")
    assert set(findings(orig_vex)) == affected(packages, stale)
    assert not modified(orig_vex)
