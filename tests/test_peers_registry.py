"""crane and oras, built from source (``scripts/peers``), read every image suture writes.

An Alpine-style image (amd64, and a two-platform index with aarch64) is patched with the
real CLI from a signed apk repository on 127.0.0.1 (``tests/fixtures/apkrepo.py``) into
each kind of destination: an OCI layout (which ``crane push`` reads and pushes), a
docker-archive (``crane validate --tarball``) and the local CNCF registry (``crane
validate --remote``). The index is read back by ``crane manifest`` and ``oras manifest
fetch`` byte for byte, per platform too, and ``crane export`` unpacks the patched
filesystem; ``oras discover`` lists the VEX, SBOM and provenance ``--attach`` hangs on the
patched image, in the registry and in a layout.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from suture.transports import write_artifact
from tests.fixtures.apkrepo import (
    ApkFile,
    ApkKeys,
    ApkRepoServer,
    ApkSpec,
    apk_image,
    build_apk,
    write_oci,
)
from tests.fixtures.images import make_index
from tests.fixtures.patchimages import suture
from tests.fixtures.peers import peer
from tests.fixtures.registry import RegistryServer

pytestmark = pytest.mark.registry

ALPINE_URL = "https://dl-cdn.alpinelinux.org/alpine/v3.20/main"
MUSL1 = ApkSpec("musl", "1.2.5-r0", files={"lib/ld-musl.so.1": ApkFile(b"m1\n", 0o755)},
                provides=["so:libc.musl.so.1=1"])
MUSL2 = MUSL1.with_(version="1.2.5-r1", files={"lib/ld-musl.so.1": ApkFile(b"m2\n", 0o755)})
HELLO1 = ApkSpec("hello", "1.0-r0", files={"usr/bin/hello": ApkFile(b"h1\n", 0o755)},
                 depends=["so:libc.musl.so.1"])
HELLO2 = HELLO1.with_(version="1.1-r0", files={"usr/bin/hello": ApkFile(b"h2\n", 0o755)})
V1, V2 = [MUSL1, HELLO1], [MUSL1, MUSL2, HELLO1, HELLO2]
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
SBOM_TYPE = "application/vnd.cyclonedx+json"
VEX_TYPE = "application/vnd.openvex+json"
PROVENANCE_TYPE = "application/vnd.in-toto+json"


@dataclass
class Scene:
    tmp: Path
    repo: ApkRepoServer
    registry: RegistryServer

    def patch(self, ref: str, dest: str, *args: str) -> dict[str, Any]:
        """``suture patch -i REF --dest DEST ARGS``; the result JSON."""
        result = self.tmp / "result.json"
        proc = suture("patch", "-i", ref, "--dest", dest, "--result", str(result),
                      "--mirror", f"{ALPINE_URL}={self.repo.sub('main')}",
                      "--allow-private-repos", "127.0.0.1", "--sandbox", "none",
                      "--insecure-registry", self.registry.host,
                      "--cache-dir", str(self.tmp / "cache"), "--progress", "quiet", *args)
        assert proc.returncode == 0, proc.stderr
        doc: dict[str, Any] = json.loads(result.read_text())
        assert {p["status"] for p in doc["platforms"]} == {"patched"}, doc
        return doc

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        """A peer, with a HOME of its own (no credentials of this machine)."""
        env = {**os.environ, "HOME": str(self.tmp), "DOCKER_CONFIG": str(self.tmp / "docker")}
        proc = subprocess.run([str(peer(tool)), *args], capture_output=True, env=env,
                              timeout=300)
        assert proc.returncode == 0, f"{tool} {' '.join(args)}: {proc.stderr.decode()}"
        return proc

    def crane(self, *args: str) -> bytes:
        return self.run("crane", "--insecure", *args).stdout

    def oras(self, *args: str) -> bytes:
        return self.run("oras", *args).stdout


@pytest.fixture
def scene(tmp_path: Path, apk_repo_server: ApkRepoServer, apk_keys: ApkKeys,
          registry: RegistryServer) -> Scene:
    key = apk_keys.good
    apk_repo_server.publish(V2, key, path="main")
    apk_repo_server.publish([s.with_(arch="aarch64") for s in V2], key, path="main",
                            arch="aarch64")
    amd64 = apk_image([build_apk(s, key, tmp_path / "v1") for s in V1], [ALPINE_URL], key)
    arm64 = apk_image([build_apk(s.with_(arch="aarch64"), key, tmp_path / "v1-arm")
                       for s in V1], [ALPINE_URL], key, arch="aarch64")
    write_oci(amd64, tmp_path / "src", "v1")
    write_artifact(make_index(amd64, arm64), f"oci:{tmp_path}/src:multi")
    return Scene(tmp_path, apk_repo_server, registry)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _installed(export: bytes) -> dict[str, str]:
    """Package -> version in ``lib/apk/db/installed`` of a ``crane export`` tar."""
    with tarfile.open(fileobj=io.BytesIO(export)) as tar:
        member = tar.extractfile("lib/apk/db/installed")
        assert member is not None
        text = member.read().decode()
    out = {}
    for record in text.strip().split("\n\n"):
        fields = dict(line.split(":", 1) for line in record.splitlines() if line[1:2] == ":")
        out[fields["P"]] = fields["V"]
    return out


def test_crane_validates_layout_archive_and_registry(scene: Scene) -> None:
    src, reg = f"oci:{scene.tmp}/src:v1", scene.registry.host
    # OCI layout: crane reads it (push) without changing a byte, and the image validates.
    layout = scene.tmp / "out"
    doc = scene.patch(src, f"oci:{layout}:patched")
    digest = doc["target"]["digest"]
    pushed = scene.crane("push", str(layout), f"{reg}/from-layout:patched").decode()
    assert pushed.strip().endswith("@" + digest)
    scene.crane("validate", "--remote", f"{reg}/from-layout:patched")
    assert _installed(scene.crane("export", f"{reg}/from-layout:patched", "-")) == {
        "musl": "1.2.5-r1", "hello": "1.1-r0"}
    # docker-archive
    archive = scene.tmp / "patched.tar"
    scene.patch(src, f"docker-archive:{archive}:suture.test/apk:patched")
    scene.crane("validate", "--tarball", str(archive))
    # registry: suture pushes, crane validates (every layer downloaded and digested)
    doc = scene.patch(src, f"{reg}/direct:patched")
    scene.crane("validate", "--remote", f"{reg}/direct:patched")
    manifest = scene.crane("manifest", f"{reg}/direct:patched")
    assert _sha256(manifest) == doc["target"]["digest"] == digest


def test_two_platform_index(scene: Scene) -> None:
    reg = scene.registry.host
    ref = f"{reg}/multi:patched"
    doc = scene.patch(f"oci:{scene.tmp}/src:multi", ref)
    assert [p["platform"] for p in doc["platforms"]] == ["linux/amd64", "linux/arm64/v8"]
    scene.crane("validate", "--remote", ref)
    by_crane = scene.crane("manifest", ref)
    by_oras = scene.oras("manifest", "fetch", "--plain-http", ref)
    assert by_crane == by_oras
    assert _sha256(by_crane) == doc["target"]["digest"]
    index = json.loads(by_crane)
    assert index["mediaType"] == INDEX_TYPE
    children = {f"{m['platform']['os']}/{m['platform']['architecture']}": m
                for m in index["manifests"]}
    assert sorted(children) == ["linux/amd64", "linux/arm64"]
    for platform, descriptor in children.items():
        child = scene.crane("manifest", "--platform", platform, ref)
        assert _sha256(child) == descriptor["digest"]
        assert scene.oras("manifest", "fetch", "--plain-http",
                          f"{reg}/multi@{descriptor['digest']}") == child
        config = json.loads(scene.crane("config", "--platform", platform, ref))
        assert f"{config['os']}/{config['architecture']}" == platform
        export = scene.crane("export", "--platform", platform, ref, "-")
        assert _installed(export) == {"musl": "1.2.5-r1", "hello": "1.1-r0"}


def _discovered(listing: bytes) -> dict[str, str]:
    """artifactType -> digest of each referrer ``oras discover --format json`` lists."""
    doc = json.loads(listing)
    return {r["artifactType"]: r["digest"] for r in doc.get("referrers", [])}


def test_oras_discovers_attached_referrers(scene: Scene) -> None:
    src, reg = f"oci:{scene.tmp}/src:v1", scene.registry.host
    vex = scene.tmp / "vex.json"
    # in the registry
    ref = f"{reg}/attached:patched"
    doc = scene.patch(src, ref, "--attach", "--sbom", "cyclonedx", "-o", str(vex))
    subject = doc["target"]["digest"]
    found = _discovered(scene.oras("discover", "--plain-http", "--format", "json",
                                   f"{reg}/attached@{subject}"))
    assert set(found) == {SBOM_TYPE, VEX_TYPE, PROVENANCE_TYPE}, found
    documents = {}
    for artifact_type, digest in found.items():
        manifest = json.loads(scene.oras("manifest", "fetch", "--plain-http",
                                         f"{reg}/attached@{digest}"))
        assert manifest["subject"]["digest"] == subject
        assert manifest["artifactType"] == artifact_type
        [layer] = manifest["layers"]
        blob = scene.oras("blob", "fetch", "--plain-http", "--output", "-",
                          f"{reg}/attached@{layer['digest']}")
        assert _sha256(blob) == layer["digest"]
        documents[artifact_type] = json.loads(blob)
    assert documents[VEX_TYPE] == json.loads(vex.read_bytes())
    components = {c["name"]: c.get("version")
                  for c in documents[SBOM_TYPE].get("components", [])}
    assert components.get("hello") == "1.1-r0" and components.get("musl") == "1.2.5-r1"
    statement = documents[PROVENANCE_TYPE]
    assert [s["digest"]["sha256"] for s in statement["subject"]] == [
        subject.removeprefix("sha256:")]
    # in an OCI layout
    layout = scene.tmp / "attached-layout"
    doc = scene.patch(src, f"oci:{layout}:patched", "--attach", "--sbom", "cyclonedx",
                      "-o", str(vex))
    subject = doc["target"]["digest"]
    in_layout = _discovered(scene.oras("discover", "--oci-layout", "--format", "json",
                                       f"{layout}@{subject}"))
    assert set(in_layout) == set(found)
