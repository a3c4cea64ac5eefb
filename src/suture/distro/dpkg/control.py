"""Debian control data: deb822 paragraphs, relations, and dpkg's status database.

The same paragraph syntax serves dpkg's ``status`` and ``available`` files,
apt's ``Packages`` indexes, ``DEBIAN/control`` and the per-package files of
distroless images (``/var/lib/dpkg/status.d/<name>``).

Text is decoded as UTF-8 with ``surrogateescape``, so bytes that are not UTF-8
survive a round trip: encode a formatted paragraph with
``.encode("utf-8", "surrogateescape")`` to get the original bytes back.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from functools import lru_cache

from suture.distro.dpkg.version import compare_versions, split_version
from suture.errors import PackageDBError, PackageFormatError

__all__ = [
    "Conffile",
    "InstalledPackage",
    "PackageStatus",
    "Paragraph",
    "Relation",
    "format_paragraph",
    "format_paragraphs",
    "format_relations",
    "parse_conffiles",
    "parse_md5sums",
    "parse_package_status",
    "parse_paragraphs",
    "parse_relations",
    "parse_status",
]


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        return data
    return bytes(data).decode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------- paragraphs

_FIELD_NAME = r"[!\"$-,.-9;-~][!-9;-~]*"  # printable ASCII but ':'; not starting with '#' or '-'
# One field: its name, then everything after the colon up to the end of its last
# continuation line (a line starting with a space or a tab).
_FIELD = re.compile(rf"^({_FIELD_NAME}):([^\n]*(?:\n[ \t][^\n]*)*)", re.M)
# A line that is neither a field, nor a continuation line, nor empty; or a
# continuation line right after an empty line. Anchored on the preceding newline
# (a literal) so the search runs at memchr speed.
_BAD_LINE = re.compile(rf"\n(?:\n+[ \t]|(?!{_FIELD_NAME}:|[ \t\n]|\Z))")
_BAD_START = re.compile(rf"\n*+(?:[ \t]|(?!{_FIELD_NAME}:|\Z))")
_SEPARATOR = re.compile(r"\n\n+")


def _value(raw: str) -> str:
    # Leading blanks of the first line and trailing white space are not part of the value.
    return raw.lstrip(" \t").rstrip()


def _raw(value: str) -> str:
    if "\n" in value and any(line[:1] not in (" ", "\t") for line in value.split("\n")[1:]):
        raise ValueError(f"continuation lines must start with a space or a tab: {value!r}")
    raw = value if value.startswith("\n") else " " + value
    if _value(raw) != value:
        raise ValueError(f"a field value may not start or end with white space: {value!r}")
    return raw


class Paragraph(MutableMapping[str, str]):
    """One deb822 paragraph: an ordered mapping of field name to value.

    Field order and the spelling of field names are kept; lookup ignores case
    (``p["package"]`` finds ``Package``). A value has the leading blanks of its
    first line and trailing white space removed; a multi-line value keeps its
    continuation lines verbatim, each starting with its space (``" ."`` for an
    empty line), joined by ``"\\n"``; a value whose first line is empty (as
    ``Conffiles``) starts with ``"\\n"``. Values that are set must follow those
    rules (:class:`ValueError` otherwise).

    :func:`format_paragraph` gives back, byte for byte, the text a paragraph was
    parsed from; a field that was set is written ``Name: value``.
    """

    __slots__ = ("_fields", "_lower")

    def __init__(self, fields: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        self._fields: dict[str, str] = {}  # name as spelt -> text after the colon, verbatim
        self._lower: dict[str, str] | None = None  # lower-cased name -> name as spelt
        items = fields.items() if isinstance(fields, Mapping) else fields
        for name, value in items:
            self[name] = value

    @classmethod
    def _from_raw(cls, fields: dict[str, str]) -> Paragraph:
        self = cls.__new__(cls)
        self._fields = fields
        self._lower = None
        return self

    def _name(self, key: str) -> str | None:
        if key in self._fields:
            return key
        if self._lower is None:
            self._lower = {name.lower(): name for name in self._fields}
        return self._lower.get(key.lower())

    def __getitem__(self, key: str) -> str:
        raw = self._fields.get(key)
        if raw is None:
            name = self._name(key)
            if name is None:
                raise KeyError(key)
            raw = self._fields[name]
        return _value(raw)

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        """The value of field ``key`` (any case), or ``default``."""
        raw = self._fields.get(key)
        if raw is None:
            name = self._name(key)
            if name is None:
                return default
            raw = self._fields[name]
        return _value(raw)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._name(key) is not None

    def __setitem__(self, key: str, value: str) -> None:
        if not re.fullmatch(_FIELD_NAME, key):
            raise ValueError(f"invalid field name {key!r}")
        raw = _raw(value)
        name = self._name(key)
        if name is None:
            self._fields[key] = raw
            if self._lower is not None:
                self._lower[key.lower()] = key
        else:
            self._fields[name] = raw

    def __delitem__(self, key: str) -> None:
        name = self._name(key)
        if name is None:
            raise KeyError(key)
        del self._fields[name]
        if self._lower is not None:
            del self._lower[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"Paragraph({dict(self.items())!r})"

    def copy(self) -> Paragraph:
        return Paragraph._from_raw(dict(self._fields))

    def rename(self, old: str, new: str) -> None:
        """Change the spelling of a field name, keeping its place and value."""
        name = self._name(old)
        if name is None:
            raise KeyError(old)
        if not re.fullmatch(_FIELD_NAME, new) or (
            new.lower() != name.lower() and new in self
        ):
            raise ValueError(f"cannot rename {old!r} to {new!r}")
        self._fields = {(new if k == name else k): v for k, v in self._fields.items()}
        self._lower = None


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def parse_paragraphs(data: bytes | str, *, source: str = "<control data>") -> list[Paragraph]:
    """Parse deb822 text (a ``status``, ``Packages`` or ``control`` file) into paragraphs.

    Paragraphs are separated by one or more empty lines. A line that is not a
    field, a continuation line or empty, a continuation line with no field, and
    a field given twice in one paragraph (names compare ignoring case) raise
    :class:`PackageDBError` with ``path=source`` and the line number. Comment
    lines are not allowed (dpkg does not allow them in these files), nor are
    CRLF line ends (convert them first). Separators of more than one empty
    line, and a missing final newline, are the only things
    :func:`format_paragraphs` does not reproduce.
    """
    text = _decode(data)
    bad = _BAD_START.match(text) or _BAD_LINE.search(text)
    if bad is not None:
        pos = text.rfind("\n", 0, bad.end()) + 1  # start of the offending line
        line = text[pos:].split("\n", 1)[0]
        raise PackageDBError(f"line {_line_of(text, pos)}: not a field or a continuation line: "
                             f"{line[:80]!r}", path=source)
    paragraphs: list[Paragraph] = []
    from_raw = Paragraph._from_raw
    findall = _FIELD.findall
    # Millions of small objects: the cyclic collector would rescan them over and
    # over (it doubles the time); none of them can form a cycle.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for chunk in _SEPARATOR.split(text):
            if not chunk:
                continue
            pairs = findall(chunk)
            fields = dict(pairs)
            if len(fields) != len(pairs) or len(set(map(str.lower, fields))) != len(fields):
                _raise_duplicate(text, chunk, pairs, source)
            paragraphs.append(from_raw(fields))
    finally:
        if gc_was_enabled:
            gc.enable()
    return paragraphs


def _raise_duplicate(text: str, chunk: str, pairs: list[tuple[str, str]], source: str) -> None:
    seen: set[str] = set()
    for name, _ in pairs:
        if name.lower() in seen:
            break
        seen.add(name.lower())
    pos = text.find(chunk)
    raise PackageDBError(f"paragraph at line {_line_of(text, pos)}: field {name!r} given twice",
                         path=source)


def format_paragraph(paragraph: Paragraph) -> str:
    """The text of one paragraph, each field ending with a newline, no blank line after."""
    return "".join([f"{name}:{raw}\n" for name, raw in paragraph._fields.items()])


def format_paragraphs(paragraphs: Iterable[Paragraph]) -> str:
    """Paragraphs, each followed by one empty line (as in dpkg's ``status``, apt's ``Packages``)."""
    return "".join([format_paragraph(p) + "\n" for p in paragraphs])


# --------------------------------------------------------------------------- relations

_OPERATORS = {"<<": "<<", "<=": "<=", "=": "=", ">=": ">=", ">>": ">>",
              "<": "<=", ">": ">="}  # "<" and ">" are obsolete spellings of "<=" and ">="
_RELATION = re.compile(
    r"""\s*
    (?P<name>[A-Za-z0-9][A-Za-z0-9+._-]*)
    (?::(?P<arch>[A-Za-z0-9][A-Za-z0-9_-]*))?
    \s*
    (?:\(\s*(?:(?P<op><<|<=|>=|>>|<|>|=)\s*)?(?P<version>[^\s()<>=][^\s()]*)\s*\)\s*)?
    (?:\[(?P<arches>[^\]\[]*)\]\s*)?
    (?P<profiles>(?:<[^<>]*>\s*)*)
    \Z""",
    re.X,
)


@dataclass(frozen=True, slots=True)
class Relation:
    """One package named in a relation field, with its optional constraints.

    ``op`` is one of ``<< <= = >= >>`` (the obsolete ``<``/``>`` read as
    ``<=``/``>=``; a version without an operator reads as ``=``) or ``None``.
    ``arch`` is the qualifier after ``:`` (``any``, ``native`` or an
    architecture). ``arches`` is the restriction list (``("amd64", "!i386")``)
    and ``profiles`` the build-profile formula, one tuple per ``<...>`` group;
    both only appear in source-package fields and are kept, not evaluated.
    """

    name: str
    op: str | None = None
    version: str | None = None
    arch: str | None = None
    arches: tuple[str, ...] = ()
    profiles: tuple[tuple[str, ...], ...] = ()

    def __str__(self) -> str:
        text = self.name if self.arch is None else f"{self.name}:{self.arch}"
        if self.op is not None:
            text += f" ({self.op} {self.version})"
        if self.arches:
            text += f" [{' '.join(self.arches)}]"
        for group in self.profiles:
            text += f" <{' '.join(group)}>"
        return text

    def version_matches(self, version: str | None) -> bool:
        """True when ``version`` meets this relation's version constraint.

        An unversioned relation accepts anything, including no version; a
        versioned one never accepts ``None`` (an unversioned ``Provides``).
        """
        if self.op is None:
            return True
        if version is None or self.version is None:
            return False
        c = compare_versions(version, self.version)
        return {"<<": c < 0, "<=": c <= 0, "=": c == 0, ">=": c >= 0, ">>": c > 0}[self.op]

    def satisfied_by(
        self,
        name: str,
        version: str | None,
        provides: Iterable[Relation] = (),
        *,
        architecture: str | None = None,
        multi_arch: str | None = None,
        native: str | None = None,
    ) -> bool:
        """True when package ``name`` at ``version``, or one of its ``provides``, meets this.

        ``provides`` are the candidate's parsed ``Provides``; a versioned
        relation is only met by a provide with ``=`` whose version meets it.
        When the candidate's ``architecture`` and ``native`` (the
        architecture of the package holding the relation) are both given,
        dpkg's multi-arch rules apply, to the package and its provides alike:
        no qualifier needs the same architecture, ``all`` or ``Multi-Arch:
        foreign``; ``:native`` the same architecture or ``all`` and not
        ``foreign`` (as ``dpkg-checkbuilddeps``: dpkg gives ``:native`` no
        meaning outside build dependencies); ``:any`` needs ``Multi-Arch:
        allowed``; an explicit qualifier needs that architecture (``all``
        counting as the native one). Otherwise architecture is not checked.
        """
        if not self._arch_ok(architecture, multi_arch, native):
            return False
        if name == self.name and self.version_matches(version):
            return True
        for provided in provides:
            if provided.name != self.name:
                continue
            if self.op is None or (provided.op == "=" and self.version_matches(provided.version)):
                return True
        return False

    def _arch_ok(self, architecture: str | None, multi_arch: str | None,
                 native: str | None) -> bool:
        if architecture is None or native is None:
            return True
        if self.arch is None:
            return multi_arch == "foreign" or architecture in (native, "all")
        if self.arch == "any":
            return multi_arch == "allowed"
        if self.arch == "native":
            return multi_arch != "foreign" and architecture in (native, "all")
        # dpkg takes an "all" package for one of the native architecture.
        return self.arch in (architecture, native if architecture == "all" else None)


def _invalid_relation(text: str, reason: str) -> PackageFormatError:
    return PackageFormatError(f"invalid relation {text.strip()!r}: {reason}", text=text)


@lru_cache(maxsize=1 << 16)
def _parse_relation(text: str) -> Relation:
    m = _RELATION.match(text)
    if m is None:
        raise _invalid_relation(text, "does not parse")
    op = m["op"]
    version = m["version"]
    if version is not None:
        split_version(version, strict=False)
        op = _OPERATORS[op] if op else "="
    arches: tuple[str, ...] = ()
    if m["arches"] is not None:
        arches = tuple(m["arches"].split())
        if not arches:
            raise _invalid_relation(text, "empty architecture list")
    profiles = tuple(tuple(group.split()) for group in re.findall(r"<([^<>]*)>", m["profiles"]))
    if any(not group for group in profiles):
        raise _invalid_relation(text, "empty build-profile list")
    return Relation(m["name"], op, version, m["arch"], arches, profiles)


def parse_relations(text: str) -> list[list[Relation]]:
    """Parse a relation field (``Depends``, ``Provides``, ``Breaks``...) into groups.

    The result is a list of comma-separated groups, each a list of
    ``|``-separated alternatives. An empty field gives ``[]``. Continuation
    lines are allowed. Anything dpkg would refuse (an empty group or
    alternative, a bad name, operator or version) raises
    :class:`PackageFormatError`.
    """
    if not text.strip():
        return []
    groups: list[list[Relation]] = []
    for group_text in text.split(","):
        group: list[Relation] = []
        for alternative in group_text.split("|"):
            if not alternative.strip():
                raise _invalid_relation(text, "empty relation")
            group.append(_parse_relation(alternative.strip()))
        groups.append(group)
    return groups


def format_relations(groups: Iterable[Iterable[Relation]]) -> str:
    """The canonical text of relation groups: ``a (>= 1) | b, c``."""
    return ", ".join(" | ".join(str(r) for r in group) for group in groups)


# --------------------------------------------------------------------------- status database

WANTS = ("unknown", "install", "hold", "deinstall", "purge")
FLAGS = ("ok", "reinstreq")
STATUSES = ("not-installed", "config-files", "half-installed", "unpacked", "half-configured",
            "triggers-awaited", "triggers-pending", "installed")


@dataclass(frozen=True, slots=True)
class PackageStatus:
    """dpkg's ``Status: want flag status`` triple."""

    want: str
    flag: str
    status: str

    def __str__(self) -> str:
        return f"{self.want} {self.flag} {self.status}"


INSTALLED = PackageStatus("install", "ok", "installed")


def parse_package_status(text: str) -> PackageStatus:
    """Parse a ``Status`` value; an unknown word raises :class:`PackageFormatError`."""
    words = text.split()
    if len(words) != 3:
        raise PackageFormatError(f"invalid Status {text!r}: want three words", text=text)
    want, flag, status = words
    for word, allowed, what in ((want, WANTS, "want"), (flag, FLAGS, "flag"),
                                (status, STATUSES, "status")):
        if word not in allowed:
            raise PackageFormatError(f"invalid Status {text!r}: unknown {what} {word!r}",
                                     text=text)
    return PackageStatus(want, flag, status)


@dataclass(frozen=True, slots=True)
class Conffile:
    """A configuration file dpkg tracks: absolute ``path``, ``md5`` of the shipped file.

    ``md5`` is ``newconffile`` for a conffile unpacked but not yet configured,
    and ``""`` when read from a package's ``DEBIAN/conffiles`` (which has no
    hashes). ``obsolete``: no longer shipped by the package;
    ``remove_on_upgrade``: to be removed when the package is upgraded.
    """

    path: str
    md5: str = ""
    obsolete: bool = False
    remove_on_upgrade: bool = False

    def status_line(self) -> str:
        """The line dpkg writes in the ``Conffiles`` field (without the leading space)."""
        line = f"{self.path} {self.md5}"
        if self.obsolete:
            line += " obsolete"
        if self.remove_on_upgrade:
            line += " remove-on-upgrade"
        return line


def _parse_status_conffiles(value: str) -> tuple[Conffile, ...]:
    conffiles = []
    for line in value.split("\n"):
        words = line.strip().split(" ")
        if words == [""]:
            continue
        flags = {"obsolete": False, "remove-on-upgrade": False}
        while len(words) > 2 and words[-1] in flags:
            flags[words.pop()] = True
        if len(words) < 2 or not words[0].startswith("/"):
            raise PackageFormatError(f"invalid Conffiles line {line.strip()!r}", text=line)
        md5 = words.pop()
        conffiles.append(Conffile(" ".join(words), md5, flags["obsolete"],
                                  flags["remove-on-upgrade"]))
    return tuple(conffiles)


def parse_conffiles(data: bytes | str) -> list[Conffile]:
    """Parse a package's ``DEBIAN/conffiles``: one absolute path a line.

    A line may start with the ``remove-on-upgrade`` flag. Hashes are ``""``.
    """
    conffiles = []
    for line in _decode(data).split("\n"):
        line = line.strip()
        if not line:
            continue
        remove = False
        if line.startswith("remove-on-upgrade "):
            remove, line = True, line.removeprefix("remove-on-upgrade ").lstrip()
        if not line.startswith("/"):
            raise PackageFormatError(f"conffile {line!r} is not an absolute path", text=line)
        conffiles.append(Conffile(line, "", False, remove))
    return conffiles


_MD5SUM_LINE = re.compile(r"([0-9a-fA-F]{32}) [ *](.+)")


def parse_md5sums(data: bytes | str) -> dict[str, str]:
    """Parse an ``md5sums`` file (``<md5>  <path>`` lines) into ``{path: md5}``.

    Paths are kept as written (relative, without a leading ``/``, in dpkg's
    files). A malformed line raises :class:`PackageFormatError`.
    """
    sums: dict[str, str] = {}
    for line in _decode(data).split("\n"):
        if not line.strip():
            continue
        m = _MD5SUM_LINE.fullmatch(line)
        if m is None:
            raise PackageFormatError(f"invalid md5sums line {line[:120]!r}", text=line)
        sums[m[2]] = m[1].lower()
    return sums


RELATION_FIELDS = ("Pre-Depends", "Depends", "Recommends", "Suggests", "Enhances", "Breaks",
                   "Conflicts", "Replaces", "Provides")


@dataclass(frozen=True, slots=True)
class InstalledPackage:
    """One package of dpkg's database, from a ``status`` or ``status.d/`` stanza.

    ``version`` and ``architecture`` are ``""`` when the stanza has none (a
    package that is not installed). ``source_name``/``source_version`` come
    from ``Source: name (version)`` and default to the binary's own. ``status``
    is ``None`` for stanzas without a ``Status`` field, as in distroless
    ``status.d/`` files, where every package listed is installed. The whole
    stanza stays available as ``paragraph``.
    """

    name: str
    version: str
    architecture: str
    source_name: str
    source_version: str
    multi_arch: str
    status: PackageStatus | None
    conffiles: tuple[Conffile, ...]
    paragraph: Paragraph

    @property
    def is_installed(self) -> bool:
        """Installed and configured (or listed without a status, as in ``status.d/``)."""
        return self.status is None or self.status.status in (
            "installed", "triggers-pending", "triggers-awaited")

    @property
    def has_files(self) -> bool:
        """Its files are (at least partly) on disk: any status but not-installed/config-files."""
        return self.status is None or self.status.status not in ("not-installed", "config-files")

    @property
    def essential(self) -> bool:
        return (self.paragraph.get("Essential") or "").lower() == "yes"

    def relations(self, field: str) -> list[list[Relation]]:
        """The parsed relation field ``field`` (``Depends``, ``Provides``...), ``[]`` if absent."""
        return parse_relations(self.paragraph.get(field) or "")

    @property
    def depends(self) -> list[list[Relation]]:
        return self.relations("Depends")

    @property
    def pre_depends(self) -> list[list[Relation]]:
        return self.relations("Pre-Depends")

    @property
    def provides(self) -> list[Relation]:
        """``Provides`` entries (alternatives are not allowed there)."""
        return [r for group in self.relations("Provides") for r in group]


_SOURCE = re.compile(r"(\S+)(?:\s*\((\S+)\s*\))?")
# dpkg's pkg_name_is_illegal (lib/dpkg/parsehelp.c): an ASCII letter or digit, then
# letters, digits and "-+._" (dpkg folds upper case to lower; "_" is deprecated).
_PACKAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9+._-]*")
# dpkg_arch_name_is_illegal (lib/dpkg/arch.c): a letter or digit, then letters, digits, "-".
_ARCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


def _name_problem(name: str) -> str | None:
    """Why dpkg refuses ``name`` as a package name (as ``pkg_name_is_illegal``), or None."""
    if _PACKAGE_NAME.fullmatch(name):
        return None
    if not name[:1].isascii() or not name[:1].isalnum():
        return "must start with an alphanumeric character"
    bad = next(c for c in name if not (c.isascii() and (c.isalnum() or c in "+._-")))
    return f"character {bad!r} not allowed (only letters, digits and characters '-+._')"


def _check_single_line(paragraph: Paragraph, field: str) -> str | None:
    value = paragraph.get(field)
    if value is not None and "\n" in value:
        raise PackageFormatError(f"{field} {value!r} spans more than one line", text=value)
    return value


def _installed_package(paragraph: Paragraph) -> InstalledPackage:
    name = _check_single_line(paragraph, "Package")
    if not name:
        raise PackageFormatError("stanza without a Package field", text=format_paragraph(
            paragraph)[:200])
    problem = _name_problem(name)
    if problem is not None:
        raise PackageFormatError(f"invalid package name {name!r}: {problem}", text=name)
    version = _check_single_line(paragraph, "Version") or ""
    if version:
        split_version(version, strict=False)
    architecture = _check_single_line(paragraph, "Architecture")
    if architecture and not _ARCH_NAME.fullmatch(architecture):
        # dpkg only warns here, but the name becomes part of paths (info/NAME:ARCH.list)
        # and of package URLs, and dpkg cannot match such a package to anything.
        raise PackageFormatError(f"invalid architecture name {architecture!r}", text=architecture)
    status_text = paragraph.get("Status")
    status = None if status_text is None else parse_package_status(status_text)
    source_name, source_version = name, version
    source = paragraph.get("Source")
    if source:
        m = _SOURCE.fullmatch(source)
        if m is None:
            raise PackageFormatError(f"invalid Source {source!r}", text=source)
        source_name = m[1]
        if m[2]:
            split_version(m[2], strict=False)
            source_version = m[2]
    conffiles_text = paragraph.get("Conffiles")
    conffiles = _parse_status_conffiles(conffiles_text) if conffiles_text else ()
    return InstalledPackage(
        name=name,
        version=version,
        architecture=architecture or "",
        source_name=source_name,
        source_version=source_version,
        multi_arch=(paragraph.get("Multi-Arch") or "no").lower(),
        status=status,
        conffiles=conffiles,
        paragraph=paragraph,
    )


def parse_status(
    data: bytes | str, *, source: str = "/var/lib/dpkg/status"
) -> list[InstalledPackage]:
    """Parse dpkg's ``status`` file, or one distroless ``status.d/<name>`` file.

    Every stanza is returned, whatever its status (filter with
    :attr:`InstalledPackage.is_installed`). A malformed stanza, version,
    ``Status`` or ``Conffiles``, a package name dpkg refuses (its
    ``pkg_name_is_illegal``), an illegal architecture name (dpkg warns), or a
    ``Package``, ``Version`` or ``Architecture`` value on more than one line
    raises :class:`PackageDBError` with ``path=source``, naming the stanza by
    number (and by package when its name is valid). Relation fields are parsed
    only when asked for.
    """
    packages = []
    for number, paragraph in enumerate(parse_paragraphs(data, source=source), 1):
        try:
            packages.append(_installed_package(paragraph))
        except PackageFormatError as exc:
            what = paragraph.get("Package")
            stanza = f"stanza {number}"
            if what and _PACKAGE_NAME.fullmatch(what):  # an invalid name is in the message
                stanza += f" (package {what})"
            raise PackageDBError(f"{stanza}: {exc.message}", path=source) from None
    return packages
