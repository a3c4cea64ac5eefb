"""Reading files out of an image's layers without extracting it.

Layers are read top-down as streams; whiteouts (``.wh.NAME``) and opaque
directories (``.wh..wh..opq``) of upper layers hide what lower layers hold, so
the result is the merged view a container would see. Only the files asked for
are kept in memory (each under a ceiling); symlinks are resolved inside the
image root, never on the host.

Every entry is checked while it streams past: a name with ``..`` components, a
hard link outside the root, or an entry written through a symlink that the same
layer created (the classic tar escape) raises :class:`LayerError`.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from suture.errors import LayerError, NotFound
from suture.oci.image import Image, Layer
from suture.oci.layer import FILE, HARDLINK, OPAQUE, WHITEOUT_PREFIX, Entry

MAX_FILE = 64 << 20
MAX_SYMLINK_HOPS = 40

_KINDS = {
    tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.CONTTYPE: "file",
    tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo",
}


@dataclass(frozen=True)
class FileEntry:
    """A path of the merged view, as the top-most layer that has it says."""

    path: str
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    linkname: str
    layer: str  # digest of the layer the entry comes from
    data: bytes | None = None  # regular files that were asked for, under the ceiling


def member_entry(tar: tarfile.TarFile, member: tarfile.TarInfo, *,
                 layer: str | None = None) -> Entry | None:
    """A tar member as an :class:`Entry`, regular file contents read into memory.

    ``None`` for what is not a filesystem entry (the root ``./`` itself); unsafe
    names raise :class:`LayerError`. The caller bounds sizes.
    """
    path = normalize(member.name, layer=layer)
    kind = _KINDS.get(member.type)
    if not path or kind is None:
        return None
    data = None
    if kind == FILE:
        fobj = tar.extractfile(member)
        data = fobj.read() if fobj is not None else b""
    xattrs = {k[len("SCHILY.xattr."):]: v.encode("utf-8", "surrogateescape")
              for k, v in member.pax_headers.items() if k.startswith("SCHILY.xattr.")}
    linkname = normalize(member.linkname, layer=layer) if kind == HARDLINK else member.linkname
    return Entry(path, kind, member.mode, member.uid, member.gid, int(member.mtime),
                 member.size if kind == FILE else 0, linkname, data, xattrs,
                 member.devmajor, member.devminor)


def normalize(name: str, *, layer: str | None = None) -> str:
    """A tar member name as a root-relative path; ``..`` components are refused."""
    stripped = name.lstrip("/")
    while stripped.startswith("./"):
        stripped = stripped[2:].lstrip("/")
    parts = [p for p in stripped.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerError(f"unsafe path {name!r} (contains '..')", layer=layer, path=name)
    return "/".join(parts)


def _ancestors(path: str) -> Iterable[str]:
    parts = path.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def resolve_links(path: str, readlink: Callable[[str], str | None], *,
                  follow_last: bool = True) -> str:
    """Resolve ``path`` inside a root where ``readlink(p)`` gives the target of the symlink
    at root-relative ``p`` (``None`` when ``p`` is not one).

    Absolute targets start again at the root; ``..`` never climbs above it (as in a
    chroot). The last component is followed only with ``follow_last``.
    """
    todo = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        target = readlink("/".join([*done, part])) if (todo or follow_last) else None
        if target is None:
            done.append(part)
            continue
        hops += 1
        if hops > MAX_SYMLINK_HOPS:
            raise LayerError(f"too many levels of symbolic links resolving {path!r}", path=path)
        if target.startswith("/"):
            done = []
        todo = [p for p in target.split("/") if p not in ("", ".")] + todo
    return "/".join(done)


def resolve(path: str, symlinks: Mapping[str, str]) -> str:
    """Resolve ``path`` through ``symlinks`` (path -> target) inside the root."""
    return resolve_links(path, symlinks.get)


class _Scan:
    """One top-down pass over the layers, collecting wanted paths and all symlinks."""

    def __init__(self, wanted: Callable[[str], bool], max_file: int,
                 with_data: Callable[[str], bool] | None = None,
                 on_data: Callable[[str, bytes], None] | None = None) -> None:
        self.wanted = wanted
        self.with_data = with_data or wanted
        self.on_data = on_data
        self.max_file = max_file
        self.found: dict[str, FileEntry] = {}
        self.symlinks: dict[str, str] = {}
        self.claimed: set[str] = set()  # paths any upper layer has (file or dir)
        self.nondir: set[str] = set()  # claimed paths that are not directories
        self.deleted: set[str] = set()  # whiteouts from upper layers
        self.opaque: set[str] = set()  # opaque dirs from upper layers

    def _hidden(self, path: str) -> bool:
        if path in self.deleted:
            return True
        for anc in _ancestors(path):
            if anc in self.deleted or anc in self.opaque:
                return True
            # A non-directory in an upper layer hides everything below it here.
            if anc in self.nondir:
                return True
        return False

    def layer(self, layer: Layer) -> None:
        new_deleted: set[str] = set()
        new_opaque: set[str] = set()
        own_symlinks: set[str] = set()
        digest = layer.digest
        try:
            with layer.open_tar() as stream, tarfile.open(fileobj=stream, mode="r|",
                                                           errorlevel=2) as tar:
                for member in tar:
                    path = normalize(member.name, layer=digest)
                    if not path:
                        continue
                    for anc in _ancestors(path):
                        if anc in own_symlinks:
                            raise LayerError(
                                f"entry {member.name!r} is written through the symlink {anc!r}",
                                layer=digest, path=member.name)
                    base = posixpath.basename(path)
                    parent = posixpath.dirname(path)
                    if base == OPAQUE:
                        new_opaque.add(parent)
                        continue
                    if base.startswith(WHITEOUT_PREFIX):
                        target = posixpath.join(parent, base[len(WHITEOUT_PREFIX):])
                        new_deleted.add(normalize(target, layer=digest))
                        continue
                    kind = _KINDS.get(member.type)
                    if kind is None:
                        continue  # PAX/GNU extension members are consumed by tarfile
                    if kind == "hardlink":
                        member_link = normalize(member.linkname, layer=digest)
                    else:
                        member_link = member.linkname
                    if kind == "symlink":
                        own_symlinks.add(path)
                    if path in self.claimed or self._hidden(path):
                        continue
                    self.claimed.add(path)
                    if kind != "dir":
                        self.nondir.add(path)
                    if kind == "symlink":
                        self.symlinks[path] = member.linkname
                    if kind == "symlink" or self.wanted(path):
                        data = None
                        if kind == "file" and self.with_data(path):
                            if member.size > self.max_file:
                                raise LayerError(f"{path} is {member.size} bytes, over the "
                                                 f"{self.max_file} byte limit", layer=digest)
                            fobj = tar.extractfile(member)
                            data = fobj.read() if fobj is not None else b""
                            if self.on_data is not None:
                                self.on_data(path, data)
                        self.found[path] = FileEntry(
                            path, kind, member.mode, member.uid, member.gid, member.size,
                            int(member.mtime), member_link, digest, data)
        except tarfile.TarError as exc:
            raise LayerError(f"unreadable tar: {exc}", layer=digest) from None
        except EOFError:
            raise LayerError("truncated tar stream", layer=digest) from None
        self.deleted |= new_deleted
        self.opaque |= new_opaque


def scan_files(image: Image, wanted: Callable[[str], bool], *,
               max_file: int = MAX_FILE, with_data: Callable[[str], bool] | None = None,
               ) -> tuple[dict[str, FileEntry], dict[str, str]]:
    """One pass over ``image``'s layers: the merged entries of wanted paths, and all symlinks.

    Paths are root-relative (``etc/os-release``). Symlinked directories are not
    followed here: see :func:`read_files`. Regular files get their contents when
    ``with_data`` (default: ``wanted``) says so.
    """
    scan = _scan(image, wanted, max_file, with_data)
    return {p: e for p, e in scan.found.items() if wanted(p)}, scan.symlinks


def _scan(image: Image, wanted: Callable[[str], bool], max_file: int,
          with_data: Callable[[str], bool] | None = None,
          on_data: Callable[[str, bytes], None] | None = None) -> _Scan:
    scan = _Scan(wanted, max_file, with_data, on_data)
    for layer in reversed(image.layers):
        scan.layer(layer)
    return scan


def read_files(image: Image, paths: Iterable[str], *, prefixes: Iterable[str] = (),
               max_file: int = MAX_FILE) -> dict[str, FileEntry]:
    """The merged-view entries of ``paths`` and of everything under ``prefixes``.

    Keys are the paths as asked (root-relative; for prefixes, the path found
    under the asked prefix). Symlinks, including symlinked directories such as a
    merged ``/lib -> usr/lib``, are followed inside the image; hard links give
    their target's data. Missing paths are simply absent from the result.
    Each extra round of resolution costs one more pass over the layers.
    """
    asked = [normalize(p) for p in paths]
    asked_prefixes = [normalize(p).rstrip("/") + "/" for p in prefixes]
    result: dict[str, FileEntry] = {}
    symlinks: dict[str, str] | None = None
    # Map of real path -> the asked names it answers.
    pending: dict[str, list[str]] = {p: [p] for p in asked}
    pending_prefixes: dict[str, str] = {p: p for p in asked_prefixes}
    known_absent: set[str] = set()  # paths a pass looked for and did not find
    existing: set[str] = set()  # every path of the merged view, from the first pass
    for _round in range(MAX_SYMLINK_HOPS):
        if not pending and not pending_prefixes:
            break
        real_paths = set(pending)
        real_prefixes = tuple(pending_prefixes)

        def wanted(path: str, real_paths: set[str] = real_paths,
                   real_prefixes: tuple[str, ...] = real_prefixes) -> bool:
            return path in real_paths or path.startswith(real_prefixes)

        scan = _scan(image, wanted, max_file)
        found = {p: e for p, e in scan.found.items() if wanted(p)}
        if symlinks is None:
            symlinks = scan.symlinks
            # Every path of the merged view: a target outside it needs no second pass.
            existing = scan.claimed
        next_pending: dict[str, list[str]] = {}
        next_prefixes: dict[str, str] = {}
        for real, names in pending.items():
            target = resolve(real, symlinks)
            entry = found.get(target)
            if entry is not None and entry.kind == "hardlink":
                target = resolve(entry.linkname, symlinks)
                entry = found.get(target)
            if entry is None and target != real and target not in known_absent and (
                    target in existing):
                # Resolved somewhere this pass did not look: one more pass.
                next_pending.setdefault(target, []).extend(names)
                continue
            if entry is not None and entry.kind not in ("symlink", "hardlink"):
                for name in names:
                    result[name] = entry
            elif entry is not None and target not in known_absent:
                next_pending.setdefault(target, []).extend(names)
        known_absent |= {p for p in real_paths if p not in found}
        for real_prefix, asked_prefix in pending_prefixes.items():
            target = resolve(real_prefix.rstrip("/"), symlinks) + "/"
            if target != real_prefix:
                # A directory may exist only implicitly, through what lies under it.
                if target.rstrip("/") in existing or any(p.startswith(target)
                                                         for p in existing):
                    next_prefixes[target] = asked_prefix
                continue
            for path, entry in found.items():
                if path.startswith(real_prefix) and entry.kind != "symlink":
                    result[asked_prefix + path[len(real_prefix):]] = entry
        pending, pending_prefixes = next_pending, next_prefixes
    return result


def read_tree(image: Image, with_data: Callable[[str], bool], *,
              max_file: int = MAX_FILE,
              on_data: Callable[[str, bytes], None] | None = None) -> dict[str, FileEntry]:
    """Every path of the merged view (metadata), with the contents of regular files
    ``with_data`` selects: one pass over the layers, nothing resolved. ``on_data`` hears
    each of those files as soon as it is read, with the contents the merged view has
    (the pass goes from the top layer down and skips what an upper layer hid)."""
    return _scan(image, lambda _path: True, max_file, with_data, on_data).found


def read_file(image: Image, path: str, *, max_file: int = MAX_FILE) -> bytes:
    """The contents of one regular file of the merged view; :class:`NotFound` if absent."""
    entry = read_files(image, [path], max_file=max_file).get(normalize(path))
    if entry is None or entry.data is None:
        raise NotFound(f"{path} not found in image {image.digest}")
    return entry.data
