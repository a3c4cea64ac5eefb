"""The rpm engine: RHEL and its rebuilds, Fedora, Amazon Linux, Azure Linux images, with
or without ``rpm`` or ``dnf`` in them.

prepare: read the rpmdb (``usr/lib/sysimage/rpm`` or ``var/lib/rpm``, symlinks
followed; sqlite, SUSE's ndb or Berkeley DB, the first found in that order; else the
``var/lib/rpmmanifest`` manifests of a distroless Azure Linux or CBL-Mariner image, whose
packages take their dependencies from the repositories), os-release, the basearch from the
image platform, ``$releasever`` (as dnf: the installed
``system-release(releasever)``; ``latest`` on Amazon Linux 2023, as AWS documents
for updates), the variables of ``etc/dnf/vars`` and ``etc/yum/vars``, the
enabled repositories of ``etc/yum.repos.d`` (``--mirror`` applied) and the trusted
keys: the ``gpgkey=file:///...`` files the repositories name, read from the image, the
armored keys of the rpmdb's ``gpg-pubkey`` entries and the user's ``--keyring``
files. Each repository's metadata is fetched verified and its packages filtered by
its ``excludepkgs``/``includepkgs`` and to the image's architectures. plan: the
resolver decides (:mod:`suture.plan.rpm`). fetch: each package into the cache,
verified by primary's checksum and, when its repository has ``gpgcheck``, its header
signature. build: native unpack into layer entries and the rewritten rpmdb
(:mod:`suture.distro.rpm.apply`). The image's ``rpm`` is never used.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import unquote, urlsplit

from suture.distro.detect import OSRelease
from suture.distro.fetch import Fetcher
from suture.distro.rpm.header import Tag
from suture.distro.rpm.model import SENSE_EQUAL, Dep, PackageInfo, RepoPackage
from suture.distro.rpm.modules import (
    MODULES_D,
    ModularFilter,
    parse_module_states,
    parse_modules_yaml,
)
from suture.distro.rpm.package import RpmArchive, read_rpm
from suture.distro.rpm.repo import (
    ZYPP_REPOS_D,
    RpmFetcher,
    RpmRepository,
    parse_repo_files,
    parse_zypp_repo_files,
    releasever_of,
    repo_variables,
)
from suture.distro.rpm.rpmdb import BACKENDS, InstalledPackage, backend_files, read_db
from suture.distro.rpm.sign import Keyring
from suture.distro.rpm.version import dep_matches
from suture.errors import PackageDBError, SutureError
from suture.inspect import Inspection
from suture.oci.fs import FileEntry, read_files, resolve
from suture.oci.image import Image
from suture.patch.engine import Build, fetch_parallel, package_fetcher
from suture.patch.model import PatchOptions
from suture.plan import Plan, Update

if TYPE_CHECKING:
    from suture.distro.rpm.apply import RpmUpdate
    from suture.reports.model import Finding

log = logging.getLogger(__name__)

DB_DIRS = ("usr/lib/sysimage/rpm", "var/lib/rpm")  # newest layout first
SQLITE = "rpmdb.sqlite"
REPOS_D = "etc/yum.repos.d/"
DNF_CONF = "etc/dnf/dnf.conf"
OS_RELEASE = ("etc/os-release", "usr/lib/os-release")
_DATA_PREFIXES = ("etc/yum.repos.d/", "etc/dnf/", "etc/yum/", "etc/pki/rpm-gpg/",
                  "etc/os-release", "usr/lib/os-release", "var/lib/rpm/",
                  "usr/lib/sysimage/rpm/", "etc/zypp/", "var/lib/rpmmanifest/")
_MANIFEST = "var/lib/rpmmanifest/container-manifest-2"
# The image platform's architecture (GOARCH) -> rpm's basearch.
_BASEARCH = {"amd64": "x86_64", "arm64": "aarch64", "ppc64le": "ppc64le", "s390x": "s390x",
             "386": "i686", "arm": "armv7hl", "riscv64": "riscv64"}
# 32-bit arches installed beside a 64-bit basearch (multilib).
_MULTILIB = {"x86_64": ("i686",), "ppc64": ("ppc",), "s390x": ("s390",)}
MAX_KEY_FILE = 8 << 20


def _data(files: Mapping[str, FileEntry], links: Mapping[str, str], path: str
          ) -> bytes | None:
    entry = files.get(resolve(path, links))
    if entry is None or entry.kind != "file":
        return None
    return entry.data


def _under(files: Mapping[str, FileEntry], links: Mapping[str, str], prefix: str
           ) -> dict[str, bytes]:
    """Regular files directly under ``prefix`` (symlinks followed), by their path as
    asked (``prefix`` + base name)."""
    real = resolve(prefix.rstrip("/"), links) + "/"
    out: dict[str, bytes] = {}
    for path in files:
        if not path.startswith(real) or "/" in path[len(real):]:
            continue
        target = files.get(resolve(path, links))
        if target is not None and target.kind == "file" and target.data is not None:
            out[prefix + path[len(real):]] = target.data
    return out


def _db_copy(directory: Path, files: Mapping[str, bytes]) -> Path:
    """``files`` (the rpmdb's, by name) written into ``directory``; ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def basearch(architecture: str) -> str:
    """rpm's basearch for an OCI platform architecture (``amd64`` -> ``x86_64``)."""
    return _BASEARCH.get(architecture, architecture)


def releasever(installed: Sequence[InstalledPackage], release: OSRelease | None) -> str:
    """dnf's ``$releasever`` for the image; ``latest`` on Amazon Linux 2023, whose
    installed ``system-release`` locks it to the image's own snapshot (AWS documents
    ``dnf --releasever=latest upgrade`` to update)."""
    if release is not None and release.id == "amzn" and release.version_id == "2023":
        return "latest"
    return releasever_of([p.info for p in installed],
                         release.version_id if release is not None else "")


def package_key(update: Update, updates: Sequence[Update]) -> str:
    """The key of ``update``'s file in :meth:`RpmState.fetch`'s answer: the name, or
    ``name.arch`` when the plan updates the name in two architectures (multilib)."""
    same = sum(1 for u in updates if u.name == update.name)
    return update.name if same == 1 else f"{update.name}.{update.architecture}"


def _wanted(name: str, repo: RpmRepository) -> bool:
    if any(fnmatch.fnmatchcase(name, pat) for pat in repo.excludepkgs):
        return False
    return not repo.includepkgs or any(fnmatch.fnmatchcase(name, pat)
                                       for pat in repo.includepkgs)


def _zypper(release: OSRelease | None) -> bool:
    """SUSE's images: zypper runs one rpm transaction per package."""
    if release is None:
        return False
    return any("suse" in n for n in (release.id, *release.id_like)) or release.id == "sles"


def _platform(files: Mapping[str, FileEntry], links: Mapping[str, str]) -> str | None:
    """The stream of os-release's ``PLATFORM_ID`` (``platform:el8`` gives ``el8``)."""
    for path in ("etc/os-release", "usr/lib/os-release"):
        data = _data(files, links, path)
        if data is None:
            continue
        for line in data.decode("utf-8", "replace").splitlines():
            key, _, value = line.strip().partition("=")
            if key == "PLATFORM_ID":
                return value.strip().strip("\"'").partition(":")[2] or None
        return None
    return None


def _modular_filter(state: RpmState) -> ModularFilter | None:
    """dnf's module-stream filter for the repositories' ``modules.yaml`` and the image's
    ``etc/dnf/modules.d`` (None: no repository has module metadata)."""
    assert state.fetcher is not None
    if not state.fetcher.modules:
        return None
    metadata = [parse_modules_yaml(data, what=f"{rid}: modules.yaml")
                for rid, data in state.fetcher.modules.items()]
    states = parse_module_states(_under(state.files, state.links, MODULES_D))
    modular = ModularFilter(metadata, states, _platform(state.files, state.links))
    for name, stream in sorted(modular.active.items()):
        log.info("module %s: stream %s", name, stream)
    if modular.active:
        state.notes.append("module streams kept: " + ", ".join(
            f"{n}:{s}" for n, s in sorted(modular.active.items())))
    return modular


def _manifest_infos(state: RpmState) -> None:
    """A manifest names packages but not what they provide or require: each installed
    package takes its dependencies and files from the repositories' entry of the same
    build (what dnf would know of it), when they have one."""
    by_nevra = {c.nevra: c for c in state.candidates}
    found = 0
    for i, p in enumerate(state.installed):
        c = by_nevra.get(p.info.nevra)
        if c is None:
            continue
        found += 1
        info = PackageInfo(p.info.name, p.info.epoch, p.info.version, p.info.release,
                           p.info.arch, c.provides, c.requires, c.obsoletes, c.conflicts,
                           c.files, c.sourcerpm or p.info.sourcerpm)
        state.installed[i] = InstalledPackage(p.hnum, p.header, info)
    missing = len(state.installed) - found
    if missing:
        state.notes.append(f"{missing} package(s) of the rpm manifest are not in the "
                           "repositories: their dependencies are unknown")


@dataclass
class RpmState:
    image: Image
    inspection: Inspection
    options: PatchOptions
    files: dict[str, FileEntry]
    links: dict[str, str]
    installed: list[InstalledPackage]
    db_dir: str  # the directory holding the rpmdb, symlinks resolved
    db_files: dict[str, bytes]  # the backend's files there, by name
    arch: str
    keys: Keyring
    repositories: list[RpmRepository] = field(default_factory=list)
    candidates: list[RepoPackage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fetcher: RpmFetcher | None = None
    backend: str = "sqlite"  # of rpmdb.BACKENDS

    # ----------------------------------------------------------------- plan
    def plan(self, findings: list[Finding] | None) -> Plan:
        from suture.plan.rpm import plan_rpm

        infos = [p.info for p in self.installed if p.info.name != "gpg-pubkey"]
        return plan_rpm(infos, self.candidates, findings, architecture=self.arch,
                        notes=tuple(self.notes))

    # ---------------------------------------------------------------- fetch
    def _candidate(self, u: Update) -> RepoPackage:
        for c in self.candidates:
            if c.name == u.name and c.arch == u.architecture and c.evr == u.to_version:
                return c
        raise SutureError(f"{u.name} {u.to_version} is not in the repositories")  # pragma: no cover

    def _repo(self, pkg: RepoPackage) -> RpmRepository:
        return next(r for r in self.repositories if r.id == pkg.repo_id)

    def _read(self, pkg: RepoPackage, path: Path) -> RpmArchive:
        keys = self.keys if self._repo(pkg).gpgcheck else None
        try:
            return read_rpm(path, what=f"{pkg.repo_id}: {pkg.nevra}", keys=keys)
        except SutureError:
            if self.fetcher is not None:
                self.fetcher.forget(pkg)
            raise

    def fetch(self, plan: Plan) -> dict[str, Path]:
        assert self.fetcher is not None
        fetcher = self.fetcher
        updates = plan.updates

        def one(u: Update) -> tuple[str, Path]:
            pkg = self._candidate(u)
            path = fetcher.fetch_package(pkg)
            self._read(pkg, path)
            return package_key(u, updates), path

        return fetch_parallel(one, updates)

    # ---------------------------------------------------------------- build
    def build(self, plan: Plan, packages: dict[str, Path]) -> Build:
        from suture.distro.rpm.apply import RpmUpdate, apply_updates

        updating = {(u.name, u.architecture) for u in plan.updates}
        rpm_updates = []
        taken: set[int] = set()
        for u in plan.updates:
            pkg = self._candidate(u)
            archive = self._read(pkg, packages[package_key(u, plan.updates)])
            old = next((p for p in self.installed if p.info.name == u.name
                        and p.info.arch == u.architecture), None) if u.from_version else None
            obsoleted = []
            for p in self.installed:
                info = p.info
                if (p.hnum in taken or info.name == u.name or info.name == "gpg-pubkey"
                        or (info.name, info.arch) in updating):
                    continue
                me = Dep(info.name, SENSE_EQUAL, info.evr)
                if any(dep_matches(o, me) for o in pkg.obsoletes):
                    obsoleted.append(p)
                    taken.add(p.hnum)
            if old is not None:
                taken.add(old.hnum)
            rpm_updates.append(RpmUpdate(old, archive, tuple(obsoleted)))
        notes: list[str] = []
        if self.backend == "manifest":
            rpm_updates, notes = self._known_headers(rpm_updates)
        workdir = Path(tempfile.mkdtemp(prefix="suture-rpm-"))
        try:
            db_file = _db_copy(workdir / "rpmdb-source", self.db_files)
            if self.backend == "sqlite":
                db_file = db_file / SQLITE
            epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
            now = int(epoch) if epoch.isdigit() else int(time.time())
            result = apply_updates(self.installed, rpm_updates, tree=self.files,
                                   read=self._current,
                                   db_path=f"{self.db_dir}/{BACKENDS[self.backend][0]}",
                                   backend=self.backend,
                                   db_file=db_file, install_time=now, tid=now,
                                   workdir=workdir, per_package=_zypper(self.inspection.os))
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        inner = result.cleanup

        def cleanup() -> None:
            try:
                if inner is not None:
                    inner()
            finally:
                shutil.rmtree(workdir, ignore_errors=True)

        jobs, not_run = result.jobs, list(result.not_run)
        if self.backend == "manifest":  # no database for scriptlets to see: none run
            not_run += [(j.describe(), "a distroless image (an rpm manifest, no rpm "
                         "database): scriptlets are not run, as its tooling does not")
                        for j in jobs]
            jobs = []
        return Build(result.entries, jobs, result.scratch, not_run,
                     [*notes, *result.notes], cleanup=cleanup)

    def _known_headers(self, updates: list[RpmUpdate]) -> tuple[list[RpmUpdate], list[str]]:
        """A manifest says nothing of a package's files. For each package an update
        replaces, its own build is fetched from the repositories (they keep earlier
        builds) so the files the new one drops are removed; one they no longer have
        keeps its files, with a note."""
        from suture.distro.rpm.apply import RpmUpdate

        assert self.fetcher is not None
        known: dict[int, InstalledPackage] = {}
        notes = []
        for u in updates:
            for old in (u.old, *u.obsoleted):
                if old is None:
                    continue
                pkg = next((c for c in self.candidates if c.nevra == old.info.nevra), None)
                if pkg is None:
                    notes.append(f"{old.info.nevra} is not in the repositories: files it "
                                 "had that its update does not are left in place")
                    continue
                archive = self._read(pkg, self.fetcher.fetch_package(pkg))
                known[old.hnum] = InstalledPackage(old.hnum, archive.header, old.info)
        self.installed = [known.get(p.hnum, p) for p in self.installed]
        return [RpmUpdate(known.get(u.old.hnum, u.old) if u.old is not None else None, u.new,
                          tuple(known.get(o.hnum, o) for o in u.obsoleted))
                for u in updates], notes

    def _current(self, path: str) -> bytes | None:
        """The contents of the image's file at ``path`` (root-relative), None when it
        is not a regular file."""
        real = resolve(path, self.links)
        entry = self.files.get(real)
        if entry is None or entry.kind != "file":
            return None
        if entry.data is not None:
            return entry.data
        hit = read_files(self.image, [real]).get(real)
        return hit.data if hit is not None and hit.kind == "file" else None

    # ------------------------------------------------------- vulnerabilities
    def fixed_vulnerabilities(self, plan: Plan, packages: dict[str, Path],
                              build: Build) -> dict[str, tuple[str, ...]]:
        """Nothing yet: rpm changelogs name CVEs (Red Hat's ``Resolves: CVE-...``) and
        could be read here later; an update-all run's VEX states no fixes until then."""
        return {}


class RpmEngine:
    family: ClassVar[str] = "rpm"
    data_prefixes: ClassVar[tuple[str, ...]] = _DATA_PREFIXES
    purl_type: ClassVar[str] = "rpm"

    def prefetch(self, image: Image, options: PatchOptions) -> None:
        """Nothing is started early (yet): prepare reads the repositories."""
        return None

    # -------------------------------------------------------------- prepare
    def prepare(self, image: Image, inspection: Inspection, options: PatchOptions,
                tree: Mapping[str, FileEntry]) -> RpmState:
        files = dict(tree)
        links = {p: e.linkname for p, e in files.items() if e.kind == "symlink"}
        db_dir, backend, data = self._database(image, files, links)
        with tempfile.TemporaryDirectory(prefix="suture-rpmdb-") as tmp:
            try:
                installed = read_db(backend, _db_copy(Path(tmp), data))
            except PackageDBError as exc:  # name the image's file, not the copy
                message = str(exc).removeprefix(f"{exc.path}: ")
                raise PackageDBError(message, path=f"/{db_dir}/{Path(exc.path).name}") \
                    from exc
        if not any(p.info.name != "gpg-pubkey" for p in installed):
            raise PackageDBError("no installed packages",
                                 path=f"/{db_dir}/{BACKENDS[backend][0]}")
        platform = image.platform
        if platform is None:
            raise SutureError("the image config names no architecture")
        arch = basearch(platform.architecture)
        release = inspection.os
        rel = releasever(installed, release)
        var_files = {**_under(files, links, "etc/yum/vars/"),
                     **_under(files, links, "etc/dnf/vars/")}
        variables = repo_variables(var_files, basearch=arch, releasever=rel)
        if rel == "latest":
            variables["releasever"] = "latest"  # Amazon Linux 2023: over a vars file too
        repo_files = {p: b for p, b in _under(files, links, REPOS_D).items()
                      if p.endswith(".repo")}
        every = parse_repo_files(repo_files, variables, dnf_conf=_data(files, links, DNF_CONF))
        zypp_files = {p: b for p, b in _under(files, links, ZYPP_REPOS_D).items()
                      if p.endswith(".repo")}
        every += parse_zypp_repo_files(zypp_files, variables, first=len(every))
        repos = [r for r in every if r.enabled]
        if not repos:
            raise SutureError("the image has no enabled rpm repositories (/etc/yum.repos.d, "
                              "/etc/zypp/repos.d)",
                              hint="an image built without them cannot be patched from its "
                                   "own configuration")
        keys = self._keys(files, links, repos, installed, options)
        state = RpmState(image, inspection, options, files, links, installed, db_dir, data,
                         arch, keys, repositories=repos, backend=backend)
        if rel == "latest":
            state.notes.append("Amazon Linux 2023: repositories read at releasever=latest")
        log.info("rpm: basearch %s, releasever %s, %d repositories", arch, rel, len(repos))
        self._load(state)
        if backend == "manifest":
            _manifest_infos(state)
        return state

    @staticmethod
    def _database(image: Image, files: Mapping[str, FileEntry], links: Mapping[str, str]
                  ) -> tuple[str, str, dict[str, bytes]]:
        """(directory, backend, its files by name): the first of sqlite, ndb and
        Berkeley DB found in :data:`DB_DIRS`, else a distroless image's manifests."""
        for backend, (main, _said) in BACKENDS.items():
            if backend == "manifest":  # not a database: var/lib/rpmmanifest, below
                continue
            for where in DB_DIRS:
                real = resolve(where, links)
                entry = files.get(f"{real}/{main}")
                if entry is None or entry.kind != "file":
                    continue
                wal = files.get(f"{real}/{SQLITE}-wal")
                if backend == "sqlite" and wal is not None and wal.size:
                    raise PackageDBError("the rpm database has an uncheckpointed write-ahead "
                                         "log; it is not supported yet",
                                         path=f"/{real}/{SQLITE}-wal")
                names = [p[len(real) + 1:] for p, e in files.items()
                         if p.startswith(real + "/") and "/" not in p[len(real) + 1:]
                         and e.kind == "file"]
                out: dict[str, bytes] = {}
                for name in backend_files(backend, names):
                    path = f"{real}/{name}"
                    data = files[path].data
                    if data is None:  # larger than the tree's ceiling
                        hit = read_files(image, [path], max_file=4 << 30)
                        found = hit.get(path)
                        data = found.data if found is not None else None
                    if data is None:
                        raise PackageDBError("cannot read the rpm database", path=f"/{path}")
                    out[name] = data
                log.info("rpm database: %s in /%s", _said, real)
                return real, backend, out
        manifest = files.get(_MANIFEST)
        if manifest is not None and manifest.kind == "file":
            directory = _MANIFEST.rpartition("/")[0]
            out = {}
            for name in backend_files("manifest", [p.rpartition("/")[2] for p in files
                                                   if p.startswith(directory + "/")]):
                data = _data(files, links, f"{directory}/{name}")
                if data is None:
                    raise PackageDBError("cannot read the rpm manifest",
                                         path=f"/{directory}/{name}")
                out[name] = data
            log.info("rpm manifest in /%s (a distroless image: no rpm database)", directory)
            return directory, "manifest", out
        raise PackageDBError("no rpm database in the image",
                             path=f"/{DB_DIRS[1]}/{SQLITE}")

    @staticmethod
    def _keys(files: Mapping[str, FileEntry], links: Mapping[str, str],
              repos: Sequence[RpmRepository], installed: Sequence[InstalledPackage],
              options: PatchOptions) -> Keyring:
        """The union of the repositories' ``file://`` keys in the image, the rpmdb's
        imported keys and the user's ``--keyring`` files. Keys elsewhere (https) are
        not fetched: pass them with ``--keyring``. A key of the image that does not
        load is skipped with a warning; a ``--keyring`` file that does not is an error."""
        found: list[tuple[str, bytes]] = []
        seen: set[str] = set()
        for repo in repos:
            for url in repo.gpgkeys:
                parts = urlsplit(url)
                if parts.scheme != "file":
                    log.warning("%s: gpgkey %s is not a file in the image; pass it with "
                                "--keyring", repo.id, url)
                    continue
                path = unquote(parts.path).lstrip("/")
                if path in seen:
                    continue
                seen.add(path)
                body = _data(files, links, path)
                if body is None:
                    log.warning("%s: gpgkey %s is not in the image", repo.id, url)
                    continue
                found.append((f"/{path}", body[:MAX_KEY_FILE + 1]))
        for p in installed:
            if p.info.name != "gpg-pubkey":
                continue
            text = p.header.string(Tag.DESCRIPTION)
            if text and "BEGIN PGP PUBLIC KEY BLOCK" in text:
                found.append((f"rpmdb {p.info.nevra}", text.encode()))
        usable = []
        for origin, body in found:  # a broken key in the image is skipped, not fatal
            try:
                Keyring.load([(origin, body)])
            except SutureError as exc:
                log.warning("%s: not used: %s", origin, exc)
                continue
            usable.append((origin, body))
        usable += [(f"--keyring #{i + 1}", body) for i, body in enumerate(options.keyrings)]
        keys = Keyring.load(usable)  # the user's --keyring files must all load
        if len(keys) == 0 and any(r.gpgcheck or r.repo_gpgcheck for r in repos):
            raise SutureError("no trusted rpm keys: the repositories check signatures but no "
                              "key is in the image or its rpm database",
                              hint="pass --keyring FILE with the repository's public key")
        return keys

    @staticmethod
    def _load(state: RpmState) -> None:
        options = state.options
        state.fetcher = RpmFetcher(package_fetcher(options, "rpm", Fetcher),
                                   mirrors=options.mirrors)
        arches = {state.arch, "noarch"}
        arches.update(a for a in _MULTILIB.get(state.arch, ())
                      if any(p.info.arch == a for p in state.installed))
        by_repo: list[tuple[RpmRepository, list[RepoPackage]]] = []
        for repo in state.repositories:
            pkgs = state.fetcher.fetch_repository(repo, keys=state.keys)
            by_repo.append((repo, [p for p in pkgs
                                   if p.arch in arches and _wanted(p.name, repo)]))
        modular = _modular_filter(state)
        for repo, kept in by_repo:
            if modular:
                kept = [p for p in kept if modular.keep(p, hotfix=repo.module_hotfixes)]
            state.candidates.extend(kept)
            log.info("%s: %d packages for this image", repo.id, len(kept))
