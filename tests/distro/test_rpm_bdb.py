"""The Berkeley DB rpmdb (suture.distro.rpm.bdb), judged by libdb 5.3 itself and by rpm.

Oracles: ``db5.3_verify`` and ``db5.3_dump`` (libdb's own structural check and record
dump), libdb through Debian's ``python3-bsddb3`` (run by the system Python: it writes
reference files and updates ours), and Debian's ``rpm`` with ``_db_backend bdb_ro``
(``-qa``, ``-qf``, ``--whatprovides``, ``--whatrequires``, ``-V`` answered from the
written ``Packages`` and btree indexes) and ``rpmdb --rebuilddb`` into sqlite.
Debian's rpm cannot write Berkeley DB, so rpm-made test databases come from roots
that the real ``rpm -i`` populated (its sqlite rpmdb) re-written as Berkeley DB by
:func:`bdb_files`; every query is then compared with rpm's answer from that sqlite.
The real database is ``shared/testdata/rpmdb/libuuid/Packages`` (an EL8 rpmdb).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from suture.distro.detect import count_rpm_bdb
from suture.distro.rpm import bdb
from suture.distro.rpm.bdb import (
    BdbFile,
    bdb_files,
    btree_bytes,
    hash_bytes,
    parse_bdb,
    read_bdb,
    write_bdb,
)
from suture.distro.rpm.package import read_rpm
from suture.distro.rpm.rpmdb import (
    INDEX_TABLES,
    InstalledPackage,
    installed_blob,
    read_sqlite,
    sqlite_index_rows,
    write_sqlite,
)
from suture.errors import PackageDBError
from suture.oci.layer import Entry
from suture.transports import write_artifact
from tests.fixtures.images import make_image
from tests.fixtures.rpmrepo import RpmWorld

RPMDB = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "rpmdb"
LIBUUID = RPMDB / "libuuid" / "Packages"
ENV = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LC_ALL": "C", "HOME": "/tmp"}
BDB_RO = ("--define", "_db_backend bdb_ro")
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, which has python3-bsddb3 (libdb 5.3)

needs_libdb = pytest.mark.skipif(
    shutil.which("db5.3_verify") is None or not Path(SYSTEM_PYTHON).exists(),
    reason="needs db5.3-util and python3-bsddb3 (scripts/setup-dev)")


def _verify(path: Path) -> None:
    proc = subprocess.run(["db5.3_verify", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _dump(path: Path) -> list[str]:
    out = subprocess.run(["db5.3_dump", "-p", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return out.split("HEADER=END\n", 1)[1].splitlines()


def _libdb(script: str, *args: str) -> str:
    proc = subprocess.run([SYSTEM_PYTHON, "-c", "from bsddb3 import db\nimport struct, sys\n"
                           + script, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _rpm(dbpath: Path, *args: str, root: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = ["rpm", *BDB_RO]
    if root is not None:
        cmd += ["--root", str(root), "--dbpath", "/" + str(dbpath.relative_to(root))]
    else:
        cmd += ["--dbpath", str(dbpath)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=ENV)


# ---------------------------------------------------------------- the real database

def test_real_el8_database_read_as_rpm_reads_it(tmp_path: Path) -> None:
    packages = read_bdb(LIBUUID.parent)
    assert [(p.hnum, p.info.nevra) for p in packages] == [(1, "libuuid-2.32.1-42.el8_8.x86_64")]
    db = tmp_path / "db"
    db.mkdir()
    shutil.copy(LIBUUID, db / "Packages")
    qa = _rpm(db, "-qa", "--qf", "%{DBINSTANCE} %{NEVRA} %{SIZE} %{SHA1HEADER}\\n")
    (p,) = packages
    assert qa.stdout.split() == ["1", p.info.nevra, str(p.header.number(1009)),
                                 p.header.string(269)]


def _free_areas(data: bytes, pagesize: int) -> list[range]:
    """The byte ranges of each page of a hash file that hold no data: between a page's
    index and its items, after an overflow page's bytes, and the three unused bytes
    after an off-page item's type."""
    out = []
    for pgno in range(1, len(data) // pagesize):
        base = pgno * pagesize
        n, hf = struct.unpack_from("<HH", data, base + 20)
        typ = data[base + 25]
        if typ == 7:
            out.append(range(base + 26 + hf, base + pagesize))
            continue
        out.append(range(base + 26 + 2 * n, base + hf))
        for off in struct.unpack_from(f"<{n}H", data, base + 26):
            if data[base + off] == 3:
                out.append(range(base + off + 1, base + off + 4))
    return out


@needs_libdb
def test_real_el8_database_round_trips(tmp_path: Path) -> None:
    """Written back unchanged, the file holds the same records and every page the same
    bytes except in its free space, where libdb left stale bytes that a writer
    starting from nothing cannot know (so byte equality is impossible); libdb checks
    the result and dumps the same records."""
    data = LIBUUID.read_bytes()
    src = parse_bdb(data)
    assert (src.kind, src.order, src.pagesize, len(src.records)) == ("hash", "<", 4096, 2)
    out = hash_bytes(src.records, order=src.order, pagesize=src.pagesize, uid=src.uid,
                     flags=src.flags, ffactor=src.ffactor)
    assert parse_bdb(out).records == src.records
    assert len(out) == len(data)
    free = _free_areas(data, src.pagesize)
    differing = [i for i in range(len(data)) if out[i] != data[i]]
    assert differing, "libdb's stale bytes were expected to differ"
    assert [i for i in differing if not any(i in r for r in free)] == []
    (tmp_path / "Packages").write_bytes(out)
    _verify(tmp_path / "Packages")
    assert _dump(tmp_path / "Packages") == _dump(LIBUUID)


def test_real_el8_database_rewritten_with_indexes_answers_rpm(tmp_path: Path) -> None:
    """Through write_bdb with nothing to change: the same package, the counter in key 0
    kept, and the 18 index files (the source has none) answering bdb_ro's queries."""
    new, written = write_bdb(LIBUUID.parent, tmp_path, remove=[], add=[])
    assert new == [] and sorted(written) == sorted(["Packages", *INDEX_TABLES])
    assert [p.info.nevra for p in read_bdb(tmp_path)] == ["libuuid-2.32.1-42.el8_8.x86_64"]
    records = dict(parse_bdb((tmp_path / "Packages").read_bytes()).records)
    assert records[struct.pack("<I", 0)] == struct.pack("<I", 1)
    for args in (["-qf", "/usr/lib64/libuuid.so.1"],
                 ["-q", "--whatprovides", "libuuid.so.1()(64bit)"],
                 ["-q", "--whatrequires", "/sbin/ldconfig"], ["-q", "libuuid"]):
        proc = _rpm(tmp_path, *args)
        assert proc.stdout.strip() == "libuuid-2.32.1-42.el8_8.x86_64", (args, proc.stderr)
        assert "could not open" not in proc.stderr


# ---------------------------------------------------------------- the file format

def _records(n: int) -> list[tuple[bytes, bytes]]:
    """Keys and values of many sizes: empty values, on-page items, overflow items of
    several pages, keys longer than a btree's overflow size, enough for three levels."""
    out = []
    for i in range(n):
        key = b"k%06d" % i + b"x" * (i * 37 % 1300)
        out.append((key, bytes([i % 251]) * (i * 53 % 9000 if i % 7 else 0)))
    return out


@needs_libdb
@pytest.mark.parametrize("kind", ["hash", "btree"])
def test_written_files_are_what_libdb_writes(tmp_path: Path, kind: str) -> None:
    """The same records written by libdb and by suture: libdb verifies ours and dumps
    the same records in the same order."""
    records = _records(2500)
    ours = tmp_path / "ours.db"
    build = hash_bytes if kind == "hash" else btree_bytes
    ours.write_bytes(build(records))
    _verify(ours)
    theirs = tmp_path / "theirs.db"
    _libdb("d = db.DB()\nd.open(sys.argv[1], dbtype=db.DB_HASH if sys.argv[2] == 'hash' "
           "else db.DB_BTREE, flags=db.DB_CREATE)\n"
           "for i in range(2500):\n"
           "    key = b'k%06d' % i + b'x' * (i * 37 % 1300)\n"
           "    d.put(key, bytes([i % 251]) * (i * 53 % 9000 if i % 7 else 0))\n"
           "d.close()\n", str(theirs), kind)
    mine, libdbs = _dump(ours), _dump(theirs)
    if kind == "hash":  # a hash file's order is its bucket layout
        mine, libdbs = sorted(mine), sorted(libdbs)
    assert mine == libdbs
    assert sorted(parse_bdb(theirs.read_bytes()).records) == sorted(records)


@needs_libdb
@pytest.mark.parametrize("kind", ["hash", "btree"])
def test_libdb_updates_what_we_write(tmp_path: Path, kind: str) -> None:
    """rpm 4.14 changes the database through libdb: what suture wrote takes thousands
    of puts and deletes (bucket splits, page splits, freed overflow chains) and still
    verifies, holding what libdb put."""
    path = tmp_path / "f.db"
    records = [(struct.pack("<I", i), b"v" * (i * 31 % 5000)) for i in range(1500)]
    path.write_bytes((hash_bytes if kind == "hash" else btree_bytes)(records))
    _libdb("d = db.DB()\nd.open(sys.argv[1], dbtype=db.DB_HASH if sys.argv[2] == 'hash' "
           "else db.DB_BTREE)\n"
           "for i in range(1500, 5000): d.put(struct.pack('<I', i), b'w' * (i % 3000))\n"
           "for i in range(0, 1000): d.delete(struct.pack('<I', i))\n"
           "d.close()\n", str(path), kind)
    _verify(path)
    got = dict(parse_bdb(path.read_bytes()).records)
    want = {k: v for k, v in records[1000:]}
    want.update({struct.pack("<I", i): b"w" * (i % 3000) for i in range(1500, 5000)})
    assert got == want


def test_big_endian_files_read_and_written_in_their_order() -> None:
    records = [(struct.pack(">I", i), b"%d" % i * (i % 900)) for i in range(300)]
    for build in (hash_bytes, btree_bytes):
        data = build(records, order=">")
        parsed = parse_bdb(data)
        assert parsed.order == ">" and sorted(parsed.records) == sorted(records)


@pytest.mark.parametrize("data", [b"", b"\0" * 4096, LIBUUID.read_bytes()[:4096 * 3],
                                  b"SQLite format 3\0" + bytes(8000)])
def test_not_a_berkeley_db_file_refused(data: bytes) -> None:
    with pytest.raises(PackageDBError, match="/x/Packages"):
        parse_bdb(data, "/x/Packages")


def test_damaged_overflow_chain_refused() -> None:
    data = bytearray(LIBUUID.read_bytes())
    data[4096 * 10 + 16:4096 * 10 + 20] = struct.pack("<I", 3)  # page 10 links back to 3
    with pytest.raises(PackageDBError, match=r"overflow chain loops|overflow page"):
        parse_bdb(bytes(data), "/x/Packages")


# ---------------------------------------------------------------- rpm's databases

def _bdb_root(root: Path, dbdir: str = "var/lib/rpm") -> tuple[Path, Path]:
    """A copy of the rpm-made root ``root`` whose rpmdb.sqlite is rewritten as a
    Berkeley DB rpmdb (same header numbers, all 18 indexes) in ``dbdir``."""
    copy = root.parent / (root.name + "-bdb")
    shutil.copytree(root, copy, symlinks=True)
    db = copy / dbdir
    packages = read_sqlite(db / "rpmdb.sqlite")
    for name in ("rpmdb.sqlite", "rpmdb.sqlite-wal", "rpmdb.sqlite-shm"):
        (db / name).unlink(missing_ok=True)
    counter = max(p.hnum for p in packages)
    for name, data in bdb_files([(p.hnum, p) for p in packages], counter=counter).items():
        (db / name).write_bytes(data)
    return copy, db


def _sqlite_rpm(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", *args],
                          capture_output=True, text=True, env=ENV)


QUERIES = (["-qa", "--qf", "%{DBINSTANCE} %{NEVRA} %{SHA1HEADER}\\n"],
           ["-qf", "/usr/bin/sutprog"], ["-qf", "/usr/lib64/libsut.so.1"],
           ["-qf", "/bin/sh"], ["-q", "--whatprovides", "libsut"],
           ["-q", "--whatprovides", "system-release(releasever)"],
           ["-q", "--whatrequires", "libsut"], ["-q", "gpg-pubkey", "--qf", "%{DESCRIPTION}"],
           ["-V", "sutprog"], ["-V", "libsut"], ["-qa", "--last"], ["-q", "--filetriggers", "-a"])


def test_bdb_ro_answers_as_rpm_does_from_sqlite(rpm_world: RpmWorld, tmp_path: Path) -> None:
    root = rpm_world.make_root(tmp_path / "root", "rhel")
    copy, db = _bdb_root(root)
    for args in QUERIES:
        want = _sqlite_rpm(root, *args)
        got = _rpm(db, *args, root=copy)
        assert got.returncode == want.returncode, (args, got.stderr)
        if "-qa" in args:  # rpm lists a Berkeley DB in hash order, an sqlite one by hnum
            assert sorted(got.stdout.splitlines()) == sorted(want.stdout.splitlines())
        else:
            assert got.stdout == want.stdout, args
        assert "could not open" not in got.stderr and "error" not in got.stderr, got.stderr
    assert read_bdb(db)[0].hnum == read_sqlite(root / "var/lib/rpm/rpmdb.sqlite")[0].hnum


def _transaction(world: RpmWorld, packages: list[InstalledPackage], when: int
                 ) -> tuple[list[int], list[bytes]]:
    remove = [p.hnum for p in packages if p.info.name in ("libsut", "sutprog")]
    add = []
    for stem in ("libsut-2.0-1", "sutprog-2.0-1"):
        archive = read_rpm(world.pkg(stem), what=stem)
        nfiles = len(archive.header.strings(1117))  # BASENAMES
        add.append(installed_blob(archive.header, archive.signature, install_time=when,
                                  tid=when, color=3, file_states=bytes(nfiles)))
    return remove, add


def _blobs(sqlite_db: Path) -> list[bytes]:
    conn = sqlite3.connect(sqlite_db)
    try:
        return sorted(bytes(b) for (b,) in conn.execute("SELECT blob FROM Packages"))
    finally:
        conn.close()


def test_transaction_converts_to_the_sqlite_suture_writes(rpm_world: RpmWorld,
                                                          tmp_path: Path) -> None:
    """The same transaction (libsut and sutprog 1.0 replaced by 2.0) through the
    Berkeley DB writer and the sqlite writer: rpm's bdb_ro reads the first, and
    ``rpmdb --rebuilddb`` converts it to an sqlite database holding the same
    headers, byte for byte, as suture's sqlite; rpm's own indexes rebuilt from it
    answer as ours did."""
    root = rpm_world.make_root(tmp_path / "root", "rhel")
    copy, db = _bdb_root(root)
    packages = read_bdb(db)
    remove, add = _transaction(rpm_world, packages, 1700000000)
    new, written = write_bdb(db, db, remove=remove, add=add)
    assert new == [max(p.hnum for p in packages) + 1, max(p.hnum for p in packages) + 2]
    assert sorted(written) == sorted(["Packages", *INDEX_TABLES])
    qa = _rpm(db, "-qa", "--qf", "%{NEVRA}\\n", root=copy)
    assert "libsut-2.0-1.x86_64" in qa.stdout.split() and "libsut-1.0-1.x86_64" not in qa.stdout
    answers = {tuple(a): _rpm(db, *a, root=copy).stdout for a in QUERIES[1:8]}
    for name in written:
        _verify(db / name)

    sq = tmp_path / "sqlite"
    sq.mkdir()
    write_sqlite(root / "var/lib/rpm/rpmdb.sqlite", sq / "rpmdb.sqlite", remove=remove, add=add)

    conv = subprocess.run(["rpmdb", "--root", str(copy), "--dbpath", "/var/lib/rpm",
                           "--define", "_db_backend sqlite", "--rebuilddb"],
                          capture_output=True, text=True, env=ENV)
    assert conv.returncode == 0, conv.stderr
    assert (db / "rpmdb.sqlite").is_file() and not (db / "Packages").exists()
    assert _blobs(db / "rpmdb.sqlite") == _blobs(sq / "rpmdb.sqlite")
    for args, want in answers.items():
        assert _sqlite_rpm(copy, *args).stdout == want, args


def test_index_files_the_source_lacks_are_not_added(rpm_world: RpmWorld, tmp_path: Path
                                                    ) -> None:
    """An EL7 rpmdb keeps 12 indexes (rpm 4.11): a rewrite keeps that set."""
    root = rpm_world.make_root(tmp_path / "root", "rhel")
    _copy, db = _bdb_root(root)
    el7 = ("Name", "Basenames", "Group", "Requirename", "Providename", "Conflictname",
           "Obsoletename", "Triggername", "Dirnames", "Installtid", "Sigmd5", "Sha1header")
    for name in INDEX_TABLES:
        if name not in el7:
            (db / name).unlink()
    _new, written = write_bdb(db, tmp_path / "out", remove=[], add=[])
    assert sorted(written) == sorted(["Packages", *el7])


def test_a_missing_package_or_bad_blob_refused_nothing_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(PackageDBError, match="no package 7 to remove"):
        write_bdb(LIBUUID.parent, out, remove=[7], add=[])
    with pytest.raises(PackageDBError, match="added package 0"):
        write_bdb(LIBUUID.parent, out, remove=[], add=[b"\0\0\0\1junk"])
    assert not out.exists()


def test_bdb_file_dataclass_carries_geometry() -> None:
    f = parse_bdb(LIBUUID.read_bytes())
    assert isinstance(f, BdbFile) and f.uid == LIBUUID.read_bytes()[52:72]
    assert bdb.ham_hash(bdb.CHARKEY) == struct.unpack_from("<I", LIBUUID.read_bytes(), 92)[0]


MARINER = RPMDB / "cbl-mariner-2.0" / "rpmdb.sqlite"


def test_indexes_hold_the_rows_rpm_wrote_for_a_real_distribution(tmp_path: Path) -> None:
    """CBL-Mariner 2.0's real rpmdb (129 packages, written by rpm): its sqlite index
    tables hold what rpm indexed; the same packages written as Berkeley DB give every
    one of the 18 btree indexes exactly those keys and (hnum, idx) pairs, and bdb_ro
    answers queries over many names and files as rpm does from the original."""
    packages = read_sqlite(MARINER)
    files = bdb_files([(p.hnum, p) for p in packages], counter=max(p.hnum for p in packages))
    rows = sqlite_index_rows(MARINER)
    for table in INDEX_TABLES:
        want: dict[bytes, list[tuple[int, int]]] = {}
        for key, hnum, idx in rows.get(table, set()):
            raw = key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key
            want.setdefault(raw or b"\0", []).append((hnum, idx))
        packed = {k: b"".join(struct.pack("<II", *pair) for pair in sorted(v))
                  for k, v in want.items()}
        assert dict(parse_bdb(files[table]).records) == packed, table
    db = tmp_path / "bdb"
    db.mkdir()
    for name, data in files.items():
        (db / name).write_bytes(data)
    orig = tmp_path / "sqlite"
    orig.mkdir()
    shutil.copy(MARINER, orig / "rpmdb.sqlite")
    provides = sorted({d.name for p in packages for d in p.info.provides})[::7]
    paths = sorted({f for p in packages for f in p.info.files})[::40]
    for args in (["-qa", "--qf", "%{DBINSTANCE} %{NEVRA}\\n"], ["-q", "--whatprovides", *provides],
                 ["-qf", *paths], ["-q", "--whatrequires", *provides[:60]]):
        want_out = subprocess.run(["rpm", "--dbpath", str(orig), *args], capture_output=True,
                                  text=True, env=ENV).stdout
        assert len(want_out.splitlines()) >= min(len(args) - 2, 60), args[:2]
        got = _rpm(db, *args)
        assert "could not open" not in got.stderr
        if "-qa" in args:
            assert sorted(got.stdout.splitlines()) == sorted(want_out.splitlines())
        else:
            assert got.stdout == want_out, args[:2]


def test_inspect_counts_a_real_el8_database(tmp_path: Path) -> None:
    assert count_rpm_bdb(LIBUUID.read_bytes(), "/var/lib/rpm/Packages") == 1
    ref = f"oci:{tmp_path}/layout:el8"
    write_artifact(make_image([
        Entry.file("etc/os-release", b'ID="rhel"\nVERSION_ID="8.8"\n'),
        Entry.file("var/lib/rpm/Packages", LIBUUID.read_bytes())]), ref)
    proc = subprocess.run([sys.executable, "-m", "suture", "inspect", ref, "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (platform,) = json.loads(proc.stdout)["platforms"]
    db = platform["packageDB"]
    assert (db["kind"], db["path"].lstrip("/"), db["packages"]) == (
        "rpm-bdb", "var/lib/rpm/Packages", 1)
    with pytest.raises(PackageDBError, match="/x/Packages"):
        count_rpm_bdb(btree_bytes([(b"a", b"b")]), "/x/Packages")


def test_other_libdb_formats_refused_naming_the_file(tmp_path: Path) -> None:
    """Version 8 hash files (libdb 4.x: rpm 4.8) are read but not written (libdb 4.x
    cannot read version 9); checksummed pages are not read."""
    data = bytearray(LIBUUID.read_bytes())
    data[16:20] = struct.pack("<I", 8)
    db = tmp_path / "v8"
    db.mkdir()
    (db / "Packages").write_bytes(bytes(data))
    assert [p.info.name for p in read_bdb(db)] == ["libuuid"]
    with pytest.raises(PackageDBError, match=r"v8/Packages: Berkeley DB hash version 8"):
        write_bdb(db, tmp_path / "out", remove=[], add=[])
    data[16:20] = struct.pack("<I", 9)
    data[26] |= 1
    with pytest.raises(PackageDBError, match="page checksums"):
        parse_bdb(bytes(data), "/x/Packages")
    assert not (tmp_path / "out").exists()
