"""Materialising an image's root filesystem in a directory, safely.

Layers are applied bottom-up: whiteouts delete, opaque markers empty a directory
of what lower layers put there, entries are written. Every path is resolved
inside ``dest`` the way a chroot would (symlinks followed but clamped at the
root), so no entry, link or whiteout can reach outside it. Device nodes are
skipped (they cannot be trusted and are not needed to run scripts); ownership is
applied only when running as root.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
from pathlib import Path

from suture.errors import LayerError
from suture.oci.fs import normalize, resolve_links
from suture.oci.image import Image, Layer
from suture.oci.layer import OPAQUE, WHITEOUT_PREFIX


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


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _empty_dir(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            _remove(child)


def _apply_layer(layer: Layer, root: Path, as_root: bool) -> None:
    digest = layer.digest
    # An opaque marker empties its directory of what lower layers put there; what this
    # layer wrote before the marker (tar order is free) is kept.
    written: set[str] = set()
    try:
        with layer.open_tar() as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                path = normalize(member.name, layer=digest)
                if not path:
                    continue
                parent, _, base = path.rpartition("/")
                if base == OPAQUE:
                    target_dir = resolve_in_root(root, parent, follow_last=True)
                    if target_dir.is_dir():
                        for child in target_dir.iterdir():
                            rel = f"{parent}/{child.name}" if parent else child.name
                            if rel not in written:
                                _remove(child)
                    continue
                if base.startswith(WHITEOUT_PREFIX):
                    victim = f"{parent}/{base[len(WHITEOUT_PREFIX):]}" if parent else \
                        base[len(WHITEOUT_PREFIX):]
                    target = resolve_in_root(root, normalize(victim, layer=digest))
                    if target.exists() or target.is_symlink():
                        _remove(target)
                    continue
                written.add(path)
                _write_member(tar, member, path, root, as_root, digest)
    except tarfile.TarError as exc:
        raise LayerError(f"unreadable tar: {exc}", layer=digest) from None
    except EOFError:
        raise LayerError("truncated tar stream", layer=digest) from None


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: str, root: Path,
                  as_root: bool, digest: str) -> None:
    target = resolve_in_root(root, path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if member.isdir():
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            _remove(target)
        target.mkdir(exist_ok=True)
    else:
        if target.is_symlink() or target.exists():
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        if member.isfile():
            fobj = tar.extractfile(member)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                if fobj is not None:
                    shutil.copyfileobj(fobj, out, 1 << 20)
        elif member.issym():
            os.symlink(member.linkname, target)
            if as_root:
                os.lchown(target, member.uid, member.gid)
            return
        elif member.islnk():
            source = resolve_in_root(root, normalize(member.linkname, layer=digest))
            if not source.exists():
                raise LayerError(f"hard link {path!r} to missing {member.linkname!r}",
                                 layer=digest, path=path)
            os.link(source, target, follow_symlinks=False)
            return
        elif member.isfifo():
            os.mkfifo(target, 0o600)
        else:
            return  # device nodes are not materialised
    if as_root:
        os.lchown(target, member.uid, member.gid)
    try:
        os.chmod(target, stat.S_IMODE(member.mode), follow_symlinks=False)
    except NotImplementedError:  # pragma: no cover - platforms without lchmod
        os.chmod(target, stat.S_IMODE(member.mode))
    os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)


def extract_image(image: Image, dest: Path) -> None:
    """Write ``image``'s merged root filesystem into ``dest`` (created if missing).

    ``dest`` must be empty or absent. Directory times are not preserved.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise LayerError(f"{dest} is not empty")
    as_root = os.geteuid() == 0
    for layer in image.layers:
        try:
            _apply_layer(layer, dest, as_root)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise LayerError(f"no space left extracting into {dest}") from None
            raise LayerError(f"cannot extract: {exc}", layer=layer.digest) from None
