"""rpm's ndb database (SUSE: SLE and openSUSE Leap 15.3+, Tumbleweed before sqlite),
read and written in pure Python.

``Packages.db`` (little-endian throughout) starts with a 32-byte header: magic
``RpmP``, version 0, a generation counter, the number of 4096-byte slot pages and the
next free package index. The slot pages follow, each a run of 16-byte slots (magic
``Slot``, package index, block offset, block count; offset 0 is a free slot; the
header takes the first two). The rest of the file is 16-byte blocks holding blobs:
a head (``BlbS``, package index, generation, length), the header blob (the same
``headerExport`` bytes the other backends store), zero padding to a block, and a
tail (adler32 of head, blob and padding; length; ``BlbE``).

Writing replays on the file what rpm's ``rpmpkg.c`` does for each step of the
transaction — the new packages' ``NextPkgIdx`` and ``Put`` in order (best-fit
placement between blobs or after the last one, a new slot page when no slot is
free, moving the blobs in its way), then ``Del`` of the replaced ones (zeroing the
blob, moving up to two blobs from the back of the file into a hole in its first
half, truncating a mostly empty tail) — so the file is what rpm would have written
for the same steps, generation counter included. Nothing is rewritten when there is
nothing to change.

``Index.db`` is derived data (an rpmxdb file of per-tag hash indexes); rpm rebuilds
it whenever its generation no longer matches ``Packages.db``'s, and creates and fills
it when it is missing. The writer does not produce one: the caller removes the
image's, and rpm's next run rebuilds it (scanners read ``Packages.db`` only).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from suture.distro.rpm.rpmdb import InstalledPackage, installed_package
from suture.errors import PackageDBError

__all__ = ["INDEX_DB", "PACKAGES_DB", "Pkgdb", "Slot", "create_ndb", "empty_ndb", "read_ndb",
           "write_ndb"]

PACKAGES_DB = "Packages.db"
INDEX_DB = "Index.db"
MAX_DB_BYTES = 4 << 30

PAGE = 4096
SLOT = 16
BLK = 16
HEADER = 32
SLOT_START = HEADER // SLOT
SLOTS_PER_PAGE = PAGE // SLOT
BLKS_PER_PAGE = PAGE // BLK
MAGIC = b"RpmP"
SLOT_MAGIC = b"Slot"
HEAD_MAGIC = b"BlbS"
TAIL_MAGIC = b"BlbE"
HEAD = 16
TAIL = 12


@dataclass
class Slot:
    pkgidx: int
    blkoff: int
    blkcnt: int
    slotno: int


def _blkcnt(bloblen: int) -> int:
    return (HEAD + bloblen + TAIL + BLK - 1) // BLK


class Pkgdb:
    """A ``Packages.db`` held in memory, changed by the operations rpm performs on it."""

    def __init__(self, data: bytes, what: str = PACKAGES_DB) -> None:
        self.what = what
        self.data = bytearray(data)
        if len(data) < HEADER or data[:4] != MAGIC:
            raise self.error("not an rpm ndb database (no RpmP header)")
        version, self.generation, self.slotnpages, self.nextpkgidx = \
            struct.unpack_from("<IIII", data, 4)
        if version != 0:
            raise self.error(f"ndb version {version} is not supported")
        if self.slotnpages < 1 or self.slotnpages * PAGE > len(data):
            raise self.error(f"ndb header names {self.slotnpages} slot pages, the file "
                             f"holds {len(data)} bytes")
        if len(data) % BLK:
            raise self.error("ndb file length is not a multiple of 16")
        self.slots: list[Slot] = []
        self.freeslot = 0
        self._read_slots()

    def error(self, message: str) -> PackageDBError:
        return PackageDBError(message, path=self.what)

    @property
    def fileblks(self) -> int:
        return len(self.data) // BLK

    # ------------------------------------------------------------ slots
    def _read_slots(self) -> None:
        self.slots = []
        self.freeslot = 0
        minblkoff = self.slotnpages * BLKS_PER_PAGE
        for slotno in range(SLOT_START, self.slotnpages * SLOTS_PER_PAGE):
            off = slotno * SLOT
            if self.data[off:off + 4] != SLOT_MAGIC:
                raise self.error(f"ndb slot at byte {off} is damaged")
            pkgidx, blkoff, blkcnt = struct.unpack_from("<III", self.data, off + 4)
            if not blkoff:
                if not self.freeslot:
                    self.freeslot = slotno
                continue
            if blkoff + blkcnt > self.fileblks:
                raise self.error(f"package {pkgidx}: blob past the end of the file")
            if not pkgidx or not blkcnt or blkoff < minblkoff:
                raise self.error(f"ndb slot {slotno} is bad")
            self.slots.append(Slot(pkgidx, blkoff, blkcnt, slotno))
        seen: set[int] = set()
        for s in self.slots:
            if s.pkgidx in seen:
                raise self.error(f"two slots for package {s.pkgidx}")
            seen.add(s.pkgidx)

    def _order(self) -> None:
        self.slots.sort(key=lambda s: s.blkoff)

    def _find(self, pkgidx: int) -> Slot | None:
        return next((s for s in self.slots if s.pkgidx == pkgidx), None)

    def _write_header(self) -> None:
        struct.pack_into("<4sIIII", self.data, 0, MAGIC, 0, self.generation, self.slotnpages,
                         self.nextpkgidx)

    def _write_slot(self, slotno: int, pkgidx: int, blkoff: int, blkcnt: int) -> None:
        if blkoff and slotno == self.freeslot:
            self.freeslot = 0
        struct.pack_into("<4sIII", self.data, slotno * SLOT, SLOT_MAGIC, pkgidx, blkoff, blkcnt)
        self.generation += 1
        self._write_header()

    # ------------------------------------------------------------ blocks
    def _ensure(self, blkend: int) -> None:
        if blkend * BLK > len(self.data):
            self.data += bytes(blkend * BLK - len(self.data))

    def _zero(self, blkoff: int, blkcnt: int) -> None:
        self._ensure(blkoff + blkcnt)
        self.data[blkoff * BLK:(blkoff + blkcnt) * BLK] = bytes(blkcnt * BLK)

    def _is_zero(self, blkoff: int, blkcnt: int) -> bool:
        region = self.data[blkoff * BLK:(blkoff + blkcnt) * BLK]
        return not any(region)

    def _empty_offset(self, pkgidx: int, blkcnt: int, dontprepend: bool
                      ) -> tuple[int, Slot | None]:
        """rpm's best fit: the smallest hole between blobs that holds ``blkcnt``
        blocks, else right after the last blob."""
        self._order()
        lastend = self.slotnpages * BLKS_PER_PAGE
        if dontprepend and self.slots:
            lastend = self.slots[0].blkoff
        best, bestfree = 0, 0
        old = None
        for s in self.slots:
            if s.blkoff < lastend:
                raise self.error("ndb blobs overlap")
            if s.pkgidx == pkgidx:
                old = s
            free = s.blkoff - lastend
            if free >= blkcnt and (not best or bestfree > free):
                best, bestfree = lastend, free
            lastend = s.blkoff + s.blkcnt
        return (best or lastend), old

    # ------------------------------------------------------------ blobs
    def _read_blob(self, pkgidx: int, blkoff: int, blkcnt: int) -> tuple[bytes, int]:
        """(blob, generation), the checksum verified."""
        start = blkoff * BLK
        end = (blkoff + blkcnt) * BLK
        if blkcnt < _blkcnt(0) or end > len(self.data):
            raise self.error(f"package {pkgidx}: bad blob extent")
        magic, idx, generation, bloblen = struct.unpack_from("<4sIII", self.data, start)
        if magic != HEAD_MAGIC or idx != pkgidx:
            raise self.error(f"package {pkgidx}: bad blob head")
        if blkcnt != _blkcnt(bloblen):
            raise self.error(f"package {pkgidx}: blob length does not match its slot")
        adler, taillen, tmagic = struct.unpack_from("<I I 4s", self.data, end - TAIL)
        if tmagic != TAIL_MAGIC or taillen != bloblen:
            raise self.error(f"package {pkgidx}: bad blob tail")
        if zlib.adler32(self.data[start:end - TAIL]) != adler:
            raise self.error(f"package {pkgidx}: blob checksum mismatch")
        return bytes(self.data[start + HEAD:start + HEAD + bloblen]), generation

    def _write_blob(self, pkgidx: int, blkoff: int, blob: bytes, generation: int) -> None:
        blkcnt = _blkcnt(len(blob))
        pad = blkcnt * BLK - (HEAD + len(blob) + TAIL)
        body = struct.pack("<4sIII", HEAD_MAGIC, pkgidx, generation & 0xFFFFFFFF, len(blob)) \
            + blob + bytes(pad)
        tail = struct.pack("<II4s", zlib.adler32(body), len(blob), TAIL_MAGIC)
        self._ensure(blkoff + blkcnt)
        self.data[blkoff * BLK:(blkoff + blkcnt) * BLK] = body + tail

    def _move(self, slot: Slot, newoff: int) -> None:
        blob, generation = self._read_blob(slot.pkgidx, slot.blkoff, slot.blkcnt)
        self._write_blob(slot.pkgidx, newoff, blob, generation)
        self._write_slot(slot.slotno, slot.pkgidx, newoff, slot.blkcnt)
        self._zero(slot.blkoff, slot.blkcnt)
        slot.blkoff = newoff

    def _add_slot_page(self) -> None:
        self._order()
        cutoff = (self.slotnpages + 1) * BLKS_PER_PAGE
        while self.slots and self.slots[0].blkoff < cutoff:
            first = self.slots[0]
            newoff, old = self._empty_offset(first.pkgidx, first.blkcnt, True)
            if old is not first:
                raise self.error("ndb slots are inconsistent")
            self._move(first, newoff)
            self._order()
        start = self.slotnpages * BLKS_PER_PAGE
        if not self._is_zero(start, BLKS_PER_PAGE):
            raise self.error("ndb: the space for a new slot page is not empty")
        self._ensure(start + BLKS_PER_PAGE)
        page = SLOT_MAGIC + bytes(SLOT - 4)
        self.data[start * BLK:(start + BLKS_PER_PAGE) * BLK] = page * SLOTS_PER_PAGE
        self.freeslot = self.slotnpages * SLOTS_PER_PAGE
        self.slotnpages += 1
        self.generation += 1
        self._write_header()

    # ------------------------------------------------------------ rpm's operations
    def blobs(self) -> list[tuple[int, bytes]]:
        """Every (package index, blob), by package index, each checksum verified."""
        return sorted((s.pkgidx, self._read_blob(s.pkgidx, s.blkoff, s.blkcnt)[0])
                      for s in self.slots)

    def next_pkgidx(self) -> int:
        if not self.nextpkgidx:
            raise self.error("ndb header has no next package index")
        idx = int(self.nextpkgidx)
        self.nextpkgidx = idx + 1
        self._write_header()
        return idx

    def put(self, pkgidx: int, blob: bytes) -> None:
        self._read_slots()
        blkcnt = _blkcnt(len(blob))
        blkoff, old = self._empty_offset(pkgidx, blkcnt, False)
        if old is None and not self.freeslot:
            self._add_slot_page()
            blkoff, old = self._empty_offset(pkgidx, blkcnt, False)
        if not self._is_zero(blkoff, blkcnt):
            raise self.error("ndb: the space for a new blob is not empty")
        self._write_blob(pkgidx, blkoff, blob, self.generation)
        if pkgidx >= self.nextpkgidx:
            self.nextpkgidx = pkgidx + 1
        slotno = old.slotno if old is not None else self.freeslot
        self._write_slot(slotno, pkgidx, blkoff, blkcnt)
        if old is not None:
            self._zero(old.blkoff, old.blkcnt)
        self._read_slots()

    def delete(self, pkgidx: int) -> None:
        self._read_slots()
        self._order()
        slots = self.slots
        slot = self._find(pkgidx)
        if slot is None:
            raise self.error(f"no package {pkgidx} to remove")
        self._write_slot(slot.slotno, 0, 0, 0)
        self._read_blob(pkgidx, slot.blkoff, slot.blkcnt)  # rpm verifies before zeroing
        self._zero(slot.blkoff, slot.blkcnt)
        fileblks = self.fileblks
        n = len(slots)
        if n > 1 and slot.blkoff < fileblks // 2:
            # a hole in the first half: move up to two blobs from the back into it
            i = slots.index(slot)
            blkoff = slots[i - 1].blkoff + slots[i - 1].blkcnt if i else \
                self.slotnpages * BLKS_PER_PAGE
            blkcnt = slots[i + 1].blkoff - blkoff if i < n - 1 else \
                slot.blkoff + slot.blkcnt - blkoff
            slot.blkoff = slot.blkcnt = 0
            j = n - 2
            if slots[j].blkcnt < slots[j + 1].blkcnt:
                j += 1  # the bigger one first
            for _ in range(2):
                if j == n:
                    j -= 2
                s = slots[j]
                j += 1
                if not s.blkoff or s.blkoff < blkoff or s.blkoff < fileblks // 2 \
                        or s.blkcnt > blkcnt:
                    continue
                self._move(s, blkoff)
                blkoff += s.blkcnt
                blkcnt -= s.blkcnt
            self._order()
        else:
            slot.blkoff = slot.blkcnt = 0
        # truncate a mostly empty tail
        last = slots[-1]
        if not last.blkoff and n > 1:
            last = slots[-2]
        end = last.blkoff + last.blkcnt if last.blkoff else self.slotnpages * BLKS_PER_PAGE
        if end < self.fileblks // 4 * 3 and self._is_zero(end, self.fileblks - end):
            del self.data[end * BLK:]
        self._read_slots()


def empty_ndb() -> bytes:
    """A new ``Packages.db`` as rpm initialises one: the header (generation 1, one slot
    page, next index 1) and an empty slot page."""
    page = bytearray((SLOT_MAGIC + bytes(SLOT - 4)) * SLOTS_PER_PAGE)
    struct.pack_into("<4sIIII", page, 0, MAGIC, 0, 1, 1, 1)
    page[20:HEADER] = bytes(HEADER - 20)
    return bytes(page)


def create_ndb(blobs: Sequence[bytes]) -> bytes:
    """A ``Packages.db`` holding ``blobs`` (package indexes 1, 2, ...), as rpm writes a
    new database package by package (``rpmdb --rebuilddb`` into ndb)."""
    db = Pkgdb(empty_ndb(), "new Packages.db")
    for blob in blobs:
        db.put(db.next_pkgidx(), bytes(blob))
    return bytes(db.data)


def _load(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_DB_BYTES:
            raise PackageDBError("rpm database too large", path=str(path))
        return path.read_bytes()
    except OSError as exc:
        raise PackageDBError(f"cannot read: {exc.strerror or exc}", path=str(path)) from exc


def read_ndb(directory: Path) -> list[InstalledPackage]:
    """The packages of the ndb rpmdb in ``directory`` (its ``Packages.db``; never
    modified), by package index; PackageDBError naming it when it is not one, a blob's
    checksum does not match or a header does not parse."""
    path = directory / PACKAGES_DB
    db = Pkgdb(_load(path), str(path))
    return [installed_package(i, blob, str(path)) for i, blob in db.blobs()]


def write_ndb(source: Path, dest: Path, *, remove: Sequence[int], add: Sequence[bytes],
              steps: Sequence[tuple[str, int]] | None = None) -> tuple[list[int], list[str]]:
    """Write to the directory ``dest`` the ndb rpmdb of directory ``source`` after the
    steps rpm takes for the transaction: each blob of ``add`` given the next package
    index and put, then each package of ``remove`` deleted; or, with ``steps``, those
    operations in that order (``("add", i)`` for ``add[i]``, ``("del", n)`` for package
    ``n``: zypper's one transaction per package puts each new package and then deletes
    the one it replaces). Returns the new package indexes (in the order of ``add``) and
    the names of the files written (``Packages.db``; ``Index.db`` is not written, see
    the module docstring). PackageDBError, and nothing written, when the source is no
    ndb database, a number is not in it or a blob is no header."""
    path = source / PACKAGES_DB
    where = str(path)
    db = Pkgdb(_load(path), where)
    present = {s.pkgidx for s in db.slots}
    for hnum in remove:
        if hnum not in present:
            raise PackageDBError(f"no package {hnum} to remove", path=where)
    for blob in add:
        installed_package(0, blob, where)  # the header must parse
    if steps is None:
        steps = [("add", i) for i in range(len(add))] + [("del", n) for n in remove]
    if sorted(i for op, i in steps if op == "add") != list(range(len(add))) or \
            sorted(n for op, n in steps if op == "del") != sorted(remove) or \
            any(op not in ("add", "del") for op, _n in steps):
        raise ValueError("steps must add each blob and delete each removed package once")
    new = [0] * len(add)
    for op, n in steps:
        if op == "add":
            new[n] = db.next_pkgidx()
            db.put(new[n], bytes(add[n]))
        else:
            db.delete(n)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        partial = dest / (PACKAGES_DB + ".suture-new")
        partial.write_bytes(bytes(db.data))
        partial.replace(dest / PACKAGES_DB)
    except OSError as exc:
        raise PackageDBError(f"cannot write: {exc.strerror or exc}", path=str(dest)) from exc
    return new, [PACKAGES_DB]
