"""The Berkeley DB rpmdb (rpm < 4.16: RHEL/UBI/Rocky/Alma/Oracle 8, CentOS 7, Amazon
Linux 2, SUSE before 15.3), read and written in pure Python.

rpm keeps ``Packages`` as a Berkeley DB *hash* database (key: the package's header
number as a native-endian u32, key 0 holding the last number handed out; value: the
installed header blob, the same ``headerExport`` bytes the sqlite backend stores) and
one *btree* database per index (``Name``, ``Basenames``, ... as
:data:`suture.distro.rpm.rpmdb.INDEX_TABLES`; key: the indexed string or bytes, an
empty string stored as one NUL; value: the concatenated native-endian ``(hnum, idx)``
u32 pairs, sorted). rpm 4.11 (EL7) keeps 12 of the 18 indexes, rpm 4.14 (EL8) all.

The on-disk format is libdb's version 9 hash and btree (libdb 4.8 to 6): 4096-byte
pages (the size the file declares), page 0 the metadata page, ``P_HASH`` (sorted)
bucket pages chained through ``next``, ``P_LBTREE`` leaves linked left to right under
``P_IBTREE`` internal pages rooted at page 1, ``P_OVERFLOW`` chains for items larger
than a quarter page (hash) or than the btree's overflow size; pages carry the
"not logged" LSN (0, 1). Files of a big-endian host (s390x) are read and written in
their byte order.

Writing rebuilds whole files from their records (a fresh, compact layout, as
``db_dump | db_load`` would give) rather than editing pages in place, so a rewritten
file holds the same records as rpm's would but not the same bytes; libdb reads and
updates it (``db_verify`` passes; tests check both with libdb 5.3). Each file gets a
new 20-byte file id derived from its contents (libdb's memory pool tells files apart
by it); the image's ``__db.00N`` environment files are runtime state and are removed
by the caller.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from suture.distro.rpm.rpmdb import (
    INDEX_TABLES,
    InstalledPackage,
    index_rows,
    installed_package,
)
from suture.errors import PackageDBError

__all__ = [
    "PACKAGES",
    "BdbFile",
    "bdb_files",
    "btree_bytes",
    "hash_bytes",
    "parse_bdb",
    "read_bdb",
    "write_bdb",
]

PACKAGES = "Packages"
MAX_DB_BYTES = 4 << 30
MAX_ITEM = 256 << 20

HASH_MAGIC = 0x061561
BTREE_MAGIC = 0x053162
VERSION = 9
LSN_NOT_LOGGED = (0, 1)
# page types (db_page.h)
P_IBTREE, P_LBTREE, P_OVERFLOW, P_HASHMETA, P_BTREEMETA, P_HASH_UNSORTED, P_HASH = \
    3, 5, 7, 8, 9, 2, 13
# item types
H_KEYDATA, H_DUPLICATE, H_OFFPAGE, H_OFFDUP = 1, 2, 3, 4
B_KEYDATA, B_DUPLICATE, B_OVERFLOW = 1, 2, 3
B_DELETE = 0x80
PAGE_HEADER = 26
CHARKEY = b"%$sniglet^&\0"  # libdb hashes it (NUL included) to recognise its function


def ham_hash(key: bytes) -> int:
    """libdb's default hash function (Fowler/Noll/Vo, as ``__ham_func5``)."""
    h = 0
    for c in key:
        h = ((h * 16777619) & 0xFFFFFFFF) ^ c
    return h


@dataclass
class BdbFile:
    """One Berkeley DB file: its access method, byte order (``<`` or ``>``), page size,
    metadata flags and file id, and its records in file order (hash: bucket order;
    btree: key order). ``meta`` keeps the source's metadata page to carry over fields
    a rewrite keeps (the hash fill factor)."""

    kind: str  # "hash" | "btree"
    order: str
    pagesize: int
    flags: int
    uid: bytes
    records: list[tuple[bytes, bytes]] = field(default_factory=list)
    ffactor: int = 0
    version: int = VERSION


# ---------------------------------------------------------------- reading

class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.what = what
        if len(data) < 512:
            raise self.error("too short for a Berkeley DB file")
        magic_le = struct.unpack_from("<I", data, 12)[0]
        magic_be = struct.unpack_from(">I", data, 12)[0]
        if magic_le in (HASH_MAGIC, BTREE_MAGIC):
            self.order, magic = "<", magic_le
        elif magic_be in (HASH_MAGIC, BTREE_MAGIC):
            self.order, magic = ">", magic_be
        else:
            raise self.error("not a Berkeley DB hash or btree database")
        self.kind = "hash" if magic == HASH_MAGIC else "btree"
        o = self.order
        version, pagesize = struct.unpack_from(o + "II", data, 16)
        if version < 8 or version > 10:
            raise self.error(f"unsupported Berkeley DB {self.kind} version {version}")
        if pagesize < 512 or pagesize > 65536 or pagesize & (pagesize - 1):
            raise self.error(f"implausible page size {pagesize}")
        if data[24]:
            raise self.error("encrypted Berkeley DB databases are not supported")
        if data[26] & 1:  # DBMETA_CHKSUM: pages carry checksums (rpm never asks for them)
            raise self.error("Berkeley DB databases with page checksums are not supported")
        self.version = version
        self.pagesize = pagesize
        self.last = struct.unpack_from(o + "I", data, 32)[0]
        if (self.last + 1) * pagesize > len(data):
            raise self.error(f"truncated: the metadata names page {self.last}, the file "
                             f"holds {len(data) // pagesize} pages")
        self.flags = struct.unpack_from(o + "I", data, 48)[0]
        self.uid = bytes(data[52:72])

    def error(self, message: str) -> PackageDBError:
        return PackageDBError(message, path=self.what)

    def page(self, pgno: int) -> bytes:
        if pgno < 1 or pgno > self.last:
            raise self.error(f"page {pgno} is out of bounds")
        ps = self.pagesize
        pg = self.data[pgno * ps:(pgno + 1) * ps]
        if struct.unpack_from(self.order + "I", pg, 8)[0] != pgno:
            raise self.error(f"page {pgno} does not carry its own number")
        return pg

    def header(self, pg: bytes) -> tuple[int, int, int, int, int]:
        """(prev, next, entries, hf_offset, type)"""
        prev, nxt, n, hf = struct.unpack_from(self.order + "IIHH", pg, 12)
        return prev, nxt, n, hf, pg[25]

    def offsets(self, pg: bytes, n: int) -> tuple[int, ...]:
        if PAGE_HEADER + 2 * n > self.pagesize:
            raise self.error("page index runs past the page")
        return struct.unpack_from(f"{self.order}{n}H", pg, PAGE_HEADER)

    def overflow(self, pgno: int, length: int) -> bytes:
        if length > MAX_ITEM:
            raise self.error(f"an item of {length} bytes is too large")
        out = bytearray()
        seen: set[int] = set()
        while len(out) < length:
            if pgno in seen:
                raise self.error("overflow chain loops")
            seen.add(pgno)
            pg = self.page(pgno)
            _prev, nxt, _n, plen, typ = self.header(pg)
            if typ != P_OVERFLOW or PAGE_HEADER + plen > self.pagesize:
                raise self.error(f"page {pgno} is not an overflow page")
            out += pg[PAGE_HEADER:PAGE_HEADER + plen]
            if len(out) < length and not nxt:
                raise self.error("overflow chain ends early")
            pgno = nxt
        if len(out) != length:
            raise self.error("overflow chain longer than its item")
        return bytes(out)

    # hash
    def hash_records(self) -> tuple[list[tuple[bytes, bytes]], int]:
        o = self.order
        max_bucket, _high, _low, ffactor = struct.unpack_from(o + "IIII", self.data, 72)
        spares = struct.unpack_from(o + "32I", self.data, 96)
        if max_bucket > self.last:
            raise self.error("more buckets than pages")
        out: list[tuple[bytes, bytes]] = []
        seen: set[int] = set()
        for bucket in range(max_bucket + 1):
            pgno = bucket + spares[bucket.bit_length()]
            while pgno:
                if pgno in seen:
                    raise self.error("hash bucket chains cross or loop")
                seen.add(pgno)
                pg = self.page(pgno)
                _prev, nxt, n, _hf, typ = self.header(pg)
                if typ not in (P_HASH, P_HASH_UNSORTED):
                    raise self.error(f"page {pgno} of bucket {bucket} is not a hash page")
                if n % 2:
                    raise self.error(f"hash page {pgno} holds an odd number of items")
                offs = self.offsets(pg, n)
                for i in range(0, n, 2):
                    kend = self.pagesize if i == 0 else offs[i - 1]
                    key = self.hash_item(pg, offs[i], kend)
                    value = self.hash_item(pg, offs[i + 1], offs[i])
                    out.append((key, value))
                pgno = nxt
        return out, ffactor

    def hash_item(self, pg: bytes, start: int, end: int) -> bytes:
        if not PAGE_HEADER <= start < end <= self.pagesize:
            raise self.error("hash item out of bounds")
        typ = pg[start]
        if typ == H_KEYDATA:
            return bytes(pg[start + 1:end])
        if typ == H_OFFPAGE:
            if end - start != 12:
                raise self.error("bad off-page hash item")
            pgno, tlen = struct.unpack_from(self.order + "II", pg, start + 4)
            return self.overflow(pgno, tlen)
        if typ in (H_DUPLICATE, H_OFFDUP):
            raise self.error("hash databases with duplicate keys are not rpm databases")
        raise self.error(f"unknown hash item type {typ}")

    # btree
    def btree_records(self) -> list[tuple[bytes, bytes]]:
        o = self.order
        root = struct.unpack_from(o + "I", self.data, 88)[0]
        pgno = root
        seen: set[int] = set()
        while True:  # down the left edge to the first leaf
            if pgno in seen:
                raise self.error("btree loops")
            seen.add(pgno)
            pg = self.page(pgno)
            _prev, _nxt, n, _hf, typ = self.header(pg)
            if typ == P_LBTREE:
                break
            if typ != P_IBTREE or n == 0:
                raise self.error(f"page {pgno} is not a btree page")
            off = self.offsets(pg, n)[0]
            pgno = struct.unpack_from(o + "I", pg, off + 4)[0]
        out: list[tuple[bytes, bytes]] = []
        while pgno:
            pg = self.page(pgno)
            _prev, nxt, n, _hf, typ = self.header(pg)
            if typ != P_LBTREE:
                raise self.error(f"page {pgno} is not a btree leaf")
            offs = self.offsets(pg, n)
            for i in range(0, n - 1, 2):
                if pg[offs[i] + 2] & B_DELETE or pg[offs[i + 1] + 2] & B_DELETE:
                    continue
                out.append((self.btree_item(pg, offs[i]), self.btree_item(pg, offs[i + 1])))
            pgno = nxt
            if pgno in seen:
                raise self.error("btree leaves loop")
            seen.add(pgno)
        return out

    def btree_item(self, pg: bytes, off: int) -> bytes:
        if off + 3 > self.pagesize:
            raise self.error("btree item out of bounds")
        length, typ = struct.unpack_from(self.order + "HB", pg, off)
        if typ == B_KEYDATA:
            if off + 3 + length > self.pagesize:
                raise self.error("btree item out of bounds")
            return bytes(pg[off + 3:off + 3 + length])
        if typ == B_OVERFLOW:
            if off + 12 > self.pagesize:
                raise self.error("btree item out of bounds")
            pgno, tlen = struct.unpack_from(self.order + "II", pg, off + 4)
            return self.overflow(pgno, tlen)
        if typ == B_DUPLICATE:
            raise self.error("btree databases with duplicate keys are not rpm databases")
        raise self.error(f"unknown btree item type {typ}")


def parse_bdb(data: bytes, what: str = "Berkeley DB file") -> BdbFile:
    """The records of a Berkeley DB hash or btree file (pure: nothing is opened);
    PackageDBError naming ``what`` when it is not one or is damaged."""
    r = _Reader(data, what)
    if r.kind == "hash":
        records, ffactor = r.hash_records()
    else:
        records, ffactor = r.btree_records(), 0
    return BdbFile(r.kind, r.order, r.pagesize, r.flags, r.uid, records, ffactor, r.version)


# ---------------------------------------------------------------- writing

def _pageheader(order: str, pgno: int, prev: int, nxt: int, n: int, hf: int, level: int,
                typ: int) -> bytes:
    return struct.pack(order + "IIIIIHHBB", LSN_NOT_LOGGED[0], LSN_NOT_LOGGED[1], pgno, prev,
                       nxt, n, hf, level, typ)


class _Pages:
    """Pages of a file being written; page 0 is the metadata page."""

    def __init__(self, order: str, pagesize: int) -> None:
        self.order = order
        self.size = pagesize
        self.pages: list[bytes | None] = [None]

    def reserve(self) -> int:
        self.pages.append(None)
        return len(self.pages) - 1

    def set(self, pgno: int, page: bytes) -> None:
        assert len(page) == self.size
        self.pages[pgno] = page

    def overflow(self, data: bytes) -> int:
        """Write ``data`` to a chain of overflow pages; its first page."""
        chunk = self.size - PAGE_HEADER
        parts = [data[i:i + chunk] for i in range(0, len(data), chunk)] or [b""]
        numbers = [self.reserve() for _ in parts]
        for i, (pgno, part) in enumerate(zip(numbers, parts, strict=True)):
            prev = numbers[i - 1] if i else 0
            nxt = numbers[i + 1] if i + 1 < len(numbers) else 0
            page = _pageheader(self.order, pgno, prev, nxt, 1, len(part), 0, P_OVERFLOW) + part
            self.set(pgno, page.ljust(self.size, b"\0"))
        return numbers[0]

    def image(self, meta: bytes) -> bytes:
        out = bytearray(meta.ljust(self.size, b"\0"))
        for page in self.pages[1:]:
            assert page is not None
            out += page
        return bytes(out)


def _meta(order: str, pagesize: int, typ: int, magic: int, last: int, flags: int,
          uid: bytes) -> bytearray:
    meta = bytearray(512)
    struct.pack_into(order + "IIIIII", meta, 0, LSN_NOT_LOGGED[0], LSN_NOT_LOGGED[1], 0,
                     magic, VERSION, pagesize)
    meta[24] = 0  # encrypt_alg
    meta[25] = typ
    struct.pack_into(order + "IIIIII", meta, 28, 0, last, 0, 0, 0, flags)
    meta[52:72] = uid
    return meta


def file_uid(name: str, records: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A 20-byte file id for a written file, derived from its name and records (libdb
    tells files apart by it; deriving it keeps the output reproducible)."""
    h = hashlib.sha256(b"suture-bdb\0" + name.encode() + b"\0")
    for k, v in records:
        h.update(struct.pack("<II", len(k), len(v)))
        h.update(k)
        h.update(v)
    return h.digest()[:20]


def hash_bytes(records: Sequence[tuple[bytes, bytes]], *, order: str = "<",
               pagesize: int = 4096, uid: bytes = b"\0" * 20, flags: int = 0,
               ffactor: int = 0) -> bytes:
    """A Berkeley DB hash file holding ``records`` (distinct keys)."""
    keys = [k for k, _ in records]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate keys in a hash database")
    big = pagesize // 4  # libdb's ISBIG: items longer than a quarter page go off-page
    usable = pagesize - PAGE_HEADER

    def onpage(item: bytes) -> int:
        return 12 if len(item) > big else 1 + len(item)

    total = sum(onpage(k) + onpage(v) + 4 for k, v in records)
    nbuckets = 2
    while total > nbuckets * usable * 3 // 4:
        nbuckets *= 2
    high = nbuckets - 1
    buckets: list[list[tuple[bytes, bytes]]] = [[] for _ in range(nbuckets)]
    for k, v in records:
        buckets[ham_hash(k) & high].append((k, v))
    pages = _Pages(order, pagesize)
    for _ in range(nbuckets):
        pages.reserve()  # bucket b is page b + 1
    for b, items in enumerate(buckets):
        items.sort(key=lambda kv: kv[0])  # P_HASH pages are sorted (memcmp order)
        chain: list[list[bytes]] = [[]]
        free = usable
        for k, v in items:
            kb = _hash_item(pages, k, big)
            vb = _hash_item(pages, v, big)
            need = len(kb) + len(vb) + 4
            if need > free and chain[-1]:
                chain.append([])
                free = usable
            chain[-1] += [kb, vb]
            free -= need
        numbers = [b + 1] + [pages.reserve() for _ in chain[1:]]
        for i, (pgno, entries) in enumerate(zip(numbers, chain, strict=True)):
            prev = numbers[i - 1] if i else 0
            nxt = numbers[i + 1] if i + 1 < len(numbers) else 0
            pages.set(pgno, _page(order, pagesize, pgno, prev, nxt, 0, P_HASH, entries))
    last = len(pages.pages) - 1
    meta = _meta(order, pagesize, P_HASHMETA, HASH_MAGIC, last, flags, uid)
    spares = [0] * 32
    for i in range(high.bit_length() + 1):
        spares[i] = 1
    struct.pack_into(order + "IIIIII32I", meta, 72, high, high, high >> 1, ffactor,
                     len(records), ham_hash(CHARKEY), *spares)
    return pages.image(bytes(meta))


def _hash_item(pages: _Pages, item: bytes, big: int) -> bytes:
    if len(item) > big:
        pgno = pages.overflow(item)
        return bytes([H_OFFPAGE, 0, 0, 0]) + struct.pack(pages.order + "II", pgno, len(item))
    return bytes([H_KEYDATA]) + item


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _ovflsize(pagesize: int, minkey: int = 2) -> int:
    """libdb's btree overflow size: longer keys and data go to overflow pages."""
    return (pagesize - PAGE_HEADER) // (minkey * 2) - (6 + 4)


def btree_bytes(records: Sequence[tuple[bytes, bytes]], *, order: str = "<",
                pagesize: int = 4096, uid: bytes = b"\0" * 20, flags: int = 0) -> bytes:
    """A Berkeley DB btree file holding ``records`` (sorted here; distinct keys)."""
    items = sorted(records, key=lambda kv: kv[0])
    for (a, _), (b, _) in itertools.pairwise(items):
        if a == b:
            raise ValueError("duplicate keys in a btree database")
    ovfl = _ovflsize(pagesize)
    pages = _Pages(order, pagesize)
    root = pages.reserve()  # libdb keeps the root at page 1
    usable = pagesize - PAGE_HEADER

    def leaf_item(data: bytes) -> bytes:
        if len(data) > ovfl:
            pgno = pages.overflow(data)
            return struct.pack(order + "HBBII", 0, B_OVERFLOW, 0, pgno, len(data))
        raw = struct.pack(order + "HB", len(data), B_KEYDATA) + data
        return raw.ljust(_align4(len(raw)), b"\0")

    # leaves: (entries, first key, last key)
    leaves: list[tuple[list[bytes], bytes, bytes]] = []
    cur: list[bytes] = []
    free = usable
    first = last = b""
    for k, v in items:
        kb, vb = leaf_item(k), leaf_item(v)
        need = len(kb) + len(vb) + 4
        if need > free and cur:
            leaves.append((cur, first, last))
            cur, free = [], usable
        if not cur:
            first = k
        cur += [kb, vb]
        last = k
        free -= need
    leaves.append((cur, first, last))
    level: list[tuple[int, bytes, bytes]] = []  # (pgno, min key, max key)
    numbers = [root] if len(leaves) == 1 else [pages.reserve() for _ in leaves]
    for i, (entries, lo, hi) in enumerate(leaves):
        prev = numbers[i - 1] if i else 0
        nxt = numbers[i + 1] if i + 1 < len(numbers) else 0
        pages.set(numbers[i], _page(order, pagesize, numbers[i], prev, nxt, 1, P_LBTREE,
                                          entries))
        level.append((numbers[i], lo, hi))
    depth = 1
    while len(level) > 1:
        depth += 1
        groups: list[list[bytes]] = [[]]
        bounds: list[tuple[bytes, bytes]] = []
        free = usable
        glo = ghi = b""
        for j, (child, lo, hi) in enumerate(level):
            # the first key of an internal page is not compared
            sep = _separator(level[j - 1][2], lo) if groups[-1] else b""
            entry = _internal_item(pages, order, sep, child, ovfl)
            if len(entry) + 2 > free and groups[-1]:
                bounds.append((glo, ghi))
                groups.append([])
                free = usable
                entry = _internal_item(pages, order, b"", child, ovfl)
            if not groups[-1]:
                glo = lo
            groups[-1].append(entry)
            ghi = hi
            free -= len(entry) + 2
        bounds.append((glo, ghi))
        numbers = [root] if len(groups) == 1 else [pages.reserve() for _ in groups]
        level = []
        for pgno, entries, (lo, hi) in zip(numbers, groups, bounds, strict=True):
            pages.set(pgno, _page(order, pagesize, pgno, 0, 0, depth, P_IBTREE, entries))
            level.append((pgno, lo, hi))
    last_pg = len(pages.pages) - 1
    meta = _meta(order, pagesize, P_BTREEMETA, BTREE_MAGIC, last_pg, flags, uid)
    # unused (maxkey), minkey, re_len, re_pad, root
    struct.pack_into(order + "IIIII", meta, 72, 0, 2, 0, 0x20, root)
    return pages.image(bytes(meta))


def _separator(left_max: bytes, right_min: bytes) -> bytes:
    """The shortest prefix of ``right_min`` that sorts after ``left_max`` (as libdb's
    default prefix function chooses the keys of internal pages)."""
    n = 0
    limit = min(len(left_max), len(right_min))
    while n < limit and left_max[n] == right_min[n]:
        n += 1
    return right_min[:n + 1] if n < len(right_min) else right_min


def _internal_item(pages: _Pages, order: str, key: bytes, child: int, ovfl: int) -> bytes:
    if len(key) > ovfl:
        pgno = pages.overflow(key)
        ref = struct.pack(order + "HBBII", 0, B_OVERFLOW, 0, pgno, len(key))
        raw = struct.pack(order + "HBBII", len(ref), B_OVERFLOW, 0, child, 0) + ref
    else:
        raw = struct.pack(order + "HBBII", len(key), B_KEYDATA, 0, child, 0) + key
    return raw.ljust(_align4(len(raw)), b"\0")


def _page(order: str, pagesize: int, pgno: int, prev: int, nxt: int, level: int,
          typ: int, entries: list[bytes]) -> bytes:
    """A hash or btree page: items laid from the end of the page down (a hash pair's key
    above its data) in index order, their offsets after the page header."""
    body = bytearray(pagesize)
    offsets = []
    top = pagesize
    for e in entries:
        top -= len(e)
        body[top:top + len(e)] = e
        offsets.append(top)
    head = _pageheader(order, pgno, prev, nxt, len(entries), top, level, typ)
    index = struct.pack(f"{order}{len(offsets)}H", *offsets)
    if PAGE_HEADER + len(index) > top:
        raise AssertionError("page overfilled")
    body[:len(head)] = head
    body[PAGE_HEADER:PAGE_HEADER + len(index)] = index
    return bytes(body)


# ---------------------------------------------------------------- the rpm database

def _read_file(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > MAX_DB_BYTES:
            raise PackageDBError("rpm database too large", path=what)
        return path.read_bytes()
    except OSError as exc:
        raise PackageDBError(f"cannot read: {exc.strerror or exc}", path=what) from exc


def _packages(db: BdbFile, where: str) -> tuple[list[InstalledPackage], int]:
    """The installed packages of a parsed ``Packages`` and its key-0 counter."""
    unpack = db.order + "I"
    out = []
    counter = 0
    for key, value in db.records:
        if len(key) != 4:
            raise PackageDBError(f"a key of {len(key)} bytes is no header number", path=where)
        hnum = struct.unpack(unpack, key)[0]
        if hnum == 0:
            if len(value) != 4:
                raise PackageDBError("bad header counter (key 0)", path=where)
            counter = struct.unpack(unpack, value)[0]
            continue
        out.append(installed_package(hnum, value, where))
    out.sort(key=lambda p: p.hnum)
    return out, counter


def read_bdb(directory: Path) -> list[InstalledPackage]:
    """The packages of the Berkeley DB rpmdb in ``directory`` (its ``Packages``; never
    modified), by header number; PackageDBError naming it when it is not one or a
    header does not parse."""
    path = directory / PACKAGES
    db = parse_bdb(_read_file(path, str(path)), str(path))
    if db.kind != "hash":
        raise PackageDBError("Packages is a btree, not rpm's hash database", path=str(path))
    return _packages(db, str(path))[0]


def _index_key(table: str, key: str | bytes, order: str) -> bytes:
    if isinstance(key, str):
        raw = key.encode("utf-8", "surrogateescape")
        return raw or b"\0"  # rpm stores an empty key as one NUL
    if table == "Installtid" and order == ">" and len(key) == 4:
        return key[::-1]  # index_rows packs integers little-endian
    return key or b"\0"


def index_records(packages: Sequence[tuple[int, InstalledPackage]], table: str,
                  order: str) -> list[tuple[bytes, bytes]]:
    """The records of index ``table`` for ``packages`` ((hnum, package) pairs)."""
    sets: dict[bytes, list[tuple[int, int]]] = {}
    for hnum, pkg in packages:
        for key, _h, idx in index_rows(pkg.header, hnum)[table]:
            sets.setdefault(_index_key(table, key, order), []).append((hnum, idx))
    out = []
    for key, pairs in sets.items():
        pairs.sort()
        out.append((key, b"".join(struct.pack(order + "II", h, i) for h, i in pairs)))
    return out


def bdb_files(packages: Sequence[tuple[int, InstalledPackage]], *, counter: int,
              order: str = "<", pagesize: int = 4096, flags: int = 0, ffactor: int = 0,
              tables: Sequence[str] = tuple(INDEX_TABLES),
              geometry: Mapping[str, tuple[int, int]] | None = None) -> dict[str, bytes]:
    """The files of a Berkeley DB rpmdb holding ``packages`` ((hnum, package) pairs)
    with ``counter`` in key 0: ``Packages`` and the index files ``tables`` (each with
    the page size and flags ``geometry`` gives for it, else those of ``Packages``)."""
    o = order
    pkgs = sorted(packages, key=lambda hp: hp[0])
    records = [(struct.pack(o + "I", 0), struct.pack(o + "I", counter))]
    records += [(struct.pack(o + "I", h), p.header.blob) for h, p in pkgs]
    files: dict[str, bytes] = {}
    files[PACKAGES] = hash_bytes(records, order=o, pagesize=pagesize, flags=flags,
                                 ffactor=ffactor, uid=file_uid(PACKAGES, records))
    for table in tables:
        tsize, tflags = (geometry or {}).get(table, (pagesize, 0))
        recs = index_records(pkgs, table, o)
        files[table] = btree_bytes(recs, order=o, pagesize=tsize, flags=tflags,
                                   uid=file_uid(table, recs))
    return files


def write_bdb(source: Path, dest: Path, *, remove: Sequence[int], add: Sequence[bytes]
              ) -> tuple[list[int], list[str]]:
    """Write to the directory ``dest`` the Berkeley DB rpmdb of directory ``source``
    with the packages numbered ``remove`` deleted and the header blobs ``add`` given
    the next header numbers (key 0's counter plus one, as rpm), rebuilding
    ``Packages`` and every index file the source has (all 18 when it has none). Returns
    the new header numbers and the names of the files written. PackageDBError, and
    nothing written, when the source is no rpm database, a number is not in it or a
    blob is no header."""
    where = str(source / PACKAGES)
    db = parse_bdb(_read_file(source / PACKAGES, where), where)
    if db.kind != "hash":
        raise PackageDBError("Packages is a btree, not rpm's hash database", path=where)
    if db.version != VERSION:
        # libdb 4.x (version 8, rpm 4.8 of EL6) cannot read the version 9 files written
        raise PackageDBError(f"Berkeley DB hash version {db.version} databases are read but "
                             "not written (only version 9: libdb 4.8 to 5.3)", path=where)
    installed, counter = _packages(db, where)
    by_hnum = {p.hnum: p for p in installed}
    for hnum in remove:
        if hnum not in by_hnum:
            raise PackageDBError(f"no package {hnum} to remove", path=where)
        del by_hnum[hnum]
    counter = max([counter, *(p.hnum for p in installed)])
    new: list[int] = []
    for i, blob in enumerate(add):
        pkg = installed_package(i, blob, where, name="added package")
        counter += 1
        by_hnum[counter] = InstalledPackage(counter, pkg.header, pkg.info)
        new.append(counter)
    present = [t for t in INDEX_TABLES if (source / t).is_file()]
    geometry: dict[str, tuple[int, int]] = {}
    for table in present:
        try:
            old = parse_bdb(_read_file(source / table, str(source / table)), str(source / table))
            geometry[table] = (old.pagesize, old.flags)
        except PackageDBError:
            pass  # a damaged index is rebuilt from Packages, as rpm would
    files = bdb_files(sorted(by_hnum.items()), counter=counter, order=db.order,
                      pagesize=db.pagesize, flags=db.flags, ffactor=db.ffactor,
                      tables=present or list(INDEX_TABLES), geometry=geometry)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            partial = dest / (name + ".suture-new")
            partial.write_bytes(data)
            partial.replace(dest / name)
    except OSError as exc:
        raise PackageDBError(f"cannot write: {exc.strerror or exc}", path=str(dest)) from exc
    return new, list(files)
