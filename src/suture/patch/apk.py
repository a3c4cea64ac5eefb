"""The apk engine: Alpine, Wolfi and Chainguard images, with or without ``apk`` in them.

prepare: read the installed database, ``world``, ``arch``, the repositories and the
trusted keys (``/etc/apk/keys``, plus the user's ``--keyring`` files) out of the
layers; fetch every repository's ``APKINDEX.tar.gz`` (mirrors applied, cached,
offline from the cache) and verify its signature; parse it. plan: the resolver
decides (:mod:`suture.plan.apk`). fetch: each package into the cache, verified by
the index's identity, its own signature and its data hash. build: native unpack
into layer entries and the rewritten database (:mod:`suture.distro.apk.apply`).
The image's ``apk`` binary is never used: an image without one is patched the same way.
Versions are ordered as the image's own apk-tools would order them: its installed
``apk-tools`` package says 2.x or 3.x; without one, Alpine by its release (up to 3.22:
apk-tools 2), Wolfi and Chainguard as apk-tools 2
(:func:`suture.distro.apk.version.apk2_order`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from suture.distro.apk.apply import DB, EXEC, Update, apply_updates
from suture.distro.apk.deps import Dependency
from suture.distro.apk.index import IndexEntry, parse_apkindex
from suture.distro.apk.installed import (
    InstalledPackage,
    is_protected,
    parse_installed,
    parse_protected_paths,
    parse_world,
    protect_mode,
)
from suture.distro.apk.package import read_apk
from suture.distro.apk.repo import (
    REPOSITORIES,
    REPOSITORIES_D,
    ApkFetcher,
    Repository,
    apk_arch,
    apply_mirrors,
    parse_repositories,
)
from suture.distro.apk.sign import Keys
from suture.distro.apk.version import apk2_order
from suture.distro.detect import OSRelease
from suture.distro.fetch import Fetcher, redact
from suture.errors import PackageDBError, SutureError
from suture.inspect import Inspection
from suture.oci.fs import FileEntry, read_files, resolve
from suture.oci.image import Image
from suture.patch.engine import Build, fetch_parallel, package_fetcher
from suture.patch.model import PatchOptions
from suture.plan import Plan
from suture.reports.model import Finding

log = logging.getLogger(__name__)

INSTALLED = f"{DB}/installed"
WORLD = "etc/apk/world"
ARCH = "etc/apk/arch"
KEYS = "etc/apk/keys/"
PROTECTED_D = "etc/apk/protected_paths.d/"
_DATA_PREFIXES = ("lib/apk/", "usr/lib/apk/", "etc/", "usr/share/apk/keys/")


def image_apk2(installed: Sequence[InstalledPackage], release: OSRelease | None) -> bool:
    """Whether the image's versions are ordered as apk-tools 2 orders them: by its installed
    ``apk-tools`` package, else by its os-release (see :func:`apk2_order`)."""
    apk_tools = next((p.version for p in installed if p.name == "apk-tools"), None)
    return apk2_order(apk_tools, release.id if release is not None else "",
                      release.version_id if release is not None else "")


def _data(files: Mapping[str, FileEntry], links: Mapping[str, str], path: str
          ) -> bytes | None:
    entry = files.get(resolve(path, links))
    if entry is None or entry.kind != "file":
        return None
    return entry.data

def _listing(files: Mapping[str, FileEntry], links: Mapping[str, str], prefix: str
             ) -> dict[str, bytes]:
    """Regular files directly under ``prefix`` (symlinks followed), by base name."""
    real = resolve(prefix.rstrip("/"), links) + "/"
    out: dict[str, bytes] = {}
    for path in files:
        if not path.startswith(real) or "/" in path[len(real):]:
            continue
        target = files.get(resolve(path, links))
        if target is not None and target.kind == "file" and target.data is not None:
            out[path[len(real):]] = target.data
    return out


@dataclass
class ApkState:
    image: Image
    inspection: Inspection
    options: PatchOptions
    files: dict[str, FileEntry]
    links: dict[str, str]
    installed: list[InstalledPackage]
    world: tuple[Dependency, ...]
    arch: str
    keys: Keys
    db_dir: str = DB  # as the image names it (lib/apk/db), before symlinks
    repositories: list[Repository] = field(default_factory=list)
    candidates: list[IndexEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fetcher: ApkFetcher | None = None
    apk2: bool = False  # versions ordered as apk-tools 2 (else 3)

    # ----------------------------------------------------------------- plan
    def plan(self, findings: list[Finding] | None) -> Plan:
        from suture.plan.apk import plan_apk

        return plan_apk(self.installed, self.candidates, findings, architecture=self.arch,
                        world=self.world, notes=tuple(self.notes), apk2=self.apk2)

    # ---------------------------------------------------------------- fetch
    def _entry(self, name: str, version: str) -> IndexEntry:
        for e in self.candidates:
            if e.name == name and e.version == version:
                return e
        raise SutureError(f"{name} {version} is not in the repositories")  # pragma: no cover

    def _repo(self, entry: IndexEntry) -> Repository:
        return self.repositories[entry.order]

    def fetch(self, plan: Plan) -> dict[str, Path]:
        assert self.fetcher is not None
        fetcher = self.fetcher

        def one(name: str, version: str) -> tuple[str, Path]:
            entry = self._entry(name, version)
            path = fetcher.fetch_package(self._repo(entry), self.arch, entry.filename,
                                         entry.identity, entry.size)
            try:
                read_apk(path, identity=entry.identity, keys=self.keys, what=entry.filename,
                         members=False)
            except SutureError:
                fetcher.forget(entry.identity)
                raise
            return name, path

        return fetch_parallel(lambda u: one(u.name, u.to_version), plan.updates)

    # ---------------------------------------------------------------- build
    def build(self, plan: Plan, packages: dict[str, Path]) -> Build:
        by_name = {p.name: p for p in self.installed}
        updates = []
        for u in plan.updates:
            entry = self._entry(u.name, u.to_version)
            try:
                archive = read_apk(packages[u.name], identity=entry.identity,
                                   keys=self.keys, what=entry.filename)
            except SutureError:
                if self.fetcher is not None:
                    self.fetcher.forget(entry.identity)
                raise
            updates.append(Update(by_name.get(u.name) if u.from_version else None, entry,
                                  archive))
        links = self.links
        db_dir = resolve(self.db_dir, links)
        exec_dir = EXEC
        files: dict[str, bytes] = {}
        for path in ("etc/passwd", "etc/group"):
            body = _data(self.files, links, path)
            if body is not None:
                files[path] = body
        for name in ("scripts.tar", "triggers"):
            body = _data(self.files, links, f"{self.db_dir}/{name}")
            if body is not None:
                files[f"{db_dir}/{name}"] = body
        protected = parse_protected_paths(
            body for _n, body in sorted(_listing(self.files, links, PROTECTED_D).items())
            if _n.endswith(".list"))
        # The current contents of every file in a protected directory that the update
        # touches: compared with the database to keep what the user changed.
        wanted: set[str] = set()
        for upd in updates:
            paths = [m.path for m in upd.archive.members] + (
                [p for p, _f in upd.old.files()] if upd.old is not None else [])
            for path in paths:
                if is_protected(protect_mode(path.rpartition("/")[0], protected)):
                    real = resolve(path.rpartition("/")[0], links)
                    real = f"{real}/{path.rpartition('/')[2]}" if real else path
                    node = self.files.get(real)
                    if node is None or node.kind != "file":
                        continue
                    if node.data is not None:
                        files[real] = node.data
                    else:
                        wanted.add(real)
        if wanted:
            found = read_files(self.image, sorted(wanted))
            for path in wanted:
                hit = found.get(path)
                if hit is not None and hit.data is not None:
                    files[path] = hit.data
        result = apply_updates(self.installed, updates, tree=self.files, files=files,
                               protected=protected, db_dir=db_dir, exec_dir=exec_dir)
        return Build(result.entries, result.jobs, result.scratch, result.not_run,
                     list(result.notes))

    # ------------------------------------------------------- vulnerabilities
    def fixed_vulnerabilities(self, plan: Plan, packages: dict[str, Path],
                              build: Build) -> dict[str, tuple[str, ...]]:
        """Nothing: an ``.apk`` carries no record of the vulnerabilities it fixes (Alpine
        keeps its ``secfixes`` in the APKBUILD and its secdb, outside the package)."""
        return {}


class ApkEngine:
    family: ClassVar[str] = "apk"
    data_prefixes: ClassVar[tuple[str, ...]] = _DATA_PREFIXES
    purl_type: ClassVar[str] = "apk"

    def prefetch(self, image: Image, options: PatchOptions) -> None:
        """An APKINDEX is small: nothing is worth starting early."""
        return None

    # -------------------------------------------------------------- prepare
    def prepare(self, image: Image, inspection: Inspection, options: PatchOptions,
                tree: Mapping[str, FileEntry]) -> ApkState:
        files = dict(tree)
        links = {p: e.linkname for p, e in files.items() if e.kind == "symlink"}
        db_dir, data = DB, None
        for where in (DB, "usr/" + DB):  # apk-tools 3 usr-merged roots may use /usr/lib
            data = _data(files, links, f"{where}/installed")
            if data is not None:
                db_dir = where
                break
        if data is None:
            raise PackageDBError("no apk database in the image", path="/" + INSTALLED)
        installed = parse_installed(data, source=f"/{db_dir}/installed")
        if not installed:
            raise PackageDBError("no installed packages", path=f"/{db_dir}/installed")
        world = parse_world(_data(files, links, WORLD) or b"", source="/" + WORLD)
        arch_text = (_data(files, links, ARCH) or b"").decode("utf-8", "replace").split()
        if arch_text:
            arch = arch_text[0]
        else:
            platform = image.platform
            if platform is None:
                raise SutureError("the image config names no architecture and the image has "
                                  "no /etc/apk/arch")
            arch = apk_arch(platform.architecture, platform.variant)
        keys = Keys.load(_listing(files, links, KEYS), options.keyrings)
        state = ApkState(image, inspection, options, files, links, installed, world, arch,
                         keys, db_dir, apk2=image_apk2(installed, inspection.os))
        log.info("apk versions ordered as apk-tools %d does", 2 if state.apk2 else 3)
        self._load_repositories(state)
        return state

    def _load_repositories(self, state: ApkState) -> None:
        options = state.options
        config: dict[str, bytes] = {}
        top = _data(state.files, state.links, REPOSITORIES)
        if top is not None:
            config[REPOSITORIES] = top
        for prefix in REPOSITORIES_D:
            for name, body in _listing(state.files, state.links, prefix).items():
                config[prefix + name] = body
        repos = parse_repositories(config, arch=state.arch)
        if not repos:
            raise SutureError("the image lists no apk repositories (/etc/apk/repositories)",
                              hint="an image built without them cannot be patched from its "
                                   "own configuration")
        if options.mirrors:
            repos = apply_mirrors(repos, options.mirrors)
        state.repositories = repos
        if len(state.keys) == 0:
            raise SutureError("no trusted apk keys: /etc/apk/keys is empty",
                              hint="pass --keyring FILE with the repository's public key")
        state.fetcher = ApkFetcher(package_fetcher(options, "apk", Fetcher), keys=state.keys)
        arches = {state.arch, "noarch", ""}
        for repo in repos:
            index = state.fetcher.fetch_index(repo, state.arch, state.keys)
            where = redact(repo.index_url(state.arch))
            entries = parse_apkindex(index.apkindex, repository=repo.url, tag=repo.tag,
                                     order=repo.order, source=where)
            state.candidates.extend(e for e in entries if e.arch in arches)
            log.info("%s: %d packages, signed by %s", where, len(entries), index.signer.origin)
