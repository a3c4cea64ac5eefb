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
Given the cache directory, :func:`start_root` keeps extracted roots there by layer
chain (:mod:`suture.oci.rootcache`) and links a kept one instead of extracting it,
when the scripts run under an overlay (see :class:`ScriptRoot`).

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

import contextlib
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from suture.oci.rootcache import CacheMismatch, RootCache
from suture.patch.lua import run_lua
from suture.patch.sandbox import _ENTER as SANDBOX_ENTER
from suture.patch.sandbox import (
    SANDBOXES,
    SCRIPT_TIMEOUT,
    command,
    preflight,
    require_overlay,
    run_one,
)
from suture.patch.sandbox import _Overlay as sandbox_overlay

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


class _RootState:
    """What a :class:`ScriptRoot` must stop and remove when it is closed."""

    def __init__(self, tmp: Path, lock: int | None) -> None:
        self.tmp = tmp
        self.lock = lock
        self.extraction: Extraction | None = None
        self.threads: list[threading.Thread] = []

    def close(self) -> None:
        for thread in self.threads:
            thread.join()
        if self.extraction is not None:
            self.extraction.close()
        remove_tree(self.tmp)
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None


class ScriptRoot:
    """``image``'s root for maintainer scripts, being made in the background in a
    temporary directory under ``workdir`` (the system's temporary directory if
    ``None``): written by :class:`~suture.oci.extract.Extraction`, or, with a
    ``cache`` (:class:`~suture.oci.rootcache.RootCache`) that holds the root of the
    image's layers, linked from it; an extracted root is then kept in ``cache``. The
    run's directory is then in the cache's (hard links need one file system). With
    ``check``, the cache is used only if ``check(cache.directory)`` holds (asked in
    the background, as :func:`start_root` asks :func:`overlay_works`).

    With a cache, the root's files may be the cache's inodes (:attr:`shared`): what
    writes into the root must only create, rename and remove names, never write a
    file in place (:func:`start_root` gives a cache only when scripts run under an
    overlay; :func:`run_scripts` copies the files before an in-process ``<lua>`` job).

    Hand it to :func:`run_scripts`, which waits for it, uses it and removes it; or
    :meth:`close` it. Dropping it closes it too (as soon as the last reference goes,
    and at exit at the latest), and the helper removes an extracted tree itself if
    this process dies first; a linked one is removed by a later eviction pass.
    """

    def __init__(self, image: Image, workdir: Path | None = None,
                 cache: RootCache | None = None,
                 check: Callable[[Path], bool] | None = None) -> None:
        self.image_digest = image.digest
        self._image = image
        keys = cache.keys([layer.diff_id for layer in image.layers]) if cache else None
        self._keys = keys or []
        self.key = keys[-1] if keys else None
        self.cache = cache if self.key is not None else None
        self.from_cache = False  # linked from the cache (known after wait())
        self.shared = False  # its files are (also) the cache's (known after wait())
        lock = None
        tmp = None
        if self.cache is not None:
            try:
                tmp, lock = self.cache.new_run()
            except OSError as exc:
                log.info("extracted roots are not cached: %s", exc)
                self.cache = None
        if tmp is None:
            tmp = Path(tempfile.mkdtemp(prefix="suture-scripts-", dir=workdir))
        self.tmp = tmp
        self.path = self.tmp / "root"
        state = _RootState(tmp, lock)
        self._state = state
        self._writer: RootWriter | None = None
        self._entry: dict[str, Any] | None = None
        self._error: BaseException | None = None
        self._close = weakref.finalize(self, state.close)
        try:
            if self.cache is None:
                self._extract()
            else:
                thread = threading.Thread(target=self._prepare, args=(check,), daemon=True,
                                          name="suture-root-prepare")
                state.threads.append(thread)
                thread.start()
        except BaseException:
            self.close()
            raise

    def _extract(self, skip: int = 0, tree: dict[str, Any] | None = None) -> None:
        store = (self.cache.directory, self.key) if self.cache and self.key else None
        self._state.extraction = Extraction(self._image, self.path, cleanup=self.tmp,
                                            store=store, skip=skip, tree=tree)

    def _prepare(self, check: Callable[[Path], bool] | None) -> None:
        """In the background: link the root from the cache, or start extracting it."""
        try:
            cache, key = self.cache, self.key
            assert cache is not None and key is not None
            if check is not None and not check(cache.directory):
                log.info("extracted roots are not cached: no overlay for scripts in %s",
                         cache.directory)
                self.cache = None
            else:
                found = cache.longest(self._keys)
                if found is not None:
                    layers, entry = found
                    try:
                        cache.link(self._keys[layers - 1], entry, self.path)
                    except (CacheMismatch, OSError) as exc:
                        log.info("root for maintainer scripts not taken from the cache "
                                 "(%s): extracting it", exc)
                        remove_tree(self.path)
                    else:
                        if layers == len(self._keys):
                            self._entry = entry
                            return
                        # Another image on the same base: its own layers go on top.
                        log.info("root for maintainer scripts: %d of its %d layers linked "
                                 "from the cache (%s), the rest extracted over them", layers,
                                 len(self._keys), self._keys[layers - 1][:12])
                        self._extract(layers, entry["tree"])
                        return
            self._extract()
        except BaseException as exc:  # handed to wait()
            self._error = exc

    def wait(self) -> RootWriter:
        """Block until the tree is complete; its writer (for the patch entries)."""
        if self._writer is not None:
            return self._writer
        state = self._state
        for thread in state.threads:
            thread.join()
        if self._entry is not None:
            assert self.key is not None
            log.info("root for maintainer scripts linked from the cache (%s)", self.key[:12])
            self.from_cache = self.shared = True
            self._writer = RootWriter(self.path, hashing=True, tree=self._entry["tree"],
                                      trash=self.tmp)
            return self._writer
        if state.extraction is None:
            log.info("root for maintainer scripts: %s; extracting it here", self._error)
            self.cache = None
            remove_tree(self.path)
            self._extract()
        assert state.extraction is not None
        self._writer = state.extraction.wait()
        self.shared = state.extraction.stored or state.extraction.skip > 0
        return self._writer

    def forget(self, why: str) -> None:
        """Remove from the cache every root this one's files may be shared with."""
        if self.cache is not None:
            for key in self._keys:
                if (self.cache.directory / key).exists():
                    self.cache.discard(key, why)

    def release(self) -> None:
        """Done with the tree: it is removed in the background; :meth:`close` (or
        dropping this) waits for that."""
        state = self._state
        if state.extraction is not None:
            state.extraction.release()
        elif self._writer is not None:
            thread = threading.Thread(target=remove_tree, args=(self.path,), daemon=True,
                                      name="suture-root-remove")
            state.threads.append(thread)
            thread.start()

    def close(self) -> None:
        """Stop the background work and remove the tree (at once; idempotent)."""
        self._close()


def start_root(image: Image, *, workdir: Path | None = None, sandbox: str = "auto",
               cache_dir: Path | None = None) -> ScriptRoot | None:
    """Start writing ``image``'s root for maintainer scripts in the background, when
    :func:`run_scripts` could run scripts over it (a known sandbox other than
    ``none`` that works here, the image's architecture the host's); else None.
    Nothing is raised here: :func:`run_scripts` reports what is wrong (or, when
    no root can be made in ``workdir``, makes one itself).

    With ``cache_dir``, the root is taken from (or kept in) its ``roots`` cache
    (:mod:`suture.oci.rootcache`) when the scripts will run in ``bwrap`` under an
    overlay there (checked once per file system and process): then nothing writes
    the root's files in place. Otherwise it is extracted as without a cache."""
    try:
        kind, _why = preflight(image, sandbox, quiet=True)
        if kind is None:
            return None
        cache = None
        if cache_dir is not None and kind == "bwrap":
            cache = RootCache(cache_dir / "roots")
        return ScriptRoot(image, workdir, cache, overlay_works)
    except (UsageError, OSError) as exc:
        log.debug("no root for maintainer scripts in the background: %s", exc)
        return None


_overlay_seen: dict[int, bool] = {}
_overlay_lock = threading.Lock()


def overlay_works(where: Path) -> bool:
    """Whether a script run's overlay (:mod:`suture.patch.sandbox`) mounts over a root
    in directory ``where`` (probed once per file system and process, by mounting one
    exactly as a run does and running ``true`` in it)."""
    where.mkdir(parents=True, exist_ok=True)
    dev = os.stat(where).st_dev
    with _overlay_lock:
        if dev in _overlay_seen:
            return _overlay_seen[dev]
        probe = Path(tempfile.mkdtemp(prefix=".probe-", dir=where))
        try:
            (probe / "root").mkdir()
            overlay = sandbox_overlay(probe / "root")
            spec = json.dumps({"procs": [], "rlimits": [], "overlay": overlay.spec()})
            done = subprocess.run([sys.executable, "-I", "-S", "-c", SANDBOX_ENTER, spec,
                                   shutil.which("true") or "/bin/true"],
                                  stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                                  check=False)
            works = done.returncode == 0 and not (overlay.dir / "fallback").exists()
            if not works:
                log.debug("overlay probe in %s: exit %d, %s", where, done.returncode,
                          done.stderr[-300:].decode("utf-8", "replace"))
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("overlay probe in %s: %s", where, exc)
            works = False
        finally:
            remove_tree(probe)
        _overlay_seen[dev] = works
        return works


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
        if root.shared:
            require_overlay(root.path)
        _write_entries(writer, patch_entries)
        outcome, kept_inodes = _run_in(root.path, writer, kind, sequence or FixedSequence(jobs),
                                       timeout, shared=root.shared)
        if kept_inodes:
            # Only a run that fell back to binding the root itself can do that.
            root.forget("maintainer scripts changed files of the cached root in place "
                        f"({', '.join(kept_inodes[:3])})")
        return outcome
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
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # a new file, never one of the root's written over
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


def _unshare(root: Path) -> None:
    """Give each regular file under ``root`` with several links an inode of its own
    (a copy with its contents, owner, mode, xattrs as root, and times; names of the
    root that shared an inode share the copy), so that writing one in place writes
    no other tree's."""
    as_root = os.geteuid() == 0
    copies: dict[tuple[int, int], str] = {}
    stack = [str(root)]
    while stack:
        here = stack.pop()
        with os.scandir(here) as it:
            found = list(it)
        for de in found:
            if de.is_dir(follow_symlinks=False):
                stack.append(de.path)
                continue
            if not de.is_file(follow_symlinks=False):
                continue
            st = de.stat(follow_symlinks=False)
            if st.st_nlink < 2:
                continue
            tmp = f"{here}/.suture-unshare"
            inode = (st.st_dev, st.st_ino)
            if inode in copies:
                os.link(copies[inode], tmp, follow_symlinks=False)
            else:
                shutil.copyfile(de.path, tmp, follow_symlinks=False)
                if as_root:
                    os.chown(tmp, st.st_uid, st.st_gid)
                    for name in os.listxattr(de.path, follow_symlinks=False):
                        os.setxattr(tmp, name, os.getxattr(de.path, name, follow_symlinks=False))
                os.chmod(tmp, stat.S_IMODE(st.st_mode))
                os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.rename(tmp, de.path)
            copies[inode] = de.path


def _run_in(root: Path, writer: RootWriter, kind: str, sequence: ScriptSequence,
            timeout: float, *, shared: bool = False) -> tuple[ScriptOutcome, list[str]]:
    """Run ``sequence`` over ``root``: the outcome, and the paths whose files the
    scripts changed in place (same inode) although ``shared`` (the root's files are
    also another tree's: they are copied before an in-process ``<lua>`` job, and
    scripts in ``bwrap`` write through an overlay, so only a run that fell back to
    binding the root itself leaves any)."""
    before = _snapshot(root)
    unshared = not shared
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
            nonlocal unshared
            if not unshared:  # it writes the root in place, from this process
                _unshare(root)
                unshared = True
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
    entries = _diff(root, before, after, writer)
    in_place = []
    if shared:
        for entry in entries:
            old, new = before.get(entry.path), after.get(entry.path)
            if old is not None and new is not None and old.kind == FILE and \
                    (old.dev, old.ino) == (new.dev, new.ino):
                in_place.append(entry.path)
    return ScriptOutcome(entries, ran, not_run), in_place
