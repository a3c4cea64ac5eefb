"""Running a shard of a fleet plan, and merging the shards' results.

:func:`run_jobs` patches jobs on a bounded pool of worker threads. Each job gets its
own deadline (``timeout``); one ``cancel`` event (Ctrl-C, SIGTERM) stops every job at
its next step or transfer chunk. A job that fails is recorded and never stops the
others. Pushes go blobs first, manifests by digest, the tag last, so a shard killed
mid-push and run again from the same plan ends with exactly what a clean run gives:
the patch is deterministic (no clock: ``created`` stays the source's unless the plan
sets it), and blobs and manifests already pushed are found by digest.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from suture.errors import SutureError
from suture.fleet.plan import ERROR, PENDING, SKIPPED, FleetError, Job, Plan
from suture.patch import patch
from suture.patch.model import PATCHED, UP_TO_DATE, PatchOptions, PatchResult
from suture.reports import parse_report
from suture.transports import open_artifact
from suture.transports.reference import parse_docker

log = logging.getLogger(__name__)

RESULT_KIND = "suture-fleet-result"
#: Statuses of a job in results: patched, up-to-date, skipped, error; ``missing`` in a
#: merge means no shard reported the job.
MISSING = "missing"


@dataclass
class JobResult:
    id: str
    name: str
    source: str
    source_digest: str | None
    status: str
    target: str | None = None
    tag: str | None = None
    digest: str | None = None
    message: str = ""
    seconds: float = 0.0
    updates: int = 0
    layers: list[str] = field(default_factory=list)
    reused_from: str | None = None  # the job whose patch layer this image took
    package_cache: dict[str, list[str]] | None = None  # registry cache hits and pushes

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "source": self.source,
                "sourceDigest": self.source_digest, "status": self.status,
                "target": self.target, "tag": self.tag, "digest": self.digest,
                "message": self.message, "seconds": round(self.seconds, 3),
                "updates": self.updates, "layers": self.layers,
                "reusedFrom": self.reused_from, "packageCache": self.package_cache}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> JobResult:
        return cls(doc["id"], doc["name"], doc["source"], doc.get("sourceDigest"),
                   doc["status"], doc.get("target"), doc.get("tag"), doc.get("digest"),
                   doc.get("message", ""), float(doc.get("seconds", 0.0)),
                   int(doc.get("updates", 0)), list(doc.get("layers") or []),
                   doc.get("reusedFrom"), doc.get("packageCache"))


@dataclass(frozen=True)
class RunOptions:
    patch: PatchOptions  # the template every job's options are made from
    workers: int = 2  # jobs at once on this machine
    timeout: float = 1800.0  # per job, seconds
    reuse: bool = True  # one patch per base: others of a group take its layer (reuse.py)
    package_cache: Any = None  # a pkgcache.RegistryPackageCache shared through the registry
    on_event: Callable[[str, Job, JobResult | None], None] | None = None  # start/finish


def _job_options(job: Job, options: RunOptions, cancel: threading.Event) -> PatchOptions:
    from suture.oci.model import Platform

    reports = {}
    if job.report:
        reports = {"*": parse_report(Path(job.report).read_bytes())}
    return replace(options.patch, reports=reports, cancel=cancel,
                   platforms=tuple(Platform.parse(p) for p in job.platforms),
                   deadline=time.monotonic() + options.timeout, dry_run=False)


def _recheck(job: Job, popts: PatchOptions) -> JobResult | None:
    """The latest patched tag was made from this source digest: if patching it again
    would change nothing, the job is skipped (nothing pushed)."""
    assert job.recheck is not None
    ref = parse_docker(job.recheck)
    check = patch(ref, ref, replace(popts, dry_run=True))
    if check.failed or any(o.status != UP_TO_DATE for o in check.platforms):
        return None
    existing = ref.tag or job.tag
    return JobResult(job.id, job.name, job.source, job.source_digest, SKIPPED,
                     target=f"{ref.name}:{existing}", tag=existing, digest=ref.digest,
                     message="already patched from this digest; nothing new to apply")


def run_job(job: Job, options: RunOptions, cancel: threading.Event) -> JobResult:
    """Patch one job. Never raises for a problem of the job: the result says it."""
    started = time.monotonic()
    result = JobResult(job.id, job.name, job.source, job.source_digest, ERROR,
                       target=job.target, tag=job.tag)
    if job.status != PENDING:
        result.status, result.message = job.status, job.message
        if job.status == SKIPPED:
            try:
                result.digest = open_artifact(parse_docker(job.target),
                                              options.patch.transport).digest
            except SutureError as exc:
                result.message += f" (cannot read {job.target}: {exc})"
        else:
            result.target = result.tag = None
        return result
    try:
        popts = _job_options(job, options, cancel)
        if job.recheck:
            skipped = _recheck(job, popts)
            if skipped is not None:
                skipped.seconds = time.monotonic() - started
                return skipped
        assert job.source_digest is not None
        source = parse_docker(job.source).with_digest(job.source_digest)
        target = parse_docker(job.target)
        if options.package_cache is not None:
            result.package_cache = _with_package_cache(
                options.package_cache, popts, lambda: patch(source, target, popts),
                lambda: patch(source, target, replace(popts, dry_run=True)), result)
        else:
            _fill(result, patch(source, target, popts))
    except SutureError as exc:
        result.status = ERROR
        result.message = str(exc) + (f" (hint: {exc.hint})" if exc.hint else "")
    except OSError as exc:
        result.status, result.message = ERROR, f"{exc.strerror or exc}"
    if result.status == ERROR:
        result.target = result.tag = None
    result.seconds = time.monotonic() - started
    return result


def _with_package_cache(cache: Any, popts: PatchOptions, run: Callable[[], PatchResult],
                        dry: Callable[[], PatchResult], result: JobResult
                        ) -> dict[str, list[str]]:
    """Plan (a dry run), take what the registry cache has, patch, push what it lacks."""
    from suture.fleet.pkgcache import CacheStats

    stats = CacheStats()
    planned = dry()
    for o in planned.platforms:
        if o.plan is not None:
            cache.prefetch(o.plan.family, list(o.plan.updates), popts.cache_dir, stats)
    outcome = run()
    _fill(result, outcome)
    for o in outcome.platforms:
        if o.plan is not None and o.status == PATCHED:
            cache.publish(o.plan.family, list(o.plan.updates), popts.cache_dir, stats)
    return stats.to_json()


def _fill(result: JobResult, outcome: PatchResult) -> None:
    if outcome.failed:
        first = next(o for o in outcome.platforms if o.status == ERROR)
        result.status = ERROR
        result.message = f"{first.platform or 'image'}: {first.message}"
        return
    result.updates = sum(len(o.plan.updates) for o in outcome.platforms
                         if o.plan is not None and o.status == PATCHED)
    result.layers = [o.layer.digest for o in outcome.platforms if o.layer is not None]
    if outcome.target_digest:
        result.status, result.digest = PATCHED, outcome.target_digest
        result.message = f"{result.updates} package(s) updated"
    else:
        result.status, result.tag, result.target = UP_TO_DATE, None, None
        result.message = "no updates needed; nothing pushed"


def _reuse_key(job: Job) -> tuple[str, str, tuple[str, ...]] | None:
    if job.status != PENDING or job.recheck or not job.group:
        return None
    return job.group, job.report or "", tuple(job.platforms)


def _partition(jobs: list[Job]) -> tuple[list[Job], dict[str, list[Job]]]:
    """Leaders (patched first) and, per leader, the jobs that may take its layer."""
    leaders: list[Job] = []
    followers: dict[str, list[Job]] = {}
    first: dict[tuple[str, str, tuple[str, ...]], Job] = {}
    for job in jobs:
        key = _reuse_key(job)
        if key is None or key not in first:
            leaders.append(job)
            if key is not None:
                first[key] = job
        else:
            followers.setdefault(first[key].id, []).append(job)
    return leaders, followers


def _donor(job: Job, result: JobResult, options: RunOptions) -> Any:
    """The donor a patched leader makes (see :mod:`suture.fleet.reuse`), or why not."""
    from suture.fleet.reuse import make_donor
    from suture.oci.image import Image

    if result.status != PATCHED or not result.digest or job.source_digest is None:
        return f"{job.id} was not patched ({result.status})"
    transport = options.patch.transport
    try:
        source = open_artifact(parse_docker(job.source).with_digest(job.source_digest),
                               transport)
        target = parse_docker(job.target)
        patched = open_artifact(target.with_digest(result.digest), transport)
        if not isinstance(source, Image) or not isinstance(patched, Image):
            return "an image index is patched per image"
        return make_donor(job.id, source, patched, target, [])
    except SutureError as exc:
        return f"cannot read {job.id}'s patch: {exc}"


def run_follower(job: Job, donor: Any, options: RunOptions, cancel: threading.Event
                 ) -> JobResult:
    """Give ``job`` the donor's patch layer when nothing in its own layers forbids it;
    else patch it on its own (the result says why)."""
    from suture.fleet.plan import open_registry, thread_client
    from suture.fleet.reuse import Donor, donor_opener, mount_blob, reused_image
    from suture.oci.image import Image
    from suture.transports.registry import push_artifact

    started = time.monotonic()
    why = donor if isinstance(donor, str) else ""
    if isinstance(donor, Donor) and not cancel.is_set() and job.source_digest:
        transport = options.patch.transport
        try:
            named = parse_docker(job.source)
            source = open_registry(named.with_digest(job.source_digest), transport)
            if isinstance(source, Image):
                image = reused_image(donor, source, named, donor_opener(donor, transport))
            else:
                image = "an image index is patched per image"
            if isinstance(image, Image):
                target = parse_docker(job.target)
                assert target.registry is not None
                client = thread_client(target.registry, transport)  # this thread's, kept alive
                how = mount_blob(donor.layer.digest, donor.target, target, transport,
                                 client=client)
                digest = push_artifact(image, target, transport.registry,
                                       client=client).digest
                return JobResult(
                    job.id, job.name, job.source, job.source_digest, PATCHED,
                    target=job.target, tag=job.tag, digest=digest,
                    message=f"reused the patch layer of {donor.job_id} (layer {how})",
                    seconds=time.monotonic() - started, layers=[donor.layer.digest],
                    reused_from=donor.job_id)
            why = image
        except SutureError as exc:
            why = f"reuse failed: {exc}"
    result = run_job(job, options, cancel)
    if why and result.status == PATCHED:
        result.message += f"; patched on its own: {why}"
    return result


def run_jobs(jobs: list[Job], options: RunOptions, cancel: threading.Event) -> list[JobResult]:
    """Run ``jobs`` with at most ``options.workers`` at once; results in job order.

    With ``options.reuse`` the first job of each base group is patched first and the
    others of its group then take its patch layer when they may (:mod:`.reuse`).
    The calling thread only waits, so Ctrl-C reaches it: it then sets ``cancel``,
    waits for the running jobs to stop (each does at its next step), and re-raises;
    jobs not started are not started.
    """
    results: dict[str, JobResult] = {}
    leaders, followers = _partition(jobs) if options.reuse else (list(jobs), {})
    pool = ThreadPoolExecutor(max_workers=max(1, options.workers),
                              thread_name_prefix="fleet")

    def work(job: Job, donor: Any = None) -> tuple[JobResult, Any]:
        if cancel.is_set():
            return JobResult(job.id, job.name, job.source, job.source_digest, ERROR,
                             message="not started: the run was stopped"), None
        if options.on_event is not None:
            options.on_event("start", job, None)
        try:
            if donor is None:
                result = run_job(job, options, cancel)
                made = _donor(job, result, options) if followers.get(job.id) else None
            else:
                result, made = run_follower(job, donor, options, cancel), None
        except Exception as exc:  # a bug in one job must not stop the others
            log.debug("job %s failed", job.id, exc_info=True)
            result = JobResult(job.id, job.name, job.source, job.source_digest, ERROR,
                               message=f"internal error: {type(exc).__name__}: {exc}")
            made = f"{job.id} failed"
        if options.on_event is not None:
            options.on_event("done", job, result)
        return result, made

    futures: dict[Future[tuple[JobResult, Any]], Job] = {
        pool.submit(work, j): j for j in leaders}
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            for f in done:
                job = futures[f]
                result, donor = f.result()
                results[job.id] = result
                for follower in followers.get(job.id, []):
                    if donor is None:
                        donor = f"{job.id} made no patch layer"
                    future = pool.submit(work, follower, donor)
                    futures[future] = follower
                    pending.add(future)
    except BaseException:
        cancel.set()
        wait(futures, timeout=10)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return [results[j.id] for j in jobs]


# ------------------------------------------------------------------------- results


def shard_document(plan: Plan, shard: int, count: int, results: list[JobResult],
                   seconds: float) -> dict[str, Any]:
    return {"kind": RESULT_KIND, "schemaVersion": 1, "plan": plan.digest, "shard": shard,
            "shards": count, "seconds": round(seconds, 3),
            "jobs": [r.to_json() for r in results]}


def write_json_atomic(path: Path, doc: Any) -> None:
    """Write ``doc`` to ``path`` as a whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(doc, out, indent=2, sort_keys=True)
            out.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Summary:
    rows: list[JobResult]
    shards_seen: list[int]
    shard_count: int

    @property
    def failed(self) -> list[JobResult]:
        return [r for r in self.rows if r.status in (ERROR, MISSING)]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r.status] = out.get(r.status, 0) + 1
        return dict(sorted(out.items()))

    def to_json(self) -> dict[str, Any]:
        return {"kind": "suture-fleet-summary", "schemaVersion": 1,
                "shards": self.shard_count, "shardsSeen": self.shards_seen,
                "counts": self.counts(), "jobs": [r.to_json() for r in self.rows]}

    def lines(self) -> Iterable[str]:
        yield (f"{'NAME':20} {'STATUS':10} {'SOURCE':40} {'TAG':24} {'DIGEST':19} DETAILS")
        for r in self.rows:
            digest = (r.digest or "-")[:19]
            yield (f"{r.name:20} {r.status:10} {r.source:40} {r.tag or '-':24} {digest:19} "
                   f"{r.message}")
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items())
        yield f"{len(self.rows)} images: {counts}"


def merge_results(plan: Plan, documents: list[tuple[str, dict[str, Any]]]) -> Summary:
    """Every job of ``plan`` with the result a shard reported for it (``missing`` when
    none did). Results of another plan are refused."""
    by_id: dict[str, JobResult] = {}
    seen: list[int] = []
    count = 0
    for where, doc in documents:
        if not isinstance(doc, dict) or doc.get("kind") != RESULT_KIND:
            raise FleetError(f"{where}: not a suture fleet result")
        if doc.get("plan") != plan.digest:
            raise FleetError(f"{where}: results of another plan ({doc.get('plan')}, this "
                             f"plan is {plan.digest})")
        if count and doc.get("shards") != count:
            raise FleetError(f"{where}: {doc.get('shards')} shards, others say {count}")
        count = int(doc.get("shards") or 0)
        seen.append(int(doc.get("shard", -1)))
        for item in doc.get("jobs") or []:
            r = JobResult.from_json(item)
            by_id[r.id] = r
    rows = [by_id.get(j.id) or JobResult(j.id, j.name, j.source, j.source_digest, MISSING,
                                         message="no shard reported this image")
            for j in plan.jobs]
    return Summary(rows, sorted(seen), count)


def read_results(paths: Iterable[Path]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in paths:
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        for file in files:
            try:
                out.append((str(file), json.loads(file.read_bytes())))
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise FleetError(f"{file}: cannot read: {exc}") from None
    return out
