"""Report-driven patches of the rpm rows beyond RHEL 9's family: each image as its
distribution keeps it (CentOS 7 and Amazon Linux 2 with a Berkeley DB rpmdb, SLES and
openSUSE Tumbleweed with ndb, CBL-Mariner 2.0 distroless with only its manifests), and a
Trivy report naming it by Trivy's OS family (``centos``, ``amazon``, ``sles``,
``opensuse-tumbleweed``, ``cbl-mariner``). The report's CVE drives the update (its
dependency follows), and the VEX names the fixed package with Trivy's rpm purl
namespace for that family (``suse`` for SLES, ``opensuse`` for openSUSE); an
end-of-life release says so in the result.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from suture.distro.rpm.bdb import bdb_files
from tests.fixtures.patchimages import trivy_report, write_image
from tests.fixtures.rpmndb import ndb_rpm
from tests.fixtures.rpmrepo import RpmWorld
from tests.test_patch_rpm import _run
from tests.test_patch_rpm_backends import _copy
from tests.test_patch_rpm_manifest import MARINER, _distroless

ENV = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LC_ALL": "C", "HOME": "/tmp"}
CVE = "CVE-2024-31337"
OS_RELEASE = {
    "centos": 'NAME="CentOS Linux"\nID="centos"\nID_LIKE="rhel fedora"\nVERSION_ID="7"\n',
    "amzn2": 'NAME="Amazon Linux"\nID="amzn"\nID_LIKE="centos rhel fedora"\nVERSION_ID="2"\n',
    "sles": 'NAME="SLES"\nID="sles"\nID_LIKE="suse"\nVERSION_ID="15.5"\n',
    "tumbleweed": ('NAME="openSUSE Tumbleweed"\nID="opensuse-tumbleweed"\n'
                   'ID_LIKE="opensuse suse"\nVERSION_ID="20241201"\n'),
}
# row -> (rpmdb backend, Trivy OS family, Trivy OS name, VEX purl namespace)
ROWS = {
    "centos": ("bdb", "centos", "7", "centos"),
    "amzn2": ("bdb", "amazon", "2", "amazon"),
    "sles": ("ndb", "sles", "15.5", "suse"),
    "tumbleweed": ("ndb", "opensuse-tumbleweed", "20241201", "opensuse"),
    "mariner": ("manifest", "cbl-mariner", "2.0", "cbl-mariner"),
}


def _image(world: RpmWorld, tmp: Path, row: str) -> str:
    backend = ROWS[row][0]
    if backend == "manifest":
        root, _ = _distroless(world, tmp, "mariner")
        assert MARINER in (root / "etc/os-release").read_text()
        return write_image(root, tmp, "v1")
    root = world.make_root(tmp / "root", "rhel")
    (root / "etc/os-release").write_text(OS_RELEASE[row])
    if backend == "bdb":
        copy, db, packages = _copy(root, "root-bdb")
        for name, data in bdb_files([(p.hnum, p) for p in packages],
                                    counter=max(p.hnum for p in packages)).items():
            (db / name).write_bytes(data)
        root = copy
    else:
        conv = subprocess.run([str(ndb_rpm().parent / "rpmdb"), "--root", str(root),
                               "--dbpath", "/var/lib/rpm", "--define", "_db_backend ndb",
                               "--rebuilddb"], capture_output=True, text=True, env=ENV)
        assert conv.returncode == 0, conv.stderr
    return write_image(root, tmp, "v1")


@pytest.mark.parametrize("row", sorted(ROWS))
def test_report_driven_by_trivy_os_family(rpm_world: RpmWorld, tmp_path: Path,
                                          row: str) -> None:
    _backend, family, name, namespace = ROWS[row]
    ref = _image(rpm_world, tmp_path, row)
    report = tmp_path / "trivy.json"
    report.write_text(json.dumps(trivy_report(family, name, [
        (CVE, "libsut", "1.0-1", "2.0-1")])))
    proc, result, vex = _run(rpm_world, tmp_path, ref, "fixed", "-r", str(report))
    assert proc.returncode == 0, proc.stderr
    (platform,) = json.loads(result.read_text())["platforms"]
    assert [(u["name"], u["to"], u["reason"]) for u in platform["updates"]] == [
        ("libsut", "2.0-1", "report"), ("sutprog", "2.0-1", "dependency")]
    (statement,) = json.loads(vex.read_text())["statements"]
    assert statement["vulnerability"]["name"] == CVE
    subs = [s["@id"] for p in statement["products"] for s in p["subcomponents"]]
    assert subs == [f"pkg:rpm/{namespace}/libsut@2.0-1?arch=x86_64"]
    if row == "centos":  # CentOS 7 ended on 2024-06-30: the result says so
        assert (platform["eol"]["product"], platform["eol"]["release"],
                platform["eol"]["eol"], platform["eol"]["isEol"]) == (
            "centos", "7", "2024-06-30", True), platform
