"""The fleet plan: every (image, tag) job of a PatchConfig with its source digest, its
target tag, its report, and the base group it belongs to; and the split of the jobs into
shards.

:func:`make_plan` goes to the registries (tags, manifests, and the layers that hold
each image's package database); everything after it reads only the plan. The plan is
deterministic: jobs sorted by name and source, groups by key, no clock in it unless the
caller gives ``created``. :func:`assign_shards` is a pure function of the plan and the
shard count, so every shard computes the same split on its own.

Group key: for each platform, the ``diff_ids`` chain from the bottom layer up to the
highest layer that writes the package database, plus the digest of every database file.
Images built ``FROM`` one base (app layers on top that install no package) share it,
so they share what a patch downloads and, in the end, the patch itself.
"""

from __future__ import annotations

import json
import logging
import math
import tarfile
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from suture.distro.detect import detect_package_db, wanted_paths
from suture.errors import LayerError, NotFound, SutureError, UsageError
from suture.fleet.config import FleetConfig, ImageSpec
from suture.fleet.discover import existing_patch_tags, next_patch_tag, select_tags
from suture.inspect import read_patch_mark, select_images
from suture.oci.digest import sha256
from suture.oci.fs import MAX_FILE, FileEntry, normalize
from suture.oci.image import Artifact, Image, Layer
from suture.oci.layer import OPAQUE, WHITEOUT_PREFIX
from suture.reports import parse_report
from suture.reports.model import Report
from suture.transports import Options
from suture.transports.reference import Reference, parse_docker

log = logging.getLogger(__name__)

PLAN_KIND = "suture-fleet-plan"
PENDING, SKIPPED, ERROR = "pending", "skipped", "error"


class FleetError(SutureError):
    """A plan or a shard's results that cannot be used."""


@dataclass
class Job:
    """One image tag to patch. ``source`` is ``registry/repository:tag``; ``target``
    the full reference the result is pushed to. ``status`` is ``pending`` (to patch),
    ``skipped`` (decided at plan time, with ``message``) or ``error`` (the tag could not
    be resolved). ``recheck`` names the latest existing patched tag when it was made
    from this very source digest: the run then patches only if something new applies."""

    id: str
    name: str
    source: str
    source_digest: str | None
    target: str
    tag: str
    base_tag: str
    platforms: list[str] = field(default_factory=list)
    report: str | None = None
    recheck: str | None = None
    status: str = PENDING
    message: str = ""
    group: str = ""
    family: str = ""

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        return {_camel(k): v for k, v in doc.items()}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Job:
        names = {_camel(k): k for k in cls.__dataclass_fields__}
        unknown = set(doc) - set(names)
        if unknown:
            raise FleetError(f"plan job has unknown fields: {', '.join(sorted(unknown))}")
        return cls(**{names[k]: v for k, v in doc.items()})


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


@dataclass
class Plan:
    jobs: list[Job]
    warnings: list[str] = field(default_factory=list)
    config: str = ""
    created: str | None = None

    def groups(self) -> dict[str, list[Job]]:
        out: dict[str, list[Job]] = {}
        for job in self.jobs:
            out.setdefault(job.group or f"job:{job.id}", []).append(job)
        return dict(sorted(out.items()))

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": PLAN_KIND, "schemaVersion": 1, "config": self.config,
            "created": self.created,
            "jobs": [j.to_json() for j in self.jobs],
            "groups": [{"key": k, "jobs": [j.id for j in js]} for k, js in self.groups().items()],
            "warnings": self.warnings,
        }

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n").encode()

    @property
    def digest(self) -> str:
        return sha256(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "plan") -> Plan:
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FleetError(f"{source}: not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("kind") != PLAN_KIND:
            raise FleetError(f"{source}: not a suture fleet plan (kind {PLAN_KIND!r})")
        if doc.get("schemaVersion") != 1:
            raise FleetError(f"{source}: unsupported plan schemaVersion "
                             f"{doc.get('schemaVersion')!r}")
        jobs = [Job.from_json(j) for j in doc.get("jobs") or []]
        return cls(jobs, list(doc.get("warnings") or []), str(doc.get("config") or ""),
                   doc.get("created"))


@dataclass(frozen=True)
class PlanOptions:
    transport: Options = field(default_factory=Options)
    base_dir: Path = Path(".")  # relative report paths are relative to it (the config's)
    reports_dir: Path | None = None  # -r DIR: overrides the config's ``reports``
    scanner: str | None = None
    jobs: int = 4  # registry work in parallel
    created: str | None = None
    list_tags: Callable[[Reference], list[str]] | None = None  # for tests; default: registry


_CLIENTS = threading.local()


def thread_client(registry: str, options: Options) -> Any:
    """This thread's client for ``registry`` (a client is not thread-safe; one per
    worker thread pings the registry once, not once per image)."""
    from suture.transports.registry import RegistryClient

    clients = getattr(_CLIENTS, "by_key", None)
    if clients is None:
        clients = _CLIENTS.by_key = {}
    held = clients.get(registry)
    if held is None or held[0] is not options.registry:  # the options it was made with
        held = clients[registry] = (options.registry, RegistryClient(registry,
                                                                     options.registry))
    return held[1]


def open_registry(ref: Reference, options: Options) -> Artifact:
    from suture.transports.registry import open_registry_image

    assert ref.registry is not None
    return open_registry_image(ref, options.registry, client=thread_client(ref.registry, options))


def list_registry_tags(repository: Reference, options: Options) -> list[str]:
    """All tags of ``repository`` (none when the repository does not exist)."""
    from suture.transports.registry import RegistryClient

    assert repository.registry is not None and repository.repository is not None
    client = RegistryClient(repository.registry, options.registry)
    try:
        return client.list_tags(repository.repository)
    except NotFound:
        return []


# ------------------------------------------------------------------------- reports


def _normalized(ref: str) -> str | None:
    try:
        return parse_docker(ref).image_name()
    except SutureError:
        return None


def index_reports(directory: Path, scanner: str | None) -> dict[str, tuple[Path, Report]]:
    """The reports in ``directory`` (top level, ``*.json``) by the normalised image
    reference their ArtifactName gives; files that are not reports are skipped."""
    out: dict[str, tuple[Path, Report]] = {}
    if not directory.is_dir():
        raise UsageError(f"report directory {directory}: no such directory")
    for file in sorted(directory.iterdir()):
        if not file.is_file() or file.suffix != ".json":
            continue
        try:
            report = parse_report(file.read_bytes(), scanner)
        except (SutureError, OSError) as exc:
            log.warning("report %s skipped: %s", file, exc)
            continue
        key = _normalized(report.artifact) if report.artifact else None
        if key is not None:
            out[key] = (file.resolve(), report)
    return out


# ------------------------------------------------------------------------- the plan


@dataclass
class _LayerScan:
    """What one layer says about the paths detection reads."""

    entries: dict[str, FileEntry]
    deleted: set[str]
    opaque: set[str]


class LayerScans:
    """Per-layer scans, shared by every image of a plan: a base layer under thirty images
    is read once, not thirty times."""

    def __init__(self) -> None:
        self._scans: dict[str, _LayerScan] = {}
        self._busy: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        paths, prefixes = wanted_paths()
        self._paths, self._prefixes = frozenset(paths), tuple(prefixes)

    def _wanted(self, path: str) -> bool:
        return path in self._paths or path.startswith(self._prefixes)

    def scan(self, layer: Layer) -> _LayerScan:
        with self._lock:
            one = self._busy.setdefault(layer.digest, threading.Lock())
        with one:  # a layer two images share is read by one of them, once
            found = self._scans.get(layer.digest)
            if found is None:
                found = self._scan(layer)
                self._scans[layer.digest] = found
            return found

    def _scan(self, layer: Layer) -> _LayerScan:
        scan = _LayerScan({}, set(), set())
        try:
            with layer.open_tar() as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    path = normalize(member.name, layer=layer.digest)
                    parent, _, base = path.rpartition("/")
                    if base == OPAQUE:
                        scan.opaque.add(parent)
                    elif base.startswith(WHITEOUT_PREFIX):
                        scan.deleted.add(f"{parent}/{base[len(WHITEOUT_PREFIX):]}".lstrip("/"))
                    elif path and self._wanted(path):
                        data = None
                        if member.isfile():
                            if member.size > MAX_FILE:
                                raise LayerError(f"{path} is over {MAX_FILE} bytes",
                                                 layer=layer.digest)
                            fobj = tar.extractfile(member)
                            data = fobj.read() if fobj is not None else b""
                        kind = "file" if member.isfile() else "dir" if member.isdir() \
                            else "symlink" if member.issym() else "other"
                        scan.entries[path] = FileEntry(
                            path, kind, member.mode, member.uid, member.gid, member.size,
                            int(member.mtime), member.linkname, layer.digest, data)
        except tarfile.TarError as exc:
            raise LayerError(f"unreadable tar: {exc}", layer=layer.digest) from None
        return scan

    def merged(self, image: Image) -> dict[str, FileEntry]:
        """The merged view of the wanted paths (symlinked directories not followed: an
        image whose database is reached only through one is grouped alone)."""
        found: dict[str, FileEntry] = {}
        hidden: set[str] = set()
        opaque: set[str] = set()
        for layer in reversed(image.layers):
            scan = self.scan(layer)
            for path, entry in scan.entries.items():
                if path in found or path in hidden or any(
                        path.startswith(d + "/") for d in hidden | opaque):
                    continue
                found[path] = entry
            hidden |= scan.deleted
            opaque |= scan.opaque
        return found


def base_key(artifact: Artifact, platforms: list[str],
             scans: LayerScans | None = None) -> tuple[str, str]:
    """The group key of an image or index (see the module docstring) and its family."""
    from suture.oci.model import Platform

    scans = scans or LayerScans()
    chosen = [Platform.parse(p) for p in platforms] or None
    parts: list[Any] = []
    families = set()
    for image in select_images(artifact, chosen):
        files = scans.merged(image)
        db = detect_package_db(files)
        if db is None:
            parts.append([str(image.platform), "no package database", image.digest])
            continue
        families.add(db.family)
        top = db.path.rstrip("/")
        mine = sorted((p, e) for p, e in files.items()
                      if p == top or p.startswith(top + "/"))
        order = {d.digest: i for i, d in enumerate(image.manifest.layers)}
        highest = max((order.get(e.layer, len(order) - 1) for _p, e in mine), default=0)
        parts.append([str(image.platform), db.family, image.diff_ids[:highest + 1],
                      [[p, sha256(e.data or b""), e.mode] for p, e in mine]])
    key = sha256(json.dumps(parts, sort_keys=True).encode())
    return key, ",".join(sorted(families))


def _same_source(target: Artifact, source: Artifact, platforms: list[str]) -> bool:
    """Whether every selected platform of ``target`` is a suture patch of the matching
    platform of ``source``."""
    from suture.oci.model import Platform

    chosen = [Platform.parse(p) for p in platforms] or None
    try:
        ours = {str(i.platform): i.digest for i in select_images(source, chosen)}
        patched = {str(i.platform): read_patch_mark(i) for i in select_images(target, chosen)}
    except SutureError:
        return False
    return set(ours) == set(patched) and all(
        m is not None and m.base_digest == ours[p] for p, m in patched.items())


def _job_for(spec: ImageSpec, tag: str, target_tags: list[str],
             reports: dict[str, tuple[Path, Report]], options: PlanOptions,
             scans: LayerScans) -> Job:
    repo = spec.repository.name
    source = f"{repo}:{tag}"
    base_tag = spec.target_tag(tag)
    target_repo = spec.target_repository()
    existing = existing_patch_tags(target_tags, base_tag)
    new_tag = next_patch_tag(base_tag, existing)
    job = Job(id=f"{spec.name}:{tag}", name=spec.name, source=source, source_digest=None,
              target=f"{target_repo}:{new_tag}", tag=new_tag, base_tag=base_tag,
              platforms=[str(p) for p in spec.platforms])
    report = spec.reports.get(tag) or spec.report
    if report is not None:
        path = (options.base_dir / report).resolve()
        if not path.is_file():
            raise UsageError(f"{spec.name}: report {report}: no such file")
        job.report = str(path)
    else:
        found = reports.get(_normalized(source) or source)
        if found is not None:
            job.report = str(found[0])
    try:
        artifact = open_registry(parse_docker(source), options.transport)
    except SutureError as exc:
        job.status, job.message = ERROR, f"cannot resolve {source}: {exc}"
        return job
    job.source_digest = artifact.digest
    if existing:
        latest = f"{target_repo}:{existing[-1]}"
        copa_report = reports.get(_normalized(latest) or latest)
        if copa_report is not None and not any(
                f.fixable for f in copa_report[1].os_findings()):
            # copa's skip: the latest patched tag's report has nothing fixable.
            job.status, job.tag, job.target = SKIPPED, existing[-1], latest
            job.message = f"no fixable vulnerabilities ({copa_report[0].name})"
        elif spec.skip == "digest":
            try:
                target = open_registry(parse_docker(latest), options.transport)
            except SutureError:
                target = None
            if target is not None and _same_source(target, artifact, job.platforms):
                job.recheck = f"{latest}@{target.digest}"
    try:
        job.group, job.family = base_key(artifact, job.platforms, scans)
    except SutureError as exc:
        job.status, job.message = ERROR, f"cannot read {source}: {exc}"
    return job


def make_plan(config: FleetConfig, options: PlanOptions) -> Plan:
    """Discover tags, resolve digests and group the jobs of ``config``."""
    lister = options.list_tags or (lambda r: list_registry_tags(r, options.transport))
    reports_dir = options.reports_dir or (
        (options.base_dir / config.reports) if config.reports else None)
    reports = index_reports(reports_dir, options.scanner) if reports_dir else {}
    warnings: list[str] = []
    work: list[tuple[ImageSpec, str, list[str]]] = []
    target_cache: dict[str, list[str]] = {}
    for spec in config.images:
        all_tags = None
        if spec.tags.strategy != "list":
            try:
                all_tags = lister(spec.repository)
            except SutureError as exc:
                warnings.append(f"{spec.name}: cannot list tags of {spec.repository.name}: "
                                f"{exc}; skipped")
                continue
        tags, notes = select_tags(spec.tags, all_tags, spec.name)
        warnings += notes
        target_repo = spec.target_repository()
        if target_repo not in target_cache:
            try:
                target_cache[target_repo] = lister(parse_docker(target_repo))
            except SutureError as exc:
                warnings.append(f"{spec.name}: cannot list tags of {target_repo}: {exc}")
                target_cache[target_repo] = []
        work += [(spec, tag, target_cache[target_repo]) for tag in tags]

    scans = LayerScans()

    def one(item: tuple[ImageSpec, str, list[str]]) -> Job:
        return _job_for(item[0], item[1], item[2], reports, options, scans)

    with ThreadPoolExecutor(max_workers=max(1, options.jobs)) as pool:
        jobs = list(pool.map(one, work))
    seen: dict[str, Job] = {}
    for job in jobs:
        if job.id in seen:
            raise UsageError(f"image {job.name!r} tag {job.tag!r} is listed twice; give "
                             "each image entry its own name")
        if any(j.target == job.target for j in seen.values()):
            raise UsageError(f"two jobs would push to {job.target} (copa keeps only the last "
                             "path segment of the repository: give them different targets)")
        seen[job.id] = job
    jobs.sort(key=lambda j: (j.name, j.source))
    return Plan(jobs, warnings, config.source, options.created)


# ------------------------------------------------------------------------- shards


def assign_shards(plan: Plan, count: int) -> list[list[Job]]:
    """Split the jobs into ``count`` shards: whole groups, largest first, each to the
    least loaded shard (lowest index on ties); a group larger than 1.5 times the fair
    share is cut into fair-share pieces first. Pure and deterministic."""
    if count < 1:
        raise UsageError("the shard count must be at least 1")
    total = len(plan.jobs)
    fair = max(1, math.ceil(total / count))
    pieces: list[list[Job]] = []
    for _key, jobs in plan.groups().items():
        if len(jobs) > fair * 1.5:
            pieces += [jobs[i:i + fair] for i in range(0, len(jobs), fair)]
        else:
            pieces.append(jobs)
    pieces.sort(key=lambda js: (-len(js), js[0].id))
    shards: list[list[Job]] = [[] for _ in range(count)]
    for piece in pieces:
        target = min(range(count), key=lambda i: (len(shards[i]), i))
        shards[target] += piece
    return shards


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` (0-based index) -> ``(I, N)``."""
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or int(count) < 1 \
            or int(index) >= int(count):
        raise UsageError(f"shard {text!r}: expected I/N with 0 <= I < N")
    return int(index), int(count)


def shard_from_env(env: dict[str, str] | Any) -> tuple[int, int] | None:
    """The shard from the environment: Kubernetes ``JOB_COMPLETION_INDEX`` (0-based)
    with ``SUTURE_SHARD_COUNT``; else GitLab's ``CI_NODE_INDEX`` (1-based) with
    ``CI_NODE_TOTAL``. None when neither is set."""
    if env.get("JOB_COMPLETION_INDEX", "") != "":
        count = env.get("SUTURE_SHARD_COUNT") or env.get("CI_NODE_TOTAL")
        if not count:
            raise UsageError("JOB_COMPLETION_INDEX is set but SUTURE_SHARD_COUNT is not "
                             "(Kubernetes does not tell a pod the completion count)")
        return parse_shard(f"{env['JOB_COMPLETION_INDEX']}/{count}")
    if env.get("CI_NODE_INDEX", "") != "":
        index = env["CI_NODE_INDEX"]
        if not index.isdigit() or int(index) < 1:
            raise UsageError(f"CI_NODE_INDEX {index!r}: expected 1..CI_NODE_TOTAL")
        return parse_shard(f"{int(index) - 1}/{env.get('CI_NODE_TOTAL', '')}")
    return None


def jobs_of(plan: Plan, shard: int, count: int) -> list[Job]:
    return assign_shards(plan, count)[shard]


def replace_jobs(plan: Plan, jobs: Iterable[Job]) -> Plan:
    return replace(plan, jobs=list(jobs))
