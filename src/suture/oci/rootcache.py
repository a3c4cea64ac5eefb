"""Extracted image roots kept on disk by layer chain, for later runs to link instead of
extracting again.

An image's root filesystem depends only on its layers' uncompressed contents, so a
root is stored under a key made of the OCI ChainID of the layers' diff_ids (and of
whether it was written as root, which decides owners). An image whose lower layers
are those of a stored root (another image on the same base) starts from a link farm
of that root and applies only its own layers above (suture.patch.scripts). Layout of the cache
directory (``<cache_dir>/roots``):

``<key>/tree/``
    the root as :class:`~suture.oci.extract.RootWriter` wrote it. Nothing writes
    into it once it is stored: runs get a hard-link farm of it (:meth:`RootCache.link`:
    directories, symlinks and FIFOs made anew, regular files linked), so a run may
    rename, create and remove names in its copy but must never write a file in place
    (open it for writing, chmod, chown, utime or set an xattr on it): those inodes are
    the cache's. The caller decides when that holds (suture.patch.scripts: scripts
    under an overlay).
``<key>/entry.json``
    the writer's mirror (SHA-256 of every regular file) and the kind, mode, owner,
    size and mtime of every path, checked as a farm is linked: an entry whose tree
    does not match (a file truncated or changed in place, a path missing or added) or
    whose JSON cannot be read is removed and the root extracted again.
``<key>/used``
    the disk space the tree takes (in bytes, each inode once); its mtime is the
    entry's last use (least recently used entries are evicted first).
``.new-*``, ``.old-*``
    entries being stored (renamed to ``<key>`` only when complete, so a process that
    dies leaves no partial entry under a key; two processes storing the same key: the
    second rename fails and its copy is removed), and entries being removed (renamed
    away first, so no reader links from a half-removed tree).
``runs/*``
    the roots of runs in progress, on the same file system as the entries (hard links
    need it). Each holds a ``lock`` its process keeps locked; one left by a process
    that died is removed by the next eviction pass.

Bounded: after each store, least recently used entries are removed until the entries
take at most :data:`MAX_CACHE_BYTES` and at most a quarter of the space the file system
has free plus what the entries already hold (an entry made over another's shares its
unchanged files with it, and they are counted in both). A root larger than that is not stored.
Processes share the directory without a lock: every change is a rename or a creation.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMAT = 1  # of keys and entries; a change makes every stored entry unused
MAX_CACHE_BYTES = 4 << 30
STALE_RUN_SECONDS = 3600.0  # an unlocked run directory older than this is removed
_DIR_KINDS = {stat.S_IFDIR: "d", stat.S_IFREG: "f", stat.S_IFLNK: "l", stat.S_IFIFO: "p"}


class CacheMismatch(Exception):
    """A stored tree is not what its entry says (or went away while being linked)."""


def chain_keys(diff_ids: Sequence[str], *, as_root: bool) -> list[str]:
    """The cache keys of the roots made of the first 1, 2, ... layers with these
    ``diff_ids`` (bottom first): each the OCI ChainID of those layers, with
    :data:`FORMAT` and whether owners were applied."""
    chain = ""
    keys = []
    for diff_id in diff_ids:
        chain = diff_id if not chain else \
            "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
        keys.append(hashlib.sha256(f"suture-root {FORMAT} {int(as_root)} {chain}".encode())
                    .hexdigest())
    return keys


def _walk(src: str, dst: str, as_root: bool) -> tuple[dict[str, list[Any]], int]:
    """Make ``dst`` (absent) a link farm of ``src``: directories (mode and, as root,
    owner), symlinks and FIFOs anew, regular files hard links. The kind, mode, uid,
    gid, size and mtime of every path under ``src``, and the disk space its regular
    files take (each inode once)."""
    paths: dict[str, list[Any]] = {}
    inodes: set[int] = set()
    used = 0
    # (directory in dst, its lstat in src): finished after their contents
    pending: list[tuple[str, os.stat_result]] = [(dst, os.lstat(src))]
    os.mkdir(dst, 0o700)
    stack: list[tuple[str, str, str]] = [(src, dst, "")]
    while stack:
        here, there, rel_dir = stack.pop()
        with os.scandir(here) as it:
            for de in it:
                rel = f"{rel_dir}/{de.name}" if rel_dir else de.name
                st = de.stat(follow_symlinks=False)
                kind = _DIR_KINDS.get(stat.S_IFMT(st.st_mode))
                if kind is None:
                    raise CacheMismatch(f"{rel}: unexpected file type")
                paths[rel] = [kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                              st.st_size if kind == "f" else 0,
                              st.st_mtime_ns if kind in "fp" else 0]
                if kind == "f" and st.st_ino not in inodes:
                    inodes.add(st.st_ino)
                    used += st.st_blocks * 512
                target = f"{there}/{de.name}"
                if kind == "d":
                    os.mkdir(target, 0o700)
                    stack.append((de.path, target, rel))
                    pending.append((target, st))
                elif kind == "f":
                    os.link(de.path, target, follow_symlinks=False)
                elif kind == "l":
                    os.symlink(os.readlink(de.path), target)
                    if as_root:
                        os.lchown(target, st.st_uid, st.st_gid)
                else:
                    os.mkfifo(target, 0o600)
                    if as_root:
                        os.chown(target, st.st_uid, st.st_gid)
                    os.chmod(target, stat.S_IMODE(st.st_mode))
                    os.utime(target, ns=(st.st_mtime_ns, st.st_mtime_ns))
    for there, st in reversed(pending):
        if as_root:
            os.chown(there, st.st_uid, st.st_gid)
        os.chmod(there, stat.S_IMODE(st.st_mode))
    return paths, used


def _remove(path: Path) -> None:
    from suture.oci.extract import remove_tree

    remove_tree(path)


class RootCache:
    """The roots kept under ``directory`` (see the module docstring)."""

    def __init__(self, directory: Path, *, max_bytes: int = MAX_CACHE_BYTES,
                 as_root: bool | None = None) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.as_root = os.geteuid() == 0 if as_root is None else as_root

    def keys(self, diff_ids: Sequence[str | None]) -> list[str] | None:
        """The keys of the roots of the first 1, 2, ... layers with these diff_ids
        (:func:`chain_keys`); None if one is unknown."""
        if not diff_ids or any(d is None for d in diff_ids):
            return None
        return chain_keys([d for d in diff_ids if d is not None], as_root=self.as_root)

    def longest(self, keys: Sequence[str]) -> tuple[int, dict[str, Any]] | None:
        """How many layers the longest stored root of ``keys`` (from :meth:`keys`) is
        made of, and its entry; None if none is stored."""
        for n in range(len(keys), 0, -1):
            entry = self.load(keys[n - 1])
            if entry is not None:
                return n, entry
        return None

    # ------------------------------------------------------------------ runs
    def new_run(self) -> tuple[Path, int]:
        """A new directory for one run's root, on the entries' file system, and the
        descriptor of its lock (held until closed: the run is alive while it is)."""
        runs = self.directory / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix="run-", dir=runs))
        fd = os.open(path / "lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return path, fd

    # ------------------------------------------------------------------ reading
    def load(self, key: str) -> dict[str, Any] | None:
        """The entry stored under ``key`` (its JSON), or None when there is none or it is
        unreadable (then it is removed)."""
        where = self.directory / key
        try:
            raw = (where / "entry.json").read_bytes()
        except FileNotFoundError:
            if where.exists():
                self.discard(key, "no entry.json")
            return None
        except OSError as exc:
            log.debug("root cache entry %s unreadable: %s", key, exc)
            return None
        try:
            entry = json.loads(raw)
            if not (isinstance(entry, dict) and entry.get("format") == FORMAT
                    and entry.get("key") == key and isinstance(entry.get("tree"), dict)
                    and isinstance(entry.get("paths"), dict)):
                raise ValueError("not an entry of this format")
        except ValueError as exc:
            self.discard(key, f"entry.json: {exc}")
            return None
        return entry

    def link(self, key: str, entry: dict[str, Any], dest: Path) -> None:
        """Make ``dest`` (absent) a hard-link farm of the tree stored under ``key``,
        checked against ``entry``; raises :class:`CacheMismatch` (the entry removed,
        ``dest`` left for the caller to remove) when it does not match."""
        where = self.directory / key
        try:
            paths, _used = _walk(os.fspath(where / "tree"), os.fspath(dest), self.as_root)
        except FileNotFoundError as exc:
            raise CacheMismatch(f"went away: {exc}") from None
        except CacheMismatch as exc:
            self.discard(key, str(exc))
            raise
        if paths != entry["paths"]:
            stored = entry["paths"]
            wrong = sorted(p for p in paths.keys() | stored.keys()
                           if paths.get(p) != stored.get(p))
            self.discard(key, f"{len(wrong)} paths differ from entry.json "
                         f"(first: {wrong[0]})")
            raise CacheMismatch(f"{len(wrong)} paths differ, first {wrong[0]}")
        with contextlib.suppress(OSError):
            os.utime(where / "used")

    # ------------------------------------------------------------------ writing
    def store(self, key: str, src: Path, tree: dict[str, Any]) -> bool:
        """Keep a hard-link copy of the root ``src`` (written by a
        :class:`~suture.oci.extract.RootWriter` whose mirror is ``tree``) under ``key``.
        False when it is not stored (one is there already, or it is too large)."""
        if (self.directory / key).exists():
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        new = Path(tempfile.mkdtemp(prefix=".new-", dir=self.directory))
        stored = False
        try:
            paths, size = _walk(os.fspath(src), os.fspath(new / "tree"), self.as_root)
            if size > self._budget(0):
                log.info("root of %s not kept in the cache: %d MiB is more than it may hold",
                         key[:12], size >> 20)
                return False
            data = {"format": FORMAT, "key": key, "paths": paths, "tree": tree}
            (new / "entry.json").write_text(json.dumps(data, separators=(",", ":")))
            (new / "used").write_text(f"{size}\n")
            try:
                os.rename(new, self.directory / key)
            except OSError:  # another process stored it first
                return False
            stored = True
        finally:
            if not stored:
                _remove(new)
        self.evict(keep=key)
        return True

    def discard(self, key: str, why: str) -> None:
        """Remove the entry stored under ``key`` (renamed away first)."""
        log.warning("root cache entry %s removed: %s", key[:12], why)
        self._drop(self.directory / key)

    def _drop(self, where: Path) -> None:
        old = self.directory / f".old-{os.getpid()}-{time.monotonic_ns()}-{where.name[:12]}"
        try:
            os.rename(where, old)
        except OSError:
            return  # gone already (another process removed it)
        _remove(old)

    # ------------------------------------------------------------------ bounds
    def _budget(self, held: int) -> int:
        try:
            free = shutil.disk_usage(self.directory).free
        except OSError:
            return self.max_bytes
        return min(self.max_bytes, (free + held) // 4)

    def entries(self) -> list[tuple[float, int, str]]:
        """(last use, bytes, key) of every stored entry."""
        found = []
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        for name in names:
            if len(name) != 64 or name.startswith("."):
                continue
            where = self.directory / name
            try:
                used = os.stat(where / "used").st_mtime
                size = int((where / "used").read_text()[:20])
            except (OSError, ValueError):
                used, size = 0.0, 0
            found.append((used, size, name))
        return found

    def evict(self, keep: str | None = None) -> None:
        """Remove least recently used entries past the bound (never ``keep``), and the
        directories of runs whose process is gone."""
        found = sorted(self.entries())
        held = sum(size for _used, size, _key in found)
        budget = self._budget(held)
        for _used, size, key in found:
            if held <= budget:
                break
            if key == keep:
                continue
            log.info("root cache: removing %s (%d MiB, least recently used)", key[:12],
                     size >> 20)
            self._drop(self.directory / key)
            held -= size
        self._sweep()

    def _sweep(self) -> None:
        runs = self.directory / "runs"
        try:
            names = os.listdir(runs)
        except OSError:
            return
        now = time.time()
        for name in names:
            where = runs / name
            try:
                if now - os.lstat(where).st_mtime < STALE_RUN_SECONDS:
                    continue
                fd = os.open(where / "lock", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # its process is alive
            try:
                _remove(where)
            finally:
                os.close(fd)

