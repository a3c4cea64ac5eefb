"""SBOMs of patched images (``--sbom``, ``--source-sbom``): every package of the patched
package database with the purls Trivy writes, versions after the patch, the hashes of
the installed package files, the image digest as the described component; valid
against the official CycloneDX 1.6 and SPDX 2.3 schemas."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.apkrepo import ApkKeys, ApkRepoServer, ApkSpec, apk_image, build_apk, write_oci
from tests.fixtures.patchimages import open_image, suture, versions, write_image
from tests.fixtures.peers import peer
from tests.fixtures.rpmrepo import RpmWorld
from tests.fixtures.supplychain import ChainScene, validate_cyclonedx, validate_spdx
from tests.fixtures.trivydb import Advisory

ALPINE_URL = "https://dl-cdn.alpinelinux.org/alpine/v3.20/main"
#: The release file Trivy knows each rpm family by (the release package ships it).
RELEASE_FILES = {"rhel": ("etc/redhat-release", "Red Hat Enterprise Linux release 9.4 (Plow)\n"),
                 "fedora": ("etc/fedora-release", "Fedora release 40 (Forty)\n")}

pytestmark = pytest.mark.tools

# distro: the point release of /etc/debian_version, as Syft and Trivy write it.
PURL = "pkg:deb/debian/{}@{}?arch=amd64&distro=debian-12.8"


def _patched(scene: ChainScene, *args: str) -> tuple[str, str]:
    dest = f"oci:{scene.tmp}/out:v1-patched"
    proc = scene.patch(scene.source, "-t", dest, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dest, open_image(dest).digest


def test_cyclonedx_lists_every_package_after_the_patch(chain_scene: ChainScene,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "bom.json"
    dest, digest = _patched(chain_scene, "--sbom", f"cyclonedx={out}")
    doc = json.loads(out.read_text())
    validate_cyclonedx(doc)
    assert doc["specVersion"] == "1.6"
    meta = doc["metadata"]["component"]
    assert meta["type"] == "container" and meta["version"] == digest
    assert meta["purl"].startswith("pkg:oci/out@sha256%3A" + digest.split(":")[1])
    libs = {c["name"]: c for c in doc["components"] if c["type"] == "library"}
    assert versions(open_image(dest)) == {n: c["version"] for n, c in libs.items()}
    assert {n: c["version"] for n, c in libs.items()} == {"a": "2.0-1", "b": "1.0-1",
                                                          "c": "2.0-1"}
    assert libs["a"]["purl"] == PURL.format("a", "2.0-1")
    assert libs["a"]["hashes"] == [{"alg": "SHA-256", "content": chain_scene.sha256("a")}]
    assert libs["c"]["hashes"] == [{"alg": "SHA-256", "content": chain_scene.sha256("c")}]
    assert "hashes" not in libs["b"]  # not installed by suture: no package file hash known
    [os_component] = [c for c in doc["components"] if c["type"] == "operating-system"]
    assert (os_component["name"], os_component["version"]) == ("debian", "12")
    [dep] = doc["dependencies"]
    assert dep["ref"] == meta["bom-ref"] and set(dep["dependsOn"]) >= {
        c["bom-ref"] for c in libs.values()}


def test_spdx_lists_every_package_after_the_patch(chain_scene: ChainScene,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "spdx.json"
    _dest, digest = _patched(chain_scene, "--sbom", f"spdx={out}")
    doc = json.loads(out.read_text())
    validate_spdx(doc)
    assert doc["spdxVersion"] == "SPDX-2.3"
    packages = {p["name"]: p for p in doc["packages"]}
    image = next(p for p in doc["packages"] if p["SPDXID"] == "SPDXRef-Image")
    assert image["versionInfo"] == digest
    assert {"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
            "relatedSpdxElement": "SPDXRef-Image"} in doc["relationships"]
    assert packages["a"]["versionInfo"] == "2.0-1"
    assert packages["a"]["externalRefs"][0]["referenceLocator"] == PURL.format("a", "2.0-1")
    assert packages["a"]["checksums"] == [{"algorithm": "SHA256",
                                           "checksumValue": chain_scene.sha256("a")}]
    contained = {r["relatedSpdxElement"] for r in doc["relationships"]
                 if r["relationshipType"] == "CONTAINS"}
    assert contained == {packages[n]["SPDXID"] for n in ("a", "b", "c")}


def test_a_source_sbom_is_updated_not_replaced(chain_scene: ChainScene,
                                               tmp_path: Path) -> None:
    """A CycloneDX SBOM of the source written by another tool (with its own fields, an
    epoch-free purl style and a component suture does not know) is updated: a's version,
    purl and hash; c added; everything else kept."""
    source: dict[str, Any] = {
        "bomFormat": "CycloneDX", "specVersion": "1.6", "version": 3,
        "serialNumber": "urn:uuid:11111111-2222-3333-4444-555555555555",
        "metadata": {"timestamp": "2024-01-01T00:00:00Z",
                     "tools": {"components": [{"type": "application", "name": "syft",
                                               "version": "1.0.0"}]},
                     "component": {"bom-ref": "image", "type": "container", "name": "v1",
                                   "version": "sha256:" + "0" * 64}},
        "components": [
            {"bom-ref": "a-ref", "type": "library", "name": "a", "version": "1.0-1",
             "purl": "pkg:deb/debian/a@1.0-1?arch=amd64&distro=debian-12",
             "properties": [{"name": "syft:package:foundBy", "value": "dpkg-db-cataloger"}]},
            {"bom-ref": "b-ref", "type": "library", "name": "b", "version": "1.0-1",
             "purl": "pkg:deb/debian/b@1.0-1?arch=amd64&distro=debian-12"},
            {"bom-ref": "file-1", "type": "file", "name": "/etc/motd"},
        ],
        "dependencies": [{"ref": "image", "dependsOn": ["a-ref", "b-ref"]}],
    }
    given = tmp_path / "source-bom.json"
    given.write_text(json.dumps(source))
    out = tmp_path / "bom.json"
    _dest, digest = _patched(chain_scene, "--source-sbom", str(given), "--sbom", f"cyclonedx={out}")
    doc = json.loads(out.read_text())
    validate_cyclonedx(doc)
    by_name = {c["name"]: c for c in doc["components"]}
    assert by_name["a"]["bom-ref"] == "a-ref" and by_name["a"]["version"] == "2.0-1"
    assert by_name["a"]["purl"] == "pkg:deb/debian/a@2.0-1?arch=amd64&distro=debian-12"
    assert by_name["a"]["properties"] == source["components"][0]["properties"]
    assert by_name["a"]["hashes"] == [{"alg": "SHA-256", "content": chain_scene.sha256("a")}]
    assert by_name["b"] == source["components"][1]
    assert by_name["/etc/motd"] == source["components"][2]
    assert by_name["c"]["version"] == "2.0-1"
    assert doc["metadata"]["component"]["version"] == digest
    assert doc["version"] == 4
    assert [t["name"] for t in doc["metadata"]["tools"]["components"]] == ["syft", "suture"]
    assert doc["dependencies"][0]["ref"] == doc["metadata"]["component"]["bom-ref"]


# ---------------------------------------------------------------- the scanners as judges


def _scanner_env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "SYFT_CHECK_FOR_APP_UPDATE": "false", "HOME": str(tmp),
            "SYFT_CACHE_DIR": str(tmp / "syft-cache"), "TRIVY_DISABLE_VEX_NOTICE": "true"}


def syft_purls(layout: Path, tmp: Path) -> set[str]:
    proc = subprocess.run([str(peer("syft")), "scan", f"oci-dir:{layout}", "-o",
                           "cyclonedx-json", "-q"], capture_output=True, text=True,
                          env=_scanner_env(tmp), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return {c["purl"] for c in json.loads(proc.stdout)["components"]
            if c.get("purl", "").startswith(("pkg:deb/", "pkg:apk/", "pkg:rpm/"))}


def trivy_purls(layout: Path, tmp: Path) -> set[str]:
    proc = subprocess.run([str(peer("trivy")), "image", "--input", str(layout), "--format",
                           "cyclonedx", "--cache-dir", str(tmp / "trivy-cache"),
                           "--skip-db-update", "--offline-scan", "--skip-version-check",
                           "--disable-telemetry", "--quiet"], capture_output=True, text=True,
                          env=_scanner_env(tmp), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return {c["purl"] for c in json.loads(proc.stdout).get("components", [])
            if c.get("purl", "").startswith(("pkg:deb/", "pkg:apk/", "pkg:rpm/"))}


def without_distro(purls: set[str]) -> set[str]:
    """The purls without their ``distro`` qualifier: for apk packages Trivy writes the
    bare version (``3.20.3``), Syft ``alpine-3.20.3``; suture's SBOMs write Syft's."""
    out = set()
    for purl in purls:
        head, _, query = purl.partition("?")
        kept = [q for q in query.split("&") if not q.startswith("distro=")]
        out.add(head + ("?" + "&".join(kept) if kept else ""))
    return out


def _sbom_purls(doc: dict[str, Any]) -> set[str]:
    return {c["purl"] for c in doc["components"] if c["type"] == "library"}


def _syft_reads_back(file: Path, tmp: Path) -> set[tuple[str, str]]:
    """``syft convert``: the packages Syft decodes from one of suture's SBOMs."""
    proc = subprocess.run([str(peer("syft")), "convert", str(file), "-o", "syft-json", "-q"],
                          capture_output=True, text=True, env=_scanner_env(tmp), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return {(a["name"], a["version"]) for a in json.loads(proc.stdout)["artifacts"]}


def test_deb_purls_are_syfts_and_trivys_and_syft_reads_both_formats(
        chain_scene: ChainScene, tmp_path: Path) -> None:
    cdx, spdx = tmp_path / "bom.json", tmp_path / "spdx.json"
    dest, _digest = _patched(chain_scene, "--sbom", f"cyclonedx={cdx}")
    proc = chain_scene.patch(chain_scene.source, "-t", dest, "--sbom", f"spdx={spdx}")
    assert proc.returncode == 0, proc.stderr
    ours = _sbom_purls(json.loads(cdx.read_text()))
    layout = Path(dest.removeprefix("oci:").rsplit(":", 1)[0])
    assert ours == syft_purls(layout, tmp_path)
    assert ours == trivy_purls(layout, tmp_path)
    want = {("a", "2.0-1"), ("b", "1.0-1"), ("c", "2.0-1")}
    assert _syft_reads_back(cdx, tmp_path) >= want
    assert _syft_reads_back(spdx, tmp_path) >= want


MUSL1 = ApkSpec("musl", "1.2.5-r0", files={"lib/ld-musl-x86_64.so.1": b"musl 1\n"},
                provides=["so:libc.musl-x86_64.so.1=1"])
MUSL2 = ApkSpec("musl", "1.2.5-r1", files={"lib/ld-musl-x86_64.so.1": b"musl 2\n"},
                provides=["so:libc.musl-x86_64.so.1=1"])
ZLIB = ApkSpec("zlib", "1.3.1-r0", files={"usr/lib/libz.so.1": b"z\n"},
               provides=["so:libz.so.1=1"])


def test_apk_sbom(tmp_path: Path, apk_repo_server: ApkRepoServer, apk_keys: ApkKeys) -> None:
    key = apk_keys.good
    apk_repo_server.publish([MUSL1, MUSL2, ZLIB], key, path="main")
    v1 = [build_apk(p, key, tmp_path / "v1") for p in (MUSL1, ZLIB)]
    ref = write_oci(apk_image(v1, [ALPINE_URL], key, flavor="alpine"), tmp_path / "layout",
                    "v1")
    out, layout = tmp_path / "bom.json", tmp_path / "patched"
    proc = suture("patch", "-i", ref, "--dest", f"oci:{layout}:patched", "--cache-dir",
                  str(tmp_path / "cache"), "--progress", "quiet", "--mirror",
                  f"{ALPINE_URL}={apk_repo_server.sub('main')}", "--allow-private-repos",
                  "127.0.0.1", "--sandbox", "none", "--sbom", f"cyclonedx={out}")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    validate_cyclonedx(doc)
    libs = {c["name"]: c for c in doc["components"] if c["type"] == "library"}
    assert {n: c["version"] for n, c in libs.items()} == {"musl": "1.2.5-r1",
                                                          "zlib": "1.3.1-r0"}
    # apk indexes name packages by SHA-1 (Q1) only: the SBOM gives the download URI.
    assert libs["musl"]["externalReferences"] == [
        {"type": "distribution", "url": apk_repo_server.sub("main") + "/musl-1.2.5-r1.apk"}]
    assert "externalReferences" not in libs["zlib"]
    assert _sbom_purls(doc) == syft_purls(layout, tmp_path)
    assert without_distro(_sbom_purls(doc)) == without_distro(trivy_purls(layout, tmp_path))


@pytest.mark.parametrize("family", ["rhel", "fedora"])
def test_rpm_sbom(rpm_world: RpmWorld, tmp_path: Path, family: str) -> None:
    root = rpm_world.make_root(tmp_path / "root", family)
    path, text = RELEASE_FILES[family]
    (root / path).write_text(text)
    ref = write_image(root, tmp_path, "v1")
    out, layout = tmp_path / "spdx.json", tmp_path / "patched"
    proc = suture("patch", "-i", ref, "--dest", f"oci:{layout}:patched", "--cache-dir",
                  str(tmp_path / "cache"), "--progress", "quiet", "--mirror",
                  rpm_world.mirror(), "--allow-private-repos", "127.0.0.1", "--sandbox",
                  "auto", "--sbom", f"spdx={out}")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    validate_spdx(doc)
    packages = {p["name"]: p for p in doc["packages"] if p["SPDXID"] != "SPDXRef-Image"}
    assert packages["libsut"]["versionInfo"] == "2.0-1"
    assert packages["libsut"]["checksums"][0]["algorithm"] == "SHA256"
    ours = {r["referenceLocator"] for p in packages.values() for r in p["externalRefs"]}
    # rpm purls are Trivy's own form; the gpg-pubkey headers of imported keys Trivy lists
    # (with arch=None) are keys, not software: suture's SBOM leaves them out.
    assert ours == {p for p in trivy_purls(layout, tmp_path) if "/gpg-pubkey@" not in p}


def test_a_source_spdx_sbom_is_updated(chain_scene: ChainScene, tmp_path: Path) -> None:
    source: dict[str, Any] = {
        "spdxVersion": "SPDX-2.3", "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT",
        "name": "app", "documentNamespace": "https://example.invalid/app-1",
        "creationInfo": {"created": "2024-01-01T00:00:00Z", "creators": ["Tool: syft-1.0"]},
        "packages": [
            {"SPDXID": "SPDXRef-img", "name": "app", "versionInfo": "sha256:" + "0" * 64,
             "downloadLocation": "NOASSERTION"},
            {"SPDXID": "SPDXRef-a", "name": "a", "versionInfo": "1.0-1",
             "downloadLocation": "NOASSERTION", "licenseConcluded": "MIT",
             "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER",
                               "referenceType": "purl", "referenceLocator":
                               "pkg:deb/debian/a@1.0-1?arch=amd64&distro=debian-12.8"}]},
            {"SPDXID": "SPDXRef-b", "name": "b", "versionInfo": "1.0-1",
             "downloadLocation": "NOASSERTION"}],
        "relationships": [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                           "relatedSpdxElement": "SPDXRef-img"}],
    }
    given, out = tmp_path / "source.spdx.json", tmp_path / "spdx.json"
    given.write_text(json.dumps(source))
    _dest, digest = _patched(chain_scene, "--source-sbom", str(given), "--sbom", f"spdx={out}")
    doc = json.loads(out.read_text())
    validate_spdx(doc)
    by_name = {p["name"]: p for p in doc["packages"]}
    assert by_name["a"]["versionInfo"] == "2.0-1" and by_name["a"]["licenseConcluded"] == "MIT"
    assert by_name["a"]["externalRefs"][0]["referenceLocator"] == PURL.format("a", "2.0-1")
    assert by_name["a"]["checksums"] == [{"algorithm": "SHA256",
                                          "checksumValue": chain_scene.sha256("a")}]
    assert by_name["b"] == source["packages"][2]
    assert by_name["app"]["versionInfo"] == digest
    assert by_name["c"]["versionInfo"] == "2.0-1"
    assert {"spdxElementId": "SPDXRef-img", "relationshipType": "CONTAINS",
            "relatedSpdxElement": by_name["c"]["SPDXID"]} in doc["relationships"]
    assert doc["creationInfo"]["creators"] == ["Tool: syft-1.0", "Tool: suture-0.1.0"]


def test_a_source_sbom_that_is_not_one_fails_before_anything_is_written(
        chain_scene: ChainScene, tmp_path: Path) -> None:
    given = tmp_path / "bad.json"
    given.write_text('{"hello": "world"}')
    dest = tmp_path / "out"
    proc = chain_scene.patch(chain_scene.source, "-t", f"oci:{dest}:v1-patched",
                             "--source-sbom", str(given), "--sbom", "cyclonedx")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"suture: error: --source-sbom {given}: the source SBOM is neither CycloneDX nor "
        "SPDX 2 JSON")
    assert not dest.exists()


def test_trivy_scans_the_sbom(chain_scene: ChainScene, tmp_path: Path,
                              trivy_db: Callable[[Path, list[Advisory]], Path]) -> None:
    """``trivy sbom`` over suture's CycloneDX SBOM, with a database where a is fixed in
    2.0-1 (the patch installed it) and b in 2.0-1 (the archive has no fix): Trivy reads
    the OS and the packages at their patched versions and finds only b's."""
    out = tmp_path / "bom.json"
    _patched(chain_scene, "--sbom", f"cyclonedx={out}")
    cache = trivy_db(tmp_path / "trivy-cache", [
        Advisory("debian 12", "a", "CVE-2024-1111", "2.0-1"),
        Advisory("debian 12", "b", "CVE-2024-2222", "2.0-1")])
    proc = subprocess.run([str(peer("trivy")), "sbom", "--format", "json", "--cache-dir",
                           str(cache), "--skip-db-update", "--offline-scan",
                           "--skip-version-check", "--disable-telemetry", "--quiet", str(out)],
                          capture_output=True, text=True, env=_scanner_env(tmp_path),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["Metadata"]["OS"]["Family"] == "debian"
    found = {(v["PkgName"], v["InstalledVersion"], v["VulnerabilityID"])
             for r in report.get("Results", []) for v in r.get("Vulnerabilities") or []}
    assert found == {("b", "1.0-1", "CVE-2024-2222")}
