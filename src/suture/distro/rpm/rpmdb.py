"""The sqlite rpmdb (rpm >= 4.16: EL9, Amazon Linux 2023, Fedora, Azure Linux 3), read
and rewritten as rpm writes it.

A package's row in ``Packages`` is ``headerExport`` of its installed header: the
package's main header copied verbatim (immutable region, index and data) followed by
the "dribble" entries rpm adds at install time (the translated signature tags,
INSTALLTIME, FILESTATES, INSTALLCOLOR, INSTALLTID), sorted by tag, each one's data
aligned to its type. The 18 index tables hold ``(key, hnum, idx)`` rows derived from
the header by rpm's ``tag2index`` rules (lib/rpmdb.cc). :func:`installed_blob` builds
the row, :func:`write_sqlite` replaces packages and keeps every index in step.

Input databases are never opened in place: they are copied (with a ``-wal`` beside
them) to a temporary directory first, since sqlite writes even to read a WAL database.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import struct
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from suture.distro.rpm.header import (
    BIN,
    CHAR,
    INT8,
    INT16,
    INT32,
    INT64,
    STRING,
    STRING_ARRAY,
    Header,
    HeaderError,
    Tag,
    parse_header,
)
from suture.distro.rpm.model import (
    SENSE_RPMLIB,
    SENSE_SCRIPT_POST,
    SENSE_SCRIPT_POSTUN,
    SENSE_SCRIPT_PRE,
    SENSE_SCRIPT_PREUN,
    Dep,
    PackageInfo,
)
from suture.errors import PackageDBError

__all__ = [
    "BACKENDS",
    "INDEX_TABLES",
    "InstalledPackage",
    "RpmFile",
    "backend_files",
    "header_files",
    "index_rows",
    "installed_blob",
    "installed_package",
    "package_info",
    "read_db",
    "read_sqlite",
    "sqlite_index_rows",
    "stale_files",
    "write_db",
    "write_sqlite",
]

log = logging.getLogger(__name__)

MAX_DB_BYTES = 4 << 30  # a database larger than this is refused
MAX_BLOB = 256 << 20

# Tags of the installed header that header.Tag does not name.
SIGSIZE = 257
SIGPGP = 259
SIGMD5 = 261
SIGGPG = 262
FILESIGNATURES = 5090
FILESIGNATURELENGTH = 5091
VERITYSIGNATURES = 5099
VERITYSIGNATUREALGO = 5100
SIG_FILESIGNATURES = 274
SIG_FILESIGNATURELENGTH = 275
SIG_VERITYSIGNATURES = 276
SIG_VERITYSIGNATUREALGO = 277
SUGGESTFLAGS = 5050
SUPPLEMENTFLAGS = 5053
RECOMMENDFLAGS = 5047
ENHANCEFLAGS = 5056
GROUP = Tag.GROUP

# lib/package.cc xlateTags: (signature tag, installed tag, type, required count or 0,
# quirk: the installed tag may already be in the main header).
_XLATE: tuple[tuple[int, int, int, int, bool], ...] = (
    (Tag.SIG_SIZE, SIGSIZE, INT32, 1, False),
    (Tag.SIG_PGP, SIGPGP, BIN, 0, False),
    (Tag.SIG_MD5, SIGMD5, BIN, 16, False),
    (Tag.SIG_GPG, SIGGPG, BIN, 0, False),
    (Tag.SIG_PAYLOADSIZE, Tag.ARCHIVESIZE, INT32, 1, True),
    (SIG_FILESIGNATURES, FILESIGNATURES, STRING_ARRAY, 0, True),
    (SIG_FILESIGNATURELENGTH, FILESIGNATURELENGTH, INT32, 1, True),
    (SIG_VERITYSIGNATURES, VERITYSIGNATURES, STRING_ARRAY, 0, False),
    (SIG_VERITYSIGNATUREALGO, VERITYSIGNATUREALGO, INT32, 1, False),
    (Tag.SHA1HEADER, Tag.SHA1HEADER, STRING, 1, False),
    (Tag.SHA256HEADER, Tag.SHA256HEADER, STRING, 1, False),
    (Tag.DSAHEADER, Tag.DSAHEADER, BIN, 0, False),
    (Tag.RSAHEADER, Tag.RSAHEADER, BIN, 0, False),
    (Tag.LONGSIGSIZE, Tag.LONGSIGSIZE, INT64, 1, False),
    (Tag.LONGARCHIVESIZE, Tag.LONGARCHIVESIZE, INT64, 1, False),
)
_TYPE_SIZE = {CHAR: 1, INT8: 1, INT16: 2, INT32: 4, INT64: 8}
_REGION_TAGS = (Tag.HEADERIMMUTABLE, Tag.HEADERIMAGE)

# lib/rpmdb.cc dbiTags: table name -> tag; Installtid and Sigmd5 are BLOB-keyed.
INDEX_TABLES: dict[str, int] = {
    "Name": Tag.NAME,
    "Basenames": Tag.BASENAMES,
    "Group": Tag.GROUP,
    "Requirename": Tag.REQUIRENAME,
    "Providename": Tag.PROVIDENAME,
    "Conflictname": Tag.CONFLICTNAME,
    "Obsoletename": Tag.OBSOLETENAME,
    "Triggername": Tag.TRIGGERNAME,
    "Dirnames": Tag.DIRNAMES,
    "Installtid": Tag.INSTALLTID,
    "Sigmd5": SIGMD5,
    "Sha1header": Tag.SHA1HEADER,
    "Filetriggername": Tag.FILETRIGGERNAME,
    "Transfiletriggername": Tag.TRANSFILETRIGGERNAME,
    "Recommendname": Tag.RECOMMENDNAME,
    "Suggestname": Tag.SUGGESTNAME,
    "Supplementname": Tag.SUPPLEMENTNAME,
    "Enhancename": Tag.ENHANCENAME,
}
_RICH_TABLES = {Tag.REQUIRENAME, Tag.CONFLICTNAME, Tag.SUGGESTNAME, Tag.SUPPLEMENTNAME,
                Tag.RECOMMENDNAME, Tag.ENHANCENAME}
_KEYRING = 1 << 26
_PRETRANS = 1 << 7
_POSTTRANS = 1 << 5
_INSTALL_ONLY = SENSE_SCRIPT_PRE | SENSE_SCRIPT_POST | SENSE_RPMLIB | _KEYRING | _PRETRANS \
    | _POSTTRANS
_ERASE_ONLY = SENSE_SCRIPT_PREUN | SENSE_SCRIPT_POSTUN

Key = str | bytes
Row = tuple[Key, int, int]


@dataclass(frozen=True)
class RpmFile:
    """One file of a header's file arrays. ``path`` has no leading slash; ``digest``
    is hex ('' for none) in ``digest_algo`` (FILEDIGESTALGO: 1 md5, 8 sha256);
    ``state`` is FILESTATES of an installed header (0 normal, 1 replaced, 2 not
    installed, 3 netshared, 4 wrong color, 5 missing), None in a package file's."""

    path: str
    mode: int
    size: int
    digest: str
    digest_algo: int
    flags: int
    user: str
    group: str
    mtime: int
    linkto: str
    inode: int
    rdev: int
    caps: str
    color: int
    lang: str
    state: int | None


@dataclass(frozen=True)
class InstalledPackage:
    """A ``Packages`` row: its number, its header and what the resolver needs of it."""

    hnum: int
    header: Header
    info: PackageInfo


# ---------------------------------------------------------------- header contents

def _paths(header: Header) -> list[str]:
    basenames = header.strings(Tag.BASENAMES)
    if basenames:
        dirnames = header.strings(Tag.DIRNAMES)
        dirindexes = header.ints(Tag.DIRINDEXES)
        if len(dirindexes) != len(basenames):
            raise HeaderError("header file arrays: DIRINDEXES and BASENAMES differ in length")
        out = []
        for base, di in zip(basenames, dirindexes, strict=True):
            if di >= len(dirnames):
                raise HeaderError("header file arrays: DIRINDEXES past DIRNAMES")
            out.append(dirnames[di] + base)
        return out
    return list(header.strings(Tag.OLDFILENAMES))


def header_files(header: Header) -> list[RpmFile]:
    """The header's files, from BASENAMES/DIRNAMES/DIRINDEXES (or OLDFILENAMES). Every
    per-file array present must have one element per file; HeaderError otherwise."""
    paths = _paths(header)
    n = len(paths)

    def check(tag: int, got: int) -> None:
        if got != n:
            raise HeaderError(f"header file arrays: tag {tag} has {got} elements for {n} files")

    def ints(tag: int) -> tuple[int, ...]:
        if tag not in header:
            return (0,) * n
        values = header.ints(tag)
        check(tag, len(values))
        return values

    def strs(tag: int, default: str = "") -> tuple[str, ...]:
        if tag not in header:
            return (default,) * n
        values = header.strings(tag)
        check(tag, len(values))
        return values

    sizes = ints(Tag.LONGFILESIZES if Tag.LONGFILESIZES in header else Tag.FILESIZES)
    modes = ints(Tag.FILEMODES)
    digests = strs(Tag.FILEDIGESTS)
    flags = ints(Tag.FILEFLAGS)
    users = strs(Tag.FILEUSERNAME, "root")
    groups = strs(Tag.FILEGROUPNAME, "root")
    mtimes = ints(Tag.FILEMTIMES)
    links = strs(Tag.FILELINKTOS)
    inodes = ints(Tag.FILEINODES)
    rdevs = ints(Tag.FILERDEVS)
    caps = strs(Tag.FILECAPS)
    colors = ints(Tag.FILECOLORS)
    langs = strs(Tag.FILELANGS)
    states: list[int | None]
    if Tag.FILESTATES in header:
        raw = header.raw(Tag.FILESTATES) or b""
        if len(raw) != n:
            raise HeaderError(f"header file arrays: FILESTATES has {len(raw)} elements "
                              f"for {n} files")
        states = [b if b < 128 else b - 256 for b in raw]
    else:
        states = [None] * n
    algo = header.number(Tag.FILEDIGESTALGO) or 1
    return [RpmFile(path=p.lstrip("/"), mode=modes[i] & 0xFFFF, size=sizes[i],
                    digest=digests[i], digest_algo=algo, flags=flags[i], user=users[i],
                    group=groups[i], mtime=mtimes[i], linkto=links[i], inode=inodes[i],
                    rdev=rdevs[i] & 0xFFFF, caps=caps[i], color=colors[i], lang=langs[i],
                    state=states[i])
            for i, p in enumerate(paths)]


def _deps(header: Header, name: int, flags: int, version: int) -> tuple[Dep, ...]:
    names = header.strings(name)
    fl = header.ints(flags) or (0,) * len(names)
    vers = header.strings(version) or ("",) * len(names)
    if len(fl) != len(names) or len(vers) != len(names):
        raise HeaderError(f"header dependency arrays of tag {name} differ in length")
    return tuple(Dep(n, f, v) for n, f, v in zip(names, fl, vers, strict=True))


def package_info(header: Header) -> PackageInfo:
    """What the resolver needs of a header (installed or a package file's)."""
    name = header.string(Tag.NAME)
    version = header.string(Tag.VERSION)
    release = header.string(Tag.RELEASE)
    if not name or version is None or release is None:
        raise HeaderError("header without NAME, VERSION or RELEASE")
    return PackageInfo(
        name=name, epoch=header.number(Tag.EPOCH), version=version, release=release,
        arch=header.string(Tag.ARCH) or "",
        provides=_deps(header, Tag.PROVIDENAME, Tag.PROVIDEFLAGS, Tag.PROVIDEVERSION),
        requires=_deps(header, Tag.REQUIRENAME, Tag.REQUIREFLAGS, Tag.REQUIREVERSION),
        obsoletes=_deps(header, Tag.OBSOLETENAME, Tag.OBSOLETEFLAGS, Tag.OBSOLETEVERSION),
        conflicts=_deps(header, Tag.CONFLICTNAME, Tag.CONFLICTFLAGS, Tag.CONFLICTVERSION),
        files=tuple("/" + p.lstrip("/") for p in _paths(header)),
        sourcerpm=header.string(Tag.SOURCERPM) or "")


# ---------------------------------------------------------------- header export

def _region(header: Header) -> tuple[int, int]:
    """(entries, data bytes) of the header's immutable region, or of the whole header
    when it has none. A header read from the rpmdb has its dribble entries after the
    region; they are left out."""
    il = len(header.index)
    dl = len(header.data)
    first = header.index[0]
    if first.tag not in _REGION_TAGS or first.type != BIN or first.count != 16:
        return il, dl
    trailer = header.data[first.offset:first.offset + 16]
    if len(trailer) != 16:
        raise HeaderError("header region trailer runs past the data")
    _tag, _typ, off, _count = struct.unpack(">IIiI", trailer)
    ril = -off // 16
    if off >= 0 or off % 16 or ril > il:
        raise HeaderError("header region trailer out of bounds")
    if ril == il:
        return il, dl
    end = first.offset + 16
    for e in header.index[1:ril]:
        raw = header.raw(e.tag)
        end = max(end, e.offset + len(raw or b""))
    return ril, end


def _export(index: bytes, il: int, data: bytes,
            extra: Iterable[tuple[int, int, int, bytes]]) -> bytes:
    """``headerExport``: the kept index and data, then ``extra`` (tag, type, count,
    bytes) sorted by tag with each value aligned to its type."""
    out_index = bytearray(index)
    out_data = bytearray(data)
    n = il
    for tag, typ, count, value in sorted(extra, key=lambda x: x[0]):
        align = _TYPE_SIZE.get(typ, 1)
        if align > 1 and len(out_data) % align:
            out_data += b"\0" * (align - len(out_data) % align)
        out_index += struct.pack(">IIiI", tag, typ, len(out_data), count)
        out_data += value
        n += 1
    return struct.pack(">II", n, len(out_data)) + bytes(out_index) + bytes(out_data)


def installed_blob(header: Header, signature: Header | None, *, install_time: int,
                   tid: int, color: int, file_states: bytes) -> bytes:
    """What rpm stores in ``Packages.blob`` for ``header`` (a package's main header)
    installed with ``signature`` (its signature header): the main header verbatim, plus
    the signature tags translated as rpm's xlateTags does, INSTALLTIME, FILESTATES (one
    byte per file; none for a package without files), INSTALLCOLOR and INSTALLTID. A
    header from the rpmdb can be given too: its own dribble entries are dropped first.
    HeaderError when a signature tag is also in the main header or has a bad type."""
    ril, rdl = _region(header)
    tags = {e.tag for e in header.index[:ril]}
    nfiles = len(_paths(header))
    if len(file_states) != nfiles:
        raise HeaderError(f"{len(file_states)} file states for {nfiles} files")
    extra: list[tuple[int, int, int, bytes]] = []
    if signature is not None:
        for stag, xtag, _typ, _count, quirk in _XLATE:
            if xtag in tags and not (quirk and stag not in signature):
                raise HeaderError(f"signature tag {stag} is also in the main header")
        for stag, xtag, typ, count, _quirk in _XLATE:
            e = signature.entry(stag)
            if e is None:
                continue
            if e.type != typ or e.count < 1 or e.count > 16 << 20 or (count and e.count != count):
                break  # rpm stops translating at the first tag it does not expect
            extra.append((xtag, typ, e.count, signature.raw(stag) or b""))
    extra.append((Tag.INSTALLTIME, INT32, 1, struct.pack(">I", install_time & 0xFFFFFFFF)))
    if nfiles:
        extra.append((Tag.FILESTATES, CHAR, nfiles, bytes(file_states)))
    extra.append((Tag.INSTALLCOLOR, INT32, 1, struct.pack(">I", color & 0xFFFFFFFF)))
    extra.append((Tag.INSTALLTID, INT32, 1, struct.pack(">I", tid & 0xFFFFFFFF)))
    index = header.blob[8:8 + 16 * ril]
    return _export(index, ril, header.data[:rdl], extra)


# ---------------------------------------------------------------- index rows

def _rich_names(text: str) -> list[str]:
    """The simple names of a rich dependency as rpm's updateRichDep indexes them:
    sorted, de-duplicated, ``rpmlib(`` ones left out, names inside an ``if``/``unless``
    condition prefixed with ``!``. [] when it does not parse."""
    names: list[str] = []
    neg = [0]
    pos = 0

    def ws() -> None:
        nonlocal pos
        while pos < len(text) and text[pos].isspace():
            pos += 1

    def simple() -> None:
        nonlocal pos
        start = pos
        depth = 0
        while pos < len(text) and not text[pos].isspace():
            if text[pos] == "(":
                depth += 1
            elif text[pos] == ")":
                if depth == 0:
                    break
                depth -= 1
            pos += 1
        name = text[start:pos]
        if not name:
            raise ValueError("empty name")
        save = pos
        ws()
        if pos < len(text) and text[pos] in "<>=":
            while pos < len(text) and text[pos] in "<>=":
                pos += 1
            ws()
            while pos < len(text) and not text[pos].isspace() and text[pos] != ")":
                pos += 1
        else:
            pos = save
        if not (len(name) > 7 and name.startswith("rpmlib(")):
            names.append(("!" if neg[0] else " ") + name)

    def group() -> None:
        nonlocal pos
        pos += 1  # "("
        level_start = len(names)
        last_op = ""
        while True:
            ws()
            if pos >= len(text):
                raise ValueError("unterminated")
            if text[pos] == "(":
                group()
            else:
                simple()
            ws()
            if pos >= len(text):
                raise ValueError("unterminated")
            if text[pos] == ")":
                pos += 1
                break
            start = pos
            while pos < len(text) and text[pos].isalpha():
                pos += 1
            op = text[start:pos]
            if op not in ("and", "or", "if", "else", "unless", "with", "without"):
                raise ValueError("bad operator")
            if op in ("if", "unless"):
                level_start = len(names)
                neg[0] ^= 1
            elif op == "else":
                for n in names[level_start:]:
                    names.append(("!" if n[0] == " " else " ") + n[1:])
                neg[0] ^= 1
            last_op = op
        if last_op in ("if", "unless"):
            neg[0] ^= 1

    try:
        ws()
        if pos >= len(text) or text[pos] != "(":
            return []
        group()
    except ValueError:
        return []
    out = []
    for n in sorted(set(names)):
        out.append(n[1:] if n[0] == " " else n)
    return out


def index_rows(header: Header, hnum: int) -> dict[str, list[Row]]:
    """The rows rpm's tag2index puts in each index table for ``header`` at ``hnum``."""
    rows: dict[str, list[Row]] = {}
    for table, tag in INDEX_TABLES.items():
        out: list[Row] = []
        rows[table] = out
        e = header.entry(tag)
        if e is None:
            if tag == GROUP:
                out.append(("Unknown", hnum, 0))
            continue
        if e.type in (STRING, STRING_ARRAY) or e.type == 9:
            values: list[Key] = list(header.strings(tag))
            if e.type == 9:
                values = values[:1]
        elif e.type == BIN:
            values = [header.binary(tag) or b""]
        elif e.type in _TYPE_SIZE:
            size = _TYPE_SIZE[e.type]
            fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}[size]
            values = [struct.pack(f"<{fmt}", v) for v in header.ints(tag)]
        else:
            continue
        reqflags = header.ints(Tag.REQUIREFLAGS) if tag == Tag.REQUIRENAME else ()
        trig: tuple[int, ...] = ()
        if tag == Tag.FILETRIGGERNAME:
            trig = header.ints(Tag.FILETRIGGERINDEX)
        elif tag == Tag.TRANSFILETRIGGERNAME:
            trig = header.ints(Tag.TRANSFILETRIGGERINDEX)
        for i, key in enumerate(values):
            idx = i
            if tag in (Tag.FILETRIGGERNAME, Tag.TRANSFILETRIGGERNAME):
                if i >= len(trig):
                    raise HeaderError(f"header tag {tag}: no trigger index for element {i}")
                idx = trig[i]
            if tag == Tag.REQUIRENAME and i < len(reqflags):
                f = reqflags[i]
                if f & _INSTALL_ONLY and not f & _ERASE_ONLY:
                    continue
            if tag == Tag.TRIGGERNAME and key in values[:i]:
                continue
            out.append((key, hnum, idx))
            if tag in _RICH_TABLES and isinstance(key, str) and key.startswith("(") \
                    and e.type == STRING_ARRAY:
                out.extend((n, hnum, idx) for n in _rich_names(key))
    return rows


def sqlite_index_rows(db: Path) -> dict[str, set[Row]]:
    """Every index table's rows of the database at ``db`` (read through a copy)."""
    with tempfile.TemporaryDirectory(prefix="suture-rpmdb-") as tmp:
        conn = _open_copy(db, Path(tmp))
        try:
            return {table: set(conn.execute(f"SELECT key, hnum, idx FROM '{table}'"))
                    for table in INDEX_TABLES if _has_table(conn, table)}
        finally:
            conn.close()


# ---------------------------------------------------------------- sqlite files

def _key_type(table: str) -> str:
    return "BLOB" if table in ("Installtid", "Sigmd5") else "TEXT"


def _key_bytes(key: Key) -> bytes:
    return key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                        (name,)).fetchone() is not None


def _open_copy(path: Path, tmp: Path) -> sqlite3.Connection:
    """A connection to a copy of the database at ``path`` (and its ``-wal``) in
    ``tmp``; PackageDBError when it is no rpm sqlite database."""
    where = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_DB_BYTES:
            raise PackageDBError("rpm database too large", path=where)
        with path.open("rb") as f:
            magic = f.read(16)
        if magic != b"SQLite format 3\0":
            raise PackageDBError("not an sqlite database", path=where)
        copy = tmp / "rpmdb.sqlite"
        shutil.copyfile(path, copy)
        wal = path.with_name(path.name + "-wal")
        if wal.is_file() and wal.stat().st_size:
            shutil.copyfile(wal, tmp / "rpmdb.sqlite-wal")
    except OSError as exc:
        raise PackageDBError(f"cannot read: {exc.strerror or exc}", path=where) from exc
    try:
        conn = sqlite3.connect(copy, isolation_level=None)
        conn.text_factory = _decode
        if not _has_table(conn, "Packages"):
            conn.close()
            raise PackageDBError("sqlite database without a Packages table", path=where)
    except sqlite3.Error as exc:
        raise PackageDBError(f"not a readable sqlite database ({exc})", path=where) from exc
    return conn


def _read_rows(conn: sqlite3.Connection, where: str) -> list[InstalledPackage]:
    out = []
    try:
        rows = conn.execute("SELECT hnum, blob FROM Packages ORDER BY hnum").fetchall()
    except sqlite3.Error as exc:
        raise PackageDBError(f"cannot read Packages ({exc})", path=where) from exc
    for hnum, blob in rows:
        if not isinstance(blob, bytes) or len(blob) > MAX_BLOB:
            raise PackageDBError(f"package {hnum}: not a header blob", path=where)
        out.append(installed_package(hnum, blob, where))
    return out


def installed_package(hnum: int, blob: bytes, where: str, *, name: str = "package"
                      ) -> InstalledPackage:
    """The installed package numbered ``hnum`` whose header blob (an rpmdb value, no
    magic) is ``blob``: the whole blob must be one header whose package info and file
    arrays read. PackageDBError naming ``where`` (the database) otherwise; ``name``
    says what the blob is in the message."""
    try:
        header, end = parse_header(blob, magic=False, what=f"{name} {hnum}")
        if end != len(blob):
            raise HeaderError(f"{name} {hnum}: {len(blob) - end} bytes after the header")
        info = package_info(header)
        header_files(header)
    except HeaderError as exc:
        raise PackageDBError(str(exc), path=where) from exc
    return InstalledPackage(hnum, header, info)


def read_sqlite(path: Path) -> list[InstalledPackage]:
    """The packages of the sqlite rpmdb at ``path`` (never modified), by hnum;
    PackageDBError naming it when it is not one or a header does not parse."""
    with tempfile.TemporaryDirectory(prefix="suture-rpmdb-") as tmp:
        conn = _open_copy(path, Path(tmp))
        try:
            return _read_rows(conn, str(path))
        finally:
            conn.close()


def write_sqlite(source: Path, dest: Path, *, remove: Sequence[int],
                 add: Sequence[bytes]) -> list[int]:
    """Write to ``dest`` the database at ``source`` with the packages numbered
    ``remove`` deleted and the header blobs ``add`` (see :func:`installed_blob`)
    inserted in order, each index table updated as rpm does; the new packages' hnums
    (AUTOINCREMENT: never a number used before). The result is checkpointed (no WAL
    content) and keeps the source's page size and journal mode; ``dest`` may be
    ``source``. A non-empty ``-wal`` beside ``dest`` is emptied and a ``-shm`` removed
    (sqlite would replay the one onto the new file). PackageDBError, and nothing
    written, when the source is no rpm database, a number is not in it or a
    blob is no header."""
    where = str(source)
    headers = []
    for i, blob in enumerate(add):
        try:
            h, end = parse_header(blob, magic=False, what=f"added package {i}")
            if end != len(blob):
                raise HeaderError(f"added package {i}: bytes after the header")
            package_info(h)
            header_files(h)
        except HeaderError as exc:
            raise PackageDBError(str(exc), path=where) from exc
        headers.append(h)
    with tempfile.TemporaryDirectory(prefix="suture-rpmdb-") as tmp:
        conn = _open_copy(source, Path(tmp))
        try:
            existing = {p.hnum: p.header for p in _read_rows(conn, where)}
            tables = [t for t in INDEX_TABLES if _has_table(conn, t)]
            new: list[int] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                for hnum in remove:
                    if hnum not in existing:
                        raise PackageDBError(f"no package {hnum} to remove", path=where)
                    for table in tables:
                        conn.execute(f"DELETE FROM '{table}' WHERE hnum = ?", (hnum,))
                    conn.execute("DELETE FROM Packages WHERE hnum = ?", (hnum,))
                    del existing[hnum]
                for blob, h in zip(add, headers, strict=True):
                    cur = conn.execute("INSERT INTO Packages (hnum, blob) VALUES (NULL, ?)",
                                       (blob,))
                    if cur.lastrowid is None:
                        raise PackageDBError("no hnum for an added package", path=where)
                    new.append(cur.lastrowid)
                    rows = index_rows(h, cur.lastrowid)
                    for table in tables:
                        # text keys go in as their bytes (rpm binds them unchecked)
                        conn.executemany(
                            f"INSERT INTO '{table}' VALUES (CAST(? AS {_key_type(table)}), ?, ?)",
                            [(_key_bytes(k), n, i) for k, n, i in rows[table]])
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except (sqlite3.Error, HeaderError) as exc:
            raise PackageDBError(f"cannot rewrite ({exc})", path=where) from exc
        finally:
            conn.close()
        written = Path(tmp) / "rpmdb.sqlite"
        partial = dest.with_name(dest.name + ".suture-new")
        wal = dest.with_name(dest.name + "-wal")
        shm = dest.with_name(dest.name + "-shm")
        try:
            shutil.copyfile(written, partial)
            partial.replace(dest)
            # a WAL beside the new file would be replayed onto it: its content is in
            # the written file (when dest is the source) or belongs to an older one
            if wal.is_file() and wal.stat().st_size:
                wal.write_bytes(b"")
            shm.unlink(missing_ok=True)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise PackageDBError(f"cannot write: {exc.strerror or exc}",
                                 path=str(dest)) from exc
    log.debug("rpmdb %s: removed %s, added %s", dest, list(remove), new)
    return new


# ---------------------------------------------------------------- backends

#: rpmdb backends: name -> (the file that marks it, the name said to users).
BACKENDS: dict[str, tuple[str, str]] = {
    "sqlite": ("rpmdb.sqlite", "sqlite"),
    "ndb": ("Packages.db", "ndb"),
    "bdb": ("Packages", "Berkeley DB"),
    # distroless Azure Linux / CBL-Mariner: no database, the package manifests in
    # var/lib/rpmmanifest (suture.distro.rpm.manifest); found by the engine, not in DB_DIRS
    "manifest": ("container-manifest-2", "rpm manifest"),
}


def backend_files(backend: str, names: Iterable[str]) -> list[str]:
    """Of the files ``names`` of an rpmdb directory, those the backend reads and
    rewrites (sqlite: rpmdb.sqlite; ndb: Packages.db; bdb: Packages and the index
    files)."""
    main = BACKENDS[backend][0]
    keep = {main} | (set(INDEX_TABLES) if backend == "bdb" else set())
    if backend == "manifest":
        keep.add("container-manifest-1")
    return sorted(n for n in names if n in keep)


def stale_files(backend: str, names: Iterable[str]) -> list[str]:
    """Of the files ``names`` of an rpmdb directory, those a rewrite leaves stale and
    that rpm recreates: Berkeley DB's environment (``__db.00N``), ndb's ``Index.db``."""
    if backend == "bdb":
        return sorted(n for n in names if n.startswith("__db."))
    if backend == "ndb":
        return sorted(n for n in names if n == "Index.db")
    return []


def read_db(backend: str, directory: Path) -> list[InstalledPackage]:
    """The packages of the rpmdb of ``backend`` in ``directory``."""
    if backend == "bdb":
        from suture.distro.rpm.bdb import read_bdb

        return read_bdb(directory)
    if backend == "ndb":
        from suture.distro.rpm.ndb import read_ndb

        return read_ndb(directory)
    if backend == "manifest":
        return _read_manifest(directory)
    return read_sqlite(directory / BACKENDS["sqlite"][0])


def write_db(backend: str, source: Path, dest: Path, *, remove: Sequence[int],
             add: Sequence[bytes], steps: Sequence[tuple[str, int]] | None = None
             ) -> tuple[list[int], list[str]]:
    """Write to directory ``dest`` the rpmdb of ``backend`` in directory ``source`` with
    the packages ``remove`` deleted and the header blobs ``add`` added; the new
    packages' numbers and the names of the files written. ``steps``: the order rpm
    performs them in (see :func:`suture.distro.rpm.ndb.write_ndb`); only ndb's file
    depends on it."""
    if backend == "bdb":
        from suture.distro.rpm.bdb import write_bdb

        return write_bdb(source, dest, remove=remove, add=add)
    if backend == "ndb":
        from suture.distro.rpm.ndb import write_ndb

        return write_ndb(source, dest, remove=remove, add=add, steps=steps)
    if backend == "manifest":
        return _write_manifest(source, dest, remove=remove, add=add)
    name = BACKENDS["sqlite"][0]
    dest.mkdir(parents=True, exist_ok=True)
    return write_sqlite(source / name, dest / name, remove=remove, add=add), [name]


def _read_manifest(directory: Path) -> list[InstalledPackage]:
    """A distroless image's packages from its container-manifest-2, numbered from 1 in
    the manifest's order; their headers hold only what the lines say (no files)."""
    from suture.distro.rpm.manifest import parse_manifest2

    path = directory / BACKENDS["manifest"][0]
    entries = parse_manifest2(path.read_bytes(), path=str(path))
    return [InstalledPackage(n, e.header(), e.info) for n, e in enumerate(entries, 1)]


def _write_manifest(source: Path, dest: Path, *, remove: Sequence[int], add: Sequence[bytes]
                    ) -> tuple[list[int], list[str]]:
    """Both manifests with the entries numbered ``remove`` left out and the installed
    headers ``add`` appended (their INSTALLTIME the install time), as rpm -qa lists a
    database after the same transaction."""
    from suture.distro.rpm.header import parse_header
    from suture.distro.rpm.manifest import entry_of, parse_manifest2, write_manifests

    path = source / BACKENDS["manifest"][0]
    entries = parse_manifest2(path.read_bytes(), path=str(path))
    gone = set(remove)
    kept = [e for n, e in enumerate(entries, 1) if n not in gone]
    added = []
    for blob in add:
        header = parse_header(blob, magic=False, what="installed header")[0]
        added.append(entry_of(header, install_time=header.number(Tag.INSTALLTIME) or 0))
    one, two = write_manifests(kept + added)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "container-manifest-1").write_bytes(one)
    (dest / "container-manifest-2").write_bytes(two)
    first = len(kept) + 1
    return list(range(first, first + len(added))), ["container-manifest-1",
                                                     "container-manifest-2"]
