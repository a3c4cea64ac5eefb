"""rpm repositories (dnf/yum semantics): the image's ``.repo`` configuration and
variables, rpm-md metadata (``repomd.xml``, ``primary.xml``, metalinks and mirror
lists) parsed, and fetched verified.

Parsers are pure functions over bytes. XML documents that declare a DTD or an
entity are refused before parsing (no entity expansion can happen). Every download
is bounded; ``primary`` is checked against the checksum and size ``repomd.xml``
gives, ``repomd.xml`` against a metalink's hashes when the repository has one and
against its detached signature when ``repo_gpgcheck`` is on.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from suture.distro.errors import OfflineCacheMiss, RepositoryError, SignatureError
from suture.distro.fetch import MAX_INDEX, MAX_META, Fetcher, decompress_index, redact
from suture.distro.mirrors import mirror_url
from suture.distro.rpm.model import (
    SENSE_EQUAL,
    SENSE_GREATER,
    SENSE_LESS,
    SENSE_PREREQ,
    Dep,
    PackageInfo,
    RepoPackage,
)
from suture.errors import DigestMismatch, SizeMismatch

if TYPE_CHECKING:
    from suture.distro.rpm.sign import Keyring

__all__ = [
    "Metalink",
    "RepoConfigError",
    "RepoMDRecord",
    "RpmFetcher",
    "RpmRepository",
    "apply_mirrors",
    "parse_metalink",
    "parse_mirrorlist",
    "parse_primary",
    "parse_repo_files",
    "parse_repomd",
    "releasever_of",
    "repo_variables",
]

log = logging.getLogger(__name__)

MAX_REPO_FILE = 1 << 20
ZYPP_REPOS_D = "etc/zypp/repos.d/"
ZYPP_VARS_D = "etc/zypp/vars.d/"
MAX_PACKAGE = 4 << 30
HASHES = ("sha512", "sha384", "sha256", "sha224", "sha1")  # strongest first
_HASH_ALIASES = {"sha": "sha1"}

_NS_REPO = "{http://linux.duke.edu/metadata/repo}"
_NS_COMMON = "{http://linux.duke.edu/metadata/common}"
_NS_RPM = "{http://linux.duke.edu/metadata/rpm}"
_NS_ML = "{http://www.metalinker.org/}"
_NS_MM = "{http://fedorahosted.org/mirrormanager}"
_FLAGS = {"EQ": SENSE_EQUAL, "LT": SENSE_LESS, "GT": SENSE_GREATER,
          "LE": SENSE_LESS | SENSE_EQUAL, "GE": SENSE_GREATER | SENSE_EQUAL}
_REPO_ID = re.compile(r"[A-Za-z0-9_.:-]+")
_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off"}


class RepoConfigError(RepositoryError):
    """A ``.repo`` file (or dnf.conf) that cannot be read: ``path`` and ``line`` name it."""

    def __init__(self, message: str, *, path: str, line: int = 0) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


@dataclass(frozen=True)
class RpmRepository:
    """One ``[section]`` of a ``.repo`` file, variables expanded. ``order`` is its place
    among all the image's repositories (files sorted by path, sections in file order)."""

    id: str
    name: str = ""
    baseurls: tuple[str, ...] = ()
    metalink: str = ""
    mirrorlist: str = ""
    enabled: bool = True
    gpgcheck: bool = False
    repo_gpgcheck: bool = False
    gpgkeys: tuple[str, ...] = ()
    priority: int = 99
    cost: int = 1000
    module_hotfixes: bool = False
    excludepkgs: tuple[str, ...] = ()
    includepkgs: tuple[str, ...] = ()
    source: str = ""
    order: int = 0


@dataclass(frozen=True)
class RepoMDRecord:
    """One ``<data type=...>`` of ``repomd.xml``; ``revision`` is the document's."""

    type: str
    href: str
    checksum_type: str
    checksum: str
    size: int | None = None
    open_checksum_type: str = ""
    open_checksum: str = ""
    open_size: int | None = None
    timestamp: int | None = None
    revision: str = ""


@dataclass(frozen=True)
class Metalink:
    """A mirror manager's answer for ``repomd.xml``: mirror URLs of ``repomd.xml`` by
    preference (highest first), its expected size, and hash sets ``{type: hex}`` (the
    current one first, then the alternates a mirror may still serve)."""

    urls: tuple[str, ...]
    size: int | None
    hashes: tuple[dict[str, str], ...] = field(default_factory=tuple)

    @property
    def bases(self) -> tuple[str, ...]:
        """The repository base URLs (``.../repodata/repomd.xml`` cut off)."""
        out = []
        for url in self.urls:
            base = url.split("?", 1)[0]
            if base.endswith("/repodata/repomd.xml"):
                base = base[: -len("/repodata/repomd.xml")]
            out.append(base)
        return tuple(out)


# ---------------------------------------------------------------- variables


_VAR = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")
_ARCH_BASE = {"i386": "i386", "i486": "i386", "i586": "i386", "i686": "i386",
              "armv7hl": "armhfp", "armv7hnl": "armhfp", "ppc64le": "ppc64le",
              "aarch64": "aarch64", "x86_64": "x86_64", "s390x": "s390x"}


def repo_variables(files: Mapping[str, bytes], *, basearch: str, releasever: str
                   ) -> dict[str, str]:
    """dnf's substitution variables: ``arch``, ``basearch``, ``releasever`` (with
    ``releasever_major``/``releasever_minor``), then one per file of
    ``etc/yum/vars/`` and ``etc/dnf/vars/`` (dnf's wins; the first line of the file,
    stripped). A vars file naming ``releasever`` overrides the given one, as dnf.
    zypper's ``etc/zypp/vars.d/`` files are read the same way, last."""
    out = {"arch": basearch, "basearch": _ARCH_BASE.get(basearch, basearch)}
    found: dict[str, str] = {}
    for prefix in ("etc/yum/vars/", "etc/dnf/vars/", ZYPP_VARS_D):
        for path in sorted(files):
            rel = path.lstrip("/")
            if not rel.startswith(prefix):
                continue
            name = rel[len(prefix):]
            if not name or "/" in name or not re.fullmatch(r"[A-Za-z0-9_]+", name):
                continue
            text = files[path][:MAX_REPO_FILE].decode("utf-8", "replace")
            lines = text.splitlines()
            found[name] = lines[0].strip() if lines else ""
    rel_ver = found.pop("releasever", "") or releasever
    out["releasever"] = rel_ver
    major, _, minor = rel_ver.partition(".")
    out["releasever_major"] = major
    out["releasever_minor"] = minor
    out.update(found)
    return out


_DISTROVERPKG = ("system-release(releasever)", "system-release", "distribution-release",
                 "redhat-release", "suse-release")


def releasever_of(installed: Sequence[PackageInfo], os_release_version_id: str) -> str:
    """dnf's ``$releasever``: the version of ``system-release(releasever)`` an installed
    package provides (its versioned provide, else the package's version), else the
    version of the package providing ``system-release``, ``distribution-release``,
    ``redhat-release`` or ``suse-release`` (dnf's ``DISTROVERPKG``, in that order),
    else os-release ``VERSION_ID``."""
    for wanted in _DISTROVERPKG:
        for pkg in sorted(installed, key=lambda p: p.name):
            for dep in pkg.provides:
                if dep.name != wanted:
                    continue
                if wanted == "system-release(releasever)" and dep.version:
                    return _strip_evr(dep.version)
                return pkg.version
    return os_release_version_id


def _strip_evr(version: str) -> str:
    """``[E:]V[-R]`` -> ``V``."""
    v = version.split(":", 1)[1] if ":" in version else version
    return v.split("-", 1)[0]


def _expand(text: str, variables: Mapping[str, str]) -> str:
    """``$var``/``${var}`` replaced; unknown variables left as written (as dnf)."""
    def sub(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, match.group(0))
    return _VAR.sub(sub, text)


# ---------------------------------------------------------------- .repo files


def parse_ini(data: bytes, path: str) -> list[tuple[str, int, dict[str, tuple[str, int]]]]:
    """Sections of a yum/dnf INI file, in order: (name, line, {key: (value, line)}).
    Indented lines continue the previous value (a newline joins them)."""
    if len(data) > MAX_REPO_FILE:
        raise RepoConfigError(f"larger than {MAX_REPO_FILE} bytes", path=path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RepoConfigError("not UTF-8 text", path=path) from None
    sections: list[tuple[str, int, dict[str, tuple[str, int]]]] = []
    key: str | None = None
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            if not stripped:
                key = None
            continue
        if raw[0] in " \t" and key is not None and sections:
            entries = sections[-1][2]
            value, at = entries[key]
            entries[key] = (f"{value}\n{stripped}" if value else stripped, at)
            continue
        if stripped.startswith("["):
            if not stripped.endswith("]") or len(stripped) < 3:
                raise RepoConfigError(f"malformed section header {stripped!r}", path=path,
                                      line=no)
            name = stripped[1:-1].strip()
            if not name or any(c.isspace() for c in name):
                raise RepoConfigError(f"malformed section name {name!r}", path=path, line=no)
            sections.append((name, no, {}))
            key = None
            continue
        k, eq, v = stripped.partition("=")
        if not eq or not k.strip():
            raise RepoConfigError(f"not KEY=VALUE: {stripped[:80]!r}", path=path, line=no)
        if not sections:
            raise RepoConfigError("an option before any [section]", path=path, line=no)
        key = k.strip().lower()
        sections[-1][2][key] = (v.strip(), no)
    return sections


def _bool(value: tuple[str, int] | None, default: bool, path: str) -> bool:
    if value is None:
        return default
    v = value[0].strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise RepoConfigError(f"not a boolean: {value[0]!r}", path=path, line=value[1])


def _int(value: tuple[str, int] | None, default: int, path: str) -> int:
    if value is None or not value[0].strip():
        return default
    try:
        return int(value[0].strip())
    except ValueError:
        raise RepoConfigError(f"not a number: {value[0]!r}", path=path, line=value[1]) from None


def _list(value: tuple[str, int] | None, variables: Mapping[str, str]) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(_expand(v, variables) for v in re.split(r"[\s,]+", value[0]) if v)


def parse_repo_files(files: Mapping[str, bytes], variables: Mapping[str, str], *,
                     dnf_conf: bytes | None = None) -> list[RpmRepository]:
    """The repositories of ``files`` (path -> contents of each ``.repo``), in order of
    path then section, disabled ones included (``enabled=False``).

    ``dnf_conf``'s ``[main]`` gives the defaults of ``gpgcheck``, ``repo_gpgcheck``,
    ``priority`` and ``cost``; its other sections are repositories too, first (as dnf
    reads them), with ``source`` ``etc/dnf/dnf.conf``. A repository id seen twice keeps
    its first definition and an id with characters dnf refuses is skipped (as dnf,
    which warns). A malformed line raises :class:`RepoConfigError` naming the file and
    line. ``reposdir`` is not followed: the caller passes the files.
    """
    defaults: dict[str, tuple[str, int]] = {}
    if dnf_conf is not None:
        for name, _, entries in parse_ini(dnf_conf, "etc/dnf/dnf.conf"):
            if name == "main":
                defaults = entries
    d_gpg = _bool(defaults.get("gpgcheck"), False, "etc/dnf/dnf.conf")
    d_repo_gpg = _bool(defaults.get("repo_gpgcheck"), False, "etc/dnf/dnf.conf")
    d_prio = _int(defaults.get("priority"), 99, "etc/dnf/dnf.conf")
    d_cost = _int(defaults.get("cost"), 1000, "etc/dnf/dnf.conf")
    out: list[RpmRepository] = []
    seen: set[str] = set()
    sources = [("etc/dnf/dnf.conf", dnf_conf)] if dnf_conf is not None else []
    sources += [(path, files[path]) for path in sorted(files)]
    for path, data in sources:
        for name, _line, e in parse_ini(data, path):
            if name == "main":
                continue
            repo_id = _expand(name, variables)
            if not _REPO_ID.fullmatch(repo_id):
                log.warning("%s: bad repository id %r, ignored", path, repo_id)
                continue
            if repo_id in seen:
                log.warning("%s: repository %s defined again, ignored", path, repo_id)
                continue
            seen.add(repo_id)
            raw_name = e.get("name")
            out.append(RpmRepository(
                id=repo_id,
                name=_expand(raw_name[0], variables) if raw_name else repo_id,
                baseurls=_list(e.get("baseurl"), variables),
                metalink=_expand(e["metalink"][0], variables) if "metalink" in e else "",
                mirrorlist=_expand(e["mirrorlist"][0], variables) if "mirrorlist" in e else "",
                enabled=_bool(e.get("enabled"), True, path),
                gpgcheck=_bool(e.get("gpgcheck"), d_gpg, path),
                repo_gpgcheck=_bool(e.get("repo_gpgcheck"), d_repo_gpg, path),
                gpgkeys=_list(e.get("gpgkey"), variables),
                priority=_int(e.get("priority"), d_prio, path),
                cost=_int(e.get("cost"), d_cost, path),
                module_hotfixes=_bool(e.get("module_hotfixes"), False, path),
                excludepkgs=_list(e.get("excludepkgs") or e.get("exclude"), variables),
                includepkgs=_list(e.get("includepkgs"), variables),
                source=path,
                order=len(out),
            ))
    return out


def parse_zypp_repo_files(files: Mapping[str, bytes], variables: Mapping[str, str], *,
                          first: int = 0) -> list[RpmRepository]:
    """zypper's repositories (``etc/zypp/repos.d/*.repo``), in order of path then section,
    disabled ones included; ``first`` is the ``order`` of the first one.

    As libzypp reads them: ``enabled`` defaults to on; ``gpgcheck`` (default on) checks
    both the signature of ``repomd.xml`` and the packages', and ``repo_gpgcheck`` /
    ``pkg_gpgcheck`` set each on its own; ``path`` is appended to ``baseurl``;
    ``priority`` is 99 unless given (lower wins, as dnf). A repository whose ``type`` is
    not ``rpm-md`` (``yast2``, ``plaindir``) is an error naming the file and line.
    """
    out: list[RpmRepository] = []
    seen: set[str] = set()
    for path in sorted(files):
        for name, line, e in parse_ini(files[path], path):
            repo_id = _expand(name, variables)
            if not _REPO_ID.fullmatch(repo_id) or repo_id in seen:
                log.warning("%s: repository id %r bad or seen before, ignored", path, repo_id)
                continue
            seen.add(repo_id)
            kind = e.get("type", ("rpm-md", line))
            if kind[0].lower() not in ("rpm-md", "rpmmd", "yum", ""):
                raise RepoConfigError(f"repository {repo_id}: type {kind[0]} is not supported "
                                      "(only rpm-md)", path=path, line=kind[1])
            check = _bool(e.get("gpgcheck"), True, path)
            sub = e.get("path", ("", 0))[0].strip().strip("/")
            bases = tuple(f"{b.rstrip('/')}/{sub}" if sub else b
                          for b in _list(e.get("baseurl"), variables))
            raw_name = e.get("name")
            out.append(RpmRepository(
                id=repo_id,
                name=_expand(raw_name[0], variables) if raw_name else repo_id,
                baseurls=bases,
                mirrorlist=_expand(e["mirrorlist"][0], variables) if "mirrorlist" in e else "",
                enabled=_bool(e.get("enabled"), True, path),
                gpgcheck=_bool(e.get("pkg_gpgcheck"), check, path),
                repo_gpgcheck=_bool(e.get("repo_gpgcheck"), check, path),
                gpgkeys=_list(e.get("gpgkey"), variables),
                priority=_int(e.get("priority"), 99, path),
                source=path,
                order=first + len(out),
            ))
    return out


def apply_mirrors(repositories: Sequence[RpmRepository], mirrors: Mapping[str, str]
                  ) -> list[RpmRepository]:
    """The repositories with the user's ``--mirror`` prefixes applied to their URLs."""
    return [replace(r, baseurls=tuple(mirror_url(u, mirrors) for u in r.baseurls),
                    metalink=mirror_url(r.metalink, mirrors) if r.metalink else "",
                    mirrorlist=mirror_url(r.mirrorlist, mirrors) if r.mirrorlist else "")
            for r in repositories]


# ---------------------------------------------------------------- XML


def _xml(data: bytes, what: str, limit: int = MAX_INDEX) -> ET.Element:
    """``data`` parsed, refusing DTDs and entity declarations (no expansion attacks)."""
    if len(data) > limit:
        raise SizeMismatch(what, limit, len(data), ceiling=True)
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise RepositoryError(f"{what}: XML with a DTD or entity declaration refused")
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        raise RepositoryError(f"{what}: malformed XML ({exc})") from None


def _int_or_none(text: str | None, what: str) -> int | None:
    if text is None or not text.strip():
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise RepositoryError(f"{what}: not a number: {text[:40]!r}") from None
    if value < 0:
        raise RepositoryError(f"{what}: negative number {value}")
    return value


def _hash_name(name: str | None, what: str) -> str:
    n = (name or "").strip().lower()
    n = _HASH_ALIASES.get(n, n)
    if n not in HASHES and n != "md5":
        raise RepositoryError(f"{what}: unknown checksum type {name!r}")
    return n


def _hex(text: str | None, kind: str, what: str) -> str:
    value = (text or "").strip().lower()
    if len(value) != hashlib.new(kind).digest_size * 2 or \
            any(c not in "0123456789abcdef" for c in value):
        raise RepositoryError(f"{what}: malformed {kind} checksum {value[:80]!r}")
    return value


def parse_repomd(data: bytes, *, what: str) -> dict[str, RepoMDRecord]:
    """``repomd.xml``'s records by type (``primary``, ``filelists``, ``modules``...)."""
    root = _xml(data, what, MAX_META)
    if root.tag != f"{_NS_REPO}repomd":
        raise RepositoryError(f"{what}: not a repomd document (root {root.tag!r})")
    revision = (root.findtext(f"{_NS_REPO}revision") or "").strip()
    out: dict[str, RepoMDRecord] = {}
    for node in root.findall(f"{_NS_REPO}data"):
        kind = node.get("type", "")
        where = f"{what}: {kind or 'data'}"
        loc = node.find(f"{_NS_REPO}location")
        href = loc.get("href", "") if loc is not None else ""
        if not kind or not href:
            raise RepositoryError(f"{where}: record without type or location")
        cs = node.find(f"{_NS_REPO}checksum")
        if cs is None:
            raise RepositoryError(f"{where}: record without checksum")
        ctype = _hash_name(cs.get("type"), where)
        ocs = node.find(f"{_NS_REPO}open-checksum")
        otype = _hash_name(ocs.get("type"), where) if ocs is not None else ""
        out[kind] = RepoMDRecord(
            type=kind, href=href, checksum_type=ctype,
            checksum=_hex(cs.text, ctype, where),
            size=_int_or_none(node.findtext(f"{_NS_REPO}size"), where),
            open_checksum_type=otype,
            open_checksum=_hex(ocs.text, otype, where) if ocs is not None else "",
            open_size=_int_or_none(node.findtext(f"{_NS_REPO}open-size"), where),
            timestamp=_int_or_none(node.findtext(f"{_NS_REPO}timestamp"), where),
            revision=revision)
    return out


def _deps(node: ET.Element | None, what: str) -> tuple[Dep, ...]:
    if node is None:
        return ()
    out = []
    for entry in node.findall(f"{_NS_RPM}entry"):
        name = entry.get("name", "")
        if not name:
            raise RepositoryError(f"{what}: dependency without a name")
        flags = 0
        version = ""
        op = entry.get("flags")
        if op:
            if op not in _FLAGS:
                raise RepositoryError(f"{what}: unknown dependency flags {op!r}")
            flags = _FLAGS[op]
            epoch = entry.get("epoch")
            ver = entry.get("ver", "")
            rel = entry.get("rel")
            version = f"{epoch}:{ver}" if epoch and epoch != "0" else ver
            if rel:
                version = f"{version}-{rel}"
        if entry.get("pre") in ("1", "true"):
            flags |= SENSE_PREREQ
        out.append(Dep(name, flags, version))
    return tuple(out)


_XML_BASE = "{http://www.w3.org/XML/1998/namespace}base"


def _packages(data: bytes, what: str) -> Iterator[ET.Element]:
    """primary's ``<package>`` elements one at a time, each dropped from the tree once
    the caller has it (a large primary is never held as one tree)."""
    if len(data) > MAX_INDEX:
        raise SizeMismatch(what, MAX_INDEX, len(data), ceiling=True)
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise RepositoryError(f"{what}: XML with a DTD or entity declaration refused")
    parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("start", "end"))
    root: ET.Element | None = None
    step = 1 << 20
    chunks = [data[at:at + step] for at in range(0, len(data), step)] + [b""]
    try:
        for chunk in chunks:
            if chunk:
                parser.feed(chunk)
            else:
                parser.close()
            for item in parser.read_events():
                event, node = item[0], item[-1]
                if not isinstance(node, ET.Element):
                    continue
                if event == "start":
                    if root is None:
                        root = node
                        if node.tag != f"{_NS_COMMON}metadata":
                            raise RepositoryError(
                                f"{what}: not a primary document (root {node.tag!r})")
                    continue
                if node.tag == f"{_NS_COMMON}package" and root is not None:
                    yield node
                    root.clear()
    except ET.ParseError as exc:
        raise RepositoryError(f"{what}: malformed XML ({exc})") from None
    if root is None:
        raise RepositoryError(f"{what}: empty document")


def parse_primary(data: bytes, *, repo: RpmRepository, base_url: str, what: str
                  ) -> list[RepoPackage]:
    """The packages of a decompressed ``primary.xml``. ``location`` is the href as
    written (relative to ``base_url``, or to its ``xml:base`` when one is given, which
    becomes the package's ``base_url``). Dependency versions are ``[E:]V[-R]`` with a
    zero epoch left out, flags rpm's ``RPMSENSE_*`` bits (``pre="1"`` adds
    ``SENSE_PREREQ``)."""
    out: list[RepoPackage] = []
    for node in _packages(data, what):
        if node.get("type") != "rpm":
            continue
        name = (node.findtext(f"{_NS_COMMON}name") or "").strip()
        where = f"{what}: {name or 'package'}"
        ver = node.find(f"{_NS_COMMON}version")
        loc = node.find(f"{_NS_COMMON}location")
        cs = node.find(f"{_NS_COMMON}checksum")
        if not name or ver is None or loc is None or cs is None or not loc.get("href"):
            raise RepositoryError(f"{where}: package without name, version, location or "
                                  "checksum")
        ctype = _hash_name(cs.get("type"), where)
        size = node.find(f"{_NS_COMMON}size")
        fmt = node.find(f"{_NS_COMMON}format")
        epoch = _int_or_none(ver.get("epoch"), where)
        provides: tuple[Dep, ...] = ()
        requires: tuple[Dep, ...] = ()
        obsoletes: tuple[Dep, ...] = ()
        conflicts: tuple[Dep, ...] = ()
        files: tuple[str, ...] = ()
        sourcerpm = ""
        if fmt is not None:
            provides = _deps(fmt.find(f"{_NS_RPM}provides"), where)
            requires = _deps(fmt.find(f"{_NS_RPM}requires"), where)
            obsoletes = _deps(fmt.find(f"{_NS_RPM}obsoletes"), where)
            conflicts = _deps(fmt.find(f"{_NS_RPM}conflicts"), where)
            files = tuple((f.text or "") for f in fmt.findall(f"{_NS_COMMON}file"))
            sourcerpm = (fmt.findtext(f"{_NS_RPM}sourcerpm") or "").strip()
        out.append(RepoPackage(
            name=name, epoch=epoch, version=ver.get("ver", ""), release=ver.get("rel", ""),
            arch=(node.findtext(f"{_NS_COMMON}arch") or "").strip(),
            provides=provides, requires=requires, obsoletes=obsoletes, conflicts=conflicts,
            files=files, sourcerpm=sourcerpm,
            location=loc.get("href", ""), base_url=loc.get(_XML_BASE) or base_url,
            checksum_type=ctype, checksum=_hex(cs.text, ctype, where),
            size=_int_or_none(size.get("package") if size is not None else None, where) or 0,
            repo_id=repo.id, repo_order=repo.order, priority=repo.priority))
    return out


def parse_metalink(data: bytes, *, what: str) -> Metalink:
    """A metalink 3.0 document (Fedora's, CentOS's mirror managers) for ``repomd.xml``."""
    root = _xml(data, what, MAX_META)
    if root.tag != f"{_NS_ML}metalink":
        raise RepositoryError(f"{what}: not a metalink document (root {root.tag!r})")
    file = None
    for f in root.iter(f"{_NS_ML}file"):
        if f.get("name") == "repomd.xml":
            file = f
            break
    if file is None:
        raise RepositoryError(f"{what}: no repomd.xml in the metalink")

    def hashes(node: ET.Element | None) -> dict[str, str]:
        found: dict[str, str] = {}
        if node is None:
            return found
        for h in node.iter(f"{_NS_ML}hash"):
            kind = _HASH_ALIASES.get((h.get("type") or "").lower(), (h.get("type") or "").lower())
            if kind in HASHES:
                found[kind] = _hex(h.text, kind, what)
        return found

    sets = [hashes(file.find(f"{_NS_ML}verification"))]
    for alt in file.iter(f"{_NS_MM}alternate"):
        sets.append(hashes(alt))
    sets = [s for s in sets if s]
    ranked: list[tuple[int, int, str]] = []
    for i, u in enumerate(file.iter(f"{_NS_ML}url")):
        url = (u.text or "").strip()
        if urlsplit(url).scheme not in ("http", "https"):
            continue
        pref = _int_or_none(u.get("preference"), what) or 0
        ranked.append((-pref, i, url))
    urls = tuple(u for _, _, u in sorted(ranked))
    if not urls:
        raise RepositoryError(f"{what}: metalink lists no http(s) mirror")
    return Metalink(urls, _int_or_none(file.findtext(f"{_NS_ML}size"), what), tuple(sets))


def parse_mirrorlist(data: bytes, *, what: str) -> tuple[str, ...]:
    """A mirror list: one base URL per line, ``#`` comments; only http(s) URLs kept."""
    if len(data) > MAX_META:
        raise SizeMismatch(what, MAX_META, len(data), ceiling=True)
    if data.lstrip().startswith(b"<"):
        raise RepositoryError(f"{what}: an XML document, not a mirror list (a metalink?)")
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if urlsplit(line).scheme in ("http", "https"):
            out.append(line)
    if not out:
        raise RepositoryError(f"{what}: mirror list names no http(s) mirror")
    return tuple(out)


# ---------------------------------------------------------------- fetching


def _join(base: str, href: str, what: str) -> str:
    """``href`` under ``base``; an href with ``..``, or absolute on another host, refused."""
    parts = urlsplit(href)
    if any(seg == ".." for seg in parts.path.split("/")):
        raise RepositoryError(f"{what}: location {href!r} leaves the repository")
    if parts.scheme or parts.netloc:
        b = urlsplit(base)
        if (parts.scheme, parts.netloc) != (b.scheme, b.netloc):
            raise RepositoryError(f"{what}: location {redact(href)!r} is on another host")
        return href
    if href.startswith("/"):
        raise RepositoryError(f"{what}: absolute location {href!r}")
    return urljoin(base.rstrip("/") + "/", href)


def _compression(href: str) -> str:
    for suffix, kind in ((".gz", "gzip"), (".xz", "xz"), (".bz2", "bzip2"),
                         (".zst", "zstd"), (".zck", "zck")):
        if href.endswith(suffix):
            return kind
    return "none"


def _decompress(data: bytes, kind: str, *, limit: int, what: str) -> bytes:
    if kind == "zck":
        raise RepositoryError(f"{what}: zchunk metadata is not supported")
    if kind != "zstd":
        return decompress_index(io.BytesIO(data), kind, limit=limit, what=what)
    import zstandard

    out = bytearray()
    try:
        with zstandard.ZstdDecompressor().stream_reader(
                io.BytesIO(data), read_across_frames=True) as reader:
            while chunk := reader.read(1 << 20):
                out += chunk
                if len(out) > limit:
                    raise SizeMismatch(what, limit, len(out), ceiling=True)
    except zstandard.ZstdError as exc:
        raise RepositoryError(f"{what}: corrupt zstd stream ({exc})") from None
    return bytes(out)


def _digest(kind: str, data: bytes) -> str:
    return hashlib.new(kind, data).hexdigest()


def _file_digest(kind: str, path: Path) -> str:
    h = hashlib.new(kind)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class RpmFetcher:
    """rpm-md metadata and packages through a :class:`~suture.distro.fetch.Fetcher` (its
    cache, retries, offline mode and host checks). ``mirrors`` are the user's
    ``--mirror`` prefixes, applied to every repository URL (baseurl, metalink, mirror
    list, and the mirrors a metalink or mirror list names). ``modules`` holds, by
    repository id, the decompressed ``modules.yaml`` of each fetched repository that
    has one (checked against repomd as primary is)."""

    def __init__(self, fetcher: Fetcher, *, mirrors: Mapping[str, str] | None = None) -> None:
        self.fetcher = fetcher
        self.mirrors = dict(mirrors or {})
        self.modules: dict[str, bytes] = {}

    def _m(self, url: str) -> str:
        return mirror_url(url, self.mirrors) if self.mirrors else url

    def fetch_repository(self, repo: RpmRepository, *, keys: Keyring | None = None
                         ) -> list[RepoPackage]:
        """The packages of ``repo``'s ``primary``, verified: from its first base URL that
        answers (baseurl; else a metalink's mirrors, ``repomd.xml`` checked against the
        metalink's size and hashes; else a mirror list's). With ``repo_gpgcheck``,
        ``repomd.xml.asc`` must verify with ``keys``. Raises
        :class:`~suture.distro.errors.RepositoryError` subclasses, and
        :class:`~suture.errors.DigestMismatch` naming the repository when primary's
        checksum is not repomd's. When no mirror works, the first integrity failure
        (checksum, size, signature) is raised, else the last mirror's. Offline, every
        mirror's cached copy is tried."""
        metalink: Metalink | None = None
        if repo.baseurls:
            bases = tuple(self._m(u) for u in repo.baseurls)
        elif repo.metalink:
            url = self._m(repo.metalink)
            metalink = parse_metalink(self.fetcher.fetch_meta(url, f"{repo.id}: metalink"),
                                      what=f"{repo.id}: metalink {redact(url)}")
            bases = tuple(self._m(b) for b in metalink.bases)
        elif repo.mirrorlist:
            url = self._m(repo.mirrorlist)
            bases = tuple(self._m(b) for b in parse_mirrorlist(
                self.fetcher.fetch_meta(url, f"{repo.id}: mirrorlist"),
                what=f"{repo.id}: mirrorlist {redact(url)}"))
        else:
            raise RepositoryError(f"{repo.id} ({repo.source}): no baseurl, metalink or "
                                  "mirrorlist")
        failures: list[Exception] = []
        for base in bases:
            try:
                return self._from_base(repo, base.rstrip("/"), metalink, keys)
            except (RepositoryError, DigestMismatch, SizeMismatch) as exc:
                if len(bases) == 1:
                    raise
                log.info("%s: %s failed (%s), trying the next mirror", repo.id, redact(base),
                         exc)
                failures.append(exc)
        # what says the metadata was tampered with outranks an unreachable mirror
        raise next((f for f in failures if isinstance(
            f, DigestMismatch | SizeMismatch | SignatureError)), failures[-1])

    def _from_base(self, repo: RpmRepository, base: str, metalink: Metalink | None,
                   keys: Keyring | None) -> list[RepoPackage]:
        url = f"{base}/repodata/repomd.xml"
        what = f"{repo.id}: {redact(url)}"
        repomd = self.fetcher.fetch_meta(url, f"{repo.id}: repomd.xml")
        if metalink is not None:
            self._check_metalink(repomd, metalink, what)
        if repo.repo_gpgcheck:
            if keys is None or not len(keys):
                raise RepositoryError(f"{repo.id}: repo_gpgcheck is on and no key is "
                                      "trusted", url=redact(url))
            asc = self.fetcher.fetch_meta(url + ".asc", f"{repo.id}: repomd.xml.asc")
            keys.verify_armored_detached(repomd, asc, what=what)
        records = parse_repomd(repomd, what=what)
        primary = records.get("primary")
        if primary is None:
            raise RepositoryError(f"{what}: no primary record", url=redact(url))
        pwhat = f"{repo.id}: primary {redact(_join(base, primary.href, what))}"
        data = self._record(base, primary, pwhat, what)
        packages = parse_primary(data, repo=repo, base_url=base, what=pwhat)
        modules = records.get("modules")
        if modules is not None:
            mwhat = f"{repo.id}: modules {redact(_join(base, modules.href, what))}"
            self.modules[repo.id] = self._record(base, modules, mwhat, what)
        # a location's xml:base is a URL of the repository's own: the mirrors apply to it
        return [p if p.base_url == base else replace(p, base_url=self._m(p.base_url))
                for p in packages]

    def _record(self, base: str, record: RepoMDRecord, rwhat: str, what: str) -> bytes:
        """A repomd record's file, decompressed, checked against repomd's checksums."""
        blob = self._fetch_checked(_join(base, record.href, what), record.checksum_type,
                                   record.checksum, record.size, rwhat, MAX_INDEX)
        data = _decompress(blob.read_bytes(), _compression(record.href),
                           limit=self.fetcher.max_index, what=rwhat)
        if record.open_checksum:
            got = _digest(record.open_checksum_type, data)
            if got != record.open_checksum:
                raise DigestMismatch(rwhat + " (decompressed)",
                                     f"{record.open_checksum_type}:{record.open_checksum}",
                                     f"{record.open_checksum_type}:{got}")
        return data

    @staticmethod
    def _check_metalink(repomd: bytes, metalink: Metalink, what: str) -> None:
        if metalink.size is not None and len(repomd) != metalink.size:
            raise SizeMismatch(what + " (metalink)", metalink.size, len(repomd))
        if not metalink.hashes:
            return
        for hashes in metalink.hashes:
            kind = next(k for k in HASHES if k in hashes)
            if _digest(kind, repomd) == hashes[kind]:
                return
        first = metalink.hashes[0]
        kind = next(k for k in HASHES if k in first)
        raise DigestMismatch(what + " (metalink)", f"{kind}:{first[kind]}",
                             f"{kind}:{_digest(kind, repomd)}")

    def _fetch_checked(self, url: str, kind: str, hexdigest: str, size: int | None,
                       what: str, limit: int) -> Path:
        """The file with checksum ``kind:hexdigest``: cached, else downloaded and checked."""
        if kind == "md5":
            raise RepositoryError(f"{what}: md5 checksums are not trusted")
        if kind == "sha256":
            return self.fetcher.fetch_verified(url, hexdigest, size or None, what)
        cache = self.fetcher.cache
        key = f"rpm-checksum:{kind}:{hexdigest}"
        ref = cache.ref(key)
        if ref is not None and "sha256" in ref:
            hit = cache.lookup(ref["sha256"], size or None)
            if hit is not None and _file_digest(kind, hit) == hexdigest:
                return hit
        if self.fetcher.offline:
            raise OfflineCacheMiss(f"{what} ({kind} {hexdigest})", url=redact(url))
        path, sha256 = self.fetcher.download(url, what, size=size or None, limit=limit)
        got = _file_digest(kind, path)
        if got != hexdigest:
            path.unlink(missing_ok=True)
            raise DigestMismatch(what, f"{kind}:{hexdigest}", f"{kind}:{got}")
        cache.set_ref(key, sha256, etag=None, last_modified=None)
        return path

    def fetch_package(self, pkg: RepoPackage) -> Path:
        """The package file, verified by the checksum (and size) primary gave, from the
        cache when it holds a copy that still matches, else downloaded. ``pkg`` is one
        :meth:`fetch_repository` returned (its ``base_url`` already mirrored)."""
        what = f"{pkg.repo_id}: {pkg.nevra}"
        url = _join(pkg.base_url, pkg.location, what)
        return self._fetch_checked(url, pkg.checksum_type, pkg.checksum, pkg.size or None,
                                   what, MAX_PACKAGE)

    def forget(self, pkg: RepoPackage) -> None:
        """Drop ``pkg``'s cached file (it failed a later check): the next fetch downloads."""
        cache = self.fetcher.cache
        if pkg.checksum_type == "sha256":
            cache.path(pkg.checksum).unlink(missing_ok=True)
            return
        ref = cache.ref(f"rpm-checksum:{pkg.checksum_type}:{pkg.checksum}")
        if ref is not None and "sha256" in ref:
            cache.path(ref["sha256"]).unlink(missing_ok=True)
