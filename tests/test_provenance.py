"""Provenance of a patch run (``--provenance FILE``): an in-toto Statement v1 with a SLSA
provenance v1 predicate, checked with in-toto's own bindings; it names the patched
digest as subject, the source by reference and digest, the report by its digest, the
options, and every package installed with the URI and hash of its file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from suture.plan import Update
from suture.provenance import PlatformBuild, ProvenanceSubject, build_provenance
from tests.fixtures.patchimages import open_image, suture, trivy_report
from tests.fixtures.registry import RegistryServer
from tests.fixtures.supplychain import ChainScene, validate_provenance

pytestmark = pytest.mark.tools


def test_provenance_of_a_report_driven_run(chain_scene: ChainScene, tmp_path: Path) -> None:
    report = tmp_path / "trivy.json"
    report.write_text(json.dumps(trivy_report("debian", "12", [
        ("CVE-2024-0001", "a", "1.0-1", "2.0-1")])))
    out = tmp_path / "provenance.json"
    dest = f"oci:{tmp_path}/out:v1-patched"
    proc = chain_scene.patch(chain_scene.source, "-t", dest, "-r", str(report),
                             "--provenance", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    validate_provenance(doc)
    digest = open_image(dest).digest
    assert doc["subject"] == [{"name": "out", "digest": {"sha256": digest.split(":")[1]}}]
    build = doc["predicate"]["buildDefinition"]
    source_digest = open_image(chain_scene.source).digest
    assert build["resolvedDependencies"][0] == {
        "uri": f"oci://{chain_scene.source}", "name": "source",
        "digest": {"sha256": source_digest.split(":")[1]}}
    assert build["externalParameters"]["reports"] == [{
        "name": "trivy.json",
        "digest": {"sha256": hashlib.sha256(report.read_bytes()).hexdigest()}}]
    assert build["externalParameters"]["options"]["updateAll"] is False
    packages = {d["name"].split()[0]: d for d in build["resolvedDependencies"][1:]}
    assert set(packages) == {"a", "c"}
    assert packages["a"]["digest"] == {"sha256": chain_scene.sha256("a")}
    assert packages["a"]["uri"].startswith(chain_scene.archive.url)
    assert packages["a"]["uri"].endswith("/" + chain_scene.debs["a"].name)
    assert packages["c"]["annotations"]["reason"] == "dependency"
    assert doc["predicate"]["runDetails"]["builder"]["version"]["suture"]


def test_the_checker_refuses_what_the_spec_does_not_allow() -> None:
    """The in-toto bindings catch an unknown field and a statement without subjects."""
    update = Update("a", "amd64", "1.0-1", "2.0-1", "a", "report", ("CVE-1",), "a.deb", 1,
                    "0" * 64, "http://x/")
    doc = build_provenance([ProvenanceSubject("img", "sha256:" + "1" * 64)], source="x",
                           source_digest="sha256:" + "2" * 64,
                           platforms=[PlatformBuild("linux/amd64", "sha256:" + "2" * 64,
                                                    (update,))],
                           report_digests={}, options={}, tool_version="0",
                           started="2024-01-01T00:00:00Z", finished="2024-01-01T00:00:01Z")
    validate_provenance(doc)
    bad = json.loads(json.dumps(doc))
    bad["predicate"]["runDetails"]["builder"]["name"] = "x"
    with pytest.raises(Exception, match="name"):
        validate_provenance(bad)
    empty = {**doc, "subject": []}
    with pytest.raises(ValueError, match="subject"):
        validate_provenance(empty)


def test_lineage_annotations_and_inspect(chain_scene: ChainScene, registry: RegistryServer
                                         ) -> None:
    """The patched manifest names its source (OCI base.digest and base.name); suture
    inspect shows the chain, and a layout source gets base.digest only."""
    host = registry.host
    copy = suture("copy", chain_scene.source, f"docker://{host}/app:v1")
    assert copy.returncode == 0, copy.stderr
    source_digest = copy.stdout.split()[-1]
    target = f"docker://{host}/app:v1-patched"
    proc = chain_scene.patch(f"docker://{host}/app:v1", "-t", target)
    assert proc.returncode == 0, proc.stderr
    manifest = open_image(target).manifest
    assert manifest.annotations["org.opencontainers.image.base.digest"] == source_digest
    assert manifest.annotations["org.opencontainers.image.base.name"] == f"{host}/app:v1"
    shown = suture("inspect", target)
    assert f"patched   yes, over {host}/app:v1@{source_digest}" in shown.stdout
    doc = json.loads(suture("inspect", "--json", target).stdout)
    assert doc["platforms"][0]["patched"]["baseName"] == f"{host}/app:v1"
    assert doc["platforms"][0]["patched"]["baseDigest"] == source_digest

    local = f"oci:{chain_scene.tmp}/local:v1-patched"
    proc = chain_scene.patch(chain_scene.source, "-t", local)
    assert proc.returncode == 0, proc.stderr
    annotations = open_image(local).manifest.annotations
    assert annotations["org.opencontainers.image.base.digest"] == source_digest
    assert "org.opencontainers.image.base.name" not in annotations
