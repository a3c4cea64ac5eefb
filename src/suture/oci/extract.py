"""Materialising an image's root filesystem in a directory, safely, in the foreground
or in a helper process.

Layers are applied bottom-up: whiteouts delete, opaque markers empty a directory
of what lower layers put there, entries are written. Every path is resolved
inside the destination the way a chroot would (symlinks followed but clamped at
the root), so no entry, link or whiteout can reach outside it. Device nodes are
skipped (they cannot be trusted and are not needed to run scripts); ownership is
applied only when running as root; directory times are not kept.

A :class:`RootWriter` does the writing. It is the only writer of its directory, so
it keeps a mirror of what it made in memory (directories, symlink targets, and
the SHA-256 of each regular file when asked) and resolves paths without asking
the file system. :class:`Extraction` runs one in a helper process while the
caller does other work: a thread of the caller reads each layer through
:meth:`~suture.oci.image.Layer.open_tar` (so every byte is verified against the
layer's digests by the caller, as for any other read) and pipes the tar stream
to the helper, which writes it and sends its mirror back. The helper never
outlives its caller's interest: :meth:`Extraction.close` kills it, and if the
caller dies first the helper removes the tree itself.

The expanded size is bounded: a writer given ``max_bytes`` refuses, naming the
layer, a layer that would take the tree past it (file contents plus
:data:`ENTRY_COST` bytes a path, so a million empty files count too). An
:class:`Extraction` gets :func:`root_budget` of its directory unless told otherwise:
at most :data:`MAX_ROOT_BYTES`, and no more than three quarters of the free space
there. A 3 MB layer holding a 3 GiB file of zeros is refused, not expanded.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from suture.errors import LayerError, SutureError
from suture.oci.fs import normalize, resolve_links
from suture.oci.image import Image, Layer
from suture.oci.layer import (
    BLOCK,
    CHAR,
    DIR,
    FIFO,
    FILE,
    HARDLINK,
    OPAQUE,
    SYMLINK,
    WHITEOUT_PREFIX,
    Entry,
    default_mtime,
    sort_key,
)

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
RELEASE_TIMEOUT = 60.0  # seconds a released helper gets to remove its tree
_SMALL = 1 << 20  # files up to this size are read in one call
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_ROOT_BYTES = 32 << 30  # the largest root an Extraction writes, by default
ENTRY_COST = 512  # bytes charged for each path, besides its contents


def root_budget(where: Path, ceiling: int | None = None) -> int:
    """How many bytes a root written under ``where`` may take: ``ceiling`` (default
    :data:`MAX_ROOT_BYTES`), and no more than three quarters of the free space there."""
    limit = MAX_ROOT_BYTES if ceiling is None else ceiling
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return limit
    return min(limit, free * 3 // 4)


def _size(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


def resolve_in_root(root: Path, rel: str, *, follow_last: bool = False) -> Path:
    """The host path of ``rel`` inside ``root``, symlinks resolved as in a chroot.

    Intermediate components that are symlinks are followed (absolute targets from
    ``root``, ``..`` clamped at ``root``); the last component is followed only with
    ``follow_last``. The result is always under ``root``.
    """
    def readlink(path: str) -> str | None:
        candidate = root / path
        return os.readlink(candidate) if candidate.is_symlink() else None

    resolved = resolve_links(rel, readlink, follow_last=follow_last)
    return root.joinpath(*resolved.split("/")) if resolved else root


# --------------------------------------------------------------------------- the writer

class _Leaf:
    """A path that is neither a directory nor a symlink: a regular file (``digest``:
    hex SHA-256 of its contents once known; ``data``: the bytes it was written from,
    hashed on demand) or a FIFO (``regular`` false). Hard links share one leaf."""

    __slots__ = ("data", "digest", "regular")

    def __init__(self, digest: str | None = None, data: bytes | None = None,
                 regular: bool = True) -> None:
        self.digest = digest
        self.data = data
        self.regular = regular


# A directory is a dict (name -> node), a symlink its target, anything else a leaf.
_Node = dict[str, Any] | str | _Leaf


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _set_xattr(target: str | int, key: str, value: bytes) -> None:
    try:
        os.setxattr(target, key, value, follow_symlinks=False) if isinstance(target, str) \
            else os.setxattr(target, key, value)
    except OSError as exc:
        log.debug("xattr %s on %s not set: %s", key, target, exc)


def remove_tree(path: Path) -> None:
    """Remove ``path`` entirely if it exists, making read-only directories writable
    as needed; what still cannot be removed is logged."""

    def retry(func: Callable[..., object], failed: str, _exc: object) -> None:
        try:
            os.chmod(os.path.dirname(failed), 0o700)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, 0o700)
            func(failed)
        except OSError as exc:
            log.warning("cannot remove %s: %s", failed, exc)

    if not os.path.lexists(path):
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)


class RootWriter:
    """Writes layers (tar streams) and layer entries into ``dest``, which nothing else
    writes to while it is in use.

    ``dest`` is created if missing and must be empty (unless ``tree``, a mirror from
    :meth:`export`, describes what it holds). With ``hashing`` the SHA-256 of every
    regular file from a tar stream is computed while it is written; files from
    entries with in-memory data are hashed on demand (:meth:`digest`). With
    ``trash``, a directory outside ``dest`` on the same file system, what is
    replaced or removed is moved there (cheaper than freeing it now) for the
    caller to remove with the rest. With ``max_bytes``, a tar stream that would take
    the tree past that many bytes (see :data:`ENTRY_COST`) raises :class:`LayerError`.
    """

    def __init__(self, dest: Path, *, hashing: bool = False,
                 tree: dict[str, Any] | None = None, as_root: bool | None = None,
                 trash: Path | None = None, max_bytes: int | None = None) -> None:
        self.dest = dest
        self.hashing = hashing
        self.max_bytes = max_bytes
        self.used = 0  # bytes charged so far (contents + ENTRY_COST a path)
        self.as_root = os.geteuid() == 0 if as_root is None else as_root
        self._root = os.fspath(dest)
        self._trash_in = trash
        self._trash: str | None = None
        self._dropped = 0
        if tree is None:
            dest.mkdir(parents=True, exist_ok=True)
            if any(dest.iterdir()):
                raise LayerError(f"{dest} is not empty")
            self.top: dict[str, Any] = {}
        else:
            self.top = _import_tree(tree)

    # ------------------------------------------------------------------ the mirror
    def _host(self, rel: str) -> str:
        return f"{self._root}/{rel}" if rel else self._root

    def _lookup(self, rel: str) -> _Node | None:
        node: _Node | None = self.top
        if not rel:
            return node
        for part in rel.split("/"):
            if not isinstance(node, dict):
                return None
            node = node.get(part)
            if node is None:
                return None
        return node

    def readlink(self, rel: str) -> str | None:
        """The target of the symlink at root-relative ``rel`` (not followed), or None."""
        node = self._lookup(rel)
        return node if isinstance(node, str) else None

    def resolve(self, rel: str, *, follow_last: bool = False) -> str:
        """``rel`` (normalised) with symlinks resolved inside the root, as
        :func:`resolve_in_root` does, from the mirror."""
        node: _Node | None = self.top
        parts = rel.split("/")
        last = len(parts) - 1
        for i, part in enumerate(parts):
            if part in ("", ".", ".."):
                return resolve_links(rel, self.readlink, follow_last=follow_last)
            node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, str) and (i < last or follow_last):
                return resolve_links(rel, self.readlink, follow_last=follow_last)
            if not isinstance(node, dict):
                return rel  # missing or not a directory: nothing further is a link
        return rel

    def digest(self, rel: str) -> str | None:
        """The hex SHA-256 of the regular file at resolved ``rel`` as this writer left
        it, or None when unknown (not a regular file, or not hashed)."""
        node = self._lookup(rel)
        if not isinstance(node, _Leaf) or not node.regular:
            return None
        if node.digest is None and node.data is not None:
            node.digest = hashlib.sha256(node.data).hexdigest()
            node.data = None
        return node.digest

    def export(self) -> dict[str, Any]:
        """The mirror as JSON-ready values (for :class:`RootWriter` ``tree=``)."""
        return _export_tree(self.top)

    # ------------------------------------------------------------------ primitives
    def _parent(self, rel: str) -> tuple[dict[str, Any], str]:
        """The mirror directory holding resolved ``rel`` and its last name; missing
        directories on the way are made (as ``mkdir -p``)."""
        parent, _, name = rel.rpartition("/")
        node = self.top
        if parent:
            parts = parent.split("/")
            for i, part in enumerate(parts):
                child = node.get(part)
                if child is None:
                    os.mkdir(self._host("/".join(parts[:i + 1])))
                    child = node[part] = {}
                elif not isinstance(child, dict):
                    where = self._host("/".join(parts[:i + 1]))
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), where)
                node = child
        return node, name

    def _drop(self, parent: dict[str, Any], name: str, host: str) -> None:
        node = parent.pop(name)
        if self._trash_in is not None:
            if self._trash is None:
                self._trash = tempfile.mkdtemp(prefix="trash-", dir=self._trash_in)
            self._dropped += 1
            os.rename(host, f"{self._trash}/{self._dropped}")
        elif isinstance(node, dict):
            shutil.rmtree(host)
        else:
            os.unlink(host)

    def remove(self, rel: str) -> None:
        """Remove resolved ``rel`` (a whole tree for a directory) if it exists."""
        parent_rel, _, name = rel.rpartition("/")
        parent = self._lookup(parent_rel)
        if isinstance(parent, dict) and name in parent:
            self._drop(parent, name, self._host(rel))

    def _empty(self, directory: str, prefix: str, keep: set[str]) -> None:
        """Remove what resolved ``directory`` holds, but names whose ``prefix + name``
        is in ``keep``."""
        node = self._lookup(directory)
        if isinstance(node, dict):
            for name in list(node):
                if prefix + name not in keep:
                    self._drop(node, name, self._host(f"{directory}/{name}" if directory
                                                       else name))

    def _own(self, host: str, uid: int, gid: int, mode: int, mtime: float,
             xattrs: dict[str, bytes] | None = None) -> None:
        """Owner (as root), xattrs (as root), mode and time of a path that is not a
        symlink, in the order that keeps set-id bits."""
        if self.as_root:
            os.lchown(host, uid, gid)
            for key, value in (xattrs or {}).items():
                _set_xattr(host, key, value)
        os.chmod(host, mode & 0o7777)
        os.utime(host, (mtime, mtime))

    def _link(self, path: str, linkname: str, host: str, parent: dict[str, Any], name: str,
              layer: str | None) -> None:
        source = self.resolve(normalize(linkname, layer=layer))
        node = self._lookup(source)
        if node is None or isinstance(node, dict):
            raise LayerError(f"hard link {path!r} to missing {linkname!r}", layer=layer,
                             path=path)
        os.link(self._host(source), host, follow_symlinks=False)
        parent[name] = node

    # ------------------------------------------------------------------ tar streams
    def apply_tar(self, stream: IO[bytes], *, layer: str | None = None) -> None:
        """Apply one layer's uncompressed tar stream. Raises :class:`LayerError` for
        an unsafe or unreadable layer, :class:`OSError` when writing fails."""
        # An opaque marker empties its directory of what lower layers put there; what
        # this layer wrote before the marker (tar order is free) is kept.
        written: set[str] = set()
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    path = normalize(member.name, layer=layer)
                    if not path:
                        continue
                    parent, _, base = path.rpartition("/")
                    if base == OPAQUE:
                        self._empty(self.resolve(parent, follow_last=True),
                                    f"{parent}/" if parent else "", written)
                    elif base.startswith(WHITEOUT_PREFIX):
                        victim = f"{parent}/{base[len(WHITEOUT_PREFIX):]}" if parent else \
                            base[len(WHITEOUT_PREFIX):]
                        self.remove(self.resolve(normalize(victim, layer=layer)))
                    else:
                        written.add(path)
                        self._member(tar, member, path, layer)
        except tarfile.TarError as exc:
            raise LayerError(f"unreadable tar: {exc}", layer=layer) from None
        except EOFError:
            raise LayerError("truncated tar stream", layer=layer) from None

    def _charge(self, size: int, layer: str | None) -> None:
        self.used += ENTRY_COST + max(size, 0)
        if self.max_bytes is not None and self.used > self.max_bytes:
            raise LayerError(f"expands the root for maintainer scripts past its ceiling of "
                             f"{_size(self.max_bytes)} (a decompression bomb, or an image "
                             f"larger than the space in {self.dest.parent})", layer=layer)

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, path: str,
                layer: str | None) -> None:
        self._charge(member.size if member.isfile() else 0, layer)
        rel = self.resolve(path)
        parent, name = self._parent(rel)
        host = self._host(rel)
        existing = parent.get(name)
        if member.isdir():
            if existing is not None and not isinstance(existing, dict):
                self._drop(parent, name, host)
                existing = None
            if existing is None:
                os.mkdir(host)
                parent[name] = {}
            self._own(host, member.uid, member.gid, member.mode, member.mtime)
            return
        if existing is not None:
            self._drop(parent, name, host)
        if member.isfile():
            parent[name] = self._file(host, tar.extractfile(member), member.size, member.uid,
                                      member.gid, member.mode, member.mtime,
                                      hashing=self.hashing)
        elif member.issym():
            os.symlink(member.linkname, host)
            if self.as_root:
                os.lchown(host, member.uid, member.gid)
            parent[name] = member.linkname
        elif member.islnk():
            self._link(path, member.linkname, host, parent, name, layer)
        elif member.isfifo():
            os.mkfifo(host, 0o600)
            parent[name] = _Leaf(regular=False)
            self._own(host, member.uid, member.gid, member.mode, member.mtime)
        # device nodes are not materialised

    def _file(self, host: str, source: IO[bytes] | None, size: int, uid: int, gid: int,
              mode: int, mtime: float, *, data: bytes | None = None,
              xattrs: dict[str, bytes] | None = None, hashing: bool = False) -> _Leaf:
        """Write a regular file from ``source`` (``size`` bytes expected) or ``data``."""
        leaf = _Leaf(data=data)
        h = hashlib.sha256() if hashing and source is not None else None
        fd = os.open(host, _OPEN_FLAGS, 0o600)
        try:
            if data is not None:
                _write_all(fd, data)
            elif source is not None:
                chunk = source.read(size if size <= _SMALL else _CHUNK)
                while chunk:
                    _write_all(fd, chunk)
                    if h is not None:
                        h.update(chunk)
                    chunk = source.read(_CHUNK)
            if self.as_root:
                os.fchown(fd, uid, gid)
                for key, value in (xattrs or {}).items():
                    _set_xattr(fd, key, value)
            os.fchmod(fd, mode & 0o7777)
            os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)
        if h is not None:
            leaf.digest = h.hexdigest()
        return leaf

    # ------------------------------------------------------------------ entries
    def apply_entries(self, entries: Iterable[Entry]) -> None:
        """Write ``entries`` over the root as one more layer would be applied.

        Whiteouts and opaque markers act first (they hide what is below, not what
        the same layer holds); then directories before what they hold; hard links
        last. Entries without a time get ``SOURCE_DATE_EPOCH`` (or 0). Raises
        :class:`LayerError` for an unsafe entry, :class:`OSError` when writing fails.
        """
        writes: list[tuple[str, Entry]] = []
        for entry in entries:
            path = normalize(entry.path)
            if not path:
                continue
            parent, _, base = path.rpartition("/")
            if base == OPAQUE:
                self._empty(self.resolve(parent, follow_last=True), "", set())
            elif base.startswith(WHITEOUT_PREFIX):
                self.remove(self.resolve(normalize(f"{parent}/{base[len(WHITEOUT_PREFIX):]}")))
            else:
                writes.append((path, entry))
        writes.sort(key=lambda pe: (pe[1].kind == HARDLINK, sort_key(pe[0])))
        for path, entry in writes:
            self._entry(path, entry)

    def _entry(self, path: str, entry: Entry) -> None:
        if entry.kind in (CHAR, BLOCK):
            return  # device nodes are not materialised
        rel = self.resolve(path)
        parent, name = self._parent(rel)
        host = self._host(rel)
        existing = parent.get(name)
        when = entry.mtime if entry.mtime is not None else default_mtime()
        if entry.kind == DIR:
            if existing is not None and not isinstance(existing, dict):
                self._drop(parent, name, host)
                existing = None
            if existing is None:
                os.mkdir(host)
                parent[name] = {}
            self._own(host, entry.uid, entry.gid, entry.mode, when, entry.xattrs)
            return
        if existing is not None:
            self._drop(parent, name, host)
        if entry.kind == FILE:
            if callable(entry.data):
                # Streamed contents cannot be hashed later: hash them now.
                with entry.data() as stream:
                    parent[name] = self._file(host, stream, _CHUNK + 1, entry.uid, entry.gid,
                                              entry.mode, when, xattrs=entry.xattrs,
                                              hashing=True)
            else:
                parent[name] = self._file(host, None, 0, entry.uid, entry.gid, entry.mode, when,
                                          data=bytes(entry.data or b""), xattrs=entry.xattrs)
        elif entry.kind == SYMLINK:
            os.symlink(entry.linkname, host)
            if self.as_root:
                os.lchown(host, entry.uid, entry.gid)
            parent[name] = entry.linkname
        elif entry.kind == HARDLINK:
            self._link(path, entry.linkname, host, parent, name, None)
        elif entry.kind == FIFO:
            os.mkfifo(host, 0o600)
            parent[name] = _Leaf(regular=False)
            self._own(host, entry.uid, entry.gid, entry.mode, when, entry.xattrs)
        else:
            raise LayerError(f"unknown entry kind {entry.kind!r}", path=path)


def _export_tree(node: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, child in node.items():
        if isinstance(child, dict):
            out[name] = _export_tree(child)
        elif isinstance(child, str):
            out[name] = child
        else:
            out[name] = [child.digest if child.regular else None, child.regular]
    return out


def _import_tree(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, child in data.items():
        if isinstance(child, dict):
            out[name] = _import_tree(child)
        elif isinstance(child, str):
            out[name] = child
        else:
            out[name] = _Leaf(child[0], None, bool(child[1]))
    return out


def _apply_layer(writer: RootWriter, stream: IO[bytes], layer: str) -> None:
    try:
        writer.apply_tar(stream, layer=layer)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise LayerError(f"no space left extracting into {writer.dest}") from None
        raise LayerError(f"cannot extract: {exc}", layer=layer) from None


def extract_image(image: Image, dest: Path, *, hashing: bool = False,
                  max_bytes: int | None = None, skip: int = 0,
                  tree: dict[str, Any] | None = None) -> RootWriter:
    """Write ``image``'s merged root filesystem into ``dest`` (created if missing) and
    return the writer (its mirror of the tree).

    ``dest`` must be empty or absent, unless it holds the root of the first ``skip``
    layers already and ``tree`` is its mirror (:meth:`RootWriter.export`): then only
    the layers above are applied. Directory times are not preserved. With
    ``max_bytes``, a layer that takes the tree past it raises :class:`LayerError`.
    """
    writer = RootWriter(dest, hashing=hashing, max_bytes=max_bytes, tree=tree)
    for layer in image.layers[skip:]:
        with layer.open_tar() as stream:
            _apply_layer(writer, stream, layer.digest)
    return writer


# --------------------------------------------------------------------------- in the background
#
# The helper reads frames from stdin: a 4-byte big-endian length, then that many
# bytes. The first frame is a JSON header ({"layers": [digest, ...], "max_bytes": N
# or null, "store": [cache directory, key] or null, "tree": the mirror of what dest
# holds already, or null}); then each layer's tar stream as
# frames, ended by an empty frame. With "store", the finished tree is kept in that
# RootCache (suture.oci.rootcache) before answering. It answers with one JSON line
# on stdout ({"tree": mirror, "stored": bool} or {"error": message}),
# then waits for stdin to close and removes its ``cleanup`` directory (its caller is
# gone, or never read the answer). A caller that has what it needs kills it instead.

_HEADER = 4


class _Gone(Exception):
    """The helper's input ended early: its caller died or gave up."""


def _read_exact(raw: IO[bytes], size: int) -> bytes:
    data = raw.read(size)
    if data is None or len(data) != size:
        raise _Gone
    return data


class _Frames(io.RawIOBase):
    """One layer's tar stream out of the framed input."""

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self._raw = raw
        self._left = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._done:
            return 0
        if self._left == 0:
            self._left = int.from_bytes(_read_exact(self._raw, _HEADER), "big")
            if self._left == 0:
                self._done = True
                return 0
        view = memoryview(buffer)[:self._left]
        got = self._raw.readinto(view)  # type: ignore[attr-defined]
        if not got:
            raise _Gone
        self._left -= got
        return int(got)

    def drain(self) -> None:
        while self.readinto(bytearray(_CHUNK)):
            pass


def _serve(dest: Path, cleanup: Path) -> int:
    """The helper's body (``python -m suture.oci.extract DEST CLEANUP``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin = open(0, "rb", buffering=_CHUNK, closefd=False)  # noqa: SIM115 - fd 0 is ours
    answered = False
    try:
        header = json.loads(_read_exact(stdin, int.from_bytes(_read_exact(stdin, _HEADER),
                                                              "big")))
        try:
            writer = RootWriter(dest, hashing=True, max_bytes=header.get("max_bytes"),
                                tree=header.get("tree"))
            for digest in header["layers"]:
                frames = _Frames(stdin)
                _apply_layer(writer, io.BufferedReader(frames, _CHUNK), digest)
                frames.drain()
            tree = writer.export()
            stored, why = _store(header.get("store"), dest, tree)
            answer: dict[str, Any] = {"tree": tree, "stored": stored, "not_stored": why}
        except SutureError as exc:
            answer = {"error": str(exc)}
        except OSError as exc:
            answer = {"error": f"cannot extract into {dest}: {exc}"}
        sys.stdout.write(json.dumps(answer, separators=(",", ":")) + "\n")
        sys.stdout.flush()
        answered = True
        while stdin.read(_CHUNK):
            pass
    except (_Gone, OSError, ValueError):
        pass
    finally:
        remove_tree(cleanup)
    return 0 if answered else 1


def _store(store: Any, dest: Path, tree: dict[str, Any]) -> tuple[bool, str | None]:
    """Keep the tree at ``dest`` in the root cache ``store`` names ([directory, key]):
    whether it was stored, and what went wrong (a cache that cannot be written is no
    error of the extraction)."""
    if not store:
        return False, None
    from suture.oci.rootcache import RootCache

    try:
        return RootCache(Path(store[0])).store(str(store[1]), dest, tree), None
    except (OSError, ValueError) as exc:
        return False, str(exc)


class _Feed:
    """The caller's side of the pipe: a thread writes every layer into it. The thread
    closes the pipe if it fails or is cancelled; after a complete feed the pipe is
    handed over and :meth:`close` closes it."""

    def __init__(self, layers: list[Layer], fd: int, max_bytes: int | None = None,
                 store: tuple[Path, str] | None = None,
                 tree: dict[str, Any] | None = None) -> None:
        self.fd = fd
        self.max_bytes = max_bytes
        self.store = store
        self.tree = tree
        self.error: BaseException | None = None
        self.cancelled = False
        self._closed = False
        self._handed_over = False
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=_feed, args=(self, layers), daemon=True,
                                       name="suture-extract-feed")

    def finish(self, ok: bool) -> None:
        with self._lock:
            if ok and not self.cancelled:
                self._handed_over = True
            elif not self._closed:
                self._closed = True
                os.close(self.fd)

    def close(self) -> None:
        with self._lock:
            self.cancelled = True
            if self._handed_over and not self._closed:
                self._closed = True
                os.close(self.fd)


def _send(feed: _Feed, data: bytes | memoryview) -> None:
    if feed.cancelled:
        raise _Gone
    _write_all(feed.fd, len(data).to_bytes(_HEADER, "big"))
    if data:
        _write_all(feed.fd, data)


def _feed(feed: _Feed, layers: list[Layer]) -> None:
    ok = False
    try:
        store = [os.fspath(feed.store[0]), feed.store[1]] if feed.store else None
        _send(feed, json.dumps({"layers": [layer.digest for layer in layers],
                                "max_bytes": feed.max_bytes, "store": store,
                                "tree": feed.tree}, separators=(",", ":")).encode())
        for layer in layers:
            with layer.open_tar() as stream:
                while chunk := stream.read(_CHUNK):
                    _send(feed, chunk)
            _send(feed, b"")
        ok = True
    except _Gone:
        pass
    except BaseException as exc:  # handed to the waiting thread
        feed.error = exc
    finally:
        feed.finish(ok)


class Extraction:
    """``image``'s root filesystem being written into ``dest`` by a helper process.

    Starts at once. :meth:`wait` blocks until the tree is complete and returns its
    :class:`RootWriter` (for more writes; hashing on), or raises what went wrong
    (the layer reader's error, such as a digest mismatch, or a :class:`LayerError`).
    :meth:`release` hands the tree back to the helper for removal in the background.
    :meth:`close` stops the helper (always call it; it may be called at any time
    and more than once) and removes ``cleanup`` (``dest`` if not given), so that
    nothing is left when it returns. When no helper can be started, :meth:`wait`
    extracts in this process. The tree may take ``max_bytes`` (default:
    :func:`root_budget` of ``dest``'s directory); a layer that takes it further makes
    :meth:`wait` raise :class:`LayerError` naming that layer. With ``store``
    (a :class:`~suture.oci.rootcache.RootCache` directory and key), the complete tree
    is also kept in that cache before :meth:`wait` returns (:attr:`stored` says
    whether it was), so what the caller writes into it afterwards must never write a
    file in place (see :mod:`suture.oci.rootcache`). With ``skip`` and ``tree``,
    ``dest`` holds the root of the first ``skip`` layers already (``tree``: its
    mirror) and only the layers above are applied to it (never writing a file of it
    in place: what they replace is renamed or unlinked).
    """

    def __init__(self, image: Image, dest: Path, *, cleanup: Path | None = None,
                 max_bytes: int | None = None, store: tuple[Path, str] | None = None,
                 skip: int = 0, tree: dict[str, Any] | None = None) -> None:
        self.image = image
        self.dest = dest
        self.cleanup = cleanup or dest
        self.store = store
        self.skip = skip
        self.tree = tree
        self.stored = False
        self.max_bytes = root_budget(dest.parent) if max_bytes is None else max_bytes
        self._writer: RootWriter | None = None
        self._released = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._feed: _Feed | None = None
        read_fd, write_fd = os.pipe()
        try:
            self._proc = subprocess.Popen(
                _helper_command(dest, self.cleanup), stdin=read_fd, stdout=subprocess.PIPE,
                start_new_session=True)
        except OSError:
            os.close(write_fd)
            return
        finally:
            os.close(read_fd)
        _grow_pipe(write_fd)
        feed = _Feed(list(image.layers)[skip:], write_fd, self.max_bytes, store, tree)
        try:
            feed.thread.start()
        except RuntimeError:  # no thread to be had: extract in wait() instead
            os.close(write_fd)
            self._proc.kill()
            self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None
            return
        self._feed = feed

    def wait(self) -> RootWriter:
        if self._writer is not None:
            return self._writer
        if self._proc is None or self._feed is None:
            self._writer = extract_image(self.image, self.dest, hashing=True,
                                         max_bytes=self.max_bytes, skip=self.skip,
                                         tree=self.tree)
            store = [self.store[0], self.store[1]] if self.store else None
            self.stored, why = _store(store, self.dest, self._writer.export())
            if why is not None:
                log.warning("the root of this image is not kept in the cache: %s", why)
            return self._writer
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if self._feed.error is not None:
            raise self._feed.error
        try:
            answer = json.loads(line) if line else {}
        except ValueError:
            answer = {}
        if "error" in answer:
            raise LayerError(str(answer["error"]))
        if "tree" not in answer:
            self._feed.thread.join(5)
            if self._feed.error is not None:
                raise self._feed.error
            code = self._proc.poll()
            raise LayerError(f"extracting the image into {self.dest} failed (helper "
                             f"{'exited with ' + str(code) if code is not None else 'stopped'})")
        self.stored = bool(answer.get("stored"))
        if answer.get("not_stored"):
            log.warning("the root of this image is not kept in the cache: %s",
                        answer["not_stored"])
        # What the caller's writes replace goes beside the root, to be removed with it.
        trash = self.cleanup if self.cleanup in self.dest.parents else None
        self._writer = RootWriter(self.dest, hashing=True, tree=answer["tree"], trash=trash)
        return self._writer

    def release(self) -> None:
        """Done with the tree: the helper starts removing it, in the background (after
        a successful :meth:`wait`; else nothing happens). :meth:`close` waits for that."""
        if self._feed is not None and self._writer is not None:
            self._released = True
            self._feed.close()

    def close(self) -> None:
        if self._feed is not None:
            self._feed.close()
        if self._proc is not None:
            if self._released and self._proc.poll() is None:
                try:
                    self._proc.wait(RELEASE_TIMEOUT)
                except subprocess.TimeoutExpired:
                    log.warning("the helper did not remove %s in %g s; removing it here",
                                self.cleanup, RELEASE_TIMEOUT)
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
        remove_tree(self.cleanup)


def _helper_command(dest: Path, cleanup: Path) -> list[str]:
    """The helper: this interpreter, importing suture from where this process did
    (``-P``: the working directory is not searched)."""
    here = Path(__file__).resolve().parents[2]
    code = (f"import sys; sys.path.insert(0, {os.fspath(here)!r}); "
            "from suture.oci.extract import _serve; "
            f"sys.exit(_serve(*map(__import__('pathlib').Path, sys.argv[1:3])))")
    if not sys.executable:
        raise OSError("no interpreter to run the extraction helper")
    return [sys.executable, "-P", "-c", code, os.fspath(dest), os.fspath(cleanup)]


def _grow_pipe(fd: int) -> None:
    """A 1 MiB pipe when the system allows it: fewer switches between the processes."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _CHUNK)
    except (OSError, ImportError):
        pass
