"""Apply package updates to an image as one layer, as ``dpkg --force-confold --install`` would.

Input is what the image holds, read from its merged view: the dpkg database
(``var/lib/dpkg/status`` with ``info/`` and ``triggers/``, or the distroless
``var/lib/dpkg/status.d/``), the current contents of the conffiles involved,
and the whole tree (every path with its kind and symlink target); plus the
updates, ``(installed stanza or None, path of the .deb)`` pairs. Output is a
:class:`DpkgApplyResult`: the entries of one new layer and the maintainer
scripts dpkg would run, in dpkg's order. Nothing is run, fetched or written
here.

The oracle is the real dpkg (``tests/distro/test_dpkg_apply.py`` upgrades one
copy of a root with ``dpkg --force-confold -i`` and applies this module to
another, then compares them file by file and the scripts' log line by line;
also over a real Debian image with real packages). What was checked there:

* files: every member of the new ``data.tar`` with the package's modes,
  owners (names mapped through the image's ``etc/passwd``/``etc/group``;
  ``statoverride`` wins) and mtimes, written where dpkg writes it: through
  the image's symlinked directories (``/lib -> usr/lib``) and at the diverted
  name when another package (or the admin) diverted the path. A directory
  that exists already is not written (dpkg leaves its mode alone). Hard
  links, setuid bits, symlinks as shipped;
* removal: whiteouts for what the old version listed and nothing lists
  afterwards, compared where paths land (a file moving from ``/lib`` to
  ``/usr/lib`` stays), and for old directories left empty (one still holding
  a file of the user's stays). Like dpkg, a symlink such as ``/bin`` that the
  last package listing it drops is removed too;
* conffiles (``--force-confold``): unchanged by the user, replaced; changed
  by the user, kept, and when the package changed it too the new one is
  written as ``<path>.dpkg-dist`` (also when the user deleted it, or when a
  new conffile finds a different file in place); a file equal to the new
  one is not rewritten; dropped conffiles stay on disk and in the list,
  marked ``obsolete``; ``remove-on-upgrade`` ones are removed, or renamed
  ``.dpkg-old`` when changed, and stay recorded with that flag; a conffile
  that is a symlink gets the new version as ``<link>.dpkg-new`` and nothing
  else changes (dpkg 1.21 looks for the ``.dpkg-new`` by the link's target);
* the database: the whole ``status`` (the new stanzas with dpkg's field
  order and normalisation, ``Status: install ok installed`` even for a held
  package, everything sorted by package name), and per package
  ``info/<pkg>.list`` (``/.``, the archive's order, obsolete conffiles),
  ``.md5sums`` (shipped, or computed as dpkg does: every file and hard link,
  conffiles included), ``.conffiles``, the scripts and every other control
  member, with old ones the new version lacks whited out (including the
  ``<pkg>.*``/``<pkg>:<arch>.*`` switch when ``Multi-Arch: same`` changes);
  the trigger interests in ``triggers/`` as dpkg rewrites them. For
  ``status.d`` images: ``status.d/<name>`` (the new control paragraph, as
  the image's builder wrote it) and ``status.d/<name>.md5sums``;
* jobs: ``prerm upgrade NEW``, ``preinst upgrade OLD NEW`` / ``install``
  (``install OLD NEW`` over config-files), ``postrm upgrade NEW`` while
  unpacking; ``postinst configure OLD`` (``""`` when new) in dpkg's configure
  queue order (a package waits for dependencies the run has unpacked); then
  ``postinst triggered "NAMES"`` in deferred-queue order, names most recent
  first, with dpkg's ``DPKG_MAINTSCRIPT_*`` environment. Triggers left
  pending in the image stay pending unless the run activates them again.

Database files have mode 0644 (scripts keep theirs), owner root, and no mtime
(``mtime=None``: the layer writer's ``SOURCE_DATE_EPOCH``).

Known differences from dpkg:

* the jobs run after the whole layer is in place (dpkg runs an old
  ``prerm``/``postrm`` before unpacking); the old scripts the layer replaces
  are handed over in :attr:`DpkgApplyResult.scratch`;
* every trigger is processed after all configuration (dpkg may process an
  awaited trigger earlier, to configure a package depending on the awaiting
  one); the status is written as it is after the jobs;
* ``status.d`` (distroless) images record no conffile hashes and run no
  scripts: conffiles are replaced, and no jobs are produced;
* a package whose files are all taken over by another (dpkg's "disappear")
  stays in the database; a ``./`` member is assumed in every ``data.tar``
  (it is in every package ``dpkg-deb`` builds).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from suture.distro.apply import FileConflictError, TreeNode
from suture.distro.dpkg.control import (
    Conffile,
    InstalledPackage,
    Paragraph,
    Relation,
    format_paragraph,
    format_paragraphs,
    format_relations,
    parse_md5sums,
    parse_relations,
    parse_status,
)
from suture.distro.dpkg.deb import DataEntry, DebControl, read_deb, read_deb_control
from suture.distro.dpkg.triggers import (
    Interest,
    TriggerDirectives,
    TriggerRun,
    format_explicit_interests,
    format_file_interests,
    is_file_trigger,
    parse_explicit_interests,
    parse_file_interests,
    parse_triggers,
    parse_unincorp,
)
from suture.distro.dpkg.version import parse_version
from suture.distro.scripts import RootFiles, ScriptJob, Staged
from suture.errors import PackageDBError, PackageFormatError, UsageError
from suture.oci.fs import resolve
from suture.oci.layer import DIR, FILE, HARDLINK, SYMLINK, Entry

__all__ = [
    "ADMINDIR",
    "DpkgApplyResult",
    "FileConflictError",
    "Node",
    "TreeNode",
    "apply_updates",
    "conffile_paths",
    "database_paths",
]

log = logging.getLogger(__name__)

ADMINDIR = "var/lib/dpkg"
STATUS = f"{ADMINDIR}/status"
STATUS_D = f"{ADMINDIR}/status.d"
INFO = f"{ADMINDIR}/info"
TRIGGERS = f"{ADMINDIR}/triggers"
TRIGGERS_FILE = f"{TRIGGERS}/File"
DIVERSIONS = f"{ADMINDIR}/diversions"
STATOVERRIDE = f"{ADMINDIR}/statoverride"
PASSWD, GROUP = "etc/passwd", "etc/group"
CONTROL_AREA = f"{ADMINDIR}/tmp.ci"
"""Where dpkg unpacks a package's control area, and runs its new ``preinst`` from."""
UNINCORP = f"{TRIGGERS}/Unincorp"
APT_ARCHIVES = "var/cache/apt/archives"
PRECONFIGURE = "/usr/sbin/dpkg-preconfigure"
MAX_TRIGGER_RUNS = 1000  # trigger processing that does not end is a cycle

# The order dpkg writes the fields it knows (lib/dpkg/parse.c); other fields
# follow in the order the package's control file gives them.
_KNOWN_FIELDS = (
    "Package", "Essential", "Protected", "Status", "Priority", "Section", "Installed-Size",
    "Origin", "Maintainer", "Bugs", "Architecture", "Multi-Arch", "Source", "Version",
    "Config-Version", "Replaces", "Provides", "Depends", "Pre-Depends", "Recommends",
    "Suggests", "Breaks", "Conflicts", "Enhances", "Conffiles", "Description",
    "Triggers-Pending", "Triggers-Awaited",
)
_RELATION_FIELDS = frozenset(("Replaces", "Provides", "Depends", "Pre-Depends", "Recommends",
                              "Suggests", "Breaks", "Conflicts", "Enhances"))
# Fields that are dpkg's own bookkeeping, never copied from a package's control file.
_OWN_FIELDS = frozenset(f.lower() for f in ("Status", "Config-Version", "Conffiles",
                                             "Triggers-Pending", "Triggers-Awaited",
                                             "Filename", "Size", "MD5sum", "MSDOS-Filename"))
_PRIORITIES = ("required", "important", "standard", "optional", "extra")
_SCRIPT_NAMES = ("preinst", "postinst", "prerm", "postrm")


@dataclass(frozen=True, slots=True)
class Node:
    """A minimal :class:`TreeNode`, with the metadata a renamed file keeps.

    ``mode``, ``uid``, ``gid`` and ``mtime`` are read (when a tree node has
    them, as :class:`~suture.oci.fs.FileEntry` does) only for a modified
    ``remove-on-upgrade`` conffile that dpkg renames to ``.dpkg-old``.
    """

    kind: str
    linkname: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int | None = None


@dataclass(frozen=True)
class DpkgApplyResult:
    """What applying the updates gives.

    ``entries``: the one new layer (files, directories, links, whiteouts and
    database files), paths root-relative. ``jobs``: the maintainer-script
    invocations dpkg would make, in its order; every script they name is in
    ``entries`` (new scripts) or in the job's ``staged`` files (old scripts,
    the control area a ``preinst`` runs from). ``sequence``: the same jobs as
    they run, with the triggers the scripts activate themselves processed
    (:class:`DpkgScripts`; None without jobs). ``packages``: the new stanzas of
    the updated packages, parsed back from what was written.
    ``kept_conffiles``: absolute paths of conffiles left as the user changed
    them. ``notes``: anything done differently from what a caller might expect,
    one sentence each. ``not_run``: the maintainer scripts dpkg would have run
    but that cannot be run here (status.d images), with the reason.
    """

    entries: list[Entry]
    jobs: list[ScriptJob]
    packages: list[InstalledPackage] = field(default_factory=list)
    kept_conffiles: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    not_run: list[tuple[str, str]] = field(default_factory=list)
    sequence: DpkgScripts | None = field(default=None, compare=False)


# --------------------------------------------------------------------------- helpers


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _canonical_version(version: str) -> str:
    try:
        return str(parse_version(version, strict=False))
    except PackageFormatError:
        return version


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _db_entry(path: str, data: bytes, mode: int = 0o644) -> Entry:
    return Entry.file(path, data, mode & 0o7777, mtime=None)


Key = tuple[str, str]  # (package name, architecture)


def _ancestors(paths: Iterable[str]) -> set[str]:
    """Every proper ancestor directory of ``paths`` (root-relative; ``""`` excluded)."""
    out: set[str] = set()
    for path in paths:
        parent = path.rpartition("/")[0]
        while parent and parent not in out:
            out.add(parent)
            parent = parent.rpartition("/")[0]
    return out


def _key(pkg: InstalledPackage) -> Key:
    return pkg.name, pkg.architecture


def _infoname(name: str, arch: str, multi_arch: str) -> str:
    return f"{name}:{arch}" if multi_arch == "same" else name


# --------------------------------------------------------------------------- the database


@dataclass
class _Database:
    """The image's dpkg database, parsed; files keyed by root-relative path."""

    kind: str  # "status" | "status.d"
    packages: list[InstalledPackage]
    info: dict[str, bytes]  # file name under info/ -> bytes
    files: Mapping[str, bytes]
    status_d: dict[str, list[InstalledPackage]] = field(default_factory=dict)  # file -> stanzas
    native: str = ""
    diversions: dict[str, tuple[str, str]] = field(default_factory=dict)  # from -> (to, pkg)
    statoverrides: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)
    _lists: dict[str, list[str]] = field(default_factory=dict)
    _index: dict[Key, InstalledPackage] | None = None

    @classmethod
    def load(cls, files: Mapping[str, bytes]) -> _Database:
        status = files.get(STATUS)
        stanza_files = sorted(p for p in files if p.startswith(STATUS_D + "/")
                              and "/" not in p[len(STATUS_D) + 1:]
                              and not p.endswith(".md5sums"))
        info = {p[len(INFO) + 1:]: d for p, d in files.items()
                if p.startswith(INFO + "/") and "/" not in p[len(INFO) + 1:]}
        if status is not None and (status.strip() or not stanza_files):
            db = cls("status", parse_status(status, source="/" + STATUS), info, files)
        elif stanza_files:
            status_d: dict[str, list[InstalledPackage]] = {}
            packages: list[InstalledPackage] = []
            for path in stanza_files:
                stanzas = parse_status(files[path], source="/" + path)
                status_d[path] = stanzas
                packages.extend(stanzas)
            db = cls("status.d", packages, info, files, status_d)
        else:
            raise PackageDBError("no dpkg database (neither status nor status.d/ was given)",
                                 path="/" + STATUS)
        db._load_admin_files()
        return db

    def _load_admin_files(self) -> None:
        for pkg in self.packages:
            if pkg.name == "dpkg" and pkg.architecture not in ("", "all"):
                self.native = pkg.architecture
        if not self.native:
            arches = [p.architecture for p in self.packages if p.architecture not in ("", "all")]
            self.native = max(set(arches), key=arches.count) if arches else ""
        data = self.files.get(DIVERSIONS)
        if data:
            lines = _decode(data).split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            if len(lines) % 3:
                raise PackageDBError("not a multiple of three lines", path="/" + DIVERSIONS)
            for i in range(0, len(lines), 3):
                source, target, owner = lines[i:i + 3]
                if not source.startswith("/") or not target.startswith("/"):
                    raise PackageDBError(f"line {i + 1}: not an absolute path",
                                         path="/" + DIVERSIONS)
                self.diversions[source.lstrip("/")] = (target.lstrip("/"), owner)
        self.users = {"root": 0, **_parse_ids(self.files.get(PASSWD))}
        self.groups = {"root": 0, **_parse_ids(self.files.get(GROUP))}
        data = self.files.get(STATOVERRIDE)
        if data:
            for number, line in enumerate(_decode(data).split("\n"), 1):
                if not line.strip():
                    continue
                words = line.split(" ", 3)
                try:
                    user, group, mode, path = words
                    uid = self._id(user, self.users)
                    gid = self._id(group, self.groups)
                    self.statoverrides[path.lstrip("/")] = (uid, gid, int(mode, 8))
                except ValueError:
                    raise PackageDBError(f"line {number}: malformed statoverride {line!r}",
                                         path="/" + STATOVERRIDE) from None

    @staticmethod
    def _id(name: str, table: Mapping[str, int]) -> int:
        if name.startswith("#"):
            return int(name[1:])
        if name not in table:
            raise ValueError(name)
        return table[name]

    def owner_name(self, name: str, arch: str, multi_arch: str) -> str:
        """The package as dpkg names it unambiguously (``libx:amd64`` for M-A: same)."""
        if multi_arch == "same" or arch not in ("", "all", self.native):
            return f"{name}:{arch}"
        return name

    def pkg_owner(self, pkg: InstalledPackage) -> str:
        return self.owner_name(pkg.name, pkg.architecture, pkg.multi_arch)

    def list_of(self, pkg: InstalledPackage) -> list[str]:
        """The root-relative paths a package owns, in its list's order (``""`` is ``/.``)."""
        name = _infoname(pkg.name, pkg.architecture, pkg.multi_arch)
        if name in self._lists:
            return self._lists[name]
        paths: list[str] = []
        if self.kind == "status":
            data = self.info.get(f"{name}.list")
            if data is not None:
                source = f"/{INFO}/{name}.list"
                for number, line in enumerate(_decode(data).split("\n"), 1):
                    if not line:
                        continue
                    if not line.startswith("/"):
                        raise PackageDBError(f"line {number}: not an absolute path: {line!r}",
                                             path=source)
                    paths.append("" if line == "/." else line.strip("/"))
        else:
            path = self.status_d_path(pkg)
            data = self.files.get(f"{path}.md5sums") if path else None
            if data is not None:
                try:
                    paths = list(parse_md5sums(data))
                except PackageFormatError as exc:
                    raise PackageDBError(exc.message, path=f"/{path}.md5sums") from None
        self._lists[name] = paths
        return paths

    def status_d_path(self, pkg: InstalledPackage) -> str | None:
        for path, stanzas in self.status_d.items():
            if any(_key(s) == _key(pkg) for s in stanzas):
                return path
        return None

    def find(self, name: str, arch: str) -> InstalledPackage | None:
        if self._index is None:
            self._index = {}
            for pkg in self.packages:
                self._index.setdefault(_key(pkg), pkg)
        return self._index.get((name, arch))

    def info_files(self, infoname: str) -> list[str]:
        """Names under ``info/`` belonging to ``infoname`` (``<infoname>.<type>``)."""
        return sorted(n for n in self.info if n.rpartition(".")[0] == infoname)

    def version_of_dpkg(self) -> str:
        for pkg in self.packages:
            if pkg.name == "dpkg" and pkg.is_installed:
                return pkg.version
        return ""


def _parse_ids(data: bytes | None) -> dict[str, int]:
    """``name -> id`` from a ``passwd`` or ``group`` file (the first entry of a name wins)."""
    ids: dict[str, int] = {}
    if not data:
        return ids
    for line in _decode(data).split("\n"):
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            ids.setdefault(fields[0], int(fields[2]))
    return ids


# --------------------------------------------------------------------------- public helpers


def database_paths() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(paths, prefixes)`` to read from the image for :func:`apply_updates`'s ``files``.

    The status file, diversions, statoverrides, ``etc/passwd`` and
    ``etc/group``; everything under ``info/``, ``status.d/`` and
    ``triggers/``. Root-relative, as :func:`suture.oci.fs.read_files` takes them.
    """
    return ((STATUS, DIVERSIONS, STATOVERRIDE, PASSWD, GROUP),
            (INFO + "/", STATUS_D + "/", TRIGGERS + "/"))


def conffile_paths(files: Mapping[str, bytes],
                   updates: Sequence[tuple[InstalledPackage | None, Path]]) -> list[str]:
    """The conffiles whose current contents :func:`apply_updates` must be given.

    Root-relative paths, sorted: every conffile the installed versions record
    and every conffile the new packages declare. Reads only the control part
    of each ``.deb``.
    """
    db = _Database.load(files)
    diversions = _Locator({}, db.diversions)
    paths: set[str] = set()
    for installed, deb in updates:
        control = _read_control(deb)
        previous = installed or db.find(control.name, control.architecture)
        declared = [c.path.lstrip("/") for c in control.conffiles]
        if previous is not None:
            declared += [c.path.lstrip("/") for c in previous.conffiles]
        # A conffile diverted away from its package is settled where it was diverted.
        paths.update(diversions.divert(path, control.name) for path in declared)
    return sorted(paths)


def _read_control(deb: Path) -> DebControl:
    try:
        with open(deb, "rb") as stream:
            return read_deb_control(stream, source=str(deb))
    except OSError as exc:
        raise UsageError(f"cannot read {deb}: {exc.strerror}") from None


# --------------------------------------------------------------------------- one update


@dataclass
class _Update:
    """One package being installed: its previous stanza (if any) and the new archive."""

    deb: Path
    control: DebControl
    data: list[DataEntry]
    previous: InstalledPackage | None  # the stanza replaced (installed, or config-files)
    upgrade: bool  # previous had files on disk (an upgrade, not an install)
    name: str
    arch: str
    multi_arch: str
    version: str
    owner: str
    infoname: str
    old_infoname: str | None
    triggers_old: TriggerDirectives = field(default_factory=TriggerDirectives)
    triggers_new: TriggerDirectives = field(default_factory=TriggerDirectives)
    conffiles: list[Conffile] = field(default_factory=list)  # new, with md5 of the new file
    list_paths: list[str] = field(default_factory=list)  # the new .list, root-relative
    removed: list[str] = field(default_factory=list)  # old paths not in the new version
    has_root: bool = True  # the data.tar has a "./" member (listed as "/.")

    @property
    def key(self) -> Key:
        return self.name, self.arch

    @property
    def provides(self) -> list[Relation]:
        text = self.control.paragraph.get("Provides") or ""
        return [r for group in parse_relations(text) for r in group]


ReadDeb = tuple[DebControl, list[DataEntry]]


def read_deb_file(deb: Path, spool: Path | None = None) -> ReadDeb:
    """A ``.deb`` read whole (:func:`read_deb` with the archive's root member): what
    :func:`apply_updates` reads of it, and may be given as ``preread`` instead (read
    beforehand with the same ``spool``, say while the other packages download)."""
    try:
        with open(deb, "rb") as stream:
            control, members = read_deb(stream, source=str(deb), include_root=True,
                                        spool=spool)
            return control, list(members)
    except OSError as exc:
        raise UsageError(f"cannot read {deb}: {exc.strerror}") from None


def _load_updates(db: _Database, updates: Sequence[tuple[InstalledPackage | None, Path]],
                  spool: Path | None, preread: Mapping[Path, ReadDeb]) -> list[_Update]:
    """:func:`_load_update` of each update, in order, read on as many threads as there
    are cores (up to 4): most of the time is decompressing ``data.tar`` members, which
    releases the GIL. The largest ``.deb`` files are started first; those in
    ``preread`` are not read again."""
    workers = min(4, os.cpu_count() or 1, len(updates))
    if workers < 2 or all(deb in preread for _, deb in updates):
        return [_load_update(db, installed, deb, spool, preread.get(deb))
                for installed, deb in updates]

    def size(item: tuple[int, tuple[InstalledPackage | None, Path]]) -> int:
        try:
            return item[1][1].stat().st_size
        except OSError:
            return 0

    with ThreadPoolExecutor(max_workers=workers) as pool:
        started = {i: pool.submit(_load_update, db, installed, deb, spool, preread.get(deb))
                   for i, (installed, deb) in sorted(enumerate(updates), key=size,
                                                     reverse=True)}
        return [started[i].result() for i in range(len(updates))]


def _load_update(db: _Database, installed: InstalledPackage | None, deb: Path,
                 spool: Path | None = None, preread: ReadDeb | None = None) -> _Update:
    control, data = preread if preread is not None else read_deb_file(deb, spool)
    has_root = bool(data) and data[0].path == ""
    if has_root:
        data = data[1:]
    name, arch = control.name, control.architecture
    if not name or not arch or not control.version:
        raise PackageDBError("control file lacks Package, Version or Architecture",
                             path=f"{deb}: control")
    multi_arch = (control.paragraph.get("Multi-Arch") or "no").lower()
    previous = installed
    if installed is not None:
        if installed.name != name:
            raise UsageError(f"{deb} is package {name}, not {installed.name}")
        found = db.find(installed.name, installed.architecture)
        if found is None:
            raise UsageError(f"{installed.name}:{installed.architecture} is not in the database")
        previous = found
    else:
        found = db.find(name, arch)
        if found is not None and found.has_files:
            raise UsageError(f"{name}:{arch} is installed: give its stanza to upgrade it")
        previous = found
    upgrade = previous is not None and previous.has_files
    old_infoname = None
    triggers_old = TriggerDirectives()
    if previous is not None:
        old_infoname = _infoname(previous.name, previous.architecture, previous.multi_arch)
        old_triggers = db.info.get(f"{old_infoname}.triggers")
        if old_triggers is not None and upgrade:
            triggers_old = parse_triggers(old_triggers, source=f"/{INFO}/{old_infoname}.triggers")
    new_triggers = control.get("triggers")
    triggers_new = TriggerDirectives() if new_triggers is None else parse_triggers(
        new_triggers, source=f"{deb}: triggers")
    return _Update(
        deb=deb, control=control, data=data, previous=previous, upgrade=upgrade, name=name,
        arch=arch, multi_arch=multi_arch, version=_canonical_version(control.version),
        owner=db.owner_name(name, arch, multi_arch),
        infoname=_infoname(name, arch, multi_arch), old_infoname=old_infoname,
        triggers_old=triggers_old, triggers_new=triggers_new, has_root=has_root,
    )


# --------------------------------------------------------------------------- paths


class _Locator:
    """Where a package path lands in the image: diversions, then symlinked parent directories."""

    def __init__(self, tree: Mapping[str, TreeNode], diversions: Mapping[str, tuple[str, str]]):
        self.tree = tree
        self.symlinks = {p: n.linkname for p, n in tree.items() if n.kind == SYMLINK}
        self.diversions = diversions
        self._dirs: dict[str, str] = {"": ""}

    def directory(self, path: str) -> str:
        """``path`` with every component resolved (it names a directory)."""
        cached = self._dirs.get(path)
        if cached is None:
            cached = resolve(path, self.symlinks) if path else ""
            self._dirs[path] = cached
        return cached

    def divert(self, path: str, package: str) -> str:
        diversion = self.diversions.get(path)
        if diversion is not None and diversion[1] != package:
            return diversion[0]
        return path

    def locate(self, path: str, package: str | None = None) -> str:
        """The path (final component not followed) a package's ``path`` lands at."""
        if package is not None:
            path = self.divert(path, package)
        parent, _, base = path.rpartition("/")
        return _join(self.directory(parent), base)

    def is_dir(self, located: str) -> bool:
        """A directory, or a symlink leading to one, is at ``located``."""
        node = self.tree.get(located)
        if node is None:
            return False
        if node.kind == DIR:
            return True
        if node.kind == SYMLINK:
            target = self.tree.get(self.directory(located))
            return target is not None and target.kind == DIR
        return False


# --------------------------------------------------------------------------- conffiles


def _conffile_action(old_hash: str | None, current: bytes | None, new: bytes) -> str:
    """What ``--force-confold`` does with one conffile (dpkg's configure.c decision).

    ``old_hash``: the md5 recorded for the old version (``None``: a conffile new
    to this package). ``current``: what is on disk (``None``: absent). Gives
    ``install`` (write the new file), ``keep`` (leave the file as it is), or
    ``dist`` (keep it, and write the new one as ``.dpkg-dist``).
    """
    new_hash = _md5(new)
    if current is None:
        if old_hash is None or old_hash == "newconffile":
            return "install"
        # The user deleted it: dpkg leaves it deleted, and says so.
        return "keep" if old_hash == new_hash else "dist"
    current_hash = _md5(current)
    if current_hash == new_hash:
        return "keep"
    if old_hash is None or old_hash == "newconffile":
        return "dist"
    user_edited = current_hash != old_hash
    dist_edited = new_hash != old_hash
    if not user_edited:
        return "install" if dist_edited else "keep"
    return "dist" if dist_edited else "keep"


# --------------------------------------------------------------------------- stanzas


def _status_stanza(control: Paragraph, status: str, conffiles: Sequence[Conffile], *,
                   source: str = "control") -> Paragraph:
    """The stanza dpkg writes for an installed package: known fields in its order, normalised.

    Booleans (``Essential``, ``Protected``) only when ``yes``; ``Multi-Arch``
    and ``Priority`` lower-cased, ``Multi-Arch: no`` left out; the version
    without a zero epoch; relation fields re-spelt (``a (>= 1), b | c``);
    fields dpkg does not know after ``Description``, as the package gives them.
    """
    values: dict[str, str] = {}
    extra: list[tuple[str, str]] = []
    known = {f.lower(): f for f in _KNOWN_FIELDS}
    for name in control:
        value = control[name]
        canonical = known.get(name.lower())
        if name.lower() in _OWN_FIELDS:
            continue
        if canonical is None:
            extra.append((name, value))
            continue
        if canonical in ("Essential", "Protected"):
            if value.lower() != "yes":
                continue
            value = "yes"
        elif canonical == "Multi-Arch":
            value = value.lower()
            if value == "no":
                continue
        elif canonical == "Priority":
            if value.lower() in _PRIORITIES:
                value = value.lower()
        elif canonical == "Version":
            value = _canonical_version(value)
        elif canonical in _RELATION_FIELDS:
            try:
                value = format_relations(parse_relations(value))
            except PackageFormatError as exc:
                raise PackageDBError(f"{canonical}: {exc.message}", path=source) from None
            if not value:
                continue
        values[canonical] = value
    values["Status"] = status
    if conffiles:
        values["Conffiles"] = "\n" + "\n".join(" " + c.status_line() for c in conffiles)
    stanza = Paragraph()
    for name in _KNOWN_FIELDS:
        if name in values:
            stanza[name] = values[name]
    for name, value in extra:
        stanza[name] = value
    return stanza


def _sort_key(pkg: InstalledPackage, native: str) -> tuple[bytes, int, str]:
    # dpkg: by name, then the instance that needs no architecture qualifier first.
    plain = pkg.multi_arch != "same" and pkg.architecture in ("", "all", native)
    return _encode(pkg.name), 0 if plain else 1, pkg.architecture


# --------------------------------------------------------------------------- trigger interests


@dataclass
class _Interests:
    """dpkg's interest state: ``triggers/File`` in order, and each explicit trigger's file."""

    files: list[Interest] = field(default_factory=list)
    explicit: dict[str, list[Interest]] = field(default_factory=dict)

    def all(self) -> list[Interest]:
        return [*self.files, *(i for group in self.explicit.values() for i in group)]

    def add(self, owner: str, directives: TriggerDirectives) -> None:
        """Register ``owner``'s interests as dpkg does when it unpacks the package."""
        for trigger, noawait in directives.interests:
            interest = Interest(trigger, owner, noawait)
            if is_file_trigger(trigger):
                if not any(i.trigger == trigger and i.owner == owner for i in self.files):
                    self.files.append(interest)
            else:
                # The interest file is rewritten with the package moved to its end.
                others = [i for i in self.explicit.get(trigger, []) if i.owner != owner]
                self.explicit[trigger] = [*others, interest]

    def remove(self, owner: str | None, directives: TriggerDirectives) -> None:
        """Drop the interests ``owner``'s (old) triggers file declares."""
        for trigger, _ in directives.interests:
            if is_file_trigger(trigger):
                self.files = [i for i in self.files
                              if not (i.trigger == trigger and i.owner == owner)]
            elif trigger in self.explicit:
                self.explicit[trigger] = [i for i in self.explicit[trigger] if i.owner != owner]

    def replace(self, old_owner: str | None, old: TriggerDirectives, owner: str,
                new: TriggerDirectives) -> None:
        self.remove(old_owner, old)
        self.add(owner, new)


# --------------------------------------------------------------------------- apply


def apply_updates(
    files: Mapping[str, bytes],
    updates: Sequence[tuple[InstalledPackage | None, Path]],
    *,
    conffiles: Mapping[str, bytes | None],
    tree: Mapping[str, TreeNode],
    spool: Path | None = None,
    preconfigure: bool = False,
    preread: Mapping[Path, ReadDeb] | None = None,
) -> DpkgApplyResult:
    """Install ``updates`` into the image described by ``files`` and ``tree``, as one layer.

    ``files``: merged-view contents of :func:`database_paths` (root-relative
    keys; absent files simply missing). ``updates``: ``(installed stanza, .deb
    path)`` pairs in the order dpkg unpacks them; ``None`` installs a new
    package. ``conffiles``: the current contents of every path
    :func:`conffile_paths` names (``None``: not there); a path missing from
    the mapping is a :class:`UsageError`. ``tree``: every path of the merged
    view (root-relative) with its kind and symlink target.

    The ``.deb`` files are read (each once) and nothing else is touched but
    ``spool``: with it (an existing directory, which the caller removes once
    done with the entries), large files are copied there and the entries read
    them from there; without it every file is held in memory. With
    ``preconfigure`` (the image's apt runs debconf's ``dpkg-preconfigure --apt`` as
    its ``DPkg::Pre-Install-Pkgs`` hook), that hook is the first job, given the
    packages as apt gives them. ``preread``: ``.deb`` files already read with
    :func:`read_deb_file` (with this ``spool``), by path. A database that does not parse raises
    :class:`PackageDBError` naming the file; the written database is parsed
    back and checked before anything is returned. A file another package owns
    without ``Replaces`` raises :class:`FileConflictError`.
    """
    db = _Database.load(files)
    needed = set(conffile_paths(files, updates))
    missing = sorted(needed - set(conffiles))
    if missing:
        raise UsageError(f"current contents of conffile /{missing[0]} not given "
                         f"({len(missing)} missing; read conffile_paths() first)")
    todo = _load_updates(db, updates, spool, preread or {})
    seen: set[Key] = set()
    for update in todo:
        if update.key in seen:
            raise UsageError(f"{update.name}:{update.arch} is given twice")
        seen.add(update.key)
    return _Applier(db, todo, conffiles, tree, preconfigure).run()


class _Applier:
    """The state of one application (see :func:`apply_updates`)."""

    def __init__(self, db: _Database, todo: list[_Update],
                 conffiles: Mapping[str, bytes | None], tree: Mapping[str, TreeNode],
                 preconfigure: bool = False) -> None:
        self.preconfigure = preconfigure
        self.db = db
        self.todo = todo
        self.current_conffiles = conffiles
        self.tree = tree
        self.locator = _Locator(tree, db.diversions)
        self.entries: dict[str, Entry] = {}  # located path -> entry
        self.whiteouts: set[str] = set()
        self.db_entries: dict[str, Entry] = {}
        self.kept: list[str] = []
        self.notes: list[str] = []
        self.not_run: list[tuple[str, str]] = []
        self.replaced_keys = {_key(u.previous) for u in todo if u.previous is not None}
        self.taken: dict[Key, set[str]] = {}  # other packages' paths taken over (Replaces)
        # Where the run's packages unpacked their (non-directory) paths -> (update, path).
        self._unpacked: dict[str, tuple[_Update, str]] = {}
        self._written_dirs: set[str] = set()
        self.processed: set[str] = set()  # owners whose triggers the jobs process

    # ----------------------------------------------------------------- driver

    def run(self) -> DpkgApplyResult:
        for update in self.todo:
            self._unpack(update)
        self._remove_old_files()
        jobs = self._jobs()
        packages = self._write_database()
        entries = self._layer_entries()
        log.debug("dpkg apply: %d packages, %d entries, %d jobs", len(self.todo), len(entries),
                  len(jobs))
        return DpkgApplyResult(entries=entries, jobs=jobs, packages=packages,
                               kept_conffiles=self.kept, notes=self.notes,
                               not_run=self.not_run,
                               sequence=self.sequence() if jobs else None)

    # ----------------------------------------------------------------- unpacking

    def _owner_entry(self, member: DataEntry, located: str, path: str, package: str) -> Entry:
        """``member`` as a layer entry at ``located``: owner names mapped, statoverride applied."""
        uid = self.db.users.get(member.uname, member.uid) if member.uname else member.uid
        gid = self.db.groups.get(member.gname, member.gid) if member.gname else member.gid
        mode = member.mode
        override = self.db.statoverrides.get(path)
        if override is not None and member.kind != SYMLINK:
            uid, gid, mode = override
        entry = member.to_entry(uid=uid, gid=gid)
        linkname = entry.linkname
        if member.kind == HARDLINK:
            linkname = self.locator.locate(member.linkname, package)
        return Entry(located, entry.kind, mode, uid, gid, entry.mtime, entry.size, linkname,
                     entry.data)

    def _unpack(self, update: _Update) -> None:
        declared = update.control.conffiles
        declared_paths = {c.path.lstrip("/") for c in declared if not c.remove_on_upgrade}
        old_conffiles = {c.path: c for c in (update.previous.conffiles
                                              if update.previous else ())}
        members = {m.path: m for m in update.data}
        self._check_conflicts(update)

        # dpkg lists the archive's root directory as "/." when the archive has one.
        list_paths = [""] if update.has_root else []
        for member in update.data:
            list_paths.append(member.path)
            if member.path in declared_paths:
                continue  # decided below, as dpkg does at configure time
            located = self.locator.locate(member.path, update.name)
            if member.kind == DIR and (self.locator.is_dir(located) or located in self.entries):
                continue  # dpkg leaves an existing directory (or a link to one) alone
            self.entries[located] = self._owner_entry(member, located, member.path, update.name)

        # Conffiles, in the order the package declares them.
        new_conffiles: list[Conffile] = []
        for conffile in declared:
            if conffile.remove_on_upgrade:
                self._remove_on_upgrade(update, conffile, old_conffiles)
                # dpkg keeps recording it, with the old hash (or "newconffile").
                previous_entry = old_conffiles.get(conffile.path)
                new_conffiles.append(Conffile(
                    conffile.path, "newconffile" if previous_entry is None
                    else previous_entry.md5, False, True))
                continue
            path = conffile.path.lstrip("/")
            shipped = members.get(path)
            if shipped is None or shipped.kind != FILE or shipped.data is None:
                raise PackageDBError(f"conffile {conffile.path} is not a file of the package",
                                     path=f"{update.deb}: conffiles")
            recorded = self._conffile(update, shipped, shipped.read(),
                                      old_conffiles.get(conffile.path))
            new_conffiles.append(Conffile(conffile.path, recorded))

        # Conffiles the new version no longer ships stay, marked obsolete.
        new_paths = {m.path for m in update.data}
        remove_on_upgrade = {c.path for c in declared if c.remove_on_upgrade}
        obsolete = [Conffile(c.path, c.md5, True, False) for c in old_conffiles.values()
                    if c.path.lstrip("/") not in declared_paths
                    and c.path not in remove_on_upgrade]
        update.conffiles = new_conffiles + obsolete
        update.list_paths = list_paths + [c.path.lstrip("/") for c in obsolete
                                          if c.path.lstrip("/") not in new_paths]
        if update.upgrade and update.previous is not None:
            if self.db.kind == "status" and \
                    f"{update.old_infoname}.list" not in self.db.info:
                self.notes.append(f"{update.owner}: no file list in the image; files of the "
                                  "old version are not removed (as dpkg assumes too)")
            kept = {c.path.lstrip("/") for c in obsolete}
            update.removed = [p for p in self.db.list_of(update.previous)
                              if p and p not in new_paths and p not in kept]

    def _conffile(self, update: _Update, member: DataEntry, new: bytes,
                  old: Conffile | None) -> str:
        """One conffile of the new version, as ``--force-confold`` settles it.

        Gives the hash the status records for it.
        """
        path = member.path
        located = self.locator.locate(path, update.name)
        node = self.tree.get(located)
        if node is not None and node.kind == SYMLINK and self.db.kind == "status":
            # dpkg (1.21) unpacks a conffile that is a symlink in place as
            # <link>.dpkg-new, then at configure looks for <target>.dpkg-new, finds
            # none and leaves everything (the recorded hash too) as it was.
            self.entries[located + ".dpkg-new"] = self._owner_entry(
                member, located + ".dpkg-new", path, update.name)
            self.kept.append("/" + path)
            return "newconffile" if old is None else old.md5
        current = self.current_conffiles.get(self.locator.divert(path, update.name))
        if self.db.kind == "status.d":
            # No recorded hashes: the image's copy is taken as the old version's.
            old_hash = None if current is None else _md5(current)
        else:
            old_hash = None if old is None else old.md5
        action = _conffile_action(old_hash, current, new)
        if action == "install":
            self.entries[located] = self._owner_entry(member, located, path, update.name)
        elif action == "dist":
            self.kept.append("/" + path)
            dist = located + ".dpkg-dist"
            self.entries[dist] = self._owner_entry(member, dist, path, update.name)
        elif current is not None and old_hash not in (None, "newconffile") and \
                _md5(current) != old_hash:
            self.kept.append("/" + path)
        return _md5(new)

    def _remove_on_upgrade(self, update: _Update, conffile: Conffile,
                           old_conffiles: Mapping[str, Conffile]) -> None:
        path = conffile.path.lstrip("/")
        current = self.current_conffiles.get(self.locator.divert(path, update.name))
        old = old_conffiles.get(conffile.path)
        if current is None or old is None or not update.upgrade:
            return
        located = self.locator.locate(path, update.name)
        if _md5(current) != old.md5:
            # dpkg renames it: contents, mode, owner and mtime are the file's own.
            node = self.tree.get(located)
            saved = located + ".dpkg-old"
            self.entries[saved] = Entry.file(
                saved, current, getattr(node, "mode", 0o644) & 0o7777,
                uid=getattr(node, "uid", 0), gid=getattr(node, "gid", 0),
                mtime=getattr(node, "mtime", None))
            self.kept.append(conffile.path)
        self.whiteouts.add(located)

    def _check_conflicts(self, update: _Update) -> None:
        """Paths of the new version that other (not updated) packages own: Replaces or refuse.

        Paths are compared where they land (diversions, symlinked directories),
        so a diverted file or one reached through an alias is not a conflict
        unless it is the same file.
        """
        replaces = update.control.paragraph.get("Replaces") or ""
        relations = [r for group in parse_relations(replaces) for r in group] if replaces else []
        owners = self._path_owners()
        for member in update.data:
            if member.kind == DIR:
                continue
            located = self.locator.locate(member.path, update.name)
            for key, path in owners.get(located, ()):
                if key == update.key or key in self.replaced_keys:
                    continue
                other = self.db.find(*key)
                if other is None:
                    continue
                if other.name == update.name:  # another architecture of a M-A: same package
                    continue
                if any(r.name == other.name and r.version_matches(other.version)
                       for r in relations):
                    self.taken.setdefault(key, set()).add(path)
                    continue
                raise FileConflictError(member.path, update.owner, self.db.pkg_owner(other))
            # A package unpacked earlier in this run ships it too: the same rule, against
            # the version it is being upgraded to.
            earlier = self._unpacked.get(located)
            if earlier is not None and earlier[0] is not update:
                first, path = earlier
                if first.name == update.name:
                    continue  # another architecture of a M-A: same package
                if not any(r.name == first.name and r.version_matches(first.version)
                           for r in relations):
                    raise FileConflictError(member.path, update.owner, first.owner)
                if path in first.list_paths:  # taken over: no longer the first one's
                    first.list_paths.remove(path)
        for member in update.data:
            if member.kind != DIR:
                self._unpacked[self.locator.locate(member.path, update.name)] = (update,
                                                                                 member.path)

    _owners: dict[str, list[tuple[Key, str]]] | None = None

    def _path_owners(self) -> dict[str, list[tuple[Key, str]]]:
        """Where each installed package's paths land -> ``(package, path as listed)``."""
        if self._owners is None:
            owners: dict[str, list[tuple[Key, str]]] = {}
            for pkg in self.db.packages:
                if not pkg.has_files:
                    continue
                for path in self.db.list_of(pkg):
                    if path:
                        located = self.locator.locate(path, pkg.name)
                        owners.setdefault(located, []).append((_key(pkg), path))
            self._owners = owners
        return self._owners

    # ----------------------------------------------------------------- removal

    def _remove_old_files(self) -> None:
        """Whiteouts for what the old versions owned and nothing owns any more."""
        self._written_dirs = _ancestors(self.entries)
        updated_keys = {u.key for u in self.todo} | self.replaced_keys
        kept: set[str] = set()  # located paths somebody owns after the update
        for located, owners in self._path_owners().items():
            if any(key not in updated_keys and path not in self.taken.get(key, ())
                   for key, path in owners):
                kept.add(located)
        for update in self.todo:
            for path in update.list_paths:
                if path:
                    kept.add(self.locator.locate(path, update.name))
        candidates: dict[str, str] = {}  # located -> package path
        for update in self.todo:
            for path in update.removed:
                located = self.locator.locate(path, update.name)
                if located not in kept and located not in self.entries:
                    candidates.setdefault(located, path)
        # Deepest first, so a directory is judged after what it holds.
        for located in sorted(candidates, key=lambda p: (-p.count("/"), p)):
            node = self.tree.get(located)
            if node is None:
                continue
            if node.kind == DIR:
                if self._empty_after(located):
                    self.whiteouts.add(located)
                continue
            self.whiteouts.add(located)

    def _empty_after(self, directory: str) -> bool:
        """Nothing is left in ``directory``: all it holds goes, the layer puts nothing there."""
        if any(path not in self.whiteouts for path in self._children(directory)):
            return False
        return directory not in self._written_dirs

    _child_index: dict[str, list[str]] | None = None

    def _children(self, directory: str) -> list[str]:
        if self._child_index is None:
            index: dict[str, list[str]] = {}
            for path in self.tree:
                parent = path.rpartition("/")[0]
                index.setdefault(parent, []).append(path)
            self._child_index = index
        return self._child_index.get(directory, [])

    # ----------------------------------------------------------------- database

    def _write_database(self) -> list[InstalledPackage]:
        stanzas: dict[Key, Paragraph] = {}
        for update in self.todo:
            # "dpkg --install" selects what it installs: a held package becomes "install".
            if self.db.kind == "status.d" and (update.previous is None or
                                               "Status" not in update.previous.paragraph):
                stanza = update.control.paragraph.copy()
            else:
                stanza = _status_stanza(update.control.paragraph, "install ok installed",
                                        update.conffiles, source=f"{update.deb}: control")
            stanzas[update.key] = stanza
        if self.db.kind == "status":
            self._write_status(stanzas)
            self._write_info()
            self._write_trigger_interests()
        else:
            self._write_status_d(stanzas)
        return self._check_written()

    def _write_status(self, stanzas: Mapping[Key, Paragraph]) -> None:
        replaced = {_key(u.previous) for u in self.todo if u.previous is not None}
        written: list[InstalledPackage] = []
        for pkg in self.db.packages:
            if _key(pkg) in replaced:
                continue
            written.append(self._after_triggers(pkg))
        for stanza in stanzas.values():
            written.extend(parse_status(format_paragraph(stanza), source="/" + STATUS))
        written.sort(key=lambda p: _sort_key(p, self.db.native))
        data = _encode(format_paragraphs(p.paragraph for p in written))
        self.db_entries[STATUS] = _db_entry(STATUS, data)

    def _after_triggers(self, pkg: InstalledPackage,
                        processed: set[str] | None = None) -> InstalledPackage:
        """``pkg`` once the jobs' trigger processing is done (its stanza as dpkg leaves
        it), the owners in ``processed`` (by default those the jobs known in advance
        process) having had their triggers processed."""
        done = self.processed if processed is None else processed
        status = pkg.status
        if status is None or status.status not in ("triggers-pending", "triggers-awaited"):
            return pkg
        pending = (pkg.paragraph.get("Triggers-Pending") or "").split()
        awaited = (pkg.paragraph.get("Triggers-Awaited") or "").split()
        if self.db.pkg_owner(pkg) in done:
            pending = []
        left = [owner for owner in awaited if owner not in done]
        if left == awaited and pending:
            return pkg
        paragraph = pkg.paragraph.copy()
        for name, values in (("Triggers-Pending", pending), ("Triggers-Awaited", left)):
            if values:
                paragraph[name] = " ".join(values)
            elif name in paragraph:
                del paragraph[name]
        state = "triggers-awaited" if left else "triggers-pending" if pending else "installed"
        paragraph["Status"] = f"{status.want} {status.flag} {state}"
        return parse_status(format_paragraph(paragraph), source="/" + STATUS)[0]

    def _write_status_d(self, stanzas: Mapping[Key, Paragraph]) -> None:
        for update in self.todo:
            previous = update.previous
            path = self.db.status_d_path(previous) if previous is not None else None
            if path is None:
                path = f"{STATUS_D}/{update.name}"
                if path in self.db.status_d and update.multi_arch == "same":
                    path = f"{STATUS_D}/{update.name}:{update.arch}"
                paragraphs = [stanzas[update.key]]
            else:
                replaced = _key(previous) if previous is not None else None
                paragraphs = [stanzas[update.key] if _key(s) == replaced else s.paragraph
                              for s in self.db.status_d[path]]
            text = "".join(format_paragraph(p) + "\n" for p in paragraphs)
            if not self._status_d_blank_line(path):
                text = text[:-1]
            self.db_entries[path] = _db_entry(path, _encode(text))
            self.db_entries[f"{path}.md5sums"] = _db_entry(f"{path}.md5sums",
                                                            self._md5sums(update))

    def _status_d_blank_line(self, path: str) -> bool:
        """Whether a status.d file ends with an empty line (as the image's others do)."""
        data = self.db.files.get(path)
        if data is not None:
            return data.endswith(b"\n\n")
        ends = [self.db.files[p].endswith(b"\n\n") for p in self.db.status_d]
        return bool(ends) and ends.count(True) > len(ends) // 2

    def _md5sums(self, update: _Update) -> bytes:
        shipped = update.control.get("md5sums")
        if shipped is not None:
            return shipped
        # dpkg computes them as it unpacks: every regular file (hard links too),
        # conffiles included.
        sums: dict[str, str] = {}
        lines: list[str] = []
        for member in update.data:
            if member.kind == FILE and member.data is not None:
                sums[member.path] = member.md5sum()
            elif member.kind == HARDLINK and member.linkname in sums:
                sums[member.path] = sums[member.linkname]
            else:
                continue
            lines.append(f"{sums[member.path]}  {member.path}\n")
        return _encode("".join(lines))

    def _write_info(self) -> None:
        for update in self.todo:
            base = f"{INFO}/{update.infoname}"
            new: set[str] = set()

            def put(name: str, data: bytes, mode: int = 0o644, base: str = base,
                    new: set[str] = new, update: _Update = update) -> None:
                self.db_entries[f"{base}.{name}"] = _db_entry(f"{base}.{name}", data, mode)
                new.add(f"{update.infoname}.{name}")

            listing = "".join("/.\n" if p == "" else f"/{p}\n" for p in update.list_paths)
            put("list", _encode(listing))
            put("md5sums", self._md5sums(update))
            for member in update.control.files.values():
                if member.name in ("control", "md5sums"):
                    continue
                put(member.name, member.data, member.mode)
            if update.old_infoname is not None:
                for name in self.db.info_files(update.old_infoname):
                    if name not in new:
                        self.whiteouts.add(f"{INFO}/{name}")
        # Other packages' lists lose what was taken over from them.
        for key, taken in self.taken.items():
            pkg = self.db.find(*key)
            if pkg is None:
                continue
            infoname = _infoname(pkg.name, pkg.architecture, pkg.multi_arch)
            paths = [p for p in self.db.list_of(pkg) if p not in taken]
            listing = "".join("/.\n" if p == "" else f"/{p}\n" for p in paths)
            self.db_entries[f"{INFO}/{infoname}.list"] = _db_entry(f"{INFO}/{infoname}.list",
                                                                    _encode(listing))

    # ----------------------------------------------------------------- triggers

    def _initial_interests(self) -> _Interests:
        """The registered interests: ``triggers/File`` and the explicit interest files.

        An image without any of dpkg's trigger state (some builders drop
        ``triggers/``) gets it rebuilt from the installed ``info/*.triggers``.
        """
        state = {p: d for p, d in self.db.files.items() if p.startswith(TRIGGERS + "/")}
        interests = _Interests()
        if state:
            if TRIGGERS_FILE in state:
                interests.files = parse_file_interests(state[TRIGGERS_FILE],
                                                       source="/" + TRIGGERS_FILE)
            for path, data in sorted(state.items()):
                name = path[len(TRIGGERS) + 1:]
                if name in ("File", "Lock", "Unincorp") or "/" in name or \
                        name.endswith(".new") or is_file_trigger(name):
                    continue
                interests.explicit[name] = parse_explicit_interests(name, data,
                                                                    source="/" + path)
            return interests
        for pkg in sorted(self.db.packages, key=lambda p: _sort_key(p, self.db.native)):
            if not pkg.has_files:
                continue
            infoname = _infoname(pkg.name, pkg.architecture, pkg.multi_arch)
            declared = self.db.info.get(f"{infoname}.triggers")
            if declared is not None:
                directives = parse_triggers(declared, source=f"/{INFO}/{infoname}.triggers")
                interests.add(self.db.pkg_owner(pkg), directives)
        return interests

    def _write_trigger_interests(self) -> None:
        before = self._initial_interests()
        after = self._initial_interests()
        for update in self.todo:
            after.replace(self._old_owner(update), update.triggers_old, update.owner,
                          update.triggers_new)
        if after.files != before.files:
            self.db_entries[TRIGGERS_FILE] = _db_entry(TRIGGERS_FILE,
                                                       format_file_interests(after.files))
        for trigger, interests in after.explicit.items():
            if interests == before.explicit.get(trigger, []):
                continue
            path = f"{TRIGGERS}/{trigger}"
            if interests:
                self.db_entries[path] = _db_entry(path, format_explicit_interests(interests))
            else:  # dpkg removes an interest file nobody is left in
                self.whiteouts.add(path)

    def _old_owner(self, update: _Update) -> str | None:
        return None if update.previous is None else self.db.pkg_owner(update.previous)

    # ----------------------------------------------------------------- jobs

    def _configure_order(self) -> list[_Update]:
        """dpkg's configure queue: a package waits for the dependencies it finds unpacked.

        A package whose ``Depends``/``Pre-Depends`` group is met only by an
        updated package not yet configured goes to the back of the queue; when
        a whole round makes no progress (a cycle) the first one goes anyway.
        """
        pending = {u.key: u for u in self.todo}
        outside: dict[str, list[tuple[str, str | None]]] = {}  # name -> (version, provided)
        for pkg in self.db.packages:
            if not pkg.is_installed or _key(pkg) in pending or _key(pkg) in self.replaced_keys:
                continue
            outside.setdefault(pkg.name, []).append((pkg.version, None))
            for provided in pkg.provides:
                outside.setdefault(provided.name, []).append(
                    ("", provided.version if provided.op == "=" else None))
        done: list[_Update] = []
        configured: set[Key] = set()
        queue = list(self.todo)
        stalled = 0
        while queue:
            update = queue.pop(0)
            if stalled <= len(queue) and self._must_wait(update, outside, configured, pending):
                queue.append(update)
                stalled += 1
                continue
            stalled = 0
            done.append(update)
            configured.add(update.key)
        return done

    @staticmethod
    def _met_outside(relation: Relation,
                     outside: Mapping[str, list[tuple[str, str | None]]]) -> bool:
        for version, provided in outside.get(relation.name, ()):
            if version:
                if relation.version_matches(version):
                    return True
            elif relation.op is None or (provided is not None and
                                         relation.version_matches(provided)):
                return True
        return False

    def _must_wait(self, update: _Update, outside: Mapping[str, list[tuple[str, str | None]]],
                   configured: set[Key], pending: Mapping[Key, _Update]) -> bool:
        paragraph = update.control.paragraph
        for field_name in ("Pre-Depends", "Depends"):
            for group in parse_relations(paragraph.get(field_name) or ""):
                satisfied = waiting = False
                for relation in group:
                    if self._met_outside(relation, outside):
                        satisfied = True
                        break
                    for key, other in pending.items():
                        if not relation.satisfied_by(other.name, other.control.version,
                                                     other.provides):
                            continue
                        if key in configured or key == update.key:
                            satisfied = True
                        else:
                            waiting = True
                    if satisfied:
                        break
                if waiting and not satisfied:
                    return True
        return False

    def _env(self, name: str, arch: str, script: str) -> tuple[tuple[str, str], ...]:
        """What dpkg, run by apt with ``--force-confold``, puts in a script's environment
        (apt adds ``DPKG_FRONTEND_LOCKED``: it holds the frontend lock)."""
        refcount = sum(1 for p in self.db.packages if p.name == name and p.has_files) or 1
        env = [("DPKG_MAINTSCRIPT_PACKAGE", name),
               ("DPKG_MAINTSCRIPT_PACKAGE_REFCOUNT", str(refcount)),
               ("DPKG_MAINTSCRIPT_ARCH", arch),
               ("DPKG_MAINTSCRIPT_NAME", script),
               ("DPKG_MAINTSCRIPT_DEBUG", "0"),
               ("DPKG_ADMINDIR", "/" + ADMINDIR),
               ("DPKG_ROOT", ""),
               ("DPKG_COLORS", "never"),
               ("DEBIAN_FRONTEND", "noninteractive"),
               ("DPKG_FORCE", "security-mac,downgrade,confold"),
               ("DPKG_FRONTEND_LOCKED", "true")]
        running = self.db.version_of_dpkg()
        if running:
            env.append(("DPKG_RUNNING_VERSION", running))
        return tuple(env)

    def _jobs(self) -> list[ScriptJob]:
        """The scripts one ``dpkg --install`` of the updates runs, in its order, as far as
        it can be known before any runs (what scripts activate themselves comes on top:
        see :meth:`sequence`).

        Unpacking, package by package: the old ``prerm upgrade NEW``, the new
        ``preinst upgrade OLD NEW`` (``install`` for a new package), the old
        ``postrm upgrade NEW``. Then configuring, in dpkg's queue order:
        ``postinst configure OLD`` (``""`` for a new package). Then the
        deferred trigger queue: ``postinst triggered "NAMES"`` per package.
        Trigger activations are replayed as dpkg records them: a package's
        ``activate`` directives (old and new at unpack, new at configure),
        every path it unpacks and removes, its conffiles again at configure;
        only packages not in the middle of being updated receive them.
        """
        if self.db.kind != "status":
            reason = "status.d image: no dpkg database to run maintainer scripts against"
            for u in self.todo:
                for script in ("preinst", "postinst"):
                    if script in u.control.scripts:
                        action = "configure" if script == "postinst" else (
                            "upgrade" if u.previous is not None else "install")
                        old = f" {u.previous.version}" if u.previous is not None else ""
                        self.not_run.append((f"{u.owner} {script} {action}{old}", reason))
            if self.not_run:
                self.notes.append("status.d image: maintainer scripts are not run "
                                  "(the image has no dpkg database to run them against)")
            return []
        return list(self._steps(self._trigger_run(), self.processed))

    def _trigger_run(self) -> _TriggerState:
        interests = self._initial_interests()
        run = TriggerRun(interests.all(),
                         {self.db.pkg_owner(p) for p in self.db.packages if p.is_installed})
        for pkg in self.db.packages:
            # Triggers left pending in the image stay so, unless this run activates the
            # package again: then they are processed with the new ones.
            left = (pkg.paragraph.get("Triggers-Pending") or "").split()
            if left and pkg.is_installed:
                run.pending[self.db.pkg_owner(pkg)] = left
        return _TriggerState(run, interests)

    def _steps(self, state: _TriggerState, processed: set[str]) -> Iterator[ScriptJob]:
        """The jobs, one at a time: what dpkg does between two jobs happens when the
        next one is asked for, so activations recorded meanwhile (a script's
        ``dpkg-trigger``) are taken into account as dpkg takes them."""
        run, interests = state.run, state.interests
        if self.preconfigure and self.todo:
            yield self._pre_install_hook()
        for update in self.todo:
            previous, old_owner = update.previous, self._old_owner(update)
            old_version = "" if previous is None else _canonical_version(previous.version)
            if update.upgrade:
                for trigger, _ in update.triggers_old.activates:
                    run.activate(trigger)
            for trigger, _ in update.triggers_new.activates:
                run.activate(trigger)
            if old_owner is not None:
                run.unpacking(old_owner)
            run.unpacking(update.owner)
            before_unpack = self._info_before_unpack(update)
            if update.upgrade and previous is not None and \
                    f"{update.old_infoname}.prerm" in self.db.info:
                yield ScriptJob(old_owner or update.owner, "prerm",
                                f"{INFO}/{update.old_infoname}.prerm",
                                ("upgrade", update.version),
                                self._env(previous.name, previous.architecture, "prerm"),
                                before_unpack)
            if "preinst" in update.control.files:
                if update.upgrade:
                    args: tuple[str, ...] = ("upgrade", old_version, update.version)
                elif old_version:
                    args = ("install", old_version, update.version)
                else:
                    args = ("install",)
                # dpkg runs the new preinst from the control area it is installing.
                control_area = tuple(Staged(f"{CONTROL_AREA}/{m.name}", m.data, m.mode)
                                     for m in update.control.files.values())
                yield ScriptJob(update.owner, "preinst", f"{CONTROL_AREA}/preinst", args,
                                self._env(update.name, update.arch, "preinst"),
                                before_unpack + control_area)
            interests.replace(old_owner, update.triggers_old, update.owner, update.triggers_new)
            run.set_interests(interests.all())
            # Every path it unpacks (conffiles too) and removes, by the name the package
            # gives it: dpkg does not apply diversions to trigger paths (checked with
            # dpkg 1.21: a file diverted into a watched directory activates only the
            # directory the package names).
            for member in update.data:
                run.activate_path("/" + member.path)
            for path in reversed(update.removed):
                run.activate_path("/" + path)
            if update.upgrade and previous is not None and \
                    f"{update.old_infoname}.postrm" in self.db.info:
                yield ScriptJob(old_owner or update.owner, "postrm",
                                f"{INFO}/{update.old_infoname}.postrm",
                                ("upgrade", update.version),
                                self._env(previous.name, previous.architecture, "postrm"),
                                before_unpack)
        for update in self._configure_order():
            for trigger, _ in update.triggers_new.activates:
                run.activate(trigger)
            for conffile in update.conffiles:  # dpkg activates each as it settles it
                if not conffile.obsolete and not conffile.remove_on_upgrade:
                    run.activate_path(conffile.path)
            # Installed once its postinst is done: what that postinst activates reaches
            # it too (dpkg records the activation after the script).
            run.configured(update.owner)
            if "postinst" in update.control.files:
                yield ScriptJob(update.owner, "postinst",
                                f"{INFO}/{update.infoname}.postinst",
                                ("configure", self._configured_version(update)),
                                self._env(update.name, update.arch, "postinst"))
        scripts: dict[str, tuple[str, str, str, bool]] = {}
        for pkg in self.db.packages:
            infoname = _infoname(pkg.name, pkg.architecture, pkg.multi_arch)
            scripts[self.db.pkg_owner(pkg)] = (pkg.name, pkg.architecture, infoname,
                                               f"{infoname}.postinst" in self.db.info)
        for update in self.todo:
            scripts[update.owner] = (update.name, update.arch, update.infoname,
                                     "postinst" in update.control.files)
        count = 0
        while (item := run.take()) is not None:
            owner, names = item
            processed.add(owner)
            count += 1
            if count > MAX_TRIGGER_RUNS:
                raise PackageDBError(f"trigger processing does not end (looping at {owner} "
                                     f"{names}): dpkg would stop with a trigger cycle",
                                     path="/" + TRIGGERS)
            name, arch, infoname, has_postinst = scripts.get(owner, (owner, "", owner, False))
            if has_postinst:
                yield ScriptJob(owner, "triggered", f"{INFO}/{infoname}.postinst",
                                ("triggered", names), self._env(name, arch, "postinst"))

    def _pre_install_hook(self) -> ScriptJob:
        """apt's ``DPkg::Pre-Install-Pkgs`` hook as debconf installs it
        (``/usr/sbin/dpkg-preconfigure --apt || true``): run by ``sh -c`` with the
        ``.deb`` files apt is about to install on its standard input, one path a line,
        where apt keeps them (``/var/cache/apt/archives``)."""
        staged: list[Staged] = []
        names: list[str] = []
        for update in self.todo:
            name = (f"{update.name}_{update.control.version.replace(':', '%3a')}_"
                    f"{update.control.architecture}.deb")
            staged.append(Staged(f"{APT_ARCHIVES}/{name}", None, source=str(update.deb)))
            names.append(f"/{APT_ARCHIVES}/{name}\n")
        listing = f"{APT_ARCHIVES}/suture-pre-install-pkgs"
        hook = f"{APT_ARCHIVES}/suture-pre-install-hook"
        staged.append(Staged(listing, "".join(names).encode()))
        staged.append(Staged(hook, (
            "#!/bin/sh\n"
            f"exec /bin/sh -c '{PRECONFIGURE} --apt || true' < /{listing}\n").encode(), 0o755))
        return ScriptJob("apt", "pre-install-pkgs", hook, (),
                         (("DEBIAN_FRONTEND", "noninteractive"),), tuple(staged))

    def _info_before_unpack(self, update: _Update) -> tuple[Staged, ...]:
        """``info/`` as dpkg has it while unpacking ``update``: the old version's files
        (its scripts among them), none of the new version's yet."""
        old = set(self.db.info_files(update.old_infoname)) if update.upgrade and \
            update.old_infoname is not None else set()
        staged = [Staged(f"{INFO}/{name}", self.db.info[name],
                         0o755 if name.rpartition(".")[2] in (*_SCRIPT_NAMES, "config")
                         else 0o644)
                  for name in sorted(old)]
        new = {f"{update.infoname}.{m.name}" for m in update.control.files.values()
               if m.name != "control"} | {f"{update.infoname}.list",
                                          f"{update.infoname}.md5sums"}
        staged += [Staged(f"{INFO}/{name}", None) for name in sorted(new - old)]
        return tuple(staged)

    def sequence(self) -> DpkgScripts:
        """The jobs as they run, with what the scripts themselves activate: see
        :class:`DpkgScripts`."""
        return DpkgScripts(self)

    @staticmethod
    def _configured_version(update: _Update) -> str:
        """``postinst configure``'s argument: the version last configured, or ``""``."""
        previous = update.previous
        if previous is None:
            return ""
        if update.upgrade:
            return _canonical_version(previous.version)
        config_version = previous.paragraph.get("Config-Version")
        return _canonical_version(config_version) if config_version else ""

    # ----------------------------------------------------------------- output

    def _layer_entries(self) -> list[Entry]:
        entries = dict(self.entries)
        entries.update(self.db_entries)
        out = list(entries.values())
        below = _ancestors(entries)
        for path in sorted(self.whiteouts):
            if path in entries or path in below:
                continue  # the layer puts something there (or below it)
            parts = path.split("/")
            if any("/".join(parts[:i]) in self.whiteouts for i in range(1, len(parts))):
                continue  # its directory goes too
            out.append(Entry.whiteout(path))
        return out

    def _check_written(self) -> list[InstalledPackage]:
        """Parse back what was written (DESIGN rule 6) and give the new stanzas."""
        def written_bytes(path: str) -> bytes:
            data = self.db_entries[path].data
            assert isinstance(data, bytes)
            return data

        written: list[InstalledPackage] = []
        if self.db.kind == "status":
            packages = parse_status(written_bytes(STATUS), source=f"/{STATUS} (as written)")
            replaced = {_key(u.previous) for u in self.todo if u.previous is not None}
            expected = len([p for p in self.db.packages if _key(p) not in replaced]) + len(
                self.todo)
            if len(packages) != expected:
                raise PackageDBError(f"wrote {len(packages)} stanzas, expected {expected}",
                                     path="/" + STATUS)
            index = {_key(p): p for p in packages}
            for update in self.todo:
                pkg = index.get(update.key)
                if pkg is None or pkg.version != update.version or not pkg.is_installed:
                    raise PackageDBError(f"{update.owner} not written as installed",
                                         path="/" + STATUS)
                written.append(pkg)
        else:
            for update in self.todo:
                path = next(p for p in self.db_entries
                            if p.startswith(STATUS_D + "/") and not p.endswith(".md5sums")
                            and any(_key(s) == update.key for s in parse_status(
                                written_bytes(p), source=f"/{p} (as written)")))
                written.extend(s for s in parse_status(written_bytes(path), source="/" + path)
                               if _key(s) == update.key)
        for path in self.db_entries:
            if path.endswith(".list") and any(
                    line and not line.startswith("/")
                    for line in _decode(written_bytes(path)).split("\n")):
                raise PackageDBError("malformed list written", path="/" + path)
            if path.endswith(".md5sums"):
                try:
                    parse_md5sums(written_bytes(path))
                except PackageFormatError as exc:
                    raise PackageDBError(exc.message, path="/" + path) from None
        return written


# --------------------------------------------------------------------------- running


@dataclass
class _TriggerState:
    run: TriggerRun
    interests: _Interests


class DpkgScripts:
    """The maintainer scripts of one application as dpkg runs them, job by job
    (a :class:`~suture.distro.scripts.ScriptSequence`).

    Before each job (and once all ran) the triggers scripts activated with
    ``dpkg-trigger`` (``triggers/Unincorp``) are incorporated as dpkg does: the
    interested packages get them pending, the file is emptied, and the deferred
    queue processes them (``postinst triggered``) until nothing is pending. At
    the end, packages whose pending triggers were processed only because a
    script activated them are written back as installed in ``status``.
    """

    def __init__(self, applier: _Applier) -> None:
        self._applier = applier
        self.processed: set[str] = set()
        self._state = applier._trigger_run()
        self._steps = applier._steps(self._state, self.processed)

    def next_job(self, root: RootFiles) -> ScriptJob | None:
        self._incorporate(root)
        return next(self._steps, None)

    def _incorporate(self, root: RootFiles) -> None:
        data = root.read(UNINCORP)
        if not data:
            return
        for trigger, _awaiters in parse_unincorp(data, source="/" + UNINCORP):
            # Every job runs to the end before the next, so what a trigger awaits is
            # always processed before this run ends: the awaiters need no record.
            self._state.run.activate(trigger)
        root.write(UNINCORP, b"")

    def finish(self, root: RootFiles) -> None:
        extra = self.processed - self._applier.processed
        if not extra:
            return
        data = root.read(STATUS, limit=1 << 30)
        if data is None:
            raise PackageDBError("gone after the maintainer scripts", path="/" + STATUS)
        packages = parse_status(data, source=f"/{STATUS} (after the maintainer scripts)")
        after = [self._applier._after_triggers(p, self.processed) for p in packages]
        if after != packages:
            root.write(STATUS, _encode(format_paragraphs(p.paragraph for p in after)))
