"""Finding an image's OS and package database, family by family.

Each family says which paths it needs (:attr:`Family.paths`, :attr:`Family.prefixes`)
and turns the files found there into a :class:`PackageDB`. The caller reads
all families' paths in one pass over the layers and asks each family in turn;
nothing here branches on a family by name.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from suture.errors import PackageDBError
from suture.oci.fs import FileEntry

OS_RELEASE_PATHS = ("etc/os-release", "usr/lib/os-release")
ALPINE_RELEASE = "etc/alpine-release"


@dataclass(frozen=True)
class OSRelease:
    id: str
    version_id: str
    codename: str
    pretty_name: str
    id_like: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "versionId": self.version_id, "codename": self.codename,
                "prettyName": self.pretty_name, "idLike": list(self.id_like)}


def parse_os_release(data: bytes) -> OSRelease:
    """Parse an ``os-release`` file (shell-style ``KEY=value`` lines, quotes optional)."""
    import shlex

    fields: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            parts = shlex.split(value, posix=True)
        except ValueError:
            parts = [value.strip("\"'")]
        fields[key.strip()] = parts[0] if parts else ""
    codename = fields.get("VERSION_CODENAME", "")
    if not codename and fields.get("ID") == "debian":
        # Debian testing/sid images carry no VERSION_CODENAME; use VERSION's "(name)".
        version = fields.get("VERSION", "")
        if "(" in version:
            codename = version.split("(", 1)[1].rstrip(")").strip()
    return OSRelease(
        id=fields.get("ID", "linux").lower(),
        version_id=fields.get("VERSION_ID", ""),
        codename=codename,
        pretty_name=fields.get("PRETTY_NAME", ""),
        id_like=tuple(fields.get("ID_LIKE", "").split()),
    )


@dataclass(frozen=True)
class PackageDB:
    """Where an image keeps its package database, and how many packages it lists.

    ``count`` is ``None`` for formats we can find but not yet read.
    """

    family: str  # dpkg | apk | rpm
    kind: str  # dpkg-status | dpkg-status.d | apk-installed | rpm-sqlite | rpm-bdb | ...
    path: str
    count: int | None

    def to_json(self) -> dict[str, object]:
        return {"family": self.family, "kind": self.kind, "path": "/" + self.path,
                "packages": self.count}


class Family(Protocol):
    name: str
    paths: tuple[str, ...]
    prefixes: tuple[str, ...]

    def detect(self, files: Mapping[str, FileEntry]) -> PackageDB | None: ...


def _stanzas(data: bytes) -> list[dict[str, str]]:
    """A minimal deb822 split: enough to count installed packages."""
    out: list[dict[str, str]] = []
    for block in data.decode("utf-8", "replace").replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
        if fields:
            out.append(fields)
    return out


def _installed(stanza: dict[str, str]) -> bool:
    status = stanza.get("status")
    # status.d files (distroless) carry no Status field: every stanza is installed.
    return "package" in stanza and (status is None or status.split()[-1:] == ["installed"])


class Dpkg:
    name: str = "dpkg"
    paths: tuple[str, ...] = ("var/lib/dpkg/status",)
    prefixes: tuple[str, ...] = ("var/lib/dpkg/status.d/",)

    def detect(self, files: Mapping[str, FileEntry]) -> PackageDB | None:
        status = files.get("var/lib/dpkg/status")
        if status is not None and status.data is not None and status.data.strip():
            count = sum(1 for s in _stanzas(status.data) if _installed(s))
            return PackageDB(self.name, "dpkg-status", status.path, count)
        parts = [(p, e) for p, e in files.items()
                 if p.startswith(self.prefixes[0]) and e.data is not None
                 and not p.endswith(".md5sums")]
        if parts:
            count = sum(1 for _, e in parts for s in _stanzas(e.data or b"") if _installed(s))
            return PackageDB(self.name, "dpkg-status.d", "var/lib/dpkg/status.d", count)
        return None


class Apk:
    name: str = "apk"
    # apk-tools 2 keeps it in /lib/apk/db; usr-merged apk-tools 3 roots may use /usr/lib.
    paths: tuple[str, ...] = ("lib/apk/db/installed", "usr/lib/apk/db/installed")
    prefixes: tuple[str, ...] = ()

    def detect(self, files: Mapping[str, FileEntry]) -> PackageDB | None:
        for path in self.paths:
            db = files.get(path)
            if db is not None and db.data is not None:
                count = sum(1 for line in db.data.splitlines() if line.startswith(b"P:"))
                return PackageDB(self.name, "apk-installed", db.path, count)
        return None


def count_rpm_sqlite(data: bytes, path: str) -> int:
    """Count packages in an rpm sqlite database held in memory.

    rpm keeps its database in WAL mode (header bytes 18 and 19 are 2); an in-memory
    copy cannot be opened in that mode, so it is read as a rollback-journal database
    (what the file itself holds: rpm checkpoints the WAL when it closes)."""
    if data[:16] == b"SQLite format 3\0" and data[18:20] == b"\x02\x02":
        data = data[:18] + b"\x01\x01" + data[20:]
    conn = sqlite3.connect(":memory:")
    try:
        conn.deserialize(data)
        row = conn.execute("SELECT count(*) FROM Packages").fetchone()
        return int(row[0])
    except sqlite3.Error as exc:
        raise PackageDBError(f"unreadable rpm sqlite database: {exc}", path=path) from None
    finally:
        conn.close()


_NDB_PAGE = 4096
_NDB_HEADER = 32


def count_rpm_ndb(data: bytes, path: str) -> int:
    """Count packages in rpm's ndb ``Packages.db`` (SUSE): the used slots of its slot
    pages (``RpmP`` header, then 16-byte ``Slot`` records: magic, package index,
    block offset, block count; index 0 is a free slot)."""
    if len(data) < _NDB_HEADER or data[:4] != b"RpmP":
        raise PackageDBError("not an rpm ndb database (no RpmP header)", path=path)
    slot_pages = int.from_bytes(data[12:16], "little")
    end = slot_pages * _NDB_PAGE
    if slot_pages < 1 or end > len(data):
        raise PackageDBError(f"ndb header names {slot_pages} slot pages, the file holds "
                             f"{len(data)} bytes", path=path)
    count = 0
    for offset in range(_NDB_HEADER, end, 16):
        record = data[offset:offset + 16]
        if record[:4] != b"Slot":
            raise PackageDBError(f"ndb slot at byte {offset} is damaged", path=path)
        if int.from_bytes(record[4:8], "little"):
            count += 1
    return count


def count_rpm_bdb(data: bytes, path: str) -> int:
    """Count packages in rpm's Berkeley DB ``Packages`` (a hash database whose keys are
    header numbers; key 0 is rpm's counter, not a package)."""
    from suture.distro.rpm.bdb import parse_bdb

    db = parse_bdb(data, path)
    if db.kind != "hash":
        raise PackageDBError("not rpm's Berkeley DB hash database", path=path)
    return sum(1 for key, _value in db.records if len(key) == 4 and any(key))


class Rpm:
    name: str = "rpm"
    # Newest layouts first: a database may sit in usr/lib/sysimage with var/lib/rpm a symlink.
    _SQLITE = ("usr/lib/sysimage/rpm/rpmdb.sqlite", "var/lib/rpm/rpmdb.sqlite")
    _NDB = ("usr/lib/sysimage/rpm/Packages.db", "var/lib/rpm/Packages.db")
    _BDB = ("usr/lib/sysimage/rpm/Packages", "var/lib/rpm/Packages")
    _MANIFEST = ("var/lib/rpmmanifest/container-manifest-2",)
    paths: tuple[str, ...] = _SQLITE + _NDB + _BDB + _MANIFEST
    prefixes: tuple[str, ...] = ()

    def detect(self, files: Mapping[str, FileEntry]) -> PackageDB | None:
        for path in self._SQLITE:
            entry = files.get(path)
            if entry is not None and entry.data is not None:
                return PackageDB(self.name, "rpm-sqlite", path,
                                 count_rpm_sqlite(entry.data, "/" + path))
        for path in self._NDB:
            entry = files.get(path)
            if entry is not None and entry.data is not None:
                return PackageDB(self.name, "rpm-ndb", path,
                                 count_rpm_ndb(entry.data, "/" + path))
        for path in self._BDB:
            entry = files.get(path)
            if entry is not None and entry.data is not None:
                return PackageDB(self.name, "rpm-bdb", path,
                                 count_rpm_bdb(entry.data, "/" + path))
        for kind, paths in (("rpm-ndb", self._NDB), ("rpm-bdb", self._BDB)):
            for path in paths:
                if path in files:
                    return PackageDB(self.name, kind, path, None)
        entry = files.get(self._MANIFEST[0])
        if entry is not None and entry.data is not None:
            count = sum(1 for line in entry.data.splitlines() if line.strip())
            return PackageDB(self.name, "rpm-manifest", self._MANIFEST[0], count)
        return None


FAMILIES: tuple[Family, ...] = (Dpkg(), Apk(), Rpm())


def wanted_paths() -> tuple[list[str], list[str]]:
    """Every path and prefix that OS and package database detection reads."""
    paths = [*OS_RELEASE_PATHS, ALPINE_RELEASE]
    prefixes: list[str] = []
    for family in FAMILIES:
        paths.extend(family.paths)
        prefixes.extend(family.prefixes)
    return paths, prefixes


def detect_package_db(files: Mapping[str, FileEntry]) -> PackageDB | None:
    for family in FAMILIES:
        found = family.detect(files)
        if found is not None:
            return found
    return None


def detect_os(files: Mapping[str, FileEntry]) -> OSRelease | None:
    for path in OS_RELEASE_PATHS:
        entry = files.get(path)
        if entry is not None and entry.data is not None:
            return parse_os_release(entry.data)
    # Minimal Alpine roots may lack os-release but keep alpine-baselayout's release file.
    entry = files.get(ALPINE_RELEASE)
    if entry is not None and entry.data is not None:
        version = entry.data.decode("utf-8", "replace").strip()
        major_minor = ".".join(version.split(".")[:2])
        return OSRelease("alpine", version, "", f"Alpine Linux v{major_minor}")
    return None
