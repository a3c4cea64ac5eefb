"""``suture generate``: the patch as a Docker build context, as ``copa generate`` writes it.

The context is a tar holding a ``Dockerfile`` and the files the patch adds or changes
under ``patch/``. ``docker build`` of it (``FROM`` the source image, which the builder
must have) gives an image whose file tree is the one ``suture patch`` writes:

* what the patch adds or changes (regular files, symlinks, directories; hard links
  become regular files) is copied with ``COPY patch/ /``, modes kept; Docker's COPY
  makes everything root's, so an entry owned by someone else, or under a directory
  owned by someone else, gets its own ``COPY --chown=UID:GID files/N /path``;
* what the patch deletes (a whiteout or an opaque directory in the patch layer, or a
  path whose kind changes, a directory becoming a file) is removed first with an
  exec-form ``RUN ["/bin/rm", "-rf", "--", ...]``: no shell is needed, only an ``rm``
  (or busybox) of the source image. ``COPY`` cannot delete, so copa's context loses
  deletions silently; here, an image with no ``rm`` is refused, naming how many paths
  would be lost, unless ``allow_lost_deletions`` (copa's behaviour, on request).

The change is computed between the merged file trees of the source image and the
patched one (so re-patching an image suture patched before, whose earlier patch
layer is replaced, is expressed too). Metadata compared: kind, mode, owner, link
target, and the layer an entry comes from (a file from a new layer is copied even if
its bytes did not change). The tar is deterministic: sorted, mtime 0, root-owned
entries in the tar (ownership is in the Dockerfile). Extended attributes of changed
files (file capabilities) are read from the layers they come from and written as the
context tar's ``SCHILY.xattr`` records (GNU tar restores them); Docker 20.10's classic
builder drops them on the way in, so a capability set by an upgrade is in the context
but not in that builder's image.
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from suture.errors import SutureError, UsageError
from suture.inspect import select_images
from suture.oci.fs import FileEntry, normalize, read_tree
from suture.oci.image import Image
from suture.oci.model import Platform
from suture.patch import patch_artifact
from suture.patch.model import PatchOptions, PatchResult
from suture.transports import open_artifact
from suture.transports.reference import Reference

__all__ = ["BuildContext", "ContextError", "build_context", "generate_context", "write_context"]

RM_CANDIDATES = (("bin/rm",), ("usr/bin/rm",), ("bin/busybox", "rm"),
                 ("usr/bin/busybox", "rm"))
LABEL = "sh.copa.image.patched"
_ROOT = (0, 0)


class ContextError(SutureError):
    """A patch that a Docker build context cannot express."""


@dataclass
class BuildContext:
    """The Dockerfile and the files of a build context."""

    dockerfile: str
    files: dict[str, FileEntry] = field(default_factory=dict)  # context path -> entry
    deletions: tuple[str, ...] = ()
    copied: int = 0
    xattrs: dict[str, dict[str, str]] = field(default_factory=dict)  # context path -> pax

    @property
    def empty(self) -> bool:
        return not self.copied and not self.deletions


def _same(a: FileEntry, b: FileEntry) -> bool:
    return (a.kind, a.mode, a.uid, a.gid, a.linkname, a.layer) == (
        b.kind, b.mode, b.uid, b.gid, b.linkname, b.layer)


def _ancestors(path: str) -> Iterable[str]:
    parent = posixpath.dirname(path)
    while parent:
        yield parent
        parent = posixpath.dirname(parent)


def _top_most(paths: Iterable[str]) -> list[str]:
    """``paths`` without those under another of them (``rm -rf`` takes the top)."""
    chosen: list[str] = []
    for path in sorted(paths):
        if not any(path.startswith(top + "/") for top in chosen):
            chosen.append(path)
    return chosen


def _rm_command(tree: dict[str, FileEntry]) -> list[str] | None:
    for candidate in RM_CANDIDATES:
        entry = tree.get(candidate[0])
        if entry is not None and entry.kind in ("file", "symlink", "hardlink") and \
                entry.mode & 0o111:
            return ["/" + candidate[0], *candidate[1:]]
    return None


def _dockerfile_string(text: str) -> str:
    return json.dumps(text)


def build_context(source: Image, patched: Image, from_ref: str, *, created: str,
                  allow_lost_deletions: bool = False) -> BuildContext:
    """The build context turning ``source`` (named ``from_ref`` in ``FROM``) into
    ``patched``'s file tree. ``created`` is the label's RFC 3339 time."""
    before = read_tree(source, lambda _p: False)
    after_meta = read_tree(patched, lambda _p: False)
    changed = [p for p, e in after_meta.items()
               if p not in before or not _same(before[p], e)]
    kind_changed = {p for p in changed if p in before and
                    (before[p].kind == "dir") != (after_meta[p].kind == "dir")}
    gone = [p for p in before if p not in after_meta]
    deletions = _top_most([*gone, *kind_changed])
    wanted = set(changed)
    for p in changed:  # hard links are written as the files they link to
        if after_meta[p].kind == "hardlink":
            wanted.add(after_meta[p].linkname)
    after = read_tree(patched, lambda p: p in wanted)
    xattrs = _xattrs(patched, {p: after[p].layer for p in changed})

    lines = [f"FROM {from_ref}"]
    if deletions:
        rm = _rm_command(before)
        if rm is None:
            if not allow_lost_deletions:
                raise ContextError(
                    f"the patch deletes {len(deletions)} path(s) (first: /{deletions[0]}) "
                    "and the image has no rm to run: a Docker build context cannot "
                    "express that", hint="use suture patch, or --allow-lost-deletions to "
                                         "keep them as copa does")
        else:
            args = [*rm, "-rf", "--", *("/" + d for d in deletions)]
            lines.append("RUN [" + ", ".join(_dockerfile_string(a) for a in args) + "]")
    context = BuildContext("", deletions=tuple(deletions) if deletions else ())
    bulk: dict[str, FileEntry] = {}
    singles: list[tuple[str, FileEntry]] = []
    for path in sorted(changed):
        entry = after[path]
        owners = {(entry.uid, entry.gid)} | {
            (after[a].uid, after[a].gid) for a in _ancestors(path) if a in after}
        if owners == {_ROOT}:
            bulk[path] = entry
        else:
            singles.append((path, entry))
    for path in list(bulk):  # the directories on the way, as the patched image has them
        for ancestor in _ancestors(path):
            if ancestor not in bulk and ancestor in after:
                bulk[ancestor] = after[ancestor]
    for path, entry in bulk.items():
        context.files[f"patch/{path}"] = _materialized(entry, after)
    context.xattrs = {f"patch/{p}": xattrs[p] for p in bulk if p in xattrs}
    if bulk or not singles:
        lines.append("COPY patch/ /")
        context.files.setdefault("patch", _dir_entry("patch"))
    for n, (path, entry) in enumerate(singles):
        name = f"files/{n}"
        context.files[name] = _materialized(entry, after)
        if path in xattrs:
            context.xattrs[name] = xattrs[path]
        lines.append(f"COPY --chown={entry.uid}:{entry.gid} {name} /{path}")
    lines.append(f"LABEL {LABEL}={_dockerfile_string(created)}")
    context.dockerfile = "\n".join(lines) + "\n"
    context.copied = len(changed)
    return context


def _xattrs(image: Image, layer_of: dict[str, str]) -> dict[str, dict[str, str]]:
    """The ``SCHILY.xattr.*`` pax records of each path in ``layer_of`` (path -> digest of
    the layer its entry comes from), read from those layers only."""
    wanted: dict[str, set[str]] = {}
    for path, digest in layer_of.items():
        wanted.setdefault(digest, set()).add(path)
    found: dict[str, dict[str, str]] = {}
    for layer in image.layers:
        paths = wanted.get(layer.descriptor.digest)
        if not paths:
            continue
        with layer.open_tar() as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                path = normalize(member.name, layer=layer.descriptor.digest)
                records = {k: v for k, v in member.pax_headers.items()
                           if k.startswith("SCHILY.xattr.")}
                if path in paths and records:
                    found[path] = records
    return found


def _dir_entry(path: str) -> FileEntry:
    return FileEntry(path, "dir", 0o755, 0, 0, 0, 0, "", "")


def _materialized(entry: FileEntry, tree: dict[str, FileEntry]) -> FileEntry:
    if entry.kind != "hardlink":
        return entry
    target = tree.get(entry.linkname)
    if target is None or target.data is None:
        raise ContextError(f"/{entry.path} links to /{entry.linkname}, which cannot be read")
    return FileEntry(entry.path, "file", target.mode, target.uid, target.gid,
                     len(target.data), target.mtime, "", target.layer, target.data)


def write_context(context: BuildContext, out: BinaryIO) -> None:
    """The context as an uncompressed tar (deterministic) to ``out`` (not closed)."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        dockerfile = context.dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size, info.mode = len(dockerfile), 0o644
        tar.addfile(info, io.BytesIO(dockerfile))
        names = set(context.files)
        for name in sorted(names, key=lambda n: n.split("/")):
            entry = context.files[name]
            for ancestor in _ancestors(name):  # a parent the context lacks: plain 0755
                if ancestor not in names:
                    names.add(ancestor)
                    tar.addfile(_tarinfo(ancestor, _dir_entry(ancestor)))
            info = _tarinfo(name, entry)
            info.pax_headers = dict(context.xattrs.get(name, {}))
            if entry.kind == "file":
                data = entry.data
                if data is None:
                    raise ContextError(f"/{entry.path}: contents not read")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)


def _tarinfo(name: str, entry: FileEntry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    kinds = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
             "fifo": tarfile.FIFOTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE}
    if entry.kind not in kinds:
        raise ContextError(f"/{entry.path}: a {entry.kind} cannot be put in a context")
    info.type = kinds[entry.kind]
    info.mode = entry.mode & 0o7777
    info.uid = info.gid = 0
    info.mtime = 0
    info.linkname = entry.linkname if entry.kind == "symlink" else ""
    return info


def generate_context(source: Reference, options: PatchOptions, from_ref: str, *,
                     created: str, allow_lost_deletions: bool = False
                     ) -> tuple[PatchResult, BuildContext | None]:
    """Patch ``source`` (one image: the only one, or the one ``options.platforms`` or
    the host's platform picks) in memory and return the result and its build context
    (``None`` when there is nothing to patch or a platform failed)."""
    artifact = open_artifact(source, options.transport)
    images = select_images(artifact, list(options.platforms) or None)
    if len(images) > 1:
        host = Platform("linux", _host_architecture())
        images = [im for im in images if im.platform is not None and
                  im.platform.normalized() == host.normalized()] or images[:1]
    image = images[0]
    options.cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="suture-", dir=options.workdir) as tmp:
        new, outcomes = patch_artifact(image, options, Path(tmp))
        result = PatchResult(str(source), image.digest, None, None, outcomes)
        if new is None or result.failed:
            return result, None
        assert isinstance(new, Image)
        context = build_context(image, new, from_ref, created=created,
                                allow_lost_deletions=allow_lost_deletions)
    result.target_digest = new.digest
    return result, context


def _host_architecture() -> str:
    import platform

    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
            "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(machine,
                                                                              machine)


def check_from(from_ref: str | None, default: str | None) -> str:
    """The ``FROM`` reference: ``from_ref`` when given, else the source's name."""
    ref = from_ref or default
    if not ref:
        raise UsageError("the source has no image name for FROM",
                         hint="name the image the builder has with --from NAME")
    return ref
