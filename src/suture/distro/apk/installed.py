"""apk's database in an image root: ``/lib/apk/db/installed`` and its companions.

``installed`` is a list of records separated by blank lines; each line is one
letter, a colon and a value. A record starts with the package's index fields
(``C`` identity, ``P`` name, ``V`` version, ``A`` arch, ``S`` size, ``I``
installed size, ``T`` ``U`` ``L`` ``o`` ``m`` ``t`` ``c`` ``k``, ``D``/``p``/``i``
relations, ``g`` tags), then what only an installed package has (``r`` replaces,
``q`` their priority, ``s`` repository tag, ``f`` broken-state flags), then its
files: ``F:dir`` (with ``M:uid:gid:mode[:xattrs]`` when not ``0:0:755``), then for
each file of that directory ``R:name``, ``a:uid:gid:mode[:xattrs]`` when not
``0:0:644``, and ``Z:`` its checksum.

Every field of every record is kept: a record that is not rewritten is written
back byte for byte, and unknown fields of the header are kept in order.

Also here: ``world`` (the user's constraints), ``triggers`` (``<identity>
<glob>...`` per package), ``scripts.tar`` (scripts by ``<name>-<version>.
<identity>.<action>``) and ``/etc/apk/protected_paths.d``.
"""

from __future__ import annotations

import fnmatch
import functools
import io
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from suture.distro.apk.deps import Dependency, parse_dependencies
from suture.distro.apk.record import PackageFields
from suture.errors import PackageDBError, PackageFormatError

__all__ = [
    "ADB_MAGIC",
    "DEFAULT_DIR_ACL",
    "DEFAULT_FILE_ACL",
    "Acl",
    "DirRecord",
    "FileRecord",
    "InstalledPackage",
    "ScriptMember",
    "format_installed",
    "format_scripts_tar",
    "format_triggers",
    "parse_installed",
    "parse_protected_paths",
    "parse_scripts_tar",
    "parse_triggers",
    "parse_world",
    "protect_mode",
    "render_record",
]

ADB_MAGIC = b"ADB"
"""apk v3 (ADB) files start with this; apk v2 files are gzip or text."""

SCRIPT_TYPES = ("pre-install", "post-install", "pre-deinstall", "post-deinstall",
                "pre-upgrade", "post-upgrade", "trigger")
# Header fields in the order apk writes them; others follow in the order they were read.
_HEADER = ("C", "P", "V", "A", "S", "I", "T", "U", "L", "o", "m", "t", "c", "k", "D", "p",
           "i", "g", "r", "q", "s", "f")
_FDB = frozenset("FMRaZ")
MAX_SCRIPT = 16 << 20


@dataclass(frozen=True)
class Acl:
    """Owner, group, permission bits and the checksum of the extended attributes."""

    uid: int
    gid: int
    mode: int
    xattrs: str | None = None

    def render(self, letter: str) -> str:
        tail = f":{self.xattrs}" if self.xattrs else ""
        return f"{letter}:{self.uid}:{self.gid}:{self.mode:o}{tail}\n"


DEFAULT_DIR_ACL = Acl(0, 0, 0o755)
DEFAULT_FILE_ACL = Acl(0, 0, 0o644)


@dataclass(frozen=True)
class FileRecord:
    """An ``R:`` entry: the name within its directory, its ACL and checksum."""

    name: str
    acl: Acl = DEFAULT_FILE_ACL
    checksum: str | None = None


@dataclass(frozen=True)
class DirRecord:
    """An ``F:`` entry (``""`` is the root) with its ACL and the files it owns there."""

    name: str
    acl: Acl = DEFAULT_DIR_ACL
    files: tuple[FileRecord, ...] = ()


@dataclass(frozen=True)
class InstalledPackage(PackageFields):
    """One record of ``installed``.

    ``fields``: every non-file line as ``(letter, value)``, in order. ``dirs``: the
    file database. ``raw``: the record's text as read (``""`` for a record made
    here), written back unchanged by :func:`format_installed`.
    """

    fields: tuple[tuple[str, str], ...]
    dirs: tuple[DirRecord, ...] = ()
    raw: str = field(default="", compare=False, repr=False)

    @property
    def tag(self) -> str:
        return self.get("s")

    @functools.cached_property
    def replaces(self) -> tuple[Dependency, ...]:
        return self._deps("r")

    @property
    def replaces_priority(self) -> int:
        return self.number("q")

    def files(self) -> Iterator[tuple[str, FileRecord]]:
        """Every file the package owns, as ``(root-relative path, record)``."""
        for d in self.dirs:
            for f in d.files:
                yield (f"{d.name}/{f.name}" if d.name else f.name), f

    def with_fields(self, **changes: str | None) -> InstalledPackage:
        """A copy with header fields set (``None`` removes one); the record is rendered."""
        fields = [(k, v) for k, v in self.fields if k not in changes]
        for key, value in changes.items():
            if value is not None:
                fields.append((key, value))
        return replace(self, fields=_ordered(fields), raw="")


def _ordered(fields: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    rank = {k: i for i, k in enumerate(_HEADER)}
    items = list(fields)
    return tuple(sorted(items, key=lambda kv: rank.get(kv[0], len(_HEADER))))


# --------------------------------------------------------------------------- parsing

def _acl(value: str, source: str, line: int) -> Acl:
    parts = value.split(":", 3)
    try:
        if len(parts) < 3:
            raise ValueError
        return Acl(int(parts[0]), int(parts[1]), int(parts[2], 8),
                   parts[3] if len(parts) > 3 and parts[3] else None)
    except ValueError:
        raise PackageDBError(f"line {line}: malformed ACL {value!r}", path=source) from None


class _Record:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.fields: list[tuple[str, str]] = []
        self.dirs: list[DirRecord] = []
        self.files: list[FileRecord] = []

    def close_dir(self) -> None:
        if self.dirs:
            self.dirs[-1] = replace(self.dirs[-1], files=tuple(self.files))
        self.files = []

    def build(self, source: str, line: int) -> InstalledPackage:
        self.close_dir()
        pkg = InstalledPackage(tuple(self.fields), tuple(self.dirs), "".join(self.lines))
        if not pkg.name or not pkg.version:
            raise PackageDBError(f"record ending at line {line} has no package name or "
                                 "version", path=source)
        try:
            pkg.depends, pkg.provides, pkg.install_if, pkg.replaces  # noqa: B018
        except PackageFormatError as exc:
            raise PackageDBError(f"package {pkg.name}: {exc}", path=source) from None
        return pkg


def parse_installed(data: bytes, *, source: str = "/lib/apk/db/installed"
                    ) -> list[InstalledPackage]:
    """Parse ``installed``; :class:`~suture.errors.PackageDBError` naming ``source`` and
    the line when it is not a well-formed database (or is apk v3's binary format)."""
    if data.startswith(ADB_MAGIC):
        raise PackageDBError("apk v3 (ADB) database format is not supported yet",
                             path=source)
    text = data.decode("utf-8", "surrogateescape")
    if "\0" in text:
        raise PackageDBError("binary data in the database", path=source)
    out: list[InstalledPackage] = []
    names: set[str] = set()
    record: _Record | None = None
    lineno = 0
    for lineno, line in enumerate(text.split("\n"), 1):
        if len(line) < 2:
            if line.strip():
                raise PackageDBError(f"line {lineno}: malformed line {line!r}", path=source)
            if record is not None:
                pkg = record.build(source, lineno)
                if pkg.name in names:
                    raise PackageDBError(f"package {pkg.name} is listed twice", path=source)
                names.add(pkg.name)
                out.append(pkg)
                record = None
            continue
        if line[1] != ":":
            raise PackageDBError(f"line {lineno}: malformed line {line[:60]!r}", path=source)
        letter, value = line[0], line[2:]
        if record is None:
            record = _Record()
        record.lines.append(line + "\n")
        if letter not in _FDB:
            if record.dirs:
                raise PackageDBError(f"line {lineno}: field {letter}: after the file list",
                                     path=source)
            record.fields.append((letter, value))
        elif letter == "F":
            record.close_dir()
            record.dirs.append(DirRecord(value.strip("/")))
        elif letter == "M":
            if not record.dirs or record.files:
                raise PackageDBError(f"line {lineno}: M: outside a directory entry",
                                     path=source)
            record.dirs[-1] = replace(record.dirs[-1], acl=_acl(value, source, lineno))
        elif letter == "R":
            if not record.dirs:
                raise PackageDBError(f"line {lineno}: R: before any F:", path=source)
            if not value or "/" in value:
                raise PackageDBError(f"line {lineno}: bad file name {value!r}", path=source)
            record.files.append(FileRecord(value))
        else:  # a or Z
            if not record.files:
                raise PackageDBError(f"line {lineno}: {letter}: before any R:", path=source)
            last = record.files[-1]
            if letter == "a":
                record.files[-1] = replace(last, acl=_acl(value, source, lineno))
            else:
                record.files[-1] = replace(last, checksum=value)
    if record is not None:
        pkg = record.build(source, lineno)
        if pkg.name in names:
            raise PackageDBError(f"package {pkg.name} is listed twice", path=source)
        out.append(pkg)
    return out


# --------------------------------------------------------------------------- writing

def render_record(pkg: InstalledPackage) -> str:
    """The text apk writes for ``pkg`` (header fields in apk's order, then the files)."""
    # apk-tools 2 writes r: q: s: f: only together with the first F: (a package without
    # files loses them); as written, they are not kept for such a package either.
    fields = _ordered(pkg.fields)
    if not pkg.dirs:
        fields = tuple((k, v) for k, v in fields if k not in "rqsf")
    lines = [f"{k}:{v}\n" for k, v in fields]
    for d in pkg.dirs:
        lines.append(f"F:{d.name}\n")
        if d.acl != DEFAULT_DIR_ACL:
            lines.append(d.acl.render("M"))
        for f in d.files:
            lines.append(f"R:{f.name}\n")
            if f.acl != DEFAULT_FILE_ACL:
                lines.append(f.acl.render("a"))
            if f.checksum:
                lines.append(f"Z:{f.checksum}\n")
    return "".join(lines)


def format_installed(packages: Sequence[InstalledPackage]) -> bytes:
    """The ``installed`` file for ``packages``, in the order given: each record as read
    (or rendered, for new ones), each followed by a blank line."""
    return "".join((p.raw or render_record(p)) + "\n"
                   for p in packages).encode("utf-8", "surrogateescape")


def display_key(name: str) -> tuple[str, str]:
    """apk's order of package names in ``installed`` (case-insensitive, then exact)."""
    return name.lower(), name


# --------------------------------------------------------------------------- world

def parse_world(data: bytes, *, source: str = "/etc/apk/world") -> tuple[Dependency, ...]:
    """The constraints in ``world``; :class:`PackageDBError` for one that does not parse."""
    try:
        return parse_dependencies(data.decode("utf-8", "replace"), allow_tag=True,
                                  source=source)
    except PackageFormatError as exc:
        raise PackageDBError(str(exc), path=source) from None


# --------------------------------------------------------------------------- triggers

def parse_triggers(data: bytes) -> list[tuple[str, tuple[str, ...]]]:
    """``triggers``: ``(package identity, globs)`` per line, in order."""
    out = []
    for line in data.decode("utf-8", "surrogateescape").splitlines():
        parts = line.split()
        if parts:
            out.append((parts[0], tuple(parts[1:])))
    return out


def format_triggers(entries: Iterable[tuple[str, Sequence[str]]]) -> bytes:
    return "".join(f"{ident} {' '.join(globs)}\n" for ident, globs in entries if globs
                   ).encode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------- scripts.tar

@dataclass(frozen=True)
class ScriptMember:
    """One script in ``scripts.tar``: ``<name>-<version>.<identity>.<action>``."""

    name: str
    data: bytes
    mtime: int = 0
    mode: int = 0o755

    @property
    def action(self) -> str:
        return self.name.rpartition(".")[2]

    @property
    def identity(self) -> str:
        head = self.name.rpartition(".")[0]
        return head.rpartition(".")[2]

    @classmethod
    def make(cls, name: str, version: str, identity: str, action: str, data: bytes,
             mtime: int) -> ScriptMember:
        return cls(f"{name}-{version}.{identity}.{action}", data, mtime)


def parse_scripts_tar(data: bytes, *, source: str = "/lib/apk/db/scripts.tar"
                      ) -> list[ScriptMember]:
    """The regular files of ``scripts.tar``, in archive order."""
    if not data:
        return []
    out: list[ScriptMember] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                if member.size > MAX_SCRIPT:
                    raise PackageDBError(f"{member.name}: script over {MAX_SCRIPT} bytes",
                                         path=source)
                fobj = tar.extractfile(member)
                body = fobj.read() if fobj is not None else b""
                out.append(ScriptMember(member.name, body, int(member.mtime),
                                        member.mode & 0o7777))
    except (tarfile.TarError, EOFError) as exc:
        raise PackageDBError(f"unreadable tar: {exc}", path=source) from None
    return out


def _octal(value: int, width: int, nul: bool) -> bytes:
    digits = width - 1 if nul else width
    text = f"{value:0{digits}o}"
    if len(text) > digits:
        raise ValueError(f"{value} does not fit a tar field")
    return text.encode() + (b"\0" if nul else b"")


def format_scripts_tar(members: Iterable[ScriptMember]) -> bytes:
    """``scripts.tar`` as apk writes it: old GNU headers, owner root, end-of-archive."""
    out = bytearray()
    for m in members:
        name = m.name.encode("utf-8", "surrogateescape")
        if len(name) > 100:
            raise PackageDBError(f"script name {m.name!r} too long for scripts.tar",
                                 path="/lib/apk/db/scripts.tar")
        header = bytearray(512)
        header[0:len(name)] = name
        header[100:108] = _octal(m.mode & 0o7777, 8, True)
        header[108:116] = _octal(0, 8, True)
        header[116:124] = _octal(0, 8, True)
        header[124:136] = _octal(len(m.data), 12, False)
        header[136:148] = _octal(m.mtime, 12, False)
        header[156:157] = b"0"
        header[257:265] = b"ustar  \0"
        header[265:269] = b"root"
        header[297:301] = b"root"
        header[148:156] = b" " * 8
        header[148:155] = _octal(sum(header), 7, True)
        out += header
        out += m.data
        out += b"\0" * (-len(m.data) % 512)
    out += b"\0" * 1024
    return bytes(out)


# --------------------------------------------------------------------------- protected paths

NONE, IGNORE, CHANGED, SYMLINKS_ONLY, ALL = range(5)
_MODE_CHARS = {"-": IGNORE, "+": CHANGED, "@": SYMLINKS_ONLY, "!": ALL}
DEFAULT_PROTECTED = "+etc\n@etc/init.d\n!etc/apk\n"


def parse_protected_paths(lists: Iterable[bytes]) -> list[tuple[str, int]]:
    """Rules from apk's defaults plus ``protected_paths.d/*.list`` contents, in order."""
    rules: list[tuple[str, int]] = []
    for data in (DEFAULT_PROTECTED.encode(), *lists):
        for line in data.decode("utf-8", "replace").splitlines():
            if not line or line.startswith("#"):
                continue
            mode = _MODE_CHARS.get(line[0])
            pattern = line[1:] if mode is not None else line
            rules.append((pattern.strip("/"), CHANGED if mode is None else mode))
    return rules


def protect_mode(directory: str, rules: Sequence[tuple[str, int]]) -> int:
    """How apk protects files in ``directory`` (root-relative): rules match one path
    component per level, the last match at a level wins and subdirectories inherit."""
    mode = NONE
    level: list[tuple[str, int]] = list(rules)
    for part in (p for p in directory.split("/") if p):
        deeper: list[tuple[str, int]] = []
        for pattern, rule_mode in level:
            first, slash, rest = pattern.partition("/")
            if not fnmatch.fnmatchcase(part, first):
                continue
            if slash:
                deeper.append((rest, rule_mode))
            else:
                mode = rule_mode
        level = deeper
    return mode


def is_protected(mode: int) -> bool:
    return mode not in (NONE, IGNORE)


def read_lists(files: Mapping[str, bytes], prefix: str) -> list[bytes]:
    """The ``*.list`` files directly under ``prefix``, by name."""
    return [files[p] for p in sorted(files)
            if p.startswith(prefix) and "/" not in p[len(prefix):] and p.endswith(".list")]
