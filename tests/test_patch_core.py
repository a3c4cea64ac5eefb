"""The patch core's family-neutral rules, through a fake engine registered in place of the
real ones: nothing here knows dpkg or apk beyond the detection of a status file."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from suture.errors import SutureError
from suture.inspect import Inspection, select_images
from suture.oci.fs import FileEntry, read_files
from suture.oci.image import Image, ImageIndex
from suture.oci.layer import Entry
from suture.patch import engines as registry
from suture.patch import patch_artifact
from suture.patch.engine import Build, Engine, Prepared
from suture.patch.model import PatchOptions
from suture.plan import Plan, Update
from suture.reports.model import Finding, Report
from tests.fixtures.images import make_image, make_index

OS_RELEASE = Entry.file("etc/os-release", b"ID=debian\nVERSION_ID=12\n")
STATUS = Entry.file("var/lib/dpkg/status",
                    b"Package: tool\nStatus: install ok installed\nVersion: 1\n"
                    b"Architecture: amd64\nMaintainer: m <m@m>\nDescription: d\n")


@dataclass
class FakePrepared:
    """Plans ``tool`` 1 -> 2 and builds one file; fails to build where told to."""

    image: Image
    failing: bool

    def plan(self, findings: list[Finding] | None) -> Plan:
        update = Update("tool", "amd64", "1", "2", "fake", "update")
        return Plan("fake", "amd64", updates=(update,))

    def fetch(self, plan: Plan) -> dict[str, Path]:
        return {}

    def build(self, plan: Plan, packages: dict[str, Path]) -> Build:
        if self.failing:
            raise SutureError("the fake build fails here")
        return Build([Entry.file("usr/share/tool/version", b"2\n")], [])

    def fixed_vulnerabilities(self, plan: Plan, packages: dict[str, Path],
                              build: Build) -> dict[str, tuple[str, ...]]:
        return {"tool": ("CVE-2026-0001",)}


class FakePrefetch:
    def __init__(self, heard: list[str]) -> None:
        self.heard = heard

    def offer(self, path: str, data: bytes) -> None:
        self.heard.append(path)

    def close(self) -> None:
        pass


class FakeEngine:
    family: ClassVar[str] = "dpkg"  # takes the images detection calls dpkg
    data_prefixes: ClassVar[tuple[str, ...]] = ("var/lib/dpkg/",)
    purl_type: ClassVar[str] = "fake"
    fail_on: ClassVar[str | None] = None  # an architecture whose build fails
    prepared_after: ClassVar[list[list[str]]] = []  # what each prepared engine had heard

    def __init__(self) -> None:
        self.heard: list[str] = []

    def prefetch(self, image: Image, options: PatchOptions) -> FakePrefetch:
        return FakePrefetch(self.heard)

    def prepare(self, image: Image, inspection: Inspection, options: PatchOptions,
                tree: Mapping[str, FileEntry]) -> Prepared:
        assert "var/lib/dpkg/status" in tree
        # The instance prepared is the one whose prefetch heard the pass over the layers
        # (none when the pass was answered from the cache of merged views).
        FakeEngine.prepared_after.append(list(self.heard))
        failing = image.platform is not None and image.platform.architecture == self.fail_on
        return FakePrepared(image, failing)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeEngine]]:
    engine: Engine = FakeEngine()
    assert engine.family == "dpkg"  # FakeEngine is an Engine to the type checker too
    monkeypatch.setattr(registry, "ENGINES", (FakeEngine,))
    FakeEngine.fail_on = None
    FakeEngine.prepared_after = []
    yield FakeEngine


def _options(tmp: Path, **kw: object) -> PatchOptions:
    return PatchOptions(cache_dir=tmp / "cache", sandbox="none", **kw)  # type: ignore[arg-type]


def _image(platform: str = "linux/amd64") -> Image:
    return make_image([OS_RELEASE, STATUS], platform=platform)


def test_patch_appends_one_layer_and_records_the_update(fake: type[FakeEngine],
                                                        tmp_path: Path) -> None:
    base = _image()
    patched, [outcome] = patch_artifact(base, _options(tmp_path), tmp_path)
    assert isinstance(patched, Image) and outcome.status == "patched"
    assert len(patched.layers) == len(base.layers) + 1
    assert read_files(patched, ["usr/share/tool/version"])["usr/share/tool/version"].data \
        == b"2\n"
    assert outcome.to_json()["updates"][0]["type"] == "fake"  # the engine's purl type
    assert outcome.plan is not None and outcome.plan.updates[0].vulnerabilities == (
        "CVE-2026-0001",)


def test_the_engine_prepared_is_the_one_that_heard_the_layers(fake: type[FakeEngine],
                                                              tmp_path: Path) -> None:
    """Its prefetch heard every file the engines read, with data, as the pass read
    them; a second run over the same layers takes the kept merged view: nothing heard."""
    base = _image()
    patch_artifact(base, _options(tmp_path, dry_run=True), tmp_path)
    patch_artifact(base, _options(tmp_path, dry_run=True), tmp_path)
    assert fake.prepared_after == [["etc/os-release", "var/lib/dpkg/status"], []]


def test_repatching_replaces_the_patch_layer(fake: type[FakeEngine], tmp_path: Path) -> None:
    base = _image()
    once, _ = patch_artifact(base, _options(tmp_path), tmp_path)
    assert isinstance(once, Image)
    twice, _ = patch_artifact(once, _options(tmp_path), tmp_path)
    assert isinstance(twice, Image)
    assert len(twice.layers) == len(base.layers) + 1
    assert twice.digest == once.digest


def test_dry_run_writes_nothing(fake: type[FakeEngine], tmp_path: Path) -> None:
    patched, [outcome] = patch_artifact(_image(), _options(tmp_path, dry_run=True), tmp_path)
    assert patched is None and outcome.status == "skipped"
    assert outcome.plan is not None and [u.name for u in outcome.plan.updates] == ["tool"]


def test_a_report_for_another_os_is_refused(fake: type[FakeEngine], tmp_path: Path) -> None:
    report = Report(scanner="trivy", os_family="alpine", os_version="3.20", architecture=None,
                    variant=None)
    patched, [outcome] = patch_artifact(_image(), _options(tmp_path, reports={"*": report}),
                                        tmp_path)
    assert patched is None and outcome.status == "error"
    assert "the report is for alpine 3.20, the image is debian 12" in outcome.message


@pytest.mark.parametrize("ignore", [False, True])
def test_a_failing_platform(fake: type[FakeEngine], tmp_path: Path, ignore: bool) -> None:
    fake.fail_on = "arm64"
    index = make_index(_image("linux/amd64"), _image("linux/arm64"))
    patched, outcomes = patch_artifact(index, _options(tmp_path, ignore_errors=ignore),
                                       tmp_path)
    by_arch = {o.platform.architecture: o for o in outcomes if o.platform is not None}
    assert by_arch["arm64"].status == "error"
    assert "the fake build fails here" in by_arch["arm64"].message
    assert by_arch["amd64"].status == "patched"
    if not ignore:
        assert patched is None  # one failure and no --ignore-errors: nothing written
        return
    assert isinstance(patched, ImageIndex)
    before = {c.platform.architecture: c.digest for c in select_images(index) if c.platform}
    after = {c.platform.architecture: c.digest for c in select_images(patched) if c.platform}
    assert after["arm64"] == before["arm64"]  # left as it was
    assert after["amd64"] == by_arch["amd64"].image.digest  # type: ignore[union-attr]
    assert after["amd64"] != before["amd64"]


def test_an_unknown_family_names_the_ones_there_are(fake: type[FakeEngine]) -> None:
    with pytest.raises(SutureError) as info:
        registry.engine_for("pacman")
    assert info.value.hint is not None and "dpkg" in info.value.hint
