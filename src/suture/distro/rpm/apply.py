"""Apply an rpm transaction to an image as one layer, as ``rpm -U`` of the new
packages would (one dnf-style transaction).

Input: the installed packages (rpmdb rows), the updates (the installed package each
replaces, the verified new archive, the packages it obsoletes), the image's merged
tree, a reader for the current contents of its regular files, and a copy of its
sqlite rpmdb. Output: the layer's entries, the scriptlets rpm would run as
:class:`ScriptJob` values in rpm's order, and notes for what rpm warns about.
Nothing is run or fetched here.

What rpm does and this module reproduces:

* files, from the header's arrays: mode, owner (FILEUSERNAME/FILEGROUPNAME through
  the image's ``etc/passwd`` and ``etc/group``; unknown names are root, with a
  note, as rpm warns), mtime, symlink target, hardlink sets (the header's first
  link carries the data, the others are HARDLINK entries to it), FILECAPS as a
  ``security.capability`` xattr (version 2, as libcap's ``cap_set_file`` writes
  it), the directories the package lists and the parents missing in the image
  (0755 root). Parents are followed through the image's symlinks, the last
  component is not. ``%ghost`` files are not written;
* ``%config``: a file the user changed (its digest differs from the replaced
  package's) whose old and new digests differ is kept with the new one written
  as ``.rpmnew`` (``noreplace``), or moved to ``.rpmsave`` and replaced (plain);
  a config file nobody owned that differs from the new one is moved to
  ``.rpmorig`` (``.rpmnew`` with ``noreplace``); identical old and new configs
  are left alone;
* a file another installed package (one that stays) owns with other contents is a
  :class:`FileConflictError`; identical files are shared;
* erase: the replaced and obsoleted packages' files that no package owns after the
  transaction are whited out (a changed ``%config`` file is kept as ``.rpmsave``),
  as are their directories that end up empty and unowned;
* the rpmdb: the replaced and obsoleted rows removed, the new headers added
  (FILESTATES all 0, INSTALLCOLOR the installed packages' most common one,
  ``install_time``/``tid``), written to ``workdir`` and entered at ``db_path``;
  a ``-wal`` beside it in the image is emptied (the written file is
  checkpointed), a ``-shm`` is left as it is;
* scriptlets, as measured with rpm 4.18 ``-U`` of several packages: every
  ``%pretrans`` (install order), the installed packages' ``%transfiletriggerun``
  (the erased packages' matching files on stdin); then per new package in
  dependency order ``%pre``, the installed packages' ``%filetriggerin`` (its
  matching files), ``%post``, the installed packages' ``%triggerin`` on it, its
  own ``%triggerin`` on installed packages (and its own ``%filetriggerin``, not
  measured); then the erasures (a package before those it requires, unrelated
  ones in the order of their installs; installs put unrelated packages in reverse
  of the given order, as rpm 4.18 did): the others'
  ``%filetriggerun`` (the files removed), the old package's own ``%triggerun``,
  the installed packages' ``%triggerun`` on it, ``%preun``, the others'
  ``%filetriggerpostun``, ``%postun``, the others' ``%triggerpostun``; last every
  ``%posttrans``, the ``%transfiletriggerin`` (the new packages' matching files)
  and ``%transfiletriggerpostun`` (empty stdin). ``$1`` is the number of
  instances of the package's name after the step (``%pretrans``/``%posttrans``
  get the ``%pre`` count, as rpm 4.18 passes), a trigger's ``$2`` that of the
  triggering name; file triggers get ``0``. A ``-p <prog>`` scriptlet without a
  body runs the program with no arguments (as measured). The environment is
  rpm's ``PATH`` and, for a relocatable package, ``RPM_INSTALL_PREFIX<n>`` and
  ``RPM_INSTALL_PREFIX`` (its PREFIXES; INSTPREFIXES for an installed one). A
  file trigger's paths are a staged file fed to its stdin by
  ``/bin/sh -c 'exec "$@" < list'`` (ScriptJob has no stdin); a Lua file
  trigger gets no stdin.

Differences from rpm: the whole layer is in place before the first scriptlet runs
(rpm runs ``%pre`` before unpacking each package, and erases after); file
trigger priorities are not honoured (installed order).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import struct
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from suture.distro.apply import FileConflictError, TreeNode
from suture.distro.rpm.header import Header, Tag
from suture.distro.rpm.model import SENSE_EQUAL, Dep
from suture.distro.rpm.package import RpmArchive
from suture.distro.rpm.rpmdb import (
    InstalledPackage,
    RpmFile,
    header_files,
    installed_blob,
    package_info,
    stale_files,
    write_db,
    write_sqlite,
)
from suture.distro.rpm.version import dep_matches
from suture.distro.scripts import ScriptJob, Staged
from suture.errors import PackageFormatError, SutureError
from suture.oci.fs import resolve_links
from suture.oci.layer import BLOCK, CHAR, DIR, FIFO, FILE, HARDLINK, SYMLINK, Entry

__all__ = ["ApplyResult", "FileConflictError", "RpmUpdate", "apply_updates"]

log = logging.getLogger(__name__)

SPOOL_AT = 1 << 20  # members this large are spooled to files, not held in memory
MAX_CONFIG = 64 << 20  # a config file larger than this is not compared (treated as changed)
SCRIPT_PATH = "/sbin:/bin:/usr/sbin:/usr/bin:/usr/X11R6/bin"  # rpm's %_install_script_path
SCRIPT_DIR = "var/tmp"

_CONFIG, _NOREPLACE, _GHOST = 1, 16, 64
_TRIGGERIN, _TRIGGERUN, _TRIGGERPOSTUN = 1 << 16, 1 << 17, 1 << 18
_SENSE_MASK = 0x0E
_ALGOS = {1: "md5", 2: "sha1", 8: "sha256", 9: "sha384", 10: "sha512", 11: "sha224"}
_KINDS = {stat.S_IFREG: FILE, stat.S_IFDIR: DIR, stat.S_IFLNK: SYMLINK,
          stat.S_IFCHR: CHAR, stat.S_IFBLK: BLOCK, stat.S_IFIFO: FIFO}

# linux/capability.h, in number order
_CAPS = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid",
    "setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw",
    "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace",
    "sys_pacct", "sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time",
    "sys_tty_config", "mknod", "lease", "audit_write", "audit_control", "setfcap",
    "mac_override", "mac_admin", "syslog", "wake_alarm", "block_suspend", "audit_read",
    "perfmon", "bpf", "checkpoint_restore",
)
_CAP_NUM = {f"cap_{n}": i for i, n in enumerate(_CAPS)}


@dataclass(frozen=True)
class RpmUpdate:
    """One package to install: the installed package it replaces (None: a new name), its
    verified archive, and the installed packages it obsoletes (erased with it)."""

    old: InstalledPackage | None
    new: RpmArchive
    obsoleted: tuple[InstalledPackage, ...] = ()


@dataclass
class ApplyResult:
    """``entries``: the layer. ``jobs``: the scriptlets, in order; ``scratch``: files
    the jobs need that are not in the layer (none: jobs stage their scripts).
    ``not_run``: (what, why) for work rpm would do that no job does. ``notes``: rpm's
    warnings (``.rpmnew``/``.rpmsave``, unknown owners). ``cleanup`` removes the
    spooled files the entries open; call it once the layer is written."""

    entries: list[Entry]
    jobs: list[ScriptJob]
    scratch: list[Entry] = field(default_factory=list)
    not_run: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cleanup: Callable[[], None] | None = None


class RpmApplyError(SutureError):
    """The transaction cannot be laid out as rpm would."""


# ---------------------------------------------------------------- small helpers

def _ids(data: bytes | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            out.setdefault(parts[0], int(parts[2]))
    return out


def capability_xattr(text: str) -> bytes:
    """``security.capability`` (VFS_CAP_REVISION_2) for a FILECAPS text such as
    ``cap_net_raw=ep`` (cap_from_text's syntax: clauses of ``caps`` then ``=``,
    ``+`` or ``-`` and flags ``e``, ``i``, ``p``)."""
    sets = {"e": 0, "i": 0, "p": 0}
    for clause in text.split():
        pos = min((clause.find(op) for op in "=+-" if op in clause), default=-1)
        if pos < 0:
            raise RpmApplyError(f"file capabilities {text!r}: no operator in {clause!r}")
        names, rest = clause[:pos], clause[pos:]
        bits = 0
        if names in ("", "all"):
            bits = (1 << len(_CAPS)) - 1
        else:
            for name in names.lower().split(","):
                if name not in _CAP_NUM:
                    raise RpmApplyError(f"file capabilities {text!r}: unknown {name!r}")
                bits |= 1 << _CAP_NUM[name]
        op = ""
        for ch in rest:
            if ch in "=+-":
                op = ch
                if ch == "=":
                    for k in sets:
                        sets[k] &= ~bits
                continue
            if ch not in sets:
                raise RpmApplyError(f"file capabilities {text!r}: unknown flag {ch!r}")
            if op == "-":
                sets[ch] &= ~bits
            else:
                sets[ch] |= bits
    magic = 0x02000000 | (1 if sets["e"] else 0)
    p, i = sets["p"], sets["i"]
    return struct.pack("<IIIII", magic, p & 0xFFFFFFFF, i & 0xFFFFFFFF,
                       p >> 32, i >> 32)


def _info_name(header: Header) -> str:
    info = package_info(header)
    return f"{info.name}-{info.evr}"


def _same_content(a: RpmFile, b: RpmFile) -> bool:
    """rpm's rpmfilesCompare: same type, and same target or digest."""
    if stat.S_IFMT(a.mode) != stat.S_IFMT(b.mode):
        return False
    if stat.S_ISLNK(a.mode):
        return a.linkto == b.linkto
    if stat.S_ISREG(a.mode):
        return a.digest_algo == b.digest_algo and a.digest == b.digest
    return True


@dataclass
class _Pkg:
    """A package of the transaction: its header, info and files."""

    header: Header
    files: list[RpmFile]
    name: str
    label: str  # name-evr
    provides: tuple[Dep, ...]

    @classmethod
    def of(cls, header: Header) -> _Pkg:
        info = package_info(header)
        provides = (Dep(info.name, SENSE_EQUAL, info.evr), *info.provides)
        return cls(header, header_files(header), info.name, f"{info.name}-{info.evr}",
                   provides)


# ---------------------------------------------------------------- the applier

class _Applier:
    def __init__(self, tree: Mapping[str, TreeNode], read: Callable[[str], bytes | None],
                 workdir: Path, install_time: int) -> None:
        self.tree = tree
        self.read = read
        self.workdir = workdir
        self.install_time = install_time
        self.users = _ids(read("etc/passwd"))
        self.groups = _ids(read("etc/group"))
        self.notes: list[str] = []
        self.entries: dict[str, Entry] = {}
        self.spool: Path | None = None
        self._warned: set[tuple[str, str]] = set()

    def _readlink(self, path: str) -> str | None:
        node = self.tree.get(path)
        return node.linkname if node is not None and node.kind == SYMLINK else None

    def where(self, path: str) -> str:
        return resolve_links(path, self._readlink, follow_last=False)

    def owner(self, f: RpmFile) -> tuple[int, int]:
        uid = self.users.get(f.user)
        if uid is None:
            uid = 0
            if ("user", f.user) not in self._warned:
                self._warned.add(("user", f.user))
                self.notes.append(f"warning: user {f.user} does not exist - using root")
        gid = self.groups.get(f.group)
        if gid is None:
            gid = 0
            if ("group", f.group) not in self._warned:
                self._warned.add(("group", f.group))
                self.notes.append(f"warning: group {f.group} does not exist - using root")
        return uid, gid

    def disk_digest(self, path: str, algo: int) -> str | None:
        """The digest of the image's file at ``path`` (a symlink: its target), None
        when there is none."""
        real = self.where(path)
        node = self.tree.get(real)
        if node is None:
            return None
        if node.kind == SYMLINK:
            return "link:" + node.linkname
        if node.kind != FILE:
            return "other:" + node.kind
        data = self.read(real)
        if data is None:
            return "unreadable"
        return hashlib.new(_ALGOS.get(algo, "md5"), data).hexdigest()

    @staticmethod
    def file_digest(f: RpmFile) -> str:
        if stat.S_ISLNK(f.mode):
            return "link:" + f.linkto
        return f.digest

    # ------------------------------------------------------------ contents
    def spooled(self, stream: IO[bytes], size: int) -> bytes | Callable[[], IO[bytes]]:
        if size < SPOOL_AT:
            return stream.read(size)
        if self.spool is None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.spool = Path(tempfile.mkdtemp(prefix="rpm-spool-", dir=self.workdir))
        fd, name = tempfile.mkstemp(dir=self.spool)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(stream, out, SPOOL_AT)
        path = Path(name)
        return lambda: path.open("rb")

    def add(self, entry: Entry) -> None:
        self.entries[entry.path] = entry

    def ensure_parents(self, real: str) -> None:
        parent = real.rpartition("/")[0]
        missing = []
        while parent and parent not in self.tree and parent not in self.entries:
            missing.append(parent)
            parent = parent.rpartition("/")[0]
        for d in reversed(missing):
            self.add(Entry(d, DIR, 0o755, 0, 0, self.install_time))


def _edges(pkgs: Sequence[_Pkg]) -> list[set[int]]:
    """For each package, the others (by index) that provide one of its Requires (of
    every kind: pre, post, preun...; rpmlib() and rich ones left out)."""
    provides: dict[str, list[tuple[int, Dep]]] = {}
    paths: dict[str, set[int]] = {}
    for j, q in enumerate(pkgs):
        for pr in q.provides:
            provides.setdefault(pr.name, []).append((j, pr))
        for f in q.files:
            paths.setdefault("/" + f.path, set()).add(j)
    out: list[set[int]] = []
    for i, p in enumerate(pkgs):
        needs: set[int] = set()
        for dep in package_info(p.header).requires:
            if dep.name.startswith("rpmlib(") or dep.rich:
                continue
            needs |= {j for j, pr in provides.get(dep.name, ()) if dep_matches(dep, pr)}
            needs |= paths.get(dep.name, set())
        needs.discard(i)
        out.append(needs)
    return out


def _toposort(n: int, before: Sequence[set[int]], pick: Callable[[list[int]], int]
              ) -> list[int]:
    """Kahn's order of ``range(n)`` where every index in ``before[i]`` comes before
    ``i``; among the ready ones ``pick`` chooses; a cycle is broken at the index
    ``pick`` chooses among those left."""
    left = set(range(n))
    done: list[int] = []
    while left:
        ready = [i for i in sorted(left) if not (before[i] & left)]
        i = pick(ready or sorted(left))
        done.append(i)
        left.discard(i)
    return done


def _order(pkgs: Sequence[_Pkg]) -> list[int]:
    """Install order: dependencies first; packages unrelated by dependencies in
    reverse of the given order (as rpm 4.18 ``-U a b`` was measured to do)."""
    return _toposort(len(pkgs), _edges(pkgs), max)


def _erase_order(olds: Sequence[_Pkg], position: Sequence[int]) -> list[int]:
    """Erase order: a package before those it requires; unrelated ones in the order
    of the installs that replace them (``position``)."""
    needs = _edges(olds)
    before = [{j for j in range(len(olds)) if i in needs[j]} for i in range(len(olds))]
    return _toposort(len(olds), before, lambda ready: min(ready, key=lambda i: position[i]))


# ---------------------------------------------------------------- scriptlets

_PHASES = {  # script tag, prog tag
    "%pretrans": (Tag.PRETRANS, Tag.PRETRANSPROG),
    "%pre": (Tag.PREIN, Tag.PREINPROG),
    "%post": (Tag.POSTIN, Tag.POSTINPROG),
    "%preun": (Tag.PREUN, Tag.PREUNPROG),
    "%postun": (Tag.POSTUN, Tag.POSTUNPROG),
    "%posttrans": (Tag.POSTTRANS, Tag.POSTTRANSPROG),
}


def _prog(header: Header, tag: int, index: int | None = None) -> tuple[str, ...]:
    if tag not in header:
        return ()
    values = header.strings(tag)
    if index is not None:
        return (values[index],) if index < len(values) and values[index] else ()
    return tuple(v for v in values if v)


class _Jobs:
    def __init__(self) -> None:
        self.jobs: list[ScriptJob] = []
        self.counter = 0

    def add(self, pkg: _Pkg, phase: str, body: str | None, prog: tuple[str, ...],
            args: tuple[str, ...], env: tuple[tuple[str, str], ...]) -> None:
        if body is None and not prog:
            return
        self.counter += 1
        if not body:
            if not prog or prog[0] == "<lua>":
                return
            self.jobs.append(ScriptJob(pkg.label, phase, prog[0].lstrip("/"), (), env,
                                       interpreter=()))
            # rpm runs the program with its own -p arguments only
            if len(prog) > 1:
                self.jobs[-1] = ScriptJob(pkg.label, phase, prog[0].lstrip("/"), prog[1:], env)
            return
        interp = prog or ("/bin/sh",)
        slug = "".join(c if c.isalnum() or c in "._-" else "_" for c in phase.lstrip("%"))
        path = f"{SCRIPT_DIR}/rpm-tmp.{pkg.name}.{self.counter}.{slug}"
        data = body.encode("utf-8", "surrogateescape")
        self.jobs.append(ScriptJob(pkg.label, phase, path, args, env,
                                   staged=(Staged(path, data=data, mode=0o755),),
                                   interpreter=interp))

    def add_fed(self, pkg: _Pkg, phase: str, body: str, prog: tuple[str, ...],
                lines: Sequence[str], env: tuple[tuple[str, str], ...]) -> None:
        """A file trigger: rpm writes the matching paths to its stdin, one a line.
        The list is staged beside the script and fed in by ``/bin/sh -c``."""
        self.counter += 1
        slug = "".join(c if c.isalnum() or c in "._-" else "_" for c in phase.lstrip("%"))
        base = f"{SCRIPT_DIR}/rpm-tmp.{pkg.name}.{self.counter}.{slug}"
        listing = "".join(f"{line}\n" for line in lines).encode("utf-8", "surrogateescape")
        staged = [Staged(base + ".paths", data=listing, mode=0o644)]
        feed = f"< /{base}.paths"
        run = prog or ("/bin/sh",)
        # rpm writes a file trigger's script even when empty (``-p prog`` alone) and
        # runs the program on it
        staged.append(Staged(base, data=body.encode("utf-8", "surrogateescape"), mode=0o755))
        interp: tuple[str, ...] = run if run[:1] == ("<lua>",) else \
            ("/bin/sh", "-c", f'exec "$@" {feed}', "rpm-file-trigger", *run)
        self.jobs.append(ScriptJob(pkg.label, phase, base, ("0",), env,
                                   staged=tuple(staged), interpreter=interp))

    def phase(self, pkg: _Pkg, phase: str, args: tuple[str, ...],
              env: tuple[tuple[str, str], ...]) -> None:
        tag, prog_tag = _PHASES[phase]
        body = pkg.header.string(tag) if tag in pkg.header else None
        self.add(pkg, phase, body, _prog(pkg.header, prog_tag), args, env)


def _triggers(pkg: _Pkg, sense: int) -> list[tuple[Dep, str, tuple[str, ...], int]]:
    """(dependency, body, prog, script index) of ``pkg``'s triggers of ``sense``."""
    h = pkg.header
    names = h.strings(Tag.TRIGGERNAME)
    if not names:
        return []
    flags = h.ints(Tag.TRIGGERFLAGS)
    versions = h.strings(Tag.TRIGGERVERSION) or ("",) * len(names)
    indexes = h.ints(Tag.TRIGGERINDEX)
    scripts = h.strings(Tag.TRIGGERSCRIPTS)
    out = []
    for n, fl, v, ix in zip(names, flags, versions, indexes, strict=False):
        if not fl & sense or ix >= len(scripts):
            continue
        out.append((Dep(n, fl & _SENSE_MASK, v), scripts[ix],
                    _prog(h, Tag.TRIGGERSCRIPTPROG, ix), ix))
    return out


_FILE_TRIGGER_TAGS = (Tag.FILETRIGGERNAME, Tag.FILETRIGGERFLAGS, Tag.FILETRIGGERINDEX,
                      Tag.FILETRIGGERSCRIPTS, Tag.FILETRIGGERSCRIPTPROG)
_TRANS_TRIGGER_TAGS = (Tag.TRANSFILETRIGGERNAME, Tag.TRANSFILETRIGGERFLAGS,
                       Tag.TRANSFILETRIGGERINDEX, Tag.TRANSFILETRIGGERSCRIPTS,
                       Tag.TRANSFILETRIGGERSCRIPTPROG)


def _file_triggers(pkg: _Pkg, sense: int, trans: bool
                   ) -> list[tuple[tuple[str, ...], str, tuple[str, ...]]]:
    """(path prefixes, body, prog) of ``pkg``'s (transaction) file triggers of ``sense``,
    one per script."""
    name_t, flags_t, index_t, scripts_t, prog_t = \
        _TRANS_TRIGGER_TAGS if trans else _FILE_TRIGGER_TAGS
    h = pkg.header
    names = h.strings(name_t)
    if not names:
        return []
    flags, indexes, scripts = h.ints(flags_t), h.ints(index_t), h.strings(scripts_t)
    by_ix: dict[int, list[str]] = {}
    for n, fl, ix in zip(names, flags, indexes, strict=False):
        if fl & sense and ix < len(scripts):
            by_ix.setdefault(ix, []).append(n)
    return [(tuple(pfx), scripts[ix], _prog(h, prog_t, ix)) for ix, pfx in by_ix.items()]


def _env(pkg: _Pkg) -> tuple[tuple[str, str], ...]:
    env = [("PATH", SCRIPT_PATH)]
    prefixes = pkg.header.strings(Tag.INSTPREFIXES) or pkg.header.strings(Tag.PREFIXES)
    for i, p in enumerate(prefixes):
        env.append((f"RPM_INSTALL_PREFIX{i}", p))
        if i == 0:
            env.append(("RPM_INSTALL_PREFIX", p))
    return tuple(env)


def _schedule(order: Sequence[_Pkg], olds: Sequence[Sequence[_Pkg]],
              installed: Sequence[_Pkg], kept: Set[str]) -> list[ScriptJob]:
    """The scriptlets of the transaction in rpm's order (module docstring). ``kept``:
    the paths some package owns after the transaction (the erased packages' other
    files are removed)."""
    j = _Jobs()
    db: list[_Pkg] = list(installed)
    erase = [o for group in olds for o in group]
    position = [k for k, group in enumerate(olds) for _o in group]
    erase = [erase[k] for k in _erase_order(erase, position)]

    def fed(q: _Pkg, sense: int, trans: bool, phase: str, paths: Sequence[str],
            always: bool = False) -> None:
        for prefixes, body, prog in _file_triggers(q, sense, trans):
            hits = ["/" + p for p in paths if ("/" + p).startswith(prefixes)]
            if hits:
                j.add_fed(q, f"{phase}({prefixes[0]})", body, prog,
                          () if always else hits, _env(q))

    def removed(o: _Pkg) -> list[str]:
        return [f.path for f in o.files if f.path not in kept]

    def count(name: str) -> int:
        return sum(1 for p in db if p.name == name)

    def matches(dep: Dep, p: _Pkg) -> bool:
        return any(dep_matches(dep, pr) for pr in p.provides)

    def others_fire(p: _Pkg, sense: int, phase: str) -> None:
        """Installed packages' triggers of ``sense`` set off by ``p``."""
        for q in list(db):
            if q is p:
                continue
            for dep, body, prog, _ix in _triggers(q, sense):
                if matches(dep, p):
                    j.add(q, f"{phase}({dep.name})", body, prog,
                          (str(count(q.name)), str(count(p.name) - (sense != _TRIGGERIN))),
                          _env(q))

    def own_fire(p: _Pkg, sense: int, phase: str, own: int) -> None:
        """``p``'s triggers of ``sense`` set off by installed packages."""
        fired: set[int] = set()
        for dep, body, prog, ix in _triggers(p, sense):
            if ix in fired:
                continue
            hits = [q for q in db if q is not p and matches(dep, q)]
            if hits:
                fired.add(ix)
                j.add(p, f"{phase}({dep.name})", body, prog,
                      (str(own), str(count(hits[0].name))), _env(p))

    erased_files = [f.path for o in erase for f in o.files]
    for p in order:
        j.phase(p, "%pretrans", (str(count(p.name) + 1),), _env(p))
    for q in list(db):
        fed(q, _TRIGGERUN, True, "%transfiletriggerun", erased_files)
    for p in order:
        n = str(count(p.name) + 1)
        j.phase(p, "%pre", (n,), _env(p))
        for q in list(db):
            fed(q, _TRIGGERIN, False, "%filetriggerin", [f.path for f in p.files])
        db.append(p)
        j.phase(p, "%post", (n,), _env(p))
        others_fire(p, _TRIGGERIN, "%triggerin")
        own_fire(p, _TRIGGERIN, "%triggerin", count(p.name))
        fed(p, _TRIGGERIN, False, "%filetriggerin",
            [f.path for q in db for f in q.files])
    for o in erase:
        for q in list(db):
            if q is not o:
                fed(q, _TRIGGERUN, False, "%filetriggerun", removed(o))
        own_fire(o, _TRIGGERUN, "%triggerun", count(o.name) - 1)
        others_fire(o, _TRIGGERUN, "%triggerun")
        n = str(count(o.name) - 1)
        j.phase(o, "%preun", (n,), _env(o))
        for q in list(db):
            if q is not o:
                fed(q, _TRIGGERPOSTUN, False, "%filetriggerpostun", removed(o))
        j.phase(o, "%postun", (n,), _env(o))
        db.remove(o)
        for q in list(db):
            for dep, body, prog, _ix in _triggers(q, _TRIGGERPOSTUN):
                if matches(dep, o):
                    j.add(q, f"%triggerpostun({dep.name})", body, prog,
                          (str(count(q.name)), str(count(o.name))), _env(q))
    for p in order:
        j.phase(p, "%posttrans", (str(sum(1 for x in installed if x.name == p.name) + 1),),
                _env(p))
    new_files = [f.path for p in order for f in p.files]
    for q in list(db):
        fed(q, _TRIGGERIN, True, "%transfiletriggerin", new_files)
    for q in list(db):
        fed(q, _TRIGGERPOSTUN, True, "%transfiletriggerpostun", erased_files, always=True)
    return j.jobs


# ---------------------------------------------------------------- the transaction

def apply_updates(installed: Sequence[InstalledPackage], updates: Sequence[RpmUpdate], *,
                  tree: Mapping[str, TreeNode], read: Callable[[str], bytes | None],
                  db_path: str, db_file: Path, install_time: int, tid: int,
                  workdir: Path, per_package: bool = False, backend: str = "sqlite"
                  ) -> ApplyResult:
    """Lay out ``updates`` as one rpm transaction (see the module docstring).

    ``tree``: the image's merged view (no leading slash); ``read``: the contents of
    a regular file of the image (``etc/passwd``, ``etc/group``, config files);
    ``db_path``: the real path of the image's ``rpmdb.sqlite``, ``db_file`` a copy
    of it; ``workdir``: scratch space for the rewritten database and spooled file
    contents. FileConflictError when a new file clashes with a package that stays;
    RpmApplyError or PackageFormatError for what rpm would refuse or cannot be read.
    ``per_package``: the scriptlets as zypper runs them, one rpm transaction per package
    in the same order (each its own ``%pretrans`` to ``%posttrans``), instead of one
    transaction for all (dnf, tdnf, rpm -U); the files and the database are the same.
    ``backend`` ``ndb`` or ``bdb``: ``db_path`` is the image's main database file
    (``Packages.db``, ``Packages``) and ``db_file`` a directory holding copies of the
    files :func:`~suture.distro.rpm.rpmdb.backend_files` names; every file the rewrite
    produces enters the layer and the ones it leaves stale are whited out."""
    a = _Applier(tree, read, workdir, install_time)
    try:
        return _apply(a, installed, updates, db_path, db_file, install_time, tid,
                      per_package, backend)
    except BaseException:
        if a.spool is not None:
            shutil.rmtree(a.spool, ignore_errors=True)
        raise


def _apply(a: _Applier, installed: Sequence[InstalledPackage], updates: Sequence[RpmUpdate],
           db_path: str, db_file: Path, install_time: int, tid: int,
           per_package: bool = False, backend: str = "sqlite") -> ApplyResult:
    new_pkgs = [_Pkg.of(u.new.header) for u in updates]
    order_ix = _order(new_pkgs)
    replaced = {u.old.hnum for u in updates if u.old is not None}
    replaced |= {o.hnum for u in updates for o in u.obsoleted}
    by_hnum = {p.hnum: _Pkg.of(p.header) for p in installed}
    for h in replaced:
        if h not in by_hnum:
            raise RpmApplyError(f"package {h} to replace is not installed")
    staying = [by_hnum[p.hnum] for p in installed if p.hnum not in replaced]

    # owners after the transaction, by real path
    final_owner: dict[str, list[tuple[_Pkg, RpmFile]]] = {}
    for p in (*staying, *new_pkgs):
        for f in p.files:
            final_owner.setdefault(a.where(f.path), []).append((p, f))
    # the replaced packages' records, by path (for config decisions)
    old_files: dict[str, RpmFile] = {}
    for u in updates:
        for ip in _erased(u):
            for f in by_hnum[ip.hnum].files:
                old_files.setdefault(a.where(f.path), f)

    blobs: list[bytes] = []
    colors = Counter(p.header.number(Tag.INSTALLCOLOR) or 0 for p in installed
                     if Tag.INSTALLCOLOR in p.header)
    color = colors.most_common(1)[0][0] if colors else 0

    for i in order_ix:
        u, pkg = updates[i], new_pkgs[i]
        _install_files(a, u.new, pkg, final_owner, old_files)
    for i, (u, pkg) in enumerate(zip(updates, new_pkgs, strict=True)):
        del i
        blobs.append(installed_blob(u.new.header, u.new.signature, install_time=install_time,
                                    tid=tid, color=color, file_states=bytes(len(pkg.files))))

    # erase: files of the replaced packages nobody owns afterwards
    removed: set[str] = set()
    for h in sorted(replaced):
        for f in by_hnum[h].files:
            real = a.where(f.path)
            if real in final_owner or real in removed or real not in a.tree:
                continue
            node = a.tree[real]
            if stat.S_ISDIR(f.mode) or node.kind == DIR:
                continue
            if f.flags & _CONFIG and not f.flags & _GHOST and node.kind == FILE \
                    and a.disk_digest(f.path, f.digest_algo) != f.digest:
                _save(a, real, node, ".rpmsave")
                a.notes.append(f"warning: /{f.path} saved as /{f.path}.rpmsave")
            a.add(Entry.whiteout(real))
            removed.add(real)
    _remove_dirs(a, [f for h in sorted(replaced) for f in by_hnum[h].files], final_owner,
                 removed)

    # the database
    a.workdir.mkdir(parents=True, exist_ok=True)
    db_out = a.workdir / "rpmdb.sqlite"
    if backend != "sqlite":
        db_out = a.workdir / "rpmdb-written"
        # rpm's steps: the installs in transaction order, then the erasures; zypper
        # erases each replaced package right after installing its successor
        steps = [("add", i) for i in order_ix]
        if per_package:
            steps = [s for i in order_ix
                     for s in [("add", i), *(("del", ip.hnum) for ip in _erased(updates[i]))]]
        steps += [("del", h) for h in sorted(replaced) if ("del", h) not in steps]
        _db_files(a, backend, db_path, db_file, db_out, sorted(replaced), blobs, install_time,
                  steps)
    else:
        write_sqlite(db_file, db_out, remove=sorted(replaced), add=blobs)
        db_node = a.tree.get(db_path)
        a.add(Entry(db_path, FILE, db_node.mode if db_node else 0o644,
                    db_node.uid if db_node else 0, db_node.gid if db_node else 0,
                    install_time, db_out.stat().st_size,
                    data=lambda: db_out.open("rb")))
        wal = a.tree.get(db_path + "-wal")
        if wal is not None and wal.kind == FILE and getattr(wal, "size", 1) != 0:
            a.add(Entry(db_path + "-wal", FILE, wal.mode, wal.uid, wal.gid, install_time, 0,
                        data=b""))

    olds = [[by_hnum[ip.hnum] for ip in _erased(updates[i])] for i in order_ix]
    kept = {f.path for p in (*staying, *new_pkgs) for f in p.files}
    before = [by_hnum[p.hnum] for p in installed]
    if per_package:  # zypper: one transaction per package, the database between them
        jobs = []
        for i, old in zip(order_ix, olds, strict=True):
            jobs += _schedule([new_pkgs[i]], [old], before, kept)
            before = [q for q in before if q not in old] + [new_pkgs[i]]
    else:
        jobs = _schedule([new_pkgs[i] for i in order_ix], olds, before, kept)
    not_run: list[tuple[str, str]] = []
    spool, workdir = a.spool, a.workdir

    def cleanup() -> None:
        if spool is not None:
            shutil.rmtree(spool, ignore_errors=True)
        if db_out.is_dir():
            shutil.rmtree(db_out, ignore_errors=True)
        db_out.unlink(missing_ok=True)

    del workdir
    return ApplyResult(entries=list(a.entries.values()), jobs=jobs, scratch=[],
                       not_run=not_run, notes=a.notes, cleanup=cleanup)


def _opener(path: Path) -> Callable[[], IO[bytes]]:
    return lambda: path.open("rb")


def _db_files(a: _Applier, backend: str, db_path: str, source: Path, out: Path,
              remove: list[int], blobs: list[bytes], install_time: int,
              steps: list[tuple[str, int]]) -> None:
    """The rewritten ndb or Berkeley DB files as layer entries (owner and mode of the
    image's, 0644 root for new ones), and whiteouts for the stale ones."""
    _new, written = write_db(backend, source, out, remove=remove, add=blobs, steps=steps)
    directory = db_path.rpartition("/")[0]
    for name in written:
        path = f"{directory}/{name}"
        node = a.tree.get(path)
        local = out / name
        a.add(Entry(path, FILE, node.mode if node else 0o644, node.uid if node else 0,
                    node.gid if node else 0, install_time, local.stat().st_size,
                    data=_opener(local)))
    names = [p[len(directory) + 1:] for p in a.tree
             if p.startswith(directory + "/") and "/" not in p[len(directory) + 1:]]
    for name in stale_files(backend, names):
        a.add(Entry.whiteout(f"{directory}/{name}"))


def _erased(u: RpmUpdate) -> tuple[InstalledPackage, ...]:
    return ((u.old,) if u.old is not None else ()) + u.obsoleted


def _save(a: _Applier, real: str, node: TreeNode, suffix: str) -> None:
    """Move the image's file at ``real`` to ``real + suffix``."""
    data = a.read(real)
    if data is None:
        raise RpmApplyError(f"/{real}: cannot read it to keep it as {suffix}")
    mtime = getattr(node, "mtime", None)
    a.add(Entry(real + suffix, FILE, node.mode & 0o7777, node.uid, node.gid,
                mtime if isinstance(mtime, int) else None, len(data), data=data))


def _install_files(a: _Applier, archive: RpmArchive, pkg: _Pkg,
                   owners: Mapping[str, Sequence[tuple[_Pkg, RpmFile]]],
                   old_files: Mapping[str, RpmFile]) -> None:
    def other_owner(real: str) -> tuple[_Pkg, RpmFile] | None:
        return next(((p, f) for p, f in owners.get(real, ()) if p is not pkg), None)

    # contents, as the payload gives them (data of a hardlink set on its last link)
    data: dict[str, bytes | Callable[[], IO[bytes]]] = {}
    wanted = {f.path for f in pkg.files if stat.S_ISREG(f.mode) and not f.flags & _GHOST}
    for path, size, stream in archive.members():
        if path in wanted and size:
            data[path] = a.spooled(stream, size)
    sets: dict[tuple[int, int], list[RpmFile]] = {}
    for f in pkg.files:
        if stat.S_ISREG(f.mode) and not f.flags & _GHOST:
            sets.setdefault((f.inode, f.rdev), []).append(f)
    first: dict[str, str] = {}
    set_data: dict[str, bytes | Callable[[], IO[bytes]]] = {}
    for group in sets.values():
        if len(group) > 1:
            body = next((data[g.path] for g in reversed(group) if g.path in data), b"")
            for g in group:
                first[g.path] = group[0].path
            set_data[group[0].path] = body
    for f in pkg.files:
        if f.flags & _GHOST:
            continue
        real = a.where(f.path)
        other = other_owner(real)
        if other is not None and not _same_content(other[1], f) and not (
                stat.S_ISDIR(f.mode) and stat.S_ISDIR(other[1].mode)):
            raise FileConflictError(f.path, pkg.label, other[0].label,
                                    hint="rpm refuses this transaction too")
        kind = _KINDS.get(stat.S_IFMT(f.mode))
        if kind is None:
            raise PackageFormatError(f"{pkg.label}: /{f.path} has an unknown file type",
                                     text=f.path)
        uid, gid = a.owner(f)
        mode = f.mode & 0o7777
        xattrs = {"security.capability": capability_xattr(f.caps)} if f.caps else {}
        if kind == FILE and f.flags & _CONFIG:
            node = a.tree.get(real)
            if node is not None and real not in a.entries:
                disk = a.disk_digest(f.path, f.digest_algo)
                new = a.file_digest(f)
                old = old_files.get(real)
                if old is None and other is not None:
                    old = other[1]
                if old is not None:
                    olddig = a.file_digest(old)
                    if disk != olddig and olddig != new and disk != new:
                        if f.flags & _NOREPLACE:
                            a.notes.append(f"warning: /{f.path} created as /{f.path}.rpmnew")
                            real_target = real + ".rpmnew"
                            a.ensure_parents(real)
                            _file_entry(a, real_target, f, mode, uid, gid, xattrs, data,
                                        set_data, first)
                            continue
                        _save(a, real, node, ".rpmsave")
                        a.notes.append(f"warning: /{f.path} saved as /{f.path}.rpmsave")
                    elif disk != olddig and olddig == new:
                        continue  # the user's file is kept
                elif disk != new:
                    if f.flags & _NOREPLACE:
                        a.notes.append(f"warning: /{f.path} created as /{f.path}.rpmnew")
                        _file_entry(a, real + ".rpmnew", f, mode, uid, gid, xattrs, data,
                                    set_data, first)
                        continue
                    _save(a, real, node, ".rpmorig")
                    a.notes.append(f"warning: /{f.path} saved as /{f.path}.rpmorig")
        a.ensure_parents(real)
        if kind == FILE:
            _file_entry(a, real, f, mode, uid, gid, xattrs, data, set_data, first)
        elif kind == SYMLINK:
            a.add(Entry(real, SYMLINK, 0o777, uid, gid, f.mtime, linkname=f.linkto,
                        xattrs=xattrs))
        elif kind == DIR:
            node = a.tree.get(real)
            if node is not None and node.kind == SYMLINK:
                continue  # rpm keeps a symlink where the package has a directory
            a.add(Entry(real, DIR, mode, uid, gid, f.mtime, xattrs=xattrs))
        else:
            a.add(Entry(real, kind, mode, uid, gid, f.mtime, xattrs=xattrs,
                        devmajor=(f.rdev >> 8) & 0xFF, devminor=f.rdev & 0xFF))


def _file_entry(a: _Applier, real: str, f: RpmFile, mode: int, uid: int, gid: int,
                xattrs: dict[str, bytes], data: Mapping[str, bytes | Callable[[], IO[bytes]]],
                set_data: Mapping[str, bytes | Callable[[], IO[bytes]]],
                first: Mapping[str, str]) -> None:
    head = first.get(f.path)
    if head is not None and head != f.path:
        a.add(Entry(real, HARDLINK, mode, uid, gid, f.mtime, linkname=a.where(head)))
        return
    body = set_data.get(f.path) if head is not None else data.get(f.path, b"")
    a.add(Entry(real, FILE, mode, uid, gid, f.mtime, f.size,
                data=body if body is not None else b"", xattrs=xattrs))


def _remove_dirs(a: _Applier, files: Sequence[RpmFile],
                 final_owner: Mapping[str, object], removed: set[str]) -> None:
    """Whiteouts for the erased packages' directories that no package owns and that
    end up empty, deepest first (rpm's rmdir that fails quietly when not empty)."""
    candidates = sorted({a.where(f.path) for f in files if stat.S_ISDIR(f.mode)},
                        key=lambda p: -p.count("/"))
    candidates = [d for d in candidates if d not in final_owner and
                  (node := a.tree.get(d)) is not None and node.kind == DIR]
    if not candidates:
        return
    children: dict[str, set[str]] = {}
    for path in (*a.tree, *(e for e in a.entries if not e.rpartition("/")[2].startswith(".wh."))):
        children.setdefault(path.rpartition("/")[0], set()).add(path)
    for d in candidates:
        if all(c in removed for c in children.get(d, ())):
            removed.add(d)
            a.add(Entry.whiteout(d))
    # a directory whose parent is whited out needs no whiteout of its own
    for d in list(removed):
        parent = d.rpartition("/")[0]
        if parent in removed:
            ent = Entry.whiteout(d)
            a.entries.pop(ent.path, None)
