"""apt's source lists: ``sources.list`` one-line files and deb822 ``*.sources``.

Everything here is pure: parsers take bytes (plus the path they came from, for
messages) and return :class:`SourceEntry` values; the helpers that add the
standard security and updates suites or swap in mirrors return new lists.

One entry is one (type, URI, suite): a deb822 stanza with two URIs and three
suites gives six entries, in apt's order (types, then URIs, then suites).
Disabled stanzas (``Enabled: no``) and commented-out lines give none.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from suture.distro.dpkg.repoerrors import SourcesError
from suture.distro.mirrors import mirror_url

# Where apt keeps its source lists, as root-relative paths (the image convention).
SOURCES_LIST = "etc/apt/sources.list"
SOURCES_DIR = "etc/apt/sources.list.d/"

DEBIAN_ARCHIVE = "http://deb.debian.org/debian"
DEBIAN_SECURITY = "http://deb.debian.org/debian-security"
UBUNTU_ARCHIVE = "http://archive.ubuntu.com/ubuntu"
UBUNTU_PORTS = "http://ports.ubuntu.com/ubuntu-ports"

# Debian releases whose security suite is "<codename>/updates" (bullseye renamed it
# to "<codename>-security"). All of these now live on archive.debian.org only.
_DEBIAN_OLD_SECURITY = frozenset({"squeeze", "wheezy", "jessie", "stretch", "buster"})
# Debian suites that have neither a security nor an updates suite.
_DEBIAN_NO_UPDATES = frozenset({"sid", "unstable", "experimental", "rc-buggy"})

# deb822 field name -> one-line option name, for the options kept in SourceEntry.options.
_DEB822_OPTIONS = {
    "languages": "lang",
    "targets": "target",
    "pdiffs": "pdiffs",
    "by-hash": "by-hash",
    "allow-insecure": "allow-insecure",
    "allow-weak": "allow-weak",
    "allow-downgrade-to-insecure": "allow-downgrade-to-insecure",
    "valid-until-min": "valid-until-min",
    "valid-until-max": "valid-until-max",
    "check-date": "check-date",
    "date-max-future": "date-max-future",
    "inrelease-path": "inrelease-path",
    "snapshot": "snapshot",
}
# Bounds on what an image's apt configuration may ask for: real images have a few
# entries in files of a few kB (Ubuntu's deb822 file with its inline key is ~3 kB).
MAX_SOURCES_FILE = 1 << 20  # bytes of one sources file
MAX_SOURCES = 256  # distinct entries, once duplicates are dropped
_TRUE = frozenset({"yes", "true", "1", "on", "with", "enable"})
_FALSE = frozenset({"no", "false", "0", "off", "without", "disable"})
_KEY_BEGIN = "-----BEGIN PGP PUBLIC KEY BLOCK-----"


@dataclass(frozen=True)
class SourceEntry:
    """One apt source: a (type, URI, suite) with its components and options.

    ``suite`` ending in ``/`` is a flat repository (no ``dists/``, no components).
    ``signed_by`` holds the ``Signed-By`` paths or fingerprints as written;
    ``signed_by_key`` an inline armored key block (deb822 only), as bytes.
    ``trusted`` and ``check_valid_until`` are ``None`` when the source does not
    say. ``options`` keeps every other option as (one-line name, raw value)
    pairs, in the order written. ``origin`` says where the entry came from
    (``path:line`` or ``path:line`` of the stanza's first line), or
    ``"added"`` for entries made by :func:`add_standard_suites`.
    """

    type: str
    uri: str
    suite: str
    components: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    signed_by: tuple[str, ...] = ()
    signed_by_key: bytes | None = None
    trusted: bool | None = None
    check_valid_until: bool | None = None
    options: tuple[tuple[str, str], ...] = ()
    origin: str = field(default="", compare=False)

    @property
    def flat(self) -> bool:
        return self.suite.endswith("/")

    @property
    def is_binary(self) -> bool:
        return self.type == "deb"

    def option(self, name: str) -> str | None:
        """The raw value of one-line option ``name`` (last one wins), or ``None``."""
        found = None
        for key, value in self.options:
            if key == name:
                found = value
        return found

    def to_line(self) -> str:
        """This entry in one-line format (an inline key is shown as ``signed-by=<inline>``)."""
        opts: list[str] = []
        if self.architectures:
            opts.append("arch=" + ",".join(self.architectures))
        if self.signed_by_key is not None:
            opts.append("signed-by=<inline>")
        elif self.signed_by:
            opts.append("signed-by=" + ",".join(self.signed_by))
        if self.trusted is not None:
            opts.append("trusted=" + ("yes" if self.trusted else "no"))
        if self.check_valid_until is not None:
            opts.append("check-valid-until=" + ("yes" if self.check_valid_until else "no"))
        opts.extend(f"{k}={v}" for k, v in self.options)
        parts = [self.type]
        if opts:
            parts.append("[" + " ".join(opts) + "]")
        parts += [self.uri, self.suite, *self.components]
        return " ".join(parts)


# ---------------------------------------------------------------- one-line format


def _words(line: str, path: str, lineno: int) -> list[str]:
    """Split on whitespace, keeping ``[...]`` and ``"..."`` groups inside one word."""
    words: list[str] = []
    cur: list[str] = []
    close: str | None = None
    started = False
    for ch in line:
        if close is not None:
            cur.append(ch)
            if ch == close:
                close = None
            continue
        if ch.isspace():
            if started:
                words.append("".join(cur))
                cur, started = [], False
            continue
        started = True
        cur.append(ch)
        if ch == "[":
            close = "]"
        elif ch == '"':
            close = '"'
    if close is not None:
        raise SourcesError(f"unterminated {'[' if close == ']' else close!r} group",
                           path=path, line=lineno)
    if started:
        words.append("".join(cur))
    return [w.replace('"', "") if not w.startswith("[") else w for w in words]


def _bool(value: str, what: str, path: str, line: int) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise SourcesError(f"{what}: {value!r} is not yes or no", path=path, line=line)


def _list(value: str) -> tuple[str, ...]:
    return tuple(v for v in re.split(r"[\s,]+", value.strip()) if v)


def _check_type(kind: str, path: str, line: int) -> str:
    if kind not in ("deb", "deb-src"):
        raise SourcesError(f"unknown source type {kind!r} (want deb or deb-src)",
                           path=path, line=line)
    return kind


def parse_sources_list(data: bytes, path: str = "/" + SOURCES_LIST) -> list[SourceEntry]:
    """Parse a one-line ``sources.list`` (or ``sources.list.d/*.list``) file.

    ``#`` starts a comment anywhere on a line, so ``#deb ...`` is no entry.
    Options go in ``[...]`` after the type (``arch=``, ``signed-by=``,
    ``trusted=``, ``check-valid-until=`` become fields, the rest go to
    ``options``; ``arch+=``/``arch-=`` are kept as options). A line that does
    not parse raises :class:`SourcesError` naming ``path`` and the line, as apt
    refuses the whole file.
    """
    text = data.decode("utf-8", "replace")
    entries: list[SourceEntry] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = _words(line, path, lineno)
        kind = _check_type(words[0], path, lineno)
        rest = words[1:]
        archs: tuple[str, ...] = ()
        signed_by: tuple[str, ...] = ()
        trusted: bool | None = None
        valid_until: bool | None = None
        options: list[tuple[str, str]] = []
        if rest and rest[0].startswith("["):
            block = rest.pop(0)
            if not block.endswith("]"):
                raise SourcesError("malformed option block", path=path, line=lineno)
            for opt in block[1:-1].split():
                name, eq, value = opt.partition("=")
                if not eq or not name:
                    raise SourcesError(f"option {opt!r} is not name=value", path=path,
                                       line=lineno)
                lname = name.lower()
                if lname == "arch":
                    archs = _list(value)
                elif lname == "signed-by":
                    signed_by = _list(value)
                elif lname == "trusted":
                    trusted = _bool(value, "trusted", path, lineno)
                elif lname == "check-valid-until":
                    valid_until = _bool(value, "check-valid-until", path, lineno)
                else:
                    options.append((lname, value))
        if len(rest) < 2:
            raise SourcesError("expected a URI and a suite", path=path, line=lineno)
        uri, suite, components = rest[0], rest[1], tuple(rest[2:])
        if not suite.endswith("/") and not components:
            raise SourcesError(f"suite {suite!r} needs at least one component", path=path,
                               line=lineno)
        if suite.endswith("/") and components:
            raise SourcesError(f"flat suite {suite!r} takes no components", path=path,
                               line=lineno)
        entries.append(SourceEntry(
            type=kind, uri=uri, suite=suite, components=components, architectures=archs,
            signed_by=signed_by, trusted=trusted, check_valid_until=valid_until,
            options=tuple(options), origin=f"{path}:{lineno}",
        ))
    return entries


# ---------------------------------------------------------------- deb822 format


def _stanzas(text: str, path: str) -> list[tuple[int, list[tuple[str, list[str], int]]]]:
    """Split deb822 text into stanzas of (field, value lines, line number).

    Comment lines (``#`` in column 0) are dropped wherever they are; a blank line
    ends a stanza. The first value line is what follows the colon; the others are
    continuation lines with their leading whitespace removed.
    """
    stanzas: list[tuple[int, list[tuple[str, list[str], int]]]] = []
    fields: list[tuple[str, list[str], int]] = []
    start = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if line.startswith("#"):
            continue
        if not line:
            if fields:
                stanzas.append((start, fields))
                fields = []
            continue
        if line[0] in " \t":
            if not fields:
                raise SourcesError("continuation line outside a field", path=path,
                                   line=lineno)
            fields[-1][1].append(line.lstrip())
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or " " in name.strip():
            raise SourcesError(f"expected 'Field: value', got {line[:40]!r}", path=path,
                               line=lineno)
        if not fields:
            start = lineno
        fields.append((name.strip(), [value.strip()], lineno))
    if fields:
        stanzas.append((start, fields))
    return stanzas


def _inline_key(lines: list[str]) -> bytes:
    """A multi-line field as the armored block it encodes (``.`` lines are empty lines)."""
    first, *rest = lines
    out = ([first] if first else []) + [("" if ln == "." else ln) for ln in rest]
    return ("\n".join(out).strip() + "\n").encode()


def parse_deb822_sources(data: bytes, path: str = "/" + SOURCES_DIR + "<unnamed>.sources"
                         ) -> list[SourceEntry]:
    """Parse a deb822 ``*.sources`` file.

    ``Types``, ``URIs`` and ``Suites`` are required and may each list several
    values; ``Components`` is required unless the suite is flat (ends in ``/``).
    ``Signed-By`` is either paths/fingerprints or an inline armored key block
    (kept as bytes in :attr:`SourceEntry.signed_by_key`). ``Enabled: no``
    stanzas are skipped. Field names are case-insensitive. A stanza that does
    not parse raises :class:`SourcesError` naming ``path`` and its first line.
    """
    text = data.decode("utf-8", "replace")
    entries: list[SourceEntry] = []
    for start, fields in _stanzas(text, path):
        values: dict[str, list[str]] = {}
        lines: dict[str, int] = {}
        order: list[str] = []
        for name, vals, lineno in fields:
            key = name.lower()
            if key in values:
                raise SourcesError(f"duplicate field {name!r}", path=path, line=lineno)
            values[key] = vals
            lines[key] = lineno
            order.append(key)

        def joined(key: str, values: dict[str, list[str]] = values) -> str:
            return " ".join(values.get(key, [])).strip()

        if "enabled" in values and not _bool(joined("enabled"), "Enabled", path,
                                             lines["enabled"]):
            continue
        for req in ("types", "uris", "suites"):
            if not joined(req):
                raise SourcesError(f"stanza has no {req.capitalize()!r} field",
                                   path=path, line=start)
        types = [_check_type(t, path, lines["types"]) for t in joined("types").split()]
        uris = joined("uris").split()
        suites = joined("suites").split()
        components = tuple(joined("components").split())
        for suite in suites:
            if not suite.endswith("/") and not components:
                raise SourcesError(f"suite {suite!r} needs Components", path=path, line=start)
            if suite.endswith("/") and components:
                raise SourcesError(f"flat suite {suite!r} takes no Components", path=path,
                                   line=start)
        signed_by: tuple[str, ...] = ()
        signed_key: bytes | None = None
        if "signed-by" in values:
            raw = values["signed-by"]
            if any(_KEY_BEGIN in ln for ln in raw):
                signed_key = _inline_key(raw)
            else:
                signed_by = _list(" ".join(raw))
        trusted = (_bool(joined("trusted"), "Trusted", path, lines["trusted"])
                   if "trusted" in values else None)
        valid_until = (_bool(joined("check-valid-until"), "Check-Valid-Until", path,
                             lines["check-valid-until"])
                       if "check-valid-until" in values else None)
        known = {"types", "uris", "suites", "components", "signed-by", "trusted",
                 "check-valid-until", "enabled", "architectures"}
        options = tuple((_DEB822_OPTIONS.get(k, k), joined(k)) for k in order if k not in known)
        for kind in types:
            for uri in uris:
                for suite in suites:
                    entries.append(SourceEntry(
                        type=kind, uri=uri, suite=suite,
                        components=() if suite.endswith("/") else components,
                        architectures=tuple(joined("architectures").split()),
                        signed_by=signed_by, signed_by_key=signed_key, trusted=trusted,
                        check_valid_until=valid_until, options=options,
                        origin=f"{path}:{start}",
                    ))
    return entries


def parse_sources_files(files: Mapping[str, bytes], *, max_bytes: int = MAX_SOURCES_FILE
                        ) -> list[SourceEntry]:
    """Parse every apt source file in ``files`` (path -> content), in apt's order.

    Paths are root-relative or absolute (``etc/apt/sources.list`` or
    ``/etc/apt/sources.list``). ``sources.list`` comes first, then the files of
    ``sources.list.d`` in name order; there ``*.list`` is one-line and
    ``*.sources`` deb822, and any other name (``.save``, ``.disabled``,
    ``.dpkg-dist``) is ignored, as apt does. Other paths are ignored. A file over
    ``max_bytes`` raises :class:`SourcesError` naming it.
    """
    by_path = {p.lstrip("/"): d for p, d in files.items()}
    entries: list[SourceEntry] = []

    def sized(path: str) -> bytes:
        data = by_path[path]
        if len(data) > max_bytes:
            raise SourcesError(f"{len(data)} bytes, over the {max_bytes} byte limit for an "
                               "apt sources file", path="/" + path)
        return data

    if SOURCES_LIST in by_path:
        entries += parse_sources_list(sized(SOURCES_LIST), "/" + SOURCES_LIST)
    for p in sorted(by_path):
        if not p.startswith(SOURCES_DIR) or "/" in p[len(SOURCES_DIR):]:
            continue
        name = p[len(SOURCES_DIR):]
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
            continue  # apt ignores names with other characters
        if name.endswith(".list"):
            entries += parse_sources_list(sized(p), "/" + p)
        elif name.endswith(".sources"):
            entries += parse_deb822_sources(sized(p), "/" + p)
    return entries


def unique_sources(entries: Iterable[SourceEntry], *, limit: int | None = MAX_SOURCES
                   ) -> list[SourceEntry]:
    """``entries`` without repeats, first occurrence kept, in order.

    Two entries are the same when everything but their origin is (a URI's trailing
    ``/`` aside). More than ``limit`` distinct entries raise :class:`SourcesError`
    naming the file of the first one over.
    """
    seen: set[SourceEntry] = set()
    out: list[SourceEntry] = []
    for entry in entries:
        key = replace(entry, uri=entry.uri.rstrip("/"))
        if key in seen:
            continue
        seen.add(key)
        out.append(entry)
        if limit is not None and len(out) > limit:
            path, _, line = entry.origin.rpartition(":")
            raise SourcesError(f"more than {limit} distinct apt sources",
                               path=path or entry.origin or "apt sources",
                               line=int(line) if line.isdigit() else None)
    return out


# ---------------------------------------------------------------- standard suites


def debian_security_suite(codename: str) -> str:
    """The name of Debian's security suite for ``codename``.

    Up to buster it is ``<codename>/updates``; from bullseye on ``<codename>-security``.
    """
    return f"{codename}/updates" if codename in _DEBIAN_OLD_SECURITY else f"{codename}-security"


def _has_suite(entries: Sequence[SourceEntry], names: Iterable[str]) -> bool:
    wanted = set(names)
    return any(e.is_binary and e.suite.rstrip("/") in wanted for e in entries)


def add_standard_suites(
    entries: Sequence[SourceEntry],
    os_id: str,
    codename: str,
    *,
    architecture: str | None = None,
) -> tuple[list[SourceEntry], list[SourceEntry]]:
    """Add the release, security and updates suites an image's sources lack.

    Returns ``(all entries, the ones added)``; the input is not changed and the
    added entries (``origin="added"``) come last.

    - ``debian``: ``<codename>`` and ``<codename>-updates`` at the URI of the
      release's own entry (default ``http://deb.debian.org/debian``), and the
      security suite at ``http://deb.debian.org/debian-security``. The security
      suite is ``<codename>-security`` from bullseye on and ``<codename>/updates``
      up to buster (buster and older are served by archive.debian.org only: map
      them with :func:`apply_mirrors`). ``sid`` has neither.
    - ``ubuntu``: ``<codename>``, ``<codename>-security`` and ``<codename>-updates``
      all at the release's URI (default archive.ubuntu.com, or ports.ubuntu.com
      when ``architecture`` is neither amd64 nor i386).

    Added entries copy components, architectures and Signed-By from the entry
    of the release suite when there is one (else ``main`` for Debian, all four
    components for Ubuntu). Any other ``os_id`` gets nothing added.
    """
    os_id = os_id.lower()
    out = list(entries)
    added: list[SourceEntry] = []
    if os_id not in ("debian", "ubuntu") or not codename:
        return out, added
    base = next((e for e in entries if e.is_binary and e.suite == codename), None)
    if os_id == "debian":
        default_uri = DEBIAN_ARCHIVE
        default_components: tuple[str, ...] = ("main",)
    else:
        default_uri = (UBUNTU_ARCHIVE if architecture in (None, "amd64", "i386")
                       else UBUNTU_PORTS)
        default_components = ("main", "restricted", "universe", "multiverse")
    template = base or SourceEntry(type="deb", uri=default_uri, suite=codename,
                                   components=default_components)

    def add(uri: str, suite: str) -> None:
        entry = SourceEntry(
            type="deb", uri=uri, suite=suite, components=template.components,
            architectures=template.architectures, signed_by=template.signed_by,
            signed_by_key=template.signed_by_key, origin="added",
        )
        out.append(entry)
        added.append(entry)

    if base is None:
        add(template.uri, codename)
    if os_id == "debian" and codename in _DEBIAN_NO_UPDATES:
        return out, added
    if os_id == "debian":
        security = debian_security_suite(codename)
        if not _has_suite(entries, {security, f"{codename}-security", f"{codename}/updates"}):
            add(DEBIAN_SECURITY, security)
    elif not _has_suite(entries, {f"{codename}-security"}):
        add(template.uri, f"{codename}-security")
    if not _has_suite(entries, {f"{codename}-updates"}):
        add(template.uri, f"{codename}-updates")
    return out, added


def apply_mirrors(entries: Sequence[SourceEntry], mirrors: Mapping[str, str]) -> list[SourceEntry]:
    """Replace URI prefixes: ``{"http://deb.debian.org/debian": "http://mirror/debian"}``.

    A prefix matches whole path segments (``.../debian`` does not match
    ``.../debian-security``); the longest matching prefix wins. Entries that no
    prefix matches are returned unchanged.
    """
    out: list[SourceEntry] = []
    for entry in entries:
        uri = mirror_url(entry.uri, mirrors)
        out.append(entry if uri == entry.uri else replace(entry, uri=uri))
    return out
