"""One patch per base: reusing a patch layer across images that share a base.

Images of one plan group share the bottom layers up to the one that last writes the
package database, and the database itself. When neither the image that was patched
(the *donor*) nor another image of its group has an upper layer (above that shared
chain) touching a path the patch layer writes, or a path any engine reads to plan
(package databases, ``etc/``, keyrings: repositories and keys live there), then
patching the other image would plan the same updates from the same repositories and
write the same layer. It gets the donor's layer instead: the blob is mounted from the
donor's repository (a cross-repository mount, nothing uploaded) and only its config
and manifest are written, with its own base digest, name and layer count in the marks.
Otherwise the image is patched on its own, and the result says why.

Known limit: a maintainer script that *reads* an app-layer file outside those paths and
writes something else would not see the other image's file; such scripts are rare
(``ldconfig`` reads ``etc/``, which blocks reuse).
"""

from __future__ import annotations

import copy
import logging
import tarfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from suture.distro.detect import wanted_paths
from suture.errors import SutureError
from suture.inspect import (
    BASE_DIGEST_KEY,
    BASE_LAYERS_KEY,
    OCI_BASE_DIGEST,
    OCI_BASE_NAME,
    PATCHED_KEY,
    read_patch_mark,
)
from suture.oci.fs import normalize
from suture.oci.image import Image, Layer
from suture.oci.layer import OPAQUE, WHITEOUT_PREFIX, LayerInfo
from suture.oci.mutate import AddedLayer, append_layers, with_annotations, with_labels
from suture.patch.engines import ENGINES
from suture.transports import Options, open_artifact
from suture.transports.reference import Reference

log = logging.getLogger(__name__)

_DIR = "dir"


def _sensitive() -> tuple[str, ...]:
    """Paths and prefixes (``.../``) some engine or the detection reads."""
    paths, prefixes = wanted_paths()
    out = set(paths) | set(prefixes)
    for engine in ENGINES:
        out |= set(engine.data_prefixes)
    return tuple(sorted(out))


_PATHS: dict[str, dict[str, str]] = {}  # layer digest -> its paths (content-addressed)
_PATHS_LOCK = threading.Lock()
_PATHS_KEPT = 512


def layer_paths(layer: Layer) -> dict[str, str]:
    """Every path a layer writes, with its kind (``dir``, ``file``, ``whiteout``,
    ``opaque``; links and others as ``file``). Remembered by digest: the base layer of a
    group is read once, not once per image."""
    with _PATHS_LOCK:
        known = _PATHS.get(layer.digest)
    if known is not None:
        return known
    out = _read_paths(layer)
    with _PATHS_LOCK:
        if len(_PATHS) >= _PATHS_KEPT:
            _PATHS.pop(next(iter(_PATHS)))
        _PATHS[layer.digest] = out
    return out


def _read_paths(layer: Layer) -> dict[str, str]:
    out: dict[str, str] = {}
    with layer.open_tar() as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            path = normalize(member.name, layer=layer.digest)
            if not path:
                continue
            parent, _, base = path.rpartition("/")
            if base == OPAQUE:
                out[parent] = "opaque"
            elif base.startswith(WHITEOUT_PREFIX):
                target = f"{parent}/{base[len(WHITEOUT_PREFIX):]}".lstrip("/")
                out[target] = "whiteout"
            else:
                out[path] = _DIR if member.isdir() else "file"
    return out


def conflict(upper: dict[str, str], patch_paths: dict[str, str],
             sensitive: Iterable[str]) -> str | None:
    """The first path of ``upper`` (an upper layer's :func:`layer_paths`) that could make
    the patch differ, or None."""
    sensitive = tuple(sensitive)
    patch_dirs = {p for p, k in patch_paths.items() if k == _DIR}
    for path, kind in sorted(upper.items()):
        if kind == _DIR and (path not in patch_paths or path in patch_dirs) and \
                not any(s.endswith("/") and path.startswith(s) for s in sensitive):
            continue  # a directory the patch does not replace, outside what engines read
        if path in patch_paths:
            return path
        if any(path == s or (s.endswith("/") and path.startswith(s)) or
               s.startswith(path + "/") for s in sensitive):
            return path
        if kind != _DIR and any(q.startswith(path + "/") for q in patch_paths):
            return path
    return None


@dataclass(frozen=True)
class Donor:
    """A patched image whose patch layer others of its group may take."""

    job_id: str
    target: Reference  # where the donor was pushed (with its digest)
    layer: LayerInfo
    history: dict[str, Any]
    created: str | None
    chain: tuple[str, ...]  # diff_ids of the bottom layers up to the last one engines read
    paths: dict[str, str]  # what the patch layer writes
    updates: tuple[str, ...]


def database_chain(image: Image) -> int:
    """How many bottom layers reach the highest layer that writes a path the engines or
    the detection read (the package database among them)."""
    sensitive = _sensitive()
    for index in range(len(image.layers) - 1, -1, -1):
        paths = layer_paths(image.layers[index])
        if conflict(paths, {}, sensitive) is not None:
            return index + 1
    return 0


def make_donor(job_id: str, source: Image, patched: Image, target: Reference,
               updates: Iterable[str]) -> Donor | str:
    """The donor a patched single image makes, or why it makes none."""
    if read_patch_mark(source) is not None:
        return "the source was already patched"
    if len(patched.layers) != len(source.layers) + 1:
        return "the patch replaced earlier layers"
    layer = patched.layers[-1]
    desc = layer.descriptor
    info = LayerInfo(desc.digest, patched.diff_ids[-1], desc.size, desc.media_type,
                     layer.compression)
    history = list(patched.config.get("history") or [])
    entry = copy.deepcopy(history[-1]) if history else {}
    created = patched.config.get("created") if patched.config.get("created") != \
        source.config.get("created") else None
    if created is not None:
        entry.pop("created", None)
    shared = database_chain(source)
    paths = layer_paths(layer)
    sensitive = _sensitive()
    for upper in source.layers[shared:]:
        hit = conflict(layer_paths(upper), paths, sensitive)
        if hit is not None:
            return f"its own upper layers touch {hit}"
    return Donor(job_id, target.with_digest(patched.digest), info, entry, created,
                 tuple(source.diff_ids[:shared]), paths, tuple(updates))


def reused_image(donor: Donor, source: Image, source_ref: Reference,
                 opener: Any) -> Image | str:
    """``source`` with the donor's patch layer and its own marks, or why not."""
    if read_patch_mark(source) is not None:
        return "the source was already patched"
    shared = len(donor.chain)
    if tuple(source.diff_ids[:shared]) != donor.chain:
        return "its package database or repositories come from other layers"
    sensitive = _sensitive()
    for upper in source.layers[shared:]:
        hit = conflict(layer_paths(upper), donor.paths, sensitive)
        if hit is not None:
            return f"an upper layer touches {hit}"
    added = AddedLayer(donor.layer, opener, history=copy.deepcopy(donor.history))
    patched = append_layers(source, [added], created=donor.created)
    marks = {BASE_DIGEST_KEY: source.digest, BASE_LAYERS_KEY: str(len(source.layers)),
             PATCHED_KEY: "true"}
    lineage = {OCI_BASE_DIGEST: source.digest}
    if source_ref.is_registry:
        name = f"{source_ref.registry}/{source_ref.repository}"
        lineage[OCI_BASE_NAME] = f"{name}:{source_ref.tag}" if source_ref.tag else name
    return with_annotations(with_labels(patched, marks), {**marks, **lineage})


def mount_blob(digest: str, from_ref: Reference, to_ref: Reference, options: Options,
               *, client: Any = None) -> str:
    """Make ``digest`` available in ``to_ref``'s repository: ``present`` (it is the
    donor's own repository), ``mounted`` (a cross-repository mount on the same registry)
    or ``upload`` (the push will upload it)."""
    if from_ref.registry == to_ref.registry and from_ref.repository == to_ref.repository:
        return "present"
    if from_ref.registry != to_ref.registry:
        return "upload"
    from suture.transports.registry import RegistryClient
    from suture.transports.registry.auth import repository_scopes
    from suture.transports.registry.client import release

    assert to_ref.registry is not None and to_ref.repository and from_ref.repository
    client = client or RegistryClient(to_ref.registry, options.registry)
    url = client.url(f"/v2/{to_ref.repository}/blobs/uploads/?mount={quote(digest, safe='')}"
                     f"&from={quote(from_ref.repository)}")
    scopes = repository_scopes(to_ref.repository, "pull", "push") | \
        repository_scopes(from_ref.repository, "pull")
    try:
        resp = client.request("POST", url, scopes=scopes, ok=(201, 202),
                              what=f"mount of {digest} into {to_ref.name}")
    except SutureError as exc:
        log.debug("no mount of %s: %s", digest, exc)
        return "upload"
    release(resp)
    # 202: an upload was opened instead (left to expire); the push uploads the blob.
    return "mounted" if resp.status_code == 201 else "upload"


def donor_opener(donor: Donor, options: Options) -> Any:
    """Opens the donor's layer blob from its repository (used only when the blob must be
    uploaded, not mounted)."""
    def open_blob() -> Any:
        image = open_artifact(donor.target, options)
        assert isinstance(image, Image)
        return image.layers[-1].open_compressed()
    return open_blob

