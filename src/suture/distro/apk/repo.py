"""apk repositories: the image's configuration, mirrors, and verified fetching.

Configuration comes from ``/etc/apk/repositories`` and the ``*.list`` files of
``/etc/apk/repositories.d`` and ``/lib/apk/repositories.d`` (apk-tools 3; a
name seen once is not read again). A line is a comment (``#``), a variable
(``set [-default] key=value``, expanded as ``${key}``; ``APK_ARCH`` is built
in), or a repository: ``[@tag] url``, ``ndx [@tag] url-of-index``, or
``v2 [@tag] url [component...]``. A ``v3`` repository or an index ending in
``.adb`` is apk v3 (ADB) format, not supported yet: :func:`parse_repositories`
refuses it clearly.

A repository's index is ``<url>/<arch>/APKINDEX.tar.gz`` and its packages
``<url>/<arch>/<name>-<version>.apk`` (``ndx``: next to the index). Downloads
go through the shared fetcher's content-addressed cache (:mod:`suture.distro.fetch`):
an index is kept by URL and revalidated, or read from the cache offline; a
package is found in the cache by its identity (``C:``) only, never by its URL, and
a cached copy that no longer verifies (a re-signed rebuild, another mirror's copy)
is fetched again.

Bounds: a configuration file over :data:`MAX_REPOSITORIES_FILE` bytes, or more than
:data:`MAX_REPOSITORIES` distinct repositories, is refused naming the file;
repeated lines are read once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from suture.distro.apk.index import VerifiedIndex, read_index_archive
from suture.distro.apk.package import read_apk
from suture.distro.apk.sign import Keys
from suture.distro.errors import OfflineCacheMiss, RepositoryError
from suture.distro.fetch import Fetcher, redact
from suture.distro.mirrors import mirror_url
from suture.errors import SutureError

__all__ = ["ApkFetcher", "Repository", "apk_arch", "mirror_url", "parse_repositories"]

log = logging.getLogger(__name__)

REPOSITORIES = "etc/apk/repositories"
REPOSITORIES_D = ("etc/apk/repositories.d/", "lib/apk/repositories.d/")
MAX_APKINDEX = 256 << 20  # compressed; Alpine edge community is ~2 MB
MAX_PACKAGE = 1 << 31
MAX_REPOSITORIES_FILE = 1 << 20  # bytes of one configuration file
MAX_REPOSITORIES = 256  # distinct repositories
_OCI_TO_APK = {"amd64": "x86_64", "arm64": "aarch64", "386": "x86", "ppc64le": "ppc64le",
               "s390x": "s390x", "riscv64": "riscv64", "loong64": "loongarch64",
               "mips64le": "mips64el"}
_VAR = re.compile(r"\$\{([A-Za-z][A-Za-z0-9_]*)\}")


def apk_arch(architecture: str, variant: str | None = None) -> str:
    """apk's name for an OCI platform's architecture (``arm64`` -> ``aarch64``)."""
    if architecture == "arm":
        return "armhf" if variant in ("v5", "v6") else "armv7"
    return _OCI_TO_APK.get(architecture, architecture)


@dataclass(frozen=True)
class Repository:
    """One repository: ``url`` its base (``index`` the full index URL for ``ndx``),
    ``tag`` without ``@`` (``""`` when untagged), ``order`` its position."""

    url: str
    tag: str = ""
    order: int = 0
    index: str = ""
    origin: str = ""

    def index_url(self, arch: str) -> str:
        return self.index or f"{self.url.rstrip('/')}/{arch}/APKINDEX.tar.gz"

    def package_url(self, arch: str, filename: str) -> str:
        if self.index:
            return f"{self.index.rpartition('/')[0]}/{filename}"
        return f"{self.url.rstrip('/')}/{arch}/{filename}"

    @property
    def remote(self) -> bool:
        return self.url.startswith(("http://", "https://")) or \
            self.index.startswith(("http://", "https://"))


def _expand(text: str, variables: Mapping[str, str], where: str) -> str:
    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            raise RepositoryError(f"{where}: undefined variable ${{{name}}}")
        return variables[name]

    return _VAR.sub(sub, text)


def parse_repositories(files: Mapping[str, bytes], *, arch: str) -> list[Repository]:
    """Repositories from the configuration files (root-relative path -> contents), in
    apk's reading order. :class:`RepositoryError` for an apk v3 repository."""
    names: list[str] = []
    if REPOSITORIES in files:
        names.append(REPOSITORIES)
    seen: set[str] = set()
    for prefix in REPOSITORIES_D:
        for path in sorted(p for p in files if p.startswith(prefix) and p.endswith(".list")
                           and "/" not in p[len(prefix):]):
            base = path[len(prefix):]
            if base not in seen:
                seen.add(base)
                names.append(path)
    variables = {"APK_ARCH": arch}
    out: list[Repository] = []
    seen_repos: set[tuple[str, str, str]] = set()

    def add(repo: Repository, where: str) -> None:
        key = (repo.url.rstrip("/"), repo.index, repo.tag)
        if key in seen_repos:
            return
        seen_repos.add(key)
        out.append(replace(repo, order=len(out)))
        if len(out) > MAX_REPOSITORIES:
            raise RepositoryError(f"{where}: more than {MAX_REPOSITORIES} distinct apk "
                                  "repositories")

    for path in names:
        if len(files[path]) > MAX_REPOSITORIES_FILE:
            raise RepositoryError(f"/{path}: {len(files[path])} bytes, over the "
                                  f"{MAX_REPOSITORIES_FILE} byte limit for an apk "
                                  "repositories file")
        for lineno, raw in enumerate(files[path].decode("utf-8", "replace").splitlines(), 1):
            where = f"/{path}:{lineno}"
            words = raw.split("#", 1)[0].split() if raw.lstrip().startswith("#") else \
                raw.split()
            if not words or words[0].startswith("#"):
                continue
            if words[0] == "set":
                rest = words[1:]
                keep = bool(rest) and rest[0] == "-default"
                rest = rest[1:] if keep else rest
                if len(rest) != 1 or "=" not in rest[0]:
                    raise RepositoryError(f"{where}: malformed set line")
                key, _, value = rest[0].partition("=")
                if not (keep and key in variables):
                    variables[key] = _expand(value, variables, where)
                continue
            kind = ""
            if words[0] in ("v2", "v3", "ndx"):
                kind, words = words[0], words[1:]
            tag = ""
            if words and words[0].startswith("@"):
                tag, words = words[0][1:], words[1:]
            if not words:
                raise RepositoryError(f"{where}: no repository URL")
            url = _expand(words[0], variables, where)
            components = [_expand(w, variables, where) for w in words[1:]]
            if not kind:
                kind = "ndx" if url.endswith((".adb", ".tar.gz")) else "v2"
            if kind == "v3" or url.endswith(".adb"):
                raise RepositoryError(f"{where}: {url} is an apk v3 (ADB) repository, which "
                                      "suture does not support yet")
            if kind == "ndx":
                if components:
                    raise RepositoryError(f"{where}: components are not valid with ndx")
                add(Repository(url.rpartition("/")[0], tag, len(out), url, where), where)
                continue
            for component in components or [""]:
                full = f"{url.rstrip('/')}/{component}" if component else url
                add(Repository(full, tag, len(out), "", where), where)
    return out


def apply_mirrors(repositories: Iterable[Repository], mirrors: Mapping[str, str]
                  ) -> list[Repository]:
    out = []
    for repo in repositories:
        out.append(replace(repo, url=mirror_url(repo.url, mirrors) if repo.url else "",
                           index=mirror_url(repo.index, mirrors) if repo.index else ""))
    return out


class ApkFetcher:
    """Indexes and packages through a :class:`~suture.distro.fetch.Fetcher` (its cache, retries,
    offline mode, progress and repository host checks). ``keys``, when given, check a
    cached package before it is reused: one that fails is fetched again."""

    def __init__(self, fetcher: Fetcher, keys: Keys | None = None) -> None:
        self.fetcher = fetcher
        self.keys = keys

    def fetch_index(self, repo: Repository, arch: str, keys: Keys) -> VerifiedIndex:
        url = repo.index_url(arch)
        what = redact(url)
        if not repo.remote:
            raise RepositoryError(f"{what}: only http and https repositories can be read",
                                  url=what, hint="map it to a served copy with --mirror")
        blob = self.fetcher.fetch_meta(url, "APKINDEX.tar.gz", limit=MAX_APKINDEX)
        return read_index_archive(blob, keys, what=what, url=what)

    def fetch_package(self, repo: Repository, arch: str, filename: str, identity: str,
                      size: int) -> Path:
        """The package file, from the cache (found by ``identity``, the index's ``C:``)
        or downloaded (never revalidated by URL: a URL may serve another build).

        A cached copy is reused only when its size is the index's and, with
        ``keys``, it verifies against ``identity`` and the keys; otherwise it is
        fetched again. A download is returned unverified: the caller checks it
        (:func:`suture.distro.apk.package.read_apk`) and calls :meth:`forget` when
        it fails.
        """
        key = f"apk-identity:{identity}"
        cache = self.fetcher.cache
        ref = cache.ref(key)
        if ref is not None and "sha256" in ref:
            hit = cache.lookup(ref["sha256"])  # re-hashed: a damaged file is dropped
            if hit is not None and (not size or hit.stat().st_size == size) and \
                    self._still_good(hit, identity, filename):
                return hit
        url = repo.package_url(arch, filename)
        if not repo.remote:
            raise RepositoryError(f"{redact(url)}: only http and https repositories can be "
                                  "read", url=redact(url))
        if self.fetcher.offline:
            raise OfflineCacheMiss(f"{filename} ({redact(url)})", url=redact(url))
        path, sha256 = self.fetcher.download(url, filename, size=size or None,
                                             limit=MAX_PACKAGE)
        cache.set_ref(key, sha256, etag=None, last_modified=None)
        return path

    def _still_good(self, path: Path, identity: str, filename: str) -> bool:
        if self.keys is None:
            return True
        try:
            read_apk(path, identity=identity, keys=self.keys, what=filename, members=False)
        except SutureError as exc:
            log.info("cache: %s no longer verifies (%s): fetching it again", filename, exc)
            return False
        return True

    def forget(self, identity: str) -> None:
        """Stop finding ``identity`` in the cache (its file failed verification)."""
        self.fetcher.cache.set_ref(f"apk-identity:{identity}", "0" * 64, etag=None,
                                   last_modified=None)
