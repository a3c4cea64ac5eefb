"""OCI 1.1 artifacts: manifests that carry documents (an SBOM, a VEX, provenance) and
name the image they are about in ``subject``.

:func:`new_artifact` builds one as an :class:`~suture.oci.image.Image` held in
memory, so every sink that writes images writes artifacts too. The config is the
spec's empty descriptor (``application/vnd.oci.empty.v1+json``, ``{}``) and the
``artifactType`` names what the layers are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from suture.oci import mediatypes as mt
from suture.oci.image import Image
from suture.oci.model import Descriptor, build_manifest
from suture.oci.mutate import MemorySource

EMPTY_CONFIG = b"{}"
CREATED = "org.opencontainers.image.created"


@dataclass(frozen=True)
class Blob:
    """One layer of an artifact: its media type, bytes and descriptor annotations."""

    media_type: str
    data: bytes
    annotations: dict[str, str] = field(default_factory=dict)


def empty_descriptor() -> Descriptor:
    return Descriptor.of_bytes(mt.OCI_EMPTY, EMPTY_CONFIG, extra={"data": "e30="})


def new_artifact(artifact_type: str, blobs: Sequence[Blob], subject: Descriptor | None, *,
                 annotations: dict[str, str] | None = None,
                 config: Blob | None = None) -> Image:
    """An artifact manifest over ``blobs`` whose ``subject`` is ``subject`` (its media
    type, digest and size only). ``config``: another config blob than the empty one
    (cosign's signature images carry an image config)."""
    source = MemorySource()
    if config is None:
        source.add(EMPTY_CONFIG)
        config_desc = empty_descriptor()
    else:
        source.add(config.data)
        config_desc = Descriptor.of_bytes(config.media_type, config.data)
    layers = []
    for blob in blobs:
        source.add(blob.data)
        layers.append(Descriptor.of_bytes(blob.media_type, blob.data,
                                          annotations=dict(blob.annotations)))
    bare_subject = None if subject is None else Descriptor(subject.media_type,
                                                           subject.digest, subject.size)
    extra = {"artifactType": artifact_type} if artifact_type else {}
    manifest = build_manifest(config_desc, layers, media_type=mt.OCI_MANIFEST,
                              annotations=annotations, subject=bare_subject, extra=extra)
    return Image(manifest, source, config_bytes=config.data if config else EMPTY_CONFIG)


def artifact_type_of(manifest_json: dict[str, object]) -> str:
    """The artifact type of a manifest: ``artifactType``, else its config's media type
    (the image spec's rule for manifests without one)."""
    value = manifest_json.get("artifactType")
    if isinstance(value, str) and value:
        return value
    config = manifest_json.get("config")
    if isinstance(config, dict) and isinstance(config.get("mediaType"), str):
        return str(config["mediaType"])
    return ""


def referrer_descriptor(artifact: Image) -> Descriptor:
    """The descriptor a referrers list holds for ``artifact``: media type, digest, size,
    ``artifactType`` and the manifest's annotations."""
    return Descriptor(artifact.media_type, artifact.digest, len(artifact.raw_manifest),
                      annotations=dict(artifact.manifest.annotations),
                      artifact_type=artifact_type_of(artifact.manifest.json) or None)
