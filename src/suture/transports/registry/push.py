"""Writing images to a registry: blobs first, then manifests, the tag last.

For each blob :func:`push_artifact` asks the registry whether it has it (HEAD),
else mounts it from the repository it was read from when that is on the same
registry, else uploads it, streamed from its source (monolithic, or chunked
with ``options.chunk_size``). A manifest is PUT only after every blob it names
exists; children by digest before their index; the top by tag. A failed upload
is started again from the beginning (after checking whether the registry got
the blob after all), so a registry that restarts mid-push ends in a complete
push or a clear error, never in a manifest whose blobs are missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import BinaryIO
from urllib.parse import quote, urljoin

from suture.errors import AuthError, DigestMismatch, NotFound, RegistryError, UsageError
from suture.oci.digest import sha256
from suture.oci.image import (
    Artifact,
    BlobRef,
    BlobSource,
    ManifestRef,
    OverlaySource,
    walk_blobs,
)
from suture.progress import UPLOAD, Transfer
from suture.transports import RegistryOptions
from suture.transports.reference import Reference
from suture.transports.registry.auth import Scopes, repository_scopes
from suture.transports.registry.client import (
    RETRY_STATUSES,
    RegistryClient,
    UploadBody,
    release,
    stream_body,
)

log = logging.getLogger("suture.transports.registry")


@dataclass
class PushResult:
    """What a push did: the top manifest's digest and each blob's fate, by digest."""

    digest: str
    uploaded: list[str] = field(default_factory=list)
    mounted: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)


def push_image(artifact: Artifact, ref: Reference, options: RegistryOptions) -> str:
    """Push ``artifact`` (an image or an index) to ``ref``; return the top manifest digest."""
    return push_artifact(artifact, ref, options).digest


def push_artifact(artifact: Artifact, ref: Reference, options: RegistryOptions,
                  *, client: RegistryClient | None = None) -> PushResult:
    """Push ``artifact`` to ``ref`` and say what was uploaded, mounted or already there.

    ``ref`` is tagged with the top manifest; a ``ref`` with only a digest must
    name ``artifact``'s digest. Blob bytes are streamed from their sources and
    verified as they are read; nothing large is held in memory.
    """
    if ref.registry is None or ref.repository is None:
        raise UsageError(f"{ref} does not name a registry repository")
    if ref.digest and ref.digest != artifact.digest:
        raise UsageError(f"cannot push {artifact.digest} as {ref}: the digests differ")
    client = client or RegistryClient(ref.registry, options)
    pusher = _Pusher(client, ref, artifact)
    for item in walk_blobs(artifact):
        if isinstance(item, BlobRef):
            pusher.blob(item)
        else:
            pusher.manifest(item)
    return pusher.result


class _Pusher:
    """One push: the target, the scopes it needs, and what has been done so far."""

    def __init__(self, client: RegistryClient, ref: Reference, artifact: Artifact) -> None:
        assert ref.repository is not None
        self.client = client
        self.ref = ref
        self.repository = ref.repository
        self.artifact = artifact
        self.scopes: Scopes = repository_scopes(ref.repository, "pull", "push")
        self.result = PushResult(artifact.digest)
        self.name = client.name(ref.repository)
        self.refused_mounts: set[str] = set()

    # -- blobs ----------------------------------------------------------------------
    def blob(self, item: BlobRef) -> None:
        digest = item.descriptor.digest
        if self.client.has_blob(self.repository, digest, self.scopes):
            self.result.existing.append(digest)
            return
        location = None
        origin = item.source.origin()
        local = _held_locally(item.source, digest)
        if (origin is not None and not local and origin.registry == self.client.registry
                and origin.repository != self.repository
                and origin.repository not in self.refused_mounts):
            mounted, location = self._mount(digest, origin.repository)
            if mounted:
                self.result.mounted.append(digest)
                return
        self._upload(item, location)
        self.result.uploaded.append(digest)

    def _mount(self, digest: str, source_repository: str) -> tuple[bool, str | None]:
        """Try to mount ``digest`` from ``source_repository``.

        ``(True, None)`` when mounted; ``(False, url)`` when the registry opened an
        upload instead; ``(False, None)`` when it refused the mount (no access to
        the source repository, say): the blob is then uploaded as usual.
        """
        url = self.client.url(f"/v2/{self.repository}/blobs/uploads/?mount="
                              f"{quote(digest, safe='')}&from={quote(source_repository)}")
        scopes = self.scopes | repository_scopes(source_repository, "pull")
        try:
            resp = self.client.request("POST", url, scopes=scopes, ok=(201, 202),
                                       what=f"mount of blob {digest} into {self.name}")
        except (AuthError, NotFound) as exc:
            log.debug("no mount of %s from %s (%s); uploading", digest, source_repository,
                      exc)
            self.refused_mounts.add(source_repository)  # do not ask again for each blob
            return False, None
        release(resp)
        if resp.status_code == 201:
            log.debug("mounted %s from %s", digest, source_repository)
            return True, None
        return False, self._location(resp.headers.get("Location"), url)

    def _start_upload(self) -> str:
        url = self.client.url(f"/v2/{self.repository}/blobs/uploads/")
        resp = self.client.request("POST", url, what=f"upload to {self.name}",
                                   scopes=self.scopes, ok=(202,))
        release(resp)
        return self._location(resp.headers.get("Location"), url)

    def _location(self, location: str | None, request_url: str) -> str:
        if not location:
            raise RegistryError(f"upload to {self.name}: the registry gave no upload location")
        return urljoin(request_url, location)

    def _upload(self, item: BlobRef, location: str | None) -> None:
        digest = item.descriptor.digest
        retries = max(0, self.client.options.retries)
        for attempt in range(retries + 1):
            try:
                if location is None:
                    location = self._start_upload()
                if self.client.options.chunk_size > 0:
                    self._send_chunked(item, location)
                else:
                    self._send_whole(item, location)
                return
            except (RegistryError, NotFound) as exc:
                if not _retryable(exc) or attempt == retries:
                    raise
                log.debug("upload of %s failed (%s), starting again", digest, exc)
                self.client.pause(self.client.backoff(attempt))
                location = None
                # The registry may have stored the blob before the answer was lost.
                if self.client.has_blob(self.repository, digest, self.scopes):
                    return

    def _transfer(self, item: BlobRef) -> Transfer:
        desc = item.descriptor
        return Transfer(self.client.options.progress, UPLOAD, desc.digest, desc.size)

    def _send_whole(self, item: BlobRef, location: str) -> None:
        desc = item.descriptor
        transfer = self._transfer(item)

        def body() -> UploadBody:
            transfer.restart()  # a retried request sends it all again
            return stream_body(item.open(), desc.size, transfer.advance)

        resp = self.client.request(
            "PUT", _with_digest(location, desc.digest), what=f"upload of blob {desc.digest} "
            f"to {self.name}", scopes=self.scopes, retry=False, ok=(201, 204),
            headers={"Content-Type": "application/octet-stream"},
            body=body)
        release(resp)
        self._check_answer_digest(resp.headers.get("Docker-Content-Digest"), desc.digest)
        transfer.finish()

    def _send_chunked(self, item: BlobRef, location: str) -> None:
        desc = item.descriptor
        chunk_size = self.client.options.chunk_size
        what = f"upload of blob {desc.digest} to {self.name}"
        transfer = self._transfer(item)
        offset = 0
        with item.open() as stream:
            while True:
                chunk = _read_up_to(stream, chunk_size)
                if not chunk:
                    break  # the stream reached its end and was verified
                resp = self.client.request(
                    "PATCH", location, what=what, scopes=self.scopes, retry=False,
                    ok=(202,), body=chunk,
                    headers={"Content-Type": "application/octet-stream",
                             "Content-Range": f"{offset}-{offset + len(chunk) - 1}"})
                release(resp)
                offset += len(chunk)
                transfer.advance(len(chunk))
                location = self._location(resp.headers.get("Location") or location, location)
        resp = self.client.request("PUT", _with_digest(location, desc.digest), what=what,
                                   scopes=self.scopes, retry=False, ok=(201, 204), body=b"")
        release(resp)
        self._check_answer_digest(resp.headers.get("Docker-Content-Digest"), desc.digest)
        transfer.finish()

    def _check_answer_digest(self, answered: str | None, expected: str) -> None:
        if answered and answered.strip() != expected:
            raise DigestMismatch(f"blob pushed to {self.name}", expected, answered.strip())

    # -- manifests --------------------------------------------------------------------
    def manifest(self, item: ManifestRef) -> None:
        digest = sha256(item.raw) if item.descriptor.digest.startswith("sha256:") \
            else item.descriptor.digest
        if digest != item.descriptor.digest:
            raise DigestMismatch("manifest to push", item.descriptor.digest, digest)
        top = item.descriptor.digest == self.artifact.digest
        reference = (self.ref.tag or item.descriptor.digest) if top else item.descriptor.digest
        media_type = item.artifact.media_type if item.artifact is not None \
            else item.descriptor.media_type
        url = self.client.url(f"/v2/{self.repository}/manifests/{quote(reference, safe=':')}")
        resp = self.client.request("PUT", url, what=f"manifest {self.name}"
                                   f"{':' if top and self.ref.tag else '@'}{reference}",
                                   scopes=self.scopes, ok=(201, 204), body=item.raw,
                                   headers={"Content-Type": media_type})
        release(resp)
        answered = resp.headers.get("Docker-Content-Digest")
        if answered and answered.strip() != item.descriptor.digest:
            raise DigestMismatch(f"manifest pushed to {self.name}", item.descriptor.digest,
                                 answered.strip())
        self.result.manifests.append(item.descriptor.digest)


def _retryable(exc: RegistryError | NotFound) -> bool:
    """Whether starting an upload again may help (a lost session is, bad data is not)."""
    if isinstance(exc, NotFound):
        return True  # BLOB_UPLOAD_UNKNOWN: the session is gone (a registry restart)
    return exc.status is None or exc.status in RETRY_STATUSES or exc.status in (400, 416)


def _held_locally(source: BlobSource, digest: str) -> bool:
    """True when ``digest`` is a new blob of an overlay (not in the origin repository)."""
    while isinstance(source, OverlaySource):
        if source.has_local(digest):
            return True
        source = source.base
    return False


def _with_digest(location: str, digest: str) -> str:
    sep = "&" if "?" in location else "?"
    return f"{location}{sep}digest={quote(digest, safe='')}"


def _read_up_to(stream: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes (fewer only at the end of ``stream``), read in 1 MiB pieces."""
    pieces: list[bytes] = []
    have = 0
    while have < size:
        data = stream.read(min(size - have, 1 << 20))
        if not data:
            break
        pieces.append(data)
        have += len(data)
    return b"".join(pieces)
