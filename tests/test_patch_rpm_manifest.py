"""Distroless Azure Linux and CBL-Mariner images: no rpm database, only
``/var/lib/rpmmanifest/container-manifest-{1,2}``.

The image: :mod:`tests.fixtures.rpmrepo`'s version 1 set on an Azure Linux 3.0 (or
CBL-Mariner 2.0) root, made distroless as the distribution's tooling makes it: the
``gpg-pubkey`` entries erased, both manifests written with ``rpm -qa`` (and
container-manifest-2's query format), then the rpm database removed. The oracle is the
same upgrade by the real rpm on a copy of the root that kept its database
(``rpm -U --noscripts --notriggers``, as the tooling runs no scriptlets in a
distroless image), with the manifests queried the same way: the files and both
manifests must equal what ``suture patch`` wrote (install times aside).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from suture.distro.rpm.manifest import MANIFEST1, MANIFEST2, MANIFEST2_FORMAT
from suture.oci.fs import read_files
from tests.fixtures.patchimages import error_line, layout_state, open_image, write_image
from tests.fixtures.rpmbuild import RPM_DB
from tests.fixtures.rpmrepo import RpmWorld
from tests.test_patch_rpm import _platform, _run

ENV = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LC_ALL": "C", "HOME": "/tmp"}
MARINER = ('NAME="Common Base Linux Mariner"\nID=mariner\nVERSION_ID="2.0"\n'
           'PRETTY_NAME="CBL-Mariner/Linux"\n')


def _rpm(root: Path, *args: str) -> bytes:
    return subprocess.run(["rpm", "--root", str(root), *RPM_DB, *args], check=True,
                          capture_output=True, env=ENV).stdout


def _manifests(root: Path) -> tuple[bytes, bytes]:
    return _rpm(root, "-qa"), _rpm(root, "-qa", "--qf", MANIFEST2_FORMAT)


def _distroless(world: RpmWorld, tmp: Path, family: str) -> tuple[Path, Path]:
    """(the distroless root, a copy of it that kept its rpm database)."""
    root = world.make_root(tmp / "root", "azurelinux")
    if family == "mariner":  # its releasever comes from os-release: 2.0
        (root / "etc/os-release").write_text(MARINER)
        served = world.server.root / "good/2.0"
        if not served.exists():
            served.mkdir()
            (served / "x86_64").symlink_to("../pool")
    _rpm(root, "-e", "--allmatches", "gpg-pubkey")
    keep = tmp / "with-db"
    shutil.copytree(root, keep, symlinks=True)
    one, two = _manifests(root)
    (root / MANIFEST1).parent.mkdir(parents=True)
    (root / MANIFEST1).write_bytes(one)
    (root / MANIFEST2).write_bytes(two)
    shutil.rmtree(root / "var/lib/rpm")
    return root, keep


def _mask(manifest2: bytes) -> list[list[str]]:
    """container-manifest-2's lines with the install time left out."""
    return [line.split("\t")[:2] + line.split("\t")[3:]
            for line in manifest2.decode().splitlines()]


def _tree(root: Path) -> dict[str, bytes | str | None]:
    out: dict[str, bytes | str | None] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel.startswith(("var/lib/rpm", "var/lib/rpmmanifest")):
            continue
        out[rel] = (f"-> {path.readlink()}" if path.is_symlink()
                    else path.read_bytes() if path.is_file() else None)
    return out


@pytest.mark.parametrize("family", ["azurelinux", "mariner"])
def test_distroless_update_all_as_rpm_does(rpm_world: RpmWorld, tmp_path: Path,
                                          family: str) -> None:
    root, oracle = _distroless(rpm_world, tmp_path, family)
    ref = write_image(root, tmp_path, "v1")
    proc, result, _vex = _run(rpm_world, tmp_path, ref, "v1-patched")
    assert proc.returncode == 0, proc.stderr
    platform = _platform(result)
    assert sorted((u["name"], u["from"], u["to"]) for u in platform["updates"]) == [
        ("libsut", "1.0-1", "2.0-1"), ("sutprog", "1.0-1", "2.0-1")]

    _rpm(oracle, "-U", "--noscripts", "--notriggers",
         str(rpm_world.pkg("libsut-2.0-1")), str(rpm_world.pkg("sutprog-2.0-1")))
    want1, want2 = _manifests(oracle)

    image = open_image(ref.rsplit(":", 1)[0] + ":v1-patched")
    got = read_files(image, [MANIFEST1, MANIFEST2])
    got1, got2 = got[MANIFEST1].data, got[MANIFEST2].data
    assert got1 is not None and got2 is not None
    assert got1 == want1
    assert _mask(got2) == _mask(want2)
    # no rpm database appears, and the files are rpm's (libsut 1.0's old.txt gone)
    unpacked = tmp_path / "patched"
    subprocess.run(["umoci", "raw", "unpack", "--rootless", "--image",
                    ref.removeprefix("oci:") + "-patched", str(unpacked)],
                   check=True, capture_output=True)
    assert not (unpacked / "var/lib/rpm").exists()
    assert _tree(unpacked) == _tree(oracle)
    assert not (unpacked / "usr/share/sut/old.txt").exists()


def test_manifest_with_bad_line_is_refused(rpm_world: RpmWorld, tmp_path: Path) -> None:
    root, _oracle = _distroless(rpm_world, tmp_path, "azurelinux")
    with (root / MANIFEST2).open("ab") as fh:
        fh.write(b"broken line\n")
    ref = write_image(root, tmp_path, "v1")
    before = layout_state(tmp_path / "layout")
    proc, _result, _vex = _run(rpm_world, tmp_path, ref, "v1-patched")
    assert proc.returncode != 0
    assert "container-manifest-2" in error_line(proc) and "fields" in error_line(proc)
    assert layout_state(tmp_path / "layout") == before
