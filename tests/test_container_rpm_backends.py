"""The rows of the rpm family beyond sqlite, judged by a real container engine and the
distribution's own query tool on the container's exported filesystem.

* **EL8** (Berkeley DB rpmdb, written by suture's writer from the root rpm populated,
  as tests/test_patch_rpm_backends.py makes it): ``rpm --define '_db_backend bdb_ro'
  -qa`` on the export lists the 2.0 packages and ``-qf`` names their owners;
* **openSUSE Leap 15.6** (ndb rpmdb converted by rpm itself, zypper's ``repos.d``): the
  ndb-enabled rpm (:mod:`tests.fixtures.rpmndb`) lists the 2.0 packages, after it
  regenerates the ``Index.db`` suture leaves out;
* **Azure Linux distroless** (only the rpm manifests): the export's
  ``container-manifest-1`` lists the 2.0 packages and no rpm database appears.

Each image is patched update-all by ``suture patch`` and loaded into dockerd with
``skopeo copy``; ``/usr/bin/sutprog`` (from the upgraded package) prints ``sutprog 2.0``
in a ``--network none`` container.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from suture.distro.rpm.bdb import bdb_files
from suture.distro.rpm.manifest import MANIFEST1
from tests.fixtures.dockerd import Docker
from tests.fixtures.patchimages import write_image
from tests.fixtures.rpmndb import ndb_cmd, ndb_rpm
from tests.fixtures.rpmrepo import RpmWorld
from tests.test_container_rpm import _exported_root, _patch
from tests.test_patch_rpm_backends import _copy
from tests.test_patch_rpm_manifest import _distroless
from tests.test_patch_rpm_zypper import LEAP, _zypp_repo

pytestmark = [pytest.mark.tools]

ENV = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LC_ALL": "C", "HOME": "/tmp"}
EL8 = ('NAME="Red Hat Enterprise Linux"\nID="rhel"\nVERSION_ID="8.10"\n'
       'ID_LIKE="fedora"\nPLATFORM_ID="platform:el8"\n')
NEW = {"libsut-2.0-1.x86_64", "sutprog-2.0-1.x86_64"}
OLD = {"libsut-1.0-1.x86_64", "sutprog-1.0-1.x86_64"}
QF = "%{NAME}-%{EVR}.%{ARCH}\\n"


def _el8_bdb(world: RpmWorld, tmp: Path) -> Path:
    root = world.make_root(tmp / "root", "rhel")
    (root / "etc/os-release").write_text(EL8)
    copy, db, packages = _copy(root, "root-bdb")
    for name, data in bdb_files([(p.hnum, p) for p in packages],
                                counter=max(p.hnum for p in packages)).items():
        (db / name).write_bytes(data)
    return copy


def _leap_ndb(world: RpmWorld, tmp: Path) -> Path:
    root = world.make_root(tmp / "root", "rhel")
    (root / "etc/os-release").write_text(LEAP)
    shutil.rmtree(root / "etc/yum.repos.d")
    (root / "etc/zypp/repos.d").mkdir(parents=True)
    (root / "etc/zypp/repos.d/sut.repo").write_text(
        _zypp_repo("https://rpm.sut.example/repo/$releasever/$basearch/"))
    conv = subprocess.run([str(ndb_rpm().parent / "rpmdb"), "--root", str(root),
                           "--dbpath", "/var/lib/rpm", "--define", "_db_backend ndb",
                           "--rebuilddb"], capture_output=True, text=True, env=ENV)
    assert conv.returncode == 0, conv.stderr
    assert (root / "var/lib/rpm/Packages.db").is_file()
    return root


def _run_patched(docker: Docker, world: RpmWorld, tmp: Path, root: Path, name: str) -> Path:
    """Patch the image of ``root``, run sutprog in it, and export its filesystem."""
    ref = write_image(root, tmp, "v1", layout=f"layout-{name}")
    patched = _patch(world, tmp, ref)
    image = docker.load_oci(patched, f"suture-test/rpm-{name}:patched")
    try:
        run = docker.run(image, "/usr/bin/sutprog")
        assert (run.returncode, run.stdout, run.stderr) == (0, "sutprog 2.0\n", ""), run
        return _exported_root(docker, image, tmp / f"exported-{name}")
    finally:
        docker.remove_images(image)


def _listed(text: str) -> set[str]:
    return {line for line in text.splitlines() if line and not line.startswith("gpg-pubkey")}


def test_el8_berkeley_db_in_container(docker_engine: Docker, rpm_world: RpmWorld,
                                      tmp_path: Path) -> None:
    after = _run_patched(docker_engine, rpm_world, tmp_path, _el8_bdb(rpm_world, tmp_path),
                         "el8")
    rpm = ["rpm", "--root", str(after), "--dbpath", "/var/lib/rpm",
           "--define", "_db_backend bdb_ro"]
    qa = subprocess.run([*rpm, "-qa", "--qf", QF], capture_output=True, text=True, env=ENV)
    assert qa.returncode == 0, qa.stderr
    assert _listed(qa.stdout) >= NEW
    assert not OLD & _listed(qa.stdout)
    qf = subprocess.run([*rpm, "-qf", "--qf", QF, "/usr/bin/sutprog",
                         "/usr/lib64/libsut.so.1"], capture_output=True, text=True, env=ENV)
    assert qf.stdout.splitlines() == ["sutprog-2.0-1.x86_64", "libsut-2.0-1.x86_64"], qf


def test_leap_ndb_in_container(docker_engine: Docker, rpm_world: RpmWorld,
                               tmp_path: Path) -> None:
    after = _run_patched(docker_engine, rpm_world, tmp_path, _leap_ndb(rpm_world, tmp_path),
                         "leap")
    assert not (after / "var/lib/rpm/Index.db").exists()  # rpm rebuilds it, below
    qa = subprocess.run([*ndb_cmd(after), "-qa", "--qf", QF], capture_output=True, text=True,
                        env=ENV)
    assert qa.returncode == 0, qa.stderr
    assert _listed(qa.stdout) >= NEW
    assert not OLD & _listed(qa.stdout)


def test_azurelinux_distroless_in_container(docker_engine: Docker, rpm_world: RpmWorld,
                                            tmp_path: Path) -> None:
    root, _oracle = _distroless(rpm_world, tmp_path, "azurelinux")
    after = _run_patched(docker_engine, rpm_world, tmp_path, root, "distroless")
    assert not (after / "var/lib/rpm").exists()
    listed = _listed((after / MANIFEST1).read_text())
    assert listed >= NEW
    assert not OLD & listed
