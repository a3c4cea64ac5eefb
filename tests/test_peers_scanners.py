"""Syft and Trivy, built from source (``scripts/peers``), read what suture writes.

Each test patches an image with the real CLI (to an OCI layout, then ``suture copy`` to a
docker-archive), and asks the scanners for the image's OS packages: ``syft <source> -o
json`` and Trivy in SBOM mode (``trivy image --input ... --format cyclonedx``, which scans
for no vulnerabilities and so needs no database and no network). Both must list exactly
the package name -> version set that suture wrote into the image's package database,
read back with the package manager's own tool where it reads a root (``dpkg-query
--admindir``, ``rpm --dbpath``), including the upgraded versions the result JSON names.

Images: a Debian image from a local signed archive (an epoch version, a binary whose
source package has another version), a two-layer bookworm from the real archive
(network), the local archive's packages recast distroless-style
(``var/lib/dpkg/status.d``), an Alpine-style apk image, and rpm images (RHEL 9 with
``var/lib/rpm``, Fedora 40 with ``usr/lib/sysimage/rpm``).
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from suture.devtools.debian_image import image_from_layers
from suture.devtools.rootfs import diff_entries, distroless_entries
from suture.oci.fs import read_files
from suture.oci.image import Image
from suture.oci.model import Platform
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
from tests.fixtures.aptrepo import AptRepo, GpgKeys
from tests.fixtures.images import make_image
from tests.fixtures.patchimages import (
    Archive,
    debian_os_release,
    make_root,
    open_image,
    suture,
    versions,
    write_image,
)
from tests.fixtures.peers import peer
from tests.fixtures.rpmrepo import FAMILIES, RpmWorld

pytestmark = pytest.mark.tools

Packages = dict[str, str]
AMD64 = Platform.parse("linux/amd64")
CODENAME = "bookworm"


# ---------------------------------------------------------------- the scanners


def syft_packages(source: str, kind: str, tmp: Path) -> Packages:
    """``syft SOURCE -o json``: name -> version of its packages of type ``kind``."""
    env = {**os.environ, "SYFT_CHECK_FOR_APP_UPDATE": "false",
           "SYFT_CACHE_DIR": str(tmp / "syft-cache"), "HOME": str(tmp)}
    proc = subprocess.run([str(peer("syft")), "scan", source, "-o", "json", "-q"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    return _unique([(a["name"], a["version"]) for a in doc["artifacts"] if a["type"] == kind],
                   f"syft {source}")


def trivy_packages(target: Path, purl_type: str, os_name: str, tmp: Path) -> Packages:
    """``trivy image --input TARGET --format cyclonedx`` (an SBOM: no vulnerability scan,
    no database, offline): name -> version of its ``pkg:<purl_type>`` components. Trivy
    must have detected the operating system ``os_name`` (its family: debian, alpine,
    redhat, fedora)."""
    env = {**os.environ, "HOME": str(tmp), "TRIVY_DISABLE_VEX_NOTICE": "true"}
    proc = subprocess.run([str(peer("trivy")), "image", "--input", str(target),
                           "--format", "cyclonedx", "--cache-dir", str(tmp / "trivy-cache"),
                           "--skip-db-update", "--offline-scan", "--skip-version-check",
                           "--disable-telemetry", "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert "vulnerabilities" not in doc or doc["vulnerabilities"] == []
    assert [c["name"] for c in doc.get("components", [])
            if c["type"] == "operating-system"] == [os_name], proc.stdout
    components = [c for c in doc.get("components", [])
                  if c.get("purl", "").startswith(f"pkg:{purl_type}/")]
    return _unique([(c["name"], c["version"]) for c in components], f"trivy {target}")


def _unique(pairs: list[tuple[str, str]], what: str) -> Packages:
    out = dict(pairs)
    assert len(out) == len(pairs), f"{what} lists a package twice: {sorted(pairs)}"
    return out


def scans(layout_ref: str, kind: str, purl_type: str, os_name: str, tmp: Path
          ) -> dict[str, Packages]:
    """What Syft and Trivy list for the image ``layout_ref`` (``oci:DIR:TAG``, the only
    image in its layout) as an OCI layout and as a docker-archive written by suture."""
    layout = Path(layout_ref.removeprefix("oci:").rsplit(":", 1)[0])
    archive = tmp / "patched-docker.tar"
    copy = suture("copy", layout_ref, f"docker-archive:{archive}:suture.test/scanned:patched")
    assert copy.returncode == 0, copy.stderr
    with tarfile.open(archive) as tar:
        assert "manifest.json" in tar.getnames()
    return {
        "syft oci-dir": syft_packages(f"oci-dir:{layout}", kind, tmp),
        "syft docker-archive": syft_packages(f"docker-archive:{archive}", kind, tmp),
        "trivy layout": trivy_packages(layout, purl_type, os_name, tmp),
        "trivy docker-archive": trivy_packages(archive, purl_type, os_name, tmp),
    }


def assert_scanners_agree(found: dict[str, Packages], written: Packages) -> None:
    for scanner, packages in found.items():
        assert packages == written, (
            f"{scanner} disagrees with the package database suture wrote: "
            f"only in the scan {sorted(set(packages.items()) - set(written.items()))}, "
            f"only in the database {sorted(set(written.items()) - set(packages.items()))}")


def patched(ref: str, tmp: Path, *args: str) -> tuple[str, dict[str, Any]]:
    """``suture patch -i REF ARGS`` into a layout of its own; (its reference, the platform
    of the result JSON), which must say patched."""
    dest, result = f"oci:{tmp}/patched:patched", tmp / "result.json"
    proc = suture("patch", "-i", ref, "--dest", dest, "--result", str(result),
                  "--cache-dir", str(tmp / "cache"), "--progress", "quiet", *args)
    assert proc.returncode == 0, proc.stderr
    [platform] = json.loads(result.read_text())["platforms"]
    assert platform["status"] == "patched", platform
    return dest, platform


def upgraded(platform: dict[str, Any]) -> Packages:
    return {u["name"]: u["to"] for u in platform["updates"]}


# ---------------------------------------------------------------- deb


@pytest.fixture
def debian_archive(apt_repo: AptRepo, gpg_keys: GpgKeys, tmp_path: Path
                   ) -> tuple[Archive, list[Path]]:
    """bookworm: a 1.0-1, libe 1:2.0-1 (epoch), d 1.0-1 (Source: dsrc (7.1-1)), z 1.0-1;
    -security: a 2.0-1, libe 1:2.0-1+deb12u1; -updates: d 1.0-1+b1 (a binNMU: source
    version unchanged)."""
    archive = Archive.create(apt_repo, gpg_keys.good, tmp_path, CODENAME)
    security, updates = f"{CODENAME}-security", f"{CODENAME}-updates"
    v1 = [archive.add(CODENAME, "a", "1.0-1"),
          archive.add(CODENAME, "libe", "1:2.0-1", fields={"Multi-Arch": "same"}),
          archive.add(CODENAME, "d", "1.0-1", fields={"Source": "dsrc (7.1-1)"}),
          archive.add(CODENAME, "z", "1.0-1")]
    archive.add(security, "a", "2.0-1")
    archive.add(security, "libe", "1:2.0-1+deb12u1", fields={"Multi-Arch": "same"})
    archive.add(updates, "d", "1.0-1+b1", fields={"Source": "dsrc (7.1-1)"})
    archive.publish()
    return archive, v1


#: Trivy knows Debian by this file (base-files ships it), not by os-release.
DEBIAN_VERSION = {"etc/debian_version": b"12.8\n"}
EXPECTED_DEB = {"a": "2.0-1", "libe": "1:2.0-1+deb12u1", "d": "1.0-1+b1", "z": "1.0-1"}


def _dpkg_query(image: Image, tmp: Path) -> Packages:
    """The written ``var/lib/dpkg/status`` as ``dpkg-query --admindir`` reads it."""
    data = read_files(image, ["var/lib/dpkg/status"])["var/lib/dpkg/status"].data
    assert data is not None
    admin = tmp / "admindir"
    (admin / "info").mkdir(parents=True)
    (admin / "status").write_bytes(data)
    (admin / "available").write_bytes(b"")
    out = subprocess.run(["dpkg-query", f"--admindir={admin}", "-W",
                          "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\n"],
                         check=True, capture_output=True, text=True).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    assert all(status.strip() == "ii" for status, _n, _v in rows), out
    return _unique([(name, version) for _s, name, version in rows], "dpkg-query")


def test_debian_image(debian_archive: tuple[Archive, list[Path]], tmp_path: Path) -> None:
    archive, v1 = debian_archive
    root = make_root(tmp_path / "root", v1, debian_os_release(),
                     sources={"etc/apt/sources.list":
                              f"deb http://deb.debian.org/debian {CODENAME} main\n"},
                     keyring=archive.key_asc(), files=DEBIAN_VERSION)
    ref = write_image(root, tmp_path, "v1")
    out, platform = patched(ref, tmp_path, *archive.mirror_args(), "--no-host-keyrings")
    image = open_image(out)
    written = _dpkg_query(image, tmp_path)
    assert written == versions(image) == EXPECTED_DEB
    assert upgraded(platform) == {"a": "2.0-1", "libe": "1:2.0-1+deb12u1", "d": "1.0-1+b1"}
    assert_scanners_agree(scans(out, "deb", "deb", "debian", tmp_path), written)


def test_distroless_status_d_image(debian_archive: tuple[Archive, list[Path]],
                                  tmp_path: Path) -> None:
    """The same packages the way distroless ships them: a ``status.d/<pkg>`` stanza and
    ``<pkg>.md5sums`` each, no ``status``, no dpkg or apt; suture writes the same form."""
    archive, v1 = debian_archive
    root = make_root(tmp_path / "root", v1, debian_os_release(), files=DEBIAN_VERSION)
    tar = tmp_path / "root.tar"
    subprocess.run(["tar", "--numeric-owner", "--owner=0", "--group=0", "--sort=name",
                    "-C", str(root), "-cf", str(tar), "."], check=True, capture_output=True)
    entries = distroless_entries(tar)
    layout = tmp_path / "layout"
    ref = write_oci(make_image(entries), layout, "v1")
    out, platform = patched(ref, tmp_path, *archive.mirror_args(),
                            "--keyring", str(archive.key_file()), "--no-host-keyrings")
    image = open_image(out)
    files = read_files(image, ["var/lib/dpkg/status"], prefixes=["var/lib/dpkg/status.d"])
    assert "var/lib/dpkg/status" not in files
    assert {p for p in files if not p.endswith(".md5sums")} == {
        f"var/lib/dpkg/status.d/{n}" for n in EXPECTED_DEB}
    written = versions(image)
    assert written == EXPECTED_DEB
    assert upgraded(platform) == {"a": "2.0-1", "libe": "1:2.0-1+deb12u1", "d": "1.0-1+b1"}
    assert_scanners_agree(scans(out, "deb", "deb", "debian", tmp_path), written)


@pytest.mark.network
def test_real_bookworm_two_layers(bookworm_rootfs: Path, bookworm_openssl_rootfs: Path,
                                  tmp_path: Path) -> None:
    """A minbase bookworm from the real archive's point suite with openssl added in a
    second layer, patched from the real -security/-updates: ~100 packages, Multi-Arch
    libraries, binaries whose source has another version."""
    work = tmp_path / "work"
    work.mkdir()
    upper = diff_entries(bookworm_rootfs, bookworm_openssl_rootfs)
    ref = f"oci:{tmp_path}/layout:v1"
    write_artifact(image_from_layers([bookworm_rootfs, upper], AMD64, work), ref)
    out, platform = patched(ref, tmp_path)
    image = open_image(out)
    written = _dpkg_query(image, tmp_path)
    assert written == versions(image)
    assert upgraded(platform).items() <= written.items()
    assert len(written) > 90 and len(upgraded(platform)) > 0
    assert_scanners_agree(scans(out, "deb", "deb", "debian", tmp_path), written)


# ---------------------------------------------------------------- apk


ALPINE_URL = "https://dl-cdn.alpinelinux.org/alpine/v3.20/main"
MUSL1 = ApkSpec("musl", "1.2.5-r0", files={"lib/ld-musl-x86_64.so.1": ApkFile(b"m1\n", 0o755)},
                provides=["so:libc.musl-x86_64.so.1=1"])
MUSL2 = MUSL1.with_(version="1.2.5-r1",
                    files={"lib/ld-musl-x86_64.so.1": ApkFile(b"m2\n", 0o755)})
HELLO1 = ApkSpec("hello", "1.0-r0", files={"usr/bin/hello": ApkFile(b"h1\n", 0o755)},
                 depends=["so:libc.musl-x86_64.so.1"])
HELLO2 = HELLO1.with_(version="1.1_p2-r3", files={"usr/bin/hello": ApkFile(b"h2\n", 0o755)},
                      depends=["so:libc.musl-x86_64.so.1", "so:libnew.so.1"])
LIBNEW = ApkSpec("libnew", "1.0-r0", files={"usr/lib/libnew.so.1": b"new\n"},
                 provides=["so:libnew.so.1=1"])
ZLIB = ApkSpec("zlib", "1.3.1-r0", files={"usr/lib/libz.so.1": b"z\n"},
               provides=["so:libz.so.1=1"])


def _apk_installed(image: Image) -> Packages:
    """``P:``/``V:`` of each record of the written ``lib/apk/db/installed``."""
    data = read_files(image, ["lib/apk/db/installed"])["lib/apk/db/installed"].data
    assert data is not None
    pairs = []
    for record in data.decode().strip().split("\n\n"):
        fields = dict(line.split(":", 1) for line in record.splitlines() if line[1:2] == ":")
        pairs.append((fields["P"], fields["V"]))
    return _unique(pairs, "lib/apk/db/installed")


def test_apk_image(tmp_path: Path, apk_repo_server: ApkRepoServer, apk_keys: ApkKeys) -> None:
    key = apk_keys.good
    apk_repo_server.publish([MUSL1, MUSL2, HELLO1, HELLO2, LIBNEW, ZLIB], key, path="main")
    v1 = [build_apk(p, key, tmp_path / "v1") for p in (MUSL1, HELLO1, ZLIB)]
    ref = write_oci(apk_image(v1, [ALPINE_URL], key, flavor="alpine"), tmp_path / "layout",
                    "v1")
    mirror = f"{ALPINE_URL}={apk_repo_server.sub('main')}"
    out, platform = patched(ref, tmp_path, "--mirror", mirror,
                            "--allow-private-repos", "127.0.0.1", "--sandbox", "none")
    written = _apk_installed(open_image(out))
    assert written == {"musl": "1.2.5-r1", "hello": "1.1_p2-r3", "libnew": "1.0-r0",
                       "zlib": "1.3.1-r0"}
    assert upgraded(platform) == {"musl": "1.2.5-r1", "hello": "1.1_p2-r3", "libnew": "1.0-r0"}
    assert_scanners_agree(scans(out, "apk", "apk", "alpine", tmp_path), written)


# ---------------------------------------------------------------- rpm


def _rpm_qa(image: Image, family: str, tmp: Path) -> Packages:
    """The written rpmdb as ``rpm --dbpath -qa`` reads it (name -> [epoch:]version-release),
    with the ``gpg-pubkey`` header of the imported key (Syft and Trivy list it too)."""
    path = f"{FAMILIES[family][2]}/rpmdb.sqlite"
    data = read_files(image, [path], max_file=1 << 30)[path].data
    assert data is not None
    db = tmp / "rpmdb"
    db.mkdir()
    (db / "rpmdb.sqlite").write_bytes(data)
    out = subprocess.run(["rpm", "--dbpath", str(db), "-qa", "--qf",
                          "%{NAME}\t%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\n"],
                         check=True, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": str(tmp)}).stdout
    pairs = [(name, version) for name, version in
             (line.split("\t", 1) for line in out.splitlines())]
    return _unique(pairs, "rpm -qa")


#: Trivy's OS family for each image, and the release file it knows that family by (the
#: release package ships it; Trivy does not go by os-release for these).
TRIVY_OS = {"rhel": "redhat", "fedora": "fedora"}
RELEASE_FILES = {"rhel": ("etc/redhat-release", "Red Hat Enterprise Linux release 9.4 (Plow)\n"),
                 "fedora": ("etc/fedora-release", "Fedora release 40 (Forty)\n")}


@pytest.mark.parametrize("family", ["rhel", "fedora"])
def test_rpm_image(rpm_world: RpmWorld, tmp_path: Path, family: str) -> None:
    root = rpm_world.make_root(tmp_path / "root", family)
    path, text = RELEASE_FILES[family]
    (root / path).write_text(text)
    ref = write_image(root, tmp_path, "v1")
    out, platform = patched(ref, tmp_path, "--mirror", rpm_world.mirror(),
                            "--allow-private-repos", "127.0.0.1", "--sandbox", "auto")
    written = _rpm_qa(open_image(out), family, tmp_path)
    key = written.pop("gpg-pubkey")
    assert written == {"libsut": "2.0-1", "sutprog": "2.0-1", "sut-sh": "1.0-1",
                       "sut-release": f"{FAMILIES[family][1]}-1"}
    assert upgraded(platform) == {"libsut": "2.0-1", "sutprog": "2.0-1"}
    assert key.startswith(rpm_world.key.keyid[-8:] + "-")
    assert_scanners_agree(scans(out, "rpm", "rpm", TRIVY_OS[family], tmp_path),
                          {**written, "gpg-pubkey": key})
