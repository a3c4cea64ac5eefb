"""The lazy, immutable image model.

An :class:`Image` is a manifest plus a :class:`BlobSource` that can serve every
blob the manifest names. Nothing is read until asked for, and what was read is
kept (configs and child manifests, never layer bytes). A change returns a new
value that holds the old one (see :mod:`suture.oci.mutate`).

Sinks write any :data:`Artifact` by walking :func:`walk_blobs`, which yields
every blob before the manifest that names it, and every child manifest before
its index.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol, runtime_checkable

from suture.errors import ManifestError, PlatformError
from suture.oci import mediatypes as mt
from suture.oci.digest import MAX_CONFIG, MAX_MANIFEST, VerifyingReader
from suture.oci.model import (
    JSON,
    Descriptor,
    Index,
    Manifest,
    Platform,
    loads_object,
    parse_manifest,
)


@dataclass(frozen=True)
class Origin:
    """Where a blob can be mounted from: a repository on a registry."""

    registry: str
    repository: str


@runtime_checkable
class BlobSource(Protocol):
    """Serves blobs and manifests by descriptor, verified against it."""

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        """A stream of the blob that raises on a digest or size mismatch at its end.

        The caller closes it.
        """
        ...

    def read_manifest(self, desc: Descriptor) -> bytes:
        """The exact bytes of a manifest or index, verified against ``desc``."""
        ...

    def origin(self) -> Origin | None:
        """The registry repository these blobs live in, if any (for cross-repo mounts)."""
        ...


def read_blob(source: BlobSource, desc: Descriptor, limit: int) -> bytes:
    """Read a small blob whole, refusing anything over ``limit`` bytes."""
    if desc.size > limit:
        raise ManifestError(f"blob {desc.digest} is {desc.size} bytes, over the {limit} limit")
    with source.open_blob(desc) as stream:
        data = stream.read(desc.size + 1)
        # Drain so the verifying stream reaches its end and checks the digest.
        while stream.read(1 << 16):
            pass
    return data


class OverlaySource:
    """Blobs held locally (new layers, new configs) in front of a base source."""

    def __init__(
        self,
        base: BlobSource,
        blobs: Mapping[str, Callable[[], BinaryIO]],
        manifests: Mapping[str, bytes] | None = None,
    ) -> None:
        self.base = base
        self._blobs = dict(blobs)
        self._manifests = dict(manifests or {})

    def has_local(self, digest: str) -> bool:
        return digest in self._blobs or digest in self._manifests

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        opener = self._blobs.get(desc.digest)
        if opener is not None:
            return VerifyingReader(opener(), desc.digest, desc.size, f"blob {desc.digest}")
        if desc.digest in self._manifests:
            import io

            return io.BytesIO(self._manifests[desc.digest])
        return self.base.open_blob(desc)

    def read_manifest(self, desc: Descriptor) -> bytes:
        if desc.digest in self._manifests:
            return self._manifests[desc.digest]
        return self.base.read_manifest(desc)

    def origin(self) -> Origin | None:
        return self.base.origin()


@dataclass(frozen=True)
class Layer:
    """One layer of an image: its descriptor, its diff_id, and where to read it."""

    descriptor: Descriptor
    diff_id: str | None
    source: BlobSource

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    @property
    def compression(self) -> str:
        return mt.layer_compression(self.descriptor.media_type)

    def open_compressed(self) -> BinaryIO:
        """The layer blob as stored, verified against its digest. Caller closes."""
        return self.source.open_blob(self.descriptor)

    def open_tar(self, *, limit: int | None = None) -> BinaryIO:
        """The uncompressed tar stream, verified against the blob digest and the diff_id.

        ``limit`` bounds the uncompressed size (default: 64 x compressed, at least 16 GiB).
        Caller closes.
        """
        from suture.oci.compression import open_decompressed

        ceiling = limit if limit is not None else max(16 << 30, 64 * self.descriptor.size)
        compressed = self.open_compressed()
        # A verifying stream says where the blob is read from (a layout, an archive).
        what = getattr(compressed, "_what", None)
        if not isinstance(what, str) or self.digest not in what:
            what = f"blob {self.digest}"
        raw = open_decompressed(compressed, self.compression, what=what)
        if self.diff_id is None or self.compression == "none":
            if self.compression == "none":
                return raw
            return _BoundedReader(raw, ceiling, f"layer {self.digest}")
        return VerifyingReader(raw, self.diff_id, None, f"layer {self.digest} (diff_id)",
                               limit=ceiling)


class _BoundedReader(VerifyingReader):
    """A ceiling without a digest to check."""

    def __init__(self, raw: BinaryIO, limit: int, what: str) -> None:
        super().__init__(raw, "sha256:" + "0" * 64, None, what, limit=limit)

    def _finish(self) -> None:
        self._done = True


class Image:
    """A single-platform image: a manifest, its config and its layers, read lazily."""

    def __init__(
        self,
        manifest: Manifest,
        source: BlobSource,
        *,
        config_bytes: bytes | None = None,
        descriptor: Descriptor | None = None,
    ) -> None:
        self.manifest = manifest
        self.source = source
        self._config_bytes = config_bytes
        # The descriptor this image was reached by (from an index): keeps platform/annotations.
        self.descriptor = descriptor or manifest.descriptor()

    def __repr__(self) -> str:
        return f"Image({self.digest})"

    def reached_by(self, descriptor: Descriptor) -> Image:
        """The same image as reached through ``descriptor`` (an index entry)."""
        return Image(self.manifest, self.source, config_bytes=self._config_bytes,
                     descriptor=descriptor)

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def raw_manifest(self) -> bytes:
        return self.manifest.raw

    @property
    def media_type(self) -> str:
        return self.manifest.media_type

    @property
    def config_bytes(self) -> bytes:
        if self._config_bytes is None:
            self._config_bytes = read_blob(self.source, self.manifest.config, MAX_CONFIG)
        return self._config_bytes

    @functools.cached_property
    def config(self) -> JSON:
        return loads_object(self.config_bytes, "image config", MAX_CONFIG)

    @property
    def diff_ids(self) -> list[str]:
        rootfs = self.config.get("rootfs") or {}
        ids = rootfs.get("diff_ids") or []
        if not isinstance(ids, list):
            raise ManifestError("image config rootfs.diff_ids is not a list")
        return [str(i) for i in ids]

    @property
    def layers(self) -> list[Layer]:
        descs = self.manifest.layers
        ids: list[str | None] = list(self.diff_ids) if self.is_container_image else []
        if ids and len(ids) != len(descs):
            raise ManifestError(
                f"image {self.digest}: {len(descs)} layers but {len(ids)} diff_ids in config"
            )
        if not ids:
            ids = [None] * len(descs)
        return [Layer(d, i, self.source) for d, i in zip(descs, ids, strict=True)]

    @property
    def is_container_image(self) -> bool:
        return self.manifest.config.media_type in mt.CONFIG_TYPES

    @property
    def platform(self) -> Platform | None:
        if self.descriptor.platform is not None:
            return self.descriptor.platform
        if not self.is_container_image:
            return None
        c = self.config
        if "os" in c and "architecture" in c:
            return Platform(str(c["os"]), str(c["architecture"]), c.get("variant") or None,
                            c.get("os.version") or None)
        return None

    @property
    def labels(self) -> dict[str, str]:
        cfg = self.config.get("config") or {}
        return dict(cfg.get("Labels") or {})


class ImageIndex:
    """A multi-platform index (or Docker manifest list), its children read lazily.

    ``children`` overrides: a child digest mapped to a replacement image or index
    (what a patch produces); all other children are carried over byte for byte.
    """

    def __init__(
        self,
        index: Index,
        source: BlobSource,
        *,
        descriptor: Descriptor | None = None,
    ) -> None:
        self.index = index
        self.source = source
        self.descriptor = descriptor or index.descriptor()
        self._children: dict[str, Artifact] = {}

    def __repr__(self) -> str:
        return f"ImageIndex({self.digest})"

    def reached_by(self, descriptor: Descriptor) -> ImageIndex:
        out = ImageIndex(self.index, self.source, descriptor=descriptor)
        out._children.update(self._children)
        return out

    def with_children(self, children: dict[str, Artifact]) -> ImageIndex:
        """This index with child values already known (by digest); nothing is read."""
        out = self.reached_by(self.descriptor)
        out._children.update(children)
        return out

    @property
    def digest(self) -> str:
        return self.index.digest

    @property
    def raw_manifest(self) -> bytes:
        return self.index.raw

    @property
    def media_type(self) -> str:
        return self.index.media_type

    @property
    def manifests(self) -> tuple[Descriptor, ...]:
        return self.index.manifests

    def child(self, desc: Descriptor) -> Artifact:
        """The image or index that ``desc`` names (read once, then kept)."""
        if desc.digest not in self._children:
            raw = self.source.read_manifest(desc)
            parsed = parse_manifest(raw, desc.media_type)
            if isinstance(parsed, Index):
                self._children[desc.digest] = ImageIndex(parsed, self.source, descriptor=desc)
            else:
                self._children[desc.digest] = Image(parsed, self.source, descriptor=desc)
        return self._children[desc.digest]

    def platforms(self) -> list[Platform]:
        return [d.platform for d in self.manifests if d.platform is not None]

    def image_descriptors(self) -> list[Descriptor]:
        """Descriptors of runnable images (attestations and ``unknown/unknown`` left out)."""
        out = []
        for d in self.manifests:
            if d.media_type not in mt.MANIFEST_TYPES:
                continue
            if d.platform is None or d.platform.os == "unknown":
                continue
            if d.annotations.get("vnd.docker.reference.type") == "attestation-manifest":
                continue
            out.append(d)
        return out

    def select(self, platform: Platform) -> Image:
        """The one image for ``platform``; raises :class:`PlatformError` naming what exists."""
        found = [d for d in self.image_descriptors() if d.platform and platform.matches(d.platform)]
        if not found:
            have = ", ".join(str(p) for p in self.platforms()) or "none"
            raise PlatformError(f"no image for platform {platform} (the index has: {have})")
        child = self.child(found[0])
        if not isinstance(child, Image):
            raise PlatformError(f"platform {platform} names a nested index, not an image")
        return child


Artifact = Image | ImageIndex


def load_artifact(raw: bytes, source: BlobSource, media_type: str | None = None,
                  descriptor: Descriptor | None = None) -> Artifact:
    """Wrap verified manifest bytes as an :class:`Image` or :class:`ImageIndex`."""
    if len(raw) > MAX_MANIFEST:
        raise ManifestError(f"manifest larger than {MAX_MANIFEST} bytes")
    parsed = parse_manifest(raw, media_type)
    if isinstance(parsed, Index):
        return ImageIndex(parsed, source, descriptor=descriptor)
    return Image(parsed, source, descriptor=descriptor)


@dataclass(frozen=True)
class BlobRef:
    """A blob to be written by a sink, and how to read it."""

    descriptor: Descriptor
    source: BlobSource

    def open(self) -> BinaryIO:
        return self.source.open_blob(self.descriptor)


@dataclass(frozen=True)
class ManifestRef:
    """A manifest or index to be written by a sink, after everything it names."""

    descriptor: Descriptor
    raw: bytes
    artifact: Artifact | None


def walk_blobs(artifact: Artifact) -> Iterator[BlobRef | ManifestRef]:
    """Everything a sink must write for ``artifact``, dependencies first, each once.

    Layers with ``urls`` (non-distributable, e.g. Windows base layers) are skipped
    when the source cannot serve them; their descriptors stay in the manifest.
    """
    seen: set[str] = set()

    def visit(art: Artifact) -> Iterator[BlobRef | ManifestRef]:
        if isinstance(art, ImageIndex):
            for desc in art.manifests:
                if desc.digest in seen:
                    continue
                yield from visit(art.child(desc))
        else:
            for desc in (*art.manifest.layers, art.manifest.config):
                if desc.digest in seen:
                    continue
                seen.add(desc.digest)
                if desc.urls:
                    continue  # foreign layer: fetched from its URLs by the consumer
                yield BlobRef(desc, art.source)
        if art.digest not in seen:
            seen.add(art.digest)
            yield ManifestRef(art.descriptor, art.raw_manifest, art)

    yield from visit(artifact)


def config_platform(config: Mapping[str, Any]) -> Platform | None:
    if "os" in config and "architecture" in config:
        return Platform(str(config["os"]), str(config["architecture"]),
                        config.get("variant") or None)
    return None


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)
