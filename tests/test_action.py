"""The GitHub Action (action.yml, composite): its steps run in order on this machine, as a
runner runs them (``bash -e -o pipefail`` per step, ``${{ inputs.* }}`` and
``${{ github.action_path }}`` expanded, ``GITHUB_ENV`` carried to later steps,
``GITHUB_OUTPUT`` read back), the install step included (a fresh venv, ``pip install``
of this repository).

Two workflows: copa-action's usual one (an image the job built into the Docker engine,
a Trivy report, a patched tag, a VEX output) whose result must run from ``docker
images``; and ``push: true`` of a registry image to the local registry.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from suture.oci.image import Image
from suture.transports import open_artifact, write_artifact
from tests.fixtures.aptrepo import AptRepo, GpgKeys
from tests.fixtures.dockerd import Docker
from tests.fixtures.patchimages import versions
from tests.fixtures.registry import RegistryServer
from tests.test_copa_flags import CVE, Scene, make_scene

pytestmark = [pytest.mark.tools, pytest.mark.network]  # pip install from PyPI

REPO = Path(__file__).resolve().parents[1]
ACTION = REPO / "action.yml"
COPA_ACTION_INPUTS = {"image", "image-report", "patched-tag", "timeout", "output", "format",
                      "buildkit-version", "copa-version", "custom-socket"}
_EXPR = re.compile(r"\$\{\{\s*([^}]+?)\s*\}\}")


def _action() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(ACTION.read_text())
    return doc


def _expand(text: str, inputs: Mapping[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        expr = m.group(1)
        if expr.startswith("inputs."):
            return inputs[expr.removeprefix("inputs.")]
        if expr == "github.action_path":
            return str(REPO)
        raise AssertionError(f"expression the test runner does not know: {expr}")
    return _EXPR.sub(one, text)


def run_action(given: Mapping[str, str], work: Path, env: Mapping[str, str]
               ) -> dict[str, str]:
    """Run every step of action.yml in order; the step outputs (``GITHUB_OUTPUT``) by
    step id, and the action's outputs as ``action.<name>``."""
    action = _action()
    declared = action["inputs"]
    assert set(given) <= set(declared), set(given) - set(declared)
    for name, spec in declared.items():
        if spec.get("required"):
            assert name in given, name
    inputs = {name: given.get(name, str(spec.get("default", "")))
              for name, spec in declared.items()}
    work.mkdir(parents=True, exist_ok=True)
    runner_temp = work / "runner-temp"
    runner_temp.mkdir(exist_ok=True)
    carried: dict[str, str] = {}
    outputs: dict[str, dict[str, str]] = {}
    assert action["runs"]["using"] == "composite"
    for n, step in enumerate(action["runs"]["steps"]):
        assert step.get("shell") == "bash" and "run" in step and "uses" not in step, step
        github_env, github_output = work / f"env-{n}", work / f"output-{n}"
        github_env.touch()
        github_output.touch()
        script = work / f"step-{n}.sh"
        script.write_text(_expand(step["run"], inputs))
        step_env = {k: _expand(str(v), inputs) for k, v in (step.get("env") or {}).items()}
        full_env = {**os.environ, **env, **carried, **step_env,
                    "GITHUB_ACTION_PATH": str(REPO), "GITHUB_ENV": str(github_env),
                    "GITHUB_OUTPUT": str(github_output), "GITHUB_WORKSPACE": str(work),
                    "RUNNER_TEMP": str(runner_temp)}
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail",
                               str(script)], cwd=work, env=full_env, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, f"step {step['name']!r}:\n{proc.stdout}{proc.stderr}"
        for line in github_env.read_text().splitlines():
            key, _, value = line.partition("=")
            carried[key] = value
        if "id" in step:
            outputs[step["id"]] = dict(line.partition("=")[::2] for line in
                                       github_output.read_text().splitlines())
    result = {f"{sid}.{k}": v for sid, outs in outputs.items() for k, v in outs.items()}
    for name, spec in (action.get("outputs") or {}).items():
        m = _EXPR.fullmatch(spec["value"].strip())
        assert m is not None, spec
        sid, _, key = m.group(1).removeprefix("steps.").partition(".outputs.")
        result[f"action.{name}"] = outputs.get(sid, {}).get(key, "")
    return result


def test_action_has_copa_actions_inputs() -> None:
    action = _action()
    assert COPA_ACTION_INPUTS | {"push", "platforms"} <= set(action["inputs"])
    assert action["inputs"]["image"]["required"] is True
    assert action["inputs"]["timeout"]["default"] == "5m"
    assert action["inputs"]["format"]["default"] == "openvex"
    assert "patched-image" in action["outputs"]


@pytest.fixture
def scene(apt_repo: AptRepo, gpg_keys: GpgKeys, tmp_path: Path) -> Scene:
    return make_scene(apt_repo, gpg_keys, tmp_path)


def _extra(scene: Scene) -> str:
    return " ".join(["--cache-dir", str(scene.tmp / "cache"), "--no-host-keyrings",
                     *scene.archive.mirror_args()])


def test_action_patches_an_image_of_the_docker_engine(scene: Scene, tmp_path: Path,
                                                      docker_engine: Docker) -> None:
    """copa-action's workflow: the job built ``app:1.0`` into Docker and scanned it; the
    action patches it to ``app:1.0-patched`` in Docker and writes the VEX."""
    docker = docker_engine
    tar = tmp_path / "root.tar"
    subprocess.run(["tar", "--numeric-owner", "-C", str(scene.root), "-cf", str(tar), "."],
                   check=True)
    subprocess.run(["docker", "import", str(tar), "suture-action/app:1.0"], env=docker.env,
                   check=True, capture_output=True)
    work = tmp_path / "workspace"
    work.mkdir()
    (work / "report.json").write_text(scene.report.read_text())
    try:
        out = run_action({"image": "suture-action/app:1.0", "image-report": "report.json",
                          "patched-tag": "1.0-patched", "output": "vex.json",
                          "suture-args": _extra(scene)}, work, {"DOCKER_HOST": docker.host})
        assert out["action.patched-image"] == "suture-action/app:1.0-patched"
        run = docker.run("suture-action/app:1.0-patched", "greet")
        assert run.stdout == "greet 2.0-1\n", run.stderr
        vex = json.loads((work / "vex.json").read_text())
        assert [s["vulnerability"]["name"] for s in vex["statements"]] == [CVE]
    finally:
        docker.remove_images("suture-action/app:1.0", "suture-action/app:1.0-patched")


def test_action_pushes_to_the_registry(scene: Scene, tmp_path: Path,
                                       registry: RegistryServer) -> None:
    remote = f"127.0.0.1:{registry.port}/action/app:1.0"
    source = open_artifact(scene.ref)
    assert isinstance(source, Image)
    write_artifact(source, remote)
    out = run_action({"image": remote, "push": "true", "platforms": "linux/amd64",
                      "suture-args": _extra(scene)}, tmp_path / "workspace",
                     {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"})
    assert out["action.patched-image"] == f"{remote}-patched"
    patched = open_artifact(f"{remote}-patched")
    assert isinstance(patched, Image)
    assert len(patched.manifest.layers) == len(source.manifest.layers) + 1
    assert versions(patched)["greet"] == "2.0-1"
