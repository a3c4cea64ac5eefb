"""copa's flags in suture: docs/copa-flags.md is parsed and every row is driven.

The image is a tiny Debian 11 root (dpkg-installed ``greet`` 1.0-1 and a static busybox
``/bin/sh``) in an OCI layout; the local signed archive has ``greet`` 2.0-1 in
``bullseye-security``. Each row of the table has a scenario below, keyed by the row's
first long flag; the table and the scenarios must name the same flags, and those must
be copa's. A second test runs real ``copa patch`` lines from copa's documentation
with ``suture`` in place of ``copa`` (images imported into the real dockerd under
copa's example names, since nothing can be pulled here) and checks each outcome.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from suture.oci.image import Image
from suture.transports import open_artifact, write_artifact
from suture.transports.reference import parse_reference
from tests.fixtures.aptrepo import AptRepo, GpgKeys
from tests.fixtures.debs import File
from tests.fixtures.dockerd import Docker
from tests.fixtures.eolapi import EolApi
from tests.fixtures.patchimages import (
    Archive,
    debian_os_release,
    make_root,
    tags,
    trivy_report,
    versions,
    write_image,
)
from tests.fixtures.registry import RegistryServer

pytestmark = pytest.mark.tools

DOC = Path(__file__).resolve().parents[1] / "docs" / "copa-flags.md"
BUSYBOX = Path("/bin/busybox")
CVE = "CVE-2099-0001"

# copa v0.11 `copa patch` (pkg/cmd/cmd.go): long flag -> short form.
COPA_FLAGS: dict[str, str | None] = {
    "--image": "-i", "--report": "-r", "--tag": "-t", "--tag-suffix": None,
    "--scanner": "-s", "--output": "-o", "--format": "-f", "--push": "-p",
    "--oci-dir": None, "--platform": None, "--ignore-errors": None, "--timeout": None,
    "--working-folder": "-w", "--debug": None, "--addr": "-a", "--cacert": None,
    "--cert": None, "--key": None, "--loader": "-l", "--progress": None,
    "--compression": None, "--force-compression": None, "--pkg-types": None,
    "--library-patch-level": None, "--toolchain-patch-level": None, "--go-vcs-url": None,
    "--exit-on-eol": None, "--eol-api-url": None, "--config": None,
}


@dataclass(frozen=True)
class Row:
    flags: tuple[str, ...]
    copa: str
    suture: str

    @property
    def key(self) -> str:
        return next(f for f in self.flags if f.startswith("--"))


def table_rows() -> list[Row]:
    rows = []
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`-"):
            continue
        flags = tuple(re.findall(r"`(-{1,2}[a-z-]+)`", cells[0]))
        rows.append(Row(flags, cells[1], cells[2]))
    return rows


# --- the scene ------------------------------------------------------------------------


def _greet(version: str) -> dict[str, File]:
    return {"usr/bin/greet": File(f"#!/bin/sh\necho greet {version}\n".encode(), 0o755)}


@dataclass
class Scene:
    archive: Archive
    root: Path
    tmp: Path
    ref: str
    report: Path
    env: dict[str, str] = field(default_factory=dict)
    runs: int = 0

    @property
    def layout(self) -> Path:
        return self.tmp / "layout"

    def suture(self, *args: str, cwd: Path | None = None, patch_args: bool = True
               ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
        """``suture ARGS`` (with this scene's cache, mirrors and a --result for patch)."""
        self.runs += 1
        result = self.tmp / f"result-{self.runs}.json"
        extra = ["--cache-dir", str(self.tmp / "cache"), "--no-host-keyrings",
                 *self.archive.mirror_args(), "--result", str(result)] if patch_args else []
        proc = subprocess.run([sys.executable, "-m", "suture", *args, *extra],
                              capture_output=True, text=True, timeout=300,
                              cwd=cwd or self.tmp, env={**os.environ, **self.env})
        doc = json.loads(result.read_text()) if result.exists() else None
        return proc, doc

    def patch(self, *args: str) -> tuple[subprocess.CompletedProcess[str],
                                         dict[str, Any] | None]:
        return self.suture("patch", *args)

    def ok(self, *args: str) -> dict[str, Any]:
        proc, doc = self.patch(*args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert doc is not None
        return doc


def make_scene(apt_repo: AptRepo, gpg_keys: GpgKeys, tmp: Path) -> Scene:
    if not BUSYBOX.exists():
        pytest.skip("needs a static /bin/busybox (busybox-static)")
    archive = Archive.create(apt_repo, gpg_keys.good, tmp, "bullseye")
    shell = archive.add("bullseye", "sutsh", "1.0-1", {"bin/sh": File(BUSYBOX.read_bytes(),
                                                                      0o755)})
    greet = archive.add("bullseye", "greet", "1.0-1", _greet("1.0-1"))
    archive.add("bullseye-security", "greet", "2.0-1", _greet("2.0-1"))
    archive.publish()
    root = make_root(tmp / "root", [shell, greet], debian_os_release("bullseye", "11"),
                     sources={"etc/apt/sources.list":
                              "deb http://deb.debian.org/debian bullseye main\n"},
                     keyring=archive.key_asc())
    ref = write_image(root, tmp, "v1")
    report = tmp / "report.json"
    report.write_text(json.dumps(trivy_report("debian", "11", [(CVE, "greet", "1.0-1",
                                                                "2.0-1")])))
    return Scene(archive, root, tmp, ref, report)


@pytest.fixture
def scene(apt_repo: AptRepo, gpg_keys: GpgKeys, tmp_path: Path) -> Scene:
    return make_scene(apt_repo, gpg_keys, tmp_path)


def _image(ref: str) -> Image:
    image = open_artifact(ref)
    assert isinstance(image, Image)
    return image


def _usage_error(proc: subprocess.CompletedProcess[str], text: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert text in proc.stderr.strip().splitlines()[-1], proc.stderr


def _warned(proc: subprocess.CompletedProcess[str], text: str) -> None:
    assert proc.returncode == 0, proc.stderr
    assert any(text in line for line in proc.stderr.splitlines()), proc.stderr


# --- one scenario per row ---------------------------------------------------------------

Check = Callable[[Scene, pytest.FixtureRequest], None]
CHECKS: dict[str, Check] = {}


def check(flag: str) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        CHECKS[flag] = fn
        return fn
    return register


@check("--image")
def _image_flag(s: Scene, request: pytest.FixtureRequest) -> None:
    doc = s.ok("-i", s.ref)
    assert doc["source"]["reference"] == s.ref
    assert versions(_image(s.ref + "-patched"))["greet"] == "2.0-1"


@check("--report")
def _report(s: Scene, request: pytest.FixtureRequest) -> None:
    doc = s.ok("-i", s.ref, "-r", str(s.report))
    [update] = doc["platforms"][0]["updates"]
    assert (update["name"], update["to"], update["vulnerabilities"]) == (
        "greet", "2.0-1", [CVE])


@check("--tag")
def _tag(s: Scene, request: pytest.FixtureRequest) -> None:
    s.ok("-i", s.ref, "-t", "1.0-fixed")
    assert "1.0-fixed" in tags(s.layout)
    out = s.tmp / "elsewhere"
    s.ok("-i", s.ref, "-t", f"oci:{out}:full")  # a full reference names the place
    assert tags(out) == {"full"}


@check("--tag-suffix")
def _tag_suffix(s: Scene, request: pytest.FixtureRequest) -> None:
    s.ok("-i", s.ref, "--tag-suffix", "fixed")
    assert "v1-fixed" in tags(s.layout)


@check("--scanner")
def _scanner(s: Scene, request: pytest.FixtureRequest) -> None:
    doc = s.ok("-i", s.ref, "-s", "trivy", "-r", str(s.report))
    assert doc["platforms"][0]["updates"][0]["vulnerabilities"] == [CVE]
    proc, _ = s.patch("-i", s.ref, "-s", "nosuchscanner", "-r", str(s.report))
    assert proc.returncode == 1 and "copa-nosuchscanner" in proc.stderr, proc.stderr


@check("--output")
def _output(s: Scene, request: pytest.FixtureRequest) -> None:
    vex = s.tmp / "vex.json"
    s.ok("-i", s.ref, "-r", str(s.report), "-o", str(vex))
    doc = json.loads(vex.read_text())
    assert [st["vulnerability"]["name"] for st in doc["statements"]] == [CVE]


@check("--format")
def _format(s: Scene, request: pytest.FixtureRequest) -> None:
    vex = s.tmp / "vex.json"
    s.ok("-i", s.ref, "-r", str(s.report), "-f", "openvex", "-o", str(vex))
    assert json.loads(vex.read_text())["@context"].startswith("https://openvex.dev/")
    proc, _ = s.patch("-i", s.ref, "-f", "csaf", "-o", str(vex))
    _usage_error(proc, "invalid choice: 'csaf'")


@check("--push")
def _push(s: Scene, request: pytest.FixtureRequest) -> None:
    registry: RegistryServer = request.getfixturevalue("registry")
    remote = f"127.0.0.1:{registry.port}/copa/app:v1"
    write_artifact(_image(s.ref), remote)
    doc = s.ok("-i", remote, "-p")
    assert doc["target"]["reference"] == f"{remote}-patched"
    assert versions(_image(f"{remote}-patched"))["greet"] == "2.0-1"


@check("--oci-dir")
def _oci_dir(s: Scene, request: pytest.FixtureRequest) -> None:
    out = s.tmp / "out"
    doc = s.ok("-i", s.ref, "--oci-dir", str(out))
    assert doc["target"]["reference"] == f"oci:{out}:v1-patched"
    assert versions(_image(f"oci:{out}:v1-patched"))["greet"] == "2.0-1"


@check("--platform")
def _platform(s: Scene, request: pytest.FixtureRequest) -> None:
    doc = s.ok("-i", s.ref, "--platform", "linux/amd64")
    assert [(p["platform"], p["status"]) for p in doc["platforms"]] == [
        ("linux/amd64", "patched")]


@check("--ignore-errors")
def _ignore_errors(s: Scene, request: pytest.FixtureRequest) -> None:
    # The report asks for a greet newer than the archive has: that package fails.
    bad = s.tmp / "too-new.json"
    bad.write_text(json.dumps(trivy_report("debian", "11", [
        (CVE, "greet", "1.0-1", "2.0-1"), ("CVE-2099-0002", "sutsh", "1.0-1", "9.0-1")])))
    proc, _ = s.patch("-i", s.ref, "-r", str(bad), "-t", "strict")
    assert proc.returncode == 1, proc.stderr
    assert "strict" not in tags(s.layout)
    doc = s.ok("-i", s.ref, "-r", str(bad), "-t", "lenient", "--ignore-errors")
    platform = doc["platforms"][0]
    assert [u["name"] for u in platform["updates"]] == ["greet"]
    assert [f["name"] for f in platform["failures"]] == ["sutsh"]
    assert versions(_image(s.ref.rsplit(":", 1)[0] + ":lenient"))["greet"] == "2.0-1"


@check("--timeout")
def _timeout(s: Scene, request: pytest.FixtureRequest) -> None:
    s.ok("-i", s.ref, "--timeout", "1h30m")
    proc, _ = s.patch("-i", s.ref, "--timeout", "1ms", "-t", "late")
    assert proc.returncode == 1 and "timed out" in proc.stderr, proc.stderr
    assert "late" not in tags(s.layout)


@check("--working-folder")
def _working_folder(s: Scene, request: pytest.FixtureRequest) -> None:
    work = s.tmp / "work" / "nested"
    s.ok("-i", s.ref, "-w", str(work))
    assert work.is_dir() and list(work.iterdir()) == []


@check("--debug")
def _debug(s: Scene, request: pytest.FixtureRequest) -> None:
    proc, _ = s.patch("-i", s.ref, "--debug")
    assert proc.returncode == 0 and "DEBUG " in proc.stderr, proc.stderr


@check("--addr")
def _addr(s: Scene, request: pytest.FixtureRequest) -> None:
    proc, _ = s.patch("-i", s.ref, "-a", "buildx://copa-builder")
    _warned(proc, "ignored: suture needs no BuildKit")


@check("--cacert")
def _tls(s: Scene, request: pytest.FixtureRequest) -> None:
    proc, _ = s.patch("-i", s.ref, "--cacert", "ca.pem", "--cert", "c.pem", "--key", "k.pem")
    _warned(proc, "ignored: suture needs no BuildKit")


@check("--loader")
def _loader(s: Scene, request: pytest.FixtureRequest) -> None:
    docker: Docker = request.getfixturevalue("docker_engine")
    s.env["DOCKER_HOST"] = docker.host
    try:
        s.ok("-i", s.ref, "-t", "copa-flags:loaded", "-l", "docker")
        run = docker.run("copa-flags:loaded", "greet")
        assert run.stdout == "greet 2.0-1\n", run.stderr
    finally:
        docker.remove_images("copa-flags:loaded")


@check("--progress")
def _progress(s: Scene, request: pytest.FixtureRequest) -> None:
    proc, _ = s.patch("-i", s.ref, "--progress", "rawjson")
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and events, proc.stderr
    assert all("event" in e for e in events)
    proc, _ = s.patch("-i", s.ref, "--progress", "quiet", "-t", "quiet")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@check("--compression")
def _compression(s: Scene, request: pytest.FixtureRequest) -> None:
    for value, suffix in (("zstd", "+zstd"), ("uncompressed", ".tar"), ("gzip", "+gzip")):
        s.ok("-i", s.ref, "--compression", value, "-t", value)
        layer = _image(s.ref.rsplit(":", 1)[0] + f":{value}").manifest.layers[-1]
        assert layer.media_type.endswith(suffix), (value, layer.media_type)
    proc, _ = s.patch("-i", s.ref, "--compression", "estargz")
    _usage_error(proc, "--compression estargz is not supported")


@check("--force-compression")
def _force_compression(s: Scene, request: pytest.FixtureRequest) -> None:
    proc, _ = s.patch("-i", s.ref, "--force-compression")
    _warned(proc, "--force-compression ignored")


@check("--pkg-types")
def _pkg_types(s: Scene, request: pytest.FixtureRequest) -> None:
    s.ok("-i", s.ref, "--pkg-types", "os")
    proc, _ = s.patch("-i", s.ref, "--pkg-types", "os,library", "-r", str(s.report))
    _usage_error(proc, "suture patches OS packages only")
    proc, _ = s.patch("-i", s.ref, "--pkg-types", "npm")
    _usage_error(proc, "expected os and/or library")


@check("--library-patch-level")
def _library_patch_level(s: Scene, request: pytest.FixtureRequest) -> None:
    s.ok("-i", s.ref, "--library-patch-level", "patch")
    proc, _ = s.patch("-i", s.ref, "--library-patch-level", "minor")
    _usage_error(proc, "--library-patch-level needs --pkg-types library")


@check("--toolchain-patch-level")
def _toolchain(s: Scene, request: pytest.FixtureRequest) -> None:
    proc, _ = s.patch("-i", s.ref, "--toolchain-patch-level", "patch")
    _usage_error(proc, "unrecognized arguments: --toolchain-patch-level")


@check("--go-vcs-url")
def _go_vcs_url(s: Scene, request: pytest.FixtureRequest) -> None:
    proc, _ = s.patch("-i", s.ref, "--go-vcs-url", "https://github.com/o/r@v1")
    _usage_error(proc, "unrecognized arguments: --go-vcs-url")


@check("--exit-on-eol")
def _exit_on_eol(s: Scene, request: pytest.FixtureRequest) -> None:
    proc, doc = s.patch("-i", s.ref, "--exit-on-eol", "-t", "eol")
    assert proc.returncode == 1 and doc is None, proc.stderr
    assert "debian 11 reached its end of life on 2024-08-14" in proc.stderr
    assert "eol" not in tags(s.layout)
    doc = s.ok("-i", s.ref)  # without it: patched, with a warning and the result field
    assert doc["platforms"][0]["eol"]["isEol"] is True


@check("--eol-api-url")
def _eol_api_url(s: Scene, request: pytest.FixtureRequest) -> None:
    api: EolApi = request.getfixturevalue("eol_api")
    api.answers["/api/v1/products/debian/releases/11"] = (200, {"result": {
        "isEol": False, "eolFrom": "2099-01-01", "isMaintained": True}})
    doc = s.ok("-i", s.ref, "--exit-on-eol", "--eol-api-url", api.url)
    assert doc["platforms"][0]["eol"] == {"product": "debian", "release": "11",
                                          "eol": "2099-01-01", "isEol": False,
                                          "extendedSupport": None, "source": api.url}


@check("--config")
def _config(s: Scene, request: pytest.FixtureRequest) -> None:
    registry: RegistryServer = request.getfixturevalue("registry")
    repo = f"127.0.0.1:{registry.port}/copa/bulk"
    write_artifact(_image(s.ref), f"{repo}:1.0")
    config = s.tmp / "bulk.yaml"
    config.write_text(f"""apiVersion: copa.sh/v1alpha1
kind: PatchConfig
images:
  - name: bulk
    image: {repo}
    tags:
      strategy: list
      list: ["1.0"]
    target:
      tag: "{{{{ .SourceTag }}}}-bulk"
""")
    proc, _ = s.patch("--config", str(config), "--push")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert versions(_image(f"{repo}:1.0-bulk"))["greet"] == "2.0-1"
    proc, _ = s.patch("--config", str(config), "-i", s.ref)
    _usage_error(proc, "--config cannot be used with --image")


# --- the tests --------------------------------------------------------------------------


def test_the_table_lists_every_copa_flag_and_each_has_a_scenario() -> None:
    rows = table_rows()
    listed = [f for r in rows for f in r.flags]
    assert sorted(f for f in listed if f.startswith("--")) == sorted(COPA_FLAGS)
    shorts = {f for f in listed if not f.startswith("--")}
    assert shorts == {s for s in COPA_FLAGS.values() if s}
    for row in rows:  # a short form sits in copa's row
        for short in (f for f in row.flags if not f.startswith("--")):
            assert COPA_FLAGS[row.key] == short, row
    assert sorted(r.key for r in rows) == sorted(CHECKS)
    assert all(r.copa and r.suture for r in rows)


def test_patch_help_names_every_accepted_flag() -> None:
    proc = subprocess.run([sys.executable, "-m", "suture", "patch", "--help"],
                          capture_output=True, text=True, timeout=60)
    refused = {r.key for r in table_rows() if "not accepted" in r.suture}
    for row in table_rows():
        for flag in row.flags:
            present = re.search(rf"(^|[\s,]){re.escape(flag)}([\s,=]|$)", proc.stdout,
                                re.MULTILINE) is not None
            assert present == (row.key not in refused), flag


@pytest.mark.parametrize("row", table_rows(), ids=lambda r: r.key)
def test_row(row: Row, scene: Scene, request: pytest.FixtureRequest) -> None:
    CHECKS[row.key](scene, request)


# --- copa's documented command lines ------------------------------------------------------

# (line from copa's docs (website/docs/*.md at b23efc6c), image name the line patches)
COPA_LINES = [
    ("copa patch -i docker.io/library/nginx:1.21.6 -r nginx.1.21.6.json -t 1.21.6-patched",
     "custom-address.md"),
    ("copa patch -i docker.io/library/nginx:1.21.6 -r nginx.1.21.6.json -t 1.21.6-patched "
     "--addr buildx://copa-builder", "custom-address.md"),
    ("copa patch -i docker.io/library/nginx:1.21.6 -r nginx.1.21.6.json -t 1.21.6-patched "
     "--addr docker-container://buildkitd", "custom-address.md"),
    ("copa patch -i $IMAGE", "quick-start.md"),
    ("copa patch -r nginx-report.json -i $IMAGE", "quick-start.md"),
    ("copa patch --image $IMAGE --tag nginx:1.25.0-patched", "multiplatform-patching.md"),
    ("copa patch --image $IMAGE --platform linux/amd64,linux/arm64 --tag "
     "nginx:1.25.0-patched", "multiplatform-patching.md"),
    ('copa patch -i mcr.microsoft.com/azure-cli:2.50.0 -r report.json -t 2.50.0-patched '
     '--format="openvex" --output "vex.json"', "output.md"),
    ("copa patch -i $IMAGE -r nginx-report.json --debug", "troubleshooting.md"),
    ("copa patch -i $IMAGE --pkg-types os", "app-level-patching.md"),
    ("copa patch -i myapp:1.0 -r scan.json --pkg-types library -t myapp:1.0-patched",
     "app-level-patching.md"),
]


def _expected(argv: list[str]) -> tuple[str | None, str | None]:
    """(the engine name the result must have, the VEX file) for a copa line; ``None``
    name: the line must be refused."""
    if "library" in argv:
        return None, None
    image = argv[argv.index("-i") + 1] if "-i" in argv else argv[argv.index("--image") + 1]
    tag = None
    for flag in ("-t", "--tag"):
        if flag in argv:
            tag = argv[argv.index(flag) + 1]
    name = image.removeprefix("docker-daemon:")
    if tag is None:
        tag = name.rsplit(":", 1)[1] + "-patched"
    full = tag if ":" in tag else f"{name.rsplit(':', 1)[0]}:{tag}"
    vex = argv[argv.index("--output") + 1] if "--output" in argv else None
    return full, vex


def test_copa_lines_from_copas_docs(scene: Scene, docker_engine: Docker) -> None:
    """Each line, ``copa`` replaced by ``suture``, ``$IMAGE`` by ``nginx:1.21.6``, and
    each image named as ``docker-daemon:NAME`` (copa finds it in the local Docker store
    first; suture is told). Reports are Trivy JSON naming greet's CVE."""
    docker = docker_engine
    scene.env["DOCKER_HOST"] = docker.host
    tar = scene.tmp / "root.tar"
    subprocess.run(["tar", "--numeric-owner", "-C", str(scene.root), "-cf", str(tar), "."],
                   check=True)
    names = ["docker.io/library/nginx:1.21.6", "mcr.microsoft.com/azure-cli:2.50.0",
             "myapp:1.0"]
    for image_name in names:
        subprocess.run(["docker", "import", str(tar), image_name], env=docker.env,
                       check=True, capture_output=True)
    for report in ("nginx.1.21.6.json", "nginx-report.json", "report.json", "scan.json"):
        (scene.tmp / report).write_text(scene.report.read_text())
    made: list[str] = []
    try:
        for line, doc_page in COPA_LINES:
            text = line.replace("$IMAGE", "nginx:1.21.6")
            argv = shlex.split(text)
            assert argv[:2] == ["copa", "patch"]
            for i, arg in enumerate(argv):
                if argv[i - 1] in ("-i", "--image"):
                    argv[i] = f"docker-daemon:{arg}"
            proc, doc = scene.suture(*argv[1:])
            name, vex = _expected(argv)
            where = f"{doc_page}: {line}"
            if name is None:
                assert proc.returncode == 2, where
                assert "suture patches OS packages only" in proc.stderr, where
                continue
            assert proc.returncode == 0, f"{where}\n{proc.stdout}{proc.stderr}"
            assert doc is not None, where
            assert doc["target"]["reference"] == str(parse_reference(f"docker-daemon:{name}"))
            made.append(name)
            run = docker.run(name, "greet")
            assert run.stdout == "greet 2.0-1\n", (where, run.stderr)
            if vex:
                statements = json.loads((scene.tmp / vex).read_text())["statements"]
                assert [s["vulnerability"]["name"] for s in statements] == [CVE], where
        assert docker.run("nginx:1.21.6", "greet").stdout == "greet 1.0-1\n"
    finally:
        docker.remove_images(*names, *made)
