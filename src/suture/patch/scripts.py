"""Running maintainer scripts in a sandbox over the image root, and capturing their effect.

:func:`run_scripts` materialises the image with the patch entries written over it
in a temporary directory, runs the :class:`~suture.distro.scripts.ScriptJob` values
in order inside a sandbox, and returns what the scripts changed as layer entries
(to be merged over the patch entries). Nothing is ever skipped silently: a job that
is not run is returned in :attr:`ScriptOutcome.not_run` with the reason.

Writing the image out takes a while (a full pass over the layers), so a caller
that knows early that scripts may run starts it in the background with
:func:`start_root` (a helper process writes the tree while the caller plans,
fetches and builds) and hands the :class:`ScriptRoot` to :func:`run_scripts`.

The sandbox is :mod:`suture.patch.sandbox`'s (``bwrap``, ``chroot`` or ``none``).

A script is executed directly, as dpkg does (``execvp``): its ``#!`` line names
the interpreter, a script without one is run by ``/bin/sh``, and a script that is
not executable fails. Before running, the interpreter is looked up in the image; if
it is missing (distroless images have no shell) the job is reported, not run.
Scripts of another architecture than the host's run only through an emulator
:mod:`suture.patch.emulation` finds (a binfmt_misc handler with the ``F`` flag);
without one every job is reported. Services are never started: ``/usr/sbin/policy-rc.d``
(exit 101) is present while scripts run, unless the image has its own.

Environment: only ``PATH``, ``HOME=/root`` and ``LC_ALL=C``, then the job's own
``env`` (what its package manager gives its scripts), which wins. The runner knows
no package family. The working directory is ``/``, the umask 022, stdin empty.

A family whose manager decides what runs next from what the scripts did hands a
:class:`~suture.distro.scripts.ScriptSequence`; each job's
:attr:`~suture.distro.scripts.ScriptJob.staged` files are in place only while it
runs (:class:`Staging`).

A script that exits non-zero, is killed, times out or talks too much raises
:class:`~suture.patch.sandbox.ScriptError` and nothing is returned.

What counts as a change
    The tree is snapshotted (``lstat`` of every path, without following symlinks)
    after the patch entries are written and before the first script, and again
    after the last. A path is changed when its type, permission bits, owner, group,
    extended attributes (``security.selinux`` ignored: it is the host's label),
    symlink target or file size differ. A regular file whose cheap fields are
    equal but whose mtime, ctime or inode differ may have been rewritten (even in
    place with its mtime restored: the ctime still moves), so its contents are
    compared with the SHA-256 of what was written there before the scripts ran
    (the extraction hashes every file as it writes it; the patch entries' contents
    are hashed when asked). So a file rewritten with identical contents is not a
    change, and neither is a read (atime); a file whose earlier contents are not
    known is reported as changed (carrying an unchanged file is safe). Directories
    compare on type, mode, owner and xattrs only: their times move whenever an entry
    is added or removed, and extraction does not keep them. ``tmp/``, ``var/tmp/``,
    ``run/``, ``dev/``, ``proc/`` and ``sys/`` are never looked at, nor are two
    files whose contents depend on the host and the clock:
    ``var/cache/ldconfig/aux-cache`` (inode numbers and ctimes; ldconfig ignores
    stale entries) and ``var/log/alternatives.log`` (timestamps).

Entries returned
    Sorted by path. Regular files carry their data as bytes (the temporary root is
    gone when this returns); files of the result that share an inode become one
    file and hard links to it; device nodes and sockets that scripts create are
    left out (logged). Mode, owner, group and xattrs are as on disk. Times: a path
    whose contents (or link target) the scripts wrote, and every directory, gets
    ``mtime=None``, so the layer writer gives it ``SOURCE_DATE_EPOCH`` (or 0) and
    identical inputs give identical entries; a path whose metadata alone changed
    keeps its earlier mtime. A removed path becomes a whiteout, only at the top of
    a removed tree. Run as a normal user, files owned by the caller are reported as
    owned by root (they were root's inside the sandbox).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tempfile
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from suture.distro.scripts import FixedSequence, ScriptJob, ScriptSequence, Staged
from suture.errors import LayerError, SutureError, UsageError
from suture.oci.extract import Extraction, RootWriter, remove_tree, resolve_in_root
from suture.oci.fs import normalize
from suture.oci.image import Image
from suture.oci.layer import (
    BLOCK,
    CHAR,
    DIR,
    FIFO,
    FILE,
    HARDLINK,
    SYMLINK,
    Entry,
    sort_key,
)
from suture.patch.lua import run_lua
from suture.patch.sandbox import (
    SANDBOXES,
    SCRIPT_TIMEOUT,
    command,
    preflight,
    run_one,
)

log = logging.getLogger(__name__)

MAX_RESULT_BYTES = 1 << 30  # file contents the scripts may add or change, in all
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EXCLUDED = frozenset({"tmp", "var/tmp", "run", "dev", "proc", "sys",
                      # Host-specific, so never the same twice: ldconfig's cache of the
                      # inode numbers and ctimes of libraries (a stale one is harmless),
                      # and update-alternatives' timestamped log.
                      "var/cache/ldconfig/aux-cache", "var/log/alternatives.log"})
_POLICY_BODY = b"#!/bin/sh\n# suture: services are not started while patching an image\nexit 101\n"


@dataclass(frozen=True)
class ScriptOutcome:
    """What running the scripts did.

    ``entries``: what the scripts changed, relative to the image plus the patch
    entries, sorted by path (merge them over the patch entries). ``ran``: the
    ``describe()`` of each job run, in order. ``not_run``: ``(describe(), reason)``
    of each job that was not.
    """

    entries: list[Entry]
    ran: list[str]
    not_run: list[tuple[str, str]]


class ScriptRoot:
    """``image``'s root for maintainer scripts, being written in the background (by
    :class:`~suture.oci.extract.Extraction`) into a temporary directory under
    ``workdir`` (the system's temporary directory if ``None``).

    Hand it to :func:`run_scripts`, which waits for it, uses it and removes it; or
    :meth:`close` it. Dropping it closes it too (as soon as the last reference goes,
    and at exit at the latest), and the helper removes the tree itself if this
    process dies first, so no tree is left behind.
    """

    def __init__(self, image: Image, workdir: Path | None = None) -> None:
        self.image_digest = image.digest
        self.tmp = Path(tempfile.mkdtemp(prefix="suture-scripts-", dir=workdir))
        self.path = self.tmp / "root"
        try:
            extraction = Extraction(image, self.path, cleanup=self.tmp)
        except BaseException:
            remove_tree(self.tmp)
            raise
        self._extraction = extraction
        self._close = weakref.finalize(self, extraction.close)

    def wait(self) -> RootWriter:
        """Block until the tree is complete; its writer (for the patch entries)."""
        return self._extraction.wait()

    def release(self) -> None:
        """Done with the tree: it is removed in the background; :meth:`close` (or
        dropping this) waits for that."""
        self._extraction.release()

    def close(self) -> None:
        """Stop the background work and remove the tree (at once; idempotent)."""
        self._close()


def start_root(image: Image, *, workdir: Path | None = None, sandbox: str = "auto"
               ) -> ScriptRoot | None:
    """Start writing ``image``'s root for maintainer scripts in the background, when
    :func:`run_scripts` could run scripts over it (a known sandbox other than
    ``none`` that works here, the image's architecture the host's); else None.
    Nothing is raised here: :func:`run_scripts` reports what is wrong (or, when
    no root can be made in ``workdir``, makes one itself)."""
    try:
        kind, _why = preflight(image, sandbox, quiet=True)
        return ScriptRoot(image, workdir) if kind is not None else None
    except (UsageError, OSError) as exc:
        log.debug("no root for maintainer scripts in the background: %s", exc)
        return None


def run_scripts(image: Image, patch_entries: Sequence[Entry], jobs: Sequence[ScriptJob], *,
                workdir: Path | None = None, sandbox: str = "auto",
                timeout: float = SCRIPT_TIMEOUT, root: ScriptRoot | None = None,
                sequence: ScriptSequence | None = None) -> ScriptOutcome:
    """Run ``jobs`` in order over ``image`` with ``patch_entries`` written on top.

    With ``sequence``, the jobs run are the ones it gives as they run (``jobs`` are
    then what is reported when nothing can run: the jobs known in advance); the
    files it writes at the end are part of the result like the scripts' own changes.

    The root is ``root`` when given (from :func:`start_root` with the same image);
    once used it is released (removed in the background: closing or dropping it
    waits for that), and closed if unused. Without ``root`` it is built now in a
    temporary directory under ``workdir`` (the system's temporary directory if
    ``None``) and removed before returning. With no jobs nothing is extracted.
    Raises :class:`ScriptError` if a script fails (and returns nothing),
    :class:`UsageError` for an unknown ``sandbox`` or one asked for by name that
    cannot work here, :class:`LayerError` for unsafe entries.
    """
    given, writer = root, None
    try:
        if sandbox not in SANDBOXES:
            raise UsageError(f"unknown sandbox {sandbox!r} (one of {', '.join(SANDBOXES)})")
        if not jobs:
            return ScriptOutcome([], [], [])
        kind, why = preflight(image, sandbox)
        if kind is None:
            return _none_run(jobs, why)
        assert image.platform is not None
        if root is None or root.image_digest != image.digest:
            if root is not None:
                root.close()
            root = ScriptRoot(image, workdir)
        writer = root.wait()
        _write_entries(writer, patch_entries)
        return _run_in(root.path, writer, kind, sequence or FixedSequence(jobs), timeout)
    finally:
        if root is not None and root is given and writer is not None:
            root.release()
        elif root is not None:
            root.close()


def _none_run(jobs: Sequence[ScriptJob], reason: str) -> ScriptOutcome:
    for job in jobs:
        log.info("not running %s: %s", job.describe(), reason)  # reported in the result
    return ScriptOutcome([], [], [(job.describe(), reason) for job in jobs])



# --------------------------------------------------------------------------- the root

def _write_entries(writer: RootWriter, entries: Sequence[Entry]) -> None:
    """Write ``entries`` over the root as one more layer would be applied (see
    :meth:`~suture.oci.extract.RootWriter.apply_entries`)."""
    try:
        writer.apply_entries(entries)
    except OSError as exc:
        raise LayerError(f"cannot write patch entries into the script root: {exc}") from None


# --------------------------------------------------------------------------- snapshots

@dataclass(frozen=True, slots=True)
class _Node:
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    dev: int
    ino: int
    nlink: int
    target: str
    xattrs: tuple[tuple[str, bytes], ...]


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISDIR(mode):
        return DIR
    if stat.S_ISLNK(mode):
        return SYMLINK
    if stat.S_ISFIFO(mode):
        return FIFO
    if stat.S_ISCHR(mode):
        return CHAR
    if stat.S_ISBLK(mode):
        return BLOCK
    return "socket"


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
        return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False))
                            for n in names if n != "security.selinux"))
    except OSError:
        return ()


def _digest(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _snapshot(root: Path) -> dict[str, _Node]:
    """Every path under ``root`` but the excluded ones, by root-relative path."""
    nodes: dict[str, _Node] = {}
    stack: list[tuple[str, str]] = [("", str(root))]
    while stack:
        rel_dir, host_dir = stack.pop()
        with os.scandir(host_dir) as it:
            for de in it:
                rel = f"{rel_dir}/{de.name}" if rel_dir else de.name
                if rel in EXCLUDED:
                    continue
                st = de.stat(follow_symlinks=False)
                kind = _kind(st.st_mode)
                nodes[rel] = _Node(
                    kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                    st.st_size if kind == FILE else 0, st.st_mtime_ns, st.st_ctime_ns,
                    st.st_dev, st.st_ino, st.st_nlink,
                    os.readlink(de.path) if kind == SYMLINK else "", _xattrs(de.path))
                if kind == DIR:
                    stack.append((rel, de.path))
    return nodes


def _contents_changed(root: Path, rel: str, before: _Node, after: _Node,
                      writer: RootWriter) -> bool:
    """Whether a path present before and after, of the same kind, has new contents
    (``writer``: what wrote the root before the scripts, and knows its contents)."""
    if after.kind == SYMLINK:
        return before.target != after.target
    if after.kind != FILE:
        return False
    if before.size != after.size:
        return True
    if (before.mtime_ns, before.ctime_ns, before.ino) == (after.mtime_ns, after.ctime_ns,
                                                           after.ino):
        return False
    digest = writer.digest(rel)
    if digest is None:
        return True  # contents unknown: assume rewritten
    return _digest(str(root / rel)) != digest


def _diff(root: Path, before: dict[str, _Node], after: dict[str, _Node],
          writer: RootWriter) -> list[Entry]:
    """Entries for what changed from ``before`` to ``after`` (see the module docstring)."""
    euid, egid = os.geteuid(), os.getegid()
    as_root = euid == 0

    def owner(node: _Node) -> tuple[int, int]:
        if as_root:
            return node.uid, node.gid
        return (0 if node.uid == euid else node.uid), (0 if node.gid == egid else node.gid)

    entries: list[Entry] = []
    first_link: dict[tuple[int, int], str] = {}
    total = 0
    for rel in sorted(after, key=sort_key):
        node = after[rel]
        old = before.get(rel)
        if old is not None and old.kind == node.kind:
            meta = (old.mode, old.uid, old.gid, old.xattrs) != (node.mode, node.uid, node.gid,
                                                                 node.xattrs)
            rewritten = _contents_changed(root, rel, old, node, writer)
            if not meta and not rewritten:
                continue
        else:
            rewritten = True
        uid, gid = owner(node)
        xattrs = dict(node.xattrs)
        mtime = None if rewritten or old is None or node.kind == DIR else \
            old.mtime_ns // 1_000_000_000
        if node.kind == DIR:
            entries.append(Entry(rel, DIR, node.mode, uid, gid, None, xattrs=xattrs))
        elif node.kind == SYMLINK:
            entries.append(Entry(rel, SYMLINK, 0o777, uid, gid, mtime, linkname=node.target,
                                 xattrs=xattrs))
        elif node.kind == FIFO:
            entries.append(Entry(rel, FIFO, node.mode, uid, gid, mtime, xattrs=xattrs))
        elif node.kind == FILE:
            key = (node.dev, node.ino)
            if node.nlink > 1 and key in first_link:
                entries.append(Entry(rel, HARDLINK, node.mode, uid, gid, mtime,
                                     linkname=first_link[key]))
                continue
            first_link[key] = rel
            total += node.size
            if total > MAX_RESULT_BYTES:
                raise SutureError(f"maintainer scripts changed more than {MAX_RESULT_BYTES} "
                                  "bytes of files; refusing to build such a layer")
            data = (root / rel).read_bytes()
            entries.append(Entry(rel, FILE, node.mode, uid, gid, mtime, len(data), data=data,
                                 xattrs=xattrs))
        else:
            log.warning("maintainer scripts made %s %s: left out of the layer", node.kind, rel)
    for rel in sorted(before.keys() - after.keys(), key=sort_key):
        parent = rel.rpartition("/")[0]
        if not parent or (parent in after and after[parent].kind == DIR):
            entries.append(Entry.whiteout(rel))
    entries.sort(key=lambda e: sort_key(e.path))
    return entries


# --------------------------------------------------------------------------- running

def _job_env(job: ScriptJob) -> dict[str, str]:
    """A job's environment: a plain one, then what its family gives it (which wins)."""
    env = {"PATH": PATH, "HOME": "/root", "LC_ALL": "C"}
    env.update(dict(job.env))
    return env


def _interpreter(script: Path) -> str:
    """The interpreter the kernel (or execvp's fallback) will use for ``script``."""
    with script.open("rb") as fh:
        first = fh.readline(256)
    if first.startswith(b"#!"):
        words = first[2:].decode("utf-8", "replace").split()
        if words:
            return words[0]
    return "/bin/sh"


def _why_not(root: Path, job: ScriptJob) -> str | None:
    """Why ``job`` cannot run in ``root``, or ``None`` if it can."""
    script = resolve_in_root(root, job.path, follow_last=True)
    shell = resolve_in_root(root, "bin/sh", follow_last=True)
    if not script.is_file():
        if not shell.is_file():
            return "no /bin/sh in the image"
        return f"no /{job.path} in the image (nothing to run)"
    if job.interpreter[:1] == ("<lua>",):
        return None  # rpm's embedded Lua: run in this process (suture.patch.lua)
    interpreter = job.interpreter[0] if job.interpreter else _interpreter(script)
    found = resolve_in_root(root, interpreter, follow_last=True)
    if not found.is_file():
        return f"no {interpreter} in the image"
    return None


def _install_policy(root: Path) -> Path | None:
    sbin = resolve_in_root(root, "usr/sbin", follow_last=True)
    policy = sbin / "policy-rc.d"
    if not sbin.is_dir() or policy.exists() or policy.is_symlink():
        return None
    policy.write_bytes(_POLICY_BODY)
    policy.chmod(0o755)
    return policy


def _remove_policy(policy: Path | None) -> None:
    if policy is None or policy.is_symlink() or not policy.is_file():
        return
    if policy.read_bytes() == _POLICY_BODY:
        policy.unlink()


class RootDirectory:
    """:class:`~suture.distro.scripts.RootFiles` over a root on disk (paths resolved
    inside it, symlinks included, never outside)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, path: str, limit: int = 16 << 20) -> bytes | None:
        found = resolve_in_root(self.root, path, follow_last=True)
        try:
            st = found.lstat()
            if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
                return None
            return found.read_bytes()
        except OSError:
            return None

    def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        target = resolve_in_root(self.root, path, follow_last=False)
        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise LayerError(f"cannot write /{normalize(path)} in the scripts' root: "
                             "not a regular file")
        tmp = target.with_name(f".{target.name}.suture-new")
        tmp.write_bytes(data)
        tmp.chmod(mode)
        os.replace(tmp, target)


class Staging:
    """Puts a job's :class:`~suture.distro.scripts.Staged` files in place and, once it
    ran, puts back what was there (moved aside to ``stash``, outside the root)."""

    def __init__(self, root: Path, stash: Path) -> None:
        self.root = root
        self.stash = stash
        self._moved: list[tuple[Path, Path | None]] = []  # (path in root, where it went)
        self._made: list[Path] = []  # directories made for staged files

    def stage(self, staged: Sequence[Staged]) -> None:
        for number, item in enumerate(staged):
            target = resolve_in_root(self.root, item.path, follow_last=False)
            aside: Path | None = None
            if target.is_symlink() or target.exists():
                self.stash.mkdir(exist_ok=True)
                aside = self.stash / f"{len(self._moved)}-{number}"
                os.rename(target, aside)
            self._moved.append((target, aside))
            if item.data is None and item.source is None:
                continue
            missing = []
            parent = target.parent
            while not parent.exists():
                missing.append(parent)
                parent = parent.parent
            for directory in reversed(missing):
                directory.mkdir(mode=0o755)
                self._made.append(directory)
            if item.source is not None:
                shutil.copyfile(item.source, target)
            else:
                target.write_bytes(item.data or b"")
            target.chmod(item.mode)

    def restore(self) -> None:
        for target, aside in reversed(self._moved):
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.is_dir():
                remove_tree(target)
            if aside is not None:
                os.rename(aside, target)
        for directory in reversed(self._made):
            if directory.is_dir() and not directory.is_symlink():
                remove_tree(directory)
        self._moved, self._made = [], []


def drive(sequence: ScriptSequence, root: Path, stash: Path,
          run: Callable[[ScriptJob], None]) -> None:
    """Run ``sequence`` over ``root``: each job it gives is run by ``run`` with the job's
    staged files in place (what was there moved aside to ``stash``, outside the
    root, and put back after), then the sequence is finished."""
    files = RootDirectory(root)
    staging = Staging(root, stash)
    while (job := sequence.next_job(files)) is not None:
        try:
            staging.stage(job.staged)
            run(job)
        finally:
            staging.restore()
    sequence.finish(files)


def _run_in(root: Path, writer: RootWriter, kind: str, sequence: ScriptSequence,
            timeout: float) -> ScriptOutcome:
    before = _snapshot(root)
    ran: list[str] = []
    not_run: list[tuple[str, str]] = []

    def run(job: ScriptJob) -> None:
        why = _why_not(root, job)
        if why is not None:
            log.info("not running %s: %s", job.describe(), why)  # reported in the result
            not_run.append((job.describe(), why))
            return
        env = _job_env(job)
        if job.interpreter[:1] == ("<lua>",):
            log.info("running %s (<lua>, programs in %s)", job.describe(), kind)
            run_lua(job, root, env, lambda argv, env2, left: run_one(
                job, command(kind, root, dict(env2), list(argv)),
                dict(env2) if kind == "chroot" else {}, left), timeout)
            ran.append(job.describe())
            return
        argv = [*job.interpreter, "/" + normalize(job.path), *job.args]
        log.info("running %s (%s)", job.describe(), kind)
        run_one(job, command(kind, root, env, argv), env if kind == "chroot" else {}, timeout)
        ran.append(job.describe())

    policy = _install_policy(root)
    try:
        drive(sequence, root, root.parent / "staged", run)
    finally:
        _remove_policy(policy)
    after = _snapshot(root)
    return ScriptOutcome(_diff(root, before, after, writer), ran, not_run)
