"""``--attach``: the VEX, SBOM and provenance of a patched image as OCI 1.1 artifacts
whose ``subject`` is the patched manifest, found again by the referrers API, by the
fallback tag, or in an OCI layout's ``index.json``; oras reads them back; a second
run keeps what another tool attached; ``--copy-source-referrers`` and the source's
SBOM found as a referrer of the source digest.

The real docker-registry 2.8 has no referrers API (``GET /v2/<name>/referrers/<digest>``
answers 404): it exercises the ``sha256-<hex>`` fallback tag schema. The in-test
registry (tests/fixtures/supplychain.py) has the API and answers ``OCI-Subject``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fixtures.peers import peer
from tests.fixtures.registry import RegistryServer
from tests.fixtures.supplychain import (
    ChainScene,
    ReferrersRegistry,
    validate_cyclonedx,
    validate_provenance,
)

pytestmark = pytest.mark.tools

INDEX = "application/vnd.oci.image.index.v1+json"
CDX = "application/vnd.cyclonedx+json"
VEX = "application/vnd.openvex+json"
INTOTO = "application/vnd.in-toto+json"
SOURCE_DATE_EPOCH = "1700000000"


def _env() -> dict[str, str]:
    return {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}


def _push_source(scene: ChainScene, host: str) -> tuple[str, str]:
    """The scene's image pushed to ``host``/app:v1; its reference and digest."""
    ref = f"docker://{host}/app:v1"
    proc = subprocess.run([sys.executable, "-m", "suture", "copy",
                           scene.source, ref], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return ref, proc.stdout.split()[-1]


def _patch(scene: ChainScene, ref: str, *args: str) -> tuple[str, list[str]]:
    """Patch with --attach; the patched digest and the 'attached ...' lines."""
    cmd = [sys.executable, "-m", "suture", "patch", "-i", ref, "--cache-dir",
           str(scene.tmp / "cache"), "--no-host-keyrings", *scene.archive.mirror_args(),
           "--progress", "quiet", "--attach", "--sbom", "cyclonedx", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [wrote] = [line for line in proc.stdout.splitlines() if line.startswith("wrote ")]
    return wrote.split()[-1], [line for line in proc.stdout.splitlines()
                               if line.startswith("attached ")]


def _get(host: str, path: str, accept: str = INDEX) -> requests.Response:
    return requests.get(f"http://{host}{path}", headers={"Accept": accept}, timeout=30)


def _blob_json(host: str, repo: str, digest: str) -> Any:
    resp = _get(host, f"/v2/{repo}/blobs/{digest}", "*/*")
    assert resp.status_code == 200
    return resp.json()


def _documents(host: str, repo: str, descriptors: list[dict[str, Any]]) -> dict[str, Any]:
    """artifactType -> the document of each listed artifact (its one layer)."""
    out = {}
    for desc in descriptors:
        manifest = _get(host, f"/v2/{repo}/manifests/{desc['digest']}",
                        "application/vnd.oci.image.manifest.v1+json").json()
        [layer] = manifest["layers"]
        out[desc["artifactType"]] = (manifest, _blob_json(host, repo, layer["digest"]))
    return out


def _oras(*args: str) -> Any:
    proc = subprocess.run([str(peer("oras")), *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _oras_referrers(target: str, *flags: str) -> dict[str, str]:
    """artifactType -> digest of the referrers oras discover finds for ``target``."""
    doc = json.loads(_oras("discover", *flags, "--format", "json", "--depth", "1", target))
    return {r["artifactType"]: r["digest"] for r in doc.get("referrers") or doc["manifests"]}


def test_fallback_tag_on_docker_registry(chain_scene: ChainScene, registry: RegistryServer,
                                         tmp_path: Path) -> None:
    host = registry.host
    ref, source_digest = _push_source(chain_scene, host)
    digest, lines = _patch(chain_scene, ref, "-t", f"docker://{host}/app:v1-patched")
    assert len(lines) == 3 and all(line.endswith("(fallback-tag)") for line in lines)
    # docker-registry 2.8: no referrers API.
    assert _get(host, f"/v2/app/referrers/{digest}").status_code == 404
    tag = "sha256-" + digest.split(":")[1]
    index = _get(host, f"/v2/app/manifests/{tag}").json()
    assert index["mediaType"] == INDEX
    kinds = {d["artifactType"]: d for d in index["manifests"]}
    assert set(kinds) == {CDX, VEX, INTOTO}
    docs = _documents(host, "app", index["manifests"])
    for manifest, _doc in docs.values():
        assert manifest["subject"]["digest"] == digest
        assert manifest["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    validate_cyclonedx(docs[CDX][1])
    assert docs[CDX][1]["metadata"]["component"]["version"] == digest
    provenance = docs[INTOTO][1]
    validate_provenance(provenance)
    assert provenance["subject"] == [{"name": f"{host}/app",
                                      "digest": {"sha256": digest.split(":")[1]}}]
    deps = provenance["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert deps[0]["digest"] == {"sha256": source_digest.split(":")[1]}
    assert {d["name"].split()[0] for d in deps[1:]} == {"a", "c"}
    assert docs[VEX][1]["@context"] == "https://openvex.dev/ns/v0.2.0"
    # oras reads the same three through the fallback tag.
    found = _oras_referrers(f"{host}/app@{digest}", "--plain-http")
    assert found == {k: d["digest"] for k, d in kinds.items()}

    # Another tool attaches its own artifact; a second run keeps it.
    note = tmp_path / "note.txt"
    note.write_text("reviewed\n")
    _oras("attach", "--plain-http", "--artifact-type", "application/vnd.example.note",
          f"{host}/app@{digest}", f"{note}:text/plain", "--disable-path-validation")
    digest2, _ = _patch(chain_scene, ref, "-t", f"docker://{host}/app:v1-patched")
    assert digest2 == digest  # the same inputs give the same image
    index2 = _get(host, f"/v2/app/manifests/{tag}").json()
    kinds2 = {d["artifactType"] for d in index2["manifests"]}
    assert "application/vnd.example.note" in kinds2 and {CDX, VEX, INTOTO} <= kinds2
    assert {d["digest"] for d in index["manifests"]} <= {d["digest"]
                                                         for d in index2["manifests"]}


def test_referrers_api(chain_scene: ChainScene, referrers_registry: ReferrersRegistry,
                       tmp_path: Path) -> None:
    host = referrers_registry.host
    ref, _source_digest = _push_source(chain_scene, host)
    result = tmp_path / "result.json"
    digest, lines = _patch(chain_scene, ref, "-t", f"docker://{host}/app:v1-patched",
                           "--result", str(result))
    assert len(lines) == 3 and all(line.endswith("(referrers-api)") for line in lines)
    attached = json.loads(result.read_text())["supplyChain"]["attached"]
    assert {(a["kind"], a["subject"], a["how"]) for a in attached} == {
        (kind, digest, "referrers-api") for kind in ("sbom", "vex", "provenance")}
    assert not any(t.startswith("sha256-") for t in referrers_registry.tags("app"))
    listed = _get(host, f"/v2/app/referrers/{digest}").json()["manifests"]
    assert {d["artifactType"] for d in listed} == {CDX, VEX, INTOTO}
    docs = _documents(host, "app", listed)
    validate_cyclonedx(docs[CDX][1])
    found = _oras_referrers(f"{host}/app@{digest}", "--plain-http")
    assert found == {d["artifactType"]: d["digest"] for d in listed}
    assert set(found.values()) == {a["digest"] for a in attached}


def test_layout_index_json(chain_scene: ChainScene, tmp_path: Path) -> None:
    layout = tmp_path / "out"
    digest, lines = _patch(chain_scene, chain_scene.source, "-t", f"oci:{layout}:v1-patched")
    assert len(lines) == 3 and all(line.endswith("(layout)") for line in lines)
    index = json.loads((layout / "index.json").read_text())
    entries = {e.get("artifactType"): e for e in index["manifests"]}
    assert {CDX, VEX, INTOTO} <= set(entries)
    for kind in (CDX, VEX, INTOTO):
        raw = (layout / "blobs" / "sha256" / entries[kind]["digest"].split(":")[1]).read_text()
        assert json.loads(raw)["subject"]["digest"] == digest
    found = _oras_referrers(f"{layout}@{digest}", "--oci-layout")
    assert found == {k: entries[k]["digest"] for k in (CDX, VEX, INTOTO)}


def test_source_referrers_copied_and_source_sbom_found(
        chain_scene: ChainScene, registry: RegistryServer, tmp_path: Path) -> None:
    """The source carries an SBOM attached by oras (fallback tag): the patched image's SBOM
    is that one updated, and --copy-source-referrers copies it into the target repository,
    still about the source digest."""
    host = registry.host
    ref, source_digest = _push_source(chain_scene, host)
    bom = {"bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1,
           "metadata": {"component": {"bom-ref": "img", "type": "container", "name": "app"}},
           "components": [{"bom-ref": "a", "type": "library", "name": "a",
                           "version": "1.0-1",
                           "purl": "pkg:deb/debian/a@1.0-1?arch=amd64&distro=debian-12"},
                          {"bom-ref": "zz", "type": "library", "name": "zz",
                           "version": "9"}]}
    file = tmp_path / "bom.json"
    file.write_text(json.dumps(bom))
    _oras("attach", "--plain-http", "--artifact-type", CDX, f"{host}/app@{source_digest}",
          f"{file}:{CDX}", "--disable-path-validation")
    digest, _lines = _patch(chain_scene, ref, "-t", f"docker://{host}/patched:v1",
                            "--copy-source-referrers")
    found = _oras_referrers(f"{host}/patched@{digest}", "--plain-http")
    docs = _documents(host, "patched", [{"artifactType": CDX, "digest": found[CDX]}])
    sbom = docs[CDX][1]
    validate_cyclonedx(sbom)
    names = {c["name"]: c["version"] for c in sbom["components"]}
    assert names["a"] == "2.0-1" and names["zz"] == "9"  # updated, not rebuilt
    copied = _oras_referrers(f"{host}/patched@{source_digest}", "--plain-http")
    assert copied[CDX] == _oras_referrers(f"{host}/app@{source_digest}", "--plain-http")[CDX]


def test_an_index_gets_attachments_for_itself_and_each_platform(
        chain_scene: ChainScene, referrers_registry: ReferrersRegistry) -> None:
    """An index source: the SBOM goes to the platform's manifest, the VEX and the
    provenance to both the platform's manifest and the index."""
    from suture.oci.image import Image
    from suture.oci.mutate import new_index
    from suture.transports import open_artifact, write_artifact

    image = open_artifact(chain_scene.source)
    host = referrers_registry.host
    assert isinstance(image, Image)
    write_artifact(new_index([image]), f"docker://{host}/multi:v1")
    digest, lines = _patch(chain_scene, f"docker://{host}/multi:v1", "-t",
                           f"docker://{host}/multi:v1-patched")
    index = _get(host, f"/v2/multi/manifests/{digest}").json()
    assert index["mediaType"] == INDEX
    [child] = index["manifests"]
    on_index = {d["artifactType"] for d in _get(host, f"/v2/multi/referrers/{digest}")
                .json()["manifests"]}
    on_child = _get(host, f"/v2/multi/referrers/{child['digest']}").json()["manifests"]
    assert on_index == {VEX, INTOTO}
    assert {d["artifactType"] for d in on_child} == {CDX, VEX, INTOTO}
    assert len(lines) == 5
    provenance = _documents(host, "multi", on_child)[INTOTO][1]
    assert {s["digest"]["sha256"] for s in provenance["subject"]} == {
        digest.split(":")[1], child["digest"].split(":")[1]}


def test_a_paged_referrers_list_is_read_whole(chain_scene: ChainScene,
                                              referrers_registry: ReferrersRegistry) -> None:
    """A registry that pages the referrers list (``Link: <...>; rel="next"``, one
    descriptor a page): suture follows the links and reads all three pages."""
    from suture.transports import RegistryOptions
    from suture.transports.registry import RegistryClient
    from suture.transports.registry.referrers import REFERRERS_API, list_referrers

    host = referrers_registry.host
    ref, _source_digest = _push_source(chain_scene, host)
    digest, _lines = _patch(chain_scene, ref, "-t", f"docker://{host}/app:v1-patched")
    referrers_registry.page_size = 1
    client = RegistryClient(host, RegistryOptions())
    found, how = list_referrers(client, "app", digest)
    assert how == REFERRERS_API
    assert {d.artifact_type for d in found} == {CDX, VEX, INTOTO} and len(found) == 3
    pages = [p for m, p in referrers_registry.store.requests
             if m == "GET" and p.startswith(f"/v2/app/referrers/{digest}")]
    assert len(pages) == 3
