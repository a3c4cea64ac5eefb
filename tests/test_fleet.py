"""Fleet patching end to end against a real registry: the shard contract as Kubernetes
runs it (N processes with JOB_COMPLETION_INDEX=0..N-1, the rendered Job's own
arguments), GitLab's CI_NODE_INDEX, a shard killed mid-push and run again, failures that
stop nothing else, per-image timeouts, Ctrl-C, and the rendered manifests checked against
the Kubernetes client's models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from suture.distro.apk.installed import parse_installed
from suture.fleet.plan import Plan, assign_shards
from suture.oci.fs import read_files
from suture.oci.image import Image, walk_blobs
from suture.transports import open_artifact
from tests.fixtures.fleet import FleetScene
from tests.fixtures.images import make_image
from tests.fixtures.patchimages import suture
from tests.test_cli_run import _interruptible

BASES = ("a", "b", "c")


def _config(scene: FleetScene, target: str, *, extra: str = "") -> str:
    images = "".join(
        f"  - name: app{b}\n    image: {scene.host}/src/app{b}\n"
        f"    tags:\n      strategy: pattern\n      pattern: '^1\\.'\n" for b in BASES)
    return (f"apiVersion: copa.sh/v1alpha1\nkind: PatchConfig\ntarget:\n"
            f"  registry: {scene.host}/{target}\nimages:\n{images}{extra}")


def _fleet(scene: FleetScene, tags: int = 3) -> None:
    scene.publish(BASES)
    for b in BASES:
        for n in range(tags):
            scene.push(f"app{b}", f"1.0.{n}", b)
        scene.push(f"app{b}", "latest", b)


def _plan(tmp: Path, config_text: str, name: str = "plan.json") -> Path:
    config = tmp / f"{name}.yaml"
    config.write_text(config_text)
    out = tmp / name
    proc = suture("fleet", "plan", "-c", str(config), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("JOB_COMPLETION_INDEX", "SUTURE_SHARD_COUNT", "CI_NODE_INDEX",
                        "CI_NODE_TOTAL")}
    env.update(extra)
    return env


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "suture", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=_interruptible)


def _versions(image: Image) -> dict[str, str]:
    data = read_files(image, ["lib/apk/db/installed"])["lib/apk/db/installed"].data or b""
    return {p.name: p.version for p in parse_installed(data)}


def _merge(plan: Path, *results: Path) -> tuple[subprocess.CompletedProcess[str], Any]:
    summary = plan.with_name(f"{plan.stem}-summary.json")
    proc = suture("fleet", "merge", "--plan", str(plan), *map(str, results),
                  "--json", str(summary))
    return proc, json.loads(summary.read_text()) if summary.exists() else None


def _check_pushed(scene: FleetScene, summary: Any) -> dict[str, str]:
    """Every job patched; what its tag names in the registry is the digest reported, with
    the updates installed and the app layer kept. Returns {job id: digest}."""
    out = {}
    for job in summary["jobs"]:
        assert job["status"] == "patched", job
        image = open_artifact(job["target"], scene.options)
        assert isinstance(image, Image)
        assert image.digest == job["digest"]
        base = job["name"].removeprefix("app")
        assert _versions(image) == {"musl": "1.2.5-r1", f"lib{base}": "1.0-r1"}
        version = read_files(image, ["srv/app/version"])["srv/app/version"].data
        assert version == f"app{base} {job['source'].rsplit(':', 1)[1]}\n".encode()
        out[job["id"]] = job["digest"]
    return out


# ----------------------------------------------------------------------- the shard contract


def test_indexed_job_processes_patch_the_fleet(fleet_scene: FleetScene,
                                               tmp_path: Path) -> None:
    scene = fleet_scene
    _fleet(scene)
    plan_path = _plan(tmp_path, _config(scene, "patched"))
    plan = Plan.from_bytes(plan_path.read_bytes())
    assert len(plan.jobs) == 9 and len(plan.groups()) == 3
    # Three shards, the way a Kubernetes Indexed Job starts them: the index in
    # JOB_COMPLETION_INDEX, the count in SUTURE_SHARD_COUNT (no --shard).
    results = tmp_path / "results"
    procs = [_start(["fleet", "run", "--plan", str(plan_path), "--results", str(results),
                     *scene.run_args()],
                    _env(JOB_COMPLETION_INDEX=str(i), SUTURE_SHARD_COUNT="3"))
             for i in range(3)]
    for proc in procs:
        _out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    assert sorted(p.name for p in results.iterdir()) == ["0.json", "1.json", "2.json"]
    # A base group is never split: each shard ran whole groups.
    for i in range(3):
        ids = {j["id"] for j in json.loads((results / f"{i}.json").read_text())["jobs"]}
        assert ids and all({j.id for j in group} <= ids or not {j.id for j in group} & ids
                           for group in plan.groups().values())
    merged, summary = _merge(plan_path, results)
    assert merged.returncode == 0, merged.stderr
    assert summary["counts"] == {"patched": 9}
    _check_pushed(scene, summary)
    # The summary lists every image with its status, tag and digest.
    lines = merged.stdout.splitlines()
    for job in summary["jobs"]:
        row = next(line for line in lines if job["source"] in line)
        assert job["status"] in row and job["tag"] in row and job["digest"][:19] in row
    # latest is no semantic version: not matched by the pattern, not patched.
    assert scene.tag_files("patched/appa") == {"1.0.0-patched", "1.0.1-patched",
                                               "1.0.2-patched"}


def test_gitlab_parallel_and_the_rendered_job_run_the_same_contract(
        fleet_scene: FleetScene, tmp_path: Path) -> None:
    """GitLab's CI_NODE_INDEX (1-based) / CI_NODE_TOTAL; and the container arguments and
    environment of the rendered Indexed Job, run as they are (paths mapped to here)."""
    scene = fleet_scene
    _fleet(scene, tags=2)
    plan_path = _plan(tmp_path, _config(scene, "gitlab"))
    results = tmp_path / "gitlab"
    procs = [_start(["fleet", "run", "--plan", str(plan_path), "--results", str(results),
                     *scene.run_args()], _env(CI_NODE_INDEX=str(i), CI_NODE_TOTAL="2"))
             for i in (1, 2)]
    for proc in procs:
        _out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    assert sorted(p.name for p in results.iterdir()) == ["0.json", "1.json"]
    merged, summary = _merge(plan_path, results)
    assert merged.returncode == 0, merged.stderr
    gitlab = _check_pushed(scene, summary)

    plan_path = _plan(tmp_path, _config(scene, "k8s"), "k8s-plan.json")
    rendered = suture("fleet", "render", "--kubernetes", "--plan", str(plan_path),
                      "--shards", "2", "--run-args", " ".join(scene.run_args()))
    assert rendered.returncode == 0, rendered.stderr
    configmap, job = yaml.safe_load_all(rendered.stdout)
    fleet_dir, results = tmp_path / "fleet", tmp_path / "k8s-results"
    fleet_dir.mkdir()
    for name, text in configmap["data"].items():
        (fleet_dir / name).write_text(text)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    args = [a.replace("/fleet", str(fleet_dir)).replace("/results", str(results))
            for a in container["args"]]
    env = {e["name"]: e["value"] for e in container["env"]
           if e["name"] not in ("HOME", "TMPDIR", "XDG_CACHE_HOME")}
    procs = [_start(args, _env(**env, JOB_COMPLETION_INDEX=str(i)))
             for i in range(job["spec"]["completions"])]
    for proc in procs:
        _out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    merged, summary = _merge(plan_path, results)
    assert merged.returncode == 0, merged.stderr
    k8s = _check_pushed(scene, summary)
    # Same sources, same patches: the digests agree across the two runs.
    assert sorted(gitlab.values()) == sorted(k8s.values())


def _tags_of(scene: FleetScene, namespace: str) -> dict[str, set[str]]:
    return {f"app{b}": scene.tag_files(f"{namespace}/app{b}") for b in BASES}


def _mid_push(scene: FleetScene, namespace: str) -> bool:
    """A target repository has blobs but no tag yet (a push in flight), or some tag."""
    root = scene.registry.storage / "docker/registry/v2/repositories" / namespace
    if not root.is_dir():
        return False
    for repo in root.iterdir():
        if (repo / "_layers").is_dir() and not (repo / "_manifests/tags").is_dir():
            return True
    return any(_tags_of(scene, namespace).values())


def test_a_shard_killed_mid_push_and_run_again_equals_a_clean_run(
        fleet_scene: FleetScene, tmp_path: Path) -> None:
    scene = fleet_scene
    _fleet(scene, tags=3)
    clean_plan = _plan(tmp_path, _config(scene, "clean"), "clean.json")
    proc = suture("fleet", "run", "--plan", str(clean_plan), "--shard", "0/1",
                  "--results", str(tmp_path / "clean"), *scene.run_args())
    assert proc.returncode == 0, proc.stderr
    _merged, clean = _merge(clean_plan, tmp_path / "clean")
    clean_digests = _check_pushed(scene, clean)

    plan_path = _plan(tmp_path, _config(scene, "killed"), "killed.json")
    results = tmp_path / "killed"
    plan = Plan.from_bytes(plan_path.read_bytes())
    shard0 = {j.id for j in assign_shards(plan, 2)[0]}
    args = ["fleet", "run", "--plan", str(plan_path), "--results", str(results), "-j", "1",
            *scene.run_args()]
    victim = _start([*args, "--shard", "0/2"], _env())
    deadline = time.monotonic() + 120
    while not _mid_push(scene, "killed") and victim.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.communicate(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    pushed_at_kill = sum(len(t) for t in _tags_of(scene, "killed").values())
    assert pushed_at_kill < len(shard0), "the shard finished before it was killed"
    assert not (results / "0.json").exists()
    # The merge sees the missing shard and fails.
    other = subprocess.run([sys.executable, "-m", "suture", *args, "--shard", "1/2"],
                           capture_output=True, text=True, timeout=240, env=_env())
    assert other.returncode == 0, other.stderr
    merged, summary = _merge(plan_path, results)
    assert merged.returncode == 1
    assert {j["id"] for j in summary["jobs"] if j["status"] == "missing"} == shard0
    # Run the killed shard again: the same plan, the same pushes by digest, tags last.
    again = subprocess.run([sys.executable, "-m", "suture", *args, "--shard", "0/2"],
                           capture_output=True, text=True, timeout=240, env=_env())
    assert again.returncode == 0, again.stderr
    merged, summary = _merge(plan_path, results)
    assert merged.returncode == 0, merged.stderr
    assert _check_pushed(scene, summary) == clean_digests
    assert {k: v for k, v in _tags_of(scene, "killed").items()} == \
        {k: v for k, v in _tags_of(scene, "clean").items()}


# ----------------------------------------------------------------------- scale


def test_failures_stop_nothing_else_and_fail_the_merge(fleet_scene: FleetScene,
                                                       tmp_path: Path) -> None:
    scene = fleet_scene
    _fleet(scene, tags=2)
    # An image with no package database (fails at run time) and a listed tag that does
    # not exist (fails at plan time).
    from suture.oci.layer import Entry
    from suture.transports import write_artifact

    write_artifact(make_image([Entry.file("srv/app/version", b"static\n")]),
                   f"{scene.host}/src/appstatic:1.0.0", scene.options)
    extra = (f"  - name: appstatic\n    image: {scene.host}/src/appstatic\n"
             f"    tags: {{strategy: list, list: ['1.0.0', '9.9.9']}}\n")
    plan_path = _plan(tmp_path, _config(scene, "partial", extra=extra))
    proc = suture("fleet", "run", "--plan", str(plan_path), "--shard", "0/1", "-j", "3",
                  "--results", str(tmp_path / "results"), *scene.run_args())
    assert proc.returncode == 1
    merged, summary = _merge(plan_path, tmp_path / "results")
    assert merged.returncode == 1
    status = {j["id"]: (j["status"], j["message"]) for j in summary["jobs"]}
    assert status["appstatic:1.0.0"][0] == "error"
    assert "no package database" in status["appstatic:1.0.0"][1]
    assert status["appstatic:9.9.9"][0] == "error"
    assert "cannot resolve" in status["appstatic:9.9.9"][1]
    assert summary["counts"] == {"error": 2, "patched": 6}
    # Every image is in the table; --ignore-errors makes the merge pass.
    assert all(any(j["source"] in line for line in merged.stdout.splitlines())
               for j in summary["jobs"])
    proc = suture("fleet", "merge", "--plan", str(plan_path), str(tmp_path / "results"),
                  "--ignore-errors")
    assert proc.returncode == 0


def test_per_image_timeout(fleet_scene: FleetScene, tmp_path: Path) -> None:
    scene = fleet_scene
    _fleet(scene, tags=1)
    plan_path = _plan(tmp_path, _config(scene, "slow"))
    proc = suture("fleet", "run", "--plan", str(plan_path), "--shard", "0/1",
                  "--timeout", "0.001s", "--results", str(tmp_path / "results"),
                  *scene.run_args())
    assert proc.returncode == 1
    jobs = json.loads((tmp_path / "results" / "0.json").read_text())["jobs"]
    assert len(jobs) == 3
    assert all(j["status"] == "error" and "timed out" in j["message"] for j in jobs), jobs
    assert not any(_tags_of(scene, "slow").values())


def test_ctrl_c_stops_every_job_cleanly(fleet_scene: FleetScene, tmp_path: Path) -> None:
    scene = fleet_scene
    _fleet(scene, tags=4)
    plan_path = _plan(tmp_path, _config(scene, "stopped"))
    results = tmp_path / "results"
    proc = _start(["fleet", "run", "--plan", str(plan_path), "--shard", "0/1", "-j", "2",
                   "--results", str(results), *scene.run_args()], _env())
    deadline = time.monotonic() + 120
    while not any(_tags_of(scene, "stopped").values()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    stopped_at = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert time.monotonic() - stopped_at < 15
    assert proc.returncode == 130, err
    assert "suture: interrupted" in err and "Traceback" not in err
    assert not results.exists() or not any(results.iterdir())
    # Fewer than all were pushed, and every tag that exists names a complete image.
    tags = _tags_of(scene, "stopped")
    assert 0 < sum(len(t) for t in tags.values()) < 12
    for repo, names in tags.items():
        for tag in names:
            image = open_artifact(f"{scene.host}/stopped/{repo}:{tag}", scene.options)
            for item in walk_blobs(image):
                if hasattr(item, "open"):
                    with item.open() as blob:
                        while blob.read(1 << 20):
                            pass


# ----------------------------------------------------------------------- rendering


def _k8s_model(doc: dict[str, Any]) -> None:
    """``doc`` deserialises into the Kubernetes client's model of its kind, and that model
    serialises back to exactly ``doc`` (a misspelt or unknown field would be dropped)."""
    from kubernetes.client import ApiClient

    client = ApiClient()
    model = client._ApiClient__deserialize(doc, f"V1{doc['kind']}")  # type: ignore[attr-defined]
    assert client.sanitize_for_serialization(model) == doc  # type: ignore[no-untyped-call]


def test_rendered_kubernetes_objects_are_valid_models(tmp_path: Path) -> None:
    pytest.importorskip("kubernetes")
    plan = tmp_path / "plan.json"
    plan.write_bytes(Plan([]).to_bytes())
    config = tmp_path / "fleet.yaml"
    config.write_text("apiVersion: copa.sh/v1alpha1\nkind: PatchConfig\nimages: []\n")
    proc = suture("fleet", "render", "--kubernetes", "--plan", str(plan), "-c", str(config),
                  "--shards", "5", "--parallelism", "2", "--schedule", "0 3 * * *",
                  "--registry-secret", "regcred", "--namespace", "patching",
                  "--results-claim", "fleet-results")
    assert proc.returncode == 0, proc.stderr
    docs = list(yaml.safe_load_all(proc.stdout))
    assert [d["kind"] for d in docs] == ["ConfigMap", "Job", "CronJob"]
    for doc in docs:
        _k8s_model(doc)
    job, cron = docs[1]["spec"], docs[2]["spec"]["jobTemplate"]["spec"]
    assert (job["completionMode"], job["completions"], job["parallelism"]) == ("Indexed", 5, 2)
    assert docs[0]["data"]["plan.json"] == plan.read_text()
    for spec in (job, cron):
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["containers"]
        sc = container["securityContext"]
        assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsUser"] != 0
        assert {"name": "SUTURE_SHARD_COUNT", "value": "5"} in container["env"]
    assert "--plan" in job["template"]["spec"]["containers"][0]["args"]
    assert "-c" in cron["template"]["spec"]["containers"][0]["args"]  # plans afresh
    assert {"name": "results", "persistentVolumeClaim": {"claimName": "fleet-results"}} in \
        job["template"]["spec"]["volumes"]


def test_rendered_argo_tekton_and_github_actions(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_bytes(Plan([]).to_bytes())

    def render(flag: str) -> list[Any]:
        proc = suture("fleet", "render", flag, "--plan", str(plan), "--shards", "3")
        assert proc.returncode == 0, proc.stderr
        return list(yaml.safe_load_all(proc.stdout))

    _cm, wf = render("--argo")
    step = wf["spec"]["templates"][0]["steps"][0][0]
    assert step["withSequence"] == {"count": "3"}
    shard = wf["spec"]["templates"][1]["container"]["args"]
    assert shard[shard.index("--shard") + 1] == "{{inputs.parameters.shard}}/3"
    _cm, task, pipeline = render("--tekton")
    assert pipeline["spec"]["tasks"][0]["matrix"]["params"] == [
        {"name": "shard", "value": ["0", "1", "2"]}]
    assert "$(params.shard)/3" in task["spec"]["steps"][0]["args"]
    (workflow,) = render("--github-actions")
    patch = workflow["jobs"]["patch"]
    assert patch["strategy"]["matrix"]["shard"] == [0, 1, 2]
    assert patch["strategy"]["fail-fast"] is False
    assert "--shard ${{ matrix.shard }}/3" in patch["steps"][1]["run"]
    assert workflow["jobs"]["merge"]["if"] == "always()"


# ----------------------------------------------------------------------- one patch per base


def test_one_patch_per_base_gives_the_same_images(fleet_scene: FleetScene,
                                                  tmp_path: Path) -> None:
    """Images of one base take the first one's patch layer (mounted across repositories):
    the images are byte-identical to patching each on its own; an image whose app layer
    touches etc/ (where repositories and keys live) is patched on its own."""
    from suture.oci.layer import Entry
    from suture.oci.mutate import append_layers
    from suture.transports import write_artifact
    from tests.fixtures.images import layer_from

    scene = fleet_scene
    _fleet(scene, tags=3)
    etc = append_layers(scene.base("a"), [layer_from([
        Entry("etc", "dir", 0o755), Entry.file("etc/motd", b"hello\n")])])
    write_artifact(etc, f"{scene.host}/src/appa:1.9.0", scene.options)
    scene.push("other", "1.0.0", "a")  # another repository on base a
    other = (f"  - name: other\n    image: {scene.host}/src/other\n"
             f"    tags: {{strategy: list, list: ['1.0.0']}}\n")
    results = {}
    for mode in ("reuse", "alone"):
        plan = _plan(tmp_path, _config(scene, mode, extra=other), f"{mode}.json")
        flags = [] if mode == "reuse" else ["--no-reuse"]
        proc = suture("fleet", "run", "--plan", str(plan), "--shard", "0/1", "-j", "2",
                      "--results", str(tmp_path / mode), *flags, *scene.run_args())
        assert proc.returncode == 0, proc.stderr
        _merged, summary = _merge(plan, tmp_path / mode)
        results[mode] = {j["id"]: j for j in summary["jobs"]}
    reuse, alone = results["reuse"], results["alone"]
    assert {k: v["digest"] for k, v in reuse.items()} == \
        {k: v["digest"] for k, v in alone.items()}
    assert all(j["reusedFrom"] is None for j in alone.values())
    reused = {k: j for k, j in reuse.items() if j["reusedFrom"]}
    # Per base, one patch: a leader, and its other plain tags take its layer; in the
    # leader's repository it is there, in another one it is mounted.
    assert len(reused) == 7
    for job in reused.values():
        leader = reuse[job["reusedFrom"]]
        assert leader["reusedFrom"] is None and job["layers"] == leader["layers"]
        assert leader["name"] == job["name"] or job["name"] == "other"
        where = "mounted" if job["name"] != leader["name"] else "present"
        assert f"(layer {where})" in job["message"], job
    assert reuse["other:1.0.0"]["reusedFrom"] == "appa:1.0.0"
    assert reuse["appa:1.9.0"]["reusedFrom"] is None
    assert "an upper layer touches etc" in reuse["appa:1.9.0"]["message"], reuse["appa:1.9.0"]
    _check_pushed(scene, {"jobs": [j for k, j in reuse.items()
                                   if k not in ("other:1.0.0", "appa:1.9.0")]})
    for job in ("other:1.0.0", "appa:1.9.0"):
        image = open_artifact(reuse[job]["target"], scene.options)
        assert isinstance(image, Image)
        assert _versions(image) == {"musl": "1.2.5-r1", "liba": "1.0-r1"}


# ----------------------------------------------------------------------- shared package cache


def test_packages_are_shared_through_the_registry(registry: Any, apt_repo: Any,
                                                  gpg_keys: Any, tmp_path: Path) -> None:
    """Two Debian images of different bases need the same fixed .deb: the first shard
    downloads it upstream and pushes it to the registry cache (keyed by the SHA256 of the
    archive's Packages index), the second finds it there with a HEAD, fetches and checks it,
    and never asks the archive."""
    from suture.transports import Options, write_artifact
    from tests.fixtures.patchimages import Archive, debian_os_release, make_root, write_image

    archive = Archive.create(apt_repo, gpg_keys.good, tmp_path, "bookworm")
    a1 = archive.add("bookworm", "a", "1.0-1")
    b1 = archive.add("bookworm", "b", "1.0-1")
    a2 = archive.add("bookworm-security", "a", "1.0-2",
                     {"usr/share/a/data": bytes(range(256)) * 64})
    archive.publish()
    options = Options(registry=registry.options())
    for name, debs in (("one", [a1]), ("two", [a1, b1])):
        root = make_root(tmp_path / f"root-{name}", debs, debian_os_release(),
                         sources={"etc/apt/sources.list":
                                  "deb http://deb.debian.org/debian bookworm main\n"},
                         keyring=archive.key_asc())
        write_artifact(open_artifact(write_image(root, tmp_path, name)),
                       f"{registry.host}/src/{name}:1.0.0", options)
    images = "".join(f"  - name: {n}\n    image: {registry.host}/src/{n}\n"
                     "    tags: {strategy: list, list: ['1.0.0']}\n" for n in ("one", "two"))
    plan_path = _plan(tmp_path, "apiVersion: copa.sh/v1alpha1\nkind: PatchConfig\ntarget:\n"
                      f"  registry: {registry.host}/patched\nimages:\n{images}")
    plan = Plan.from_bytes(plan_path.read_bytes())
    assert [[j.id for j in s] for s in assign_shards(plan, 2)] == [["one:1.0.0"],
                                                                   ["two:1.0.0"]]
    results = tmp_path / "results"
    for shard in (0, 1):
        proc = suture("fleet", "run", "--plan", str(plan_path), "--shard", f"{shard}/2",
                      "--results", str(results), "--cache-dir", str(tmp_path / f"c{shard}"),
                      "--package-cache", f"{registry.host}/cache", "--sandbox", "none",
                      "--no-host-keyrings", *archive.mirror_args())
        assert proc.returncode == 0, proc.stderr
    import hashlib

    digest = hashlib.sha256(a2.read_bytes()).hexdigest()
    (first,) = json.loads((results / "0.json").read_text())["jobs"]
    (second,) = json.loads((results / "1.json").read_text())["jobs"]
    assert first["packageCache"] == {"hits": [], "pushed": [digest], "rejected": []}
    assert second["packageCache"] == {"hits": [digest], "pushed": [], "rejected": []}
    assert len(archive.fetched(a2.name)) == 1  # upstream once, for the whole fleet
    manifest = open_artifact(f"{registry.host}/cache/dpkg:pkg-{digest}", options)
    assert manifest.digest.startswith("sha256:")
    assert json.loads(manifest.raw_manifest)["artifactType"] == \
        "application/vnd.suture.cache.pkg.v1"
    merged, summary = _merge(plan_path, results)
    assert merged.returncode == 0, merged.stderr
    from tests.fixtures.patchimages import versions

    for job in summary["jobs"]:
        image = open_artifact(job["target"], options)
        assert isinstance(image, Image) and versions(image)["a"] == "1.0-2"
    # A cached blob that no longer matches its digest is refused after the GET: the
    # package comes from the archive again, verified as always.
    blob = registry.blob_file(f"sha256:{digest}")
    blob.write_bytes(bytes(b ^ 0xFF for b in blob.read_bytes()))
    again = tmp_path / "again"
    proc = suture("fleet", "run", "--plan", str(plan_path), "--shard", "1/2",
                  "--results", str(again), "--cache-dir", str(tmp_path / "c3"),
                  "--package-cache", f"{registry.host}/cache", "--sandbox", "none",
                  "--no-host-keyrings", *archive.mirror_args())
    assert proc.returncode == 0, proc.stderr
    (third,) = json.loads((again / "1.json").read_text())["jobs"]
    assert third["status"] == "patched"
    assert third["packageCache"]["rejected"] == [digest] and not third["packageCache"]["hits"]
    assert len(archive.fetched(a2.name)) == 2
