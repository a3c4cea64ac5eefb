"""`suture patch` end to end on rpm images whose rpmdb is Berkeley DB (EL8, CentOS 7,
Amazon Linux 2) or SUSE's ndb, against the signed repository of
:mod:`tests.fixtures.rpmrepo`.

Debian's rpm writes neither backend, so the images are the rpm_world roots (populated
by the real ``rpm -i``) with their sqlite rpmdb rewritten as Berkeley DB (``Packages``
and the 18 btree indexes, by suture's writer, which tests/distro/test_rpm_bdb.py
checks against libdb and rpm) or converted to ndb by rpm itself (``rpmdb --rebuilddb``
of rpm 4.18 built with ndb, :mod:`tests.fixtures.rpmndb`: ``Packages.db`` and its
``Index.db``), plus the stale runtime files such images carry (``__db.001``). Each
is patched update-all next to the same root with its sqlite rpmdb, at the same
SOURCE_DATE_EPOCH, and judged: rpm's ``bdb_ro`` answers from the patched Berkeley DB and ``rpmdb
--rebuilddb`` converts it to the same headers suture's sqlite run wrote; the patched
``Packages.db`` holds those headers, is byte for byte the original after rpm's steps,
and rpm (ndb) and syft (go-rpmdb) list the new versions;
the stale files are whited out; the files and the scriptlet log equal the sqlite run's;
``suture inspect`` names the backend.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from suture.distro.rpm.bdb import bdb_files
from suture.distro.rpm.ndb import Pkgdb, create_ndb, read_ndb
from suture.distro.rpm.rpmdb import INDEX_TABLES, InstalledPackage, read_sqlite
from suture.oci.fs import read_files
from suture.oci.image import Image
from tests.fixtures.patchimages import open_image, suture, write_image
from tests.fixtures.peers import peer
from tests.fixtures.rpmndb import ndb_cmd, ndb_rpm
from tests.fixtures.rpmrepo import LOG, RpmWorld

ENV = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LC_ALL": "C", "HOME": "/tmp"}
DB = "var/lib/rpm"
EPOCH = "1700000000"
NEW = ["libsut-2.0-1.x86_64", "sut-release-9-1.noarch", "sut-sh-1.0-1.x86_64",
       "sutprog-2.0-1.x86_64"]
FILES = ("usr/lib64/libsut.so.1", "usr/share/sut/new.txt", "usr/share/sut/old.txt",
         "etc/sut.conf", "usr/bin/sutprog", LOG)


def _patch(world: RpmWorld, tmp: Path, ref: str, tag: str) -> dict[str, Any]:
    result = tmp / f"result-{tag}.json"
    proc = suture("patch", "-i", ref, "-t", tag, "--result", str(result),
                  "--cache-dir", str(tmp / "cache"), "--mirror", world.mirror("good"),
                  "--allow-private-repos", "127.0.0.1", "--sandbox", "auto",
                  "--progress", "quiet")
    assert proc.returncode == 0, proc.stderr
    (platform,) = json.loads(result.read_text())["platforms"]
    assert platform["status"] == "patched", platform["message"]
    assert sorted((u["name"], u["from"], u["to"]) for u in platform["updates"]) == [
        ("libsut", "1.0-1", "2.0-1"), ("sutprog", "1.0-1", "2.0-1")]
    return dict(platform)


def _patched(ref: str, tag: str) -> Image:
    return open_image(ref.rsplit(":", 1)[0] + ":" + tag)


def _contents(image: Image, *paths: str) -> dict[str, bytes | None]:
    found = read_files(image, paths, max_file=1 << 30)
    return {p: (found[p].data if p in found else None) for p in paths}


def _blobs(sqlite_db: Path) -> list[bytes]:
    conn = sqlite3.connect(sqlite_db)
    try:
        return sorted(bytes(b) for (b,) in conn.execute("SELECT blob FROM Packages"))
    finally:
        conn.close()


def _inspect_kind(ref: str) -> tuple[str, object]:
    proc = suture("inspect", ref, "--json")
    assert proc.returncode == 0, proc.stderr
    (platform,) = json.loads(proc.stdout)["platforms"]
    return platform["packageDB"]["kind"], platform["packageDB"]["packages"]


def _reference(world: RpmWorld, tmp: Path, os_release: str | None = None
               ) -> tuple[Path, Image]:
    """The root with its sqlite rpmdb (and ``os_release``, if given), patched: (root,
    patched image)."""
    root = world.make_root(tmp / "root", "rhel")
    if os_release is not None:
        (root / "etc/os-release").write_text(os_release)
    ref = write_image(root, tmp, "sqlite")
    _patch(world, tmp, ref, "sqlite-patched")
    return root, _patched(ref, "sqlite-patched")


def _copy(root: Path, name: str) -> tuple[Path, Path, list[InstalledPackage]]:
    copy = root.parent / name
    shutil.copytree(root, copy, symlinks=True)
    db = copy / DB
    packages = read_sqlite(db / "rpmdb.sqlite")
    for n in ("rpmdb.sqlite", "rpmdb.sqlite-wal", "rpmdb.sqlite-shm"):
        (db / n).unlink(missing_ok=True)
    return copy, db, packages


@pytest.fixture
def epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)


def test_berkeley_db_image_patched(rpm_world: RpmWorld, tmp_path: Path, epoch: None) -> None:
    root, reference = _reference(rpm_world, tmp_path)
    copy, db, packages = _copy(root, "root-bdb")
    for name, data in bdb_files([(p.hnum, p) for p in packages],
                                counter=max(p.hnum for p in packages)).items():
        (db / name).write_bytes(data)
    (db / "__db.001").write_bytes(b"\0" * 8192)  # a libdb environment left in the image
    ref = write_image(copy, tmp_path, "bdb", layout="layout-bdb")
    assert _inspect_kind(ref) == ("rpm-bdb", len(packages))
    _patch(rpm_world, tmp_path, ref, "bdb-patched")
    image = _patched(ref, "bdb-patched")

    names = ["Packages", *INDEX_TABLES]
    got = _contents(image, *(f"{DB}/{n}" for n in [*names, "__db.001"]))
    assert got.pop(f"{DB}/__db.001") is None  # whited out: rpm recreates its environment
    out = tmp_path / "patched-db"
    out.mkdir()
    for path, body in got.items():
        assert body is not None, path
        (out / Path(path).name).write_bytes(body)
        proc = subprocess.run(["db5.3_verify", str(out / Path(path).name)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def rpm(*args: str) -> str:
        proc = subprocess.run(["rpm", "--define", "_db_backend bdb_ro", "--dbpath", str(out),
                               *args], capture_output=True, text=True, env=ENV)
        assert proc.returncode == 0 and "could not open" not in proc.stderr, proc.stderr
        return proc.stdout

    assert sorted(n for n in rpm("-qa", "--qf", "%{NEVRA}\\n").split()
                  if not n.startswith("gpg-pubkey-")) == NEW
    assert rpm("-qf", "/usr/bin/sutprog").split() == ["sutprog-2.0-1.x86_64"]
    assert rpm("-q", "--whatprovides", "libsut").split() == ["libsut-2.0-1.x86_64"]
    assert rpm("-q", "--whatrequires", "libsut").split() == ["sutprog-2.0-1.x86_64"]

    conv = subprocess.run(["rpmdb", "--dbpath", str(out), "--define", "_db_backend sqlite",
                           "--rebuilddb"], capture_output=True, text=True, env=ENV)
    assert conv.returncode == 0, conv.stderr
    ref_db = tmp_path / "reference-db"
    ref_db.mkdir()
    (ref_db / "rpmdb.sqlite").write_bytes(
        _contents(reference, f"{DB}/rpmdb.sqlite")[f"{DB}/rpmdb.sqlite"] or b"")
    assert _blobs(out / "rpmdb.sqlite") == _blobs(ref_db / "rpmdb.sqlite")
    assert _contents(image, *FILES) == _contents(reference, *FILES)


SLES = 'NAME="SLES"\nID="sles"\nID_LIKE="suse"\nVERSION_ID="15.5"\n'


@pytest.mark.parametrize("os_release", [None, SLES], ids=["rhel", "sles"])
def test_ndb_image_patched(rpm_world: RpmWorld, tmp_path: Path, epoch: None,
                           os_release: str | None) -> None:
    """On a SUSE image zypper runs one rpm transaction per package, so rpm puts
    libsut 2.0 and deletes 1.0 before it puts sutprog 2.0 (which requires it) and
    deletes 1.0; in one transaction (dnf, rpm -U) both puts come first. The patched
    Packages.db is, byte for byte, the original after those steps."""
    root, reference = _reference(rpm_world, tmp_path, os_release)
    copy = root.parent / "root-ndb"
    shutil.copytree(root, copy, symlinks=True)
    packages = read_sqlite(copy / DB / "rpmdb.sqlite")
    # rpm converts the database to ndb itself (Packages.db and its Index.db)
    conv = subprocess.run([str(ndb_rpm().parent / "rpmdb"), "--root", str(copy),
                           "--dbpath", "/" + DB, "--define", "_db_backend ndb", "--rebuilddb"],
                          capture_output=True, text=True, env=ENV)
    assert conv.returncode == 0, conv.stderr
    db = copy / DB
    assert sorted(p.name for p in db.iterdir() if not p.name.startswith(".")) == [
        "Index.db", "Packages.db"]
    original = (db / "Packages.db").read_bytes()
    assert create_ndb([p.header.blob for p in packages]) == original  # as rpm fills one
    ref = write_image(copy, tmp_path, "ndb", layout="layout-ndb")
    assert _inspect_kind(ref) == ("rpm-ndb", len(packages))
    _patch(rpm_world, tmp_path, ref, "ndb-patched")
    image = _patched(ref, "ndb-patched")

    got = _contents(image, f"{DB}/Packages.db", f"{DB}/Index.db")
    assert got[f"{DB}/Index.db"] is None  # whited out: rpm rebuilds it on its next run
    out = tmp_path / "patched-db"
    out.mkdir()
    (out / "Packages.db").write_bytes(got[f"{DB}/Packages.db"] or b"")
    patched = read_ndb(out)
    ref_db = tmp_path / "reference-db"
    ref_db.mkdir()
    (ref_db / "rpmdb.sqlite").write_bytes(
        _contents(reference, f"{DB}/rpmdb.sqlite")[f"{DB}/rpmdb.sqlite"] or b"")
    assert sorted(p.header.blob for p in patched) == _blobs(ref_db / "rpmdb.sqlite")
    # rpm's steps: the new packages took the next indexes, the old ones were deleted
    assert sorted(p.hnum for p in patched if p.info.name in ("libsut", "sutprog")) == \
        [len(packages) + 1, len(packages) + 2]
    new = {p.info.name: p.header.blob for p in patched}
    old = {p.info.name: p.hnum for p in packages}

    def replay(order: list[tuple[str, str]]) -> bytes:
        db = Pkgdb(original)
        for op, name in order:
            if op == "add":
                db.put(db.next_pkgidx(), new[name])
            else:
                db.delete(old[name])
        return bytes(db.data)

    puts = [("add", "libsut"), ("add", "sutprog")]
    dels = [("del", "libsut"), ("del", "sutprog")]
    per_package = replay([puts[0], dels[0], puts[1], dels[1]])
    one = replay(puts + dels)
    assert per_package != one  # the order shows in the file
    assert (out / "Packages.db").read_bytes() == (per_package if os_release == SLES else one)
    # rpm with ndb reads it, checks every blob, and answers -qf from a regenerated index
    ndb = [*ndb_cmd(dbpath=out)]
    qa = subprocess.run([*ndb, "-qa", "--qf", "%{NEVRA}\\n"], capture_output=True, text=True,
                        env=ENV)
    assert sorted(n for n in qa.stdout.split() if not n.startswith("gpg-pubkey-")) == NEW
    qf = subprocess.run([*ndb, "-qf", "/usr/bin/sutprog"], capture_output=True, text=True,
                        env=ENV)
    assert qf.stdout.split() == ["sutprog-2.0-1.x86_64"], qf.stderr
    verify = subprocess.run([str(ndb_rpm().parent / "rpmdb"), "--define", "_db_backend ndb",
                             "--dbpath", str(out), "--verifydb"], capture_output=True,
                            text=True, env=ENV)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr

    syft_root = tmp_path / "syft-root"
    (syft_root / DB).mkdir(parents=True)
    shutil.copy(out / "Packages.db", syft_root / DB / "Packages.db")
    proc = subprocess.run([str(peer("syft")), "scan", f"dir:{syft_root}", "-o", "syft-json",
                           "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    listed = sorted(f"{a['name']}-{a['version']}.{a['metadata']['architecture']}"
                    for a in json.loads(proc.stdout)["artifacts"]
                    if a["type"] == "rpm" and a["name"] != "gpg-pubkey")
    assert listed == NEW
    assert _contents(image, *FILES) == _contents(reference, *FILES)
