"""Referrers wherever an image lives: a registry (referrers API or fallback tag, see
:mod:`suture.transports.registry.referrers`) or an OCI layout (the artifact's
manifest listed in ``index.json`` without a tag, with its ``artifactType``; found
again by its ``subject``, as the image spec describes).

``attach`` pushes an artifact; ``referrers`` lists the artifacts naming a digest;
``read_document`` reads an artifact's first layer; ``copy_referrer`` copies an
artifact (by digest, subject unchanged) from one repository to another;
``write_tagged`` writes a manifest under a tag (cosign's ``.sig``/``.att`` images).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suture.errors import ManifestError, NotFound, TransportError
from suture.oci.artifact import artifact_type_of
from suture.oci.digest import MAX_MANIFEST, verify_bytes
from suture.oci.image import Artifact, Image
from suture.oci.model import Descriptor
from suture.transports import Options, open_artifact, write_artifact
from suture.transports.reference import Reference

LAYOUT = "layout"
MAX_DOCUMENT = 64 << 20


@dataclass(frozen=True)
class Attached:
    digest: str
    subject: str
    how: str  # referrers-api, fallback-tag or layout


class Store:
    """Reads and writes for one run over registries and layouts, with one registry client
    per registry (one ping, one token cache), however many artifacts go back and forth."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self._clients: dict[str, Any] = {}

    def client(self, ref: Reference) -> Any:
        """The :class:`~suture.transports.registry.RegistryClient` for ``ref``'s registry."""
        from suture.transports.registry import RegistryClient

        assert ref.registry is not None
        if ref.registry not in self._clients:
            self._clients[ref.registry] = RegistryClient(ref.registry, self.options.registry)
        return self._clients[ref.registry]

    def open(self, ref: Reference) -> Artifact:
        if ref.is_registry:
            from suture.transports.registry import open_registry_image

            return open_registry_image(ref, self.options.registry, client=self.client(ref))
        return open_artifact(ref, self.options)

    def write(self, artifact: Artifact, ref: Reference) -> str:
        if ref.is_registry:
            from suture.transports.registry import push_artifact

            return push_artifact(artifact, ref, self.options.registry,
                                 client=self.client(ref)).digest
        return write_artifact(artifact, ref, self.options)


def attach(artifact: Image, target: Reference, store: Store) -> Attached:
    """Write ``artifact`` (with a ``subject``) beside the image at ``target``'s place."""
    subject = artifact.manifest.subject
    if subject is None:
        raise ManifestError("an artifact to attach names no subject")
    if target.is_registry:
        from suture.transports.registry.referrers import push_referrer

        assert target.repository is not None
        done = push_referrer(store.client(target), target.repository, artifact)
        return Attached(done.digest, done.subject, done.how)
    if target.transport == "oci":
        from suture.transports.layout import write_layout_image

        write_layout_image(artifact, Reference("oci", path=target.path))  # (locked, merged)
        return Attached(artifact.digest, subject.digest, LAYOUT)
    raise TransportError(f"{target}: artifacts can be attached in a registry or an OCI "
                         "layout only", hint="write the image to a registry or oci:DIR")


def _layout_manifest(root: Path, digest: str) -> dict[str, object] | None:
    algorithm, _, value = digest.partition(":")
    path = root / "blobs" / algorithm / value
    try:
        if path.stat().st_size > MAX_MANIFEST:
            return None
        raw = path.read_bytes()
    except OSError:
        return None
    verify_bytes(raw, digest, f"manifest {digest}")
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def referrers(target: Reference, digest: str, store: Store,
              artifact_type: str | None = None) -> tuple[list[Descriptor], str]:
    """The artifacts naming ``digest`` in ``target``'s repository or layout, and how
    they were found."""
    if target.is_registry:
        from suture.transports.registry.referrers import list_referrers

        assert target.repository is not None
        return list_referrers(store.client(target), target.repository, digest,
                              artifact_type)
    if target.transport != "oci":
        return [], LAYOUT
    root = Path(target.path or ".")
    try:
        index = json.loads((root / "index.json").read_bytes())
    except (OSError, ValueError):
        return [], LAYOUT
    found: list[Descriptor] = []
    for entry in index.get("manifests") or [] if isinstance(index, dict) else []:
        try:
            desc = Descriptor.from_json(entry)
        except ManifestError:
            continue
        doc = _layout_manifest(root, desc.digest)
        subject = doc.get("subject") if doc else None
        if not doc or not isinstance(subject, dict) or subject.get("digest") != digest:
            continue
        kind = artifact_type_of(doc)
        if artifact_type and kind != artifact_type:
            continue
        annotations = doc.get("annotations")
        found.append(Descriptor(desc.media_type, desc.digest, desc.size,
                                annotations=dict(annotations)
                                if isinstance(annotations, dict) else {},
                                artifact_type=kind or None))
    return found, LAYOUT


def open_referrer(target: Reference, desc: Descriptor, store: Store) -> Artifact:
    """The artifact ``desc`` names, in ``target``'s repository or layout."""
    if target.is_registry:
        ref = Reference("docker", target.registry, target.repository, None, desc.digest)
    else:
        ref = Reference("oci", path=target.path, digest=desc.digest)
    return store.open(ref)


def read_document(target: Reference, desc: Descriptor, store: Store) -> bytes:
    """The first layer of the artifact ``desc`` names (an SBOM, a VEX...)."""
    artifact = open_referrer(target, desc, store)
    if not isinstance(artifact, Image) or not artifact.manifest.layers:
        raise NotFound(f"referrer {desc.digest} holds no document")
    layer = artifact.manifest.layers[0]
    if layer.size > MAX_DOCUMENT:
        raise TransportError(f"referrer {desc.digest}: document of {layer.size} bytes is "
                             "too large")
    with artifact.source.open_blob(layer) as stream:
        data: bytes = stream.read()
    return data


def copy_referrer(source: Reference, desc: Descriptor, target: Reference,
                  store: Store) -> Attached:
    """Copy the artifact ``desc`` names from ``source``'s repository to ``target``'s,
    by digest, its subject (the source image) unchanged."""
    artifact = open_referrer(source, desc, store)
    if not isinstance(artifact, Image) or artifact.manifest.subject is None:
        raise ManifestError(f"referrer {desc.digest} names no subject")
    return attach(artifact, target, store)


def write_tagged(artifact: Artifact, target: Reference, tag: str, store: Store) -> str:
    """Write ``artifact`` under ``tag`` in ``target``'s repository or layout."""
    if target.is_registry:
        where = Reference("docker", target.registry, target.repository, tag, None)
    else:
        where = Reference("oci", path=target.path, tag=tag)
    return store.write(artifact, where)


def read_tagged(target: Reference, tag: str, store: Store) -> Artifact | None:
    """The artifact at ``tag`` of ``target``'s repository or layout; None when absent."""
    if target.is_registry:
        where = Reference("docker", target.registry, target.repository, tag, None)
    else:
        where = Reference("oci", path=target.path, tag=tag)
    try:
        return store.open(where)
    except NotFound:
        return None
