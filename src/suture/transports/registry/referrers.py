"""OCI 1.1 referrers on a registry: push an artifact that names a ``subject``, list
the artifacts that name a digest.

Pushing: the artifact's blobs, then its manifest by digest. A registry with the
referrers API indexes it itself and says so with the ``OCI-Subject`` answer header;
otherwise the distribution spec's fallback applies: the artifact's descriptor is
added to the image index tagged ``sha256-<hex of the subject>`` (read, modified,
written: descriptors other tools put there are kept).

Listing: ``GET /v2/<name>/referrers/<digest>``; a registry without the API (404,
400, 405) is read through the fallback tag instead.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

from suture.errors import ManifestError, NotFound, RegistryError
from suture.oci import mediatypes as mt
from suture.oci.artifact import referrer_descriptor
from suture.oci.digest import MAX_MANIFEST, verify_bytes
from suture.oci.image import BlobRef, Image, ManifestRef, walk_blobs
from suture.oci.model import Descriptor, Index, build_index, parse_manifest
from suture.transports.reference import Reference
from suture.transports.registry.auth import repository_scopes
from suture.transports.registry.client import RegistryClient, read_limited, release
from suture.transports.registry.push import _Pusher

log = logging.getLogger("suture.transports.registry")

REFERRERS_API = "referrers-api"
FALLBACK_TAG = "fallback-tag"


def fallback_tag(digest: str) -> str:
    """The referrers tag schema's tag for ``digest``: ``<alg>-<hex>``."""
    algorithm, _, value = digest.partition(":")
    return f"{algorithm}-{value}"[:128]


@dataclass(frozen=True)
class Attached:
    """Where an artifact went: its digest, its subject and how it is found."""

    digest: str
    subject: str
    how: str  # REFERRERS_API or FALLBACK_TAG


def push_referrer(client: RegistryClient, repository: str, artifact: Image) -> Attached:
    """Push ``artifact`` (which has a ``subject``) into ``repository`` and make it
    findable as a referrer of its subject."""
    subject = artifact.manifest.subject
    if subject is None:
        raise ManifestError("an artifact to attach names no subject")
    name = client.name(repository)
    ref = Reference("docker", client.registry, repository, None, artifact.digest)
    pusher = _Pusher(client, ref, artifact)
    scopes = repository_scopes(repository, "pull", "push")
    headers: dict[str, str] = {}
    for item in walk_blobs(artifact):
        if isinstance(item, BlobRef):
            pusher.blob(item)
        elif isinstance(item, ManifestRef):
            url = client.url(f"/v2/{repository}/manifests/{artifact.digest}")
            resp = client.request("PUT", url, what=f"manifest {name}@{artifact.digest}",
                                  scopes=scopes, ok=(201, 204), body=item.raw,
                                  headers={"Content-Type": artifact.media_type})
            headers = dict(resp.headers)
            release(resp)
    answered = {k.lower(): v for k, v in headers.items()}.get("oci-subject", "").strip()
    if answered == subject.digest:
        return Attached(artifact.digest, subject.digest, REFERRERS_API)
    add_to_fallback(client, repository, subject.digest, [referrer_descriptor(artifact)])
    return Attached(artifact.digest, subject.digest, FALLBACK_TAG)


def _get_index(client: RegistryClient, repository: str, reference: str
               ) -> tuple[list[Descriptor], dict[str, object], str] | None:
    """The descriptors, JSON and digest of the index at ``reference``; None when there
    is none."""
    try:
        raw, _content_type, _digest = client.fetch_manifest(
            repository, reference, (mt.OCI_INDEX,), MAX_MANIFEST)
    except NotFound:
        return None
    parsed = parse_manifest(raw)
    if not isinstance(parsed, Index):
        raise ManifestError(f"{client.name(repository)}:{reference} is not an image index")
    return list(parsed.manifests), dict(parsed.json), parsed.digest


def add_to_fallback(client: RegistryClient, repository: str, subject: str,
                    descriptors: list[Descriptor]) -> str:
    """Add ``descriptors`` to the fallback index of ``subject`` (made when missing),
    keeping every descriptor already there; return the index's digest.

    The tag is read, merged and written, then read again: when another writer's index
    replaced ours in between (ours missing from it), the merge is done again over
    theirs, at most three times."""
    tag = fallback_tag(subject)
    wanted = {d.digest for d in descriptors}
    for _attempt in range(3):
        found = _get_index(client, repository, tag)
        existing, doc = (found[0], found[1]) if found is not None else ([], {})
        have = {d.digest for d in existing}
        if found is not None and wanted <= have:
            return found[2]
        merged = existing + [d for d in descriptors if d.digest not in have]
        annotations = doc.get("annotations")
        index = build_index(merged, media_type=mt.OCI_INDEX,
                            annotations=dict(annotations) if isinstance(annotations, dict)
                            else None)
        url = client.url(f"/v2/{repository}/manifests/{quote(tag)}")
        resp = client.request("PUT", url,
                              what=f"referrers index {client.name(repository)}:{tag}",
                              scopes=repository_scopes(repository, "pull", "push"),
                              ok=(201, 204), body=index.raw,
                              headers={"Content-Type": mt.OCI_INDEX})
        release(resp)
        again = _get_index(client, repository, tag)
        if again is not None and wanted <= {d.digest for d in again[0]}:
            return index.digest
        log.debug("the fallback index %s changed while it was written; merging again", tag)
    raise RegistryError(f"referrers index {client.name(repository)}:{tag} kept changing "
                        "while it was written (another writer): try again")


def list_referrers(client: RegistryClient, repository: str, digest: str,
                   artifact_type: str | None = None) -> tuple[list[Descriptor], str]:
    """The referrers of ``digest`` in ``repository`` and how they were found
    (:data:`REFERRERS_API` or :data:`FALLBACK_TAG`); filtered by ``artifact_type``."""
    url: str | None = client.url(f"/v2/{repository}/referrers/{digest}")
    if artifact_type:
        url = f"{url}?artifactType={quote(artifact_type, safe='')}"
    what = f"referrers of {client.name(repository)}@{digest}"
    found: list[Descriptor] = []
    how = REFERRERS_API
    pages = 0
    while url is not None:
        resp = client.request("GET", url, what=what, ok=(200, 400, 404, 405),
                              scopes=repository_scopes(repository, "pull"),
                              headers={"Accept": mt.OCI_INDEX})
        content_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if resp.status_code != 200 or content_type != mt.OCI_INDEX:
            release(resp)
            if pages:
                raise RegistryError(f"{what}: page {pages + 1} answered HTTP "
                                    f"{resp.status_code}")
            index = _get_index(client, repository, fallback_tag(digest))
            found = index[0] if index is not None else []
            how = FALLBACK_TAG
            break
        raw = read_limited(resp, MAX_MANIFEST, what)
        parsed = parse_manifest(raw, mt.OCI_INDEX)
        if not isinstance(parsed, Index):
            raise ManifestError(f"{what}: the answer is not an image index")
        found.extend(parsed.manifests)
        pages += 1
        if pages >= _MAX_PAGES:
            raise RegistryError(f"{what}: more than {_MAX_PAGES} pages")
        url = _next_page(resp.headers.get("Link", ""), url)
    if artifact_type:
        found = [d for d in found if d.artifact_type == artifact_type]
    return found, how


_MAX_PAGES = 64


def _next_page(link: str, current: str) -> str | None:
    """The ``rel="next"`` target of a ``Link`` header (RFC 8288), on the same origin."""
    for part in link.split(","):
        target, _, params = part.partition(";")
        target = target.strip()
        if target.startswith("<") and target.endswith(">") and any(
                p.strip().replace(" ", "") in ('rel="next"', "rel=next")
                for p in params.split(";")):
            url = urljoin(current, target[1:-1])
            same = urlsplit(url)[:2] == urlsplit(current)[:2]
            return url if same else None
    return None


def fetch_blob(client: RegistryClient, repository: str, desc: Descriptor, limit: int
               ) -> bytes:
    """A small blob (a document) of ``repository``, checked against ``desc``."""
    if desc.size > limit:
        raise RegistryError(f"blob {desc.digest} is {desc.size} bytes, more than {limit}")
    resp = client.get_blob(repository, desc.digest)
    data = read_limited(resp, limit, f"blob {desc.digest}")
    verify_bytes(data, desc.digest, f"blob {desc.digest}")
    return data


def fetch_manifest_json(client: RegistryClient, repository: str, desc: Descriptor
                        ) -> dict[str, object]:
    raw, _ct, _d = client.fetch_manifest(repository, desc.digest,
                                         (mt.OCI_MANIFEST, mt.OCI_INDEX), MAX_MANIFEST)
    verify_bytes(raw, desc.digest, f"manifest {desc.digest}")
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ManifestError(f"manifest {desc.digest} is not a JSON object")
    return doc
