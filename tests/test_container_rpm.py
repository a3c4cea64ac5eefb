"""Patched rpm images (RHEL 9.4, Fedora 40, Amazon Linux 2023, Azure Linux 3.0) judged by
a real container engine (dockerd, :mod:`tests.fixtures.dockerd`) and by the real rpm.

Each family image of :mod:`tests.fixtures.rpmrepo` (version 1 set installed by ``rpm
--root``) is patched by ``suture patch`` (update-all, through ``--mirror`` to the served
``good`` repository). The original goes into the engine with ``skopeo copy`` of its
``oci:`` layout, the patched image both ways a user would load it (``skopeo copy`` of
suture's ``oci:`` output, ``docker load -i`` of ``suture copy`` to ``docker-archive:``),
and the two loads must be one image, suture's. Then, with ``--network none``:

* ``/usr/bin/sutprog`` (a ``#!/bin/sh`` script run by the image's busybox ``/bin/sh``)
  prints ``sutprog 2.0`` in the patched image (``sutprog 1.0`` in the original);
* the container's filesystem as the engine exports it (``docker export``, extracted by
  GNU tar with numeric owners and modes) is verified by Debian's rpm: ``rpm -Va`` on the
  patched root prints no line the original's ``rpm -Va`` did not print, and ``rpm -qa``
  lists exactly the 2.0 packages (and the untouched ones).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from suture.oci.image import Image
from suture.transports import open_artifact
from tests.fixtures.dockerd import Docker
from tests.fixtures.patchimages import suture
from tests.fixtures.rpmrepo import FAMILIES, RpmWorld

pytestmark = [pytest.mark.tools]

FAMILY_LIST = sorted(FAMILIES)
ENV = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LC_ALL": "C", "HOME": "/tmp"}
QF = "%{NAME}-%{EVR}.%{ARCH}\\n"


def _config_digest(ref: str) -> str:
    image = open_artifact(ref)
    assert isinstance(image, Image)
    return image.manifest.config.digest


def _patch(world: RpmWorld, tmp: Path, ref: str) -> str:
    """``suture patch`` of ``ref`` (update-all) to the tag ``patched``; that reference."""
    result = tmp / "result.json"
    proc = suture("patch", "-i", ref, "-t", "patched", "--result", str(result),
                  "--cache-dir", str(tmp / "cache"), "--mirror", world.mirror("good"),
                  "--allow-private-repos", "127.0.0.1", "--sandbox", "auto",
                  "--progress", "quiet")
    assert proc.returncode == 0, proc.stderr
    (platform,) = json.loads(result.read_text())["platforms"]
    assert platform["status"] == "patched", platform["message"]
    assert sorted((u["name"], u["to"]) for u in platform["updates"]) == [
        ("libsut", "2.0-1"), ("sutprog", "2.0-1")]
    return ref.rsplit(":", 1)[0] + ":patched"


@dataclass(frozen=True)
class Loaded:
    original: str
    oci: str
    archive: str


def _load(docker: Docker, tmp: Path, family: str, original: str, patched: str) -> Loaded:
    orig = docker.load_oci(original, f"suture-test/rpm-{family}:original")
    oci = docker.load_oci(patched, f"suture-test/rpm-{family}:oci")
    archive_name = f"suture-test/rpm-{family}:archive"
    archive = tmp / "patched.tar"
    copy = suture("copy", patched, f"docker-archive:{archive}:{archive_name}")
    assert copy.returncode == 0, copy.stderr
    assert docker.load_archive(archive) == [archive_name]
    config = _config_digest(patched)
    assert docker.image_id(oci) == docker.image_id(archive_name) == config
    assert docker.image_id(orig) == _config_digest(original) != config
    return Loaded(orig, oci, archive_name)


def _exported_root(docker: Docker, image: str, dest: Path) -> Path:
    """The filesystem of a (never started) container of ``image``, as ``docker export``
    writes it, extracted to ``dest`` with its owners and modes."""
    cid = docker.cli("create", "--network", "none", image, "/usr/bin/sutprog").stdout.strip()
    tar = dest.with_suffix(".tar")
    try:
        docker.cli("export", "-o", str(tar), cid)
    finally:
        docker.cli("rm", "-f", cid, check=False)
    dest.mkdir()
    subprocess.run(["tar", "--numeric-owner", "-xpf", str(tar), "-C", str(dest)],
                   check=True, capture_output=True)
    tar.unlink()
    return dest


def _rpm(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", *args],
                          capture_output=True, text=True, env=ENV)


def _verify_lines(root: Path) -> set[str]:
    """``rpm -Va`` on ``root``: its lines (it exits 1 when it prints any)."""
    proc = _rpm(root, "-Va")
    assert proc.returncode in (0, 1) and proc.stderr == "", proc.stderr
    assert (proc.returncode == 1) == bool(proc.stdout.strip()), proc
    return set(proc.stdout.splitlines())


def _qa(root: Path) -> list[str]:
    proc = _rpm(root, "-qa", "--qf", QF)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return sorted(ln for ln in proc.stdout.splitlines() if not ln.startswith("gpg-pubkey-"))


@pytest.mark.parametrize("family", FAMILY_LIST)
def test_update_all_in_container(docker_engine: Docker, rpm_world: RpmWorld, tmp_path: Path,
                                 family: str) -> None:
    ref, _root = rpm_world.image(tmp_path, family)
    patched = _patch(rpm_world, tmp_path, ref)
    loaded = _load(docker_engine, tmp_path, family, ref, patched)
    try:
        # A program of an upgraded package runs, and is the new one.
        for image in (loaded.oci, loaded.archive):
            run = docker_engine.run(image, "/usr/bin/sutprog")
            assert (run.returncode, run.stdout, run.stderr) == (0, "sutprog 2.0\n", ""), run
        run = docker_engine.run(loaded.original, "/usr/bin/sutprog")
        assert (run.returncode, run.stdout) == (0, "sutprog 1.0\n"), run

        # The engine's view of the filesystem, verified by rpm against its own database.
        before = _exported_root(docker_engine, loaded.original, tmp_path / "exported-original")
        after = _exported_root(docker_engine, loaded.archive, tmp_path / "exported-patched")
        release = f"sut-release-{FAMILIES[family][1]}-1.noarch"
        assert _qa(before) == sorted(["libsut-1.0-1.x86_64", "sutprog-1.0-1.x86_64",
                                      "sut-sh-1.0-1.x86_64", release])
        assert _qa(after) == sorted(["libsut-2.0-1.x86_64", "sutprog-2.0-1.x86_64",
                                     "sut-sh-1.0-1.x86_64", release])
        original_va = _verify_lines(before)
        patched_va = _verify_lines(after)
        assert patched_va - original_va == set(), (sorted(patched_va), sorted(original_va))
        # The files of the new packages are in the database, owned by them.
        owners = _rpm(after, "-qf", "--qf", QF, "/usr/bin/sutprog", "/usr/lib64/libsut.so.1",
                      "/usr/share/sut/new.txt", "/etc/sut.conf")
        assert owners.stdout.splitlines() == ["sutprog-2.0-1.x86_64", "libsut-2.0-1.x86_64",
                                              "libsut-2.0-1.x86_64", "sutprog-2.0-1.x86_64"]
        assert not (after / "usr/share/sut/old.txt").exists()
    finally:
        docker_engine.remove_images(loaded.original, loaded.oci, loaded.archive)
