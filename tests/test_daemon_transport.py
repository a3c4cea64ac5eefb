"""``docker-daemon:`` and ``podman:`` images: read from and loaded into real engines.

The engines are Debian's dockerd 20.10 (``tests/fixtures/dockerd.py``) and ``podman
system service`` (``tests/fixtures/podman.py``), each with its own storage and socket.
Images get into them as a user's would: ``docker import`` / ``podman import`` of a
root that the real ``dpkg --root`` installed tiny packages into (a static busybox as
``/bin/sh`` and ``greet``, a shell script printing its version). The local signed
archive (``tests/fixtures/aptrepo.py``) has ``greet`` 2.0-1 in ``-security``. The
patched image must then run from the engine's own image list, with no network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from suture.oci.image import Image
from suture.transports import EngineOptions, Options, open_artifact, write_artifact
from suture.transports.reference import parse_reference
from tests.fixtures.aptrepo import AptRepo, GpgKeys
from tests.fixtures.debs import File
from tests.fixtures.dockerd import Docker
from tests.fixtures.patchimages import (
    Archive,
    debian_os_release,
    make_root,
    versions,
    write_image,
)
from tests.fixtures.podman import Podman

pytestmark = pytest.mark.tools

BUSYBOX = Path("/bin/busybox")
SOURCES = "deb http://deb.debian.org/debian bookworm main\n"


def _greet(version: str) -> dict[str, File]:
    return {"usr/bin/greet": File(f"#!/bin/sh\necho greet {version}\n".encode(), 0o755)}


@dataclass
class AppScene:
    """A root with greet 1.0-1 (tar at ``root_tar``) and the archive that updates it."""

    archive: Archive
    root: Path
    root_tar: Path
    tmp: Path

    def suture(self, *args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "suture", *args], capture_output=True,
                              text=True, timeout=300, env={**os.environ, **env})

    def patch(self, *args: str, env: Mapping[str, str]) -> tuple[
            subprocess.CompletedProcess[str], dict[str, Any] | None]:
        result = self.tmp / "result.json"
        result.unlink(missing_ok=True)
        proc = self.suture("patch", *args, "--cache-dir", str(self.tmp / "cache"),
                           "--no-host-keyrings", *self.archive.mirror_args(),
                           "--result", str(result), env=env)
        doc = json.loads(result.read_text()) if result.exists() else None
        return proc, doc


def make_app_scene(apt_repo: AptRepo, gpg_keys: GpgKeys, tmp: Path) -> AppScene:
    if not BUSYBOX.exists():
        pytest.skip("needs a static /bin/busybox (busybox-static)")
    archive = Archive.create(apt_repo, gpg_keys.good, tmp, "bookworm")
    shell = archive.add("bookworm", "sutsh", "1.0-1",
                        {"bin/sh": File(BUSYBOX.read_bytes(), 0o755)})
    greet = archive.add("bookworm", "greet", "1.0-1", _greet("1.0-1"))
    archive.add("bookworm-security", "greet", "2.0-1", _greet("2.0-1"))
    archive.publish()
    root = make_root(tmp / "root", [shell, greet], debian_os_release(),
                     sources={"etc/apt/sources.list": SOURCES}, keyring=archive.key_asc())
    tar = tmp / "root.tar"
    subprocess.run(["tar", "--numeric-owner", "--sort=name", "-C", str(root), "-cf", str(tar),
                    "."], check=True, capture_output=True)
    return AppScene(archive, root, tar, tmp)


@pytest.fixture
def app(apt_repo: AptRepo, gpg_keys: GpgKeys, tmp_path: Path) -> AppScene:
    return make_app_scene(apt_repo, gpg_keys, tmp_path)


def _docker_import(docker: Docker, tar: Path, name: str) -> str:
    proc = subprocess.run(["docker", "import", str(tar), name], env=docker.env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return docker.image_id(name)


def _docker_env(docker: Docker) -> dict[str, str]:
    return {"DOCKER_HOST": docker.host}


def _layers(docker: Docker, name: str) -> list[str]:
    out = docker.cli("image", "inspect", "-f", "{{json .RootFS.Layers}}", name).stdout
    layers: list[str] = json.loads(out)
    return layers


def test_patch_docker_daemon_image_runs_from_docker_images(app: AppScene,
                                                           docker_engine: Docker) -> None:
    """copa's everyday line with suture: ``patch -i docker-daemon:app:1 -t 1-patched``
    (no --push, no destination): the result is loaded back into the engine and runs."""
    docker = docker_engine
    original_id = _docker_import(docker, app.root_tar, "suture-app:1")
    try:
        proc, doc = app.patch("-i", "docker-daemon:suture-app:1", "-t", "1-patched",
                              env=_docker_env(docker))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert doc is not None
        assert doc["target"]["reference"] == "docker-daemon:suture-app:1-patched"
        assert doc["source"]["reference"] == "docker-daemon:suture-app:1"
        assert [(u["name"], u["from"], u["to"]) for u in doc["platforms"][0]["updates"]] == [
            ("greet", "1.0-1", "2.0-1")]
        listed = docker.cli("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
        assert "suture-app:1-patched" in listed
        run = docker.run("suture-app:1-patched", "greet")
        assert (run.returncode, run.stdout) == (0, "greet 2.0-1\n"), run.stderr
        before = docker.run("suture-app:1", "greet")
        assert before.stdout == "greet 1.0-1\n"
        assert docker.image_id("suture-app:1") == original_id
        # The original layer is kept and one patch layer is added on top.
        patched_layers = _layers(docker, "suture-app:1-patched")
        assert patched_layers[:-1] == _layers(docker, "suture-app:1")
        assert len(patched_layers) == 2
        # What suture reads back from the engine is what it wrote.
        opts = Options(engines=EngineOptions(docker_host=docker.host))
        image = open_artifact("docker-daemon:suture-app:1-patched", opts)
        assert isinstance(image, Image)
        assert versions(image)["greet"] == "2.0-1"
        assert image.manifest.config.digest == docker.image_id("suture-app:1-patched")
    finally:
        docker.remove_images("suture-app:1", "suture-app:1-patched")


def test_layers_past_the_memory_budget_are_streamed_again(app: AppScene,
                                                         docker_engine: Docker) -> None:
    """With no memory for layers, every layer read streams the export again up to it:
    the bytes read are the same, each checked against its digest."""
    docker = docker_engine
    _docker_import(docker, app.root_tar, "suture-app:stream")
    try:
        kept = open_artifact("docker-daemon:suture-app:stream",
                             Options(engines=EngineOptions(docker_host=docker.host)))
        streamed = open_artifact("docker-daemon:suture-app:stream",
                                 Options(engines=EngineOptions(docker_host=docker.host,
                                                               memory=0)))
        assert isinstance(kept, Image) and isinstance(streamed, Image)
        assert kept.digest == streamed.digest
        [layer] = streamed.manifest.layers
        assert layer.size > 1 << 20  # larger than what is always kept (busybox alone is)
        with kept.source.open_blob(layer) as a, streamed.source.open_blob(layer) as b:
            assert a.read() == b.read()
        assert versions(streamed)["greet"] == "1.0-1"
    finally:
        docker.remove_images("suture-app:stream")


def test_loading_back_leaves_out_the_layers_docker_has(app: AppScene, tmp_path: Path,
                                                       docker_engine: Docker,
                                                       caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    """Back into the engine it came from, only the patch layer, the config and
    manifest.json are sent (Docker uses the base layer it has); the image runs. When the
    named image does not have the layers, every layer is sent."""
    import logging

    from suture.patch import destination_for
    from tests.fixtures.patchimages import open_image

    docker = docker_engine
    env = _docker_env(docker)
    _docker_import(docker, app.root_tar, "suture-skip:1")
    try:
        proc, _doc = app.patch("-i", "docker-daemon:suture-skip:1", "--dest",
                              f"oci:{tmp_path}/out:patched", env=env)
        assert proc.returncode == 0, proc.stderr
        patched = open_image(f"oci:{tmp_path}/out:patched")
        base_size = app.root_tar.stat().st_size
        for present, left_out in ((("suture-skip:1",), 1), (("suture-none:1",), 0)):
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="suture.transports.daemon"):
                write_artifact(patched, "docker-daemon:suture-skip:again",
                               Options(engines=EngineOptions(docker_host=docker.host,
                                                             present=present)))
            [message] = [r.getMessage() for r in caplog.records if "loaded" in r.getMessage()]
            sent = int(message.split("loaded ")[1].split(" bytes")[0])
            assert f"{left_out} layer file(s) left out" in message
            assert (sent < base_size) == bool(left_out), (sent, base_size)
            assert docker.run("suture-skip:again", "greet").stdout == "greet 2.0-1\n"
            assert docker.image_id("suture-skip:again") == patched.manifest.config.digest
            docker.remove_images("suture-skip:again")
        assert destination_for(parse_reference("docker-daemon:suture-skip:1"), tag="x").is_engine
    finally:
        docker.remove_images("suture-skip:1", "suture-skip:again")


def test_copy_between_layout_and_engine_keeps_the_image(app: AppScene, tmp_path: Path,
                                                        docker_engine: Docker) -> None:
    """``suture copy oci:... docker-daemon:...`` loads the image under that name with its
    config digest as ID, and copying it back out gives the same config."""
    docker = docker_engine
    env = _docker_env(docker)
    ref = write_image(app.root, tmp_path, "v1")
    try:
        proc = app.suture("copy", ref, "docker-daemon:suture-copy:v1", env=env)
        assert proc.returncode == 0, proc.stderr
        original = open_artifact(ref)
        assert isinstance(original, Image)
        assert docker.image_id("suture-copy:v1") == original.manifest.config.digest
        back = app.suture("copy", "docker-daemon:suture-copy:v1", f"oci:{tmp_path}/back:v1",
                          env=env)
        assert back.returncode == 0, back.stderr
        again = open_artifact(f"oci:{tmp_path}/back:v1")
        assert isinstance(again, Image)
        assert again.manifest.config.digest == original.manifest.config.digest
        # --loader docker sends an OCI layout's patched image into the engine.
        proc, _doc = app.patch("-i", ref, "-t", "suture-copy:from-oci", "--loader", "docker",
                              env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert docker.run("suture-copy:from-oci", "greet").stdout == "greet 2.0-1\n"
    finally:
        docker.remove_images("suture-copy:v1", "suture-copy:from-oci")


def test_patch_podman_image_runs_from_podman_images(app: AppScene,
                                                   podman_engine: Podman) -> None:
    """The same line against Podman's service (its Docker-compatible API):
    ``patch -i podman:app:1 -t 1-patched`` loads the result back into Podman."""
    podman = podman_engine
    imported = podman.cli("import", str(app.root_tar), "suture-app:1").stdout.strip()
    try:
        assert podman.image_id("suture-app:1") == imported.removeprefix("sha256:")
        proc, doc = app.patch("-i", "podman:suture-app:1", "-t", "1-patched", env=podman.env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert doc is not None and doc["target"]["reference"] == "podman:suture-app:1-patched"
        listed = podman.cli("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
        assert "localhost/suture-app:1-patched" in listed, listed
        run = podman.run("suture-app:1-patched", "greet")
        assert (run.returncode, run.stdout) == (0, "greet 2.0-1\n"), run.stderr
        assert podman.run("suture-app:1", "greet").stdout == "greet 1.0-1\n"
        image = open_artifact("podman:suture-app:1-patched",
                              Options(engines=EngineOptions(podman_host=podman.host)))
        assert isinstance(image, Image)
        assert versions(image)["greet"] == "2.0-1"
        assert podman.image_id("suture-app:1-patched") == \
            image.manifest.config.digest.removeprefix("sha256:")
        # --loader docker is not running here: podman: source, --loader podman explicit.
        proc, _ = app.patch("-i", "podman:suture-app:1", "--loader", "podman",
                            env=podman.env)
        assert proc.returncode == 0, proc.stderr
        assert podman.run("suture-app:1-patched", "greet").stdout == "greet 2.0-1\n"
    finally:
        podman.remove_images("suture-app:1", "suture-app:1-patched")


def test_loader_prefers_the_engines_own_image(app: AppScene, docker_engine: Docker) -> None:
    """copa's prefer-local: ``-i NAME --loader docker`` reads NAME from the engine when it
    has it (here a registry that does not exist), and loads the result there."""
    docker = docker_engine
    name = "registry.invalid/suture/app:1"
    _docker_import(docker, app.root_tar, name)
    try:
        proc, doc = app.patch("-i", name, "-t", "1-patched", "--loader", "docker",
                              env=_docker_env(docker))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert doc is not None
        assert doc["source"]["reference"] == f"docker-daemon:{name}"
        assert doc["target"]["reference"] == "docker-daemon:registry.invalid/suture/app:1-patched"
        run = docker.run("registry.invalid/suture/app:1-patched", "greet")
        assert run.stdout == "greet 2.0-1\n", run.stderr
    finally:
        docker.remove_images(name, "registry.invalid/suture/app:1-patched")


def test_engine_errors_are_one_line(app: AppScene, tmp_path: Path,
                                    docker_engine: Docker) -> None:
    env = _docker_env(docker_engine)
    proc = app.suture("inspect", "docker-daemon:suture-none:1", env=env)
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("suture: error: docker-daemon: image suture-none:1: ")
    assert "No such image" in line
    proc = app.suture("inspect", "docker-daemon:x:1",
                      env={"DOCKER_HOST": f"unix://{tmp_path}/nothing.sock"})
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert f"no engine listening at unix://{tmp_path}/nothing.sock" in line


def test_engine_references_parse_back() -> None:
    for text, name in [("docker-daemon:app:1", "docker.io/library/app"),
                       ("podman:localhost/app:2", "localhost/app"),
                       ("docker-daemon:r.example:5000/a/b:t", "r.example:5000/a/b")]:
        ref = parse_reference(text)
        assert ref.is_engine and not ref.is_registry and ref.name == name
        assert parse_reference(str(ref)) == ref
    assert str(parse_reference("docker-daemon:docker.io/library/app:1")) == \
        "docker-daemon:app:1"


def test_loading_needs_a_tag(tmp_path: Path) -> None:
    from suture.errors import UsageError
    from suture.transports.reference import Reference

    with pytest.raises(UsageError, match="needs a tag"):
        write_artifact(_tiny_image(tmp_path), Reference("docker-daemon", "docker.io",
                                                        "library/x"))


def _tiny_image(tmp: Path) -> Image:
    from suture.devtools.debian_image import image_from_layers
    from tests.fixtures.patchimages import AMD64

    work = tmp / "tiny"
    work.mkdir()
    root = tmp / "tiny-root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("x\n")
    tar = work / "root.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(tar), "."], check=True)
    return image_from_layers([tar], AMD64, work)
