"""apk repository configuration, mirrors, architectures and detection."""

from __future__ import annotations

from pathlib import Path

import pytest

from suture.distro.apk.package import read_apk
from suture.distro.apk.repo import (
    Repository,
    apk_arch,
    apply_mirrors,
    mirror_url,
    parse_repositories,
)
from suture.distro.apk.sign import Keys
from suture.distro.detect import detect_os, detect_package_db
from suture.distro.dpkg.repoerrors import RepositoryError
from suture.oci.fs import FileEntry
from tests.fixtures.apkrepo import V3_PACKAGE


def test_repositories_file() -> None:
    repos = parse_repositories({"etc/apk/repositories": (
        b"# main and community\n"
        b"https://dl-cdn.alpinelinux.org/alpine/v3.20/main\n"
        b"\n"
        b"@edge https://dl-cdn.alpinelinux.org/alpine/edge/community\n"
        b"  https://mirror.example/alpine/v3.20/community/  \n"
        b"#https://disabled.example/\n")}, arch="x86_64")
    assert [(r.url, r.tag, r.order) for r in repos] == [
        ("https://dl-cdn.alpinelinux.org/alpine/v3.20/main", "", 0),
        ("https://dl-cdn.alpinelinux.org/alpine/edge/community", "edge", 1),
        ("https://mirror.example/alpine/v3.20/community/", "", 2)]
    assert repos[0].index_url("x86_64") == \
        "https://dl-cdn.alpinelinux.org/alpine/v3.20/main/x86_64/APKINDEX.tar.gz"
    assert repos[2].package_url("x86_64", "a-1.apk") == \
        "https://mirror.example/alpine/v3.20/community/x86_64/a-1.apk"


def test_apk_tools_3_syntax() -> None:
    repos = parse_repositories({
        "etc/apk/repositories": b"",
        "lib/apk/repositories.d/distro.list": (
            b"set -default mirror=https://cdn.example/alpine\n"
            b"v2 ${mirror}/v3.21 main community\n"
            b"ndx @local https://local.example/idx/APKINDEX.tar.gz\n"),
        "etc/apk/repositories.d/00-vars.list": b"set mirror=https://mine.example/alpine\n",
        "etc/apk/repositories.d/distro.list": b"# overrides lib/apk/repositories.d\n",
    }, arch="aarch64")
    assert repos == []  # the same-named etc/ file hides lib/'s
    repos = parse_repositories({
        "etc/apk/repositories.d/00-vars.list": b"set mirror=https://mine.example/alpine\n",
        "lib/apk/repositories.d/distro.list": (
            b"set -default mirror=https://cdn.example/alpine\n"
            b"v2 ${mirror}/v3.21 main community\n"
            b"ndx @local https://local.example/idx/APKINDEX.tar.gz\n"
            b"https://x.example/${APK_ARCH}-extra\n"),
    }, arch="aarch64")
    assert [(r.url, r.tag) for r in repos] == [
        ("https://mine.example/alpine/v3.21/main", ""),
        ("https://mine.example/alpine/v3.21/community", ""),
        ("https://local.example/idx", "local"),
        ("https://x.example/aarch64-extra", "")]
    assert repos[2].index_url("aarch64") == "https://local.example/idx/APKINDEX.tar.gz"
    assert repos[2].package_url("aarch64", "a-1.apk") == "https://local.example/idx/a-1.apk"


@pytest.mark.parametrize("line", [b"v3 https://cdn.example/alpine/v3.23 main",
                                  b"https://cdn.example/alpine/Packages.adb"])
def test_v3_repositories_are_refused(line: bytes) -> None:
    with pytest.raises(RepositoryError, match="apk v3"):
        parse_repositories({"etc/apk/repositories": line}, arch="x86_64")


def test_bad_lines() -> None:
    for text, message in ((b"@edge\n", "no repository URL"), (b"v2 ${nope}/x\n", "undefined"),
                          (b"set novalue\n", "malformed set")):
        with pytest.raises(RepositoryError, match=message):
            parse_repositories({"etc/apk/repositories": text}, arch="x86_64")


def test_mirrors_match_whole_segments() -> None:
    mirrors = {"https://dl-cdn.alpinelinux.org/alpine": "http://127.0.0.1:8080/a",
               "https://dl-cdn.alpinelinux.org/alpine/edge": "http://edge.local/"}
    assert mirror_url("https://dl-cdn.alpinelinux.org/alpine/v3.20/main", mirrors) == \
        "http://127.0.0.1:8080/a/v3.20/main"
    assert mirror_url("https://dl-cdn.alpinelinux.org/alpine/edge/main", mirrors) == \
        "http://edge.local/main"
    assert mirror_url("https://dl-cdn.alpinelinux.org/alpinex/main", mirrors) == \
        "https://dl-cdn.alpinelinux.org/alpinex/main"
    (repo,) = apply_mirrors([Repository("https://dl-cdn.alpinelinux.org/alpine/v3.20/main",
                                        "t", 3)], mirrors)
    assert (repo.url, repo.tag, repo.order) == ("http://127.0.0.1:8080/a/v3.20/main", "t", 3)


def test_architectures() -> None:
    assert [apk_arch(a) for a in ("amd64", "arm64", "386", "ppc64le", "s390x", "riscv64")] == \
        ["x86_64", "aarch64", "x86", "ppc64le", "s390x", "riscv64"]
    assert apk_arch("arm", "v7") == "armv7" and apk_arch("arm", "v6") == "armhf"


def _entry(path: str, data: bytes) -> FileEntry:
    return FileEntry(path, "file", 0o644, 0, 0, len(data), 0, "", "l", data)


def test_detection_without_os_release_and_in_usr_lib() -> None:
    files = {"etc/alpine-release": _entry("etc/alpine-release", b"3.20.3\n"),
             "usr/lib/apk/db/installed": _entry("usr/lib/apk/db/installed",
                                                b"P:a\nV:1\n\nP:b\nV:2\n\n")}
    release = detect_os(files)
    assert release is not None
    assert (release.id, release.version_id, release.pretty_name) == (
        "alpine", "3.20.3", "Alpine Linux v3.20")
    db = detect_package_db(files)
    assert db is not None and (db.family, db.path, db.count) == (
        "apk", "usr/lib/apk/db/installed", 2)


def test_v3_package_from_apk_tools_3_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "v3.apk"
    path.write_bytes(V3_PACKAGE)
    with pytest.raises(RepositoryError, match="apk v3"):
        read_apk(path, identity="Q1" + "A" * 27 + "=", keys=Keys(), what="v3.apk")
