"""The registry transport when the network or the registry misbehaves."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from suture.errors import (
    DigestMismatch,
    NotFound,
    RegistryError,
    SizeMismatch,
    UnsupportedMediaType,
)
from suture.oci import mediatypes as mt
from suture.oci.digest import VerifyingReader
from suture.oci.image import BlobSource, Image, Origin
from suture.oci.layer import Entry
from suture.oci.model import Descriptor, build_manifest, canonical_json
from suture.transports import Credentials, Options, open_artifact
from suture.transports.reference import parse_reference
from suture.transports.registry import push_artifact
from tests.fixtures.images import make_image, sample_image
from tests.fixtures.registry import (
    PASSWORD,
    USER,
    Fault,
    RegistryServer,
    recording_session,
)

pytestmark = pytest.mark.registry


def big_image(size: int) -> Image:
    """An image with one incompressible layer of about ``size`` bytes."""
    return make_image([Entry.file("big.bin", os.urandom(size))])


def read_layers(image: Image) -> list[bytes]:
    out = []
    for layer in image.layers:
        with layer.open_compressed() as stream:
            out.append(stream.read())
    return out


# --- downloads -----------------------------------------------------------------------


def test_dropped_connection_mid_blob_resumes_with_range(registry: RegistryServer,
                                                        fault_proxy: Any) -> None:
    image = big_image(300_000)
    push_artifact(image, parse_reference(f"{registry.host}/resume:t"), registry.options())
    layer = image.manifest.layers[0].digest
    proxy = fault_proxy(registry)
    proxy.add(Fault("GET", f"/blobs/{layer}", times=2, cut_after=100_000))

    pulled = open_artifact(f"{proxy.host}/resume:t", Options(registry.options()))
    assert isinstance(pulled, Image)
    (data,) = read_layers(pulled)
    assert "sha256:" + hashlib.sha256(data).hexdigest() == layer
    ranges = [r.headers.get("Range") for r in proxy.records if layer in r.path]
    assert ranges == [None, "bytes=100000-", "bytes=200000-"]


def test_download_without_progress_gives_up(registry: RegistryServer, fault_proxy: Any) -> None:
    image = big_image(50_000)
    push_artifact(image, parse_reference(f"{registry.host}/stuck:t"), registry.options())
    layer = image.manifest.layers[0].digest
    proxy = fault_proxy(registry)
    proxy.add(Fault("GET", f"/blobs/{layer}", times=100, cut_after=0))
    pulled = open_artifact(f"{proxy.host}/stuck:t", Options(registry.options(retries=2)))
    assert isinstance(pulled, Image)
    with pytest.raises(RegistryError) as info, pulled.layers[0].open_compressed() as stream:
        stream.read()
    assert "download of blob" in str(info.value) and "after 3 tries" in str(info.value)
    assert len([r for r in proxy.records if layer in r.path]) == 3


def test_429_with_retry_after_is_retried(registry: RegistryServer, fault_proxy: Any) -> None:
    image = sample_image()
    push_artifact(image, parse_reference(f"{registry.host}/busy:t"), registry.options())
    proxy = fault_proxy(registry)
    proxy.add(Fault("GET", "/manifests/", times=1, status=429,
                    headers={"Retry-After": "1"}))
    start = time.monotonic()
    pulled = open_artifact(f"{proxy.host}/busy:t", Options(registry.options(backoff=0.01)))
    elapsed = time.monotonic() - start
    assert pulled.digest == image.digest
    assert elapsed >= 1.0  # the Retry-After, not the 10 ms backoff
    assert [r.status for r in proxy.records if "/manifests/" in r.path] == [429, 200]


@pytest.mark.parametrize("status", [503, 429])
def test_a_registry_that_always_refuses_fails_after_the_retries(
        registry: RegistryServer, fault_proxy: Any, status: int) -> None:
    proxy = fault_proxy(registry)
    proxy.add(Fault("*", "/manifests/", times=1000, status=status))
    start = time.monotonic()
    with pytest.raises(RegistryError) as info:
        open_artifact(f"{proxy.host}/down:t",
                      Options(registry.options(retries=2, backoff=0.01)))
    assert time.monotonic() - start < 5
    assert info.value.status == status
    assert "after 3 tries" in str(info.value)
    assert len([r for r in proxy.records if "/manifests/" in r.path]) == 3


def test_upload_retried_after_a_503(registry: RegistryServer, fault_proxy: Any) -> None:
    proxy = fault_proxy(registry)
    proxy.add(Fault("PUT", "/blobs/uploads/", times=1, status=503))
    proxy.add(Fault("PUT", "/manifests/", times=1, status=502))
    image = sample_image("retry")
    result = push_artifact(image, parse_reference(f"{proxy.host}/retry:t"), registry.options())
    assert result.digest == image.digest
    pulled = open_artifact(f"{registry.host}/retry:t", Options(registry.options()))
    assert isinstance(pulled, Image)
    assert read_layers(pulled) == read_layers(image)


# --- a registry restarted mid-push ---------------------------------------------------------


class KillingSource:
    """Delegates to ``base``; kills the registry halfway through sending blob ``digest``."""

    def __init__(self, base: BlobSource, digest: str, on_half: Any) -> None:
        self.base = base
        self.digest = digest
        self.on_half = on_half
        self.fired = False

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        stream = self.base.open_blob(desc)
        if desc.digest != self.digest or self.fired:
            return stream
        self.fired = True
        data = stream.read()
        stream.close()
        half = len(data) // 2
        on_half = self.on_half

        class Tripwire(io.BytesIO):
            def read(self, n: int | None = -1) -> bytes:
                if self.tell() >= half and not getattr(self, "tripped", False):
                    self.tripped = True
                    on_half()
                return super().read(half // 4 if n is None or n < 0 else min(n, half // 4))

        return Tripwire(data)

    def read_manifest(self, desc: Descriptor) -> bytes:
        return self.base.read_manifest(desc)

    def origin(self) -> Origin | None:
        return None


def _with_source(image: Image, source: BlobSource) -> Image:
    return Image(image.manifest, source, config_bytes=image.config_bytes)


def test_registry_restarted_mid_upload_push_completes(registry: RegistryServer) -> None:
    image = big_image(2 << 20)
    layer = image.manifest.layers[0].digest
    restarted = threading.Event()

    def crash() -> None:
        registry.kill()

        def later() -> None:
            time.sleep(0.3)
            registry.start()
            restarted.set()

        threading.Thread(target=later, daemon=True).start()

    wrapped = _with_source(image, KillingSource(image.source, layer, crash))
    result = push_artifact(wrapped, parse_reference(f"{registry.host}/crash:t"),
                           registry.options(retries=6, backoff=0.1))
    assert restarted.is_set()
    assert result.digest == image.digest
    pulled = open_artifact(f"{registry.host}/crash:t", Options(registry.options()))
    assert isinstance(pulled, Image)
    assert pulled.raw_manifest == image.raw_manifest
    assert read_layers(pulled) == read_layers(image)


def test_registry_gone_mid_upload_fails_and_leaves_no_manifest(
        registry: RegistryServer) -> None:
    image = big_image(1 << 20)
    layer = image.manifest.layers[0].digest
    wrapped = _with_source(image, KillingSource(image.source, layer, registry.kill))
    with pytest.raises(RegistryError) as info:
        push_artifact(wrapped, parse_reference(f"{registry.host}/gone:t"),
                      registry.options(retries=2, backoff=0.01))
    assert info.value.status is None
    assert "cannot reach" in str(info.value)
    registry.start()
    options = Options(registry.options())
    with pytest.raises(NotFound):
        open_artifact(f"{registry.host}/gone:t", options)
    with pytest.raises(NotFound):
        open_artifact(f"{registry.host}/gone@{image.digest}", options)


# --- bad content -------------------------------------------------------------------------


def test_tampered_blob_raises_digest_mismatch(registry: RegistryServer) -> None:
    image = sample_image("tamper")
    push_artifact(image, parse_reference(f"{registry.host}/tamper:t"), registry.options())
    layer = image.manifest.layers[1].digest
    path = registry.blob_file(layer)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    pulled = open_artifact(f"{registry.host}/tamper:t", Options(registry.options()))
    assert isinstance(pulled, Image)
    with pytest.raises(DigestMismatch) as info, pulled.layers[1].open_compressed() as stream:
        stream.read()
    assert info.value.expected == layer
    assert info.value.actual == "sha256:" + hashlib.sha256(data).hexdigest()


def test_tampered_manifest_raises_digest_mismatch(registry: RegistryServer) -> None:
    image = sample_image("tamper-manifest")
    push_artifact(image, parse_reference(f"{registry.host}/mtamper:t"), registry.options())
    path = registry.blob_file(image.digest)
    raw = path.read_bytes()
    pos = raw.index(b'"size":') + len(b'"size":')
    changed = raw[:pos] + bytes([ord("1") if raw[pos] != ord("1") else ord("2")]) + \
        raw[pos + 1:]
    path.write_bytes(changed)
    options = Options(registry.options())
    for ref in (f"{registry.host}/mtamper:t", f"{registry.host}/mtamper@{image.digest}"):
        with pytest.raises(DigestMismatch) as info:
            open_artifact(ref, options)
        assert info.value.actual == "sha256:" + hashlib.sha256(changed).hexdigest()


def test_unknown_manifest_media_type(registry: RegistryServer, fault_proxy: Any) -> None:
    push_artifact(sample_image(), parse_reference(f"{registry.host}/odd:t"), registry.options())
    proxy = fault_proxy(registry)
    odd = "application/vnd.example.thing.v1+json"
    body = json.dumps({"schemaVersion": 2, "mediaType": odd, "things": []}).encode()
    proxy.add(Fault("GET", "/manifests/t", replace_body=body, headers={"Content-Type": odd}))
    with pytest.raises(UnsupportedMediaType) as info:
        open_artifact(f"{proxy.host}/odd:t", Options(registry.options()))
    assert info.value.media_type == odd


def test_oversized_manifest_is_refused(registry: RegistryServer, fault_proxy: Any) -> None:
    push_artifact(sample_image(), parse_reference(f"{registry.host}/huge:t"), registry.options())
    proxy = fault_proxy(registry)
    proxy.add(Fault("GET", "/manifests/t", replace_body=b" " * (9 << 20),
                    headers={"Content-Type": mt.OCI_MANIFEST}))
    with pytest.raises(SizeMismatch):
        open_artifact(f"{proxy.host}/huge:t", Options(registry.options()))


# --- uploads: chunked, and memory bounded ---------------------------------------------------


@pytest.mark.parametrize("kind", ["registry", "basic_registry"])
def test_chunked_upload(request: pytest.FixtureRequest, kind: str) -> None:
    """Chunked uploads, also with relative upload locations and basic auth."""
    registry: RegistryServer = request.getfixturevalue(kind)
    image = big_image(300_000)
    session, calls = recording_session()
    creds = Credentials(USER, PASSWORD) if kind == "basic_registry" else None
    options = registry.options(chunk_size=64 << 10, session=session, credentials=creds)
    push_artifact(image, parse_reference(f"{registry.host}/chunked:t"), options)
    size = image.manifest.layers[0].size
    patches = [c for c in calls if c.method == "PATCH"]
    config_size = image.manifest.config.size
    assert len(patches) == -(-size // (64 << 10)) + -(-config_size // (64 << 10))
    assert all(c.status == 202 for c in patches)
    pulled = open_artifact(f"{registry.host}/chunked:t",
                           Options(registry.options(credentials=creds)))
    assert isinstance(pulled, Image)
    assert read_layers(pulled) == read_layers(image)


class FileSource:
    """Blobs read from files: nothing is held in memory."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        return VerifyingReader(self.files[desc.digest].open("rb"), desc.digest, desc.size,
                               f"blob {desc.digest}")

    def read_manifest(self, desc: Descriptor) -> bytes:
        raise NotImplementedError

    def origin(self) -> Origin | None:
        return None


@pytest.mark.parametrize("chunk_size", [0, 4 << 20], ids=["monolithic", "chunked"])
def test_large_layer_is_streamed_in_bounded_memory(registry: RegistryServer, tmp_path: Path,
                                                   chunk_size: int) -> None:
    size = 48 << 20
    path = tmp_path / "layer.bin"
    h = hashlib.sha256()
    with path.open("wb") as fh:
        for _ in range(size >> 20):
            block = os.urandom(1 << 20)
            h.update(block)
            fh.write(block)
    layer = Descriptor(mt.OCI_LAYER_GZIP, "sha256:" + h.hexdigest(), size)
    config = canonical_json({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": []}})
    (tmp_path / "config.json").write_bytes(config)
    config_desc = Descriptor.of_bytes(mt.OCI_CONFIG, config)
    manifest = build_manifest(config_desc, [layer])
    source = FileSource({layer.digest: path, config_desc.digest: tmp_path / "config.json"})
    image = Image(manifest, source)
    ref = parse_reference(f"{registry.host}/large:t")

    tracemalloc.start()
    try:
        push_artifact(image, ref, registry.options(chunk_size=chunk_size))
        _, push_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        pulled = open_artifact(str(ref), Options(registry.options()))
        assert isinstance(pulled, Image)
        got = hashlib.sha256()
        with pulled.layers[0].open_compressed() as stream:
            while block := stream.read(1 << 20):
                got.update(block)
        _, pull_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "sha256:" + got.hexdigest() == layer.digest
    # Bounded by the chunk size (a chunk is held and joined once), never by the layer's size.
    assert push_peak < 2 * chunk_size + (8 << 20) < size
    assert pull_peak < 8 << 20
