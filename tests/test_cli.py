"""The `suture` command as a user runs it: output, exit codes, one-line errors."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from suture.cli import main
from suture.oci.digest import sha256
from suture.oci.layer import LayerInfo
from suture.oci.model import Platform
from suture.oci.mutate import AddedLayer, new_image
from suture.transports import open_artifact, write_artifact
from tests.fixtures.images import make_index, sample_image
from tests.fixtures.patchimages import error_line


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "suture", *args], capture_output=True,
                          text=True, timeout=120)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    return error_line(proc)


def test_inspect_layout_human_and_json(tmp_path: Path) -> None:
    image = sample_image()
    write_artifact(image, f"oci:{tmp_path}/l:v1")
    proc = run("inspect", f"oci:{tmp_path}/l:v1")
    assert proc.returncode == 0, proc.stderr
    assert "debian 12 (bookworm)" in proc.stdout
    assert "dpkg dpkg-status /var/lib/dpkg/status: 1 installed" in proc.stdout
    assert image.digest in proc.stdout
    proc = run("inspect", "--json", f"oci:{tmp_path}/l:v1")
    doc = json.loads(proc.stdout)
    assert doc["digest"] == image.digest
    [plat] = doc["platforms"]
    assert plat["platform"] == "linux/amd64"
    assert plat["os"]["codename"] == "bookworm"
    assert plat["packageDB"] == {"family": "dpkg", "kind": "dpkg-status",
                                 "path": "/var/lib/dpkg/status", "packages": 1}
    assert [layer["digest"] for layer in plat["layers"]] == [
        d.digest for d in image.manifest.layers]


def test_inspect_index_and_platform_filter(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    index = make_index(sample_image("a", "linux/amd64"), sample_image("b", "linux/arm64"))
    write_artifact(index, f"oci:{tmp_path}/i:multi")
    assert main(["inspect", "--json", f"oci:{tmp_path}/i:multi"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [p["platform"] for p in doc["platforms"]] == ["linux/amd64", "linux/arm64/v8"]
    assert main(["inspect", "--json", "--platform", "linux/arm64",
                 f"oci:{tmp_path}/i:multi"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [p["platform"] for p in doc["platforms"]] == ["linux/arm64/v8"]
    assert main(["inspect", "--platform", "linux/s390x", f"oci:{tmp_path}/i:multi"]) == 1
    err = capsys.readouterr().err
    assert "no image for platform linux/s390x" in err and "linux/arm64" in err


def test_copy_between_transports_keeps_digests(tmp_path: Path) -> None:
    image = sample_image()
    write_artifact(image, f"oci:{tmp_path}/src:v1")
    proc = run("copy", f"oci:{tmp_path}/src:v1", f"oci-archive:{tmp_path}/a.tar:v1")
    assert proc.returncode == 0, proc.stderr
    copied = open_artifact(f"oci-archive:{tmp_path}/a.tar:v1")
    assert copied.digest == image.digest
    proc = run("copy", f"oci-archive:{tmp_path}/a.tar:v1",
               f"docker-archive:{tmp_path}/d.tar:example.com/app:v1")
    assert proc.returncode == 0, proc.stderr
    proc = run("inspect", "--json", f"docker-archive:{tmp_path}/d.tar")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["platforms"][0]["os"]["id"] == "debian"


@pytest.mark.parametrize("ref", ["UPPER/case:x", "oci:", "nginx:bad tag!", "containers-storage:x"])
def test_bad_reference_is_usage_error(ref: str) -> None:
    proc = run("inspect", ref)
    assert proc.returncode == 2
    assert "invalid image reference" in one_error_line(proc)


def test_usage_errors() -> None:
    assert run("inspect").returncode == 2
    assert run("frobnicate").returncode == 2
    proc = run("inspect", "--ca-file", "/nonexistent/ca.pem", "oci:/tmp/x:y")
    assert proc.returncode == 2 and "no such file" in one_error_line(proc)


def test_missing_image_and_tag(tmp_path: Path) -> None:
    proc = run("inspect", f"oci:{tmp_path}/nothing:v1")
    assert proc.returncode == 1
    one_error_line(proc)
    write_artifact(sample_image(), f"oci:{tmp_path}/l:v1")
    proc = run("inspect", f"oci:{tmp_path}/l:v2")
    assert proc.returncode == 1 and "v2" in one_error_line(proc)


def _escaping_image() -> object:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        link = tarfile.TarInfo("etc")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc"
        tar.addfile(link)
        info = tarfile.TarInfo("etc/os-release")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"ID="))
    plain = raw.getvalue()
    blob = gzip.compress(plain, mtime=0)
    layer = LayerInfo(sha256(blob), sha256(plain), len(blob),
                      "application/vnd.oci.image.layer.v1.tar+gzip", "gzip")
    return new_image([AddedLayer(layer, lambda: io.BytesIO(blob))], Platform.parse("linux/amd64"))


def test_escaping_layer_is_one_line_error(tmp_path: Path) -> None:
    write_artifact(_escaping_image(), f"oci:{tmp_path}/evil:v1")  # type: ignore[arg-type]
    proc = run("inspect", f"oci:{tmp_path}/evil:v1")
    assert proc.returncode == 1
    assert "written through the symlink" in one_error_line(proc)


def test_corrupt_blob_copy_writes_nothing(tmp_path: Path) -> None:
    image = sample_image()
    write_artifact(image, f"oci:{tmp_path}/src:v1")
    layer = image.manifest.layers[0].digest.split(":")[1]
    blob = tmp_path / "src" / "blobs" / "sha256" / layer
    data = bytearray(blob.read_bytes())
    data[-10] ^= 0xFF
    blob.write_bytes(bytes(data))
    proc = run("copy", f"oci:{tmp_path}/src:v1", f"oci:{tmp_path}/dst:v1")
    assert proc.returncode == 1
    assert "digest mismatch" in one_error_line(proc)
    assert not (tmp_path / "dst").exists()
    proc = run("copy", f"oci:{tmp_path}/src:v1", f"docker-archive:{tmp_path}/d.tar:a/b:c")
    assert proc.returncode == 1
    assert not (tmp_path / "d.tar").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_truncated_archive(tmp_path: Path) -> None:
    write_artifact(sample_image(), f"oci-archive:{tmp_path}/a.tar:v1")
    data = (tmp_path / "a.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2])
    proc = run("copy", f"oci-archive:{tmp_path}/cut.tar:v1", f"oci:{tmp_path}/out:v1")
    assert proc.returncode == 1
    one_error_line(proc)
    assert not (tmp_path / "out").exists()


def test_unknown_manifest_media_type(tmp_path: Path) -> None:
    write_artifact(sample_image(), f"oci:{tmp_path}/l:v1")
    index = json.loads((tmp_path / "l" / "index.json").read_text())
    index["manifests"][0]["mediaType"] = "application/vnd.example.unknown+json"
    digest = index["manifests"][0]["digest"].split(":")[1]
    manifest_path = tmp_path / "l" / "blobs" / "sha256" / digest
    manifest = json.loads(manifest_path.read_bytes())
    manifest["mediaType"] = "application/vnd.example.unknown+json"
    raw = json.dumps(manifest).encode()
    new_digest = sha256(raw)
    (tmp_path / "l" / "blobs" / "sha256" / new_digest.split(":")[1]).write_bytes(raw)
    index["manifests"][0].update(digest=new_digest, size=len(raw))
    (tmp_path / "l" / "index.json").write_text(json.dumps(index))
    proc = run("inspect", f"oci:{tmp_path}/l:v1")
    assert proc.returncode == 1
    assert "unsupported manifest media type" in one_error_line(proc)


@pytest.mark.registry
def test_copy_and_inspect_through_token_registry(tmp_path: Path, token_registry: Any) -> None:
    from tests.fixtures.registry import PASSWORD, USER

    image = sample_image()
    write_artifact(image, f"oci:{tmp_path}/src:v1")
    remote = f"docker://127.0.0.1:{token_registry.port}/team/app:v1"
    creds = ["--creds", f"{USER}:{PASSWORD}", "--ca-file", str(token_registry.ca_file)]
    proc = run("copy", *creds, f"oci:{tmp_path}/src:v1", remote)
    assert proc.returncode == 0, proc.stderr
    assert image.digest in proc.stdout
    proc = run("inspect", "--json", *creds, remote)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["digest"] == image.digest
    skopeo = subprocess.run(["skopeo", "inspect", "--raw", "--cert-dir",
                             str(token_registry.cert_dir), "--creds", f"{USER}:{PASSWORD}",
                             remote], capture_output=True, check=True).stdout
    assert sha256(skopeo) == image.digest
    proc = run("inspect", "--ca-file", str(token_registry.ca_file), "--creds",
               f"{USER}:wrong-password", remote)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "wrong-password" not in line and "unauthorized" in line.lower()


def test_patch_timeout_and_bad_flags(tmp_path: Path) -> None:
    write_artifact(sample_image(), f"oci:{tmp_path}/l:v1")
    before = (tmp_path / "l" / "index.json").read_bytes()
    proc = run("patch", "-i", f"oci:{tmp_path}/l:v1", "--timeout", "0.001s",
               "--result", str(tmp_path / "r.json"))
    assert proc.returncode == 1
    assert "timed out" in one_error_line(proc)
    assert (tmp_path / "l" / "index.json").read_bytes() == before
    # Stopped before any platform had an outcome: no result file rather than half of one.
    assert not (tmp_path / "r.json").exists()
    for bad in (["--timeout", "soon"], ["--mirror", "nonsense"], ["-r", "/nonexistent.json"],
                ["--keyring", "/nonexistent.gpg"]):
        proc = run("patch", "-i", f"oci:{tmp_path}/l:v1", *bad)
        assert proc.returncode == 2, bad
        one_error_line(proc)
    assert (tmp_path / "l" / "index.json").read_bytes() == before
