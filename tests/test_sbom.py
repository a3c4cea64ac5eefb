"""SBOMs of patched images (``--sbom``, ``--source-sbom``): every package of the patched
package database with the purls Trivy writes, versions after the patch, the hashes of
the installed package files, the image digest as the described component; valid
against the official CycloneDX 1.6 and SPDX 2.3 schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.patchimages import open_image, versions
from tests.fixtures.supplychain import ChainScene, validate_cyclonedx, validate_spdx

pytestmark = pytest.mark.tools

PURL = "pkg:deb/debian/{}@{}?arch=amd64&distro=debian-12"


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
