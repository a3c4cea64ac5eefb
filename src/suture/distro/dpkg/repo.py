"""apt repositories over HTTP: verified Release, Packages indexes and ``.deb`` files.

The chain of trust is apt's: the ``InRelease`` (or ``Release`` + ``Release.gpg``)
is verified against the keyrings given (see :mod:`suture.distro.dpkg.release`);
every index is checked against the size and SHA256 the Release lists, and every
``.deb`` against the size and SHA256 its Packages entry lists. Nothing
unverified is returned or kept.

Downloads, the cache and HTTP are the families' shared
:class:`~suture.distro.fetch.Fetcher` (see :mod:`suture.distro.fetch`); the
Release files are kept by URL and revalidated, everything else is found in the
cache by the SHA256 the signed metadata gives.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from suture.distro.dpkg.control import Paragraph, parse_paragraphs
from suture.distro.dpkg.release import (
    Keyring,
    Release,
    ReleaseFile,
    check_release,
    verify_release,
)
from suture.distro.dpkg.repoerrors import (
    IndexNotListed,
    KeyringError,
    NotSigned,
    OfflineCacheMiss,
    RepositoryError,
    RepositoryNotFound,
)
from suture.distro.dpkg.sources import SourceEntry
from suture.distro.fetch import (  # re-exported: apt's callers use them from here
    CHUNK,
    DEFAULT_TIMEOUT,
    MAX_INDEX,
    STREAM_CHUNK,
    BlobCache,
    Fetcher,
    decompress_index,
    redact,
)
from suture.errors import DigestMismatch, PackageDBError, SizeMismatch

AptCache = BlobCache  # the name apt's callers and tests know

__all__ = [
    "CHUNK",
    "DEFAULT_TIMEOUT",
    "MAX_INDEX",
    "STREAM_CHUNK",
    "AptCache",
    "AptFetcher",
    "AptRepository",
    "PackageEntry",
    "decompress_index",
    "default_keyring",
    "dist_url",
    "keyring_for",
    "keyring_paths",
    "parse_packages_index",
    "redact",
]

log = logging.getLogger(__name__)

MAX_SIGNATURE = 1 << 20

# Compressed variants of an index, in the order they are preferred.
_COMPRESSIONS = ((".xz", "xz"), (".gz", "gzip"), (".bz2", "bzip2"), ("", "none"))
_ARCHIVED_HINTS = {
    "debian.org": "suite {suite!r} may have moved to archive.debian.org: map {uri} to "
                  "http://archive.debian.org/{path} as a mirror and disable the Valid-Until "
                  "check",
    "ubuntu.com": "suite {suite!r} may be end-of-life: map {uri} to "
                  "http://old-releases.ubuntu.com/ubuntu as a mirror",
}


# ---------------------------------------------------------------- Packages index


@dataclass(frozen=True)
class PackageEntry:
    """One binary package of a Packages index.

    Relation fields are kept as written (parse them with
    :func:`suture.distro.dpkg.control.parse_relations`); ``paragraph`` holds
    every field. ``base_uri`` is the repository URI that ``filename`` is
    relative to (empty when the index was parsed without one).
    """

    package: str
    version: str
    architecture: str
    filename: str
    size: int
    sha256: str  # hex
    source: str = ""
    depends: str = ""
    pre_depends: str = ""
    provides: str = ""
    multi_arch: str = ""
    essential: bool = False
    base_uri: str = ""
    paragraph: Paragraph = field(default_factory=Paragraph, compare=False, repr=False)

    @property
    def url(self) -> str:
        return self.base_uri.rstrip("/") + "/" + self.filename

    @property
    def source_name(self) -> str:
        """The source package's name (``Source`` without its ``(version)``, or the package)."""
        return self.source.split(" ", 1)[0] if self.source else self.package


def _check_relpath(path: str, what: str) -> str:
    if not path or path.startswith("/") or ".." in path.split("/") or "\\" in path:
        raise RepositoryError(f"{what}: unsafe path {path!r}")
    return path


def parse_packages_index(
    data: bytes | str, *, base_uri: str = "", source: str = "Packages"
) -> list[PackageEntry]:
    """Parse a (decompressed) Packages index into :class:`PackageEntry` values.

    Every paragraph must have Package, Version, Architecture, Filename, Size
    and SHA256, with a relative ``Filename`` without ``..``; otherwise
    :class:`~suture.errors.PackageDBError` is raised naming ``source``. Pure:
    give it bytes that were checked against a verified Release.
    """
    out: list[PackageEntry] = []
    for para in parse_paragraphs(data, source=source):
        try:
            name = para["Package"]
            size = int(para["Size"])
            sha256 = para["SHA256"].lower()
            entry = PackageEntry(
                package=name,
                version=para["Version"],
                architecture=para["Architecture"],
                filename=para["Filename"],
                size=size,
                sha256=sha256,
                source=para.get("Source", "") or "",
                depends=para.get("Depends", "") or "",
                pre_depends=para.get("Pre-Depends", "") or "",
                provides=para.get("Provides", "") or "",
                multi_arch=para.get("Multi-Arch", "") or "",
                essential=(para.get("Essential", "") or "").lower() == "yes",
                base_uri=base_uri,
                paragraph=para,
            )
        except KeyError as exc:
            who = para.get("Package", "?")
            raise PackageDBError(f"package {who}: no {exc.args[0]} field", path=source) \
                from None
        except ValueError:
            raise PackageDBError(f"package {para.get('Package')}: bad Size", path=source) \
                from None
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise PackageDBError(f"package {name}: malformed SHA256", path=source)
        try:
            _check_relpath(entry.filename, source)
        except RepositoryError:
            raise PackageDBError(f"package {name}: unsafe Filename {entry.filename!r}",
                                 path=source) from None
        out.append(entry)
    return out


# ---------------------------------------------------------------- decompression


# ---------------------------------------------------------------- fetcher


class AptFetcher(Fetcher):
    """The verified fetcher (:class:`~suture.distro.fetch.Fetcher`) with apt's
    repositories on top: signed Release files, their indexes and ``.deb`` files."""

    # ------------------------------------------------------------ repositories

    def fetch_release(
        self,
        uri: str,
        suite: str,
        keyring: Keyring,
        *,
        check_valid_until: bool = True,
        check_suite: bool = True,
    ) -> AptRepository:
        """Fetch, verify and check the Release of ``uri`` ``suite``.

        Tries ``InRelease`` and falls back to ``Release`` + ``Release.gpg`` when
        it is missing. Refusals: signature errors, an expired Release (unless
        ``check_valid_until=False``), a Release that is not ``suite`` (unless
        ``check_suite=False``). A suite the server does not have raises
        :class:`~suture.distro.dpkg.repoerrors.RepositoryNotFound` with a hint
        (a Debian or Ubuntu suite that moved to an archive host, for example).
        """
        base = dist_url(uri, suite)
        inrelease_url = base + "/InRelease"
        now = self._now()
        try:
            data = self.fetch_meta(inrelease_url, "InRelease")
            release = verify_release(keyring, inrelease=data, what=redact(inrelease_url),
                                     now=now)
            where = inrelease_url
        except (RepositoryNotFound, OfflineCacheMiss) as first:
            release_url = base + "/Release"
            try:
                data = self.fetch_meta(release_url, "Release")
            except RepositoryNotFound:
                raise RepositoryNotFound(
                    f"{redact(uri)} has no suite {suite!r} (InRelease and Release: HTTP 404)",
                    url=redact(inrelease_url), status=404, hint=_archive_hint(uri, suite),
                ) from None
            except OfflineCacheMiss:
                raise first from None
            try:
                sig = self.fetch_meta(base + "/Release.gpg", "Release.gpg", limit=MAX_SIGNATURE)
            except RepositoryNotFound:
                raise NotSigned(f"{redact(release_url)}: no InRelease and no Release.gpg",
                                url=redact(release_url)) from None
            release = verify_release(keyring, release=data, release_gpg=sig,
                                     what=redact(release_url), now=now)
            where = release_url
        check_release(release, suite=suite if check_suite else None, what=redact(where),
                      now=now, check_valid_until=check_valid_until)
        log.info("%s %s: verified, signed by %s", redact(uri), suite, ", ".join(release.signers))
        return AptRepository(self, uri.rstrip("/"), suite, release, base)

    def fetch_source(
        self,
        entry: SourceEntry,
        keyring: Keyring,
        *,
        check_valid_until: bool | None = None,
    ) -> AptRepository:
        """:meth:`fetch_release` for a sources entry, honouring its ``check-valid-until``.

        ``check_valid_until`` overrides the entry when not ``None``. The
        entry's ``trusted=yes`` is *not* honoured: metadata is always verified.
        """
        if check_valid_until is None:
            check_valid_until = entry.check_valid_until is not False
        return self.fetch_release(entry.uri, entry.suite, keyring,
                                  check_valid_until=check_valid_until)

    def fetch_deb(self, entry: PackageEntry) -> Path:
        """The ``.deb`` of ``entry`` in the cache, downloaded if needed.

        Size and SHA256 are checked while streaming (and again on a cache hit);
        a dropped connection is resumed with Range. The returned path is inside
        the cache: read it, do not move or change it.
        """
        if not entry.base_uri:
            raise RepositoryError(f"{entry.package}: entry has no repository URI")
        _check_relpath(entry.filename, entry.package)
        return self.fetch_verified(entry.url, entry.sha256, entry.size,
                                   f"{entry.package}_{entry.version}_{entry.architecture}.deb")


def dist_url(uri: str, suite: str) -> str:
    """Where a suite's Release files live: ``<uri>/dists/<suite>``, or ``<uri>/<suite>`` if flat."""
    uri = uri.rstrip("/")
    if suite.endswith("/"):
        flat = suite.rstrip("/")
        return uri if flat in ("", ".") else f"{uri}/{flat}"
    return f"{uri}/dists/{suite}"


def _archive_hint(uri: str, suite: str) -> str:
    parts = urlsplit(uri)
    host = parts.hostname or ""
    for domain, hint in _ARCHIVED_HINTS.items():
        if host == domain or host.endswith("." + domain):
            path = parts.path.strip("/") or "debian"
            return hint.format(suite=suite, uri=redact(uri), path=path)
    return f"check that {redact(uri)} serves suite {suite!r}"


# ---------------------------------------------------------------- one repository


@dataclass
class AptRepository:
    """One suite of one repository whose Release has been verified.

    ``url`` is the directory holding the Release (``<uri>/dists/<suite>``).
    """

    fetcher: AptFetcher
    uri: str
    suite: str
    release: Release
    url: str

    def index_variants(self, name: str) -> list[tuple[ReleaseFile, str]]:
        """The listed variants of index ``name`` (e.g. ``main/binary-amd64/Packages``),
        best compression first, with their compression kind."""
        files = self.release.files
        return [(files[name + ext], kind) for ext, kind in _COMPRESSIONS if name + ext in files]

    def fetch_index(self, name: str) -> bytes:
        """The decompressed content of index ``name``, verified against the Release.

        The compressed file is checked (size and SHA256) as it downloads; the
        decompressed bytes are bounded by the fetcher's ``max_index`` and, when
        the Release lists the uncompressed file too, checked against that and
        kept in the cache (a later call skips the decompression). With
        ``Acquire-By-Hash: yes`` the ``by-hash/SHA256/`` URL is tried first.
        A listed variant the server lacks (404) falls back to the next one.
        """
        _check_relpath(name, "index")
        variants = self.index_variants(name)
        if not variants:
            raise IndexNotListed(f"{redact(self.url)}: Release lists no SHA256 for {name}",
                                 url=redact(self.url))
        plain = self.release.files.get(name)
        if plain is not None:
            # A decompressed copy kept by an earlier call (checked against the Release).
            kept = self.fetcher.cache.lookup(plain.sha256, plain.size)
            if kept is not None:
                return kept.read_bytes()
        path, entry, kind = self._download_listed(variants)
        with path.open("rb") as f:
            data = decompress_index(f, kind, limit=self.fetcher.max_index,
                                    what=f"{self.url}/{entry.path}")
        if plain is not None and kind != "none":
            if len(data) != plain.size:
                raise SizeMismatch(f"{name} (decompressed)", plain.size, len(data))
            digest = hashlib.sha256(data).hexdigest()
            if digest != plain.sha256:
                raise DigestMismatch(f"{name} (decompressed)", "sha256:" + plain.sha256,
                                     "sha256:" + digest)
            self.fetcher.cache.put(data)
        return data

    def _download_listed(self, variants: list[tuple[ReleaseFile, str]]
                         ) -> tuple[Path, ReleaseFile, str]:
        """The first of ``variants`` (from :meth:`index_variants`, at least one) the
        server has, in the cache: its file, entry and compression. A variant the
        server lacks (404) falls back to the next one."""
        missing: RepositoryNotFound | None = None
        for entry, kind in variants:
            try:
                return self._fetch_listed(entry), entry, kind
            except RepositoryNotFound as exc:
                missing = exc
        assert missing is not None
        raise missing

    def _fetch_listed(self, entry: ReleaseFile) -> Path:
        url = f"{self.url}/{entry.path}"
        what = f"{self.suite}/{entry.path}"
        cached = self.fetcher.cache.lookup(entry.sha256, entry.size)
        if cached is not None:
            return cached
        if self.release.acquire_by_hash and not self.fetcher.offline:
            by_hash = f"{self.url}/{posixpath.dirname(entry.path)}/by-hash/SHA256/{entry.sha256}"
            try:
                return self.fetcher.fetch_verified(by_hash, entry.sha256, entry.size, what)
            except RepositoryNotFound:
                log.info("%s: no by-hash copy, using %s", what, redact(url))
        return self.fetcher.fetch_verified(url, entry.sha256, entry.size, what)

    def packages_id(self, component: str, architecture: str) -> str | None:
        """What names the contents of ``<component>/binary-<arch>/Packages`` without
        fetching it: the SHA-256 the verified Release gives its best variant (None when
        the Release lists none)."""
        variants = self.index_variants(self._packages_name(component, architecture))
        return variants[0][0].sha256 if variants else None

    def fetch_packages(self, component: str, architecture: str) -> bytes:
        """The verified, decompressed ``<component>/binary-<arch>/Packages``.

        For a flat repository ``component`` is ignored (``Packages`` at its root).
        """
        return self.fetch_index(self._packages_name(component, architecture))

    def download_packages(self, component: str, architecture: str) -> None:
        """``<component>/binary-<arch>/Packages`` into the cache as :meth:`fetch_packages`
        would download it (checked against the Release as it downloads), not
        decompressed: for :meth:`fetch_packages` to find later. Nothing when the Release
        lists no such index."""
        name = self._packages_name(component, architecture)
        _check_relpath(name, "index")
        variants = self.index_variants(name)
        if variants:
            self._download_listed(variants)

    def _packages_name(self, component: str, architecture: str) -> str:
        if self.suite.endswith("/"):
            return "Packages"
        return f"{component}/binary-{architecture}/Packages"

    def packages(self, component: str, architecture: str) -> list[PackageEntry]:
        """:meth:`fetch_packages` parsed; entries carry this repository's URI."""
        name = self._packages_name(component, architecture)
        return parse_packages_index(self.fetch_index(name), base_uri=self.uri,
                                    source=f"{redact(self.url)}/{name}")

    def fetch_deb(self, entry: PackageEntry) -> Path:
        """:meth:`AptFetcher.fetch_deb`; an entry without ``base_uri`` gets this repository's."""
        if not entry.base_uri:
            entry = replace(entry, base_uri=self.uri)
        return self.fetcher.fetch_deb(entry)


# ---------------------------------------------------------------- trust anchors

TRUSTED_GPG = "etc/apt/trusted.gpg"
TRUSTED_GPG_D = "etc/apt/trusted.gpg.d/"


def default_keyring(files: Mapping[str, bytes]) -> Keyring:
    """apt's default trust: ``trusted.gpg`` and ``trusted.gpg.d/*.gpg`` / ``*.asc``.

    ``files`` maps root-relative (or absolute) paths to content, as read from
    an image or a host.
    """
    by_path = {p.lstrip("/"): d for p, d in files.items()}
    names = [TRUSTED_GPG] if TRUSTED_GPG in by_path else []
    names += sorted(p for p in by_path if p.startswith(TRUSTED_GPG_D)
                    and "/" not in p[len(TRUSTED_GPG_D):] and p.endswith((".gpg", ".asc")))
    return Keyring.from_bytes(*(by_path[n] for n in names), names=["/" + n for n in names])


def keyring_for(entry: SourceEntry, files: Mapping[str, bytes], *,
                extra: Keyring | None = None) -> Keyring:
    """The keys apt would trust for ``entry``, from the files of an image.

    An inline ``Signed-By`` key block is used alone; ``Signed-By`` paths are
    read from ``files`` (a missing one raises
    :class:`~suture.distro.dpkg.repoerrors.KeyringError`); ``Signed-By``
    fingerprints select from the default keyring; without ``Signed-By`` the
    default keyring (:func:`default_keyring`) is used. ``extra`` (keys the
    user names) is added in every case.
    """
    by_path = {p.lstrip("/"): d for p, d in files.items()}
    if entry.signed_by_key is not None:
        keyring = Keyring.from_bytes(entry.signed_by_key, names=[f"{entry.origin} Signed-By"])
    elif entry.signed_by:
        paths = [s for s in entry.signed_by if "/" in s]
        fingerprints = [s for s in entry.signed_by if "/" not in s]
        blobs: list[bytes] = []
        for p in paths:
            if p.lstrip("/") not in by_path:
                raise KeyringError(f"{entry.origin}: Signed-By keyring {p} not found")
            blobs.append(by_path[p.lstrip("/")])
        # Fingerprints select keys from the files named, or from the default keyring.
        keyring = Keyring.from_bytes(*blobs, names=paths) if paths else default_keyring(by_path)
        if fingerprints:
            keyring = keyring.restrict(fingerprints)
    else:
        keyring = default_keyring(by_path)
    return keyring + extra if extra is not None else keyring


def keyring_paths(entries: Iterable[SourceEntry]) -> tuple[list[str], list[str]]:
    """Root-relative paths and prefixes to read from an image to build keyrings."""
    paths = {TRUSTED_GPG}
    for e in entries:
        paths.update(s.lstrip("/") for s in e.signed_by if "/" in s)
    return sorted(paths), [TRUSTED_GPG_D]

