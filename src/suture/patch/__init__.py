"""Patching: one image, or every platform of an index, into one new layer each.

:func:`patch` is what ``suture patch`` runs: open the source, patch each selected
platform (:func:`patch_image`), write the result to the destination (unless
nothing changed or it is a dry run) and return a :class:`PatchResult`.

The core never branches on the package family: an engine per family (see
:mod:`suture.patch.engines`, through :mod:`suture.patch.engine`) plans and builds the layer entries.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from suture.errors import SutureError, UsageError
from suture.inspect import (
    BASE_DIGEST_KEY,
    BASE_LAYERS_KEY,
    OCI_BASE_DIGEST,
    OCI_BASE_NAME,
    PATCHED_KEY,
    inspect_image,
    read_patch_mark,
    select_images,
    wants_detection_data,
)
from suture.oci.fs import FileEntry, read_tree
from suture.oci.image import Artifact, Image, ImageIndex
from suture.oci.layer import Entry, LayerInfo, write_layer
from suture.oci.model import Platform
from suture.oci.mutate import (
    AddedLayer,
    append_layers,
    drop_layers,
    replace_children,
    with_annotations,
    with_labels,
)
from suture.patch.engines import Prefetch, all_engines, engine_for, wants_data
from suture.patch.merge import merge_entries, read_layer_entries
from suture.patch.model import (
    ERROR,
    PATCHED,
    SKIPPED,
    UP_TO_DATE,
    PatchOptions,
    PatchResult,
    PlatformOutcome,
)
from suture.patch.results import (
    CachedResult,
    load_result,
    load_tree,
    package_digests,
    result_key,
    seen_image,
    store_result,
    store_tree,
    tree_key,
)
from suture.plan import Plan
from suture.progress import STAGE, Event
from suture.reports import normalize_os_family
from suture.reports.model import Report, ReportError
from suture.transports import open_artifact, write_artifact
from suture.transports.reference import Reference

log = logging.getLogger(__name__)


class PatchTimeout(SutureError):
    """The run went past ``--timeout``."""


class PatchCancelled(SutureError):
    """The run was stopped (Ctrl-C, or another platform's failure) before it finished."""


def _say(options: PatchOptions, image: Image, message: str) -> None:
    if options.progress is not None:
        options.progress(Event(STAGE, message, scope=str(image.platform or "image")))


def check_deadline(options: PatchOptions, stage: str) -> None:
    """Raise if the run was cancelled or went past its deadline (before ``stage``)."""
    if options.cancel.is_set():
        raise PatchCancelled(f"stopped before {stage}")
    if options.deadline is not None and time.monotonic() > options.deadline:
        raise PatchTimeout(f"timed out before {stage}", hint="raise --timeout")


def _guarded(options: PatchOptions, scope: str) -> PatchOptions:
    """``options`` whose progress callback (always set) stops a download or upload
    mid-stream when the run is cancelled or out of time, and tags events with
    ``scope``."""
    sink = options.progress

    def send(event: Event) -> None:
        check_deadline(options, event.name or event.message or "the next step")
        if sink is not None:
            sink(replace(event, scope=scope))

    return replace(options, progress=send)


_MISMATCH_HINT = "scan the image being patched, or give one report per platform with -r DIR"


def _check_report(report: Report, os_id: str, version: str, platform: Platform | None
                  ) -> None:
    """Refuse a report about another OS, release or architecture than the image's."""
    family = report.os_family.lower()
    if family != normalize_os_family(os_id) or (report.os_version and version and not (
        report.os_version == version or report.os_version.startswith(version + ".")
        or version.startswith(report.os_version + ".")
    )):
        raise ReportError(f"the report is for {family} {report.os_version}, the image is "
                          f"{os_id} {version}", hint=_MISMATCH_HINT)
    if platform is not None and not report.matches_platform(platform.architecture,
                                                            platform.variant):
        wanted = "/".join(p for p in (report.architecture, report.variant) if p)
        raise ReportError(f"the report is for architecture {wanted}, the image is "
                          f"{platform.architecture}"
                          + (f"/{platform.variant}" if platform.variant else ""),
                          hint=_MISMATCH_HINT)


def patch_image(image: Image, options: PatchOptions, workdir: Path,
                later: ExitStack | None = None) -> PlatformOutcome:
    """Patch one single-platform image. Never raises for a per-image problem: the
    outcome's status is ``error`` and its message says why.

    With ``later``, the maintainer scripts' root is closed (waiting for its removal,
    which starts in the background once the scripts ran) when ``later`` is, instead
    of before returning: the caller writes the image meanwhile."""
    outcome = PlatformOutcome(image.platform, ERROR, image.digest)
    try:
        with ExitStack() as cleanup:
            _patch_image(image, options, workdir, outcome, later or cleanup)
    except SutureError as exc:
        outcome.status = ERROR
        outcome.message = str(exc) + (f" (hint: {exc.hint})" if exc.hint else "")
        outcome.image = None
    return outcome


def _patch_image(image: Image, options: PatchOptions, workdir: Path,
                 outcome: PlatformOutcome, cleanup: ExitStack) -> None:
    report = options.report_for(image.platform)
    if report is None and options.per_platform_reports:
        outcome.status = SKIPPED
        outcome.message = "no report for this platform: left as it is"
        return
    check_deadline(options, "inspection")
    # A re-patch of suture's own output starts again from the image it patched (the
    # mark is in the labels and annotations: known before any layer is read).
    mark = read_patch_mark(image)
    base = drop_layers(image, mark.base_layers) if mark else image
    base_digest = mark.base_digest if mark else image.digest
    # The root for maintainer scripts is written out in the background from here on,
    # beside the pass over the layers and the planning, fetching and building below (on
    # the other core: the pass is one thread); it is closed below when unused, and by
    # ``cleanup`` however this function is left. Not inside workdir: on an error
    # that directory may be removed while the root is still being written.
    from suture.patch.scripts import start_root

    # The root goes on disk, in the work directory, not in /dev/shm: it is the whole image
    # expanded, and tmpfs pages are memory that cannot be reclaimed without swap (1.2 GiB
    # for a 1 GB image, beside suture's 0.2 GiB RSS; a decompression bomb could fill it).
    # On disk the files sit in the page cache, which the kernel reclaims as it needs
    # (docs/benchmarks.md: "Memory of the scripts' root").
    # Not when a kept result of this image is likely to serve (patch.results): the
    # helper's work would be thrown away, and it would take a core from the run.
    expect_kept = options.result_cache and not options.inventory and seen_image(
        options.cache_dir, image.digest)
    script_root = None if options.dry_run or expect_kept else start_root(
        base, workdir=workdir.parent, sandbox=options.sandbox, cache_dir=options.cache_dir)
    if script_root is not None:
        cleanup.callback(script_root.close)
    # One pass over the layers serves inspection and the engine: every path's metadata,
    # and the contents of what either reads. Each family's engine hears the files it reads
    # as the pass finds them, and may start on its repositories before the pass ends
    # (the family is known only after it): the one prepared below keeps that work.
    # The engine's scratch files go in this run's work directory: removed with it, however
    # the run ends.
    guarded = _guarded(replace(options, workdir=workdir), str(image.platform or "image"))
    engines = all_engines()
    prefetches: list[Prefetch] = []
    for made in engines:
        prefetch = made.prefetch(image, guarded)
        if prefetch is not None:
            prefetches.append(prefetch)
            cleanup.callback(prefetch.close)
    tree = _read_tree(image, options, prefetches)
    inspection = inspect_image(image, tree)
    if inspection.os is not None:
        outcome.os_family, outcome.os_version = inspection.os.id, inspection.os.version_id
    if inspection.package_db is None:
        raise SutureError("no package database found in the image (nothing suture can patch)")
    engine = engine_for(inspection.package_db.family, engines)
    outcome.package_type = engine.purl_type
    if report is not None:
        _check_report(report, outcome.os_family, outcome.os_version, image.platform)
    check_deadline(options, "planning")
    _say(options, image, "reading repositories")
    work = engine.prepare(image, inspection, guarded, tree)
    plan = work.plan(report.os_findings() if report is not None else None)
    outcome.plan = plan
    fixes = len(plan.vulnerabilities)
    _say(options, image, f"plan: {len(plan.updates)} package(s) to update"
         + (f" fixing {fixes} vulnerabilities" if fixes else "")
         + (f", {len(plan.skipped)} left alone" if plan.skipped else "")
         + (f", {len(plan.failures)} cannot be updated" if plan.failures else ""))
    if plan.failures and not options.ignore_errors:
        raise SutureError("cannot patch: " + "; ".join(f"{f.name}: {f.message}"
                                                       for f in plan.failures))
    if not plan.updates:
        outcome.status = UP_TO_DATE
        outcome.message = "no updates needed"
        return
    if options.dry_run:
        outcome.status = SKIPPED
        outcome.message = "dry run: nothing written"
        return
    planned_notes = len(plan.notes)
    check_deadline(options, "downloads")
    total = sum(u.size for u in plan.updates)
    _say(options, image, f"fetching {len(plan.updates)} packages ({total / 1e6:.1f} MB, "
         "cached ones are not downloaded again)")
    debs = work.fetch(plan)
    key = None
    if options.result_cache and not options.inventory:
        # The packages' own bytes are in the key: not every index gives a SHA-256 (an
        # APKINDEX has none), and a rebuild may keep its name, version and size.
        key = result_key(image.digest, plan, packages=package_digests(debs),
                         report=report is not None, options=_layer_options(options, base))
        kept = load_result(options.cache_dir, key)
        if kept is not None:
            if script_root is not None:
                script_root.close()
            _say(options, image, "the patch layer for this plan was made before: reused")
            if report is None:
                plan = plan.with_vulnerabilities(kept.vulnerabilities)
            plan = replace(plan, notes=(*plan.notes, *kept.notes))
            outcome.plan = plan
            outcome.scripts_ran = list(kept.scripts_ran)
            outcome.scripts_not_run = list(kept.scripts_not_run)
            _check_scripts(options, outcome)
            _finish(base, base_digest, options, outcome, plan, kept.info, kept.blob)
            return
    if script_root is None and expect_kept:
        script_root = start_root(base, workdir=workdir.parent, sandbox=options.sandbox,
                                 cache_dir=options.cache_dir)
        if script_root is not None:
            cleanup.callback(script_root.close)
    check_deadline(options, "building the layer")
    _say(options, image, "unpacking packages and updating the package database")
    build = work.build(plan, debs)
    if build.cleanup is not None:
        cleanup.callback(build.cleanup)
    found: dict[str, tuple[str, ...]] = {}
    if report is None:
        found = work.fixed_vulnerabilities(plan, debs, build)
        plan = plan.with_vulnerabilities(found)
    if build.notes:
        plan = replace(plan, notes=(*plan.notes, *build.notes))
    outcome.plan = plan
    entries = build.entries
    outcome.scripts_not_run = list(build.not_run)
    if mark and len(image.layers) > mark.base_layers:
        previous: list[Entry] = []
        for layer in image.layers[mark.base_layers:]:
            previous = merge_entries(previous, read_layer_entries(layer))
        entries = merge_entries(previous, entries)
    if build.jobs:
        from suture.patch.scripts import run_scripts

        check_deadline(options, "maintainer scripts")
        _say(options, image, f"running {len(build.jobs)} maintainer scripts in a sandbox")
        scripts = run_scripts(base, [*entries, *build.scratch], build.jobs,
                              workdir=workdir, sandbox=options.sandbox,
                              root=script_root, sequence=build.sequence)
        outcome.scripts_ran = list(scripts.ran)
        outcome.scripts_not_run += scripts.not_run
        if scripts.ran and base.platform is not None:
            from suture.patch.emulation import emulation_note
            from suture.patch.sandbox import host_architecture

            note = emulation_note(base.platform.architecture, host_architecture())
            if note is not None:
                plan = replace(plan, notes=(*plan.notes, note))
                outcome.plan = plan
        entries = merge_entries(entries, scripts.entries)
    elif script_root is not None:
        script_root.close()
    _check_scripts(options, outcome)
    if options.inventory:
        from suture.patch.inventory import patched_inventory

        distro = f"{outcome.os_family}-{outcome.os_version}" if outcome.os_version \
            else outcome.os_family
        outcome.packages = patched_inventory(
            inspection.package_db, tree, entries, namespace=outcome.os_family, distro=distro,
            purl_type=engine.purl_type, updates=plan.updates)
    _say(options, image, "writing the patch layer")
    blob = workdir / f"layer-{image.digest.split(':')[1][:16]}.tar.{options.compression}"
    with blob.open("wb") as out:
        info = write_layer(entries, out, compression=options.compression)
    if key is not None:
        store_result(options.cache_dir, key, image.digest, blob, CachedResult(
            blob, info, found, plan.notes[planned_notes:], outcome.scripts_ran,
            outcome.scripts_not_run))
    _finish(base, base_digest, options, outcome, plan, info, blob)


def _read_tree(image: Image, options: PatchOptions, prefetches: Iterable[Prefetch] = ()
               ) -> dict[str, FileEntry]:
    """The merged view inspection and the engines read (one pass over the layers, whose
    files the engines' ``prefetches`` hear as it reads them), or the one kept for the
    same layers (patch.results; derived from the layers alone, so kept even with
    ``--no-result-cache``, which is about patch layers)."""
    key = tree_key([layer.digest for layer in image.layers])
    tree = load_tree(options.cache_dir, key)
    if tree is None:
        listeners = list(prefetches)

        def offer(path: str, data: bytes) -> None:
            for prefetch in listeners:
                prefetch.offer(path, data)

        tree = read_tree(image, lambda p: wants_detection_data(p) or wants_data(p),
                         on_data=offer if listeners else None)
        store_tree(options.cache_dir, key, tree)
    return tree


def _layer_options(options: PatchOptions, base: Image) -> dict[str, object]:
    """What besides the image and the plan decides the patch layer's bytes and what the
    run reports about it: for the result key."""
    from suture.patch.sandbox import host_architecture, preflight

    try:
        kind, why = preflight(base, options.sandbox, quiet=True)
    except SutureError as exc:
        kind, why = None, str(exc)
    return {"compression": options.compression, "created": options.created,
            "sandbox": options.sandbox, "scripts": kind or why,
            "host": host_architecture(), "scriptsRequired": options.scripts_required}


def _check_scripts(options: PatchOptions, outcome: PlatformOutcome) -> None:
    if options.scripts_required and outcome.scripts_not_run:
        job, why = outcome.scripts_not_run[0]
        raise SutureError(f"{len(outcome.scripts_not_run)} maintainer script(s) could not run "
                          f"(first: {job}: {why}); nothing written (--scripts-required)",
                          hint="without --scripts-required the image is patched and "
                               "they are reported as not run")


def _finish(base: Image, base_digest: str, options: PatchOptions, outcome: PlatformOutcome,
            plan: Plan, info: LayerInfo, blob: Path) -> None:
    """The patched image: ``base`` plus the layer ``blob`` (``info``), with the patch
    marks and lineage."""
    names = ", ".join(f"{u.name} {u.to_version}" for u in plan.updates)
    added = AddedLayer(info, lambda: blob.open("rb"),
                       history={"created_by": f"suture patch: {names}"[:4000],
                                "comment": "suture"})
    patched = append_layers(base, [added], created=options.created)
    marks = {BASE_DIGEST_KEY: base_digest, BASE_LAYERS_KEY: str(len(base.layers)),
             PATCHED_KEY: "true"}
    lineage = {OCI_BASE_DIGEST: base_digest}
    if options.base_name:
        lineage[OCI_BASE_NAME] = options.base_name
    patched = with_annotations(with_labels(patched, marks), {**marks, **lineage})
    outcome.status = PATCHED
    outcome.layer = info
    outcome.image = patched
    outcome.message = f"{len(plan.updates)} package(s) updated"


def patch_artifact(artifact: Artifact, options: PatchOptions, workdir: Path,
                   later: ExitStack | None = None
                   ) -> tuple[Artifact | None, list[PlatformOutcome]]:
    """Patch every selected platform; return the new artifact (None if nothing changed).

    Platforms are patched in parallel (``later``: as for :func:`patch_image`). With an
    index, platforms not selected and non-image entries (attestations) are carried
    over byte for byte.
    """
    images = select_images(artifact, list(options.platforms) or None)
    if not images:
        raise UsageError("the image index holds no runnable image")
    if options.per_platform_reports:
        for key, report in sorted(options.reports.items()):
            if not any(report.matches_platform(im.platform.architecture, im.platform.variant)
                       for im in images if im.platform is not None):
                have = ", ".join(str(im.platform) for im in images)
                raise ReportError(f"a report is for {key}, which the image does not have "
                                  f"(it has {have})")
    if len(images) == 1:
        outcomes = [patch_image(images[0], options, workdir, later)]
    else:
        outcomes = _patch_parallel(images, options, workdir, later)
    failed = [o for o in outcomes if o.status == ERROR]
    if failed and not options.ignore_errors:
        return None, outcomes
    changed = {o.source_digest: o.image for o in outcomes
               if o.status == PATCHED and o.image is not None}
    if not changed:
        return None, outcomes
    if isinstance(artifact, Image):
        return changed.get(artifact.digest), outcomes
    assert isinstance(artifact, ImageIndex)
    return replace_children(artifact, changed, drop_stale_attestations=True), outcomes


def _patch_parallel(images: list[Image], options: PatchOptions, workdir: Path,
                    later: ExitStack | None = None) -> list[PlatformOutcome]:
    """Patch ``images`` on worker threads; the calling thread only waits, so Ctrl-C and
    timers reach it. When it is interrupted every platform is told to stop and is
    waited for (each stops at its next step or transfer chunk) before re-raising."""
    pool = ThreadPoolExecutor(max_workers=min(4, len(images)))
    futures: list[Future[PlatformOutcome]] = [
        pool.submit(patch_image, image, options, workdir, later) for image in images]
    try:
        pending = set(futures)
        while pending:
            _done, pending = wait(pending, timeout=0.25, return_when=FIRST_EXCEPTION)
    except BaseException:
        options.cancel.set()
        # Most platforms stop at once; one blocked in a network read is not waited for.
        wait(futures, timeout=5)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return [f.result() for f in futures]


def destination_for(source: Reference, *, tag: str | None, suffix: str = "patched",
                    dest: Reference | None = None, push: bool = False,
                    loader: str | None = None) -> Reference:
    """Where the patched image goes (see the README): ``dest`` when given; else the
    source's place under the new tag (``-t``, or ``<tag>-<suffix>``). As copa does, an
    engine's image (``docker-daemon:``, ``podman:``) goes back into its engine, or with
    ``push`` to its registry; ``loader`` (an engine transport) loads a named source's
    result into that engine instead."""
    if dest is not None:
        return dest
    new_tag = tag or (f"{source.tag}-{suffix}" if source.tag else suffix)
    if source.is_engine or (loader and not push):
        if not source.name:
            raise UsageError(f"{source} has no image name to load the result under",
                             hint="give a full reference in -t")
        engine = loader or source.transport
        if push:
            return Reference("docker", source.registry, source.repository, new_tag)
        return Reference(engine, source.registry, source.repository, new_tag)
    if source.is_registry:
        if push:
            return source.with_tag(new_tag)
        name = (source.repository or "image").rsplit("/", 1)[-1]
        return Reference("oci", path=str(Path.cwd() / f"{name}-suture"), tag=new_tag)
    if source.transport == "oci":
        return source.with_tag(new_tag)
    assert source.path is not None
    path = Path(source.path)
    sibling = path.with_name(f"{path.stem}-{new_tag}{path.suffix or '.tar'}")
    if source.transport == "docker-archive":
        named = source.with_tag(new_tag) if source.name else Reference(
            "docker-archive", "localhost", "suture/patched", new_tag, None, str(sibling))
        return Reference("docker-archive", named.registry, named.repository, new_tag,
                         None, str(sibling))
    return Reference(source.transport, tag=new_tag, path=str(sibling))


def lineage_name(source: Reference) -> str:
    """``org.opencontainers.image.base.name`` for a registry source: ``registry/repo:tag``
    (or ``registry/repo`` when it was named by digest only; the digest is the
    ``base.digest`` annotation)."""
    name = f"{source.registry}/{source.repository}"
    return f"{name}:{source.tag}" if source.tag else name


def patch(source: Reference, destination: Reference, options: PatchOptions) -> PatchResult:
    """Patch ``source`` and write it to ``destination`` (unless up to date or dry run)."""
    artifact = open_artifact(source, options.transport)
    if source.is_registry and not options.base_name:
        options = replace(options, base_name=lineage_name(source))
    options.cache_dir.mkdir(parents=True, exist_ok=True)
    # The scripts' roots are removed while the image is written (``later``).
    with tempfile.TemporaryDirectory(prefix="suture-", dir=options.workdir) as tmp, \
            ExitStack() as later:
        new, outcomes = patch_artifact(artifact, options, Path(tmp), later)
        result = PatchResult(str(source), artifact.digest, None, None, outcomes)
        if new is None or options.dry_run:
            return result
        check_deadline(options, "writing the image")
        transport = options.transport
        if source.is_engine and destination.transport == source.transport:
            # Back into the engine it came from: the engine has the base layers already.
            transport = replace(transport, engines=replace(
                transport.engines, present=(*transport.engines.present,
                                            source.familiar_name())))
        digest = write_artifact(new, destination, transport)
        result.target_reference = str(destination)
        result.target_digest = digest
    return result


def summary_lines(result: PatchResult) -> Iterable[str]:
    """The human summary table: platform, status, updates, vulnerabilities, layer size;
    then the plans' notes (suites added, host keyrings used...), one line each."""
    yield f"{'PLATFORM':16} {'STATUS':11} {'UPDATED':>7} {'VULNS':>5} {'LAYER':>10}  MESSAGE"
    for o in result.platforms:
        updated = len(o.plan.updates) if o.plan and o.status == PATCHED else 0
        vulns = len(o.plan.vulnerabilities) if o.plan and o.status == PATCHED else 0
        size = f"{o.layer.size / 1e6:.1f} MB" if o.layer else "-"
        yield (f"{o.platform or '-'!s:16} {o.status:11} {updated:>7} {vulns:>5} "
               f"{size:>10}  {o.message}")
    for o in result.platforms:
        for note in o.plan.notes if o.plan else ():
            yield f"note: {o.platform or '-'}: {note}"
