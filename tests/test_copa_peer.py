"""copa v0.11.0 itself (in buildkitd v0.34.2) and suture patch the same image from the
same registry; where they should agree, they do.

One buildkitd and one registry on 127.0.0.1 for the module (tests/fixtures/buildkit.py):
copa's Debian tooling images are served there through buildkitd's registry mirrors.
The image is a bookworm minbase of the point release with the release, -updates and
-security suites in its sources.list (as Docker Hub's debian images have). Both tools
push their result back to the registry; skopeo and umoci (not suture) unpack the
three roots. Agreement checked: every package at the same version in the written dpkg
database (and changed from the original), and every path the same (content, mode,
owner, link target) apart from :data:`COPA_RUN_STATE`, the state copa's apt-get run
leaves (docs/copa-comparison.md); and that documented difference is what copa's image
shows (its apt history names the upgrade), so the list cannot hide a change.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.buildkit import (
    COPA_RUN_STATE,
    Buildkitd,
    PeerUnavailable,
    push_image,
    push_tooling_images,
    run_copa,
    sources_entry,
    start_buildkitd,
    timed_run,
    unpack_remote,
)
from tests.fixtures.debian import debian_rootfs
from tests.fixtures.fidelity import diff_trees, dpkg_versions, tree
from tests.fixtures.patchimages import trivy_report
from tests.fixtures.registry import RegistryServer

pytestmark = [pytest.mark.network, pytest.mark.tools, pytest.mark.registry]


@dataclass
class World:
    registry: RegistryServer
    kit: Buildkitd
    source: str  # HOST/REPO:TAG of the image both patch
    original: Path  # its root, unpacked by umoci
    work: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if shutil.which("docker-registry") is None:
        pytest.skip("docker-registry is not installed")
    work = tmp_path_factory.mktemp("copa-peer")
    registry = RegistryServer(work / "registry")
    registry.start()
    kit: Buildkitd | None = None
    kit_root: Path | None = None
    try:
        push_tooling_images(work / "tooling", registry.host)
        source = push_image([debian_rootfs("bookworm"), [sources_entry()]], work / "image",
                            f"{registry.host}/debian:12")
        # BuildKit's state on tmpfs when there is room: copa's dpkg fsyncs every file
        # it unpacks, cheap on tmpfs (keeps the module's run short).
        shm = Path("/dev/shm")
        where = shm if shm.is_dir() and shutil.disk_usage(shm).free > 6 << 30 else work
        kit_root = Path(tempfile.mkdtemp(prefix="copa-peer-buildkit-", dir=where))
        try:
            kit = start_buildkitd(kit_root, registry.host)
        except PeerUnavailable as exc:
            pytest.skip(str(exc))
        yield World(registry, kit, source, unpack_remote(source, work / "original"), work)
    finally:
        if kit is not None:
            kit.stop()
        if kit_root is not None:
            shutil.rmtree(kit_root, ignore_errors=True)
        registry.stop()


def _suture(world: World, tag: str, *args: str) -> dict[str, Any]:
    result = world.work / f"{tag}.json"
    run = timed_run([sys.executable, "-m", "suture", "patch", "-i", world.source, "-t", tag,
                     "--push", "--result", str(result), "--cache-dir",
                     str(world.work / "suture-cache"), "--progress", "quiet", *args])
    assert run.proc.returncode == 0, run.proc.stderr[-3000:]
    doc: dict[str, Any] = json.loads(result.read_text())
    return doc


def _copa(world: World, tag: str, *args: str) -> None:
    run = run_copa(world.kit, "-i", world.source, "-t", tag, "--push", *args)
    assert run.proc.returncode == 0, run.proc.stderr[-5000:]


def _roots(world: World, name: str) -> tuple[Path, Path]:
    repo = world.source.rsplit(":", 1)[0]
    return (unpack_remote(f"{repo}:{name}-suture", world.work / f"{name}-suture"),
            unpack_remote(f"{repo}:{name}-copa", world.work / f"{name}-copa"))


def _auto_installed(root: Path) -> set[str]:
    """Packages apt's ``extended_states`` marks ``Auto-Installed: 1``."""
    path = root / "var/lib/apt/extended_states"
    out = set()
    for block in path.read_text().strip().split("\n\n") if path.is_file() else []:
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if fields.get("Auto-Installed") == "1":
            out.add(fields["Package"])
    return out


def _agree(world: World, ours: Path, copa: Path, *, also: tuple[str, ...] = ()
           ) -> dict[str, str]:
    """The checks both cases share (``also``: more paths checked by the caller); the
    versions both wrote."""
    versions = dpkg_versions(ours)
    assert versions == dpkg_versions(copa)
    diff = diff_trees(ours, copa, ignore=COPA_RUN_STATE + also)
    assert diff.empty, str(diff)
    # What the ignore list hides is copa's apt run, and only that.
    full = diff_trees(ours, copa, ignore=())
    hidden = full.only_ours + full.only_theirs + full.differ
    assert hidden, "copa's image shows none of its run's state: the list hides nothing"
    assert not full.only_ours, full.only_ours
    history = (copa / "var/log/apt/history.log").read_text()
    assert "Upgrade:" in history or "Install:" in history, history
    # Both changed the same files of the original, and more than the status file.
    original = tree(world.original, ignore=COPA_RUN_STATE)
    changed = {p for p, v in tree(ours, ignore=COPA_RUN_STATE).items() if original.get(p) != v}
    assert len(changed) > 20 and "var/lib/dpkg/status" in changed
    return versions


def test_update_all_same_packages_and_files(world: World) -> None:
    _copa(world, "all-copa")
    doc = _suture(world, "all-suture")
    [platform] = doc["platforms"]
    assert platform["status"] == "patched"
    updates = {u["name"]: u["to"] for u in platform["updates"]}
    assert len(updates) >= 5, updates
    ours, copa = _roots(world, "all")
    versions = _agree(world, ours, copa)
    before = dpkg_versions(world.original)
    assert {n for n in versions if versions[n] != before.get(n)} == set(updates)
    assert all(versions[n] == v for n, v in updates.items())


def test_report_driven_same_packages_and_files(world: World) -> None:
    planned = _suture(world, "plan", "--dry-run")
    updates = planned["platforms"][0]["updates"]
    # One package apt marks automatically installed (copa changes that mark), two not.
    auto = _auto_installed(world.original)
    chosen = ([u for u in updates if u["name"] in auto][:1]
              + [u for u in updates if u["name"] not in auto][:2])
    assert len(chosen) == 3 and chosen[0]["name"] in auto, updates
    # As Trivy writes it: the OS name is /etc/debian_version ("12.12"), which makes copa
    # take its "stable-slim" tooling image (served here as trixie, as on Docker Hub).
    name = (world.original / "etc/debian_version").read_text().strip()
    report = trivy_report("debian", name, [
        (f"CVE-2099-{n}", u["name"], u["from"], u["to"]) for n, u in enumerate(chosen)],
        artifact=world.source)
    path = world.work / "report.json"
    path.write_text(json.dumps(report))
    _copa(world, "report-copa", "-r", str(path))
    doc = _suture(world, "report-suture", "-r", str(path))
    assert doc["platforms"][0]["status"] == "patched"
    ours, copa = _roots(world, "report")
    versions = _agree(world, ours, copa, also=("var/lib/apt/extended_states",))
    for u in chosen:
        assert versions[u["name"]] == u["to"], u
    # copa runs `apt-get install NAMES`, which marks every named package manually
    # installed; suture keeps apt's marks as the image had them (as an upgrade does).
    named = {u["name"] for u in chosen}
    before = _auto_installed(world.original)
    assert _auto_installed(ours) == before
    assert _auto_installed(copa) == before - named
