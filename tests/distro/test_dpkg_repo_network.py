"""The real Debian archive: a few small fetches, verified with the host's Debian keyring."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from suture.distro.dpkg.release import Keyring
from suture.distro.dpkg.repo import AptFetcher
from suture.distro.dpkg.repoerrors import RepositoryNotFound
from tests.fixtures.aptrepo import gpgv_verdict

pytestmark = pytest.mark.network

HOST_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEBIAN = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"


@pytest.fixture(scope="module")
def debian_keyring() -> Keyring:
    if not HOST_KEYRING.exists():
        pytest.skip("needs debian-archive-keyring on the host")
    return Keyring.from_bytes(HOST_KEYRING.read_bytes())


@pytest.fixture(scope="module")
def fetcher(tmp_path_factory: pytest.TempPathFactory) -> AptFetcher:
    return AptFetcher(tmp_path_factory.mktemp("apt-cache"), timeout=(10.0, 30.0))


def _oracle(fetcher: AptFetcher, url: str, tmp_path: Path) -> str:
    if shutil.which("gpgv") is None:
        pytest.skip("needs gpgv")
    data = fetcher.cache.read_ref(url)
    assert data is not None
    (tmp_path / "InRelease").write_bytes(data)
    return gpgv_verdict(tmp_path / "InRelease", [HOST_KEYRING])


def test_bookworm_inrelease_verifies(fetcher, debian_keyring, tmp_path):
    repo = fetcher.fetch_release(DEBIAN, "bookworm", debian_keyring)
    assert repo.release.codename == "bookworm"
    assert repo.release.origin == "Debian"
    assert len(repo.release.signers) >= 2  # Debian signs with several archive keys
    assert "main/binary-amd64/Packages.xz" in repo.release.files
    assert _oracle(fetcher, f"{DEBIAN}/dists/bookworm/InRelease", tmp_path) == "good"


def test_bookworm_security_packages(fetcher, debian_keyring, tmp_path):
    repo = fetcher.fetch_release(SECURITY, "bookworm-security", debian_keyring)
    assert repo.release.codename == "bookworm-security"
    assert repo.release.valid_until is not None  # the security archive expires its Release
    assert _oracle(fetcher, f"{SECURITY}/dists/bookworm-security/InRelease", tmp_path) == "good"
    xz = repo.release.files["main/binary-amd64/Packages.xz"]
    entries = repo.packages("main", "amd64")
    assert len(entries) > 100
    assert all(e.filename.startswith("pool/updates/main/") for e in entries)
    assert all(len(e.sha256) == 64 and e.size > 0 for e in entries)
    assert fetcher.cache.lookup(xz.sha256, xz.size) is not None


def test_archived_suite_gives_a_hint(fetcher, debian_keyring):
    with pytest.raises(RepositoryNotFound) as info:
        fetcher.fetch_release(DEBIAN, "buster", debian_keyring)
    assert info.value.status == 404
    assert info.value.hint and "archive.debian.org" in info.value.hint
