"""A scanner plugin (``--scanner NAME``) obeys the run's ``--timeout``, and its whole
process group ends with suture (the probe's C7).

The plugin is a real executable ``copa-hang`` on the ``PATH`` of a real ``suture``
process: a shell that records its process group, starts a child and never exits. The
run ends while the report is read, before the image is opened, so the image named
does not need to exist. Subprocess time limits here are only safety bounds: a run
that ignores ``--timeout`` fails by running into them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.patchimages import error_line

PLUGIN = """#!/bin/sh
# Record our process group (we lead it), start a child in it, and never exit.
echo $$ > "{pgid_file}.tmp" && mv "{pgid_file}.tmp" "{pgid_file}"
sleep 100000 &
wait
"""


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


class Scene:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pgid_file = tmp / "plugin.pgid"
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        plugin = bin_dir / "copa-hang"
        plugin.write_text(PLUGIN.format(pgid_file=self.pgid_file))
        plugin.chmod(0o755)
        self.report = tmp / "scan.json"
        self.report.write_text("{}")
        self.env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    def start(self, *args: str, ignore_hup: bool = False) -> subprocess.Popen[str]:
        """Run suture with SIGHUP and SIGTERM at their defaults (whatever this test
        process inherited, e.g. under nohup), or SIGHUP ignored (as nohup leaves it)."""
        def signals() -> None:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN if ignore_hup else signal.SIG_DFL)

        return subprocess.Popen(
            [sys.executable, "-m", "suture", "patch", "-i", f"oci:{self.tmp}/nothing:v1",
             "-r", str(self.report), "--scanner", "hang", "--dry-run", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env,
            preexec_fn=signals)

    def plugin_group(self) -> int:
        return int(self.pgid_file.read_text())

    def wait_for_plugin(self, proc: subprocess.Popen[str]) -> int:
        """The plugin's process group, once it has started its child."""
        for _ in range(600):
            if self.pgid_file.exists():
                pgid = self.plugin_group()
                if len(_group_members(pgid)) >= 2:  # the shell and its sleep
                    return pgid
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        raise AssertionError("the plugin did not start")


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    scene = Scene(tmp_path)
    yield scene
    if scene.pgid_file.exists():  # never leave the plugin running, whatever happened
        for pid in _group_members(scene.plugin_group()):
            os.kill(pid, signal.SIGKILL)


def test_timeout_bounds_a_plugin_that_never_exits(scene: Scene) -> None:
    proc = scene.start("--timeout", "3s")
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    completed = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert proc.returncode == 1, stderr
    line = error_line(completed)
    assert "timed out after 3 s" in line and "(hint: raise --timeout)" in line, line
    assert _group_members(scene.plugin_group()) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_the_plugins_process_group_ends_with_suture(scene: Scene, signum: int) -> None:
    proc = scene.start("--timeout", "30m")
    try:
        pgid = scene.wait_for_plugin(proc)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, stderr
    assert stderr.strip().splitlines()[-1] == "suture: terminated"
    assert _group_members(pgid) == []


def test_an_ignored_sighup_stays_ignored(scene: Scene) -> None:
    """Under nohup (SIGHUP ignored) a hangup does not stop the run; SIGTERM still does.
    Both are pending together when suture handles them, SIGHUP first if it were caught."""
    proc = scene.start("--timeout", "30m", ignore_hup=True)
    try:
        pgid = scene.wait_for_plugin(proc)
        proc.send_signal(signal.SIGHUP)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert _group_members(pgid) == []
