"""Debian changelogs (deb-changelog(5)) and the CVE identifiers an upgrade brings.

:func:`parse_changelog` reads the format line by line exactly as dpkg's own
parser (``Dpkg::Changelog::Debian``, behind ``dpkg-parsechangelog``) does: a
header ``source (version) distributions; urgency=...``, change lines indented
by two or more blanks, and a trailer `` -- Name <email>  date``. What dpkg
skips is skipped (RCS keywords, ``# `` comments, badly formatted heading and
trailer lines), and where dpkg stops, parsing stops: at Emacs or Vim variable
blocks and at the first line of an old-format changelog (GNU-style dated
lines, ``Old Changelog:``, ``pkg (1.0)`` without distributions...), which
some long-lived packages keep at the bottom.

:func:`cves_between` gives the CVE identifiers of the entries an upgrade from
one version to another brings; :func:`read_deb_changelog` finds the changelog
inside a ``.deb`` (``usr/share/doc/<package>/changelog.Debian.gz``, or
``changelog.gz`` for a native package), following a documentation directory
that is a symlink to another one of the same ``.deb``. Everything is bounded:
the changelog's decompressed size (:data:`MAX_CHANGELOG_SIZE`), and every
pattern runs in time linear in the line (possessive and atomic forms of dpkg's
regular expressions, with the same matches).
"""

from __future__ import annotations

import gzip
import io
import posixpath
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from suture.distro.dpkg.deb import MAX_DATA_SIZE, DataEntry, iter_deb_data
from suture.distro.dpkg.version import split_version, version_key
from suture.errors import LayerError, PackageFormatError, SizeMismatch
from suture.oci.layer import FILE, HARDLINK, SYMLINK, Entry

__all__ = [
    "CHANGELOG_NAMES",
    "MAX_CHANGELOG_SIZE",
    "ChangelogEntry",
    "cves_between",
    "cves_for_update",
    "entries_between",
    "find_cves",
    "parse_changelog",
    "read_deb_changelog",
    "source_version",
]

MAX_CHANGELOG_SIZE = 16 << 20
"""Ceiling on a changelog's decompressed size (the largest in Debian are a few MiB)."""

CHANGELOG_NAMES = ("changelog.Debian.gz", "changelog.Debian", "changelog.gz", "changelog")
"""The Debian changelog's names in a package's documentation directory, best first
(``changelog[.gz]`` is the Debian changelog only for a native package, which has no
``changelog.Debian``)."""

_DOC = "usr/share/doc/"
_MAX_HOPS = 8  # symlinks followed when resolving a path inside one .deb

# --------------------------------------------------------------------------- patterns
# dpkg's patterns (Dpkg/Changelog/Debian.pm, Dpkg/Changelog/Entry/Debian.pm, dpkg
# 1.21), matched per line with Perl's byte semantics: ASCII \w, \s and \d. Where
# dpkg's form backtracks polynomially, the form here is possessive or atomic and
# matches the same lines (each rewrite is noted).

_FLAGS = re.ASCII | re.IGNORECASE | re.VERBOSE

_HEADER = re.compile(r"""
    (\w[-+0-9a-z.]*+)                 # source package name
    [ ]\(([^() \t]++)\)               # version
    ((?:\s++[-+0-9a-z.]++)++)         # distributions
    ;(.*)                             # key=value options (trailing blanks: stripped)
    """, _FLAGS)

_TRAILER_DATE = re.compile(r"""
    ([ ][ ]?)                         # blanks after the '>'
    (                                 # the date
      (\w+,\s*)?                      # day of week
      \d{1,2}\s+\w+\s+\d{4}\s+\d{1,2}:\d\d:\d\d\s+[-+]\d{4}
    )
    \s*
    """, re.ASCII | re.VERBOSE)

_ANCIENT = re.compile(r"""
    (?:
      # GNU style with expanded date: "Day Mon D HH:MM:SS [TZ] YYYY Name <email>".
      # dpkg: \s+[\w\s]*\d{4}\s+(.*)\s+[<(](.*)[)>]; the earliest year and the
      # earliest " <" leave the most room for what follows, so committing to
      # them (atomic groups) accepts the same lines.
      \w++\s++\w++\s++\d{1,2}[ ]\d{1,2}:\d{1,2}:\d{1,2}
      (?>\s+[\w\s]*?\d{4}\s)(?>.*?\s[<(]).*[)>]
    |
      # Old GNU style: "Day Mon D[,] YYYY Name <email>".
      \w++\s++\w++\s++\d{1,2},?\s*\d{4}\s(?>.*?\s[<(]).*[)>]
    |
      # Header without key=value options: "pkg (1.0)".
      \w[-+0-9a-z.]*+[ ]\([^() \t]++\)
    |
      # "pkg-1.0 Debian 1" / "pkg 1.0 Debian 1". dpkg: [\w.+-]+[- ]\S+\ Debian\ \S+;
      # with "-" the first token holds both parts, with " " they are two tokens.
      (?:[\w.+-]++[ ]\S++|(?=[\w.+-]+-\S)\S++)[ ]Debian[ ]\S
    |
      Changes[ ]from[ ]version[ ](?>.*?[ ]to[ ]).*:
    |
      # dpkg: [\w.+-]+-[\w.+-]+:?\s*$; the run must be whole and hold an inner "-".
      Changes[ ]for[ ](?=[\w.+-]+-[\w.+-])[\w.+-]++:?\s*+\Z
    |
      Old[ ]Changelog:\s*+\Z
    |
      (?:\d++:)?\w[\w.+~-]*+:?\s*+\Z
    )
    """, _FLAGS)

_EDITOR_VARIABLES = re.compile(r"(?:;;\s*)?Local[ ]variables:|vim:", _FLAGS)
_RCS_KEYWORD = re.compile(r"\$\w+:.*\$", re.ASCII)
_C_COMMENT = re.compile(r"/\*.*\*/")
_CHANGE = re.compile(r"\s{2,}\S", re.ASCII)
_NON_BLANK = re.compile(r"\S", re.ASCII)
_OPTION = re.compile(r"([-0-9a-z]+)=\s*(.*\S)", re.ASCII | re.IGNORECASE)
_OPTION_SPLIT = re.compile(r"\s*,\s*", re.ASCII)

_CVE = re.compile(r"(?<![A-Za-z0-9])CVE-([0-9]{4})-([0-9]{4,19})(?![0-9])", re.IGNORECASE)

# Parser states, as dpkg names them.
_FIRST_HEADING, _NEXT_OR_EOF, _START_CHANGES, _CHANGES_OR_TRAILER = range(4)


# --------------------------------------------------------------------------- model

def find_cves(text: str) -> tuple[str, ...]:
    """The CVE identifiers in ``text``: upper-case, unique, sorted by year and number.

    ``CVE-2024-1234``, ``cve-2024-1234`` and ``(CVE-2024-1234, CVE-2024-56789)``
    all count; an identifier glued to a preceding letter or digit does not.
    Sorted as strings, as the plan sorts a report's identifiers.
    """
    return tuple(sorted({f"CVE-{y}-{n}" for y, n in _CVE.findall(text)}))


@dataclass(frozen=True, slots=True)
class ChangelogEntry:
    """One entry of a Debian changelog, as ``dpkg-parsechangelog`` sees it.

    ``version`` is ``""`` when the header is missing (change lines after a
    trailer without a new header start a headerless entry, as in dpkg) or
    when its version is not a valid Debian version. ``urgency`` is the first
    word of the ``urgency=`` option, lower-case. ``changes`` are the change
    lines as written (indentation kept, blank lines between them included);
    ``maintainer`` (``Name <email>``) and ``date`` come from the trailer and are
    ``""`` without one.
    """

    header: str
    source: str = ""
    version: str = ""
    distributions: tuple[str, ...] = ()
    urgency: str = ""
    changes: tuple[str, ...] = ()
    maintainer: str = ""
    date: str = ""

    @property
    def cves(self) -> tuple[str, ...]:
        """The CVE identifiers the change lines mention (see :func:`find_cves`)."""
        return find_cves("\n".join(self.changes))


class _Draft:
    """An entry being read."""

    __slots__ = ("changes", "date", "distributions", "header", "maintainer", "source",
                 "trailer", "urgency", "version")

    def __init__(self, header: str | None = None) -> None:
        self.header = header
        self.source = self.version = self.urgency = self.maintainer = self.date = ""
        self.distributions: tuple[str, ...] = ()
        self.changes: list[str] = []
        self.trailer = False

    def empty(self) -> bool:
        return self.header is None and not self.trailer and not self.changes

    def set_header(self, line: str, match: re.Match[str]) -> None:
        self.header = line
        self.source = match.group(1)
        version = match.group(2)
        try:
            split_version(version)
        except PackageFormatError:
            version = ""  # dpkg: "version '...' is invalid"; the entry has no version
        self.version = version
        self.distributions = tuple(match.group(3).split())
        options = match.group(4).strip(" \t\n\r\f\v")
        for option in _OPTION_SPLIT.split(options) if options else ():
            kv = _OPTION.fullmatch(option)
            if kv and kv.group(1).lower() == "urgency" and not self.urgency:
                self.urgency = kv.group(2).split(None, 1)[0].lower()

    def freeze(self) -> ChangelogEntry:
        return ChangelogEntry(self.header or "", self.source, self.version, self.distributions,
                              self.urgency, tuple(self.changes), self.maintainer, self.date)


def _match_trailer(line: str) -> tuple[str, str] | None:
    """``(maintainer, date)`` when ``line`` is a trailer by dpkg's pattern, else None.

    dpkg: `` -- (.*) <(.*)>( ?)(date)\\s*$`` with greedy groups: the last ``>``
    that a date follows ends the e-mail, the last `` <`` before it starts it.
    """
    if not line.startswith(" -- "):
        return None
    end = len(line)
    while True:
        gt = line.rfind(">", 6, end)
        if gt < 0:
            return None
        date = _TRAILER_DATE.fullmatch(line, gt + 1)
        if date:
            break
        end = gt
    lt = line.rfind(" <", 4, gt)
    if lt < 0:
        return None
    return f"{line[4:lt]} <{line[lt + 2:gt]}>", date.group(2)


def parse_changelog(data: bytes, *, max_size: int = MAX_CHANGELOG_SIZE) -> list[ChangelogEntry]:
    """Parse a Debian changelog into its entries, newest (first in the file) first.

    Follows ``dpkg-parsechangelog``'s parser line for line, including its
    tolerance: lines it reports as errors are skipped the same way, and at an
    editor-variables block or the first line in an older changelog format the
    rest of the file is left unparsed. Text is UTF-8 (invalid bytes become
    U+FFFD). Over ``max_size`` bytes: :class:`~suture.errors.SizeMismatch`.
    Pure; never raises anything else.
    """
    if len(data) > max_size:
        raise SizeMismatch("changelog", max_size, len(data), ceiling=True)
    lines = data.decode("utf-8", "replace").split("\n")
    if lines[-1] == "":
        lines.pop()
    entries: list[ChangelogEntry] = []
    entry = _Draft()
    expect = _FIRST_HEADING
    blanks: list[str] = []
    for line in lines:
        header = _HEADER.match(line)
        if header:
            if not entry.empty():
                entries.append(entry.freeze())
                entry = _Draft()
            entry.set_header(line, header)
            expect, blanks = _START_CHANGES, []
        elif _EDITOR_VARIABLES.match(line):
            break  # dpkg keeps the rest as the "unparsed tail"
        elif _RCS_KEYWORD.match(line) or line.startswith("# ") or _C_COMMENT.match(line):
            continue
        elif _ANCIENT.match(line):
            break  # the older format goes on to the end: the "unparsed tail" too
        elif _NON_BLANK.match(line):
            continue  # "badly formatted heading line"
        elif (trailer := _match_trailer(line)) is not None:
            entry.trailer = True
            entry.maintainer, entry.date = trailer
            expect, blanks = _NEXT_OR_EOF, []
        elif line.startswith(" --"):
            continue  # "badly formatted trailer line"
        elif _CHANGE.match(line):
            if expect == _NEXT_OR_EOF and not entry.empty():
                # Change lines after a trailer: dpkg assumes a missed header.
                entries.append(entry.freeze())
                entry = _Draft("")
            entry.changes.extend(blanks)
            entry.changes.append(line)
            expect, blanks = _CHANGES_OR_TRAILER, []
        elif not _NON_BLANK.search(line):
            if expect in (_START_CHANGES, _NEXT_OR_EOF):
                continue
            blanks.append(line)
        elif expect not in (_START_CHANGES, _CHANGES_OR_TRAILER):
            # An unrecognised line (one leading blank): dpkg keeps it as a change
            # only where it did not expect one (and drops it where it did).
            entry.changes.extend(blanks)
            entry.changes.append(line)
            expect, blanks = _CHANGES_OR_TRAILER, []
    if not entry.empty():
        entries.append(entry.freeze())
    return entries


# --------------------------------------------------------------------------- ranges

def _key(version: str, what: str) -> str:
    try:
        return version_key(version)
    except PackageFormatError as exc:
        raise PackageFormatError(f"{what} version {version!r}: {exc.message}",
                                 text=version) from None


def entries_between(entries: Iterable[ChangelogEntry], old: str,
                    new: str) -> list[ChangelogEntry]:
    """The entries an upgrade from ``old`` to ``new`` brings, in file order.

    What ``dpkg-parsechangelog --since old --to new`` selects, with versions
    compared in dpkg's order instead of as strings: the range starts at the
    first entry whose version is ``new`` (else the first one older than
    ``new``) and ends before the first entry whose version is ``old`` (else
    the first one older than ``old``; else it runs to the end). The range is
    positional, not a filter by version, because changelogs are not always in
    version order: a stable update ``1.4-1~deb12u1`` ("Rebuild for bookworm")
    sits above the unstable entry ``1.4-1`` that lists the actual changes,
    and that entry belongs to the upgrade although ``1.4-1 > 1.4-1~deb12u1``.
    An installed version the changelog never had (a binNMU ``1.2-3+b1``, a
    point-release version missing from a backported changelog) ends the range
    at the next older entry. Two of dpkg's quirks are not kept: ``--since``
    naming the newest entry (directly, or as the nearest older one) gives no
    entries here, where dpkg gives the whole changelog, and a ``new`` older
    than every entry gives none. Entries without a valid version lie in the
    range by position.

    ``old`` and ``new`` are source versions (see :func:`source_version`); an
    invalid one raises :class:`~suture.errors.PackageFormatError`.
    """
    entries = list(entries)
    low, high = _key(old, "old"), _key(new, "new")
    keys = [version_key(e.version) if e.version else None for e in entries]
    start = _bound(keys, high)
    stop = _bound(keys, low)
    if start is None:
        return []
    return entries[start:len(entries) if stop is None else stop]


def _bound(keys: list[str | None], key: str) -> int | None:
    """The index of the first entry at ``key``, else of the first one older, else None."""
    for i, k in enumerate(keys):
        if k == key:
            return i
    for i, k in enumerate(keys):
        if k is not None and k < key:
            return i
    return None


def cves_between(entries: Iterable[ChangelogEntry], old: str, new: str) -> tuple[str, ...]:
    """The CVE identifiers mentioned by the entries of :func:`entries_between`:
    upper-case, unique, sorted."""
    return find_cves("\n".join(line for e in entries_between(entries, old, new)
                               for line in e.changes))


def source_version(source: str, version: str) -> str:
    """The source version of a binary package from its ``Source`` field and version.

    ``Source: gcc-defaults (1.203)`` gives ``1.203``; a field without a version
    (or no field, ``""``) means the source version is the binary's. Binary-only
    uploads carry ``(1.2-3)`` in ``Source`` for the binary version ``1.2-3+b1``.
    """
    _, paren, rest = source.partition("(")
    if paren:
        inner = rest.partition(")")[0].strip()
        if inner:
            return inner
    return version


# --------------------------------------------------------------------------- .deb

def _resolve(path: str, links: dict[str, str]) -> str | None:
    """``path`` with every symlink among its components followed, inside the package.

    None when a link leaves the package's documentation tree or loops.
    """
    hops = 0
    parts = path.split("/")
    done: list[str] = []
    while parts:
        done.append(parts.pop(0))
        current = "/".join(done)
        target = links.get(current)
        if target is None:
            continue
        hops += 1
        if hops > _MAX_HOPS:
            return None
        base = "" if target.startswith("/") else posixpath.dirname(current)
        joined = posixpath.normpath(posixpath.join("/", base, target)).lstrip("/")
        if not joined.startswith(_DOC):
            return None
        parts = joined.split("/") + parts
        done = []
    return "/".join(done)


def _gunzip(data: bytes, limit: int, what: str) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb") as f:
            out = f.read(limit + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise LayerError(f"{what}: cannot decompress: {exc}", path=what) from None
    if len(out) > limit:
        raise SizeMismatch(what, limit, len(out), ceiling=True)
    return out


def read_deb_changelog(deb: Path | IO[bytes], package: str, *,
                       max_size: int = MAX_CHANGELOG_SIZE,
                       max_data_size: int = MAX_DATA_SIZE) -> bytes | None:
    """The (decompressed) Debian changelog of ``package`` inside the ``.deb`` ``deb``.

    Looks in ``usr/share/doc/<package>/`` for :data:`CHANGELOG_NAMES` in that
    order, following symlinks that stay under ``usr/share/doc`` inside the same
    ``.deb`` (a documentation directory linked to another one of the package,
    a changelog linked to a sibling's). None when the changelog is not in this
    ``.deb``, typically because ``usr/share/doc/<package>`` links to the
    directory of another binary package of the same source (``libpython3.11``
    -> ``libpython3.11-stdlib`` -> ``libpython3.11-minimal``, ``libgnutlsxx30``
    -> ``libgnutls30``): that package's ``.deb`` has it.

    ``deb`` is a path or a stream positioned at the start of the ``.deb``
    (read to the end of ``data.tar``, never closed). The archive is streamed;
    only files named like a changelog under ``usr/share/doc`` are kept, and
    the result is at most ``max_size`` bytes. Errors: those of
    :func:`~suture.distro.dpkg.deb.iter_deb_data`, :class:`LayerError` for a
    changelog that does not decompress, :class:`SizeMismatch` over ``max_size``.
    """
    if isinstance(deb, Path):
        with deb.open("rb") as stream:
            return _read_changelog(stream, package, deb.name, max_size, max_data_size)
    return _read_changelog(deb, package, "<deb>", max_size, max_data_size)


def _read_changelog(stream: IO[bytes], package: str, source: str, max_size: int,
                    max_data_size: int) -> bytes | None:
    if not package or "/" in package or package in (".", ".."):
        raise PackageFormatError(f"invalid package name {package!r}", text=package)
    return _changelog_of(iter_deb_data(stream, source=source, max_size=max_data_size),
                         package, source, max_size)


def changelog_in(entries: Iterable[Entry], package: str, *,
                 max_size: int = MAX_CHANGELOG_SIZE) -> bytes | None:
    """The changelog of ``package`` among layer ``entries`` already unpacked from its
    ``.deb`` (no second pass over the archive); None when they do not hold it (the
    image's ``path-exclude`` dropped the docs, or the directory links to a sibling's)."""
    if not package or "/" in package or package in (".", ".."):
        raise PackageFormatError(f"invalid package name {package!r}", text=package)
    return _changelog_of(entries, package, package, max_size)


def _changelog_of(entries: Iterable[Entry | DataEntry], package: str, source: str,
                  max_size: int) -> bytes | None:
    files: dict[str, bytes] = {}
    links: dict[str, str] = {}
    for entry in entries:
        if not entry.path.startswith(_DOC):
            continue
        if entry.kind == SYMLINK:
            links[entry.path] = entry.linkname
        elif posixpath.basename(entry.path) in CHANGELOG_NAMES:
            if entry.kind == FILE and entry.data is not None:
                if callable(entry.data):
                    with entry.data() as stream:
                        files[entry.path] = stream.read(max_size + 1)
                else:
                    files[entry.path] = entry.data
            elif entry.kind == HARDLINK and entry.linkname in files:
                files[entry.path] = files[entry.linkname]
    for name in CHANGELOG_NAMES:
        path = _resolve(f"{_DOC}{package}/{name}", links)
        if path is None or path not in files:
            continue
        data = files[path]
        what = f"{source}: {path}"
        if name.endswith(".gz"):
            return _gunzip(data, max_size, what)
        if len(data) > max_size:
            raise SizeMismatch(what, max_size, len(data), ceiling=True)
        return data
    return None


def cves_for_update(deb: Path | IO[bytes], package: str, old_version: str | None,
                    new_version: str, *,
                    max_size: int = MAX_CHANGELOG_SIZE) -> tuple[str, ...] | None:
    """The CVE identifiers of the changelog entries an upgrade of ``package`` brings.

    ``deb`` is the new ``.deb``; ``old_version`` and ``new_version`` are the
    installed and new *source* versions (:func:`source_version`). None when
    this ``.deb`` has no changelog (ask a sibling binary of the same source);
    ``()`` for a newly installed package (``old_version`` None: it fixes
    nothing that was there) or when no entry in range names a CVE.
    """
    data = read_deb_changelog(deb, package, max_size=max_size)
    if data is None:
        return None
    if old_version is None:
        return ()
    return cves_between(parse_changelog(data, max_size=max_size), old_version, new_version)
