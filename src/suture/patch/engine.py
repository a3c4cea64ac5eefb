"""The seam between the patch core and a package family's engine.

The core calls an :class:`Engine`'s :meth:`~Engine.prepare` once per image and
then only the :class:`Prepared` value it returns: ``plan`` (pure), ``fetch``,
``build`` and, in update-all runs, ``fixed_vulnerabilities``. Nothing of the
family crosses the seam untyped. An engine declares what the core needs to know
of it: its ``family`` (as :mod:`suture.distro.detect` names it), the path
prefixes whose contents it reads from the image (``data_prefixes``) and the purl
type of its packages (``purl_type``). Engines are registered in
:data:`suture.patch.engines.ENGINES`, one line each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, TypeVar

from suture.distro.scripts import ScriptJob, ScriptSequence
from suture.inspect import Inspection
from suture.oci.fs import FileEntry
from suture.oci.image import Image
from suture.oci.layer import Entry
from suture.patch.model import PatchOptions
from suture.plan import Plan
from suture.reports.model import Finding

if TYPE_CHECKING:
    from suture.distro.fetch import Fetcher

T = TypeVar("T")
R = TypeVar("R")
F = TypeVar("F", bound="Fetcher")


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


class Prepared(Protocol):
    """One image as a family's engine read it: its package database and repositories."""

    def plan(self, findings: list[Finding] | None) -> Plan:
        """What to update (pure): every update the repositories have, or with
        ``findings`` what the report names."""
        ...

    def fetch(self, plan: Plan) -> dict[str, Path]:
        """Verified package files by package name (from the cache or the network)."""
        ...

    def build(self, plan: Plan, packages: dict[str, Path]) -> Build:
        """The entries of the patch layer, and the scripts to run over them."""
        ...

    def fixed_vulnerabilities(self, plan: Plan, packages: dict[str, Path],
                              build: Build) -> dict[str, tuple[str, ...]]:
        """By package name, the vulnerability identifiers the packages themselves say
        their new versions fix (Debian changelogs, say): what an update-all run's VEX
        states. Empty when the family's packages carry no such record."""
        ...


class Prefetch(Protocol):
    """Work an engine started before ``prepare``, while the layers are still being read
    (downloading repository indexes named by the image's files, say). It must only
    warm what ``prepare`` would do anyway (a cache checked on use); failures are its
    own, never raised: ``prepare`` does the work again and reports them."""

    def offer(self, path: str, data: bytes) -> None:
        """A file of the merged view as the pass over the layers reads it, with its
        final contents (the pass is top-down: the first copy of a path it meets is the
        one the image has). Called on the reading thread: return at once."""
        ...

    def close(self) -> None:
        """Stop: drop what has not started, wait for what has (idempotent)."""
        ...


class Engine(Protocol):
    """A package family's engine: what the core needs to know of it, ``prefetch`` and
    ``prepare``. The core makes one instance of each engine per image: the one whose
    family the image has is the one it prepares with (so what its ``prefetch``
    started is there for ``prepare``)."""

    family: ClassVar[str]
    data_prefixes: ClassVar[tuple[str, ...]]
    purl_type: ClassVar[str]

    def prefetch(self, image: Image, options: PatchOptions) -> Prefetch | None:
        """What this engine starts while ``image``'s layers are read (before its family
        is known): it hears every file whose contents the pass reads (those under any
        engine's ``data_prefixes``, and what detection reads). None for nothing."""
        ...

    def prepare(self, image: Image, inspection: Inspection, options: PatchOptions,
                tree: Mapping[str, FileEntry]) -> Prepared:
        """Read the package database and repositories of ``image``.

        ``tree`` is every path of the merged view, with the contents of the files
        under ``data_prefixes``."""
        ...


def map_parallel(fn: Callable[[T], R], items: Iterable[T], workers: int = 4) -> list[R]:
    """``list(map(fn, items))`` on ``workers`` threads, in the items' order; the first
    error in that order is raised. On an error, a timeout or Ctrl-C the caller is not
    kept waiting for a download stalled in a read."""
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        found = list(pool.map(fn, items))
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return found


def fetch_parallel(fetch_one: Callable[[T], tuple[str, Path]], items: Iterable[T],
                   workers: int = 4) -> dict[str, Path]:
    """``dict(map(fetch_one, items))`` on ``workers`` threads (:func:`map_parallel`)."""
    return dict(map_parallel(fetch_one, items, workers))


def package_fetcher(options: PatchOptions, cache: str, kind: type[F]) -> F:
    """The verified, cached, resumable downloader an engine fetches with (``kind``, a
    :class:`~suture.distro.fetch.Fetcher` or a family's subclass): its cache under
    ``--cache-dir``/``cache``, offline when asked, TLS checked against ``--ca-file``
    when given, its transfers reported to ``options.progress``. The repositories
    come from the image, so every URL and redirect is checked: private, loopback and
    link-local addresses only under a ``--mirror`` target or a host of
    ``--allow-private-repos``."""
    from suture.distro.mirrors import RepositoryHosts

    ca_file = options.transport.registry.ca_file
    hosts = RepositoryHosts(options.allow_private_repos, trusted=options.mirrors.values())
    return kind(options.cache_dir / cache, offline=options.offline,
                verify=str(ca_file) if ca_file is not None else True,
                progress=options.progress, hosts=hosts)
