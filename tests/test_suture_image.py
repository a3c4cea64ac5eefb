"""suture's own container image, built by suture's code without a container engine
(mmdebstrap root + the package installed by pip + a non-root user), then run by the
real dockerd: ``--version``, its user, and a real ``inspect`` of an image mounted in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from suture import __version__
from suture.devtools.suture_image import UID, build_suture_image
from tests.fixtures.dockerd import Docker
from tests.fixtures.patchimages import debian_os_release, make_root, write_image

pytestmark = [pytest.mark.network, pytest.mark.tools]


def test_suture_image_runs_in_docker(tmp_path: Path, docker_engine: Docker) -> None:
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the bookworm image is built with Python 3.11")
    docker = docker_engine
    ref = f"oci:{tmp_path}/suture-image:test"
    build_suture_image(ref, workdir=tmp_path)
    # Into the engine through suture's own docker-daemon: transport.
    proc = subprocess.run([sys.executable, "-m", "suture", "copy", ref,
                           "docker-daemon:suture-image:test"], capture_output=True,
                          text=True, env={**os.environ, "DOCKER_HOST": docker.host},
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    try:
        run = docker.run("suture-image:test", "--version")
        assert (run.returncode, run.stdout.strip()) == (0, f"suture {__version__}"), run.stderr
        who = docker.run("suture-image:test", "-u", entrypoint="id")
        assert who.stdout.strip() == str(UID)
        # A real job: inspect an image (a dpkg root in an OCI layout) mounted read-only.
        root = make_root(tmp_path / "root", [], debian_os_release())
        write_image(root, tmp_path / "images", "v1")
        os.chmod(tmp_path / "images", 0o755)
        inspect = docker.cli("run", "--rm", "--network", "none", "-v",
                             f"{tmp_path / 'images'}:/work/images:ro", "suture-image:test",
                             "inspect", "--json", "oci:/work/images/layout:v1", check=False)
        assert inspect.returncode == 0, inspect.stderr
        assert '"id": "debian"' in inspect.stdout
    finally:
        docker.remove_images("suture-image:test")
