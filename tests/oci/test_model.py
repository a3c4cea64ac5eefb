from __future__ import annotations

import json

import pytest

from suture.errors import ManifestError, PlatformError, UnsupportedMediaType
from suture.oci import mediatypes as mt
from suture.oci.digest import sha256
from suture.oci.model import Descriptor, Index, Manifest, Platform, parse_manifest

DIGEST = "sha256:" + "1" * 64


def _manifest(media_type: str = mt.OCI_MANIFEST, **extra: object) -> bytes:
    doc = {"schemaVersion": 2, "mediaType": media_type,
           "config": {"mediaType": mt.OCI_CONFIG, "digest": DIGEST, "size": 2},
           "layers": [{"mediaType": mt.OCI_LAYER_GZIP, "digest": DIGEST, "size": 3}], **extra}
    return json.dumps(doc, indent=3).encode()


def test_manifest_keeps_exact_bytes_and_digest() -> None:
    raw = _manifest(annotations={"a": "b"})
    m = parse_manifest(raw)
    assert isinstance(m, Manifest)
    assert m.raw == raw and m.digest == sha256(raw)
    assert m.layers[0].size == 3 and m.annotations == {"a": "b"}


def test_index_and_platforms() -> None:
    raw = json.dumps({"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST_LIST, "manifests": [
        {"mediaType": mt.DOCKER_MANIFEST, "digest": DIGEST, "size": 5,
         "platform": {"os": "linux", "architecture": "arm64"}}]}).encode()
    idx = parse_manifest(raw)
    assert isinstance(idx, Index)
    assert idx.manifests[0].platform == Platform("linux", "arm64")
    assert Platform.parse("linux/arm64").matches(idx.manifests[0].platform)
    assert Platform.parse("linux/arm64/v8").matches(idx.manifests[0].platform)
    assert not Platform.parse("linux/amd64").matches(idx.manifests[0].platform)


def test_platform_normalisation() -> None:
    assert Platform.parse("linux/aarch64") == Platform("linux", "arm64", "v8")
    assert Platform.parse("linux/x86_64") == Platform("linux", "amd64")
    assert Platform.parse("linux/arm") == Platform("linux", "arm", "v7")
    assert str(Platform.parse("linux/arm/v6")) == "linux/arm/v6"
    with pytest.raises(PlatformError):
        Platform.parse("linux")


def test_descriptor_round_trip_keeps_unknown_fields() -> None:
    value = {"mediaType": mt.OCI_LAYER, "digest": DIGEST, "size": 1, "data": "eA==",
             "annotations": {"k": "v"}}
    assert Descriptor.from_json(value).to_json() == value


@pytest.mark.parametrize(("raw", "error"), [
    (b"not json", ManifestError),
    (b"[]", ManifestError),
    (json.dumps({"schemaVersion": 2, "mediaType": "application/x-unknown"}).encode(),
     UnsupportedMediaType),
    (json.dumps({"schemaVersion": 1, "name": "x"}).encode(), ManifestError),
    (_manifest().replace(b'"size": 3', b'"size": -3'), ManifestError),
    (_manifest().replace(DIGEST.encode(), b"sha256:abc"), ManifestError),
])
def test_malformed_manifests(raw: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_manifest(raw)
