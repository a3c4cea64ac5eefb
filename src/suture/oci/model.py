"""Descriptors, platforms, manifests and indexes as immutable values.

Parsed manifests keep the exact bytes they were parsed from: a manifest's digest
is over those bytes, never over a re-serialisation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from suture.errors import ManifestError, PlatformError, UnsupportedMediaType
from suture.oci import mediatypes as mt
from suture.oci.digest import MAX_MANIFEST, check_digest, sha256

JSON = dict[str, Any]


def canonical_json(value: Any) -> bytes:
    """Compact JSON with sorted keys: the same value always gives the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def loads_object(raw: bytes, what: str, limit: int = MAX_MANIFEST) -> JSON:
    if len(raw) > limit:
        raise ManifestError(f"{what} is larger than {limit} bytes")
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ManifestError(f"{what} is not a JSON object")
    return value


# --- platforms -------------------------------------------------------------------

_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "i686": "386",
                 "i386": "386", "armhf": "arm", "armel": "arm"}
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


@dataclass(frozen=True, order=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/arch[/variant]``, e.g. ``linux/arm64/v8``; normalised."""
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise PlatformError(f"invalid platform {text!r}: expected os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None).normalized()

    @classmethod
    def from_json(cls, value: JSON) -> Platform:
        try:
            return cls(
                str(value["os"]),
                str(value["architecture"]),
                value.get("variant") or None,
                value.get("os.version") or None,
            )
        except (KeyError, TypeError, AttributeError):
            raise ManifestError(f"malformed platform {value!r}") from None

    def to_json(self) -> JSON:
        out: JSON = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        if self.os_version:
            out["os.version"] = self.os_version
        return out

    def normalized(self) -> Platform:
        arch = _ARCH_ALIASES.get(self.architecture, self.architecture)
        variant = self.variant or _DEFAULT_VARIANT.get(arch)
        if arch == "arm" and self.architecture in ("armel",) and not self.variant:
            variant = "v6"
        if arch == "amd64" and variant == "v1":
            variant = None
        return Platform(self.os.lower(), arch, variant, self.os_version)

    def matches(self, other: Platform) -> bool:
        """True if ``other`` (from an index) satisfies this (requested) platform.

        A requested platform without a variant matches any variant.
        """
        a, b = self.normalized(), other.normalized()
        if (a.os, a.architecture) != (b.os, b.architecture):
            return False
        return self.variant is None or a.variant == b.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


# --- descriptors -----------------------------------------------------------------


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    artifact_type: str | None = None
    # Fields we do not model, carried over unchanged when re-serialised.
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def from_json(cls, value: Any) -> Descriptor:
        if not isinstance(value, dict):
            raise ManifestError(f"malformed descriptor {value!r}")
        try:
            media_type = value["mediaType"]
            digest = check_digest(value["digest"])
            size = value["size"]
        except KeyError as exc:
            raise ManifestError(f"descriptor without {exc.args[0]}") from None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"descriptor {digest} has invalid size {size!r}")
        if not isinstance(media_type, str):
            raise ManifestError(f"descriptor {digest} has invalid mediaType")
        known = {"mediaType", "digest", "size", "annotations", "platform", "urls", "artifactType"}
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            annotations=dict(value.get("annotations") or {}),
            platform=Platform.from_json(value["platform"]) if value.get("platform") else None,
            urls=tuple(value.get("urls") or ()),
            artifact_type=value.get("artifactType"),
            extra={k: v for k, v in value.items() if k not in known},
        )

    def to_json(self) -> JSON:
        out: JSON = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.urls:
            out["urls"] = list(self.urls)
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        out.update(self.extra)
        return out

    @classmethod
    def of_bytes(cls, media_type: str, data: bytes, **kw: Any) -> Descriptor:
        return cls(media_type, sha256(data), len(data), **kw)

    def with_annotations(self, annotations: dict[str, str]) -> Descriptor:
        return replace(self, annotations=dict(annotations))


# --- manifests and indexes -------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """An image manifest (OCI or Docker schema 2), with its exact bytes."""

    raw: bytes
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str]
    subject: Descriptor | None
    json: JSON = field(repr=False, compare=False)

    @property
    def digest(self) -> str:
        return sha256(self.raw)

    @property
    def is_docker(self) -> bool:
        return self.media_type == mt.DOCKER_MANIFEST

    def descriptor(self, **kw: Any) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.raw), **kw)


@dataclass(frozen=True)
class Index:
    """An OCI image index or a Docker manifest list, with its exact bytes."""

    raw: bytes
    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: dict[str, str]
    json: JSON = field(repr=False, compare=False)

    @property
    def digest(self) -> str:
        return sha256(self.raw)

    def descriptor(self, **kw: Any) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.raw), **kw)


def parse_manifest(raw: bytes, media_type: str | None = None) -> Manifest | Index:
    """Parse manifest or index bytes.

    ``media_type`` is what the transport said (Content-Type, a descriptor); the
    document's own ``mediaType`` wins when present. Unknown types raise
    :class:`UnsupportedMediaType`; schema 1 manifests are refused.
    """
    doc = loads_object(raw, "manifest")
    declared = doc.get("mediaType") or media_type
    if not declared:
        # OCI allows mediaType to be absent; infer from shape.
        if "manifests" in doc:
            declared = mt.OCI_INDEX
        elif "config" in doc and "layers" in doc:
            declared = mt.OCI_MANIFEST
        else:
            raise ManifestError("document is neither an image manifest nor an index")
    if not isinstance(declared, str):
        raise ManifestError("manifest mediaType is not a string")
    if doc.get("schemaVersion") != 2 and (
        declared in mt.MANIFEST_TYPES | mt.INDEX_TYPES or doc.get("schemaVersion") == 1
    ):
        raise ManifestError(
                f"unsupported manifest schemaVersion {doc.get('schemaVersion')!r}"
            )
    annotations = _string_map(doc.get("annotations"), "annotations")
    if declared in mt.INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise ManifestError("index without a manifests list")
        return Index(raw, declared, tuple(Descriptor.from_json(d) for d in entries),
                     annotations, doc)
    if declared in mt.MANIFEST_TYPES:
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise ManifestError("manifest without a layers list")
        config = Descriptor.from_json(doc.get("config"))
        subject = Descriptor.from_json(doc["subject"]) if doc.get("subject") else None
        return Manifest(raw, declared, config, tuple(Descriptor.from_json(d) for d in layers),
                        annotations, subject, doc)
    raise UnsupportedMediaType(declared)


def _string_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ManifestError(f"{what} must map strings to strings")
    return dict(value)


def build_manifest(
    config: Descriptor,
    layers: list[Descriptor],
    *,
    media_type: str = mt.OCI_MANIFEST,
    annotations: dict[str, str] | None = None,
    subject: Descriptor | None = None,
    extra: JSON | None = None,
) -> Manifest:
    """Serialise a manifest canonically (sorted keys) and parse it back."""
    doc: JSON = dict(extra or {})
    doc.update({"schemaVersion": 2, "mediaType": media_type, "config": config.to_json(),
                "layers": [d.to_json() for d in layers]})
    if annotations:
        doc["annotations"] = dict(annotations)
    else:
        doc.pop("annotations", None)
    if subject is not None:
        doc["subject"] = subject.to_json()
    result = parse_manifest(canonical_json(doc))
    assert isinstance(result, Manifest)
    return result


def build_index(
    manifests: list[Descriptor],
    *,
    media_type: str = mt.OCI_INDEX,
    annotations: dict[str, str] | None = None,
    extra: JSON | None = None,
) -> Index:
    doc: JSON = dict(extra or {})
    doc.update({"schemaVersion": 2, "mediaType": media_type,
                "manifests": [d.to_json() for d in manifests]})
    if annotations:
        doc["annotations"] = dict(annotations)
    else:
        doc.pop("annotations", None)
    result = parse_manifest(canonical_json(doc))
    assert isinstance(result, Index)
    return result
