"""Apply apk package updates to an image as one layer, as ``apk upgrade`` would.

Input: the installed database, the image's merged tree (every path's kind, mode,
owner and symlink target; the contents of the files this module reads), and the
updates: ``(installed record or None, index entry, verified archive)``. Output:
the entries of one layer and the scripts apk would run. Nothing is run, fetched
or written here.

What apk does and this module reproduces:

* files: every data entry with its mode, owner (``uname``/``gname`` mapped
  through the image's ``etc/passwd`` and ``etc/group``, else the numbers in the
  archive), mtime and extended attributes, written where apk writes it: parent
  directories followed through the image's symlinks (``lib -> usr/lib``), the last
  component not (a file replaces a symlink). Names starting with ``.`` at the top
  of the data part and ``.keep_*`` files are not installed. A directory is
  written only when the image lacks it or has other permissions;
* protected paths (``etc`` and ``/etc/apk/protected_paths.d``): a file there that
  the user changed (its contents differ from the ``Z:`` recorded, or it has none)
  is kept, and the new one written as ``<path>.apk-new`` unless identical;
* a file another installed package owns is refused (apk's "trying to overwrite"),
  unless both come from the same origin or one ``replaces`` the other; a
  replacing package takes the file, and the other's record drops it;
* removal: whiteouts for what the old version owned and nothing owns afterwards
  (in protected directories only files the user left unchanged), and for the old
  directories that no package owns and that end up empty;
* the database: ``installed`` with each updated record rewritten (index fields
  in apk's order, ``r:``/``q:`` from ``.PKGINFO``, the ``s:`` tag kept, files
  with ``a:``/``M:`` ACLs and ``Z:`` checksums, so ``apk audit`` finds nothing),
  every other record byte for byte; ``scripts.tar`` and ``triggers`` with the
  old versions' entries replaced by the new ones';
* jobs, in install order (dependencies first): ``pre-upgrade NEW OLD`` (or
  ``pre-install NEW``) and ``post-upgrade NEW OLD`` (``post-install NEW``); then
  ``.trigger`` scripts with the directories that fired them: an updated
  package's triggers match every directory in the database, an unchanged
  package's only the directories of updated packages (``fnmatch`` with
  ``FNM_PATHNAME`` on ``/dir``). Scripts run from ``lib/apk/exec/`` (scratch
  files, never in the layer), as apk runs them.

Differences from apk: scripts run after the whole layer is in place (apk runs
``pre-*`` before unpacking each package); ``install_if`` packages are not added.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from suture.distro.apk.checksum import encode_checksum, xattr_checksum
from suture.distro.apk.deps import Dependency, format_dependencies
from suture.distro.apk.index import IndexEntry
from suture.distro.apk.installed import (
    SCRIPT_TYPES,
    Acl,
    DirRecord,
    FileRecord,
    InstalledPackage,
    ScriptMember,
    display_key,
    format_installed,
    format_scripts_tar,
    format_triggers,
    is_protected,
    parse_installed,
    parse_scripts_tar,
    parse_triggers,
    protect_mode,
)
from suture.distro.apk.package import ApkArchive, DataMember
from suture.distro.apply import FileConflictError, TreeNode
from suture.distro.scripts import ScriptJob
from suture.errors import PackageDBError, PackageFormatError, SutureError
from suture.oci.fs import resolve_links
from suture.oci.layer import DIR, FILE, HARDLINK, SYMLINK, Entry

__all__ = ["ApkApplyResult", "FileConflictError", "Update", "apply_updates"]

log = logging.getLogger(__name__)

DB = "lib/apk/db"
INSTALLED = f"{DB}/installed"
SCRIPTS = f"{DB}/scripts.tar"
TRIGGERS = f"{DB}/triggers"
EXEC = "lib/apk/exec"
_INDEX_FIELDS = ("C", "P", "V", "A", "S", "I", "T", "U", "L", "o", "m", "t", "c", "k", "D",
                 "p", "i")
_ALWAYS = ("T", "U", "L")  # apk writes these even when empty


@dataclass(frozen=True)
class Update:
    """One package to install: the record it replaces (None: new), its index entry and
    the verified archive."""

    old: InstalledPackage | None
    entry: IndexEntry
    archive: ApkArchive


@dataclass(frozen=True)
class ApkApplyResult:
    """``entries``: the layer. ``jobs``: scripts to run, in order; ``scratch``: the
    files they run from (never in the layer). ``packages``: the whole database as
    written. ``notes``: what was done differently than a plain overwrite."""

    entries: list[Entry]
    jobs: list[ScriptJob]
    scratch: list[Entry] = field(default_factory=list)
    packages: list[InstalledPackage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    not_run: list[tuple[str, str]] = field(default_factory=list)


def _ids(data: bytes | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            out.setdefault(parts[0], int(parts[2]))
    return out


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """``fnmatch(3)`` with ``FNM_PATHNAME``: wildcards never match ``/``."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("!", "]") else i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"(?!/)[{body}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def _install_order(updates: Sequence[Update]) -> list[Update]:
    """Dependencies before their dependents (among the updates), else by name."""
    by_name = {u.entry.name: u for u in updates}
    provided: dict[str, str] = {}
    for u in updates:
        for p in u.entry.provides:
            provided.setdefault(p.name, u.entry.name)
    done: list[Update] = []
    seen: set[str] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        if name in seen or name in stack:
            return
        for dep in by_name[name].entry.depends:
            if dep.conflict:
                continue
            target = dep.name if dep.name in by_name else provided.get(dep.name)
            if target is not None and target != name:
                visit(target, (*stack, name))
        seen.add(name)
        done.append(by_name[name])

    for name in sorted(by_name):
        visit(name, ())
    return done


class _Applier:
    """The image as apk sees it while installing: paths through its symlinks, its users
    and groups, the current contents of files."""

    def __init__(self, tree: Mapping[str, TreeNode], files: Mapping[str, bytes],
                 protected: Sequence[tuple[str, int]]) -> None:
        self.tree = tree
        self.files = files
        self.protected = protected
        self.users = _ids(files.get("etc/passwd"))
        self.groups = _ids(files.get("etc/group"))
        self.notes: list[str] = []

    # -------------------------------------------------------------- paths
    def _readlink(self, path: str) -> str | None:
        node = self.tree.get(path)
        return node.linkname if node is not None and node.kind == SYMLINK else None

    def where(self, path: str) -> str:
        """Where apk writes ``path``: parents through the image's symlinks, not the last."""
        return resolve_links(path, self._readlink, follow_last=False)

    def node(self, path: str) -> TreeNode | None:
        return self.tree.get(self.where(path))

    def current(self, path: str) -> bytes | None:
        """The contents of the regular file (or the target of the symlink) at ``path``."""
        real = self.where(path)
        node = self.tree.get(real)
        if node is None:
            return None
        if node.kind == SYMLINK:
            return node.linkname.encode("utf-8", "surrogateescape")
        if node.kind != FILE:
            return b""
        data = self.files.get(real)
        if data is None:
            raise SutureError(f"/{real}: contents needed to compare with the database were "
                              "not read from the image")
        return data

    # -------------------------------------------------------------- one package
    def _owner_ids(self, m: DataMember) -> tuple[int, int]:
        uid = self.users.get(m.uname, m.uid) if m.uname else m.uid
        gid = self.groups.get(m.gname, m.gid) if m.gname else m.gid
        return uid, gid

    def new_record(self, update: Update) -> tuple[InstalledPackage, list[DataMember]]:
        """The package's new record (files in archive order) and the members to write."""
        entry, archive, old = update.entry, update.archive, update.old
        name = entry.name
        control = archive.control
        if control.name != name or control.version != entry.version:
            raise PackageFormatError(
                f"{entry.filename}: the package says {control.name} {control.version}, the "
                f"index {name} {entry.version}", text=entry.filename)
        dirs: dict[str, DirRecord] = {}
        order: list[str] = []
        checksums: dict[str, str | None] = {}
        members: list[DataMember] = []
        for m in archive.members:
            uid, gid = self._owner_ids(m)
            acl = Acl(uid, gid, m.mode, xattr_checksum(m.xattrs))
            if m.kind == DIR:
                if m.path not in dirs:
                    order.append(m.path)
                dirs[m.path] = replace(dirs.get(m.path, DirRecord(m.path)), acl=acl)
                members.append(m)
                continue
            parent, _, base = m.path.rpartition("/")
            if base.startswith(".keep_"):
                continue
            if parent not in dirs:
                if parent:
                    raise PackageFormatError(f"{entry.filename}: {m.path} has no directory "
                                             "entry in the archive", text=m.path)
                order.append("")
                dirs[""] = DirRecord("")
            checksum = m.checksum
            if m.kind == HARDLINK:
                if m.linkname not in checksums:
                    raise PackageFormatError(f"{entry.filename}: hard link {m.path} to "
                                             f"{m.linkname}, which is not in the package",
                                             text=m.path)
                checksum = checksums[m.linkname]
            checksums[m.path] = checksum
            file_record = FileRecord(base, acl, checksum)
            d = dirs[parent]
            dirs[parent] = replace(d, files=(*[f for f in d.files if f.name != base],
                                             file_record))
            members.append(m)
        fields = [(k, v) for k, v in entry.fields if k in _INDEX_FIELDS]
        have = {k for k, _ in fields}
        fields += [(k, "") for k in _ALWAYS if k not in have]
        replaces = control.replaces
        if replaces:
            fields.append(("r", format_dependencies(replaces)))
        if control.replaces_priority:
            fields.append(("q", str(control.replaces_priority)))
        if old is not None and old.tag:
            fields.append(("s", old.tag))
        record = InstalledPackage(tuple(fields), tuple(dirs[d] for d in order))
        return record.with_fields(), members  # with_fields(): apk's field order


def _files_of(pkg: InstalledPackage) -> dict[str, FileRecord]:
    return dict(pkg.files())


def _replaces(pkg_replaces: Sequence[Dependency], other: InstalledPackage) -> bool:
    return any(d.satisfied_by(other.name, other.version, identity=other.identity)
               for d in pkg_replaces)


def apply_updates(installed: Sequence[InstalledPackage], updates: Sequence[Update], *,
                  tree: Mapping[str, TreeNode], files: Mapping[str, bytes],
                  protected: Sequence[tuple[str, int]], db_dir: str = DB,
                  exec_dir: str = EXEC, mtime: int = 0) -> ApkApplyResult:
    """Apply ``updates`` (see the module docstring).

    ``files``: contents by real path: ``etc/passwd``, ``etc/group``, the database
    files under ``db_dir`` (the real path of ``lib/apk/db``) and the current
    contents of files in protected directories. ``mtime``: for ``scripts.tar``
    members of packages without a build date.
    """
    a = _Applier(tree, files, protected)
    by_name = {p.name: p for p in installed}
    ordered = _install_order(updates)
    new_records: dict[str, InstalledPackage] = {}
    members_of: dict[str, list[DataMember]] = {}
    for u in ordered:
        record, members = a.new_record(u)
        new_records[u.entry.name] = record
        members_of[u.entry.name] = members
    updated = set(new_records)

    # Who owns each path once every update is in: untouched packages keep theirs.
    owners: dict[str, str] = {}
    for pkg in installed:
        if pkg.name not in updated:
            for path, _f in pkg.files():
                owners.setdefault(path, pkg.name)
    lost: dict[str, set[str]] = {}  # package -> paths a replacing package took
    for u in ordered:
        name = u.entry.name
        control = u.archive.control
        kept_back: set[str] = set()
        for path, _f in new_records[name].files():
            owner = owners.get(path)
            if owner is not None and owner != name:
                other = new_records.get(owner) or by_name[owner]
                if other.origin != u.entry.origin:  # same origin: simply taken over
                    # apk: whoever replaces the other with the higher priority keeps it.
                    theirs = other.replaces_priority if _replaces(other.replaces, _as_pkg(u)) \
                        else -1
                    ours = control.replaces_priority if _replaces(control.replaces, other) \
                        else -1
                    if theirs > ours:
                        kept_back.add(path)
                        continue
                    if ours < 0:
                        raise FileConflictError(
                            path, f"{name} {u.entry.version}", owner,
                            hint="apk refuses this too; the package needs a replaces= on one side")
                if owner not in updated:
                    lost.setdefault(owner, set()).add(path)
            owners[path] = name
        if kept_back:  # not installed, so not in the new record either
            new_records[name] = _without(new_records[name], kept_back)

    notes: list[str] = []
    entries: dict[str, Entry] = {}
    for u in ordered:
        name = u.entry.name
        old_files = _files_of(u.old) if u.old is not None else {}
        for m in members_of[name]:
            uid, gid = a._owner_ids(m)
            if m.kind == DIR:
                real = a.where(m.path)
                node = a.tree.get(real)
                if node is not None and node.kind == SYMLINK:
                    continue  # a directory symlinked elsewhere: apk leaves it as it is
                if node is not None and node.kind == DIR and (
                        node.mode & 0o7777, node.uid, node.gid) == (m.mode, uid, gid):
                    continue
                # apk-tools 2 makes directories with mkdir: no extended attributes.
                entries[real] = Entry(real, DIR, m.mode, uid, gid, m.mtime)
                continue
            if owners.get(m.path) != name:
                continue  # kept by a package that replaces this one
            real = a.where(m.path)
            target = real
            directory = m.path.rpartition("/")[0]
            if is_protected(protect_mode(directory, protected)):
                keep = _keep_user_file(a, m, old_files.get(m.path), by_name, u)
                if keep is not None:
                    if keep:
                        target = real + ".apk-new"
                        notes.append(f"{name}: /{m.path} was changed in the image: kept, the "
                                     f"new version is /{m.path}.apk-new")
                    else:
                        continue
            entries[target] = _entry(m, target, uid, gid, a)
        removed = _removed(a, u, new_records, owners, protected)
        for path in removed:
            whiteout = Entry.whiteout(path)
            entries.setdefault(whiteout.path, whiteout)

    # Old directories nobody owns any more, when nothing is left in them; what the
    # layer would put inside them is covered by their whiteout.
    gone_dirs = _empty_dirs(a, ordered, new_records, installed, updated, entries)
    if gone_dirs:
        entries = {p: e for p, e in entries.items()
                   if not any(p.startswith(d + "/") for d in gone_dirs)}
        for real in gone_dirs:
            whiteout = Entry.whiteout(real)
            entries[whiteout.path] = whiteout

    # The database.
    final: list[InstalledPackage] = []
    for pkg in installed:
        if pkg.name in new_records:
            final.append(new_records.pop(pkg.name))
        elif pkg.name in lost:
            final.append(_without(pkg, lost[pkg.name]))
        else:
            final.append(pkg)
    if new_records:
        sorted_db = [display_key(p.name) for p in installed] == sorted(
            display_key(p.name) for p in installed)
        final.extend(new_records.values())
        if sorted_db:
            final.sort(key=lambda p: display_key(p.name))
    installed_bytes = format_installed(final)
    check = parse_installed(installed_bytes, source="/" + f"{db_dir}/installed (as written)")
    if [(p.name, p.version) for p in check] != [(p.name, p.version) for p in final]:
        raise PackageDBError("the database written does not read back",
                             path="/" + f"{db_dir}/installed")
    db_entries = [Entry.file(f"{db_dir}/installed", installed_bytes, mtime=None)]

    scripts, jobs, scratch = _scripts(a, ordered, installed, final, updated, db_dir, exec_dir,
                                      mtime)
    db_entries += scripts
    for e in db_entries:
        entries[e.path] = e
    return ApkApplyResult(sorted(entries.values(), key=lambda e: e.path), jobs, scratch, final,
                          a.notes + notes)


def _without(pkg: InstalledPackage, paths: set[str]) -> InstalledPackage:
    """``pkg``'s record without the files at ``paths`` (its directories stay)."""
    dirs = tuple(replace(d, files=tuple(f for f in d.files if (
        f"{d.name}/{f.name}" if d.name else f.name) not in paths)) for d in pkg.dirs)
    return replace(pkg, dirs=dirs, raw="")


def _as_pkg(u: Update) -> InstalledPackage:
    return InstalledPackage((("P", u.entry.name), ("V", u.entry.version),
                             ("C", u.entry.identity)))


def _entry(m: DataMember, path: str, uid: int, gid: int, a: _Applier) -> Entry:
    if m.kind == FILE:
        data = m.data or b""
        return Entry(path, FILE, m.mode, uid, gid, m.mtime, len(data), data=data,
                     xattrs=m.xattrs)
    if m.kind == HARDLINK:
        return Entry(path, HARDLINK, m.mode, uid, gid, m.mtime, linkname=a.where(m.linkname))
    if m.kind == SYMLINK:
        return Entry(path, SYMLINK, 0o777, uid, gid, m.mtime, linkname=m.linkname,
                     xattrs=m.xattrs)
    return Entry(path, m.kind, m.mode, uid, gid, m.mtime, xattrs=m.xattrs)


def _checksum_of(data: bytes, like: str | None) -> str:
    if like is not None and len(like) == 32 and not like.startswith("Q"):
        return hashlib.md5(data, usedforsecurity=False).hexdigest()
    if like is not None and like.startswith("Q2"):
        return encode_checksum(hashlib.sha256(data).digest())
    return encode_checksum(hashlib.sha1(data, usedforsecurity=False).digest())


def _keep_user_file(a: _Applier, m: DataMember, old: FileRecord | None,
                    by_name: Mapping[str, InstalledPackage], u: Update) -> bool | None:
    """For a file in a protected directory: None to overwrite it; True to keep the
    image's file and write ``.apk-new``; False to keep it and write nothing (the new
    one is identical)."""
    current = a.current(m.path)
    if current is None:
        return None  # nothing there
    recorded = old.checksum if old is not None else None
    if recorded is None:
        for pkg in by_name.values():
            if pkg.name != u.entry.name:
                rec = dict(pkg.files()).get(m.path)
                if rec is not None:
                    recorded = rec.checksum
                    break
    if recorded is not None and _checksum_of(current, recorded) == recorded:
        return None  # unchanged by the user: replaced
    new_sum = m.checksum
    same = m.kind in (FILE, SYMLINK) and new_sum is not None and \
        _checksum_of(current, new_sum) == new_sum
    return not same


def _removed(a: _Applier, u: Update, new_records: Mapping[str, InstalledPackage],
             owners: Mapping[str, str], protected: Sequence[tuple[str, int]]) -> list[str]:
    if u.old is None:
        return []
    keep = {a.where(p) for rec in new_records.values() for p, _f in rec.files()}
    out = []
    for path, record in u.old.files():
        if path in owners:
            continue
        real = a.where(path)
        if real in keep or real not in a.tree:
            continue
        directory = path.rpartition("/")[0]
        if is_protected(protect_mode(directory, protected)):
            current = a.current(path)
            if current is None or record.checksum is None or \
                    _checksum_of(current, record.checksum) != record.checksum:
                a.notes.append(f"{u.entry.name}: /{path} was changed in the image: kept "
                               "although the new version no longer has it")
                continue
        out.append(real)
    return out


def _empty_dirs(a: _Applier, ordered: Sequence[Update],
                new_records: Mapping[str, InstalledPackage], installed: Sequence[InstalledPackage],
                updated: set[str], entries: Mapping[str, Entry]) -> set[str]:
    """The real paths of the top-most old directories to remove."""
    owned = {d.name for rec in new_records.values() for d in rec.dirs}
    owned |= {d.name for p in installed if p.name not in updated for d in p.dirs}
    candidates = sorted({d.name for u in ordered if u.old is not None for d in u.old.dirs
                         if d.name and d.name not in owned}, key=lambda p: -p.count("/"))
    if not candidates:
        return set()
    gone: set[str] = set()
    written: set[str] = set()
    for path in entries:
        parent, _, base = path.rpartition("/")
        if base.startswith(".wh."):
            gone.add(posixpath.join(parent, base[4:]))
        else:
            written.add(path)
    children: dict[str, set[str]] = {}
    for path in (*a.tree, *written):
        children.setdefault(path.rpartition("/")[0], set()).add(path)
    removed: set[str] = set()
    for name in candidates:
        real = a.where(name)
        node = a.tree.get(real)
        if node is None or node.kind != DIR:
            continue
        if any(c not in gone and c not in removed for c in children.get(real, ())):
            continue
        removed.add(real)
    return {d for d in removed if d.rpartition("/")[0] not in removed}


def _scripts(a: _Applier, ordered: Sequence[Update], installed: Sequence[InstalledPackage],
             final: Sequence[InstalledPackage], updated: set[str], db_dir: str,
             exec_dir: str, mtime: int) -> tuple[list[Entry], list[ScriptJob], list[Entry]]:
    old_ids = {p.identity for p in installed if p.name in updated}
    members = [m for m in parse_scripts_tar(a.files.get(f"{db_dir}/scripts.tar", b""),
                                            source="/" + f"{db_dir}/scripts.tar")
               if m.identity not in old_ids]
    for u in ordered:
        c = u.archive.control
        for action in (a for a in SCRIPT_TYPES if a in c.scripts):  # apk's order
            members.append(ScriptMember.make(c.name, c.version, u.entry.identity, action,
                                             c.scripts[action], c.build_time or mtime))
    triggers = [(ident, globs) for ident, globs in parse_triggers(
        a.files.get(f"{db_dir}/triggers", b"")) if ident not in old_ids]
    for u in ordered:
        if u.archive.control.triggers:
            triggers.append((u.entry.identity, u.archive.control.triggers))
    out = [Entry.file(f"{db_dir}/scripts.tar", format_scripts_tar(members), mtime=None),
           Entry.file(f"{db_dir}/triggers", format_triggers(triggers), mtime=None)]

    jobs: list[ScriptJob] = []
    scratch: dict[str, Entry] = {}
    real_exec = a.where(exec_dir + "/x").rpartition("/")[0]

    def job(name: str, version: str, action: str, body: bytes, args: tuple[str, ...]) -> None:
        path = f"{real_exec}/{name}-{version}.{action}"
        scratch[path] = Entry.file(path, body, 0o755, mtime=None)
        jobs.append(ScriptJob(name, action, path, args))

    for u in ordered:
        c = u.archive.control
        old = u.old.version if u.old is not None else None
        pre, post = ("pre-upgrade", "post-upgrade") if old else ("pre-install", "post-install")
        args = (c.version, old) if old else (c.version,)
        for action in (pre, post):
            if action in c.scripts:
                job(c.name, c.version, action, c.scripts[action], args)

    modified = {d.name for u in ordered for d in (u.old.dirs if u.old else ())}
    modified |= {d.name for p in final if p.name in updated for d in p.dirs}
    every = {d.name for p in final for d in p.dirs}
    scripts_by_id = {(m.identity, m.action): m.data for m in members}
    by_identity = {p.identity: p for p in final}
    for ident, globs in triggers:
        pkg = by_identity.get(ident)
        body = scripts_by_id.get((ident, "trigger"))
        if pkg is None or body is None:
            continue
        dirs = every if pkg.name in updated else modified
        patterns = [_glob_regex(g) for g in globs if g.startswith("/")]
        fired = sorted("/" + d for d in dirs if any(p.match("/" + d) for p in patterns))
        if fired:
            job(pkg.name, pkg.version, "trigger", body, tuple(fired))
    return out, jobs, list(scratch.values())
