"""SUSE images: repositories from ``/etc/zypp/repos.d``, and the transaction as zypper
runs it (one rpm transaction per package), judged by the real ``zypper --root``.

The image is :mod:`tests.fixtures.rpmrepo`'s version 1 set made an openSUSE Leap 15.6
root: its os-release says so and its only repository is a zypper ``.repo`` (the
``yum.repos.d`` one removed). The oracle is ``zypper up`` on a copy of the same root,
against the same served repository: the scriptlet log (whose order tells one
transaction per package from one for all), ``rpm -qa`` and the files must equal what
``suture patch`` wrote.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from suture.distro.rpm.repo import RepoConfigError, parse_zypp_repo_files
from tests.fixtures.patchimages import open_image
from tests.fixtures.rpmbuild import rpm_root
from tests.fixtures.rpmrepo import KEY_PATH, LOG, UPSTREAM, RpmWorld
from tests.test_patch_rpm import _qa, _rpmdb, _run

LEAP = ('NAME="openSUSE Leap"\nVERSION="15.6"\nID="opensuse-leap"\nID_LIKE="suse opensuse"\n'
        'VERSION_ID="15.6"\nPRETTY_NAME="openSUSE Leap 15.6"\n')


def _zypp_repo(baseurl: str) -> str:
    return (f"[sut]\nname=sut\nenabled=1\nautorefresh=0\nbaseurl={baseurl}\ntype=rpm-md\n"
            f"repo_gpgcheck=0\npkg_gpgcheck=1\ngpgkey=file:///{KEY_PATH}\n"
            "\n[sut-off]\nname=off\nenabled=0\nbaseurl=https://off.sut.example/\n")


def _leap_root(world: RpmWorld, path: Path) -> Path:
    root = world.make_root(path, "rhel")
    (root / "etc/os-release").write_text(LEAP)
    shutil.rmtree(root / "etc/yum.repos.d")
    (root / "etc/zypp/repos.d").mkdir(parents=True)
    (root / "etc/zypp/repos.d/sut.repo").write_text(
        _zypp_repo(f"{UPSTREAM}/$releasever/$basearch/"))
    return root


def _zypper(world: RpmWorld, root: Path, tmp: Path) -> Path:
    """``zypper up`` on a copy of ``root`` against the served ``good`` repository."""
    copy = tmp / "zypper-root"
    shutil.copytree(root, copy, symlinks=True)
    (copy / "etc/zypp/repos.d/sut.repo").write_text(
        _zypp_repo(f"{world.server.url}/good/9/x86_64/"))
    home = tmp / "home"
    home.mkdir()
    (home / ".rpmmacros").write_text("%_dbpath /var/lib/rpm\n")
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LC_ALL": "C", "HOME": str(home)}
    for args in (["--gpg-auto-import-keys", "refresh"], ["up", "--no-recommends"]):
        proc = subprocess.run(["zypper", "-n", "--root", str(copy), *args], env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return copy


@pytest.mark.skipif(shutil.which("zypper") is None, reason="needs zypper")
def test_leap_image_as_zypper_patches_it(rpm_world: RpmWorld, tmp_path: Path) -> None:
    root = _leap_root(rpm_world, tmp_path / "root")
    oracle = _zypper(rpm_world, root, tmp_path)

    from tests.fixtures.patchimages import write_image
    ref = write_image(root, tmp_path, "v1")
    proc, _result, _vex = _run(rpm_world, tmp_path, ref, "v1-patched")
    assert proc.returncode == 0, proc.stderr
    image = open_image(ref.rsplit(":", 1)[0] + ":v1-patched")

    # the versions: what zypper installed
    want = sorted(line for line in rpm_root(
        oracle, "-qa", "--qf", "%{NAME}-%{EVR}.%{ARCH}\\n").stdout.splitlines()
        if not line.startswith("gpg-pubkey"))
    assert _qa(_rpmdb(image, "rhel", tmp_path / "db")) == want
    assert "libsut-2.0-1.x86_64" in want

    # the scriptlets, in zypper's order: each package's whole transaction in turn
    from suture.oci.fs import read_files
    got_log = read_files(image, [LOG])[LOG].data
    assert got_log is not None
    want_log = (oracle / LOG).read_bytes()
    assert got_log.decode() == want_log.decode()
    lines = want_log.decode().splitlines()
    # libsut's erasure ran before sutprog's install: one transaction per package
    assert lines.index("libsut postun 1.0 1") < lines.index("sutprog pre 2.0 2")

    # the files the packages own
    for path in ("usr/lib64/libsut.so.1", "usr/bin/sutprog", "usr/share/sut/new.txt"):
        found = read_files(image, [path])[path].data
        assert found == (oracle / path).read_bytes(), path
    assert read_files(image, ["usr/share/sut/old.txt"]).get("usr/share/sut/old.txt") is None
    assert not (oracle / "usr/share/sut/old.txt").exists()


def test_zypp_repo_files() -> None:
    files = {
        "etc/zypp/repos.d/oss.repo": (
            b"[repo-oss]\nname=Main ($releasever)\nbaseurl=http://dl.example/leap/"
            b"$releasever/repo/oss\npath=/sub\ntype=rpm-md\npriority=90\n"
            b"[repo-upd]\nbaseurl=http://dl.example/update/$releasever_major\ngpgcheck=0\n"
            b"enabled=0\n"),
        "etc/zypp/repos.d/x.repo": b"[x]\nbaseurl=http://x/\nrepo_gpgcheck=0\n",
    }
    variables = {"releasever": "15.6", "releasever_major": "15", "basearch": "x86_64"}
    repos = parse_zypp_repo_files(files, variables, first=3)
    assert [(r.id, r.baseurls, r.enabled, r.gpgcheck, r.repo_gpgcheck, r.priority, r.order)
            for r in repos] == [
        ("repo-oss", ("http://dl.example/leap/15.6/repo/oss/sub",), True, True, True, 90, 3),
        ("repo-upd", ("http://dl.example/update/15",), False, False, False, 99, 4),
        ("x", ("http://x/",), True, True, False, 99, 5)]
    assert repos[0].name == "Main (15.6)"
    with pytest.raises(RepoConfigError, match=r"y.repo:3: repository y: type yast2 is not"):
        parse_zypp_repo_files({"etc/zypp/repos.d/y.repo": b"[y]\nbaseurl=http://y/\n"
                                                         b"type=yast2\n"}, variables)


@pytest.mark.parametrize("trivy_family", ["opensuse-leap", "opensuse.leap"])
def test_leap_report_driven_vex_as_trivy(rpm_world: RpmWorld, tmp_path: Path,
                                         trivy_family: str) -> None:
    """A Trivy report of the Leap image (today's family name and the one before 0.50)
    drives the patch; the VEX names the package as Trivy 0.50+ does for openSUSE:
    namespace ``opensuse`` (its distro qualifier left out, as for every rpm VEX purl)."""
    from tests.fixtures.patchimages import trivy_report, write_image
    root = _leap_root(rpm_world, tmp_path / "root")
    ref = write_image(root, tmp_path, "v1")
    report = tmp_path / "trivy.json"
    report.write_text(json.dumps(trivy_report(trivy_family, "15.6", [
        ("CVE-2024-31337", "libsut", "1.0-1", "2.0-1")])))
    proc, result, vex = _run(rpm_world, tmp_path, ref, "fixed", "-r", str(report))
    assert proc.returncode == 0, proc.stderr
    (platform,) = json.loads(result.read_text())["platforms"]
    assert [(u["name"], u["to"], u["reason"]) for u in platform["updates"]] == [
        ("libsut", "2.0-1", "report"), ("sutprog", "2.0-1", "dependency")]
    (statement,) = json.loads(vex.read_text())["statements"]
    subs = [s["@id"] for p in statement["products"] for s in p["subcomponents"]]
    assert subs == ["pkg:rpm/opensuse/libsut@2.0-1?arch=x86_64"]
