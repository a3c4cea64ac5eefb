"""Manifests that run a fleet plan's shards on an engine the user already has.

Every engine runs the same contract: ``suture fleet run --plan plan.json`` with the
shard index from the engine (Kubernetes' ``JOB_COMPLETION_INDEX``, Argo's ``{{item}}``,
a Tekton matrix parameter, a GitHub Actions matrix value) and the shard count in
``SUTURE_SHARD_COUNT`` or ``--shard I/N``. The pods run suture as a non-root user
without privileges: suture needs no daemon, no BuildKit and no root.

The plan travels in a ConfigMap (``--plan``): every shard runs that one plan. With a
config instead (``-c``, and always in the CronJob, which must plan afresh each time)
each shard plans for itself just before it runs; shards then agree as long as the
source repositories do not change meanwhile (push patched images to another
repository or registry than their sources, as copa's ``target.registry`` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

FLEET_DIR = "/fleet"
RESULTS_DIR = "/results"
UID = 10001  # the user of suture's own image (suture.devtools.suture_image)


@dataclass(frozen=True)
class RenderOptions:
    shards: int = 4
    parallelism: int | None = None
    image: str = "ghcr.io/suture/suture:latest"
    name: str = "suture-fleet"
    namespace: str | None = None
    schedule: str | None = None
    plan: bytes | None = None
    config: bytes | None = None
    registry_secret: str | None = None
    results_claim: str | None = None  # a PersistentVolumeClaim for /results (else emptyDir)
    run_args: Sequence[str] = field(default_factory=tuple)


def _run_args(o: RenderOptions, shard: str | None = None) -> list[str]:
    source = ["--plan", f"{FLEET_DIR}/plan.json"] if o.plan is not None \
        else ["-c", f"{FLEET_DIR}/fleet.yaml"]
    args = ["fleet", "run", *source, "--results", RESULTS_DIR]
    if shard is not None:
        args += ["--shard", shard]
    return args + list(o.run_args)


def _meta(o: RenderOptions, name: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/name": "suture",
                                                     "app.kubernetes.io/instance": o.name}}
    if o.namespace:
        meta["namespace"] = o.namespace
    return meta


def config_map(o: RenderOptions) -> dict[str, Any]:
    data = {}
    if o.plan is not None:
        data["plan.json"] = o.plan.decode()
    if o.config is not None:
        data["fleet.yaml"] = o.config.decode()
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(o, f"{o.name}-input"),
            "data": data}


def container_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID,
            "allowPrivilegeEscalation": False, "privileged": False,
            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}


def _volumes(o: RenderOptions) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": "input", "configMap": {"name": f"{o.name}-input"}},
        {"name": "results", **({"persistentVolumeClaim": {"claimName": o.results_claim}}
                               if o.results_claim else {"emptyDir": {}})},
        {"name": "cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "input", "mountPath": FLEET_DIR, "readOnly": True},
        {"name": "results", "mountPath": RESULTS_DIR},
        {"name": "cache", "mountPath": "/cache"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if o.registry_secret:
        volumes.append({"name": "registry-auth", "secret": {
            "secretName": o.registry_secret,
            "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}})
        mounts.append({"name": "registry-auth", "mountPath": "/docker", "readOnly": True})
    return volumes, mounts


def _env(o: RenderOptions) -> list[dict[str, Any]]:
    env = [{"name": "SUTURE_SHARD_COUNT", "value": str(o.shards)},
           {"name": "XDG_CACHE_HOME", "value": "/cache"},
           {"name": "HOME", "value": "/tmp"},
           {"name": "TMPDIR", "value": "/tmp"}]
    if o.registry_secret:
        env.append({"name": "DOCKER_CONFIG", "value": "/docker"})
    return env


def pod_template(o: RenderOptions, args: list[str]) -> dict[str, Any]:
    volumes, mounts = _volumes(o)
    return {
        "metadata": {"labels": {"app.kubernetes.io/name": "suture",
                                "app.kubernetes.io/instance": o.name}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID,
                                "fsGroup": UID,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "suture", "image": o.image, "args": args, "env": _env(o),
                "securityContext": container_security(), "volumeMounts": mounts,
                "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                              "limits": {"memory": "4Gi"}},
            }],
            "volumes": volumes,
        },
    }


def job_spec(o: RenderOptions, args: list[str]) -> dict[str, Any]:
    return {
        "completionMode": "Indexed",
        "completions": o.shards,
        "parallelism": o.parallelism or o.shards,
        # A failing shard is retried on its own (the rerun is idempotent) and never
        # stops the others.
        "backoffLimitPerIndex": 2,
        "maxFailedIndexes": o.shards,
        "ttlSecondsAfterFinished": 86400,
        "template": pod_template(o, args),
    }


def kubernetes(o: RenderOptions) -> list[dict[str, Any]]:
    """A ConfigMap (the plan or config), an Indexed Job, and with ``schedule`` a CronJob
    whose jobs plan afresh from the config."""
    docs = [config_map(o)]
    if o.plan is not None:
        docs.append({"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(o, o.name),
                     "spec": job_spec(o, _run_args(o))})
    if o.schedule:
        fresh = RenderOptions(**{**o.__dict__, "plan": None})
        docs.append({"apiVersion": "batch/v1", "kind": "CronJob",
                     "metadata": _meta(o, f"{o.name}-nightly"),
                     "spec": {"schedule": o.schedule, "concurrencyPolicy": "Forbid",
                              "jobTemplate": {"spec": job_spec(o, _run_args(fresh))}}})
    elif o.plan is None:
        docs.append({"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(o, o.name),
                     "spec": job_spec(o, _run_args(o))})
    return docs


def argo(o: RenderOptions) -> list[dict[str, Any]]:
    volumes, mounts = _volumes(o)
    shard = "{{inputs.parameters.shard}}" + f"/{o.shards}"
    return [config_map(o), {
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {k: v for k, v in {**_meta(o, ""), "generateName": f"{o.name}-"}.items()
                     if k != "name"},
        "spec": {
            "entrypoint": "fleet",
            "parallelism": o.parallelism or o.shards,
            "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "fsGroup": UID},
            "volumes": volumes,
            "templates": [
                {"name": "fleet", "steps": [[{
                    "name": "shard", "template": "shard",
                    "arguments": {"parameters": [{"name": "shard", "value": "{{item}}"}]},
                    "withSequence": {"count": str(o.shards)}}]]},
                {"name": "shard", "inputs": {"parameters": [{"name": "shard"}]},
                 "retryStrategy": {"limit": "2"},
                 "container": {"image": o.image, "args": _run_args(o, shard),
                               "env": _env(o), "securityContext": container_security(),
                               "volumeMounts": mounts}},
            ],
        },
    }]


def tekton(o: RenderOptions) -> list[dict[str, Any]]:
    volumes, mounts = _volumes(o)
    task = {
        "apiVersion": "tekton.dev/v1", "kind": "Task", "metadata": _meta(o, f"{o.name}-shard"),
        "spec": {
            "params": [{"name": "shard", "type": "string"}],
            "volumes": volumes,
            "steps": [{"name": "run", "image": o.image,
                       "args": _run_args(o, f"$(params.shard)/{o.shards}"),
                       "env": _env(o), "securityContext": container_security(),
                       "volumeMounts": mounts}],
        },
    }
    pipeline = {
        "apiVersion": "tekton.dev/v1", "kind": "Pipeline", "metadata": _meta(o, o.name),
        "spec": {"tasks": [{
            "name": "shard", "taskRef": {"name": f"{o.name}-shard"}, "retries": 2,
            "matrix": {"params": [{"name": "shard",
                                   "value": [str(i) for i in range(o.shards)]}]}}]},
    }
    return [config_map(o), task, pipeline]


def github_actions(o: RenderOptions) -> list[dict[str, Any]]:
    n = o.shards
    container = {"image": o.image, "options": f"--user {UID}"}
    extra = " ".join(o.run_args)
    run = (f"suture fleet run --plan plan.json --shard ${{{{ matrix.shard }}}}/{n} "
           f"--results results {extra}").rstrip()
    triggers: dict[str, Any] = {"workflow_dispatch": {}}
    if o.schedule:
        triggers["schedule"] = [{"cron": o.schedule}]
    return [{
        "name": o.name,
        "on": triggers,
        "permissions": {"contents": "read", "packages": "write"},
        "jobs": {
            "plan": {"runs-on": "ubuntu-latest", "container": container, "steps": [
                {"uses": "actions/checkout@v4"},
                {"run": "suture fleet plan -c fleet.yaml -o plan.json"},
                {"uses": "actions/upload-artifact@v4",
                 "with": {"name": "plan", "path": "plan.json"}}]},
            "patch": {"needs": "plan", "runs-on": "ubuntu-latest", "container": container,
                      "strategy": {"fail-fast": False, "max-parallel": o.parallelism or n,
                                   "matrix": {"shard": list(range(n))}},
                      "steps": [
                          {"uses": "actions/download-artifact@v4", "with": {"name": "plan"}},
                          {"run": run},
                          {"if": "always()", "uses": "actions/upload-artifact@v4",
                           "with": {"name": "results-${{ matrix.shard }}",
                                    "path": "results"}}]},
            "merge": {"needs": ["plan", "patch"], "if": "always()", "runs-on": "ubuntu-latest",
                      "container": container, "steps": [
                          {"uses": "actions/download-artifact@v4", "with": {"name": "plan"}},
                          {"uses": "actions/download-artifact@v4",
                           "with": {"pattern": "results-*", "path": "results",
                                    "merge-multiple": True}},
                          {"run": "suture fleet merge --plan plan.json results"}]},
        },
    }]


ENGINES = {"kubernetes": kubernetes, "argo": argo, "tekton": tekton,
           "github-actions": github_actions}


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def render(engine: str, options: RenderOptions) -> str:
    """The YAML documents for ``engine`` (``kubernetes``, ``argo``, ``tekton``,
    ``github-actions``)."""
    docs = ENGINES[engine](options)
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                         width=100)
