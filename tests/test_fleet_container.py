"""The shard contract in containers: suture's own image (an mmdebstrap root plus suture,
built without an engine) run by the real dockerd as N containers with
``-e JOB_COMPLETION_INDEX=i``, on the host network, against the CNCF registry and the
apk repository on 127.0.0.1, as non-root; the merged result has every image patched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from suture.devtools.suture_image import build_suture_image
from suture.fleet.plan import Plan
from suture.oci.image import Image
from suture.transports import open_artifact
from tests.fixtures.dockerd import Docker
from tests.fixtures.fleet import FleetScene
from tests.fixtures.patchimages import suture

pytestmark = [pytest.mark.network, pytest.mark.tools]


def test_indexed_job_as_containers(tmp_path: Path, docker_engine: Docker,
                                   fleet_scene: FleetScene) -> None:
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the bookworm image is built with Python 3.11")
    docker = docker_engine
    scene = fleet_scene
    scene.publish(["a", "b"])
    for base in ("a", "b"):
        for n in range(2):
            scene.push(f"app{base}", f"1.0.{n}", base)
    config = tmp_path / "fleet.yaml"
    config.write_text(
        "apiVersion: copa.sh/v1alpha1\nkind: PatchConfig\n"
        f"target:\n  registry: {scene.host}/boxed\nimages:\n" + "".join(
            f"  - name: app{b}\n    image: {scene.host}/src/app{b}\n"
            "    tags: {strategy: pattern, pattern: '^1\\.'}\n" for b in ("a", "b")))
    fleet_dir, results = tmp_path / "fleet", tmp_path / "results"
    fleet_dir.mkdir()
    results.mkdir()
    os.chmod(fleet_dir, 0o755)
    os.chmod(results, 0o777)  # the containers run as the image's non-root user
    plan_path = fleet_dir / "plan.json"
    proc = suture("fleet", "plan", "-c", str(config), "-o", str(plan_path))
    assert proc.returncode == 0, proc.stderr
    os.chmod(plan_path, 0o644)

    ref = f"oci:{tmp_path}/suture-image:fleet"
    build_suture_image(ref, workdir=tmp_path)
    proc = subprocess.run([sys.executable, "-m", "suture", "copy", ref,
                           "docker-daemon:suture-image:fleet"], capture_output=True,
                          text=True, env={**os.environ, "DOCKER_HOST": docker.host},
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    try:
        shards = 2
        procs = [subprocess.Popen(
            ["docker", "run", "--rm", "--network", "host", "--pull", "never",
             "-e", f"JOB_COMPLETION_INDEX={i}", "-e", f"SUTURE_SHARD_COUNT={shards}",
             "-e", "XDG_CACHE_HOME=/tmp/cache",
             "-v", f"{fleet_dir}:/fleet:ro", "-v", f"{results}:/results",
             "suture-image:fleet", "fleet", "run", "--plan", "/fleet/plan.json",
             "--results", "/results", *scene.mirror_args(), "--sandbox", "none"],
            env=docker.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(shards)]
        for p in procs:
            _out, err = p.communicate(timeout=600)
            assert p.returncode == 0, err
    finally:
        docker.remove_images("suture-image:fleet")
    assert sorted(p.name for p in results.iterdir()) == ["0.json", "1.json"]
    merged = suture("fleet", "merge", "--plan", str(plan_path), str(results), "--json",
                    str(tmp_path / "summary.json"))
    assert merged.returncode == 0, merged.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    plan = Plan.from_bytes(plan_path.read_bytes())
    assert summary["counts"] == {"patched": len(plan.jobs)} and len(plan.jobs) == 4
    for job in summary["jobs"]:
        image = open_artifact(job["target"], scene.options)
        assert isinstance(image, Image) and image.digest == job["digest"]
