"""SUSE's ndb rpmdb (suture.distro.rpm.ndb).

Debian's rpm has no ndb backend (``sqlite bdb_ro dummy``); the oracles are rpm 4.18
built from Debian's source with ndb (:mod:`tests.fixtures.rpmndb`): it reads the
databases suture writes (``-qa``, ``--verifydb``, ``-qf`` from the Index.db it
regenerates) and its own ``rpm -U`` on an ndb root leaves, byte for byte, the file
suture's writer produces for the same steps; the real SLE 15 BCI ``Packages.db`` of
``shared/testdata/rpmdb`` (read, every package compared with what syft — go-rpmdb's
independent ndb reader — reports for it; written back unchanged byte for byte); syft
again on databases suture wrote; and the rules of rpm's ``rpmpkg.c`` checked step by
step (where a blob goes, when a slot page is added, what a delete moves and
truncates, the generation counter).
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from suture.distro.rpm.header import Tag
from suture.distro.rpm.ndb import (
    PACKAGES_DB,
    Pkgdb,
    Slot,
    create_ndb,
    empty_ndb,
    read_ndb,
    write_ndb,
)
from suture.distro.rpm.package import read_rpm
from suture.distro.rpm.rpmdb import InstalledPackage, installed_blob
from suture.errors import PackageDBError
from tests.fixtures.peers import peer
from tests.fixtures.rpmndb import ENV, ndb_cmd, ndb_rpm
from tests.fixtures.rpmrepo import RpmWorld

RPMDB = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "rpmdb"
SLE = RPMDB / "sle15-bci" / PACKAGES_DB


def _syft(root: Path) -> dict[str, dict[str, object]]:
    """syft's rpm packages of the directory ``root``, by name."""
    proc = subprocess.run([str(peer("syft")), "scan", f"dir:{root}", "-o", "syft-json", "-q"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    return {a["name"]: a["metadata"] for a in doc["artifacts"] if a["type"] == "rpm"}


def _root(tmp: Path, data: bytes) -> Path:
    root = tmp / "root"
    (root / "usr/lib/sysimage/rpm").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text('NAME="SLES"\nID="sles"\nVERSION_ID="15.5"\n')
    (root / "usr/lib/sysimage/rpm" / PACKAGES_DB).write_bytes(data)
    return root


def _as_syft(p: InstalledPackage) -> dict[str, object]:
    h = p.header
    return {"name": p.info.name, "version": p.info.version, "release": p.info.release,
            "epoch": p.info.epoch, "architecture": p.info.arch,
            "sourceRpm": h.string(Tag.SOURCERPM) or "",
            "size": h.number(Tag.SIZE), "vendor": h.string(Tag.VENDOR) or "",
            "provides": sorted(set(h.strings(Tag.PROVIDENAME))),
            "requires": sorted(set(h.strings(Tag.REQUIRENAME)))}


def _syft_view(meta: dict[str, object]) -> dict[str, object]:
    out = {k: meta.get(k) for k in ("name", "version", "release", "epoch", "architecture",
                                    "sourceRpm", "size", "vendor")}
    for k in ("provides", "requires"):
        value = meta.get(k) or []
        assert isinstance(value, list)
        out[k] = sorted(set(value))
    return out


# ---------------------------------------------------------------- the real database

def test_real_sle_database_read_every_package_as_syft_reads_it(tmp_path: Path) -> None:
    packages = read_ndb(SLE.parent)
    assert len(packages) == 35 and [p.hnum for p in packages] == sorted(p.hnum for p in packages)
    theirs = _syft(_root(tmp_path, SLE.read_bytes()))
    assert sorted(theirs) == sorted(p.info.name for p in packages)
    for p in packages:
        assert _as_syft(p) == _syft_view(theirs[p.info.name]), p.info.name


def test_real_sle_database_round_trips_byte_for_byte(tmp_path: Path) -> None:
    new, written = write_ndb(SLE.parent, tmp_path, remove=[], add=[])
    assert (new, written) == ([], [PACKAGES_DB])
    assert (tmp_path / PACKAGES_DB).read_bytes() == SLE.read_bytes()


def test_real_sle_database_blob_checksums(tmp_path: Path) -> None:
    """Each blob's tail is adler32 over its head, header and padding: a flipped byte
    anywhere in a header is caught, naming the file."""
    data = bytearray(SLE.read_bytes())
    db = Pkgdb(bytes(data))
    slot = db.slots[3]
    data[slot.blkoff * 16 + 100] ^= 0x40
    (tmp_path / PACKAGES_DB).write_bytes(bytes(data))
    with pytest.raises(PackageDBError, match=rf"{tmp_path}/Packages\.db: package "
                                             rf"{slot.pkgidx}: blob checksum mismatch"):
        read_ndb(tmp_path)


# ---------------------------------------------------------------- rpm's steps

def _blobs() -> list[bytes]:
    return [p.header.blob for p in read_ndb(SLE.parent)]


def test_a_new_database_is_filled_as_rpm_fills_it() -> None:
    """rpm's first page: header (RpmP, version 0, generation 1, one slot page, next
    index 1), 254 free slots; each put appends its blob after the last one, takes the
    first free slot and bumps the generation (once per slot write)."""
    empty = empty_ndb()
    assert empty[:20] == b"RpmP" + struct.pack("<IIII", 0, 1, 1, 1) and len(empty) == 4096
    blobs = _blobs()[:5]
    db = Pkgdb(create_ndb(blobs))
    assert (db.generation, db.slotnpages, db.nextpkgidx) == (1 + 5, 1, 6)
    end = 4096 // 16
    for i, (slot, blob) in enumerate(zip(sorted(db.slots, key=lambda s: s.slotno), blobs,
                                         strict=True)):
        assert (slot.slotno, slot.pkgidx, slot.blkoff) == (2 + i, i + 1, end)
        head = db.data[end * 16:end * 16 + 16]
        assert head == b"BlbS" + struct.pack("<III", i + 1, 1 + i, len(blob))
        end += slot.blkcnt
    assert len(db.data) == end * 16


def test_full_slot_page_adds_a_page_and_moves_the_blobs_in_its_way() -> None:
    """255 packages need a second slot page: the blobs in its 4096 bytes are moved
    after the last blob (rpm's AddSlotPage), the 255th package takes the page's first
    slot, and every blob still reads."""
    blobs = (_blobs() * 8)[:255]
    db = Pkgdb(create_ndb(blobs))
    assert db.slotnpages == 2 and len(db.slots) == 255
    assert min(s.blkoff for s in db.slots) >= 2 * 4096 // 16
    assert [b for _i, b in db.blobs()] == blobs
    last = _slot(db, 255)
    assert last.slotno == 256
    assert struct.unpack_from("<4sIII", db.data, 4096) == (b"Slot", 255, last.blkoff,
                                                           last.blkcnt)


def _slot(db: Pkgdb, pkgidx: int) -> Slot:
    return next(s for s in db.slots if s.pkgidx == pkgidx)


def test_delete_moves_back_blobs_into_the_hole_and_truncates() -> None:
    """Deleting a blob in the first half of the file moves the last two blobs, the
    bigger first, into the hole as far as they fit (rpm's rpmpkgDelInternal), then
    cuts the emptied tail off when under three quarters of the file is used."""
    blobs = sorted(_blobs(), key=len, reverse=True)  # the biggest first, the smallest last
    db = Pkgdb(create_ndb(blobs))
    by_off = sorted(db.slots, key=lambda s: s.blkoff)
    victim = by_off[0]
    fileblks = len(db.data) // 16
    hole, room = victim.blkoff, by_off[1].blkoff - victim.blkoff
    a, b = by_off[-2], by_off[-1]
    expected = {s.pkgidx: s.blkoff for s in by_off[1:]}
    for s in ((a, b) if a.blkcnt >= b.blkcnt else (b, a)):
        if s.blkoff >= fileblks // 2 and s.blkcnt <= room:
            expected[s.pkgidx] = hole
            hole += s.blkcnt
            room -= s.blkcnt
    moves = sum(1 for s in by_off[1:] if expected[s.pkgidx] != s.blkoff)
    assert moves == 2  # the two smallest fit in the biggest one's place
    end = max(expected[s.pkgidx] + s.blkcnt for s in by_off[1:])
    gen = db.generation
    db.delete(victim.pkgidx)
    assert {s.pkgidx: s.blkoff for s in db.slots} == expected
    assert db.generation == gen + 1 + moves
    assert len(db.data) == (end * 16 if end < fileblks // 4 * 3 else fileblks * 16)
    assert dict(db.blobs()) == {i + 1: blob for i, blob in enumerate(blobs)
                                if i + 1 != victim.pkgidx}


def test_put_takes_the_best_fitting_hole() -> None:
    """A new blob goes to the smallest hole between blobs that holds it, not to the end."""
    blobs = _blobs()
    db = Pkgdb(create_ndb(blobs))
    half = len(db.data) // 16 // 2
    back = [s for s in sorted(db.slots, key=lambda s: s.blkoff)[:-1] if s.blkoff >= half]
    a, b = back[0], back[-1]  # in the back half: no compaction moves
    assert a.blkcnt != b.blkcnt
    db.delete(a.pkgidx)
    db.delete(b.pkgidx)
    tiny = min(blobs, key=len)
    idx = db.next_pkgidx()
    db.put(idx, tiny)
    assert _slot(db, idx).blkoff == min((a, b), key=lambda s: s.blkcnt).blkoff


def test_replacing_every_package_keeps_every_header(tmp_path: Path) -> None:
    packages = read_ndb(SLE.parent)
    new, _written = write_ndb(SLE.parent, tmp_path, remove=[p.hnum for p in packages],
                              add=[p.header.blob for p in packages])
    assert new == list(range(41, 41 + 35))  # from the header's next index
    again = read_ndb(tmp_path)
    assert [p.header.blob for p in again] == [p.header.blob for p in packages]
    assert [p.hnum for p in again] == new


def test_transaction_read_by_syft(rpm_world: RpmWorld, tmp_path: Path) -> None:
    """SLE's bash, coreutils and glibc replaced by two packages suture installs: syft
    lists exactly the packages that should be there."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(SLE, src / PACKAGES_DB)
    packages = read_ndb(src)
    gone = [p for p in packages if p.info.name in ("bash", "coreutils", "glibc")]
    add = []
    for stem in ("libsut-2.0-1", "sutprog-2.0-1"):
        archive = read_rpm(rpm_world.pkg(stem), what=stem)
        add.append(installed_blob(archive.header, archive.signature, install_time=1,
                                  tid=1, color=3,
                                  file_states=bytes(len(archive.header.strings(1117)))))
    out = tmp_path / "out"
    write_ndb(src, out, remove=[p.hnum for p in gone], add=add)
    theirs = _syft(_root(tmp_path, (out / PACKAGES_DB).read_bytes()))
    want = {p.info.name for p in packages} - {"bash", "coreutils", "glibc"} | \
        {"libsut", "sutprog"}
    assert set(theirs) == want
    assert (theirs["libsut"]["version"], theirs["libsut"]["release"]) == ("2.0", "1")


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(PackageDBError, match="no package 99 to remove"):
        write_ndb(SLE.parent, tmp_path / "x", remove=[99], add=[])
    with pytest.raises(PackageDBError, match="not an rpm ndb database"):
        Pkgdb(b"RpmX" + bytes(60), "/x/Packages.db")
    data = bytearray(SLE.read_bytes())
    data[32 + 16 * 3:32 + 16 * 3 + 4] = b"Slxt"
    with pytest.raises(PackageDBError, match="slot at byte 80 is damaged"):
        Pkgdb(bytes(data), "/x/Packages.db")
    assert not (tmp_path / "x").exists()
    assert zlib.adler32(b"") == 1  # rpm's ADLER32_INIT


def test_steps_replayed_in_the_order_given(tmp_path: Path) -> None:
    """``steps`` orders the puts and deletes (zypper: each new package, then the one it
    replaces); the new indexes come back in the order of ``add``; bad steps refused."""
    packages = read_ndb(SLE.parent)
    a, b = packages[3], packages[20]
    add = [a.header.blob, b.header.blob]
    steps = [("add", 1), ("del", b.hnum), ("add", 0), ("del", a.hnum)]
    new, _ = write_ndb(SLE.parent, tmp_path / "x", remove=[a.hnum, b.hnum], add=add,
                       steps=steps)
    assert new == [42, 41]
    db = Pkgdb(SLE.read_bytes())
    db.put(db.next_pkgidx(), add[1])
    db.delete(b.hnum)
    db.put(db.next_pkgidx(), add[0])
    db.delete(a.hnum)
    assert (tmp_path / "x" / PACKAGES_DB).read_bytes() == bytes(db.data)
    default, _ = write_ndb(SLE.parent, tmp_path / "y", remove=[a.hnum, b.hnum], add=add)
    assert default == [41, 42]
    assert (tmp_path / "y" / PACKAGES_DB).read_bytes() != bytes(db.data)
    with pytest.raises(ValueError, match="steps"):
        write_ndb(SLE.parent, tmp_path / "z", remove=[a.hnum], add=add, steps=[("add", 0)])


# ---------------------------------------------------------------- rpm with ndb as the oracle

def _ndb(dbpath: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ndb_cmd(dbpath=dbpath), *args], capture_output=True, text=True,
                          env=ENV)


def test_rpm_reads_the_real_database_and_what_suture_writes(rpm_world: RpmWorld,
                                                            tmp_path: Path) -> None:
    """rpm built with ndb lists the real SLE database as suture reads it, and after a
    transaction suture wrote (bash, coreutils, glibc out; libsut, sutprog in) lists
    what should be there, verifies every blob (--verifydb) and answers -qf from the
    Index.db it generates, since suture leaves none."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(SLE, src / PACKAGES_DB)
    packages = read_ndb(src)
    qa = _ndb(src, "-qa", "--qf", "%{DBINSTANCE} %{NEVRA}\\n")
    assert qa.returncode == 0, qa.stderr
    assert sorted(qa.stdout.splitlines()) == sorted(f"{p.hnum} {p.info.nevra}"
                                                    for p in packages)
    gone = [p for p in packages if p.info.name in ("bash", "coreutils", "glibc")]
    add = []
    for stem in ("libsut-2.0-1", "sutprog-2.0-1"):
        archive = read_rpm(rpm_world.pkg(stem), what=stem)
        add.append(installed_blob(archive.header, archive.signature, install_time=1,
                                  tid=1, color=3,
                                  file_states=bytes(len(archive.header.strings(1117)))))
    out = tmp_path / "out"
    write_ndb(src, out, remove=[p.hnum for p in gone], add=add)
    assert not (out / "Index.db").exists()
    qf = _ndb(out, "-qf", "/usr/bin/sutprog", "/usr/lib64/libsut.so.1")
    assert qf.stdout.split() == ["sutprog-2.0-1.x86_64", "libsut-2.0-1.x86_64"], qf.stderr
    assert "Generating 18 missing index(es)" in qf.stderr  # rpm rebuilds the index file
    assert (out / "Index.db").is_file()
    rpmdb = [str(ndb_rpm().parent / "rpmdb"), "--define", "_db_backend ndb", "--dbpath",
             str(out), "--verifydb"]
    verify = subprocess.run(rpmdb, capture_output=True, text=True, env=ENV)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    qa = _ndb(out, "-qa", "--qf", "%{NAME}-%{VERSION}\\n")
    assert (qa.returncode, qa.stderr) == (0, "")
    assert sorted(qa.stdout.split()) == sorted(
        [f"{p.info.name}-{p.info.version}" for p in packages if p not in gone]
        + ["libsut-2.0", "sutprog-2.0"])


def test_rpm_U_on_an_ndb_root_leaves_the_file_suture_writes(rpm_world: RpmWorld,
                                                           tmp_path: Path) -> None:
    """The real rpm (ndb) installs the version 1 set into a root and upgrades libsut
    and sutprog to 2.0; suture's writer, given the database from before and rpm's own
    installed headers of the new packages, produces rpm's Packages.db byte for byte
    (placement, slots, moves, generation counter, next index)."""
    root = tmp_path / "root"
    (root / "var/log").mkdir(parents=True)
    rpm = [*ndb_cmd(root=root), "--nosignature"]
    subprocess.run([*rpm, "--initdb"], check=True, capture_output=True, env=ENV)
    v1 = [rpm_world.pkg(s) for s in ("sut-sh-1.0-1", "sut-release-9-1", "libsut-1.0-1",
                                     "sutprog-1.0-1")]
    subprocess.run([*rpm, "-i", *map(str, v1)], check=True, capture_output=True, env=ENV)
    before = tmp_path / "before"
    shutil.copytree(root / "var/lib/rpm", before)
    v2 = [rpm_world.pkg(s) for s in ("libsut-2.0-1", "sutprog-2.0-1")]
    subprocess.run([*rpm, "-U", *map(str, v2)], check=True, capture_output=True, env=ENV)
    after = read_ndb(root / "var/lib/rpm")
    old = {p.info.name: p.hnum for p in read_ndb(before)}
    blobs = {p.info.name: p.header.blob for p in after}
    assert [p.info.nevra for p in after if p.hnum > max(old.values())] == [
        "libsut-2.0-1.x86_64", "sutprog-2.0-1.x86_64"]  # rpm's install order
    out = tmp_path / "out"
    new, _ = write_ndb(before, out, remove=[old["libsut"], old["sutprog"]],
                       add=[blobs["libsut"], blobs["sutprog"]])
    assert new == [p.hnum for p in after if p.info.name in ("libsut", "sutprog")]
    assert (out / PACKAGES_DB).read_bytes() == (root / "var/lib/rpm" / PACKAGES_DB).read_bytes()
