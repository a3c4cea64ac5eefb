"""The command-line adapter of ``suture fleet`` and ``suture patch --config``.

It is part of the CLI (:mod:`suture.cli` builds the parser with :func:`add_parser` and
calls the ``cmd_*`` functions): the environment comes in as a mapping, output goes to
the streams given, and each command calls the library (:mod:`suture.fleet.plan`,
:mod:`suture.fleet.run`, :mod:`suture.fleet.render`).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from suture.errors import UsageError
from suture.fleet.config import parse_config
from suture.fleet.plan import (
    Job,
    Plan,
    PlanOptions,
    jobs_of,
    make_plan,
    parse_shard,
    shard_from_env,
)

if TYPE_CHECKING:  # the run module imports every engine: only the commands that run load it
    from suture.fleet.run import JobResult, RunOptions

#: ``suture patch`` flags that make no sense for a fleet run (each job has its own).
_NOT_FOR_RUN = frozenset({"-i", "--image", "-r", "--report", "--scanner", "-t", "--tag",
                          "--tag-suffix", "--dest", "--push", "--result", "-o", "--output",
                          "--format", "--vex-author", "--dry-run", "--platform",
                          "--progress", "--config", "--timeout", "-l",
                          "--loader"})


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def add_parser(sub: Any, patch_parser: argparse.ArgumentParser,
               add_registry_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """``suture fleet plan|run|merge|render``. ``run`` takes every ``suture patch`` flag
    that applies to all images (mirrors, cache, keyrings, sandbox...)."""
    fleet = sub.add_parser("fleet", help="patch many images: plan, run shards, merge, "
                                         "render manifests for Kubernetes and CI")
    cmds = fleet.add_subparsers(dest="fleet_command", metavar="COMMAND",
                                parser_class=type(fleet))
    plan = cmds.add_parser("plan", help="list tags, resolve digests, group by base")
    plan.add_argument("-c", "--config", required=True, type=Path, metavar="FILE",
                      help="copa's PatchConfig (copa.sh/v1alpha1) YAML")
    plan.add_argument("-o", "--output", required=True, type=Path, metavar="PLAN",
                      help="write the plan (JSON) here")
    plan.add_argument("-r", "--report", type=Path, metavar="DIR",
                      help="reports matched to images by ArtifactName (overrides the "
                           "config's 'reports')")
    plan.add_argument("--scanner", metavar="NAME", help="the reports' format (default: "
                                                        "detected)")
    plan.add_argument("-j", "--jobs", type=int, default=_default_workers(), metavar="N",
                      help="registry work in parallel (default: %(default)s)")
    add_registry_options(plan)

    run = cmds.add_parser("run", help="patch one shard of a plan")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--plan", type=Path, metavar="PLAN", help="the plan to run")
    source.add_argument("-c", "--config", type=Path, metavar="FILE",
                        help="plan from this PatchConfig first (each shard plans alone: "
                             "see docs/fleet.md)")
    run.add_argument("--shard", metavar="I/N",
                     help="this shard (0-based) of N (default: $JOB_COMPLETION_INDEX with "
                          "$SUTURE_SHARD_COUNT, or GitLab's $CI_NODE_INDEX/$CI_NODE_TOTAL, "
                          "or 0/1)")
    run.add_argument("--results", type=Path, default=Path("results"), metavar="DIR",
                     help="write this shard's result to DIR/<I>.json (default: results)")
    run.add_argument("-j", "--jobs", type=int, default=_default_workers(), metavar="N",
                     help="images patched at once on this machine (default: %(default)s)")
    run.add_argument("--timeout", default="30m", metavar="DURATION",
                     help="bound each image, e.g. 90s, 10m (default: 30m)")
    run.add_argument("--package-cache", metavar="REGISTRY/NAMESPACE",
                     help="share downloaded packages through this registry namespace "
                          "(<NAMESPACE>/<family>, tagged pkg-<sha256>), HEAD before any "
                          "upstream download")
    run.add_argument("--no-reuse", action="store_true",
                     help="patch every image on its own (default: images of one base "
                          "take the first one's patch layer when nothing forbids it)")
    for action in patch_parser._actions:
        if action.option_strings and not isinstance(action, argparse._HelpAction) \
                and not set(action.option_strings) & _NOT_FOR_RUN:
            run._add_action(action)

    merge = cmds.add_parser("merge", help="the fleet summary from the shards' results")
    merge.add_argument("--plan", required=True, type=Path, metavar="PLAN")
    merge.add_argument("results", nargs="*", type=Path, default=[Path("results")],
                       metavar="RESULTS", help="result files or directories "
                                               "(default: results)")
    merge.add_argument("--json", type=Path, metavar="FILE", help="write the summary as JSON")
    merge.add_argument("--ignore-errors", action="store_true",
                       help="exit 0 even when images failed")

    render = cmds.add_parser("render", help="print manifests that run the shards")
    kind = render.add_mutually_exclusive_group(required=True)
    for flag in ("kubernetes", "argo", "tekton", "github-actions"):
        kind.add_argument(f"--{flag}", dest="engine", action="store_const", const=flag)
    render.add_argument("--plan", type=Path, metavar="PLAN",
                        help="embed this plan (a ConfigMap), so every shard runs it")
    render.add_argument("-c", "--config", type=Path, metavar="FILE",
                        help="the PatchConfig (each run plans afresh: the CronJob)")
    render.add_argument("--shards", type=int, default=4, metavar="N",
                        help="shards (default: 4)")
    render.add_argument("--parallelism", type=int, metavar="P",
                        help="shards at once (default: all)")
    render.add_argument("--image", default="ghcr.io/suture/suture:latest", metavar="REF",
                        help="the suture container image")
    render.add_argument("--name", default="suture-fleet", help="object name prefix")
    render.add_argument("--namespace", help="Kubernetes namespace")
    render.add_argument("--schedule", metavar="CRON",
                        help="also a CronJob with this schedule (Kubernetes)")
    render.add_argument("--registry-secret", metavar="NAME",
                        help="a docker-config Secret mounted as the registry credentials")
    render.add_argument("--results-claim", metavar="PVC",
                        help="a PersistentVolumeClaim (ReadWriteMany) for the shards' "
                             "results, for 'suture fleet merge' (default: emptyDir)")
    render.add_argument("--run-args", default="", metavar="ARGS",
                        help="extra 'suture fleet run' flags (mirrors, timeout...)")


# ------------------------------------------------------------------------- commands


def _plan_options(args: argparse.Namespace, transport: Any, base_dir: Path) -> PlanOptions:
    env_epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    created = None
    if env_epoch.isdigit():
        import datetime

        created = datetime.datetime.fromtimestamp(int(env_epoch), datetime.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
    return PlanOptions(transport=transport, base_dir=base_dir,
                       reports_dir=getattr(args, "report", None) and Path(args.report),
                       scanner=getattr(args, "scanner", None),
                       jobs=max(1, getattr(args, "jobs", None) or _default_workers()),
                       created=created)


def _load_config(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"config {path}: {exc.strerror or exc}") from None
    return parse_config(data, str(path))


def _read_plan(path: Path) -> Plan:
    try:
        return Plan.from_bytes(path.read_bytes(), str(path))
    except OSError as exc:
        raise UsageError(f"plan {path}: {exc.strerror or exc}") from None


def cmd_plan(args: argparse.Namespace, cli: Any) -> int:
    config = _load_config(args.config)
    plan = make_plan(config, _plan_options(args, cli._options(args), args.config.parent))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    tmp.write_bytes(plan.to_bytes())
    os.replace(tmp, args.output)
    for warning in plan.warnings:
        cli._print_lines([f"warning: {warning}"], file=sys.stderr)
    groups = plan.groups()
    cli._print_lines([f"{len(plan.jobs)} images in {len(groups)} base groups -> "
                      f"{args.output} ({plan.digest})"])
    for key, jobs in groups.items():
        cli._print_lines([f"  {key[:19]}  {', '.join(j.id for j in jobs)}"])
    return 0


def _shard(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[int, int]:
    if args.shard:
        return parse_shard(args.shard)
    return shard_from_env(env) or (0, 1)


def _run_options(args: argparse.Namespace, cli: Any, out: Callable[[str], None]
                 ) -> tuple[RunOptions, threading.Event]:
    from suture.fleet.run import RunOptions

    # Reports and platforms are per job (from the plan); the rest applies to every job.
    flags = argparse.Namespace(**vars(args))
    flags.report = flags.scanner = flags.platform = None
    flags.dry_run = False
    popts = cli._patch_options(flags, None)
    lock = threading.Lock()
    done = [0]

    def event(kind: str, job: Job, result: JobResult | None) -> None:
        if kind != "done" or result is None:
            return
        with lock:
            done[0] += 1
            where = result.tag or "-"
            out(f"suture: {result.name} {result.source.rsplit(':', 1)[-1]}: {result.status} "
                f"{where} {result.digest or ''} ({result.seconds:.1f} s) {result.message}")

    package_cache = None
    if getattr(args, "package_cache", None):
        from suture.fleet.pkgcache import RegistryPackageCache
        from suture.transports.reference import parse_docker

        package_cache = RegistryPackageCache(parse_docker(args.package_cache),
                                             popts.transport)
    options = RunOptions(popts, workers=max(1, args.jobs),
                         timeout=cli.parse_duration(args.timeout), on_event=event,
                         reuse=not getattr(args, "no_reuse", False),
                         package_cache=package_cache)
    return options, popts.cancel


def _run(plan: Plan, jobs: list[Job], options: RunOptions, cancel: threading.Event
         ) -> tuple[list[JobResult], float]:
    from suture.fleet.run import run_jobs

    started = time.monotonic()
    results = run_jobs(jobs, options, cancel)
    return results, time.monotonic() - started


def cmd_run(args: argparse.Namespace, cli: Any, env: Mapping[str, str]) -> int:
    from suture.fleet.run import Summary, shard_document, write_json_atomic

    if args.config is not None:
        plan = make_plan(_load_config(args.config),
                         _plan_options(args, cli._options(args), args.config.parent))
    else:
        plan = _read_plan(args.plan)
    shard, count = _shard(args, env)
    jobs = jobs_of(plan, shard, count)

    def out(line: str) -> None:
        cli._print_lines([line], file=sys.stderr)

    options, cancel = _run_options(args, cli, out)
    out(f"suture: shard {shard}/{count}: {len(jobs)} of {len(plan.jobs)} images, "
        f"{options.workers} at once")
    results, seconds = _run(plan, jobs, options, cancel)
    path = args.results / f"{shard}.json"
    write_json_atomic(path, shard_document(plan, shard, count, results, seconds))
    summary = Summary(results, [shard], count)
    cli._print_lines(list(summary.lines()))
    cli._print_lines([f"wrote {path} ({seconds:.1f} s)"])
    return 1 if summary.failed else 0


def cmd_merge(args: argparse.Namespace, cli: Any) -> int:
    from suture.fleet.run import merge_results, read_results, write_json_atomic

    plan = _read_plan(args.plan)
    summary = merge_results(plan, read_results(args.results))
    cli._print_lines(list(summary.lines()))
    if args.json:
        write_json_atomic(args.json, summary.to_json())
    return 0 if args.ignore_errors or not summary.failed else 1


def cmd_render(args: argparse.Namespace, cli: Any) -> int:
    from suture.fleet.render import RenderOptions, render

    if args.plan is None and args.config is None:
        raise UsageError("render needs --plan PLAN (one run of that plan) or -c CONFIG "
                         "(each run plans afresh)")
    if args.shards < 1:
        raise UsageError("--shards must be at least 1")
    plan_bytes = args.plan.read_bytes() if args.plan else None
    config_bytes = args.config.read_bytes() if args.config else None
    if config_bytes is not None:
        _load_config(args.config)  # refuse a bad config now, not in every pod
    if plan_bytes is not None:
        _read_plan(args.plan)
    text = render(args.engine, RenderOptions(
        shards=args.shards, parallelism=args.parallelism, image=args.image, name=args.name,
        namespace=args.namespace, schedule=args.schedule, plan=plan_bytes,
        config=config_bytes, registry_secret=args.registry_secret,
        results_claim=args.results_claim,
        run_args=args.run_args.split()))
    sys.stdout.write(text)
    return 0


def cmd_fleet(args: argparse.Namespace, cli: Any, env: Mapping[str, str]) -> int:
    command = getattr(args, "fleet_command", None)
    if command == "plan":
        return cmd_plan(args, cli)
    if command == "run":
        return cmd_run(args, cli, env)
    if command == "merge":
        return cmd_merge(args, cli)
    if command == "render":
        return cmd_render(args, cli)
    raise UsageError("suture fleet needs a command: plan, run, merge or render")


def cmd_patch_config(args: argparse.Namespace, cli: Any) -> int:
    """``suture patch --config FILE``: copa's bulk mode in one process (plan, run every
    job on this machine, summary)."""
    from suture.fleet.run import Summary, write_json_atomic

    if args.image or args.tag or args.dest:
        raise UsageError("--config cannot be used with --image, --tag or --dest")
    if not args.push and not args.dry_run:
        raise UsageError("--config pushes each patched image to its target registry: add "
                         "--push (or --dry-run to see the plan)")
    config = _load_config(Path(args.config))
    plan = make_plan(config, _plan_options(args, cli._options(args), Path(args.config).parent))
    for warning in plan.warnings:
        cli._print_lines([f"warning: {warning}"], file=sys.stderr)
    if args.dry_run:
        cli._print_lines([f"{j.name:20} {j.source:40} -> {j.target} {j.status} {j.message}"
                          for j in plan.jobs])
        return 0

    def out(line: str) -> None:
        cli._print_lines([line], file=sys.stderr)

    if not hasattr(args, "jobs"):
        args.jobs = _default_workers()
    options, cancel = _run_options(args, cli, out)
    results, _seconds = _run(plan, plan.jobs, options, cancel)
    summary = Summary(results, [0], 1)
    cli._print_lines(list(summary.lines()))
    if args.result:
        write_json_atomic(Path(args.result), summary.to_json())
    return 0 if args.ignore_errors or not summary.failed else 1
