"""`suture patch` end to end on rpm images (RHEL 9, Fedora 40, Amazon Linux 2023, Azure
Linux 3.0), against a signed createrepo_c repository served on 127.0.0.1.

Packages, repositories and images come from :mod:`tests.fixtures.rpmrepo` (rpmbuild,
rpmsign, createrepo_c, and roots populated by the real ``rpm --root``). The CLI runs in
a subprocess; the tests read back what it wrote and judge it with the real tools:
``rpm -qa`` and ``rpmdb --verifydb`` on the patched layer's rpmdb, the files and
whiteouts of the image, the log the packages' scriptlets appended to, the VEX's
purls, and, as an oracle, ``rpm -U --root`` of the same packages on a copy of the
same root (file tree, ``rpm -qa`` and scriptlet log).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from suture.oci.fs import read_files
from suture.oci.image import Image
from tests.fixtures.patchimages import (
    error_line,
    layout_state,
    open_image,
    suture,
    trivy_report,
    write_image,
)
from tests.fixtures.rpmrepo import FAMILIES, KEY_PATH, LOG, RpmWorld

FAMILY_LIST = sorted(FAMILIES)
#: Trivy's OS family and name for each image (the report's Metadata.OS).
TRIVY_OS = {"rhel": ("redhat", "9.4"), "fedora": ("fedora", "40"),
            "amzn": ("amazon", "2023"), "azurelinux": ("azurelinux", "3.0"),
            "rocky": ("rocky", "9.4"), "almalinux": ("alma", "9.4"), "ol": ("oracle", "9.4")}
CVE = "CVE-2024-31337"
ENV = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LC_ALL": "C", "HOME": "/tmp"}


def _run(world: RpmWorld, tmp: Path, ref: str, tag: str, *args: str, repo: str = "good"
         ) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    result, vex = tmp / f"result-{tag}.json", tmp / f"vex-{tag}.json"
    proc = suture("patch", "-i", ref, "-t", tag, "--result", str(result), "-o", str(vex),
                  "--cache-dir", str(tmp / "cache"), "--mirror", world.mirror(repo),
                  "--allow-private-repos", "127.0.0.1", "--sandbox", "auto",
                  "--progress", "quiet", *args)
    return proc, result, vex


def _platform(result: Path) -> dict[str, Any]:
    (platform,) = json.loads(result.read_text())["platforms"]
    return dict(platform)


def _dbpath(family: str) -> str:
    return FAMILIES[family][2]


def _rpmdb(image: Image, family: str, dest: Path) -> Path:
    """The image's rpmdb.sqlite (merged view) copied into ``dest``; ``dest``."""
    path = f"{_dbpath(family)}/rpmdb.sqlite"
    found = read_files(image, [path], max_file=1 << 30)
    data = found[path].data
    assert data is not None
    dest.mkdir(parents=True)
    (dest / "rpmdb.sqlite").write_bytes(data)
    return dest


def _qa(dbpath: Path) -> list[str]:
    out = subprocess.run(["rpm", "--dbpath", str(dbpath), "-qa",
                          "--qf", "%{NAME}-%{EVR}.%{ARCH}\\n"],
                         check=True, capture_output=True, text=True, env=ENV).stdout
    return sorted(line for line in out.splitlines() if not line.startswith("gpg-pubkey"))


def _verifydb(dbpath: Path) -> None:
    proc = subprocess.run(["rpmdb", "--dbpath", str(dbpath), "--verifydb"],
                          capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def _contents(image: Image, *paths: str) -> dict[str, bytes | None]:
    found = read_files(image, paths)
    return {p: (found[p].data if p in found else None) for p in paths}


def _last_layer_names(image: Image) -> set[str]:
    with image.layers[-1].open_tar() as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        return {m.name.removeprefix("./").rstrip("/") for m in tar}


def _log(image: Image) -> list[str]:
    data = _contents(image, LOG)[LOG] or b""
    return data.decode().splitlines()


def _oracle(world: RpmWorld, root: Path, tmp: Path, family: str,
            stems: tuple[str, ...] = ("libsut-2.0-1", "sutprog-2.0-1")) -> Path:
    """A copy of ``root`` upgraded by ``rpm -U`` to the packages ``stems``."""
    copy = tmp / f"oracle-{family}"
    shutil.copytree(root, copy, symlinks=True)
    subprocess.run(["rpm", "--root", str(copy), "--dbpath", "/" + _dbpath(family), "-U",
                    *(str(world.pkg(s)) for s in stems)],
                   check=True, capture_output=True, env=ENV)
    return copy


def _tree(root: Path, family: str) -> dict[str, bytes | str]:
    """Regular files (contents) and symlinks (targets) of ``root`` outside the rpmdb."""
    out: dict[str, bytes | str] = {}
    skip = (_dbpath(family), "var/lib/rpm")
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel.startswith(skip):
            continue
        if path.is_symlink():
            out[rel] = str(path.readlink())
        elif path.is_file():
            out[rel] = path.read_bytes()
    return out


# --------------------------------------------------------------------------- patching


@pytest.mark.parametrize("family", FAMILY_LIST)
def test_update_all(rpm_world: RpmWorld, tmp_path: Path, family: str) -> None:
    ref, root = rpm_world.image(tmp_path, family)
    before_log = (root / LOG).read_text().splitlines()
    proc, result, _vex = _run(rpm_world, tmp_path, ref, "patched")
    assert proc.returncode == 0, proc.stderr
    platform = _platform(result)
    assert platform["status"] == "patched", platform["message"]
    assert sorted((u["name"], u["type"], u["from"], u["to"]) for u in platform["updates"]) == [
        ("libsut", "rpm", "1.0-1", "2.0-1"), ("sutprog", "rpm", "1.0-1", "2.0-1")]
    image = open_image(ref.rsplit(":", 1)[0] + ":patched")
    if shutil.which("skopeo"):  # another reader agrees on what was written
        raw = subprocess.run(["skopeo", "inspect", "--raw", ref.rsplit(":", 1)[0] + ":patched"],
                             check=True, capture_output=True).stdout
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == image.digest

    # the database, as rpm reads it
    db = _rpmdb(image, family, tmp_path / "db")
    _verifydb(db)
    assert _qa(db) == sorted(["libsut-2.0-1.x86_64", "sutprog-2.0-1.x86_64",
                              "sut-sh-1.0-1.x86_64",
                              f"sut-release-{FAMILIES[family][1]}-1.noarch"])

    # the files: new ones in, dropped ones whited out, the untouched config replaced
    got = _contents(image, "usr/lib64/libsut.so.1", "usr/share/sut/new.txt",
                    "usr/share/sut/old.txt", "etc/sut.conf", "usr/bin/sutprog")
    assert got == {"usr/lib64/libsut.so.1": b"libsut 2.0\n", "usr/share/sut/new.txt": b"new\n",
                   "usr/share/sut/old.txt": None, "etc/sut.conf": b"mode=2.0\n",
                   "usr/bin/sutprog": b"#!/bin/sh\necho sutprog 2.0\n"}
    assert "usr/share/sut/.wh.old.txt" in _last_layer_names(image)

    # the scriptlets ran, in the root, as rpm -U runs them on the same root
    oracle = _oracle(rpm_world, root, tmp_path, family)
    expected_log = (oracle / LOG).read_text().splitlines()
    assert expected_log[:len(before_log)] == before_log
    assert _log(image) == expected_log
    assert platform["scripts"]["notRun"] == []
    # libsut's %posttrans is Lua: its files, and the line its rpm.execute wrote
    assert "libsut 2.0 lua-posttrans" in expected_log
    lua_file = (oracle / "var/lib/sut/lua-posttrans").read_bytes()
    assert lua_file.startswith(b"libsut 2.0 posttrans ")
    assert _contents(image, "var/lib/sut/lua-posttrans") == {
        "var/lib/sut/lua-posttrans": lua_file}
    assert len(platform["scripts"]["ran"]) == len(expected_log) - len(before_log)

    _same_as_oracle(image, root, oracle, family, tmp_path)


def _same_as_oracle(image: Image, root: Path, oracle: Path, family: str, tmp: Path) -> None:
    """The image holds the files rpm -U left (same contents), none it removed, and the
    same packages."""
    want = _tree(oracle, family)
    files = [p for p, v in want.items() if isinstance(v, bytes)]
    assert len(files) > 5
    assert _contents(image, *files) == {p: want[p] for p in files}
    gone = [p for p in _tree(root, family) if p not in want]
    assert _contents(image, *gone) == dict.fromkeys(gone)
    assert _qa(_rpmdb(image, family, tmp / "db-oracle")) == _qa(oracle / _dbpath(family))


@pytest.mark.parametrize("family", FAMILY_LIST)
def test_report_driven_with_vex(rpm_world: RpmWorld, tmp_path: Path, family: str) -> None:
    ref, _root = rpm_world.image(tmp_path, family)
    trivy_family, trivy_name = TRIVY_OS[family]
    report = tmp_path / "trivy.json"
    report.write_text(json.dumps(trivy_report(trivy_family, trivy_name, [
        (CVE, "libsut", "1.0-1", "2.0-1"), ("CVE-2024-0002", "sut-sh", "1.0-1", "")])))
    proc, result, vex = _run(rpm_world, tmp_path, ref, "fixed", "-r", str(report))
    assert proc.returncode == 0, proc.stderr
    platform = _platform(result)
    assert [(u["name"], u["to"], u["reason"], u["vulnerabilities"])
            for u in platform["updates"]] == [("libsut", "2.0-1", "report", [CVE]),
                                              ("sutprog", "2.0-1", "dependency", [])]
    assert [(s["name"], s["reason"]) for s in platform["skipped"]] == [("sut-sh", "unfixed")]
    (statement,) = json.loads(vex.read_text())["statements"]
    assert statement["vulnerability"]["name"] == CVE
    subs = [s["@id"] for p in statement["products"] for s in p["subcomponents"]]
    # no distro qualifier: Trivy's (amazon-2023.6.20241010 from /etc/system-release)
    # need not be os-release's, and a VEX purl matches only with all its qualifiers
    assert subs == [f"pkg:rpm/{trivy_family}/libsut@2.0-1?arch=x86_64"]
    db = _rpmdb(open_image(ref.rsplit(":", 1)[0] + ":fixed"), family, tmp_path / "db")
    _verifydb(db)
    assert "libsut-2.0-1.x86_64" in _qa(db)


def _grype(distro: str, version: str) -> dict[str, Any]:
    """A Grype JSON report naming the libsut CVE (an rpm match, an epoch-less fix)."""
    return {"matches": [{
        "vulnerability": {"id": CVE, "severity": "High",
                          "fix": {"versions": ["2.0-1"], "state": "fixed"}},
        "artifact": {"name": "libsut", "version": "1.0-1", "type": "rpm",
                     "purl": "pkg:rpm/redhat/libsut@1.0-1?arch=x86_64"}}],
        "source": {"type": "image", "target": {"userInput": "sut:1"}},
        "distro": {"name": distro, "version": version}}


def _copa(os_type: str, version: str) -> dict[str, Any]:
    """A copa v1alpha1 document naming the libsut CVE."""
    return {"apiVersion": "v1alpha1",
            "metadata": {"os": {"type": os_type, "version": version},
                         "config": {"arch": "amd64"}},
            "updates": [{"name": "libsut", "installedVersion": "1.0-1",
                         "fixedVersion": "2.0-1", "vulnerabilityID": CVE}]}


@pytest.mark.parametrize(("family", "kind", "document"), [
    ("rhel", "grype", _grype("redhat", "9.4")),
    ("rocky", "grype", _grype("rockylinux", "9.4")),
    ("amzn", "grype", _grype("amazonlinux", "2023")),
    ("rhel", "copa", _copa("redhat", "9.4")),
    ("ol", "copa", _copa("oracle", "9.4")),
], ids=["grype-rhel", "grype-rocky", "grype-amzn", "copa-rhel", "copa-oracle"])
def test_grype_and_copa_reports(rpm_world: RpmWorld, tmp_path: Path, family: str, kind: str,
                                document: dict[str, Any]) -> None:
    ref, _root = rpm_world.image(tmp_path, family)
    report = tmp_path / f"{kind}.json"
    report.write_text(json.dumps(document))
    proc, result, _vex = _run(rpm_world, tmp_path, ref, "fixed", "-r", str(report))
    assert proc.returncode == 0, proc.stderr
    platform = _platform(result)
    assert [(u["name"], u["to"], u["reason"], u["vulnerabilities"])
            for u in platform["updates"]] == [("libsut", "2.0-1", "report", [CVE]),
                                              ("sutprog", "2.0-1", "dependency", [])]
    db = _rpmdb(open_image(ref.rsplit(":", 1)[0] + ":fixed"), family, tmp_path / "db")
    _verifydb(db)
    assert "libsut-2.0-1.x86_64" in _qa(db)


# --------------------------------------------------------------------------- refusals


def test_tampered_package_refused(rpm_world: RpmWorld, tmp_path: Path) -> None:
    ref, _root = rpm_world.image(tmp_path, "rhel")
    layout = Path(ref.split(":")[1])
    before = layout_state(layout)
    proc, result, _vex = _run(rpm_world, tmp_path, ref, "bad", repo="tampered")
    assert proc.returncode != 0
    line = error_line(proc)
    assert "libsut-2.0-1.x86_64: payload digest mismatch" in line, line
    assert _platform(result)["status"] == "error"
    assert layout_state(layout) == before  # nothing written


def test_lower_version_is_not_a_downgrade(rpm_world: RpmWorld, tmp_path: Path) -> None:
    ref, _root = rpm_world.image(tmp_path, "fedora")
    layout = Path(ref.split(":")[1])
    before = layout_state(layout)
    proc, result, _vex = _run(rpm_world, tmp_path, ref, "same", repo="lower")
    assert proc.returncode == 0, proc.stderr
    platform = _platform(result)
    assert platform["status"] == "up-to-date" and platform["updates"] == []
    assert layout_state(layout) == before


def test_a_packages_file_that_is_not_berkeley_db_refused(rpm_world: RpmWorld,
                                                         tmp_path: Path) -> None:
    """Berkeley DB rpmdbs are patched (tests/test_patch_rpm_backends.py); a ``Packages``
    that is not one (here an sqlite file under that name) is refused, naming it, and
    nothing is written."""
    ref, root = rpm_world.image(tmp_path, "rhel")
    (root / "var/lib/rpm/rpmdb.sqlite").rename(root / "var/lib/rpm/Packages")
    ref = write_image(root, tmp_path, "bdb", layout="layout-bdb")
    layout = Path(ref.split(":")[1])
    before = layout_state(layout)
    proc, _result, _vex = _run(rpm_world, tmp_path, ref, "bad")
    assert proc.returncode != 0
    line = error_line(proc)
    assert "/var/lib/rpm/Packages" in line and "not a Berkeley DB" in line, line
    assert layout_state(layout) == before


def test_an_rpmdb_that_is_not_one_refused(rpm_world: RpmWorld, tmp_path: Path) -> None:
    ref, root = rpm_world.image(tmp_path, "rhel")
    (root / "var/lib/rpm/rpmdb.sqlite").write_bytes(b"SQLite format 3\x00" + b"\x17" * 4080)
    ref = write_image(root, tmp_path, "junk", layout="layout-junk")
    layout = Path(ref.split(":")[1])
    before = layout_state(layout)
    proc, _result, _vex = _run(rpm_world, tmp_path, ref, "bad")
    assert proc.returncode != 0
    line = error_line(proc)
    assert "rpmdb.sqlite" in line and "sqlite" in line, line
    assert layout_state(layout) == before


def test_signed_by_an_untrusted_key_refused(rpm_world: RpmWorld, tmp_path: Path) -> None:
    ref, _root = rpm_world.image(tmp_path, "azurelinux")
    layout = Path(ref.split(":")[1])
    before = layout_state(layout)
    proc, _result, _vex = _run(rpm_world, tmp_path, ref, "bad", repo="foreign")
    assert proc.returncode != 0
    line = error_line(proc)
    assert rpm_world.other.keyid in line.lower(), line
    assert layout_state(layout) == before
    # the user's --keyring makes the same packages trusted
    keyring = tmp_path / "other.asc"
    keyring.write_bytes(rpm_world.other.armored)
    proc, result, _vex = _run(rpm_world, tmp_path, ref, "ok", "--keyring", str(keyring),
                              repo="foreign")
    assert proc.returncode == 0, proc.stderr
    assert _platform(result)["status"] == "patched"


def test_keys_from_the_rpmdb_alone(rpm_world: RpmWorld, tmp_path: Path) -> None:
    """An image without the gpgkey file: the key rpm --import put in the rpmdb is trusted."""
    root = rpm_world.make_root(tmp_path / "root", "amzn")
    (root / KEY_PATH).unlink()
    ref = write_image(root, tmp_path, "v1")
    proc, result, _vex = _run(rpm_world, tmp_path, ref, "patched")
    assert proc.returncode == 0, proc.stderr
    platform = _platform(result)
    assert platform["status"] == "patched", platform["message"]
    assert "Amazon Linux 2023: repositories read at releasever=latest" in platform["notes"]


def test_edited_config_kept_as_rpm_does(rpm_world: RpmWorld, tmp_path: Path) -> None:
    """%config(noreplace) edited by the user: kept, the new one beside it (as rpm -U)."""
    root = rpm_world.make_root(tmp_path / "root", "rhel")
    (root / "etc/sut.conf").write_text("mode=mine\n")
    ref = write_image(root, tmp_path, "v1")
    proc, result, _vex = _run(rpm_world, tmp_path, ref, "patched")
    assert proc.returncode == 0, proc.stderr
    assert _platform(result)["status"] == "patched"
    image = open_image(ref.rsplit(":", 1)[0] + ":patched")
    assert _contents(image, "etc/sut.conf", "etc/sut.conf.rpmnew") == {
        "etc/sut.conf": b"mode=mine\n", "etc/sut.conf.rpmnew": b"mode=2.0\n"}
    oracle = _oracle(rpm_world, root, tmp_path, "rhel")
    _same_as_oracle(image, root, oracle, "rhel", tmp_path)


def test_includepkgs_limits_the_candidates(rpm_world: RpmWorld, tmp_path: Path) -> None:
    """includepkgs=sut-* leaves libsut and sutprog 2.0 out: nothing to update."""
    root = rpm_world.make_root(tmp_path / "root", "fedora")
    repo = root / "etc/yum.repos.d/sut.repo"
    text = repo.read_text().replace("gpgcheck=1\n", "gpgcheck=1\nincludepkgs=sut-*\n", 1)
    # a key file that is no key is skipped, the good one still used
    repo.write_text(text.replace("gpgkey=", "gpgkey=file:///etc/pki/rpm-gpg/broken.asc ", 1))
    (root / "etc/pki/rpm-gpg/broken.asc").write_bytes(b"not a key")
    ref = write_image(root, tmp_path, "v1")
    proc, result, _vex = _run(rpm_world, tmp_path, ref, "same")
    assert proc.returncode == 0, proc.stderr
    assert _platform(result)["status"] == "up-to-date"


@pytest.mark.parametrize(("to", "os_id", "distro", "purl"), [
    ("1:3.0.7-28.el9", "rhel", "rhel-9.4",
     "pkg:rpm/redhat/openssl@3.0.7-28.el9?arch=x86_64&distro=redhat-9.4&epoch=1"),
    ("0:1.2-3", "amzn", "amzn-2023", "pkg:rpm/amazon/openssl@1.2-3?arch=x86_64&distro=amazon-2023"),
    ("1.2-3", "azurelinux", "azurelinux-3.0",
     "pkg:rpm/azurelinux/openssl@1.2-3?arch=x86_64&distro=azurelinux-3.0"),
])
def test_rpm_purl(to: str, os_id: str, distro: str, purl: str) -> None:
    from suture.plan import Update
    from suture.vex import VexProduct, package_purl, vex_subcomponents

    update = Update("openssl", "x86_64", "1.0-1", to, "openssl", "report")
    product = VexProduct("pkg:oci/x", (update,), os_id, distro, "rpm")
    assert package_purl(update, product) == purl
    # the VEX names it without distro (Trivy's may differ), epoch kept
    assert vex_subcomponents(update, product) == (
        purl.replace(f"&distro={purl.split('distro=')[1].split('&')[0]}", ""),)


def test_obsoleting_rename(rpm_world: RpmWorld, tmp_path: Path) -> None:
    """sutng obsoletes sutprog: update-all installs it and erases sutprog, as rpm -U."""
    ref, root = rpm_world.image(tmp_path, "rhel")
    proc, result, _vex = _run(rpm_world, tmp_path, ref, "patched", repo="renamed")
    assert proc.returncode == 0, proc.stderr
    platform = _platform(result)
    assert platform["status"] == "patched", platform["message"]
    assert sorted((u["name"], u["from"], u["to"]) for u in platform["updates"]) == [
        ("libsut", "1.0-1", "2.0-1"), ("sutng", "1.0-1", "2.0-1")]
    image = open_image(ref.rsplit(":", 1)[0] + ":patched")
    db = _rpmdb(image, "rhel", tmp_path / "db")
    _verifydb(db)
    assert "sutprog-1.0-1.x86_64" not in _qa(db) and "sutng-2.0-1.x86_64" in _qa(db)
    oracle = _oracle(rpm_world, root, tmp_path, "rhel", ("libsut-2.0-1", "sutng-2.0-1"))
    assert _log(image) == (oracle / LOG).read_text().splitlines()
    _same_as_oracle(image, root, oracle, "rhel", tmp_path)
