"""The sqlite rpmdb writer against the real rpm: packages built with rpmbuild and signed
with rpmsign are installed, then upgraded, by ``rpm`` in a scratch root; our blobs and
index rows must equal what rpm wrote, and rpm must accept the database we write."""

from __future__ import annotations

import shutil
import sqlite3
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from suture.distro.rpm.header import Header, HeaderError, Tag, pad8, parse_header
from suture.distro.rpm.rpmdb import (
    INDEX_TABLES,
    header_files,
    index_rows,
    installed_blob,
    package_info,
    read_sqlite,
    sqlite_index_rows,
    write_sqlite,
)
from suture.errors import PackageDBError
from tests.fixtures.rpmbuild import build_rpm, have_rpm_tools, make_gpg_key, rpm_root, sign_rpms

pytestmark = pytest.mark.skipif(not have_rpm_tools(), reason="rpm tools missing")

MARINER = Path("/work/shared/testdata/rpmdb/cbl-mariner-2.0/rpmdb.sqlite")
DB = "var/lib/rpm/rpmdb.sqlite"

LIB_SPEC = """\
Name: libsut
Version: {v}
Release: 1
Epoch: 2
Summary: a library
License: MIT
Group: System/Libraries
BuildArch: noarch
Provides: sutlib = {v}
Provides: /usr/bin/sut-tool
%description
lib
%install
mkdir -p %{{buildroot}}/usr/lib/sut %{{buildroot}}/usr/bin
echo lib{v} > %{{buildroot}}/usr/lib/sut/libsut.txt
echo tool > %{{buildroot}}/usr/bin/sut-tool
%files
/usr/lib/sut
/usr/bin/sut-tool
"""

HELLO_SPEC = """\
Name: hello
Version: {v}
Release: 1
Summary: a program
License: MIT
BuildArch: noarch
Requires: libsut >= 2:1.0
Requires(pre): /bin/sh
Requires(postun): /bin/sh
Requires: (libsut or sutlib)
Recommends: sut-extras
Suggests: sut-docs
Obsoletes: hello-old < 1.0
Conflicts: hello-evil
Provides: greeter = {v}
%description
hello
%install
mkdir -p %{{buildroot}}/usr/bin %{{buildroot}}/etc %{{buildroot}}/usr/share/hello
echo 'echo hello {v}' > %{{buildroot}}/usr/bin/hello
ln -s hello %{{buildroot}}/usr/bin/hi
echo data > %{{buildroot}}/usr/share/hello/a
ln %{{buildroot}}/usr/share/hello/a %{{buildroot}}/usr/share/hello/b
echo conf > %{{buildroot}}/etc/hello.conf
echo {v} > %{{buildroot}}/usr/share/hello/only-{v}
%pre
true
%post
true
%triggerin -- libsut
true
%triggerun -- libsut
true
%filetriggerin -- /usr/lib
true
%transfiletriggerin -- /usr/share
true
%files
%attr(0755,root,root) /usr/bin/hello
/usr/bin/hi
%config(noreplace) /etc/hello.conf
/usr/share/hello
"""

RICH_SPEC = """\
Name: richdeps
Version: 1
Release: 1
Summary: rich dependencies of every kind
License: MIT
BuildArch: noarch
Requires: (pa if pb else pc)
Requires: ((ph >= 1.0 with ph < 2) or rpmlib(Foo) or pi)
Requires: (pj without pk)
Conflicts: (pl and pm)
Recommends: (pn if po)
Conflicts: (pd unless (pe or pf) else pg)
Suggests: (pp or pq)
Supplements: (pr and (ps or pt))
Enhances: (pu or pv)
Requires(post): pw
Requires(preun): px
%description
rich
%files
"""


@dataclass
class Scenario:
    old_db: Path  # the database after installing the old packages
    new_db: Path  # after rpm -U of the new ones
    root: Path
    new_pkgs: dict[str, Path]  # name -> new package file
    old_hnums: list[int]


def _headers(path: Path) -> tuple[Header, Header]:
    data = path.read_bytes()
    sig, end = parse_header(data, 96)
    main, _ = parse_header(data, end + pad8(end))
    return sig, main


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    tmp = tmp_path_factory.mktemp("rpmdb")
    key = make_gpg_key(tmp / "gpg", "rpmdb@suture.test")
    old: list[Path] = []
    new: list[Path] = []
    for v, out in (("1.0", old), ("1.1", new)):
        out += build_rpm(LIB_SPEC.format(v=v), tmp / f"pkgs-{v}")
        out += build_rpm(HELLO_SPEC.format(v=v), tmp / f"pkgs-{v}")
    new += build_rpm(RICH_SPEC, tmp / "pkgs-rich")
    sign_rpms(old + new, key)
    root = tmp / "root"
    root.mkdir()
    rpm_root(root, "--initdb")
    rpm_root(root, "-i", "--nodeps", "--noscripts", *map(str, old))
    old_db = tmp / "old.sqlite"
    shutil.copyfile(root / DB, old_db)
    old_hnums = [p.hnum for p in read_sqlite(old_db)]
    rpm_root(root, "-U", "--nodeps", "--noscripts", *map(str, new))
    new_db = tmp / "new.sqlite"
    shutil.copyfile(root / DB, new_db)
    pkgs = {package_info(_headers(p)[1]).name: p for p in new}
    return Scenario(old_db, new_db, root, pkgs, old_hnums)


def _rpm_blobs(db: Path) -> dict[int, bytes]:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT hnum, blob FROM Packages"))
    finally:
        conn.close()


def _our_blobs(s: Scenario) -> list[tuple[int, bytes]]:
    """(rpm's hnum, our blob) for each new package, in rpm's hnum order."""
    out = []
    for p in read_sqlite(s.new_db):
        if p.hnum in s.old_hnums:
            continue
        sig, main = _headers(s.new_pkgs[p.info.name])
        n = len(header_files(main))
        blob = installed_blob(main, sig, install_time=p.header.number(Tag.INSTALLTIME) or 0,
                              tid=p.header.number(Tag.INSTALLTID) or 0,
                              color=p.header.number(Tag.INSTALLCOLOR) or 0,
                              file_states=bytes(n))
        out.append((p.hnum, blob))
    return out


def test_installed_blob_is_rpms(scenario: Scenario) -> None:
    rpm = _rpm_blobs(scenario.new_db)
    ours = _our_blobs(scenario)
    assert len(ours) == 3
    for hnum, blob in ours:
        assert blob == rpm[hnum]
        # a re-export of rpm's own blob (dribbles dropped and recomputed) is the same
        h, _ = parse_header(rpm[hnum], magic=False)
        states = h.raw(Tag.FILESTATES) or b""
        pkg = scenario.new_pkgs[package_info(h).name]
        again = installed_blob(h, _headers(pkg)[0], install_time=h.number(Tag.INSTALLTIME) or 0,
                               tid=h.number(Tag.INSTALLTID) or 0,
                               color=h.number(Tag.INSTALLCOLOR) or 0, file_states=states)
        assert again == rpm[hnum]


def test_header_files_are_rpms(scenario: Scenario) -> None:
    qf = ("[%{FILENAMES}|%{FILEMODES}|%{FILESIZES}|%{FILEDIGESTS}|%{FILEFLAGS}|%{FILEUSERNAME}"
          "|%{FILEGROUPNAME}|%{FILEMTIMES}|%{FILELINKTOS}|%{FILEINODES}|%{FILESTATES}\\n]")
    for name, path in scenario.new_pkgs.items():
        _sig, main = _headers(path)
        files = header_files(main)
        expect = subprocess.run(["rpm", "-qp", "--qf", qf.replace("|%{FILESTATES}", ""),
                                 str(path)], capture_output=True, text=True,
                                check=True).stdout.splitlines()
        assert [f"/{f.path}|{f.mode}|{f.size}|{f.digest}|{f.flags}|{f.user}|{f.group}|"
                f"{f.mtime}|{f.linkto}|{f.inode}" for f in files] == expect
        assert all(f.state is None and f.digest_algo == 8 for f in files)
        installed = next(p for p in read_sqlite(scenario.new_db) if p.info.name == name)
        expect = rpm_root(scenario.root, "-q", "--qf", qf, name).stdout.splitlines()
        assert [f"/{f.path}|{f.mode}|{f.size}|{f.digest}|{f.flags}|{f.user}|{f.group}|"
                f"{f.mtime}|{f.linkto}|{f.inode}|{f.state}"
                for f in header_files(installed.header)] == expect
    _sig, hello = _headers(scenario.new_pkgs["hello"])
    by = {f.path: f for f in header_files(hello)}
    assert by["usr/share/hello/a"].inode == by["usr/share/hello/b"].inode
    assert by["usr/bin/hi"].linkto == "hello"
    assert by["etc/hello.conf"].flags == 17
    with pytest.raises(HeaderError):
        installed_blob(hello, None, install_time=0, tid=0, color=0, file_states=b"")


def test_write_sqlite_matches_rpm(scenario: Scenario, tmp_path: Path) -> None:
    ours = _our_blobs(scenario)
    dest = tmp_path / "rpmdb.sqlite"
    before = scenario.old_db.read_bytes()
    new = write_sqlite(scenario.old_db, dest, remove=scenario.old_hnums,
                       add=[b for _, b in ours])
    assert scenario.old_db.read_bytes() == before
    assert new == [h for h, _ in ours]
    assert _rpm_blobs(dest) == _rpm_blobs(scenario.new_db)
    theirs = sqlite_index_rows(scenario.new_db)
    mine = sqlite_index_rows(dest)
    assert set(theirs) == set(INDEX_TABLES)
    for table in INDEX_TABLES:
        assert mine[table] == theirs[table], table
    # the rules were exercised: rich names, file triggers, transient requires
    hello = next(p for p in read_sqlite(dest) if p.info.name == "hello")
    assert ("sutlib", hello.hnum, hello.info.requires.index(
        next(d for d in hello.info.requires if d.rich))) in theirs["Requirename"]
    sh = [i for i, d in enumerate(hello.info.requires) if d.name == "/bin/sh"]
    indexed = {i for k, n, i in theirs["Requirename"] if k == "/bin/sh" and n == hello.hnum}
    assert indexed and indexed < set(sh)  # Requires(pre) is transient, (postun) not
    assert theirs["Filetriggername"] and theirs["Transfiletriggername"]
    assert theirs["Triggername"] and len(hello.header.strings(Tag.TRIGGERNAME)) == 2
    assert len([r for r in theirs["Triggername"] if r[1] == hello.hnum]) == 1
    conn = sqlite3.connect(dest)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 4096
    finally:
        conn.close()
    assert not Path(str(dest) + "-wal").exists() or Path(str(dest) + "-wal").stat().st_size == 0


def _rpm(dbdir: Path, *args: str, tool: str = "rpm") -> str:
    r = subprocess.run([tool, "--dbpath", str(dbdir), *args], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": str(dbdir)})
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    assert "error" not in r.stderr.lower(), r.stderr
    return r.stdout


def test_rpm_reads_written_db(scenario: Scenario, tmp_path: Path) -> None:
    ours = _our_blobs(scenario)
    dbdir = tmp_path / "db"
    dbdir.mkdir()
    write_sqlite(scenario.old_db, dbdir / "rpmdb.sqlite", remove=scenario.old_hnums,
                 add=[b for _, b in ours])
    qa = _rpm(dbdir, "-qa", "--qf", "%{NEVRA}\\n").split()
    assert sorted(qa) == ["hello-1.1-1.noarch", "libsut-2:1.1-1.noarch", "richdeps-1-1.noarch"]
    assert set(_rpm(dbdir, "-q", "--whatrequires", "libsut").split()) == {"hello-1.1-1.noarch"}
    assert set(_rpm(dbdir, "-q", "--whatrequires", "sutlib").split()) == {"hello-1.1-1.noarch"}
    assert _rpm(dbdir, "-q", "--whatprovides", "greeter").split() == ["hello-1.1-1.noarch"]
    assert _rpm(dbdir, "-qf", "/usr/share/hello/b").split() == ["hello-1.1-1.noarch"]
    assert _rpm(dbdir, "-q", "--whatrecommends", "sut-extras").split() == ["hello-1.1-1.noarch"]
    assert "-- /usr/lib" in _rpm(dbdir, "-q", "--filetriggers", "hello")
    assert "hello-1.1-1.noarch" in _rpm(dbdir, "-q", "--triggeredby", "libsut")
    _rpm(dbdir, "--verifydb", tool="rpmdb")
    # rpm -V against the root rpm installed the same files into
    root_db = scenario.root / "var/lib/rpm"
    saved = tmp_path / "saved"
    shutil.copytree(root_db, saved)
    try:
        for f in root_db.iterdir():
            f.unlink()
        shutil.copyfile(dbdir / "rpmdb.sqlite", root_db / "rpmdb.sqlite")
        r = rpm_root(scenario.root, "-Va", "--nodeps", check=False)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        shutil.rmtree(root_db)
        shutil.copytree(saved, root_db)


def test_mariner_database() -> None:
    if not MARINER.is_file():
        pytest.skip("CBL-Mariner test database missing")
    pkgs = read_sqlite(MARINER)
    assert len(pkgs) == 129
    assert [p.hnum for p in pkgs] == sorted(p.hnum for p in pkgs)
    out = subprocess.run(["rpm", "--dbpath", str(MARINER.parent), "-qa", "--qf",
                          "%{NAME} %{EPOCHNUM} %{VERSION} %{RELEASE} %{ARCH}\\n"],
                         capture_output=True, text=True, check=True).stdout
    ours = {f"{p.info.name} {p.info.epoch or 0} {p.info.version} {p.info.release} "
            f"{p.info.arch}" for p in pkgs}
    assert ours == set(out.splitlines())
    for p in pkgs:
        files = header_files(p.header)
        assert [f"/{f.path}" for f in files] == list(p.info.files)
        assert all(f.state is not None for f in files)


# installed tag -> signature tag (the inverse of rpm's xlateTags)
_UNXLATE = {257: 1000, 259: 1002, 261: 1004, 262: 1005, 1046: 1007, 5090: 274, 5091: 275,
            269: 269, 273: 273, 267: 267, 268: 268, 270: 270, 271: 271}
_ALIGN = {3: 2, 4: 4, 5: 8}


def _signature_of(h: Header) -> Header:
    """A signature header holding the signature tags rpm translated into ``h``'s
    dribble entries (those after its immutable region)."""
    first = h.index[0]
    ril = -struct.unpack(">i", h.data[first.offset + 8:first.offset + 12])[0] // 16
    index, data = b"", b""
    for e in sorted(h.index[ril:], key=lambda e: _UNXLATE.get(e.tag, 0)):
        if e.tag not in _UNXLATE:
            continue
        align = _ALIGN.get(e.type, 1)
        data += b"\0" * (-len(data) % align)
        index += struct.pack(">IIiI", _UNXLATE[e.tag], e.type, len(data), e.count)
        data += h.raw(e.tag) or b""
    blob = struct.pack(">II", len(index) // 16, len(data)) + index + data
    return parse_header(blob, magic=False)[0]


def test_mariner_rewrite(tmp_path: Path) -> None:
    if not MARINER.is_file():
        pytest.skip("CBL-Mariner test database missing")
    pkgs = read_sqlite(MARINER)
    victim = next(p for p in pkgs if p.info.name == "bash") if any(
        p.info.name == "bash" for p in pkgs) else pkgs[len(pkgs) // 2]
    blob = victim.header.blob
    # our export of every Mariner header, dribbles dropped and recomputed, is rpm's blob
    for p in pkgs:
        h = p.header
        again = installed_blob(h, _signature_of(h), install_time=h.number(Tag.INSTALLTIME) or 0,
                               tid=h.number(Tag.INSTALLTID) or 0,
                               color=h.number(Tag.INSTALLCOLOR) or 0,
                               file_states=h.raw(Tag.FILESTATES) or b"")
        assert again == h.blob, p.info.nevra
    before = sqlite_index_rows(MARINER)
    dbdir = tmp_path / "db"
    dbdir.mkdir()
    new = write_sqlite(MARINER, dbdir / "rpmdb.sqlite", remove=[victim.hnum], add=[blob])
    assert new == [max(p.hnum for p in pkgs) + 1]
    qa = _rpm(dbdir, "-qa").split()
    assert len(qa) == 129
    _rpm(dbdir, "--verifydb", tool="rpmdb")
    after = sqlite_index_rows(dbdir / "rpmdb.sqlite")
    # the same rows, with the victim's hnum renumbered (our rows equal rpm's)
    for table in INDEX_TABLES:
        moved = {(k, new[0] if n == victim.hnum else n, i) for k, n, i in before[table]}
        assert after[table] == moved, table
    assert _rpm(dbdir, "-q", "--qf", "%{NEVRA}", victim.info.name) == \
        _rpm(MARINER.parent, "-q", "--qf", "%{NEVRA}", victim.info.name)


def test_rewrite_in_place_with_wal(scenario: Scenario, tmp_path: Path) -> None:
    """A database rpm left with committed pages still in its WAL is read with them, and
    rewritten in place: the result holds them and no WAL is replayed over it."""
    dbdir = tmp_path / "db"
    dbdir.mkdir()
    db = dbdir / "rpmdb.sqlite"
    shutil.copyfile(scenario.old_db, db)
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    rows_before = writer.execute("SELECT count(*) FROM Name").fetchone()[0]
    blob = _our_blobs(scenario)[0][1]
    extra = _our_blobs(scenario)[-1][1]
    writer.execute("INSERT INTO Packages (blob) VALUES (?)", (extra,))  # in the WAL only
    hnum_wal = writer.execute("SELECT max(hnum) FROM Packages").fetchone()[0]
    wal = dbdir / "rpmdb.sqlite-wal"
    stale = wal.read_bytes()
    assert stale  # the insert is in the WAL, not the main file
    shutil.copyfile(db, tmp_path / "main-only.sqlite")
    shutil.copyfile(wal, tmp_path / "wal.keep")
    writer.close()  # checkpoints; put the uncheckpointed state back
    shutil.copyfile(tmp_path / "main-only.sqlite", db)
    shutil.copyfile(tmp_path / "wal.keep", wal)
    assert [p.hnum for p in read_sqlite(db)] == [*scenario.old_hnums, hnum_wal]
    new = write_sqlite(db, db, remove=[hnum_wal, *scenario.old_hnums], add=[blob])
    assert new == [hnum_wal + 1]
    assert wal.stat().st_size == 0
    assert [p.hnum for p in read_sqlite(db)] == new
    assert rows_before == 2
    _rpm(dbdir, "--verifydb", tool="rpmdb")


def test_mariner_index_rows_are_rpms(tmp_path: Path) -> None:
    """rpmdb --rebuilddb re-adds every header through rpmdbAdd: our rows for each
    Mariner package equal the rows rpm writes for it."""
    if not MARINER.is_file():
        pytest.skip("CBL-Mariner test database missing")
    dbdir = tmp_path / "db"
    dbdir.mkdir()
    shutil.copyfile(MARINER, dbdir / "rpmdb.sqlite")
    _rpm(dbdir, "--rebuilddb", tool="rpmdb")
    theirs = sqlite_index_rows(dbdir / "rpmdb.sqlite")
    ours: dict[str, set[tuple[str | bytes, int, int]]] = {t: set() for t in INDEX_TABLES}
    pkgs = read_sqlite(dbdir / "rpmdb.sqlite")
    assert len(pkgs) == 129
    for p in pkgs:
        for table, rows in index_rows(p.header, p.hnum).items():
            ours[table] |= set(rows)
    for table in INDEX_TABLES:
        assert ours[table] == theirs[table], table


def test_bad_input(tmp_path: Path) -> None:
    dest = tmp_path / "out.sqlite"
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(PackageDBError, match=r"junk\.sqlite"):
        read_sqlite(junk)
    with pytest.raises(PackageDBError, match=r"junk\.sqlite"):
        write_sqlite(junk, dest, remove=[], add=[])
    empty = tmp_path / "empty.sqlite"
    conn = sqlite3.connect(empty)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(PackageDBError, match="Packages"):
        read_sqlite(empty)
    with pytest.raises(PackageDBError):
        write_sqlite(empty, dest, remove=[], add=[])
    assert not dest.exists()


def test_truncated_blob(scenario: Scenario, tmp_path: Path) -> None:
    bad = tmp_path / "bad.sqlite"
    shutil.copyfile(scenario.new_db, bad)
    conn = sqlite3.connect(bad)
    hnum, blob = conn.execute("SELECT hnum, blob FROM Packages LIMIT 1").fetchone()
    conn.execute("UPDATE Packages SET blob = ? WHERE hnum = ?", (blob[:len(blob) // 2], hnum))
    conn.commit()
    conn.close()
    with pytest.raises(PackageDBError, match=r"bad\.sqlite"):
        read_sqlite(bad)
    dest = tmp_path / "out.sqlite"
    with pytest.raises(PackageDBError):
        write_sqlite(bad, dest, remove=[], add=[])
    good = _our_blobs(scenario)[0][1]
    with pytest.raises(PackageDBError):
        write_sqlite(scenario.new_db, dest, remove=[], add=[good[:-10]])
    with pytest.raises(PackageDBError, match="no package"):
        write_sqlite(scenario.new_db, dest, remove=[9999], add=[])
    assert not dest.exists()
