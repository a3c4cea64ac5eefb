"""`suture patch` on images built from the real Debian archive (a release's point suite
only, so -security and -updates hold real newer packages), checked against outcomes:
versions in the written database, `dpkg --verify` and `apt-get check` clean in the
patched root unpacked by umoci, programs that run, and the distribution's own apt-get."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from suture.devtools.debian_image import image_from_layers
from suture.devtools.rootfs import diff_entries, distroless_entries
from suture.distro.dpkg.control import parse_status
from suture.oci.fs import read_files
from suture.oci.image import Image
from suture.oci.layer import Entry
from suture.oci.model import Platform
from suture.transports import open_artifact, write_artifact
from tests.fixtures.fidelity import compare_with_apt, tree, unpack

pytestmark = [pytest.mark.network, pytest.mark.tools]
AMD64 = Platform.parse("linux/amd64")


def suture(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "suture", *args], capture_output=True,
                          text=True, timeout=900)


def _layout(tmp: Path, layers: list[Path | list[Entry]], tag: str) -> str:
    work = tmp / f"work-{tag}"
    work.mkdir()
    image = image_from_layers(layers, AMD64, work)
    ref = f"oci:{tmp}/layout:{tag}"
    write_artifact(image, ref)
    return ref


def _patch(ref: str, tmp: Path, *extra: str) -> dict[str, Any]:
    result = tmp / f"result-{len(list(tmp.glob('result-*')))}.json"
    proc = suture("patch", "-i", ref, "--result", str(result), *extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc: dict[str, Any] = json.loads(result.read_text())
    return doc


def _installed_versions(image: Image) -> dict[str, str]:
    files = read_files(image, ["var/lib/dpkg/status"], prefixes=["var/lib/dpkg/status.d"])
    out = {}
    for path, entry in files.items():
        if not path.endswith(".md5sums") and entry.data is not None:
            out.update({p.name: p.version for p in parse_status(entry.data)})
    return out


def _check_root(root: Path) -> None:
    verify = subprocess.run(["dpkg", f"--root={root}", "--verify"], capture_output=True,
                            text=True)
    assert verify.returncode == 0 and verify.stdout == "", verify.stdout + verify.stderr
    check = subprocess.run(["chroot", str(root), "apt-get", "check"], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_two_layer_image_patched_end_to_end(tmp_path: Path, bookworm_rootfs: Path,
                                           bookworm_openssl_rootfs: Path) -> None:
    upper = diff_entries(bookworm_rootfs, bookworm_openssl_rootfs)
    ref = _layout(tmp_path, [bookworm_rootfs, upper], "two")
    doc = _patch(ref, tmp_path)
    [platform] = doc["platforms"]
    assert platform["status"] == "patched", platform
    assert doc["target"]["reference"] == ref + "-patched"
    patched = open_artifact(ref + "-patched")
    assert isinstance(patched, Image)
    assert patched.digest == doc["target"]["digest"] == platform["digest"]
    assert len(patched.layers) == 3
    versions = _installed_versions(patched)
    for update in platform["updates"]:
        assert versions[update["name"]] == update["to"], update
        assert update["from"] != update["to"]
    root = unpack(ref + "-patched", tmp_path / "bundle")
    _check_root(root)
    run = subprocess.run(["chroot", str(root), "openssl", "version"], capture_output=True,
                         text=True, check=True)
    assert run.stdout.startswith("OpenSSL 3.")
    if "openssl" in {u["name"] for u in platform["updates"]}:
        new = next(u["to"] for u in platform["updates"] if u["name"] == "openssl")
        assert new.split("-")[0] in run.stdout
    # Patching the same input again gives the same image.
    again = _patch(ref, tmp_path, "--dest", f"oci:{tmp_path}/again:x")
    assert again["target"]["digest"] == doc["target"]["digest"]
    # Patching the patched image: nothing to do, nothing written, exit 0.
    up = _patch(ref + "-patched", tmp_path)
    assert up["target"] is None and up["platforms"][0]["status"] == "up-to-date"
    assert not Path(f"{tmp_path}/layout").joinpath("x").exists()


def test_distroless_status_d_image(tmp_path: Path, bookworm_rootfs: Path) -> None:
    ref = _layout(tmp_path, [distroless_entries(bookworm_rootfs)], "distroless")
    doc = _patch(ref, tmp_path)
    [platform] = doc["platforms"]
    assert platform["status"] == "patched", platform
    patched = open_artifact(ref + "-patched")
    assert isinstance(patched, Image)
    versions = _installed_versions(patched)
    md5_files = read_files(patched, [f"var/lib/dpkg/status.d/{u['name']}.md5sums"
                                     for u in platform["updates"]])
    assert len(md5_files) == len(platform["updates"])
    sums = {}
    for update in platform["updates"]:
        assert versions[update["name"]] == update["to"]
        data = md5_files[f"var/lib/dpkg/status.d/{update['name']}.md5sums"].data or b""
        for line in data.decode().splitlines():
            digest, path = line.split(None, 1)
            sums[path] = digest
    # Every file the new md5sums name is in the image with that content (one pass).
    contents = read_files(patched, list(sums))
    assert set(contents) == set(sums)
    for path, digest in sums.items():
        assert hashlib.md5(contents[path].data or b"").hexdigest() == digest, path
    assert "var/lib/dpkg/status" not in read_files(patched, ["var/lib/dpkg/status"])


def test_trixie_dry_run_then_patch(tmp_path: Path, trixie_rootfs: Path) -> None:
    """A minbase trixie has real updates in trixie-security/-updates (on 2026-12-04:
    libzstd1, login.defs, passwd): the dry run plans them and writes nothing; the patch
    installs exactly that plan, and the patched root checks clean."""
    ref = _layout(tmp_path, [trixie_rootfs], "trixie")
    layout = tmp_path / "layout"
    before = sorted((p.name, p.stat().st_size) for p in layout.rglob("*"))
    planned = _patch(ref, tmp_path, "--dry-run")
    assert planned["target"] is None
    [dry] = planned["platforms"]
    assert dry["status"] == "skipped" and dry["updates"], dry
    assert sorted((p.name, p.stat().st_size) for p in layout.rglob("*")) == before
    doc = _patch(ref, tmp_path)
    [platform] = doc["platforms"]
    assert platform["status"] == "patched", platform
    plan = [(u["name"], u["from"], u["to"]) for u in dry["updates"]]
    assert [(u["name"], u["from"], u["to"]) for u in platform["updates"]] == plan
    patched = open_artifact(ref + "-patched")
    assert isinstance(patched, Image)
    assert patched.digest == doc["target"]["digest"]
    versions = _installed_versions(patched)
    for name, old, new in plan:
        assert old != new and versions[name] == new, name
    root = unpack(ref + "-patched", tmp_path / "bundle")
    _check_root(root)
    for program in (["apt-get", "--version"], ["dpkg", "--version"], ["login", "--help"]):
        subprocess.run(["chroot", str(root), *program], capture_output=True, check=True)


# --- fidelity: the distribution's own apt-get in a chroot of the same image ------------


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap runs the oracle chroot")
def test_fidelity_with_apt_get_upgrade(tmp_path: Path, bookworm_rootfs: Path) -> None:
    ref = _layout(tmp_path, [bookworm_rootfs], "fidelity")
    fid = compare_with_apt(ref, tmp_path / "fidelity")
    assert fid.status == "patched", fid.platform
    apt_versions = fid.apt_versions
    for name, version in fid.updates.items():
        assert apt_versions[name] == version, name
    ours, original = tree(fid.ours), tree(fid.original)
    changed = [p for p in ours if ours[p] != original.get(p)]
    assert len(ours) > 5000 and len(changed) > len(fid.updates)
    assert fid.diff.empty, str(fid.diff)


@pytest.mark.registry
def test_registry_source_patched_and_pushed(tmp_path: Path, bookworm_rootfs: Path,
                                            registry: Any) -> None:
    ref = _layout(tmp_path, [bookworm_rootfs], "reg")
    remote = f"127.0.0.1:{registry.port}/debian/bookworm:12"
    proc = suture("copy", ref, f"docker://{remote}")
    assert proc.returncode == 0, proc.stderr
    # Without --push the result goes to a local layout the output names.
    local = subprocess.run([sys.executable, "-m", "suture", "patch", "-i", remote],
                           capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert local.returncode == 0, local.stderr
    assert f"oci:{tmp_path}/bookworm-suture:12-patched" in local.stdout
    doc = _patch(remote, tmp_path, "--push")
    assert doc["target"]["reference"] == f"127.0.0.1:{registry.port}/debian/bookworm:12-patched"
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                          f"docker://{doc['target']['reference']}"], capture_output=True,
                         check=True).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == doc["target"]["digest"]
    pushed = json.loads(raw)
    original = open_artifact(remote)
    assert isinstance(original, Image)
    assert [layer["digest"] for layer in pushed["layers"]][:1] == [
        d.digest for d in original.manifest.layers]
    assert len(pushed["layers"]) == 2


def test_trivy_report_and_openvex(tmp_path: Path, bookworm_rootfs: Path) -> None:
    from tests.test_vex import validate_openvex

    ref = _layout(tmp_path, [bookworm_rootfs], "report")
    planned = _patch(ref, tmp_path, "--dry-run")
    updates = planned["platforms"][0]["updates"]
    assert planned["target"] is None and len(updates) >= 2
    chosen = updates[:2]
    report: dict[str, Any] = {
        "SchemaVersion": 2, "ArtifactName": ref, "ArtifactType": "container_image",
        "Metadata": {"OS": {"Family": "debian", "Name": "12.12"},
                     "ImageConfig": {"architecture": "amd64", "os": "linux"}},
        "Results": [{"Target": "image (debian 12.12)", "Class": "os-pkgs", "Type": "debian",
                     "Vulnerabilities": [
                         {"VulnerabilityID": f"CVE-2099-{n:04d}", "PkgName": u["name"],
                          "InstalledVersion": u["from"], "FixedVersion": u["to"],
                          "Status": "fixed", "Severity": "HIGH"}
                         for n, u in enumerate(chosen)]}],
    }
    (tmp_path / "trivy.json").write_text(json.dumps(report))
    doc = _patch(ref, tmp_path, "-r", str(tmp_path / "trivy.json"), "-o",
                 str(tmp_path / "vex.json"))
    [platform] = doc["platforms"]
    assert platform["status"] == "patched"
    by_name = {u["name"]: u for u in platform["updates"]}
    for n, u in enumerate(chosen):
        assert by_name[u["name"]]["to"] == u["to"]
        assert by_name[u["name"]]["vulnerabilities"] == [f"CVE-2099-{n:04d}"]
    assert all(u["reason"] in ("report", "dependency") for u in platform["updates"])
    vex = json.loads((tmp_path / "vex.json").read_text())
    validate_openvex(vex)
    names = [s["vulnerability"]["name"] for s in vex["statements"]]
    assert names == ["CVE-2099-0000", "CVE-2099-0001"]
    digest_hex = doc["target"]["digest"].split(":")[1]
    for statement, u in zip(vex["statements"], chosen, strict=True):
        [product] = statement["products"]
        assert product["@id"].startswith(f"pkg:oci/layout@sha256%3A{digest_hex}")
        assert any(f"/{u['name']}@" in s["@id"] for s in product["subcomponents"])
    # A report for another distribution is refused, naming both, and nothing is written.
    report["Metadata"]["OS"] = {"Family": "alpine", "Name": "3.20.1"}
    (tmp_path / "alpine.json").write_text(json.dumps(report))
    proc = suture("patch", "-i", ref, "-r", str(tmp_path / "alpine.json"), "--dest",
                  f"oci:{tmp_path}/never:x")
    assert proc.returncode == 1
    assert "alpine" in proc.stderr and "debian" in proc.stderr
    assert not (tmp_path / "never").exists()
