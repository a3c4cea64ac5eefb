"""Turning root filesystem tars into layers: whole, as a diff, or distroless-style.

Used to build test images from real Debian root filesystems (made by
mmdebstrap): a second rootfs with more packages becomes an upper layer holding
only what changed (with whiteouts for what went away), and a rootfs can be
recast as a distroless image whose dpkg database is ``status.d/``.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from suture.oci.fs import member_entry
from suture.oci.layer import DIR, HARDLINK, Entry


@dataclass(frozen=True)
class _Item:
    entry: Entry
    digest: str  # content hash for files, "" otherwise
    data: bytes | None = None


def _items(tar_path: Path) -> dict[str, _Item]:
    """Every entry of a rootfs tar with a content hash (file data held only for files)."""
    out: dict[str, _Item] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            entry = member_entry(tar, member)
            if entry is None:
                continue
            data = entry.data if isinstance(entry.data, bytes) else None
            digest = hashlib.sha256(data).hexdigest() if data is not None else ""
            out[entry.path] = _Item(entry, digest, data)
    return out


def _same(a: _Item, b: _Item) -> bool:
    x, y = a.entry, b.entry
    return (x.kind, x.mode, x.uid, x.gid, x.linkname, a.digest, x.xattrs, x.devmajor,
            x.devminor) == (y.kind, y.mode, y.uid, y.gid, y.linkname, b.digest, y.xattrs,
                            y.devmajor, y.devminor)


def diff_entries(lower: Path, upper: Path) -> list[Entry]:
    """Entries of a layer that turns rootfs ``lower`` into rootfs ``upper``.

    Changed and new paths are included whole (with their parent directories);
    paths gone from ``upper`` get whiteouts (only the top-most gone path of a tree).
    A hard link is included when its target is.
    """
    low, up = _items(lower), _items(upper)
    changed = {p for p, item in up.items() if p not in low or not _same(low[p], item)}
    for path, item in up.items():
        if item.entry.kind == HARDLINK and item.entry.linkname in changed:
            changed.add(path)
    needed = set(changed)
    for path in changed:
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in up:
                needed.add(parent)
    entries = [up[p].entry for p in sorted(needed)]
    gone = sorted(p for p in low if p not in up)
    gone_set = set(gone)
    for path in gone:
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if parent and parent in gone_set:
            continue
        entries.append(Entry.whiteout(path))
    return entries


def tar_entries(tar_path: Path) -> Iterator[Entry]:
    for item in _items(tar_path).values():
        yield item.entry


def distroless_entries(rootfs: Path, *, drop: tuple[str, ...] = ("var/lib/dpkg/", "var/lib/apt",
                                                                    "etc/apt/", "usr/bin/apt",
                                                                    "usr/bin/dpkg")
                       ) -> list[Entry]:
    """``rootfs`` recast the way distroless images are: ``var/lib/dpkg/status.d/<pkg>``
    stanzas (without Status) and ``<pkg>.md5sums``, no ``status``, no apt and no dpkg.
    """
    items = _items(rootfs)
    status = items["var/lib/dpkg/status"].data or b""
    entries = [i.entry for p, i in items.items() if not p.startswith(drop)]
    entries.append(Entry("var/lib/dpkg/status.d", DIR, 0o755))
    for block in status.decode().strip().split("\n\n"):
        lines = block.split("\n")
        name = lines[0].split(":", 1)[1].strip()
        arch = next((ln.split(":", 1)[1].strip() for ln in lines
                     if ln.startswith("Architecture:")), "all")
        kept = "\n".join(ln for ln in lines if not ln.startswith("Status:")) + "\n"
        entries.append(Entry.file(f"var/lib/dpkg/status.d/{name}", kept.encode()))
        for md5_name in (f"var/lib/dpkg/info/{name}:{arch}.md5sums",
                         f"var/lib/dpkg/info/{name}.md5sums"):
            md5 = items.get(md5_name)
            if md5 is not None and md5.data is not None:
                entries.append(Entry.file(f"var/lib/dpkg/status.d/{name}.md5sums", md5.data))
                break
    return entries


def tar_bytes(entries: list[Entry]) -> bytes:
    from suture.oci.layer import write_tar

    buf = io.BytesIO()
    write_tar(entries, buf)
    return buf.getvalue()
