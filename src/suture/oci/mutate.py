"""Changes to images, each returning a new value that holds the old one.

Base layers are never re-encoded: a new image references the same layer
descriptors and serves their bytes from the base image's source.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from suture.errors import ManifestError
from suture.oci import mediatypes as mt
from suture.oci.digest import VerifyingReader
from suture.oci.image import Artifact, BlobSource, Image, ImageIndex, Origin, OverlaySource
from suture.oci.layer import LayerInfo
from suture.oci.model import (
    JSON,
    Descriptor,
    Platform,
    build_index,
    build_manifest,
    canonical_json,
)


@dataclass(frozen=True)
class AddedLayer:
    """A layer blob written locally, to be appended to an image."""

    info: LayerInfo
    open: Callable[[], BinaryIO]
    history: JSON = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


class MemorySource:
    """Blobs and manifests held in memory (small images built by tests and tools)."""

    def __init__(self, blobs: Mapping[str, bytes] | None = None) -> None:
        self.blobs: dict[str, bytes] = dict(blobs or {})

    def add(self, data: bytes) -> str:
        from suture.oci.digest import sha256

        digest = sha256(data)
        self.blobs[digest] = data
        return digest

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        from suture.errors import NotFound

        if desc.digest not in self.blobs:
            raise NotFound(f"blob {desc.digest} not found")
        return VerifyingReader(io.BytesIO(self.blobs[desc.digest]), desc.digest, desc.size,
                               f"blob {desc.digest}")

    def read_manifest(self, desc: Descriptor) -> bytes:
        with self.open_blob(desc) as stream:
            return stream.read()

    def origin(self) -> Origin | None:
        return None


def _rebuild(image: Image, config: JSON, layers: list[Descriptor],
             annotations: dict[str, str], source: BlobSource) -> Image:
    config_bytes = canonical_json(config)
    config_desc = Descriptor(image.manifest.config.media_type,
                             _sha(config_bytes), len(config_bytes))
    manifest = build_manifest(
        config_desc, layers, media_type=image.manifest.media_type, annotations=annotations,
        subject=image.manifest.subject,
        extra={k: v for k, v in image.manifest.json.items()
               if k not in ("config", "layers", "annotations", "subject", "mediaType",
                            "schemaVersion")},
    )
    overlay = OverlaySource(
        source, {config_desc.digest: lambda: io.BytesIO(config_bytes)},
    )
    descriptor = replace_descriptor(image.descriptor, manifest.media_type, manifest.digest,
                                    len(manifest.raw))
    return Image(manifest, overlay, config_bytes=config_bytes, descriptor=descriptor)


def replace_descriptor(old: Descriptor, media_type: str, digest: str, size: int) -> Descriptor:
    """``old`` (platform and annotations kept) pointing at new content."""
    return Descriptor(media_type, digest, size, annotations=dict(old.annotations),
                      platform=old.platform, urls=old.urls, artifact_type=old.artifact_type,
                      extra=dict(old.extra))


def _sha(data: bytes) -> str:
    from suture.oci.digest import sha256

    return sha256(data)


def append_layers(image: Image, layers: list[AddedLayer], *, created: str | None = None) -> Image:
    """``image`` with ``layers`` on top: diff_ids and history extended, base bytes untouched.

    ``created`` (RFC 3339) sets the config's ``created`` and the new history
    entries' times; leave it ``None`` to keep the output independent of the clock.
    """
    config = copy.deepcopy(image.config)
    rootfs = config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    rootfs.setdefault("type", "layers")
    diff_ids = list(rootfs.get("diff_ids") or [])
    history = list(config.get("history") or [])
    descs = list(image.manifest.layers)
    blobs: dict[str, Callable[[], BinaryIO]] = {}
    for layer in layers:
        compression = layer.info.compression
        if image.manifest.is_docker and compression == "zstd":
            raise ManifestError("a Docker schema 2 manifest cannot hold a zstd layer")
        media = mt.layer_media_type(compression, docker=image.manifest.is_docker)
        descs.append(Descriptor(media, layer.info.digest, layer.info.size,
                                annotations=dict(layer.annotations)))
        diff_ids.append(layer.info.diff_id)
        entry = dict(layer.history)
        if created and "created" not in entry:
            entry["created"] = created
        history.append(entry)
        blobs[layer.info.digest] = layer.open
    rootfs["diff_ids"] = diff_ids
    config["history"] = history
    if created:
        config["created"] = created
    source = OverlaySource(image.source, blobs)
    return _rebuild(image, config, descs, dict(image.manifest.annotations), source)


def drop_layers(image: Image, keep: int) -> Image:
    """``image`` with only its first ``keep`` layers (and their history entries)."""
    if keep > len(image.manifest.layers) or keep < 0:
        raise ManifestError(f"cannot keep {keep} of {len(image.manifest.layers)} layers")
    config = copy.deepcopy(image.config)
    config.setdefault("rootfs", {"type": "layers"})["diff_ids"] = image.diff_ids[:keep]
    history = list(config.get("history") or [])
    kept: list[Any] = []
    layers_seen = 0
    for entry in history:
        if not entry.get("empty_layer"):
            if layers_seen >= keep:
                break
            layers_seen += 1
        kept.append(entry)
    config["history"] = kept
    return _rebuild(image, config, list(image.manifest.layers[:keep]),
                    dict(image.manifest.annotations), image.source)


def with_config(image: Image, config: JSON) -> Image:
    """``image`` with a new config document (layers and annotations unchanged)."""
    return _rebuild(image, copy.deepcopy(config), list(image.manifest.layers),
                    dict(image.manifest.annotations), image.source)


def with_labels(image: Image, labels: Mapping[str, str | None]) -> Image:
    """Set (or with ``None`` remove) labels in the image config."""
    config = copy.deepcopy(image.config)
    inner = config.setdefault("config", {})
    current = dict(inner.get("Labels") or {})
    for key, value in labels.items():
        if value is None:
            current.pop(key, None)
        else:
            current[key] = value
    inner["Labels"] = current
    return with_config(image, config)


def with_annotations(image: Image, annotations: Mapping[str, str | None]) -> Image:
    """Set (or with ``None`` remove) manifest annotations."""
    merged = dict(image.manifest.annotations)
    for key, value in annotations.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return _rebuild(image, copy.deepcopy(image.config), list(image.manifest.layers), merged,
                    image.source)


# The annotation by which a buildx attestation manifest names the image it describes.
REFERENCE_DIGEST = "vnd.docker.reference.digest"


def replace_children(index: ImageIndex, replacements: Mapping[str, Artifact],
                     *, annotations: Mapping[str, str | None] | None = None,
                     drop_stale_attestations: bool = False) -> ImageIndex:
    """``index`` with some children (by old digest) replaced; the rest carried byte for byte.

    Each replacement's descriptor keeps the old entry's platform and annotations. With
    ``drop_stale_attestations``, attestation manifests that describe a replaced child
    (``vnd.docker.reference.digest``) are left out: their SBOM and provenance are of
    the old image, and the digest they name is no longer in the index.
    """
    entries = []
    new_children: dict[str, Artifact] = {}
    for desc in index.manifests:
        repl = replacements.get(desc.digest)
        if repl is None:
            if drop_stale_attestations and desc.annotations.get(REFERENCE_DIGEST) \
                    in replacements:
                continue
            entries.append(desc)
            continue
        new_desc = replace_descriptor(desc, repl.media_type, repl.digest, len(repl.raw_manifest))
        entries.append(new_desc)
        new_children[new_desc.digest] = repl.reached_by(new_desc)
    merged = dict(index.index.annotations)
    for key, value in (annotations or {}).items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    new_index = build_index(
        entries, media_type=index.index.media_type, annotations=merged,
        extra={k: v for k, v in index.index.json.items()
               if k not in ("manifests", "annotations", "mediaType", "schemaVersion")},
    )
    manifests = {digest: child.raw_manifest for digest, child in new_children.items()}
    source = OverlaySource(index.source, {}, manifests)
    # Replaced children are served as the values they are, with their own sources.
    return ImageIndex(new_index, source).with_children(new_children)


def new_image(
    layers: list[AddedLayer],
    platform: Platform,
    *,
    config: JSON | None = None,
    docker: bool = False,
    created: str | None = None,
    annotations: dict[str, str] | None = None,
) -> Image:
    """A new image from scratch (tests and tools): the given layers over nothing."""
    base_config: JSON = {"architecture": platform.architecture, "os": platform.os,
                         "rootfs": {"type": "layers", "diff_ids": []}, "config": {}}
    if platform.variant:
        base_config["variant"] = platform.variant
    base_config.update(config or {})
    config_bytes = canonical_json(base_config)
    source = MemorySource()
    source.add(config_bytes)
    config_desc = Descriptor(mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG,
                             _sha(config_bytes), len(config_bytes))
    manifest = build_manifest(config_desc, [],
                              media_type=mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST,
                              annotations=annotations)
    empty = Image(manifest, source, config_bytes=config_bytes)
    return append_layers(empty, layers, created=created) if layers else empty


def new_index(children: list[Image], *, docker: bool = False,
              annotations: dict[str, str] | None = None) -> ImageIndex:
    """An index over ``children`` (each with its platform from its config)."""
    descs = []
    source = MemorySource()
    for child in children:
        desc = replace_descriptor(child.descriptor, child.media_type, child.digest,
                                  len(child.raw_manifest))
        if desc.platform is None:
            plat = child.platform
            desc = Descriptor(desc.media_type, desc.digest, desc.size,
                              annotations=dict(desc.annotations), platform=plat)
        descs.append(desc)
        source.blobs[child.digest] = child.raw_manifest
    index = build_index(descs, media_type=mt.DOCKER_MANIFEST_LIST if docker else mt.OCI_INDEX,
                        annotations=annotations)
    return ImageIndex(index, source).with_children(
        {d.digest: c.reached_by(d) for d, c in zip(descs, children, strict=True)})
