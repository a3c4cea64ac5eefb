"""Merging layer entry lists: a later list wins, path by path.

Re-patching rebuilds one patch layer from the previous patch layer's entries
and the new update's entries; maintainer-script effects are merged over the
unpacked packages the same way.
"""

from __future__ import annotations

import tarfile

from suture.errors import LayerError
from suture.oci.fs import member_entry
from suture.oci.image import Layer
from suture.oci.layer import (
    OPAQUE,
    WHITEOUT_PREFIX,
    Entry,
)

MAX_PATCH_LAYER = 2 << 30


def read_layer_entries(layer: Layer) -> list[Entry]:
    """Every entry of a (patch) layer, file contents in memory (bounded)."""
    out: list[Entry] = []
    total = 0
    with layer.open_tar() as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            total += member.size if member.isfile() else 0
            if total > MAX_PATCH_LAYER:
                raise LayerError("previous patch layer is too large to rebuild",
                                 layer=layer.digest)
            entry = member_entry(tar, member, layer=layer.digest)
            if entry is not None:
                out.append(entry)
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
