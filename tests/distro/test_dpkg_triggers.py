"""dpkg's trigger bookkeeping: Unincorp as dpkg-trigger writes it, and the deferred queue
taking activations that arrive while it runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from suture.distro.dpkg.triggers import Interest, TriggerRun, parse_unincorp
from suture.errors import PackageDBError


@pytest.mark.skipif(shutil.which("dpkg-trigger") is None, reason="needs dpkg-trigger")
def test_parse_unincorp_reads_what_dpkg_trigger_writes(tmp_path: Path) -> None:
    admin = tmp_path / "admin"
    (admin / "triggers").mkdir(parents=True)
    (admin / "status").write_text("")
    (admin / "info").mkdir()
    (admin / "triggers/Unincorp").write_text("")  # dpkg-trigger writes only where dpkg has run
    env = {**os.environ, "DPKG_ADMINDIR": str(admin), "DPKG_MAINTSCRIPT_PACKAGE": "poke",
           "DPKG_MAINTSCRIPT_ARCH": "all", "DPKG_RUNNING_VERSION": "1.21.23"}
    for args in (["--no-await", "t-one"], ["t-two"], ["--no-await", "/usr/share/watched"],
                 ["t-two"]):
        subprocess.run(["dpkg-trigger", f"--admindir={admin}", *args], env=env, check=True,
                       capture_output=True)
    data = (admin / "triggers/Unincorp").read_bytes()
    assert parse_unincorp(data) == [("t-one", ()), ("t-two", ("poke",)),
                                    ("/usr/share/watched", ())]


@pytest.mark.parametrize("data", [b"t-one\n", b"bad\x01name -\n", b"/a//b -\n"])
def test_malformed_unincorp_is_refused(data: bytes) -> None:
    with pytest.raises(PackageDBError, match="Unincorp"):
        parse_unincorp(data, source="/var/lib/dpkg/triggers/Unincorp")


def test_activations_while_the_queue_runs_are_taken_in_order() -> None:
    run = TriggerRun([Interest("ldconfig", "libc-bin"), Interest("t", "watch"),
                      Interest("/usr/share/x", "files", True)], {"libc-bin", "watch", "files"})
    run.activate("ldconfig")
    assert run.take() == ("libc-bin", "ldconfig")
    # Its postinst triggered activates two more (as dpkg-trigger would, via Unincorp).
    run.activate("t")
    run.activate("/usr/share/x")
    run.activate("ldconfig")  # and itself again: processed once more, after the others
    assert [run.take(), run.take(), run.take(), run.take()] == [
        ("watch", "t"), ("files", "/usr/share/x"), ("libc-bin", "ldconfig"), None]


def test_a_package_not_installed_is_not_interested_then() -> None:
    run = TriggerRun([Interest("t", "half")], set())
    run.activate("t")
    assert run.take() is None
    run.configured("half")
    run.activate("t")
    assert run.take() == ("half", "t")
