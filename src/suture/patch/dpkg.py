"""The dpkg engine: Debian and Ubuntu images, regular, slim and distroless.

prepare: read the dpkg database and the image's apt configuration out of the
layers, find the repositories (adding the release's security and updates suites
when the image lacks them), verify their Release files against the image's own
keyrings (plus the user's, plus this host's distribution keyrings as a reported
fallback for images that carry none) and load their Packages indexes.
plan: the resolver decides. fetch: verified .debs into the cache, in parallel.
build: unpack natively into layer entries and rewrite the database.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from suture.distro.dpkg.arch import deb_architecture
from suture.distro.dpkg.control import InstalledPackage, parse_status
from suture.distro.dpkg.release import Keyring, unverified_release
from suture.distro.dpkg.relevant import relevant_stanzas
from suture.distro.dpkg.repo import (
    AptFetcher,
    AptRepository,
    PackageEntry,
    dist_url,
    keyring_for,
    keyring_paths,
    parse_packages_index,
    redact,
)
from suture.distro.dpkg.repoerrors import SignatureError
from suture.distro.dpkg.sources import (
    SOURCES_DIR,
    SOURCES_LIST,
    SourceEntry,
    add_standard_suites,
    apply_mirrors,
    parse_sources_files,
    unique_sources,
)
from suture.errors import PackageDBError, SutureError
from suture.inspect import Inspection
from suture.oci.fs import FileEntry, read_files
from suture.oci.image import Image
from suture.patch.engine import Build, fetch_parallel, map_parallel, package_fetcher
from suture.patch.model import PatchOptions
from suture.patch.results import derived_key, load_blobs, store_blobs
from suture.plan import Plan, Update
from suture.reports.model import Finding

if TYPE_CHECKING:
    from suture.distro.dpkg.apply import ReadDeb

log = logging.getLogger(__name__)

STATUS = "var/lib/dpkg/status"
STATUS_D = "var/lib/dpkg/status.d/"
INFO = "var/lib/dpkg/info/"
ARCH_FILE = "var/lib/dpkg/arch"
HOST_KEYRINGS = (Path("/usr/share/keyrings/debian-archive-keyring.gpg"),
                 Path("/usr/share/keyrings/ubuntu-archive-keyring.gpg"))


@dataclass
class DpkgState:
    image: Image
    inspection: Inspection
    options: PatchOptions
    files: dict[str, FileEntry]
    installed: list[InstalledPackage]
    architecture: str
    foreign: tuple[str, ...]
    distroless: bool
    candidates: list[PackageEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fetcher: AptFetcher | None = None
    # .debs read as soon as they were downloaded (beside the other downloads), and
    # the directory their large files were spooled to (see fetch).
    preread: dict[Path, ReadDeb] = field(default_factory=dict)
    spool: Path | None = None

    def _arch(self, arch: str) -> str:
        # As the resolver and dpkg key packages: "all" stands for the native architecture,
        # so a package that moves between "all" and native is one package upgraded.
        return self.architecture if arch == "all" else arch

    def candidate(self, update: Update) -> PackageEntry:
        """The repository entry ``update`` installs."""
        return self._candidates[(update.name, update.to_version, update.architecture)]

    def replaced(self, update: Update) -> InstalledPackage | None:
        """The installed package ``update`` upgrades (None when it is newly installed)."""
        if update.from_version is None:
            return None
        return self._installed.get((update.name, self._arch(update.architecture)))

    @functools.cached_property
    def _candidates(self) -> dict[tuple[str, str, str], PackageEntry]:
        return {(c.package, c.version, c.architecture): c for c in self.candidates}

    @functools.cached_property
    def _installed(self) -> dict[tuple[str, str], InstalledPackage]:
        return {(p.name, self._arch(p.architecture)): p for p in self.installed}

    # ----------------------------------------------------------------- plan
    def plan(self, findings: list[Finding] | None) -> Plan:
        from suture.plan.dpkg import plan_dpkg

        return plan_dpkg(self.installed, self.candidates, findings,
                         architecture=self.architecture,
                         foreign_architectures=self.foreign, notes=tuple(self.notes))

    # ---------------------------------------------------------------- fetch
    def fetch(self, plan: Plan) -> dict[str, Path]:
        """The .debs of ``plan``; each one downloaded now (not found in the cache) is
        also read for :meth:`build` on its download's thread, while the others still
        download: the unpack's decompression overlaps the network. Not the ones found
        in the cache: a kept patch layer may make the build unnecessary."""
        from suture.distro.dpkg.apply import read_deb_file

        assert self.fetcher is not None
        fetcher = self.fetcher
        spool = self._spool()

        def one(update: Update) -> tuple[str, Path]:
            entry = self.candidate(update)
            cached = fetcher.cache.path(entry.sha256).is_file()  # checked by fetch_deb
            path = fetcher.fetch_deb(entry)
            if not cached:
                try:
                    self.preread[path] = read_deb_file(path, spool)
                except SutureError as exc:  # the build reads it again and says so
                    log.debug("%s: not read ahead: %s", path.name, exc)
            return package_key(update), path

        return fetch_parallel(one, plan.updates)

    def _spool(self) -> Path:
        """Where large files of the packages wait on disk for the layer (not memory):
        made once in the run's work directory, removed by the build's cleanup (or with
        that directory, when no build follows the fetch)."""
        if self.spool is None:
            self.spool = Path(tempfile.mkdtemp(prefix="suture-debs-", dir=self.options.workdir))
        return self.spool

    # ---------------------------------------------------------------- build
    def build(self, plan: Plan, packages: dict[str, Path]) -> Build:
        from suture.distro.dpkg.apply import apply_updates, conffile_paths, database_paths

        paths, prefixes = database_paths()
        files = {p: e.data for p, e in self.files.items() if e.data is not None and (
            p in paths or p.startswith(prefixes))}
        updates = [(self.replaced(u), packages[package_key(u)]) for u in plan.updates]
        conffiles: dict[str, bytes | None] = {}
        follow: list[str] = []
        for path in conffile_paths(files, updates):
            entry = self.files.get(path)
            if entry is not None and entry.kind == "file" and entry.data is not None:
                conffiles[path] = entry.data
            elif entry is None or entry.kind == "dir":
                conffiles[path] = None
            else:
                follow.append(path)  # a symlink, a hard link, or a file outside etc/
        if follow:
            found = read_files(self.image, follow)
            for path in follow:
                hit = found.get(path)
                conffiles[path] = hit.data if hit is not None else None
        spool = self._spool()
        try:
            result = apply_updates(files, updates, conffiles=conffiles, tree=self.files,
                                   spool=spool, preconfigure=preconfigures(self.files),
                                   preread=self.preread)
        except BaseException:
            shutil.rmtree(spool, ignore_errors=True)
            raise
        finally:
            self.preread = {}
        return Build(result.entries, result.jobs, [], result.not_run, list(result.notes),
                     result.sequence, functools.partial(shutil.rmtree, spool, True))

    # ------------------------------------------------------- vulnerabilities
    def fixed_vulnerabilities(self, plan: Plan, packages: dict[str, Path],
                              build: Build) -> dict[str, tuple[str, ...]]:
        """CVEs named by the changelog entries between each upgraded package's installed
        and new *source* versions (binary versions differ from the source's for some
        packages). One changelog per source: a package whose ``.deb`` has none (its doc
        directory links to a sibling's) takes its sibling's. The changelog is found in
        the entries already unpacked, else read from the ``.deb``. A changelog that
        cannot be read is a note, never a failure."""
        from suture.distro.dpkg.changelog import (
            changelog_in,
            cves_between,
            parse_changelog,
            read_deb_changelog,
            source_version,
        )

        groups: dict[tuple[str, str], list[Update]] = {}
        for u in plan.updates:
            entry = self.candidate(u)
            key = (entry.source_name, source_version(entry.source, entry.version))
            groups.setdefault(key, []).append(u)
        found: dict[str, tuple[str, ...]] = {}
        for (source, new_version), members in sorted(groups.items()):
            upgraded = [u for u in members if u.from_version is not None]
            if not upgraded:
                continue  # newly installed packages fix nothing that was there
            try:
                data = None
                for u in members:
                    data = changelog_in(build.entries, u.name)
                    if data is None:
                        data = read_deb_changelog(packages[package_key(u)], u.name)
                    if data is not None:
                        break
                entries = parse_changelog(data) if data is not None else []
            except SutureError as exc:
                build.notes.append(f"{source}: changelog not read, its CVEs are not in "
                                   f"the VEX: {exc}")
                continue
            if not entries:
                continue
            for u in upgraded:
                old = self.replaced(u)
                if old is not None:
                    found[u.name] = cves_between(entries, old.source_version, new_version)
        return found


def package_key(update: Update) -> str:
    """How fetched packages are keyed: ``name:architecture``."""
    return f"{update.name}:{update.architecture}"


def image_architecture(image: Image) -> str:
    """The Debian architecture of ``image``'s platform."""
    platform = image.platform
    if platform is None:
        raise SutureError("the image config names no architecture")
    return deb_architecture(platform.architecture, platform.variant)


_DATA_PREFIXES = ("var/lib/dpkg/", "etc/", "usr/share/keyrings/")


APT_CONF = "etc/apt/apt.conf"
APT_CONF_D = "etc/apt/apt.conf.d/"


def preconfigures(files: Mapping[str, FileEntry]) -> bool:
    """Whether the image's apt runs debconf's ``dpkg-preconfigure`` before installing
    (a ``DPkg::Pre-Install-Pkgs`` hook naming it, as debconf's ``70debconf`` sets)."""
    for path in sorted(files):
        if path != APT_CONF and not (path.startswith(APT_CONF_D) and "/" not in
                                     path[len(APT_CONF_D):]):
            continue
        entry = files[path]
        text = (entry.data or b"").decode("utf-8", "replace") if entry.kind == "file" else ""
        for line in text.splitlines():
            line = line.strip()
            if line.startswith(("//", "#")):
                continue
            if "pre-install-pkgs" in line.lower() and "dpkg-preconfigure" in line:
                return True
    return False


def _data(files: dict[str, FileEntry], path: str) -> bytes | None:
    entry = files.get(path)
    return entry.data if entry is not None else None


def is_sources_file(path: str) -> bool:
    """Whether ``path`` is one apt reads its sources from."""
    return path == SOURCES_LIST or (path.startswith(SOURCES_DIR) and "/" not in
                                    path[len(SOURCES_DIR):] and
                                    path.endswith((".list", ".sources")))


class IndexPrefetch:
    """The Release and the native Packages index of every apt source the pass over the
    layers shows, downloaded while it goes on (the sources are usually in the first
    files of a layer; the dpkg database, the keyrings and os-release come later). What
    it keeps is what :meth:`DpkgEngine.prepare` would fetch first: the InRelease in its
    fetcher's memory (verified there, as always, against the keyring of the whole
    tree) and the indexes in the content-addressed cache, named by the SHA-256 the
    still unverified Release gives them (prepare looks them up by the SHA-256 of the
    verified one: a wrong or forged file is never used, only downloaded in vain). A
    suite the image's os-release adds, or a foreign architecture, is left to prepare.

    In a dry run the indexes are decompressed here too. Otherwise only downloaded: the
    scripts' root is then being extracted beside the pass, both cores are busy, and
    decompressing bookworm's main index (45 MB) here slowed the pass by more than it
    saved (docs/benchmarks.md)."""

    def __init__(self, options: PatchOptions, architecture: str) -> None:
        self.fetcher = package_fetcher(options, "apt", AptFetcher)
        self._decompress = options.dry_run
        self._architecture = architecture
        self._mirrors = options.mirrors
        self._started: set[tuple[str, str]] = set()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="suture-prefetch")
        self._closed = False

    def offer(self, path: str, data: bytes) -> None:
        if self._closed or not is_sources_file(path):
            return
        try:
            entries = unique_sources(e for e in parse_sources_files({path: data})
                                     if e.is_binary)
            if self._mirrors:
                entries = apply_mirrors(entries, self._mirrors)
        except SutureError:
            # prepare refuses the image for it: start nothing more, drop what waits.
            self._closed = True
            self._pool.shutdown(wait=False, cancel_futures=True)
            return
        for entry in entries:
            suite = (entry.uri.rstrip("/"), entry.suite)
            if suite not in self._started and len(self._started) < MAX_PREFETCH:
                self._started.add(suite)
                self._pool.submit(self._fetch, entry)

    def _fetch(self, entry: SourceEntry) -> None:
        try:
            base = dist_url(entry.uri, entry.suite)
            url = base + "/InRelease"
            release = unverified_release(self.fetcher.fetch_meta(url, "InRelease"),
                                         what=redact(url))
            repo = AptRepository(self.fetcher, entry.uri.rstrip("/"), entry.suite, release, base)
            if entry.architectures and self._architecture not in entry.architectures:
                return
            for component in entry.components or ("main",):
                if repo.packages_id(component, self._architecture) is None:
                    continue
                if self._decompress:
                    repo.fetch_packages(component, self._architecture)
                else:
                    repo.download_packages(component, self._architecture)
        except Exception as exc:  # prepare fetches it again and says why
            log.debug("prefetch of %s %s: %s", redact(entry.uri), entry.suite, exc)

    def wait(self) -> None:
        """Until what was started is done."""
        self._closed = True
        self._pool.shutdown(wait=True)

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)


# The suites (URI and suite) a prefetch starts on at most; more are prepare's alone.
MAX_PREFETCH = 16


class DpkgEngine:
    family: ClassVar[str] = "dpkg"
    data_prefixes: ClassVar[tuple[str, ...]] = _DATA_PREFIXES
    purl_type: ClassVar[str] = "deb"

    def __init__(self) -> None:
        self._prefetch: IndexPrefetch | None = None

    def prefetch(self, image: Image, options: PatchOptions) -> IndexPrefetch | None:
        try:
            architecture = image_architecture(image)
        except SutureError:
            return None  # prepare says so
        self._prefetch = IndexPrefetch(options, architecture)
        return self._prefetch

    # -------------------------------------------------------------- prepare
    def prepare(self, image: Image, inspection: Inspection, options: PatchOptions,
                tree: Mapping[str, FileEntry]) -> DpkgState:
        # The tree holds every path's metadata (apply needs it) and the contents of the
        # dpkg database, of etc/ (apt config, keyrings, conffiles) and of keyrings.
        files = dict(tree)
        status = _data(files, STATUS)
        distroless = status is None
        installed: list[InstalledPackage] = []
        if status is not None:
            installed = parse_status(status, source="/" + STATUS)
        else:
            for path in sorted(files):
                if path.startswith(STATUS_D) and not path.endswith(".md5sums"):
                    data = files[path].data or b""
                    installed.extend(parse_status(data, source="/" + path))
            if not installed:
                raise PackageDBError("no installed packages", path="/" + STATUS)
        arch = image_architecture(image)
        foreign_text = (_data(files, ARCH_FILE) or b"").decode(errors="replace").split()
        foreign = tuple(a for a in foreign_text if a != arch)
        state = DpkgState(image, inspection, options, files, installed, arch, foreign,
                          distroless)
        self._load_repositories(state)
        return state

    def _source_entries(self, state: DpkgState) -> list[SourceEntry]:
        files = state.files
        source_files = {p: f.data for p, f in files.items()
                        if f.data is not None and is_sources_file(p)}
        # Repeats are dropped (and the distinct ones bounded) before anything is fetched.
        entries = unique_sources(e for e in parse_sources_files(source_files) if e.is_binary)
        os_release = state.inspection.os
        if os_release is None:
            raise SutureError("the image has no os-release: cannot tell its distribution")
        entries, added = add_standard_suites(entries, os_release.id, os_release.codename,
                                             architecture=state.architecture)
        if added:
            state.notes.append("added suites missing from the image's apt sources: " +
                               ", ".join(f"{e.uri} {e.suite}" for e in added))
        if not entries:
            raise SutureError(f"no apt repositories for {os_release.id} "
                              f"{os_release.version_id}")
        if state.options.mirrors:
            entries = unique_sources(apply_mirrors(entries, state.options.mirrors), limit=None)
        return entries

    def _keyring(self, state: DpkgState, entry: SourceEntry) -> Keyring:
        files = {p: f.data for p, f in state.files.items() if f.data is not None}
        extra = Keyring.from_bytes(*state.options.keyrings) if state.options.keyrings else None
        paths, _prefixes = keyring_paths([entry])
        missing = [p for p in paths if p not in files and p != "etc/apt/trusted.gpg"]
        try:
            keyring = keyring_for(entry, files, extra=extra)
        except SutureError:
            if not missing:
                raise
            keyring = extra or Keyring.from_bytes()
        if len(keyring) == 0 and state.options.host_keyrings:
            host = [p for p in HOST_KEYRINGS if p.is_file()]
            if host:
                keyring = Keyring.from_bytes(*(p.read_bytes() for p in host),
                                             names=[str(p) for p in host])
                note = ("the image has no apt keyring: verified with this host's "
                        + ", ".join(str(p) for p in host))
                if note not in state.notes:
                    state.notes.append(note)
        if len(keyring) == 0:
            raise SutureError(f"no trusted keys for {entry.uri} {entry.suite}",
                              hint="pass --keyring FILE with the archive's signing keys")
        return keyring

    def _load_repositories(self, state: DpkgState) -> None:
        options = state.options
        early = self._prefetch
        if early is not None:
            early.wait()  # what it fetched is now in the cache and its fetcher's memory
            state.fetcher = early.fetcher
        else:
            state.fetcher = package_fetcher(options, "apt", AptFetcher)
        arches = (state.architecture, *state.foreign)
        wanted_indexes: list[tuple[AptRepository, str, str, str, str]] = []
        # One Release per repository, suite and trust, and one fetch per index, however
        # many entries name them (a suite's components may be spread over lines).
        # The Releases are fetched at once (each a round trip), in the entries' order.
        entries = self._source_entries(state)
        trusts = [(entry.uri.rstrip("/"), entry.suite, entry.signed_by, entry.signed_by_key,
                   entry.check_valid_until) for entry in entries]
        first: dict[tuple[object, ...], tuple[SourceEntry, Keyring]] = {}
        for trust, entry in zip(trusts, entries, strict=True):
            if trust not in first:
                first[trust] = (entry, self._keyring(state, entry))
        fetcher = state.fetcher
        try:
            fetched = map_parallel(lambda job: fetcher.fetch_source(*job), first.values())
        except SignatureError as exc:
            if any("this host's" in note for note in state.notes):
                raise SignatureError(
                    f"{exc} (the image has no apt keyring; this host's archive "
                    "keyring was tried)", hint="pass --keyring FILE with the "
                    "archive's signing keys") from None
            raise
        releases = dict(zip(first, fetched, strict=True))
        loaded: set[tuple[str, str, str]] = set()
        for trust, entry in zip(trusts, entries, strict=True):
            repo = releases[trust]
            wanted = entry.architectures or arches
            for component in entry.components or ("main",):
                for arch in wanted:
                    if arch not in arches or (repo.url, component, arch) in loaded:
                        continue
                    loaded.add((repo.url, component, arch))
                    listed = repo.packages_id(component, arch)
                    if listed is None:
                        log.info("%s %s: the Release lists no Packages for %s",
                                 entry.suite, component, arch)
                        continue
                    where = f"{redact(repo.url)} {component}/{arch}"
                    wanted_indexes.append((repo, component, arch, where, listed))
        # Only what a resolution can reach from the installed packages is parsed: memory
        # and time follow the image's size, not the archive's. That cut is kept for the
        # same indexes (by the Release's SHA-256) and installed names (patch.results).
        roots = {p.name for p in state.installed}
        key = derived_key("relevant-stanzas", [w[4] for w in wanted_indexes], sorted(roots))
        relevant = load_blobs(options.cache_dir, key)
        if relevant is None or len(relevant) != len(wanted_indexes):
            full = map_parallel(lambda w: w[0].fetch_packages(w[1], w[2]), wanted_indexes)
            relevant = relevant_stanzas(full, roots)
            store_blobs(options.cache_dir, key, relevant)
        indexes = [(repo.uri, where) for repo, _, _, where, _ in wanted_indexes]
        for (uri, where), cut in zip(indexes, relevant, strict=True):
            state.candidates.extend(parse_packages_index(cut, base_uri=uri, source=where))
