"""apt repositories end to end: a real signed repository on 127.0.0.1 (tests/fixtures/aptrepo.py).

Every signature verdict is cross-checked against gpgv, reduced the way apt reduces it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import random
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from suture.distro.dpkg.release import Keyring
from suture.distro.dpkg.repo import (
    STREAM_CHUNK,
    AptFetcher,
    AptRepository,
    PackageEntry,
    decompress_index,
    dist_url,
    parse_packages_index,
    redact,
)
from suture.distro.dpkg.repoerrors import (
    BadSignature,
    ExpiredKey,
    IndexNotListed,
    NotSigned,
    OfflineCacheMiss,
    ReleaseExpired,
    ReleaseMismatch,
    RepositoryError,
    RepositoryHTTPError,
    RepositoryNotFound,
    RevokedKey,
    SignatureError,
    UnknownKey,
)
from suture.errors import DigestMismatch, PackageDBError, SizeMismatch, SutureError
from tests.fixtures.aptrepo import AptRepo, GpgKey, GpgKeys, build_deb, gpgv_verdict

VERDICT = {BadSignature: "bad", UnknownKey: "unknown", ExpiredKey: "expired",
           RevokedKey: "revoked"}


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("needs dpkg-deb")
    d = tmp_path_factory.mktemp("debs")
    big = random.Random(1).randbytes(1 << 20)  # incompressible: a download to cut in the middle
    return {
        "hello": build_deb(d, "hello", "1.0-1", depends="libc6 (>= 2.36), libfoo1 | libbar"),
        "hello2": build_deb(d, "hello", "1.1-1", depends="libc6 (>= 2.36)"),
        "libfoo1": build_deb(d, "libfoo1", "2:0.9-3", fields={"Source": "foo (0.9-2)",
                                                            "Multi-Arch": "same"}),
        "data": build_deb(d, "data-all", "1", arch="all",
                          files={"usr/share/data-all/blob": big}),
    }


@pytest.fixture
def fetcher(tmp_path: Path) -> AptFetcher:
    return AptFetcher(tmp_path / "cache", backoff=0)


def publish_default(repo: AptRepo, debs: dict[str, Path], key: GpgKey | list[GpgKey],
                    **kwargs: object) -> None:
    for name in ("hello", "libfoo1", "data"):
        repo.add_deb(debs[name], "stable")
    repo.publish("stable", codename="trixie", sign_with=key, **kwargs)  # type: ignore[arg-type]


def oracle(repo: AptRepo, keys: list[GpgKey], *, detached: bool = False) -> str:
    dist = repo.path("dists", "stable")
    rings = [k.keyring_file() for k in keys]
    if detached:
        return gpgv_verdict(dist / "Release", rings, signature=dist / "Release.gpg")
    return gpgv_verdict(dist / "InRelease", rings)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- the good path


def test_good_repository_verifies_and_lists_packages(apt_repo, gpg_keys, debs, fetcher):
    publish_default(apt_repo, debs, gpg_keys.good)
    repo = fetcher.fetch_release(apt_repo.url, "stable", gpg_keys.good.keyring())
    assert oracle(apt_repo, [gpg_keys.good]) == "good"
    assert repo.release.signers == (gpg_keys.good.fpr,)
    assert (repo.release.suite, repo.release.codename) == ("stable", "trixie")
    assert repo.release.components == ("main",)
    assert repo.release.architectures == ("amd64",)
    assert repo.release.date is not None
    assert apt_repo.requests_for("/InRelease")  # the clearsigned form was used
    assert not apt_repo.requests_for("/Release.gpg")

    entries = repo.packages("main", "amd64")
    by_name = {e.package: e for e in entries}
    assert sorted(by_name) == ["data-all", "hello", "libfoo1"]
    hello = by_name["hello"]
    assert hello.version == "1.0-1"
    assert hello.architecture == "amd64"
    assert hello.depends == "libc6 (>= 2.36), libfoo1 | libbar"
    assert hello.filename == "pool/main/h/hello/hello_1.0-1_amd64.deb"
    assert hello.sha256 == sha256_file(debs["hello"])
    assert hello.size == debs["hello"].stat().st_size
    assert hello.base_uri == apt_repo.url
    lib = by_name["libfoo1"]
    assert (lib.version, lib.source, lib.source_name, lib.multi_arch) == \
        ("2:0.9-3", "foo (0.9-2)", "foo", "same")
    assert by_name["data-all"].architecture == "all"

    # The xz variant was the one fetched, and it was checked against the plain listing too.
    assert apt_repo.requests_for("/main/binary-amd64/Packages.xz")
    assert not apt_repo.requests_for("/main/binary-amd64/Packages.gz")

    path = fetcher.fetch_deb(hello)
    assert path.read_bytes() == debs["hello"].read_bytes()
    assert path.is_relative_to(fetcher.cache.root)


def test_suite_can_be_asked_for_by_codename(apt_repo, gpg_keys, debs, fetcher):
    publish_default(apt_repo, debs, gpg_keys.good)
    apt_repo.path("dists", "trixie").symlink_to("stable")  # as Debian's archive does
    repo = fetcher.fetch_release(apt_repo.url, "trixie", gpg_keys.good.keyring())
    assert repo.release.codename == "trixie"
    assert repo.url == dist_url(apt_repo.url, "trixie")


@pytest.mark.parametrize("tool", ["apt-ftparchive", "python"])
def test_release_written_by_either_tool_verifies(apt_repo, gpg_keys, debs, fetcher, tool):
    if tool == "apt-ftparchive" and shutil.which("apt-ftparchive") is None:
        pytest.skip("needs apt-utils")
    publish_default(apt_repo, debs, gpg_keys.good, release_tool=tool, valid_for=timedelta(days=7))
    repo = fetcher.fetch_release(apt_repo.url, "stable", gpg_keys.good.keyring())
    assert repo.release.valid_until is not None
    assert repo.release.valid_until > datetime.now(UTC) + timedelta(days=6)
    assert {f for f in repo.release.files if f.startswith("main/")} >= {
        "main/binary-amd64/Packages", "main/binary-amd64/Packages.xz",
        "main/binary-amd64/Packages.gz"}
    assert len(repo.packages("main", "amd64")) == 3


def test_signed_by_two_keys_one_unknown_is_good(apt_repo, gpg_keys, debs, fetcher):
    # apt: a signature by a key we do not hold is ignored when another is good.
    publish_default(apt_repo, debs, [gpg_keys.good, gpg_keys.other])
    assert oracle(apt_repo, [gpg_keys.other]) == "good"
    repo = fetcher.fetch_release(apt_repo.url, "stable", gpg_keys.other.keyring())
    assert repo.release.signers == (gpg_keys.other.fpr,)
    both = gpg_keys.good.keyring() + gpg_keys.other.keyring()
    fetcher2 = AptFetcher(fetcher.cache.root, backoff=0)
    repo = fetcher2.fetch_release(apt_repo.url, "stable", both)
    assert set(repo.release.signers) == {gpg_keys.good.fpr, gpg_keys.other.fpr}


def test_armored_keyring_file_works(apt_repo, gpg_keys, debs, fetcher):
    publish_default(apt_repo, debs, gpg_keys.good)
    ring = Keyring.from_bytes(gpg_keys.good.public(armor=True))
    assert ring.fingerprints == (gpg_keys.good.fpr,)
    fetcher.fetch_release(apt_repo.url, "stable", ring)


# ---------------------------------------------------------------- signature refusals


def _refusal(fetcher: AptFetcher, repo: AptRepo, keyring: Keyring) -> SignatureError:
    with pytest.raises(SignatureError) as info:
        fetcher.fetch_release(repo.url, "stable", keyring)
    return info.value


def test_tampered_inrelease_is_refused(apt_repo, gpg_keys, debs, fetcher):
    publish_default(apt_repo, debs, gpg_keys.good)
    p = apt_repo.path("dists", "stable", "InRelease")
    p.write_bytes(p.read_bytes().replace(b"Codename: trixie", b"Codename: trixif"))
    err = _refusal(fetcher, apt_repo, gpg_keys.good.keyring())
    assert isinstance(err, BadSignature)
    assert gpg_keys.good.fpr in str(err)
    assert oracle(apt_repo, [gpg_keys.good]) == VERDICT[type(err)]


def test_unknown_key_is_refused(apt_repo, gpg_keys, debs, fetcher):
    publish_default(apt_repo, debs, gpg_keys.other)
    err = _refusal(fetcher, apt_repo, gpg_keys.good.keyring())
    assert isinstance(err, UnknownKey)
    assert err.issuers == (gpg_keys.other.fpr,)
    assert err.hint and "Signed-By" in err.hint
    assert oracle(apt_repo, [gpg_keys.good]) == VERDICT[type(err)]


def test_empty_keyring_is_refused(apt_repo, gpg_keys, debs, fetcher):
    publish_default(apt_repo, debs, gpg_keys.good)
    err = _refusal(fetcher, apt_repo, Keyring())
    assert isinstance(err, UnknownKey)
    assert err.hint == "no keyring was given"


def test_expired_key_is_refused(apt_repo, gpg_keys, debs, fetcher):
    # The signature was made while the key was alive; gpgv says EXPKEYSIG and apt refuses.
    publish_default(apt_repo, debs, gpg_keys.expired)
    err = _refusal(fetcher, apt_repo, gpg_keys.expired.keyring())
    assert isinstance(err, ExpiredKey)
    assert err.expired_at == datetime(2020, 1, 2, tzinfo=UTC)
    assert oracle(apt_repo, [gpg_keys.expired]) == VERDICT[type(err)]


def test_key_is_judged_at_the_given_clock(apt_repo, gpg_keys, debs, tmp_path):
    # With the clock set back to when the expired key was alive, its signature is good.
    publish_default(apt_repo, debs, gpg_keys.expired)
    then = AptFetcher(tmp_path / "c", now=lambda: datetime(2020, 1, 1, 18, tzinfo=UTC))
    repo = then.fetch_release(apt_repo.url, "stable", gpg_keys.expired.keyring())
    assert repo.release.signers == (gpg_keys.expired.fpr,)


def test_revoked_key_is_refused(apt_repo, gpg_keys, debs, fetcher):
    publish_default(apt_repo, debs, gpg_keys.good)
    # gpg will not sign with a revoked key: sign first, revoke after.
    victim = gpg_keys.create("victim")
    dist = apt_repo.path("dists", "stable")
    gpg_keys.sign(dist / "Release", dist / "InRelease", [victim], clear=True)
    revoked = gpg_keys.revoke(victim)
    ring = victim.home / "victim-revoked.gpg"
    ring.write_bytes(revoked)
    err = _refusal(fetcher, apt_repo, Keyring.from_bytes(revoked))
    assert isinstance(err, RevokedKey)
    assert gpgv_verdict(dist / "InRelease", [ring]) == VERDICT[type(err)]


def test_bad_signature_beside_a_good_one_is_refused(apt_repo, gpg_keys, debs, fetcher, tmp_path):
    # apt refuses a file when any signature by a trusted key is bad, even with a good one.
    publish_default(apt_repo, debs, gpg_keys.good, inrelease=False)
    dist = apt_repo.path("dists", "stable")
    other_data = tmp_path / "other"
    other_data.write_bytes(b"something else\n")
    gpg_keys.sign(other_data, tmp_path / "other.sig", [gpg_keys.other], clear=False, armor=False)
    gpg_keys.sign(dist / "Release", tmp_path / "good.sig", [gpg_keys.good], clear=False,
                  armor=False)
    (dist / "Release.gpg").write_bytes((tmp_path / "good.sig").read_bytes()
                                       + (tmp_path / "other.sig").read_bytes())
    both = gpg_keys.good.keyring() + gpg_keys.other.keyring()
    err = _refusal(fetcher, apt_repo, both)
    assert isinstance(err, BadSignature)
    assert gpg_keys.other.fpr in str(err)
    assert oracle(apt_repo, [gpg_keys.good, gpg_keys.other], detached=True) == "bad"
    # Without the other key, its signature is merely unknown and the good one carries.
    repo = AptFetcher(tmp_path / "c2").fetch_release(apt_repo.url, "stable",
                                                     gpg_keys.good.keyring())
    assert repo.release.signers == (gpg_keys.good.fpr,)
    assert oracle(apt_repo, [gpg_keys.good], detached=True) == "good"


def test_text_outside_the_signed_part_is_refused(apt_repo, gpg_keys, debs, fetcher):
    publish_default(apt_repo, debs, gpg_keys.good)
    p = apt_repo.path("dists", "stable", "InRelease")
    signed = p.read_bytes()
    p.write_bytes(signed + b"\nSHA256:\n " + b"0" * 64 + b" 1 main/binary-amd64/Packages\n")
    assert isinstance(_refusal(fetcher, apt_repo, gpg_keys.good.keyring()), NotSigned)
    p.write_bytes(b"Origin: evil\n\n" + signed)
    assert isinstance(_refusal(AptFetcher(fetcher.cache.root / "x"), apt_repo,
                               gpg_keys.good.keyring()), NotSigned)


def test_unsigned_inrelease_is_refused(apt_repo, gpg_keys, debs, fetcher):
    publish_default(apt_repo, debs, gpg_keys.good)
    dist = apt_repo.path("dists", "stable")
    shutil.copyfile(dist / "Release", dist / "InRelease")
    assert isinstance(_refusal(fetcher, apt_repo, gpg_keys.good.keyring()), NotSigned)
    assert gpgv_verdict(dist / "InRelease", [gpg_keys.good.keyring_file()]) == "unsigned"


# ---------------------------------------------------------------- detached form


def test_release_gpg_detached_variant(apt_repo, gpg_keys, debs, fetcher):
    publish_default(apt_repo, debs, gpg_keys.good, inrelease=False)
    repo = fetcher.fetch_release(apt_repo.url, "stable", gpg_keys.good.keyring())
    assert oracle(apt_repo, [gpg_keys.good], detached=True) == "good"
    assert [r.status for r in apt_repo.requests_for("/InRelease")] == [404]
    assert apt_repo.requests_for("/Release.gpg")
    assert len(repo.packages("main", "amd64")) == 3


def test_tampered_detached_release_is_refused(apt_repo, gpg_keys, debs, fetcher):
    publish_default(apt_repo, debs, gpg_keys.good, inrelease=False)
    p = apt_repo.path("dists", "stable", "Release")
    p.write_bytes(p.read_bytes().replace(b"Suite: stable", b"Suite: stabl3"))
    assert oracle(apt_repo, [gpg_keys.good], detached=True) == "bad"
    assert isinstance(_refusal(fetcher, apt_repo, gpg_keys.good.keyring()), BadSignature)


def test_release_without_any_signature_is_refused(apt_repo, gpg_keys, debs, fetcher):
    publish_default(apt_repo, debs, gpg_keys.good, inrelease=False, detached=False)
    err = _refusal(fetcher, apt_repo, gpg_keys.good.keyring())
    assert isinstance(err, NotSigned)
    assert "Release.gpg" in str(err)


# ---------------------------------------------------------------- Release checks


def test_valid_until_in_the_past_is_refused_unless_allowed(apt_repo, gpg_keys, debs, fetcher):
    publish_default(apt_repo, debs, gpg_keys.good, expired=True)
    assert oracle(apt_repo, [gpg_keys.good]) == "good"  # the signature itself is fine
    with pytest.raises(ReleaseExpired) as info:
        fetcher.fetch_release(apt_repo.url, "stable", gpg_keys.good.keyring())
    assert info.value.valid_until < datetime.now(UTC)
    assert info.value.hint and "Valid-Until" in info.value.hint
    repo = fetcher.fetch_release(apt_repo.url, "stable", gpg_keys.good.keyring(),
                                 check_valid_until=False)
    assert len(repo.packages("main", "amd64")) == 3


def test_suite_mismatch_is_refused(apt_repo, gpg_keys, debs, fetcher):
    # A replay: stable's signed Release served as another suite.
    publish_default(apt_repo, debs, gpg_keys.good)
    shutil.copytree(apt_repo.path("dists", "stable"), apt_repo.path("dists", "oldstable"))
    with pytest.raises(ReleaseMismatch) as info:
        fetcher.fetch_release(apt_repo.url, "oldstable", gpg_keys.good.keyring())
    assert (info.value.asked, info.value.suite, info.value.codename) == \
        ("oldstable", "stable", "trixie")
    fetcher.fetch_release(apt_repo.url, "oldstable", gpg_keys.good.keyring(), check_suite=False)


def test_missing_suite_is_a_clear_not_found(apt_repo, gpg_keys, fetcher):
    with pytest.raises(RepositoryNotFound) as info:
        fetcher.fetch_release(apt_repo.url, "buster", gpg_keys.good.keyring())
    assert info.value.status == 404
    assert "buster" in str(info.value) and info.value.hint


# ---------------------------------------------------------------- indexes


def test_tampered_packages_is_refused(apt_repo, gpg_keys, debs, fetcher):
    publish_default(apt_repo, debs, gpg_keys.good)
    d = apt_repo.path("dists", "stable", "main", "binary-amd64")
    text = lzma.decompress((d / "Packages.xz").read_bytes())
    evil = text.replace(b"Version: 1.0-1", b"Version: 9.9-9")
    (d / "Packages.xz").write_bytes(lzma.compress(evil))
    repo = fetcher.fetch_release(apt_repo.url, "stable", gpg_keys.good.keyring())
    with pytest.raises((DigestMismatch, SizeMismatch)):
        repo.fetch_packages("main", "amd64")
    # Nothing unverified was kept in the cache.
    assert not fetcher.cache.path(sha256_file(d / "Packages.xz")).exists()
    assert not list((fetcher.cache.root / "tmp").glob("*"))


def test_same_length_tampering_is_a_digest_mismatch(apt_repo, gpg_keys, debs, fetcher):
    publish_default(apt_repo, debs, gpg_keys.good, compressions=("",))
    p = apt_repo.path("dists", "stable", "main", "binary-amd64", "Packages")
    p.write_bytes(p.read_bytes().replace(b"Version: 1.0-1", b"Version: 1.0-9"))
    repo = fetcher.fetch_release(apt_repo.url, "stable", gpg_keys.good.keyring())
    with pytest.raises(DigestMismatch) as info:
        repo.fetch_packages("main", "amd64")
    assert info.value.expected.startswith("sha256:")


@pytest.mark.parametrize("compressions,fetched", [
    (("gz",), "Packages.gz"), (("",), "Packages"), (("xz", ""), "Packages.xz")])
def test_index_compression_variants(apt_repo, gpg_keys, debs, fetcher, compressions, fetched):
    publish_default(apt_repo, debs, gpg_keys.good, compressions=compressions)
    repo = fetcher.fetch_release(apt_repo.url, "stable", gpg_keys.good.keyring())
    assert len(repo.packages("main", "amd64")) == 3
    assert [r.path.rsplit("/", 1)[1] for r in apt_repo.requests_for("/binary-amd64/")] == \
        [fetched]


def test_listed_variant_missing_on_server_falls_back(apt_repo, gpg_keys, debs, fetcher):
    publish_default(apt_repo, debs, gpg_keys.good)
    apt_repo.path("dists", "stable", "main", "binary-amd64", "Packages.xz").unlink()
    repo = fetcher.fetch_release(apt_repo.url, "stable", gpg_keys.good.keyring())
    assert len(repo.packages("main", "amd64")) == 3
    assert [r.status for r in apt_repo.requests_for("/binary-amd64/")] == [404, 200]


def test_acquire_by_hash(apt_repo, gpg_keys, debs, fetcher):
    publish_default(apt_repo, debs, gpg_keys.good, acquire_by_hash=True)
    repo = fetcher.fetch_release(apt_repo.url, "stable", gpg_keys.good.keyring())
    assert repo.release.acquire_by_hash
    assert len(repo.packages("main", "amd64")) == 3
    xz = repo.release.files["main/binary-amd64/Packages.xz"]
    hits = apt_repo.requests_for("/binary-amd64/")
    assert [r.path for r in hits] == \
        [f"/dists/stable/main/binary-amd64/by-hash/SHA256/{xz.sha256}"]


def test_by_hash_missing_falls_back_to_the_plain_path(apt_repo, gpg_keys, debs, fetcher):
    publish_default(apt_repo, debs, gpg_keys.good, acquire_by_hash=True)
    shutil.rmtree(apt_repo.path("dists", "stable", "main", "binary-amd64", "by-hash"))
    repo = fetcher.fetch_release(apt_repo.url, "stable", gpg_keys.good.keyring())
    assert len(repo.packages("main", "amd64")) == 3
    assert [r.status for r in apt_repo.requests_for("/binary-amd64/")] == [404, 200]


def test_index_not_listed(apt_repo, gpg_keys, debs, fetcher):
    publish_default(apt_repo, debs, gpg_keys.good)
    repo = fetcher.fetch_release(apt_repo.url, "stable", gpg_keys.good.keyring())
    with pytest.raises(IndexNotListed):
        repo.fetch_packages("contrib", "amd64")
    with pytest.raises(IndexNotListed):
        repo.fetch_packages("main", "arm64")


def test_decompressed_index_has_a_ceiling(tmp_path):
    bomb = lzma.compress(b"\0" * (8 << 20))
    with pytest.raises(SizeMismatch) as info:
        decompress_index(io.BytesIO(bomb), "xz", limit=1 << 20)
    assert "limit" in str(info.value)
    with pytest.raises(SizeMismatch):
        decompress_index(io.BytesIO(gzip.compress(b"\0" * (8 << 20))), "gzip", limit=1 << 20)
    assert decompress_index(io.BytesIO(bomb), "xz", limit=8 << 20) == b"\0" * (8 << 20)


def test_decompress_follows_concatenated_members_and_refuses_truncation():
    two = gzip.compress(b"a\n") + gzip.compress(b"b\n")
    assert decompress_index(io.BytesIO(two), "gzip") == b"a\nb\n"
    with pytest.raises(RepositoryError, match="truncated"):
        decompress_index(io.BytesIO(lzma.compress(b"x" * 1000)[:-20]), "xz")
    with pytest.raises(RepositoryError, match="corrupt"):
        decompress_index(io.BytesIO(b"not xz at all"), "xz")


# ---------------------------------------------------------------- cache and offline


def test_second_fetch_downloads_nothing(apt_repo, gpg_keys, debs, tmp_path):
    publish_default(apt_repo, debs, gpg_keys.good)
    first = AptFetcher(tmp_path / "cache")
    repo = first.fetch_release(apt_repo.url, "stable", gpg_keys.good.keyring())
    for entry in repo.packages("main", "amd64"):
        first.fetch_deb(entry)
    apt_repo.requests.clear()

    second = AptFetcher(tmp_path / "cache")
    repo = second.fetch_release(apt_repo.url, "stable", gpg_keys.good.keyring())
    entries = repo.packages("main", "amd64")
    paths = [second.fetch_deb(e) for e in entries]
    # Only the InRelease was asked for again, conditionally, and not re-sent.
    assert [(r.path, r.status) for r in apt_repo.requests] == \
        [("/dists/stable/InRelease", 304)]
    assert "If-None-Match" in apt_repo.requests[0].headers
    assert sorted(p.read_bytes() for p in paths) == \
        sorted(debs[n].read_bytes() for n in ("hello", "libfoo1", "data"))


def test_republished_release_is_fetched_again(apt_repo, gpg_keys, debs, tmp_path):
    publish_default(apt_repo, debs, gpg_keys.good)
    AptFetcher(tmp_path / "cache").fetch_release(apt_repo.url, "stable", gpg_keys.good.keyring())
    apt_repo.add_deb(debs["hello2"], "stable")
    apt_repo.publish("stable", codename="trixie", sign_with=gpg_keys.good)
    repo = AptFetcher(tmp_path / "cache").fetch_release(apt_repo.url, "stable",
                                                        gpg_keys.good.keyring())
    versions = sorted(e.version for e in repo.packages("main", "amd64") if e.package == "hello")
    assert versions == ["1.0-1", "1.1-1"]


def test_offline_mode_names_what_is_missing(apt_repo, gpg_keys, debs, tmp_path):
    publish_default(apt_repo, debs, gpg_keys.good)
    offline = AptFetcher(tmp_path / "cache", offline=True)
    with pytest.raises(OfflineCacheMiss) as info:
        offline.fetch_release(apt_repo.url, "stable", gpg_keys.good.keyring())
    assert "InRelease" in info.value.missing and apt_repo.url in info.value.missing

    online = AptFetcher(tmp_path / "cache")
    entries = online.fetch_release(apt_repo.url, "stable",
                                   gpg_keys.good.keyring()).packages("main", "amd64")
    hello = next(e for e in entries if e.package == "hello")
    apt_repo.requests.clear()

    repo = offline.fetch_release(apt_repo.url, "stable", gpg_keys.good.keyring())
    assert len(repo.packages("main", "amd64")) == 3
    with pytest.raises(OfflineCacheMiss) as info:
        offline.fetch_deb(hello)
    assert "hello_1.0-1_amd64.deb" in info.value.missing
    assert hello.sha256 in info.value.missing
    assert apt_repo.requests == []  # offline means no request at all
    online.fetch_deb(hello)
    assert offline.fetch_deb(hello).read_bytes() == debs["hello"].read_bytes()


def test_offline_release_is_still_verified(apt_repo, gpg_keys, debs, tmp_path):
    publish_default(apt_repo, debs, gpg_keys.good)
    AptFetcher(tmp_path / "cache").fetch_release(apt_repo.url, "stable", gpg_keys.good.keyring())
    with pytest.raises(UnknownKey):
        AptFetcher(tmp_path / "cache", offline=True).fetch_release(
            apt_repo.url, "stable", gpg_keys.other.keyring())


def test_corrupt_cache_entry_is_refetched(apt_repo, gpg_keys, debs, tmp_path):
    publish_default(apt_repo, debs, gpg_keys.good)
    f = AptFetcher(tmp_path / "cache")
    repo = f.fetch_release(apt_repo.url, "stable", gpg_keys.good.keyring())
    hello = next(e for e in repo.packages("main", "amd64") if e.package == "hello")
    path = f.fetch_deb(hello)
    path.write_bytes(b"rotten")
    apt_repo.requests.clear()
    assert f.fetch_deb(hello).read_bytes() == debs["hello"].read_bytes()
    assert len(apt_repo.requests_for("/pool/")) == 1


# ---------------------------------------------------------------- .deb downloads


def _entry(apt_repo: AptRepo, fetcher: AptFetcher, gpg_keys: GpgKeys, name: str) -> PackageEntry:
    repo = fetcher.fetch_release(apt_repo.url, "stable", gpg_keys.good.keyring())
    return next(e for e in repo.packages("main", "amd64") if e.package == name)


def test_dropped_download_resumes_with_range(apt_repo, gpg_keys, debs, fetcher):
    publish_default(apt_repo, debs, gpg_keys.good)
    entry = _entry(apt_repo, fetcher, gpg_keys, "data-all")
    cut = 2 * STREAM_CHUNK  # what was read before a drop is kept, a chunk at a time
    apt_repo.fail(entry.filename, drop_after=cut, times=2)
    path = fetcher.fetch_deb(entry)
    assert sha256_file(path) == entry.sha256
    hits = apt_repo.requests_for(entry.filename)
    assert [r.status for r in hits] == [200, 206, 206]
    assert [r.headers.get("Range") for r in hits] == \
        [None, f"bytes={cut}-", f"bytes={2 * cut}-"]


def test_server_that_ignores_range_restarts_cleanly(apt_repo, gpg_keys, debs, fetcher):
    publish_default(apt_repo, debs, gpg_keys.good)
    entry = _entry(apt_repo, fetcher, gpg_keys, "data-all")
    apt_repo.fail(entry.filename, drop_after=50_000)
    apt_repo.fail(entry.filename, ignore_range=True)
    assert sha256_file(fetcher.fetch_deb(entry)) == entry.sha256
    assert [r.status for r in apt_repo.requests_for(entry.filename)] == [200, 200]


def test_retries_are_bounded(apt_repo, gpg_keys, debs, tmp_path):
    publish_default(apt_repo, debs, gpg_keys.good)
    fetcher = AptFetcher(tmp_path / "cache", retries=2, backoff=0)
    entry = _entry(apt_repo, fetcher, gpg_keys, "data-all")
    apt_repo.fail(entry.filename, drop_after=10, times=10)
    with pytest.raises(RepositoryHTTPError, match="3 attempts") as info:
        fetcher.fetch_deb(entry)
    assert info.value.status is None
    assert len(apt_repo.requests_for(entry.filename)) == 3
    assert not list((tmp_path / "cache" / "tmp").glob("*"))


def test_server_errors_are_retried_then_reported(apt_repo, gpg_keys, debs, fetcher):
    publish_default(apt_repo, debs, gpg_keys.good)
    entry = _entry(apt_repo, fetcher, gpg_keys, "hello")
    apt_repo.fail(entry.filename, status=503, times=2)
    assert sha256_file(fetcher.fetch_deb(entry)) == entry.sha256
    apt_repo.fail("/InRelease", status=403)
    with pytest.raises(RepositoryHTTPError) as info:
        AptFetcher(fetcher.cache.root / "other").fetch_release(apt_repo.url, "stable",
                                                               gpg_keys.good.keyring())
    assert info.value.status == 403


def test_deb_with_wrong_content_is_refused(apt_repo, gpg_keys, debs, fetcher):
    publish_default(apt_repo, debs, gpg_keys.good)
    entry = _entry(apt_repo, fetcher, gpg_keys, "hello")
    shutil.copyfile(debs["hello2"], apt_repo.path(entry.filename))
    with pytest.raises((DigestMismatch, SizeMismatch)):
        fetcher.fetch_deb(entry)
    served = apt_repo.path(entry.filename)
    served.write_bytes(debs["hello"].read_bytes() + b"trailing")
    with pytest.raises(SizeMismatch):
        fetcher.fetch_deb(entry)
    served.write_bytes(debs["hello"].read_bytes()[:-10])
    with pytest.raises(SizeMismatch):
        fetcher.fetch_deb(entry)
    assert not apt_repo.requests_for(entry.filename)[-1].headers.get("Range")


def test_unreachable_server_is_a_repository_error(tmp_path, gpg_keys):
    with socket_closed_port() as port:
        f = AptFetcher(tmp_path / "cache", retries=1, backoff=0, timeout=(2, 2))
        with pytest.raises(RepositoryHTTPError) as info:
            f.fetch_release(f"http://127.0.0.1:{port}/debian", "stable", gpg_keys.good.keyring())
    assert info.value.status is None
    assert isinstance(info.value, SutureError)


def test_injected_session_and_verify_are_used(apt_repo, gpg_keys, debs, tmp_path):
    publish_default(apt_repo, debs, gpg_keys.good)
    seen: list[dict[str, object]] = []

    class Spy(requests.Session):
        def get(self, url, **kwargs):
            seen.append({"url": url, **kwargs})
            return super().get(url, **kwargs)

    with Spy() as session:
        f = AptFetcher(tmp_path / "cache", session=session, verify="/etc/ssl/certs/x.pem",
                       timeout=(3.0, 7.0))
        f.fetch_release(apt_repo.url, "stable", gpg_keys.good.keyring())
        f.close()  # not ours: stays open
        assert session.adapters
    assert seen and all(s["verify"] == "/etc/ssl/certs/x.pem" and s["timeout"] == (3.0, 7.0)
                        for s in seen)


def test_credentials_never_appear_in_errors(tmp_path, gpg_keys):
    assert redact("http://user:secret@host:8080/debian") == "http://host:8080/debian"
    f = AptFetcher(tmp_path / "cache", offline=True)
    with pytest.raises(OfflineCacheMiss) as info:
        f.fetch_release("http://user:secret@127.0.0.1:9/debian", "stable",
                        gpg_keys.good.keyring())
    assert "secret" not in str(info.value) and "secret" not in (info.value.url or "")


def test_credentials_stay_off_disk_and_out_of_messages(apt_repo, gpg_keys, debs, tmp_path):
    publish_default(apt_repo, debs, gpg_keys.good)
    uri = apt_repo.url.replace("http://", "http://user:secret@")
    f = AptFetcher(tmp_path / "cache")
    repo = f.fetch_release(uri, "stable", gpg_keys.good.keyring())
    assert "Authorization" in apt_repo.requests[0].headers  # requests sent them
    hello = next(e for e in repo.packages("main", "amd64") if e.package == "hello")
    apt_repo.fail(hello.filename, status=500, times=10)
    with pytest.raises(RepositoryHTTPError) as info:
        AptFetcher(tmp_path / "cache", retries=0).fetch_deb(hello)
    assert info.value.status == 500
    with pytest.raises(RepositoryNotFound) as missing:
        f.fetch_release(uri, "nope", gpg_keys.good.keyring())
    for err in (info.value, missing.value):
        assert "secret" not in f"{err} {err.url} {err.hint}"
    assert not any(b"secret" in p.read_bytes() for p in (tmp_path / "cache").rglob("*.json"))


def test_unsupported_scheme(tmp_path, gpg_keys):
    with pytest.raises(RepositoryError, match="scheme"):
        AptFetcher(tmp_path / "c").fetch_release("ftp://x/debian", "stable",
                                                 gpg_keys.good.keyring())


# ---------------------------------------------------------------- Packages parsing


def test_parse_packages_index_requires_the_checksum_fields():
    good = (b"Package: a\nVersion: 1\nArchitecture: all\nFilename: pool/a.deb\nSize: 3\n"
            b"SHA256: " + b"a" * 64 + b"\n")
    [entry] = parse_packages_index(good, base_uri="http://x/debian")
    assert entry.url == "http://x/debian/pool/a.deb"
    assert entry.paragraph["sha256"] == "a" * 64
    with pytest.raises(PackageDBError, match="SHA256"):
        parse_packages_index(good.replace(b"SHA256", b"MD5sum"))
    with pytest.raises(PackageDBError, match="Filename"):
        parse_packages_index(good.replace(b"pool/a.deb", b"../../etc/passwd"))
    with pytest.raises(PackageDBError, match="Size"):
        parse_packages_index(good.replace(b"Size: 3", b"Size: x"))


def test_dist_url_handles_flat_repositories():
    assert dist_url("http://h/debian/", "bookworm") == "http://h/debian/dists/bookworm"
    assert dist_url("http://h/repo", "./") == "http://h/repo"
    assert dist_url("http://h/repo", "sub/") == "http://h/repo/sub"


def test_flat_repository(apt_repo, gpg_keys, debs, fetcher):
    # A flat repository: Packages and InRelease side by side at the repository root.
    apt_repo.add_deb(debs["hello"], "stable")
    dist = apt_repo.publish("stable", sign_with=gpg_keys.good, compressions=("",))
    flat = apt_repo.path("flat")
    flat.mkdir()
    shutil.copytree(apt_repo.path("pool"), flat / "pool")
    shutil.copyfile(dist / "main" / "binary-amd64" / "Packages", flat / "Packages")
    data = (flat / "Packages").read_bytes()
    (flat / "Release").write_bytes(
        b"Origin: flat\nSHA256:\n " + hashlib.sha256(data).hexdigest().encode()
        + f" {len(data)} Packages\n".encode())
    gpg_keys.sign(flat / "Release", flat / "InRelease", [gpg_keys.good], clear=True)
    repo = fetcher.fetch_release(f"{apt_repo.url}/flat", "./", gpg_keys.good.keyring())
    [entry] = repo.packages("ignored", "amd64")
    assert fetcher.fetch_deb(entry).read_bytes() == debs["hello"].read_bytes()


def test_repository_is_a_plain_value(apt_repo, gpg_keys, debs, fetcher):
    publish_default(apt_repo, debs, gpg_keys.good)
    repo = fetcher.fetch_release(apt_repo.url + "/", "stable", gpg_keys.good.keyring())
    assert isinstance(repo, AptRepository)
    assert repo.uri == apt_repo.url and repo.suite == "stable"
    variants = repo.index_variants("main/binary-amd64/Packages")
    assert [k for _, k in variants] == ["xz", "gzip", "none"]


class socket_closed_port:
    """A local port with nothing listening on it."""

    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = int(s.getsockname()[1])
        s.close()
        return self.port

    def __exit__(self, *exc: object) -> None:
        pass


def test_gpgv_oracle_is_available():
    assert subprocess.run(["gpgv", "--version"], capture_output=True).returncode == 0


def test_cache_sweeps_downloads_a_killed_run_left_behind(tmp_path: Path) -> None:
    import os
    import time

    from suture.distro.dpkg.repo import AptCache

    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    old, fresh = tmpdir / "dl-old", tmpdir / "dl-fresh"
    old.write_bytes(b"partial")
    fresh.write_bytes(b"in use by another run")
    day_ago = time.time() - 2 * AptCache.STALE
    os.utime(old, (day_ago, day_ago))
    cache = AptCache(tmp_path)
    path = cache.put(b"content")
    assert path.read_bytes() == b"content"
    assert not old.exists() and fresh.exists()
