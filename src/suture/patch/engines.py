"""The package-family engines, looked up by family name.

An engine reads what it needs from the image, plans, fetches and builds the
layer entries; the patch core calls these four steps and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from suture.distro.scripts import ScriptJob, ScriptSequence
from suture.errors import SutureError
from suture.inspect import Inspection
from suture.oci.fs import FileEntry
from suture.oci.image import Image
from suture.oci.layer import Entry
from suture.patch.model import PatchOptions
from suture.plan import Plan
from suture.reports.model import Finding

if TYPE_CHECKING:
    from suture.distro.dpkg.repo import AptFetcher

T = TypeVar("T")


@dataclass(frozen=True)
class Build:
    """The patch layer's entries, the scripts to run over them, ``scratch``: files the
    scripts need that never go in the layer, and ``not_run``: scripts the family knows
    cannot be run, to be reported. ``sequence``, when the family decides what runs
    next from what the scripts did: the jobs as they run (``jobs`` are then the
    ones known in advance, reported when nothing can run)."""

    entries: list[Entry]
    jobs: list[ScriptJob]
    scratch: list[Entry] = field(default_factory=list)
    not_run: list[tuple[str, str]] = field(default_factory=list)  # (script, why not)
    # What the user should know of the build (a changed config kept, its new version
    # written beside it; a changelog that could not be read): added to the plan's notes.
    notes: list[str] = field(default_factory=list)
    sequence: ScriptSequence | None = None
    # Removes what the entries read from (files spooled to disk): call it once the
    # layer is written.
    cleanup: Callable[[], None] | None = None


class Engine(Protocol):
    family: str

    def prepare(self, image: Image, inspection: Inspection, options: PatchOptions,
                tree: Mapping[str, FileEntry]) -> Any:
        """Read the package database and repositories: the state the other steps use.

        ``tree`` is every path of the merged view, with the contents of the files
        :func:`wants_data` names."""
        ...

    def plan(self, state: Any, findings: list[Finding] | None) -> Plan: ...

    def fetch(self, state: Any, plan: Plan) -> dict[str, Path]:
        """Verified package files by package name (from the cache or the network)."""
        ...

    def build(self, state: Any, plan: Plan, packages: dict[str, Path]) -> Build:
        """The entries of the patch layer, and the scripts to run over it."""
        ...

    def fixed_vulnerabilities(self, state: Any, plan: Plan, packages: dict[str, Path],
                              build: Build) -> dict[str, tuple[str, ...]]:
        """By package name, the vulnerability identifiers the packages themselves say
        their new versions fix (Debian changelogs, say): what an update-all run's VEX
        states. Empty when the family's packages carry no such record."""
        ...


def fetch_parallel(fetch_one: Callable[[T], tuple[str, Path]], items: Iterable[T],
                   workers: int = 4) -> dict[str, Path]:
    """``dict(map(fetch_one, items))`` on ``workers`` threads. On an error, a timeout or
    Ctrl-C the caller is not kept waiting for a download stalled in a read."""
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        found = dict(pool.map(fetch_one, items))
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return found


def package_fetcher(options: PatchOptions, cache: str) -> AptFetcher:
    """The verified, cached, resumable downloader every engine fetches with: its cache
    under ``--cache-dir``/``cache``, offline when asked, TLS checked against
    ``--ca-file`` when given, its transfers reported to ``options.progress``. The
    repositories come from the image, so every URL and redirect is checked: private,
    loopback and link-local addresses only under a ``--mirror`` target or a host of
    ``--allow-private-repos``."""
    from suture.distro.dpkg.repo import AptFetcher
    from suture.distro.mirrors import RepositoryHosts

    ca_file = options.transport.registry.ca_file
    hosts = RepositoryHosts(options.allow_private_repos, trusted=options.mirrors.values())
    return AptFetcher(options.cache_dir / cache, offline=options.offline,
                      verify=str(ca_file) if ca_file is not None else True,
                      progress=options.progress, hosts=hosts)


def wants_data(path: str) -> bool:
    """Whether any engine needs the contents of ``path`` from the tree read."""
    from suture.patch.apk import wants_data as apk_wants
    from suture.patch.dpkg import wants_data as dpkg_wants

    return dpkg_wants(path) or apk_wants(path)


def engine_for(family: str) -> Engine:
    if family == "dpkg":
        from suture.patch.dpkg import DpkgEngine

        return DpkgEngine()
    if family == "apk":
        from suture.patch.apk import ApkEngine

        return ApkEngine()
    raise SutureError(f"patching {family} images is not supported yet",
                      hint="suture patches Debian and Ubuntu (dpkg) and Alpine, Wolfi and "
                           "Chainguard (apk) images today")
