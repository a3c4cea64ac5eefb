"""`suture inspect` on images holding real rpm databases taken from distribution images
(shared/testdata/rpmdb: CBL-Mariner 2.0's sqlite rpmdb in WAL mode, SLE 15 BCI's ndb)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from suture.distro.detect import count_rpm_ndb, count_rpm_sqlite
from suture.errors import PackageDBError
from suture.oci.layer import Entry
from suture.transports import write_artifact
from tests.fixtures.images import make_image

RPMDB = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "rpmdb"
MARINER = RPMDB / "cbl-mariner-2.0" / "rpmdb.sqlite"
SLE = RPMDB / "sle15-bci" / "Packages.db"

pytestmark = pytest.mark.skipif(not RPMDB.is_dir(), reason=f"no real rpm databases at {RPMDB}")


def _inspect(tmp: Path, tag: str, entries: list[Entry]) -> dict[str, object]:
    ref = f"oci:{tmp}/layout:{tag}"
    write_artifact(make_image(entries), ref)
    proc = subprocess.run([sys.executable, "-m", "suture", "inspect", ref, "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    [platform] = doc["platforms"]
    db: dict[str, object] = platform["packageDB"]
    return db


def test_cbl_mariner_sqlite_rpmdb_in_wal_mode(tmp_path: Path) -> None:
    data = MARINER.read_bytes()
    assert data[18:20] == b"\x02\x02"  # written in WAL mode, as rpm writes it
    db = _inspect(tmp_path, "mariner", [
        Entry.file("etc/os-release", b'ID=mariner\nVERSION_ID="2.0"\n'),
        Entry.file("var/lib/rpm/rpmdb.sqlite", data)])
    # 129: the package count go-rpmdb's test data gives for this database.
    assert (db["family"], db["kind"], db["packages"]) == ("rpm", "rpm-sqlite", 129)


def test_sle_ndb_rpmdb(tmp_path: Path) -> None:
    db = _inspect(tmp_path, "sle", [
        Entry.file("etc/os-release", b'ID="sles"\nVERSION_ID="15.5"\n'),
        Entry.file("usr/lib/sysimage/rpm/Packages.db", SLE.read_bytes())])
    assert (db["family"], db["kind"], db["packages"]) == ("rpm", "rpm-ndb", 35)


def test_every_used_ndb_slot_points_at_a_blob() -> None:
    """The count is of slots whose blob is there: each used slot's block offset leads
    to a blob header (``BlbS``) naming the same package index."""
    data = SLE.read_bytes()
    used = 0
    for offset in range(32, 4096, 16):
        index = int.from_bytes(data[offset + 4:offset + 8], "little")
        block = int.from_bytes(data[offset + 8:offset + 12], "little")
        if index:
            used += 1
            blob = data[block * 16:block * 16 + 8]
            assert blob[:4] == b"BlbS" and int.from_bytes(blob[4:8], "little") == index
    assert used == count_rpm_ndb(data, "/Packages.db") == 35


@pytest.mark.parametrize("data", [b"", b"not an ndb database at all, no", b"RpmP" + bytes(28),
                                  b"RpmP" + bytes(8) + (9).to_bytes(4, "little") + bytes(16)])
def test_a_file_that_is_not_an_ndb_database_is_refused(data: bytes) -> None:
    with pytest.raises(PackageDBError, match=r"/x/Packages\.db"):
        count_rpm_ndb(data, "/x/Packages.db")


def test_a_file_that_is_not_an_sqlite_rpmdb_is_refused() -> None:
    with pytest.raises(PackageDBError, match="unreadable rpm sqlite database"):
        count_rpm_sqlite(b"SQLite format 3\0" + bytes(100), "/var/lib/rpm/rpmdb.sqlite")
