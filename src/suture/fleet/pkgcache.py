"""A package cache the workers share through the registry they already push to.

Each package file is a blob of ``<registry>/<namespace>/<family>`` whose digest is the
SHA-256 the distribution's index publishes for it (Debian's ``Packages``, rpm's
repodata), held by a small OCI artifact manifest (``artifactType``
``application/vnd.suture.cache.pkg.v1``, the file name as the layer's
``org.opencontainers.image.title``) tagged ``pkg-<hex>`` so that registry garbage
collection keeps it. Before a job downloads anything, every package its plan needs is
looked for with a ``HEAD`` on that blob; a blob there is fetched, hashed again, and put
in the job's local cache (``<cache-dir>/<family cache>/sha256/<hex>``), where the
family's fetcher finds it and goes upstream no more. After the job, the packages it
fetched that the registry lacks are pushed. A blob that fails its check is not used
(the fetcher downloads and verifies the package upstream as always).

Packages whose index gives no SHA-256 (apk's ``C:`` is a SHA-1 of the control part)
are left to the local cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urljoin

from suture.errors import SutureError
from suture.plan import Update
from suture.transports import Options
from suture.transports.reference import Reference
from suture.transports.registry.auth import repository_scopes
from suture.transports.registry.client import BODY_ERRORS, RegistryClient, release

log = logging.getLogger(__name__)

ARTIFACT_TYPE = "application/vnd.suture.cache.pkg.v1"
EMPTY_CONFIG = b"{}"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
#: The local cache directory each family's fetcher keeps (patch/engine.py's callers).
FAMILY_CACHE = {"dpkg": "apt", "apk": "apk", "rpm": "rpm"}


@dataclass
class CacheStats:
    hits: list[str] = field(default_factory=list)  # fetched from the registry
    pushed: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # blobs that failed the check

    def to_json(self) -> dict[str, list[str]]:
        return {"hits": self.hits, "pushed": self.pushed, "rejected": self.rejected}


class RegistryPackageCache:
    """The cache at ``<namespace>/<family>`` of the registry ``namespace`` names."""

    def __init__(self, namespace: Reference, options: Options) -> None:
        if namespace.registry is None or namespace.repository is None:
            raise SutureError(f"package cache {namespace}: not a registry repository")
        self.namespace = namespace
        self.options = options

    def _client(self) -> RegistryClient:
        assert self.namespace.registry is not None
        return RegistryClient(self.namespace.registry, self.options.registry)

    def repository(self, family: str) -> str:
        return f"{self.namespace.repository}/{family}"

    def prefetch(self, family: str, updates: list[Update], cache_dir: Path,
                 stats: CacheStats) -> None:
        """Put every package of ``updates`` the registry has into the local cache."""
        local = cache_dir / FAMILY_CACHE.get(family, family) / "sha256"
        repo = self.repository(family)
        client = self._client()
        scopes = repository_scopes(repo, "pull")
        for u in updates:
            if not u.sha256 or (local / u.sha256).is_file():
                continue
            digest = f"sha256:{u.sha256}"
            try:
                if not client.has_blob(repo, digest, scopes):
                    continue
                if self._download(client, repo, u.sha256, local, u.size):
                    stats.hits.append(u.sha256)
                else:
                    stats.rejected.append(u.sha256)
            except SutureError as exc:
                log.debug("package cache: %s: %s", u.name, exc)

    def _download(self, client: RegistryClient, repo: str, hexdigest: str, local: Path,
                  size: int) -> bool:
        resp = client.request("GET", client.url(f"/v2/{repo}/blobs/sha256:{hexdigest}"),
                              what=f"cached package {hexdigest[:12]}", follow=True,
                              scopes=repository_scopes(repo, "pull"),
                              headers={"Accept-Encoding": "identity"})
        local.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=local.parent, prefix="registry-")
        h = hashlib.sha256()
        written = 0
        limit = size if size > 0 else 4 << 30
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := resp.raw.read(1 << 20, decode_content=False):
                    written += len(chunk)
                    if written > limit:
                        break
                    h.update(chunk)
                    out.write(chunk)
            release(resp)
            if h.hexdigest() != hexdigest or (size > 0 and written != size):
                return False  # verified again after the GET: not used
            os.replace(tmp, local / hexdigest)
            return True
        except BODY_ERRORS:
            resp.close()
            return False
        finally:
            Path(tmp).unlink(missing_ok=True)

    def publish(self, family: str, updates: list[Update], cache_dir: Path,
                stats: CacheStats) -> None:
        """Push the packages of ``updates`` in the local cache that the registry lacks."""
        local = cache_dir / FAMILY_CACHE.get(family, family) / "sha256"
        repo = self.repository(family)
        client = self._client()
        scopes = repository_scopes(repo, "pull", "push")
        for u in updates:
            path = local / u.sha256 if u.sha256 else None
            if path is None or not path.is_file():
                continue
            digest = f"sha256:{u.sha256}"
            try:
                if client.has_blob(repo, digest, scopes):
                    continue
                if hashlib.sha256(path.read_bytes()).hexdigest() != u.sha256:
                    continue
                self._upload(client, repo, scopes, digest, path.read_bytes())
                self._upload(client, repo, scopes, _sha(EMPTY_CONFIG), EMPTY_CONFIG)
                manifest = json.dumps({
                    "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
                    "artifactType": ARTIFACT_TYPE,
                    "config": {"mediaType": EMPTY_TYPE, "digest": _sha(EMPTY_CONFIG),
                               "size": len(EMPTY_CONFIG)},
                    "layers": [{"mediaType": "application/octet-stream", "digest": digest,
                                "size": path.stat().st_size,
                                "annotations": {"org.opencontainers.image.title":
                                                u.filename.rsplit("/", 1)[-1] or u.name}}],
                }, sort_keys=True, separators=(",", ":")).encode()
                resp = client.request(
                    "PUT", client.url(f"/v2/{repo}/manifests/pkg-{u.sha256}"), scopes=scopes,
                    what=f"cache manifest of {u.name}", ok=(201, 204), body=manifest,
                    headers={"Content-Type": MANIFEST_TYPE})
                release(resp)
                stats.pushed.append(u.sha256)
            except SutureError as exc:
                log.debug("package cache: cannot push %s: %s", u.name, exc)

    def _upload(self, client: RegistryClient, repo: str, scopes: frozenset[tuple[str, str]],
                digest: str, data: bytes) -> None:
        if client.has_blob(repo, digest, scopes):
            return
        start = client.url(f"/v2/{repo}/blobs/uploads/")
        resp = client.request("POST", start, scopes=scopes, ok=(202,),
                              what=f"upload to {repo}")
        release(resp)
        location = urljoin(start, resp.headers.get("Location") or "")
        sep = "&" if "?" in location else "?"
        resp = client.request("PUT", f"{location}{sep}digest={quote(digest, safe='')}",
                              scopes=scopes, ok=(201, 204),
                              what=f"upload of {digest} to {repo}",
                              headers={"Content-Type": "application/octet-stream"},
                              body=data)
        release(resp)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
