"""The apk database suture writes, byte for byte against the fixture oracle
(``tests/fixtures/apkrepo.py``, itself checked against apk-tools 2.14 ``apk add``), and
the fixture's packages and indexes read and verified by suture."""

from __future__ import annotations

from pathlib import Path

import pytest

from suture.distro.apk.apply import Update, apply_updates
from suture.distro.apk.index import parse_apkindex, read_index_archive
from suture.distro.apk.installed import parse_installed, parse_protected_paths
from suture.distro.apk.package import read_apk
from suture.distro.apk.sign import Keys
from suture.distro.dpkg.repoerrors import BadSignature, NotSigned, UnknownKey
from suture.errors import DigestMismatch
from suture.oci.fs import FileEntry
from suture.oci.layer import DIR
from tests.fixtures.apkrepo import (
    ApkDir,
    ApkFile,
    ApkHardlink,
    ApkKey,
    ApkKeys,
    ApkSpec,
    ApkSymlink,
    build_repo,
    installed_db,
    scripts_tar,
    triggers_db,
)

SPECS = [
    ApkSpec("alpha", "1.0-r0", files={
        "usr/bin/alpha": ApkFile(b"#!/bin/sh\necho alpha\n", 0o755),
        "usr/bin/al": ApkSymlink("alpha"),
        "usr/bin/alpha2": ApkHardlink("usr/bin/alpha"),
        "usr/share/alpha/cap": ApkFile(b"cap", 0o750, 0, 0, {"security.capability": b"\x01\x02"}),
        "var/lib/alpha": ApkDir(0o700, 0, 0),
        "etc/alpha.conf": b"x=1\n",
    }, depends=["so:libc.musl-x86_64.so.1"], provides=["cmd:alpha=1.0-r0"],
        replaces=["beta"], replaces_priority=10,
        scripts={"post-upgrade": b"#!/bin/sh\nexit 0\n", "pre-install": b"#!/bin/sh\n"},
        triggers=["/usr/share/alpha/*"]),
    ApkSpec("beta", "2.0-r1", provider_priority=5, install_if=["alpha"],
            files={"usr/lib/beta.so": ApkFile(b"beta", 0o755, 0, 12)}),
    ApkSpec("gamma", "0.1-r0", files={}, replaces=["alpha"]),  # no files at all
]


@pytest.fixture
def repo(apk_keys: ApkKeys, tmp_path: Path) -> tuple[ApkKey, Path]:
    built = build_repo(tmp_path / "repo", SPECS, apk_keys.good)
    return apk_keys.good, built.index_path


def _keys(*keys: ApkKey) -> Keys:
    return Keys.load({k.pub_name: k.public_pem for k in keys})


def test_installing_writes_what_apk_writes(repo: tuple[ApkKey, Path]) -> None:
    key, index_path = repo
    index = read_index_archive(index_path.read_bytes(), _keys(key), what="idx")
    entries = {e.name: e for e in parse_apkindex(index.apkindex, repository="http://r")}
    updates = []
    for spec in SPECS:
        entry = entries[spec.name]
        archive = read_apk(index_path.parent / spec.filename, identity=entry.identity,
                           keys=_keys(key), what=spec.filename)
        assert archive.control.signer is not None
        updates.append(Update(None, entry, archive))
    tree = {d: FileEntry(d, DIR, 0o755, 0, 0, 0, 0, "", "l")
            for d in ("lib", "lib/apk", "lib/apk/db")}
    result = apply_updates([], updates, tree=tree, files={}, protected=parse_protected_paths([]))
    written = {e.path: e.data for e in result.entries if e.path.startswith("lib/apk/db/")}
    paths = [index_path.parent / s.filename for s in SPECS]
    assert written["lib/apk/db/installed"] == installed_db(paths)
    assert written["lib/apk/db/scripts.tar"] == scripts_tar(paths)
    assert written["lib/apk/db/triggers"] == triggers_db(paths)
    db = parse_installed(installed_db(paths))
    assert [p.name for p in db] == ["alpha", "beta", "gamma"]


@pytest.mark.parametrize("sign", ["sha1", "sha256", "sha512"])
def test_fixture_indexes_verify(apk_keys: ApkKeys, tmp_path: Path, sign: str) -> None:
    built = build_repo(tmp_path, SPECS[1:2], apk_keys.good, sign=sign, package_sign=sign)
    index = read_index_archive(built.index_path.read_bytes(), _keys(apk_keys.good),
                               what="idx")
    assert index.description == "v3.20.3-0-gsuture"
    assert index.apkindex == built.index_text


def test_fixture_bad_indexes(apk_keys: ApkKeys, tmp_path: Path) -> None:
    good, other = apk_keys.good, apk_keys.other
    cases = [
        (dict(tamper_index=True), BadSignature),
        (dict(sign=None), NotSigned),
        (dict(signer=other), UnknownKey),
        (dict(signer=other, sign_name=good.pub_name), BadSignature),
    ]
    for i, (options, error) in enumerate(cases):
        built = build_repo(tmp_path / str(i), SPECS[1:2], good, **options)  # type: ignore[arg-type]
        with pytest.raises(error):
            read_index_archive(built.index_path.read_bytes(), _keys(good), what="idx")


def test_fixture_package_substituted_after_indexing(apk_keys: ApkKeys, tmp_path: Path) -> None:
    built = build_repo(tmp_path, SPECS[1:2], apk_keys.good, mismatch=["beta"])
    (entry,) = parse_apkindex(built.index_text)
    with pytest.raises(DigestMismatch, match="package checksum"):
        read_apk(built.arch_dir / "beta-2.0-r1.apk", identity=entry.identity,
                 keys=_keys(apk_keys.good), what="beta")
