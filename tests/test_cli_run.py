"""How a `suture patch` run behaves as a CI job sees it: progress on stderr, reports per
platform, the timeout and Ctrl-C, against the local signed archive of test_patch_local.

The CLI runs in a subprocess; the tests check what a pipeline would: the events on
stderr, the exit code, the one-line error, and that a stopped run wrote nothing and
left no temporary files behind.
"""

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

from tests.fixtures.aptrepo import AptRepo, GpgKeys
from tests.fixtures.patchimages import layout_state, trivy_report
from tests.test_patch_local import Scene, _scene
from tests.test_vex import validate_openvex

pytestmark = pytest.mark.tools


@pytest.fixture
def scene(apt_repo: AptRepo, gpg_keys: GpgKeys, tmp_path: Path) -> Scene:
    return _scene(apt_repo, gpg_keys, tmp_path)


def _events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_progress_json_reports_stages_and_every_download(scene: Scene) -> None:
    ref = scene.image("v1")
    proc, result = scene.patch(ref, "--progress", "json")
    assert proc.returncode == 0, proc.stderr
    assert result is not None
    events = _events(proc.stderr)
    # Every stderr line is an event: nothing else is mixed in.
    assert len(events) == len(proc.stderr.strip().splitlines())
    stages = [e["message"] for e in events if e["event"] == "stage"]
    assert any(s.startswith("plan: 3 package(s) to update") for s in stages), stages
    assert "writing the patch layer" in stages
    assert {e["platform"] for e in events} == {"linux/amd64"}
    # each event carries the seconds since the run began, never going back
    times = [e["elapsed"] for e in events]
    assert times == sorted(times) and times[0] >= 0 and times[-1] < 600
    finished = {e["name"]: e for e in events if e["event"] == "download" and e["finished"]}
    debs = {n for n in finished if n.endswith(".deb")}
    assert debs == {"a_2.0-1_amd64.deb", "b_2.0-1_amd64.deb", "c_2.0-1_amd64.deb"}
    pool = {p.name: p.stat().st_size for p in scene.archive.repo.root.rglob("*.deb")}
    for name in debs:
        assert finished[name]["done"] == finished[name]["total"] == pool[name]

    # A second run finds every .deb in the cache: no download of a package is reported.
    proc, _ = scene.patch(ref, "--progress", "json", "--dest", f"oci:{scene.tmp / 'again'}:x")
    assert proc.returncode == 0, proc.stderr
    assert not [e for e in _events(proc.stderr)
                if e["event"] == "download" and e["name"].endswith(".deb")]


def test_progress_plain_and_quiet(scene: Scene) -> None:
    ref = scene.image("v1")
    proc, _ = scene.patch(ref, "--progress", "plain")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert "suture: linux/amd64: writing the patch layer" in lines
    downloaded = sorted(line.split()[3] for line in lines if " downloaded " in line
                        and line.split()[3].endswith(".deb"))
    assert downloaded == ["a_2.0-1_amd64.deb", "b_2.0-1_amd64.deb", "c_2.0-1_amd64.deb"]
    proc, _ = scene.patch(ref, "--progress", "quiet", "--dest", f"oci:{scene.tmp / 'q'}:x")
    assert proc.returncode == 0 and proc.stderr == ""


def _write_report(path: Path, architecture: str, vulns: list[tuple[str, str, str, str]]
                  ) -> None:
    path.write_text(json.dumps(trivy_report("debian", "12", vulns,
                                            architecture=architecture)))


def test_report_directory_is_matched_by_architecture(scene: Scene) -> None:
    ref = scene.image("v1")
    reports = scene.tmp / "reports"
    reports.mkdir()
    _write_report(reports / "amd64.json", "amd64", [("CVE-2024-0001", "b", "1.0-1", "2.0-1")])
    proc, result = scene.patch(ref, "-r", str(reports))
    assert proc.returncode == 0, proc.stderr
    assert result is not None
    [platform] = result["platforms"]
    assert [(u["name"], u["vulnerabilities"]) for u in platform["updates"]] == \
        [("b", ["CVE-2024-0001"])]

    # A report for a platform the image does not have is a mismatch, not silently unused.
    _write_report(reports / "arm64.json", "arm64", [("CVE-2024-0002", "a", "1.0-1", "2.0-1")])
    before = layout_state(scene.layout)
    proc, result = scene.patch(ref, "-r", str(reports), "-t", "other")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "suture: error: a report is for linux/arm64/v8, which the image does not have "
        "(it has linux/amd64)")
    assert layout_state(scene.layout) == before

    # Two reports for one platform: which to believe is not guessed.
    (reports / "arm64.json").unlink()
    _write_report(reports / "amd64-again.json", "amd64", [])
    proc, _ = scene.patch(ref, "-r", str(reports), "-t", "other")
    assert proc.returncode == 1
    assert "a second report for linux/amd64" in proc.stderr

    empty = scene.tmp / "empty"
    empty.mkdir()
    proc, _ = scene.patch(ref, "-r", str(empty))
    assert proc.returncode == 2 and "holds no report" in proc.stderr


def _run(args: list[str], tmpdir: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, TMPDIR=str(tmpdir))
    return subprocess.Popen([sys.executable, "-m", "suture", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_interruptible)


def _interruptible() -> None:
    """SIGINT back to its default in the child: a runner that started the suite in the
    background (as a shell does ``cmd &``) has it ignored, and Python keeps an ignored
    SIGINT ignored, so Ctrl-C could not reach suture."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _patch_args(scene: Scene, ref: str, tmp: Path) -> list[str]:
    return ["patch", "-i", ref, "--cache-dir", str(scene.tmp / "cache"), "--no-host-keyrings",
            *scene.archive.mirror_args(), "--sandbox", "none", "--progress", "plain",
            "--result", str(tmp / "result.json")]


def _stalled(scene: Scene) -> tuple[str, str, Path]:
    """The scene's v1 image, with the archive set to stall a minute before serving a's
    update: its reference, the layout's state, and an empty directory for TMPDIR."""
    ref = scene.image("v1")
    before = layout_state(scene.layout)
    tmp = scene.tmp / "tmp"
    tmp.mkdir()
    scene.archive.repo.fail("a_2.0-1_amd64.deb", delay=60)
    return ref, before, tmp


def test_timeout_bounds_a_stalled_download_and_writes_nothing(scene: Scene) -> None:
    ref, before, tmp = _stalled(scene)
    started = time.monotonic()
    proc = _run([*_patch_args(scene, ref, tmp), "--timeout", "4s"], tmp)
    _out, err = proc.communicate(timeout=120)
    took = time.monotonic() - started
    assert proc.returncode == 1, err
    assert took < 40, took  # bounded by --timeout, not by the stalled server
    assert "timed out" in err.strip().splitlines()[-1]
    assert err.strip().splitlines()[-1].startswith("suture: error: ")
    assert layout_state(scene.layout) == before
    assert [p.name for p in tmp.iterdir()] == ["result.json"] or list(tmp.iterdir()) == []


def test_ctrl_c_stops_cleanly(scene: Scene) -> None:
    ref, before, tmp = _stalled(scene)
    proc = _run(_patch_args(scene, ref, tmp), tmp)
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + 60
    while "fetching" not in seen and time.monotonic() < deadline:
        seen += proc.stderr.readline()
    assert "fetching" in seen
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, seen + err
    assert err.strip().splitlines()[-1] == "suture: interrupted"
    assert "Traceback" not in err
    assert layout_state(scene.layout) == before
    assert list(tmp.iterdir()) == []


def _grype(vulns: list[tuple[str, str, str, str]], architecture: str = "amd64") -> dict[str, Any]:
    """A Grype JSON document (``grype -o json``) for the scene's image."""
    return {
        "matches": [{
            "vulnerability": {"id": vid, "namespace": "debian:distro:debian:12",
                              "severity": "High",
                              "fix": {"versions": [fixed] if fixed else [],
                                      "state": "fixed" if fixed else "not-fixed"}},
            "artifact": {"name": pkg, "version": have, "type": "deb",
                         "purl": f"pkg:deb/debian/{pkg}@{have}?arch={architecture}"},
        } for vid, pkg, have, fixed in vulns],
        "source": {"type": "image", "target": {"userInput": "scene:v1",
                                               "architecture": architecture, "os": "linux"}},
        "distro": {"name": "debian", "version": "12", "idLike": []},
        "descriptor": {"name": "grype", "version": "0.80.0"},
    }


def _v1alpha2(vulns: list[tuple[str, str, str, str]]) -> dict[str, Any]:
    return {"apiVersion": "v1alpha2",
            "metadata": {"os": {"type": "debian", "version": "12"}, "config": {"arch": "amd64"}},
            "osupdates": [{"name": pkg, "installedVersion": have, "fixedVersion": fixed,
                           "vulnerabilityID": vid, "type": "debian", "class": "os-pkgs"}
                          for vid, pkg, have, fixed in vulns],
            "langupdates": []}


@pytest.mark.parametrize("kind", ["grype", "v1alpha2", "plugin"])
def test_other_report_formats_patch_what_they_name(scene: Scene, kind: str) -> None:
    """Grype JSON and copa's v1alpha2 (detected, no --scanner), and a copa scanner plugin
    found on PATH: each names b (fixed in 2.0-1) and an unfixed finding in z; only b moves."""
    ref = scene.image("v1")
    vulns = [("CVE-2024-0101", "b", "1.0-1", "2.0-1"), ("CVE-2024-0102", "z", "1.0-1", "")]
    report = scene.tmp / f"{kind}.json"
    args: list[str] = []
    if kind == "grype":
        report.write_text(json.dumps(_grype(vulns)))
    elif kind == "v1alpha2":
        report.write_text(json.dumps(_v1alpha2(vulns)))
    else:
        # The plugin reads its own format (here: lines "id package installed fixed") and
        # prints v1alpha1, as copa plugins do.
        report.write_text("\n".join(" ".join(v) for v in vulns[:1]) + "\n")
        bindir = scene.tmp / "bin"
        bindir.mkdir()
        plugin = bindir / "copa-lines"
        plugin.write_text(
            "#!/bin/sh\n"
            "read -r id pkg have fixed < \"$1\"\n"
            "printf '{\"apiVersion\":\"v1alpha1\",\"metadata\":{\"os\":{\"type\":\"debian\","
            "\"version\":\"12\"},\"config\":{\"arch\":\"amd64\"}},\"updates\":[{\"name\":"
            "\"%s\",\"installedVersion\":\"%s\",\"fixedVersion\":\"%s\","
            "\"vulnerabilityID\":\"%s\"}]}' \"$pkg\" \"$have\" \"$fixed\" \"$id\"\n")
        plugin.chmod(0o755)
        args = ["--scanner", "lines"]
        os.environ["PATH"] = f"{bindir}:{os.environ['PATH']}"
    try:
        proc, result = scene.patch(ref, "-r", str(report), *args)
    finally:
        if kind == "plugin":
            os.environ["PATH"] = os.environ["PATH"].split(":", 1)[1]
    assert proc.returncode == 0, proc.stderr
    assert result is not None
    [platform] = result["platforms"]
    assert [(u["name"], u["to"], u["vulnerabilities"]) for u in platform["updates"]] == \
        [("b", "2.0-1", ["CVE-2024-0101"])]
    if kind != "plugin":
        assert [(s["name"], s["reason"]) for s in platform["skipped"]] == [("z", "unfixed")]


def test_missing_plugin_is_one_line(scene: Scene) -> None:
    ref = scene.image("v1")
    report = scene.tmp / "r.txt"
    report.write_text("x\n")
    proc, result = scene.patch(ref, "-r", str(report), "--scanner", "nonexistent")
    assert proc.returncode == 1 and result is None
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("suture: error: report ") and "copa-nonexistent" in line, line


@pytest.mark.registry
def test_push_reports_upload_progress(scene: Scene, registry: Any) -> None:
    """Pushing the patched image reports the upload of the new patch layer (and of no
    base layer, which the registry already has), with its exact size."""
    ref = scene.image("v1")
    remote = f"127.0.0.1:{registry.port}/scene/app:v1"
    copied = subprocess.run([sys.executable, "-m", "suture", "copy", ref, remote],
                            capture_output=True, text=True, timeout=120)
    assert copied.returncode == 0, copied.stderr
    proc, result = scene.patch(remote, "--push", "--progress", "json")
    assert proc.returncode == 0, proc.stderr
    assert result is not None
    layer = result["platforms"][0]["layer"]
    uploads = {e["name"]: e for e in _events(proc.stderr)
               if e["event"] == "upload" and e["finished"]}
    assert layer["digest"] in uploads
    assert uploads[layer["digest"]]["done"] == layer["size"]
    base_layers = {line for line in uploads if line != layer["digest"]}
    # Besides the patch layer only the new config blob is uploaded.
    assert len(base_layers) == 1


def _changelog(source: str, *entries: tuple[str, str]) -> bytes:
    import gzip

    text = "".join(
        f"{source} ({version}) bookworm-security; urgency=high\n\n  * {change}\n\n"
        f" -- Test Maintainer <test@example.org>  Mon, 01 Jan 2024 00:00:00 +0000\n\n"
        for version, change in entries)
    return gzip.compress(text.encode(), mtime=0)


def test_update_all_vex_names_the_cves_of_the_changelogs(apt_repo: AptRepo, gpg_keys: GpgKeys,
                                                         tmp_path: Path) -> None:
    """Without a report, the VEX and the result name the CVEs of the changelog entries
    between the installed and the new version: not the installed version's own, not
    those of a newly installed dependency; a package whose doc directory links to its
    sibling's takes the sibling's changelog."""
    from tests.fixtures.debs import Symlink
    from tests.fixtures.patchimages import Archive

    archive = Archive.create(apt_repo, gpg_keys.good, tmp_path, "bookworm")
    log_v1 = _changelog("a", ("1.0-1", "Fix CVE-2020-0001."))
    log_v2 = _changelog("a", ("2.0-1", "Fix CVE-2024-1111 and cve-2024-22222."),
                        ("1.5-1", "Security fixes (CVE-2023-3333)."),
                        ("1.0-1", "Fix CVE-2020-0001."))
    v1 = [archive.add("bookworm", "a", "1.0-1",
                      {"usr/share/doc/a/changelog.Debian.gz": log_v1}),
          archive.add("bookworm", "liba1", "1.0-1", {"usr/share/doc/liba1": Symlink("a")},
                      fields={"Source": "a"}),
          archive.add("bookworm", "b", "1.0-1")]
    archive.add("bookworm-security", "a", "2.0-1",
                {"usr/share/doc/a/changelog.Debian.gz": log_v2}, depends="c")
    archive.add("bookworm-security", "liba1", "2.0-1", {"usr/share/doc/liba1": Symlink("a")},
                fields={"Source": "a"})
    archive.add("bookworm-security", "c", "1.0-1",
                {"usr/share/doc/c/changelog.Debian.gz": _changelog(
                    "c", ("1.0-1", "Fix CVE-2024-9999."))})
    archive.add("bookworm-updates", "b", "2.0-1",
                {"usr/share/doc/b/changelog.Debian.gz": _changelog(
                    "b", ("2.0-1", "New upstream release."), ("1.0-1", "Initial."))})
    archive.publish()
    scene = Scene(archive, v1, tmp_path)
    ref = scene.image("v1")
    vex = tmp_path / "vex.json"
    proc, result = scene.patch(ref, "-o", str(vex))
    assert proc.returncode == 0, proc.stderr
    assert result is not None
    found = {u["name"]: u["vulnerabilities"] for u in result["platforms"][0]["updates"]}
    expected = ["CVE-2023-3333", "CVE-2024-1111", "CVE-2024-22222"]
    assert found == {"a": expected, "liba1": expected, "b": [], "c": []}
    doc = json.loads(vex.read_text())
    validate_openvex(doc)
    statements = {s["vulnerability"]["name"]: s for s in doc["statements"]}
    assert sorted(statements) == expected
    subcomponents = {c["@id"] for p in statements["CVE-2024-1111"]["products"]
                     for c in p.get("subcomponents", [])}
    assert any(s.startswith("pkg:deb/debian/a@2.0-1") for s in subcomponents), subcomponents
    assert any(s.startswith("pkg:deb/debian/liba1@2.0-1") for s in subcomponents)


@pytest.mark.parametrize(("family", "version", "architecture", "says"), [
    ("debian", "12", "arm64", "the report is for architecture arm64, the image is amd64"),
    ("debian", "11", "amd64", "the report is for debian 11, the image is debian 12"),
    ("ubuntu", "24.04", "amd64", "the report is for ubuntu 24.04, the image is debian 12"),
])
def test_report_for_another_image_is_refused(scene: Scene, family: str, version: str,
                                             architecture: str, says: str) -> None:
    ref = scene.image("v1")
    before = layout_state(scene.layout)
    report = scene.tmp / "report.json"
    report.write_text(json.dumps(trivy_report(family, version, [
        ("CVE-2024-0001", "b", "1.0-1", "2.0-1")], architecture=architecture)))
    proc, result = scene.patch(ref, "-r", str(report))
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line == f"suture: error: linux/amd64: {says} (hint: scan the image being " \
                   "patched, or give one report per platform with -r DIR)", line
    assert result is not None and result["target"] is None
    assert layout_state(scene.layout) == before
    assert scene.archive.fetched("/pool/") == []


def test_unreachable_repository_is_one_line_with_a_hint(scene: Scene) -> None:
    import socket

    ref = scene.image("v1")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = f"http://127.0.0.1:{port}"
    proc, result = scene.patch(ref, "--mirror", f"http://deb.debian.org/debian={dead}",
                               "--mirror", f"http://deb.debian.org/debian-security={dead}",
                               mirrors=False)
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("suture: error: linux/amd64: ") and dead in line, line
    assert line.endswith("(hint: the repository is not reachable: check the network or "
                         "proxy, or point --mirror at a reachable copy)"), line
    assert result is not None and result["target"] is None
