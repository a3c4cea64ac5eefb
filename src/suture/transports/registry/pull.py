"""Reading images from a registry: a manifest now, blobs when asked for.

:func:`open_registry_image` fetches and verifies one manifest and returns a lazy
:class:`~suture.oci.image.Image` or :class:`~suture.oci.image.ImageIndex` whose
source is a :class:`RegistrySource`. Every blob is streamed, verified against its
descriptor, and resumed with ``Range`` requests when the connection breaks.
"""

from __future__ import annotations

import io
from typing import BinaryIO

import requests

from suture.errors import DigestMismatch, ManifestError, RegistryError
from suture.oci import mediatypes as mt
from suture.oci.digest import MAX_MANIFEST, VerifyingReader, hasher, is_digest, verify_bytes
from suture.oci.image import Artifact, Origin, load_artifact
from suture.oci.model import Descriptor
from suture.transports import RegistryOptions
from suture.transports.reference import Reference
from suture.transports.registry.client import BODY_ERRORS, RegistryClient, describe

_GENERIC_TYPES = frozenset({"application/json", "text/plain", "application/octet-stream"})


def open_registry_image(ref: Reference, options: RegistryOptions,
                        *, client: RegistryClient | None = None) -> Artifact:
    """The image or index ``ref`` names, with only its manifest read.

    A digest in ``ref`` wins over its tag and is checked against the bytes; the
    registry's ``Docker-Content-Digest`` is checked when sent. Raises
    :class:`~suture.errors.NotFound`, :class:`~suture.errors.AuthError`,
    :class:`~suture.errors.DigestMismatch`,
    :class:`~suture.errors.UnsupportedMediaType` or
    :class:`~suture.errors.RegistryError`.
    """
    if ref.registry is None or ref.repository is None:
        raise RegistryError(f"{ref} does not name a registry repository")
    client = client or RegistryClient(ref.registry, options)
    reference = ref.digest or ref.tag or "latest"
    raw, content_type, header_digest = client.fetch_manifest(
        ref.repository, reference, mt.MANIFEST_ACCEPT, MAX_MANIFEST)
    what = f"manifest {ref}"
    if ref.digest:
        verify_bytes(raw, ref.digest, what)
    check_header_digest(raw, header_digest, what)
    source = RegistrySource(client, ref.repository)
    return load_artifact(raw, source, media_type_hint(content_type))


def check_header_digest(raw: bytes, header: str | None, what: str) -> None:
    """Raise :class:`DigestMismatch` when a ``Docker-Content-Digest`` header disagrees."""
    if not header or not is_digest(header.strip()):
        return
    header = header.strip()
    h = hasher(header)
    h.update(raw)
    actual = f"{header.split(':', 1)[0]}:{h.hexdigest()}"
    if actual != header:
        raise DigestMismatch(what, header, actual)


def media_type_hint(content_type: str | None) -> str | None:
    """The media type a Content-Type names, or ``None`` for generic types."""
    if not content_type:
        return None
    value = content_type.split(";", 1)[0].strip().lower()
    return None if not value or value in _GENERIC_TYPES else value


class RegistrySource:
    """The blobs and manifests of one repository on a registry, fetched when asked.

    Implements :class:`~suture.oci.image.BlobSource`. Its :meth:`origin` lets a
    push to another repository of the same registry mount blobs instead of
    uploading them.
    """

    def __init__(self, client: RegistryClient, repository: str) -> None:
        self.client = client
        self.repository = repository

    def __repr__(self) -> str:
        return f"RegistrySource({self.client.name(self.repository)!r})"

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        """A stream of the blob, verified against ``desc``; the caller closes it.

        The GET is sent now (so a missing blob raises here); a connection broken
        mid-body is resumed from where it stopped. At the end of the stream a
        wrong size or digest raises.
        """
        download = BlobDownload(self.client, self.repository, desc)
        return VerifyingReader(download, desc.digest, desc.size,
                               f"blob {desc.digest} of {self.client.name(self.repository)}")

    def read_manifest(self, desc: Descriptor) -> bytes:
        """The exact bytes of the manifest ``desc`` names, verified against it."""
        if desc.size > MAX_MANIFEST:
            raise ManifestError(f"manifest {desc.digest} is {desc.size} bytes, over the "
                                f"{MAX_MANIFEST} limit")
        accept = tuple(dict.fromkeys((desc.media_type, *mt.MANIFEST_ACCEPT)))
        raw, _, header = self.client.fetch_manifest(self.repository, desc.digest, accept,
                                                    MAX_MANIFEST)
        what = f"manifest {self.client.name(self.repository)}@{desc.digest}"
        check_header_digest(raw, header, what)
        return verify_bytes(raw, desc.digest, what, desc.size)

    def origin(self) -> Origin | None:
        return Origin(self.client.registry, self.repository)


class BlobDownload(io.RawIOBase, BinaryIO):
    """The raw bytes of one blob, resumed with ``Range`` after a broken connection.

    Resumes are bounded: ``1 + retries`` consecutive failures without progress
    raise :class:`~suture.errors.RegistryError`. Verification is the wrapping
    :class:`~suture.oci.digest.VerifyingReader`'s job.
    """

    def __init__(self, client: RegistryClient, repository: str, desc: Descriptor) -> None:
        super().__init__()
        self._client = client
        self._repository = repository
        self._desc = desc
        self._offset = 0
        self._failures = 0
        self._eof = False
        self._resp: requests.Response | None = client.get_blob(repository, desc.digest)
        self.resumes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        while True:
            if self._eof:
                return 0
            if self._resp is None:
                self._reconnect()
                continue
            try:
                data = self._resp.raw.read(len(view), decode_content=False)
            except BODY_ERRORS as exc:
                self._drop()
                self._failed(exc)
                continue
            if data:
                n = len(data)
                view[:n] = data
                self._offset += n
                self._failures = 0
                return n
            if self._offset < self._desc.size:
                # The connection closed early without an error: ask for the rest.
                self._drop()
                self._failed(EOFError("connection closed early"))
                continue
            self._eof = True
            self._resp.raw.release_conn()  # fully read: the connection can be reused
            self._resp = None
            return 0

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        retries = max(0, self._client.options.retries)
        if self._failures > retries:
            raise RegistryError(
                f"download of blob {self._desc.digest} from "
                f"{self._client.name(self._repository)} failed at byte {self._offset}: "
                f"{describe(exc)} (after {self._failures} tries)")
        self._client.pause(self._client.backoff(self._failures - 1))

    def _reconnect(self) -> None:
        try:
            resp = self._client.get_blob(self._repository, self._desc.digest, self._offset)
        except RegistryError as exc:
            if exc.status is not None:
                raise
            self._failed(exc)
            return
        self.resumes += 1
        if resp.status_code == 206:
            start = _range_start(resp.headers.get("Content-Range", ""))
            if start != self._offset:
                resp.close()
                raise RegistryError(f"blob {self._desc.digest}: the registry resumed at byte "
                                    f"{start}, not {self._offset}", status=206)
        else:
            # The server ignored Range: skip what we already have.
            remaining = self._offset
            try:
                while remaining:
                    chunk = resp.raw.read(min(remaining, 1 << 20), decode_content=False)
                    if not chunk:
                        break
                    remaining -= len(chunk)
            except BODY_ERRORS as exc:
                resp.close()
                self._failed(exc)
                return
            if remaining:
                resp.close()
                self._failed(EOFError("connection closed early"))
                return
        self._resp = resp

    def _drop(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None

    def close(self) -> None:
        try:
            self._drop()
        finally:
            super().close()


def _range_start(content_range: str) -> int | None:
    # "bytes START-END/TOTAL"
    unit, _, rest = content_range.strip().partition(" ")
    if unit.lower() != "bytes":
        return None
    start, sep, _ = rest.partition("-")
    return int(start) if sep and start.isdigit() else None
