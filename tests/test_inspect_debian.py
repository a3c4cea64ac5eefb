"""`suture inspect` on images built from the real Debian archive."""

from __future__ import annotations

import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from suture.devtools.debian_image import image_from_layers
from suture.devtools.rootfs import diff_entries, distroless_entries
from suture.inspect import inspect_image
from suture.oci.model import Platform

pytestmark = [pytest.mark.network, pytest.mark.tools]
AMD64 = Platform.parse("linux/amd64")


def dpkg_installed_count(rootfs: Path, tmp: Path) -> int:
    """The oracle: dpkg-query over the rootfs's own status file."""
    admin = Path(tempfile.mkdtemp(dir=tmp))
    (admin / "updates").mkdir()
    with tarfile.open(rootfs) as tar:
        member = tar.getmember("./var/lib/dpkg/status")
        data = tar.extractfile(member)
        assert data is not None
        (admin / "status").write_bytes(data.read())
    out = subprocess.run(["dpkg-query", f"--admindir={admin}", "-W",
                          "-f=${db:Status-Status}\n"], check=True, capture_output=True,
                         text=True).stdout
    return sum(1 for line in out.splitlines() if line == "installed")


@pytest.mark.parametrize(("suite", "version"), [("bookworm", "12"), ("trixie", "13")])
def test_debian_single_layer(request: pytest.FixtureRequest, tmp_path: Path, suite: str,
                             version: str) -> None:
    rootfs: Path = request.getfixturevalue(f"{suite}_rootfs")
    image = image_from_layers([rootfs], AMD64, tmp_path)
    result = inspect_image(image)
    assert result.os is not None
    assert (result.os.id, result.os.version_id, result.os.codename) == ("debian", version, suite)
    assert result.package_db is not None
    assert (result.package_db.family, result.package_db.kind) == ("dpkg", "dpkg-status")
    assert result.package_db.count == dpkg_installed_count(rootfs, tmp_path)
    assert result.package_db.count > 50
    assert result.patched is None
    assert result.platform == AMD64


def test_two_layers_upper_installs_more_packages(tmp_path: Path, bookworm_rootfs: Path,
                                                 bookworm_openssl_rootfs: Path) -> None:
    upper = diff_entries(bookworm_rootfs, bookworm_openssl_rootfs)
    image = image_from_layers([bookworm_rootfs, upper], AMD64, tmp_path)
    assert len(image.layers) == 2
    result = inspect_image(image)
    assert result.package_db is not None
    # The upper layer's status file wins: it lists the added packages too.
    assert result.package_db.count == dpkg_installed_count(bookworm_openssl_rootfs, tmp_path)
    assert result.package_db.count > dpkg_installed_count(bookworm_rootfs, tmp_path)


def test_upper_layer_deletes_the_status_file(tmp_path: Path, bookworm_rootfs: Path) -> None:
    from suture.oci.layer import Entry

    upper = [Entry.whiteout("var/lib/dpkg/status"),
             Entry.file("etc/os-release", b'ID=debian\nVERSION_ID="12"\n'
                                          b"VERSION_CODENAME=rewritten\n")]
    image = image_from_layers([bookworm_rootfs, upper], AMD64, tmp_path)
    result = inspect_image(image)
    assert result.package_db is None
    assert result.os is not None and result.os.codename == "rewritten"


def test_distroless_status_d(tmp_path: Path, bookworm_rootfs: Path) -> None:
    image = image_from_layers([distroless_entries(bookworm_rootfs)], AMD64, tmp_path)
    result = inspect_image(image)
    assert result.package_db is not None
    assert (result.package_db.kind, result.package_db.path) == (
        "dpkg-status.d", "var/lib/dpkg/status.d")
    assert result.package_db.count == dpkg_installed_count(bookworm_rootfs, tmp_path)
