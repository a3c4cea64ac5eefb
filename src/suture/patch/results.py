"""What a patch run keeps in its cache directory besides packages and indexes, so
that patching the same image again is cheap: the image's merged view (``trees/``)
and each patch layer with what went into it (``results/``), and what engines derive
from verified inputs (``derived/``: the stanzas of the Packages indexes an image's
packages can reach, by the indexes' SHA-256 and the installed names).

**Trees.** :func:`read_tree` over an image's layers is a full pass over them
(decompressing and parsing every layer: ~0.8 s for a 75 MB bookworm image). Its
result depends only on the layers and on which files the engines read, so it is
kept by the layers' digests and suture's version; the next run of any image with
the same layers loads it (a few milliseconds) instead.

**Results.** A patch layer is a function of the source image (its manifest digest
names every layer and the config), the plan (each update's name and versions), the
packages' own bytes (the SHA-256 of each file fetched, verified as the repository
publishes it), and the few options that change
what is written (compression, timestamps, the sandbox and whether scripts could
run, whether a report drove the plan). For a key over exactly those, the layer
blob and what the run reported about it (vulnerabilities named by changelogs, the
scripts that ran or did not, notes) are kept. A run that finds its key reuses them
and skips unpacking, the maintainer scripts and compressing (the packages are
fetched first, from the cache when they are there); the plan
itself is always made afresh from the repositories, so a fix published since the
cached run gives another key and a real patch. (BuildKit keys copa's upgrade step
on the command line alone, so a warm copa keeps the old result.)

Every entry is written beside its place and renamed into it, so readers see whole
entries or none; two processes writing the same key leave one. A blob whose size or
SHA-256 is not the recorded one, or an entry that cannot be parsed, is a miss (and
is removed). The directory is bounded (:data:`RESULT_CACHE_BYTES`, oldest use
evicted first). The cache directory is trusted as the user's own, like the package
cache: its entries are not signed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suture import __version__
from suture.oci.fs import FileEntry
from suture.oci.layer import LayerInfo
from suture.plan import Plan

log = logging.getLogger(__name__)

FORMAT = 1
RESULT_CACHE_BYTES = 2 << 30  # patch layers kept, in all (least recently used evicted)
TREE_CACHE_BYTES = 256 << 20  # merged views kept, in all
DERIVED_CACHE_BYTES = 64 << 20  # other derived data (index cuts), in all


@functools.cache
def _code() -> str:
    """suture's version and a fingerprint of its modules as installed (name, size and
    mtime of each): a changed suture never reads what another one kept."""
    package = Path(__file__).resolve().parents[1]
    h = hashlib.sha256(__version__.encode())
    for path in sorted(package.rglob("*.py")):
        st = path.stat()
        h.update(f"{path.relative_to(package)} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _key(*parts: Any) -> str:
    text = json.dumps([FORMAT, _code(), *parts], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished directory ``tmp`` into place (a concurrent writer may have
    won: then ours is dropped)."""
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def _drop(where: Path, what: str, why: Exception) -> None:
    """Remove an entry that could not be read back (a miss, never an error)."""
    if where.exists():
        log.debug("dropping the cached %s %s: %s", what, where.name, why)
        shutil.rmtree(where, ignore_errors=True)


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def _evict(top: Path, limit: int, keep: Path | None = None) -> None:
    """Remove the least recently used entries of ``top`` (directories of files, or files)
    until it holds ``limit`` bytes or less (never ``keep``)."""
    entries: list[tuple[float, int, Path]] = []
    try:
        children = list(top.iterdir())
    except OSError:
        return
    for child in children:
        if child.name.startswith("."):
            continue
        try:
            size = (sum(f.stat().st_size for f in child.iterdir()) if child.is_dir()
                    else child.stat().st_size)
            entries.append((child.stat().st_mtime, size, child))
        except OSError:
            continue
    total = sum(size for _, size, _ in entries)
    for _mtime, size, child in sorted(entries):
        if total <= limit:
            break
        if child == keep:
            continue
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                child.unlink()
        total -= size


# ------------------------------------------------------------------------ trees

def tree_key(layer_digests: list[str]) -> str:
    return _key("tree", layer_digests)


def load_tree(cache_dir: Path, key: str) -> dict[str, FileEntry] | None:
    """The merged view kept under ``key``, or None."""
    where = cache_dir / "trees" / key
    try:
        index = json.loads((where / "index.json").read_text())
        data = (where / "data").read_bytes()
        if index.get("format") != FORMAT or len(data) != index["dataSize"]:
            raise ValueError("not this format")
        tree: dict[str, FileEntry] = {}
        for path, kind, mode, uid, gid, size, mtime, linkname, layer, at, length in \
                index["entries"]:
            tree[path] = FileEntry(path, kind, mode, uid, gid, size, mtime, linkname, layer,
                                   data[at:at + length] if at >= 0 else None)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _drop(where, "tree", exc)
        return None
    _touch(where)
    return tree


def store_tree(cache_dir: Path, key: str, tree: dict[str, FileEntry]) -> None:
    """Keep ``tree`` under ``key`` (best effort: a full disk only loses the cache)."""
    top = cache_dir / "trees"
    try:
        top.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=top))
        rows: list[list[Any]] = []
        offset = 0
        with (tmp / "data").open("wb") as out:
            for e in tree.values():
                at, length = -1, 0
                if e.data is not None:
                    at, length = offset, len(e.data)
                    out.write(e.data)
                    offset += length
                rows.append([e.path, e.kind, e.mode, e.uid, e.gid, e.size, e.mtime,
                             e.linkname, e.layer, at, length])
        (tmp / "index.json").write_text(json.dumps(
            {"format": FORMAT, "dataSize": offset, "entries": rows}, separators=(",", ":")))
        _publish(tmp, top / key)
        _evict(top, TREE_CACHE_BYTES, keep=top / key)
    except OSError as exc:
        log.debug("cannot keep the tree %s: %s", key, exc)


# ---------------------------------------------------------------------- results

def package_digests(packages: dict[str, Path]) -> dict[str, str]:
    """The SHA-256 of each fetched package file (by the engine's key)."""
    out = {}
    for name, path in sorted(packages.items()):
        with path.open("rb") as fh:
            out[name] = hashlib.file_digest(fh, "sha256").hexdigest()
    return out


def result_key(image_digest: str, plan: Plan, *, packages: dict[str, str], report: bool,
               options: dict[str, Any]) -> str:
    """The key of the patch layer of ``image_digest`` for ``plan`` (every update),
    ``packages`` (the SHA-256 of each package file fetched for it), ``report``
    (whether a report drove the plan) and ``options`` (what else decides the layer's
    bytes)."""
    return _key("result", image_digest, plan.family, plan.architecture,
                [u.to_json() for u in plan.updates], packages, report, options)


@dataclass
class CachedResult:
    """A kept patch layer (``blob``) and what its run reported."""

    blob: Path
    info: LayerInfo
    vulnerabilities: dict[str, tuple[str, ...]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    scripts_ran: list[str] = field(default_factory=list)
    scripts_not_run: list[tuple[str, str]] = field(default_factory=list)


def _marker(cache_dir: Path, image_digest: str) -> Path:
    return cache_dir / "results-seen" / image_digest.replace(":", "-")


def seen_image(cache_dir: Path, image_digest: str) -> bool:
    """Whether a result of ``image_digest`` was kept (a run can then expect a hit and
    hold back work it would start early)."""
    return _marker(cache_dir, image_digest).exists()


def load_result(cache_dir: Path, key: str) -> CachedResult | None:
    """The result kept under ``key`` whose blob still has its recorded digest, or None."""
    where = cache_dir / "results" / key
    try:
        meta = json.loads((where / "result.json").read_text())
        info = LayerInfo(**meta["layer"])
        blob = where / "layer"
        with blob.open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        if f"sha256:{digest}" != info.digest or blob.stat().st_size != info.size:
            raise ValueError("the blob is not the one recorded")
        found = CachedResult(
            blob, info, {k: tuple(v) for k, v in meta["vulnerabilities"].items()},
            tuple(meta["notes"]), list(meta["scriptsRan"]),
            [(s, r) for s, r in meta["scriptsNotRun"]])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _drop(where, "result", exc)
        return None
    _touch(where)
    return found


def store_result(cache_dir: Path, key: str, image_digest: str, blob: Path,
                 result: CachedResult) -> None:
    """Keep ``blob`` and ``result`` under ``key`` (best effort)."""
    top = cache_dir / "results"
    try:
        top.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=top))
        try:
            os.link(blob, tmp / "layer")
        except OSError:
            shutil.copyfile(blob, tmp / "layer")
        info = result.info
        (tmp / "result.json").write_text(json.dumps({
            "layer": {"digest": info.digest, "diff_id": info.diff_id, "size": info.size,
                      "media_type": info.media_type, "compression": info.compression},
            "vulnerabilities": {k: list(v) for k, v in sorted(result.vulnerabilities.items())},
            "notes": list(result.notes), "scriptsRan": result.scripts_ran,
            "scriptsNotRun": [list(p) for p in result.scripts_not_run]}, indent=1))
        _publish(tmp, top / key)
        marker = _marker(cache_dir, image_digest)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(key + "\n")
        _evict(top, RESULT_CACHE_BYTES, keep=top / key)
    except OSError as exc:
        log.debug("cannot keep the result %s: %s", key, exc)


# ------------------------------------------------------------ other derived data

def derived_key(kind: str, *parts: Any) -> str:
    """A key for data an engine derives from verified inputs named in ``parts``."""
    return _key("derived", kind, parts)


def load_blobs(cache_dir: Path, key: str) -> list[bytes] | None:
    """The byte strings kept under ``key``, or None."""
    where = cache_dir / "derived" / key
    try:
        raw = where.read_bytes()
        blobs, at = [], 0
        while at < len(raw):
            size = int.from_bytes(raw[at:at + 8], "big")
            if at + 8 + size > len(raw):
                raise ValueError("truncated")
            blobs.append(raw[at + 8:at + 8 + size])
            at += 8 + size
    except (OSError, ValueError) as exc:
        if where.exists():
            log.debug("dropping the derived entry %s: %s", key, exc)
            with contextlib.suppress(OSError):
                where.unlink()
        return None
    _touch(where)
    return blobs


def store_blobs(cache_dir: Path, key: str, blobs: list[bytes]) -> None:
    """Keep ``blobs`` under ``key`` (best effort)."""
    top = cache_dir / "derived"
    try:
        top.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".new-", dir=top)
        with os.fdopen(fd, "wb") as out:
            for blob in blobs:
                out.write(len(blob).to_bytes(8, "big"))
                out.write(blob)
        os.replace(name, top / key)
        _evict(top, DERIVED_CACHE_BYTES, keep=top / key)
    except OSError as exc:
        log.debug("cannot keep the derived entry %s: %s", key, exc)

