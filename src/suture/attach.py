"""The supply-chain documents of a patch run, attached and signed.

After :func:`suture.patch.patch` has written the patched image,
:func:`supply_chain` builds the SBOM of each patched platform (or updates the
source's SBOM: given as a file, or found as a referrer of the source digest), the
provenance of the run, and, as asked:

* ``attach``: the VEX, SBOMs and provenance as OCI 1.1 artifacts whose ``subject``
  is the patched manifest (each platform's image, and the index for an index),
  by the registry's referrers API, its fallback tag, or a layout's ``index.json``;
* ``copy_source_referrers``: the source image's referrers and cosign signature,
  attestation and SBOM tags copied into the target repository, still about the
  source digest (evidence of what the image was built from);
* ``sign_key``: a cosign signature of the patched image, of each platform image
  and of every attached artifact, and the documents as signed attestations.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suture.errors import NotFound, SutureError
from suture.oci.artifact import CREATED, Blob, new_artifact
from suture.oci.image import Image, ImageIndex
from suture.oci.model import Descriptor
from suture.provenance import (
    MEDIA_TYPE as PROVENANCE_TYPE,
)
from suture.provenance import (
    SLSA_PROVENANCE,
    PlatformBuild,
    ProvenanceSubject,
    build_provenance,
)
from suture.sbom import (
    CYCLONEDX,
    MEDIA_TYPES,
    SPDX,
    Subject,
    build_sbom,
    parse_sbom,
    sbom_format,
    update_sbom,
)
from suture.sign import (
    SigningKey,
    attestation_layer,
    signature_image,
    signature_layer,
    tag_for,
)
from suture.transports import Options
from suture.transports.reference import Reference
from suture.transports.referrers import (
    Store,
    attach,
    copy_referrer,
    read_document,
    read_tagged,
    referrers,
    write_tagged,
)
from suture.vex import oci_purl

log = logging.getLogger(__name__)

VEX_TYPE = "application/vnd.openvex+json"
# predicateType of each document as a cosign attestation (cosign attest --type ...).
PREDICATES = {CYCLONEDX: "https://cyclonedx.org/bom", SPDX: "https://spdx.dev/Document",
              "openvex": "https://openvex.dev/ns"}  # cosign --type openvex, ATTESTING.md
COSIGN_TAGS = ("sig", "att", "sbom")


@dataclass(frozen=True)
class SupplyChainOptions:
    """What to produce. ``sbom``: ``cyclonedx``/``spdx`` (None: only with a source SBOM,
    in its format); ``source_sbom``: the source image's SBOM (JSON bytes);
    ``vex``: the run's OpenVEX document; ``options``: the flags that change the
    result (for the provenance); ``report_digests``: report name -> digest."""

    sbom: str | None = None
    source_sbom: bytes | None = None
    attach: bool = False
    copy_source_referrers: bool = False
    sign_key: SigningKey | None = None
    vex: dict[str, Any] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    report_digests: Mapping[str, str] = field(default_factory=dict)
    timestamp: str = "1970-01-01T00:00:00Z"
    started: str = "1970-01-01T00:00:00Z"
    tool_version: str = ""


@dataclass
class SupplyChainResult:
    sboms: dict[str, dict[str, Any]] = field(default_factory=dict)  # by image digest
    provenance: dict[str, Any] | None = None
    attached: list[tuple[str, str, str, str]] = field(default_factory=list)  # kind, digest,
    # subject, how
    copied: list[str] = field(default_factory=list)
    signed: list[str] = field(default_factory=list)
    attestations: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"attached": [{"kind": kind, "digest": digest, "subject": subject, "how": how}
                             for kind, digest, subject, how in self.attached],
                "copied": list(self.copied), "signed": list(self.signed),
                "attested": list(self.attestations)}

    def lines(self) -> list[str]:
        out = [f"attached {kind} {digest} to {subject} ({how})"
               for kind, digest, subject, how in self.attached]
        out += [f"copied source referrer {d}" for d in self.copied]
        out += [f"signed {d}" for d in self.signed]
        out += [f"attested {d}" for d in self.attestations]
        return out


def _names(target: Reference) -> tuple[str, str | None, str]:
    """(purl name, purl repository_url, name for subjects and signatures)."""
    if target.is_registry:
        return ((target.repository or "image").rsplit("/", 1)[-1], target.name, target.name)
    name = Path(target.path or "image").name.split(".")[0] or "image"
    return name, None, name


def _statement(subject_name: str, digest: str, predicate_type: str,
               predicate: Mapping[str, Any]) -> bytes:
    algorithm, _, value = digest.partition(":")
    doc = {"_type": "https://in-toto.io/Statement/v1",
           "subject": [{"name": subject_name, "digest": {algorithm: value}}],
           "predicateType": predicate_type, "predicate": predicate}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _source_sbom(source: Reference, digests: list[str], store: Store,
                 fmt: str | None) -> bytes | None:
    """The SBOM attached to the source (a platform's digest, else the top's), if any."""
    if not (source.is_registry or source.transport == "oci"):
        return None
    kinds = [MEDIA_TYPES[fmt]] if fmt else [MEDIA_TYPES[CYCLONEDX], MEDIA_TYPES[SPDX]]
    for digest in digests:
        for kind in kinds:
            try:
                found, _how = referrers(source, digest, store, kind)
                if found:
                    return read_document(source, found[-1], store)
            except (NotFound, SutureError) as exc:
                log.debug("no SBOM referrer of %s: %s", digest, exc)
    return None


def supply_chain(result: Any, source: Reference, destination: Reference,
                 spec: SupplyChainOptions, options: Options) -> SupplyChainResult:
    """Build, attach and sign the documents of ``result`` (a PatchResult whose image
    was written to ``destination``)."""
    out = SupplyChainResult()
    if not result.target_digest:
        return out
    store = Store(options)
    top_ref = (Reference("docker", destination.registry, destination.repository, None,
                         result.target_digest) if destination.is_registry
               else Reference(destination.transport, path=destination.path,
                              digest=result.target_digest))
    top = store.open(top_ref)
    purl_name, repository_url, subject_name = _names(destination)
    patched = [o for o in result.platforms
               if o.status == "patched" and o.image is not None]
    descriptors: dict[str, Descriptor] = {top.digest: top.descriptor if isinstance(
        top, Image) else Descriptor(top.media_type, top.digest, len(top.raw_manifest))}
    if isinstance(top, ImageIndex):
        for desc in top.manifests:
            descriptors[desc.digest] = Descriptor(desc.media_type, desc.digest, desc.size)
    documents: dict[str, list[tuple[str, str, bytes, str]]] = {}  # digest -> (kind,
    # media type, bytes, predicate type)

    # SBOMs, one per patched platform image.
    given = parse_sbom(spec.source_sbom, "--source-sbom") if spec.source_sbom else None
    for o in patched:
        digest = o.image.digest
        if o.packages is None:
            continue
        source_doc = given
        if source_doc is None and (spec.attach or spec.sbom):
            found = _source_sbom(source, [o.source_digest, result.source_digest], store,
                                 spec.sbom)
            source_doc = parse_sbom(found, f"the SBOM attached to {source}") if found \
                else None
        if spec.sbom is None and source_doc is None:
            continue
        arch = o.platform.architecture if o.platform else None
        subject = Subject(purl_name, digest, oci_purl(purl_name, digest,
                                                      repository_url=repository_url,
                                                      arch=arch),
                          o.os_family, o.os_version)
        if source_doc is not None:
            doc = update_sbom(source_doc, subject, o.packages, o.plan.updates,
                              timestamp=spec.timestamp, tool_version=spec.tool_version)
        else:
            assert spec.sbom is not None
            doc = build_sbom(spec.sbom, subject, o.packages, timestamp=spec.timestamp,
                             tool_version=spec.tool_version)
        fmt = sbom_format(doc)
        out.sboms[digest] = doc
        documents.setdefault(digest, []).append(
            ("sbom", MEDIA_TYPES[fmt], _dump(doc), PREDICATES[fmt]))

    # Provenance: one statement naming every patched manifest.
    subjects = [ProvenanceSubject(subject_name, result.target_digest)]
    subjects += [ProvenanceSubject(subject_name, o.image.digest) for o in patched
                 if o.image.digest != result.target_digest]
    builds = [PlatformBuild(str(o.platform or "image"), o.source_digest,
                            tuple(o.plan.updates) if o.plan else ()) for o in patched]
    out.provenance = build_provenance(
        subjects, source=str(source), source_digest=result.source_digest, platforms=builds,
        report_digests=spec.report_digests, options=spec.options,
        tool_version=spec.tool_version, started=spec.started, finished=spec.timestamp)
    targets = [result.target_digest] + [o.image.digest for o in patched
                                        if o.image.digest != result.target_digest]
    for digest in targets:
        documents.setdefault(digest, [])
        if spec.vex is not None:
            documents[digest].append(("vex", VEX_TYPE, _dump(spec.vex), PREDICATES["openvex"]))
        documents[digest].append(("provenance", PROVENANCE_TYPE, _dump(out.provenance),
                                  SLSA_PROVENANCE))

    attached_digests: list[str] = []
    if spec.attach:
        for digest in targets:
            subject_desc = descriptors.get(digest)
            if subject_desc is None:
                continue
            for kind, media_type, data, _predicate in documents.get(digest, []):
                artifact = new_artifact(media_type, [Blob(media_type, data)], subject_desc,
                                        annotations={CREATED: spec.timestamp})
                done = attach(artifact, destination, store)
                out.attached.append((kind, done.digest, digest, done.how))
                attached_digests.append(done.digest)

    if spec.copy_source_referrers:
        # The source manifest itself, by digest, so the copies' subject resolves in the
        # target repository (its layers are the patched image's base: mounted or there).
        _copy_by_digest(source, result.source_digest, destination, store)
        others = {o.source_digest for o in patched} - {result.source_digest}
        for digest in [result.source_digest, *sorted(others)]:
            listed, _how = referrers(source, digest, store)
            for desc in listed:
                done = copy_referrer(source, desc, destination, store)
                out.copied.append(done.digest)
            for suffix in COSIGN_TAGS:
                tagged = read_tagged(source, tag_for(digest, suffix), store)
                if tagged is not None:
                    write_tagged(tagged, destination, tag_for(digest, suffix), store)
                    out.copied.append(f"{tag_for(digest, suffix)} {tagged.digest}")

    if spec.sign_key is not None:
        for digest in [*targets, *attached_digests]:
            _add_layers(destination, tag_for(digest, "sig"),
                        [signature_layer(subject_name, digest, spec.sign_key)], store)
            out.signed.append(digest)
        for digest in targets:
            # The provenance is a Statement already (its subjects include ``digest``);
            # the SBOM and the VEX become the predicate of one about ``digest``.
            layers = [attestation_layer(
                _canonical(data) if kind == "provenance" else
                _statement(subject_name, digest, predicate, json.loads(data)),
                predicate, spec.sign_key)
                for kind, _mt, data, predicate in documents.get(digest, [])]
            if layers:
                _add_layers(destination, tag_for(digest, "att"), layers, store)
                out.attestations.append(digest)
    return out


def _copy_by_digest(source: Reference, digest: str, target: Reference,
                    store: Store) -> None:
    def at(ref: Reference) -> Reference:
        if ref.is_registry:
            return Reference("docker", ref.registry, ref.repository, None, digest)
        return Reference(ref.transport, path=ref.path, digest=digest)

    if at(source) == at(target):
        return
    store.write(store.open(at(source)), at(target))


def _add_layers(target: Reference, tag: str, layers: list[Blob], store: Store) -> None:
    """Read-modify-write the cosign image at ``tag``: its layers kept, ``layers`` added."""
    existing = read_tagged(target, tag, store)
    write_tagged(signature_image(layers, existing if isinstance(existing, Image) else None),
                 target, tag, store)


def _canonical(data: bytes) -> bytes:
    return json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()


def _dump(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, indent=2, sort_keys=False).encode() + b"\n"
