"""The package cache against a changing repository and a full disk (issue 16, items 11
and 13).

Cached packages are found by the identity the repository's index gives them (apk:
the index's ``C:``; dpkg: the Packages SHA256), never by URL: a cached copy that no
longer verifies against the current index and keys is fetched again, not reported as
tampering. A cache on a full file system gives one error naming the cache, and leaves
no partial download behind. Real signed repositories from ``tests/fixtures``; the full
disk is a real 15 MB tmpfs (root only) and, everywhere, an injected ENOSPC/EDQUOT.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest

from suture.distro.dpkg.repo import AptCache, AptFetcher, parse_packages_index
from suture.errors import SutureError
from suture.patch import patch
from suture.patch.model import PatchOptions, PatchResult
from suture.transports.reference import parse_reference
from tests.fixtures.apkrepo import (
    ApkKey,
    ApkKeys,
    ApkRepoServer,
    ApkSpec,
    apk_image,
    build_apk,
    write_oci,
)
from tests.fixtures.apkrepo import read_apk as fixture_read_apk
from tests.fixtures.aptrepo import AptRepo, GpgKeys, build_deb
from tests.fixtures.patchimages import (
    Archive,
    contents,
    debian_os_release,
    error_line,
    make_root,
    open_image,
    suture,
    versions,
    write_image,
)

ALPINE_URL = "https://dl-cdn.alpinelinux.org/alpine/v3.20/main"
HELLO1 = ApkSpec("hello", "1.0-r0", files={"usr/bin/hello": b"hello 1\n"})
HELLO2 = ApkSpec("hello", "1.1-r0", files={"usr/bin/hello": b"hello 2\n"})
T = TypeVar("T")


# ---------------------------------------------------------------- apk: by identity


def _apk_patch(ref: str, tmp: Path, server: ApkRepoServer, tag: str) -> PatchResult:
    options = PatchOptions(cache_dir=tmp / "cache", sandbox="none",
                           mirrors={ALPINE_URL: server.sub("main")})
    return patch(parse_reference(ref), parse_reference(f"oci:{tmp}/layout:{tag}"), options)


def _patched(result: PatchResult) -> list[str]:
    [platform] = result.platforms
    assert platform.status == "patched", platform.message
    assert platform.plan is not None
    return [f"{u.name}={u.to_version}" for u in platform.plan.updates]


def _same_size(builds: list[tuple[T, Path]]) -> tuple[T, T]:
    """Two of ``builds`` whose files have the same size (more builds than the handful of
    sizes a one-byte change or another key gives, so two always share one)."""
    by_size: dict[int, T] = {}
    for item, path in builds:
        size = path.stat().st_size
        if size in by_size:
            return by_size[size], item
        by_size[size] = item
    raise AssertionError(f"no two builds of the same size: {sorted(by_size)}")


def test_apk_resigned_rebuild_is_fetched_again(tmp_path: Path,
                                               apk_repo_server: ApkRepoServer) -> None:
    """The distribution rotates its key under the same file name and re-signs hello
    1.1-r0 with it (same control part, so the same ``C:``, and here the same size, so
    the index's ``S:`` does not tell the two apart either); the image trusts the new key.
    The cached copy's signature names the key but does not verify with it. The next run
    fetches the package again and patches; before, it failed as possible tampering, and
    only the run after it worked."""
    keys = [ApkKey.create(tmp_path / f"key{n}", "suture-rotating-0001.rsa") for n in range(16)]
    old, new = _same_size([(k, build_apk(HELLO2, k, tmp_path / f"probe{n}"))
                           for n, k in enumerate(keys)])
    apk_repo_server.publish([HELLO2], old, path="main")
    v1 = [build_apk(HELLO1, old, tmp_path / "v1")]
    ref_old = write_oci(apk_image(v1, [ALPINE_URL], old), tmp_path / "layout", "old")
    assert _patched(_apk_patch(ref_old, tmp_path, apk_repo_server, "p1")) == ["hello=1.1-r0"]
    apk_path = apk_repo_server.root / "main" / "x86_64" / "hello-1.1-r0.apk"
    identity = fixture_read_apk(apk_path).checksum

    apk_repo_server.publish([HELLO2], new, path="main")  # same URL, signed by the new key
    assert fixture_read_apk(apk_path).checksum == identity  # the index's C: is unchanged
    ref_new = write_oci(apk_image(v1, [ALPINE_URL], new), tmp_path / "layout", "new")
    assert _patched(_apk_patch(ref_new, tmp_path, apk_repo_server, "p2")) == ["hello=1.1-r0"]
    got = [r for r in apk_repo_server.requests_for("/hello-1.1-r0.apk") if r.status == 200]
    assert len(got) == 2  # once per run: the stale copy was replaced, not trusted
    # A third run finds the new copy in the cache.
    assert _patched(_apk_patch(ref_new, tmp_path, apk_repo_server, "p3")) == ["hello=1.1-r0"]
    assert len(apk_repo_server.requests_for("/hello-1.1-r0.apk")) == 2


def test_apk_rebuild_with_the_same_size_and_date_is_not_taken_by_url(
        tmp_path: Path, apk_keys: ApkKeys, apk_repo_server: ApkRepoServer) -> None:
    """A rebuild of hello 1.1-r0 (other content, so another ``C:``) published under the
    same URL with the same size and modification time, as a mirror that keeps dates
    serves it: a revalidation by URL would be answered "not modified" and hand back
    the old build. Packages are fetched by identity, without conditional requests."""
    key = apk_keys.good
    v1 = [build_apk(HELLO1, key, tmp_path / "v1")]
    ref = write_oci(apk_image(v1, [ALPINE_URL], key), tmp_path / "layout", "v1")
    specs = [HELLO2.with_(files={"usr/bin/hello": f"hello 2.{n:02d}\n".encode()})
             for n in range(24)]  # one byte of difference: the same size, mostly
    first, rebuild = _same_size([(spec, build_apk(spec, key, tmp_path / f"probe{n}"))
                                 for n, spec in enumerate(specs)])
    apk_repo_server.publish([first], key, path="main")
    apk_path = apk_repo_server.root / "main" / "x86_64" / "hello-1.1-r0.apk"
    before = apk_path.stat()
    assert _patched(_apk_patch(ref, tmp_path, apk_repo_server, "p1")) == ["hello=1.1-r0"]
    apk_repo_server.publish([rebuild], key, path="main")
    assert apk_path.stat().st_size == before.st_size
    os.utime(apk_path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert _patched(_apk_patch(ref, tmp_path, apk_repo_server, "p2")) == ["hello=1.1-r0"]
    out = open_image(f"oci:{tmp_path}/layout:p2")
    assert rebuild.files is not None
    assert contents(out, "usr/bin/hello") == {"usr/bin/hello": rebuild.files["usr/bin/hello"]}
    for asked in apk_repo_server.requests_for("/hello-1.1-r0.apk"):
        assert "If-None-Match" not in asked.headers and "If-Modified-Since" not in asked.headers


# ---------------------------------------------------------------- dpkg: by SHA256


def test_deb_republished_under_the_same_url_is_fetched_by_its_sha256(
        apt_repo: AptRepo, gpg_keys: GpgKeys, tmp_path: Path) -> None:
    """The archive replaces a 2.0-1 .deb under the same Filename with a rebuild: the
    next run takes the file the current Packages names (by SHA256), not the cached one
    under that URL. (dpkg's cache was already content-addressed: a guard.)"""
    archive = Archive.create(apt_repo, gpg_keys.good, tmp_path, "bookworm")
    v1 = [archive.add("bookworm", "a", "1.0-1")]
    archive.add("bookworm-security", "a", "2.0-1", {"usr/share/a/build": b"first build\n"})
    archive.publish()
    root = make_root(tmp_path / "root", v1, debian_os_release(), keyring=archive.key_asc(),
                     sources={"etc/apt/sources.list": "deb http://deb.debian.org/debian "
                                                      "bookworm main\n"})
    ref = write_image(root, tmp_path, "v1")
    base = ["patch", "-i", ref, "--cache-dir", str(tmp_path / "cache"), "--no-host-keyrings",
            *archive.mirror_args()]
    first = suture(*base, "-t", "p1")
    assert first.returncode == 0, first.stderr
    out = ref.rsplit(":", 1)[0]
    assert contents(open_image(out + ":p1"), "usr/share/a/build") == {
        "usr/share/a/build": b"first build\n"}

    pool = next(apt_repo.root.glob("pool/main/a/a/a_2.0-1_*.deb"))
    deb = archive.build("a", "2.0-1", {"usr/share/a/build": b"second build\n"})
    shutil.copyfile(deb, pool)  # same URL, other bytes
    archive.publish()
    second = suture(*base, "-t", "p2")
    assert second.returncode == 0, second.stderr
    assert versions(open_image(out + ":p2"))["a"] == "2.0-1"
    assert contents(open_image(out + ":p2"), "usr/share/a/build") == {
        "usr/share/a/build": b"second build\n"}


# ---------------------------------------------------------------- a full cache disk


class _FullFile:
    """A cache temporary file on a full disk: writes fail, and so does the flush that
    ``close()`` does (the real file is closed all the same, as CPython's is)."""

    def __init__(self, real: IO[bytes], code: int) -> None:
        self.real = real
        self.code = code
        self.failed_close = False

    def write(self, data: bytes) -> int:
        raise OSError(self.code, os.strerror(self.code))

    def close(self) -> None:
        self.real.close()
        if not self.failed_close:
            self.failed_close = True
            raise OSError(self.code, os.strerror(self.code))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def __enter__(self) -> _FullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_full_cache_fault_injected(apt_repo: AptRepo, gpg_keys: GpgKeys, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """Every write to the cache fails as on a full disk (or quota): the download stops
    with one error naming the cache directory and hinting --cache-dir, and no
    temporary file stays in the cache."""
    deb = build_deb(tmp_path, "hello", "1.0-1")
    apt_repo.add_deb(deb, "stable")
    apt_repo.publish("stable", codename="trixie", sign_with=gpg_keys.good)
    cache_dir = tmp_path / "cache"
    with AptFetcher(cache_dir, backoff=0) as fetcher:
        repo = fetcher.fetch_release(apt_repo.url, "stable", gpg_keys.good.keyring())
        [entry] = parse_packages_index(repo.fetch_packages("main", "amd64"),
                                       base_uri=apt_repo.url)
        real_temp = AptCache.temp

        def full_temp(self: AptCache) -> tuple[IO[bytes], Path]:
            f, path = real_temp(self)
            return _FullFile(f, code), path  # type: ignore[return-value]

        monkeypatch.setattr(AptCache, "temp", full_temp)
        with pytest.raises(SutureError) as info:
            fetcher.fetch_deb(entry)
    assert str(cache_dir) in str(info.value)
    assert "--cache-dir" in (info.value.hint or "")
    assert list((cache_dir / "tmp").iterdir()) == []
    assert not (cache_dir / "sha256" / entry.sha256).exists()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 15 MB tmpfs (needs root and mount)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=15m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_cache_on_a_real_small_disk(apt_repo: AptRepo, gpg_keys: GpgKeys,
                                         tmp_path: Path, small_disk: Path) -> None:
    """D5: the update's .deb (6 MB of random bytes) does not fit in what is left of a
    15 MB tmpfs. One error naming the cache with a --cache-dir hint; the disk is as
    full as before (no partial download), so once room is made the next run works."""
    archive = Archive.create(apt_repo, gpg_keys.good, tmp_path, "bookworm")
    v1 = [archive.add("bookworm", "big", "1.0-1")]
    archive.add("bookworm-security", "big", "2.0-1", {"usr/share/big/blob": os.urandom(6 << 20)})
    archive.publish()
    root = make_root(tmp_path / "root", v1, debian_os_release(), keyring=archive.key_asc(),
                     sources={"etc/apt/sources.list": "deb http://deb.debian.org/debian "
                                                      "bookworm main\n"})
    ref = write_image(root, tmp_path, "v1")
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (11 << 20))  # leaves about 4 MB
    cache = small_disk / "c"
    args = ["patch", "-i", ref, "--cache-dir", str(cache), "--no-host-keyrings",
            *archive.mirror_args(), "-t", "p"]
    free_before = shutil.disk_usage(small_disk).free
    proc = suture(*args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = error_line(proc)
    assert f"cache {cache}/apt: no space left on device" in line, line
    assert "--cache-dir" in line
    assert [p.name for p in (cache / "apt" / "tmp").iterdir()] == []
    # Only the small verified indexes stayed: far less than the partial .deb would take.
    assert free_before - shutil.disk_usage(small_disk).free < 256 << 10
    again = suture(*args)  # still full: the same clear error, at once
    assert again.returncode == 1 and "no space left on device" in error_line(again)
    filler.unlink()
    done = suture(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert versions(open_image(ref.rsplit(":", 1)[0] + ":p"))["big"] == "2.0-1"
