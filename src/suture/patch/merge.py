"""Merging layer entry lists: a later list wins, path by path.

Re-patching rebuilds one patch layer from the previous patch layer's entries
and the new update's entries; maintainer-script effects are merged over the
unpacked packages the same way.
"""

from __future__ import annotations

import tarfile

from suture.oci.fs import normalize
from suture.oci.image import Layer
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
)

_KIND = {tarfile.REGTYPE: FILE, tarfile.AREGTYPE: FILE, tarfile.DIRTYPE: DIR,
         tarfile.SYMTYPE: SYMLINK, tarfile.LNKTYPE: HARDLINK, tarfile.CHRTYPE: CHAR,
         tarfile.BLKTYPE: BLOCK, tarfile.FIFOTYPE: FIFO}

MAX_PATCH_LAYER = 2 << 30


def read_layer_entries(layer: Layer) -> list[Entry]:
    """Every entry of a (patch) layer, file contents in memory (bounded)."""
    out: list[Entry] = []
    total = 0
    with layer.open_tar() as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            path = normalize(member.name, layer=layer.digest)
            kind = _KIND.get(member.type)
            if not path or kind is None:
                continue
            data = None
            if kind == FILE:
                total += member.size
                if total > MAX_PATCH_LAYER:
                    from suture.errors import LayerError

                    raise LayerError("previous patch layer is too large to rebuild",
                                     layer=layer.digest)
                fobj = tar.extractfile(member)
                data = fobj.read() if fobj is not None else b""
            xattrs = {k[len("SCHILY.xattr."):]: v.encode("utf-8", "surrogateescape")
                      for k, v in member.pax_headers.items() if k.startswith("SCHILY.xattr.")}
            linkname = normalize(member.linkname) if kind == HARDLINK else member.linkname
            out.append(Entry(path, kind, member.mode, member.uid, member.gid,
                             int(member.mtime), member.size if kind == FILE else 0,
                             linkname, data, xattrs, member.devmajor, member.devminor))
    return out


def _whiteout_target(path: str) -> str | None:
    parent, _, base = path.rpartition("/")
    if base.startswith(WHITEOUT_PREFIX) and base != OPAQUE:
        name = base[len(WHITEOUT_PREFIX):]
        return f"{parent}/{name}" if parent else name
    return None


def merge_entries(lower: list[Entry], upper: list[Entry]) -> list[Entry]:
    """``upper`` over ``lower`` as one layer: same path, upper wins; an upper whiteout
    drops the lower entry and everything under it (and stays, to hide older layers);
    an upper entry at a path that lower whited out removes that whiteout."""
    merged: dict[str, Entry] = {e.path.strip("/"): e for e in lower}
    for entry in upper:
        path = entry.path.strip("/")
        target = _whiteout_target(path)
        if target is not None:
            prefix = target + "/"
            for key in [k for k in merged if k == target or k.startswith(prefix)]:
                del merged[key]
        else:
            parent, _, base = path.rpartition("/")
            hidden = f"{parent}/{WHITEOUT_PREFIX}{base}" if parent else WHITEOUT_PREFIX + base
            merged.pop(hidden, None)
        merged[path] = entry
    return list(merged.values())
