"""`suture patch` end to end against a local signed apt archive, on Debian images built here.

Every image is a root filesystem into which the real ``dpkg --root`` installed small
packages built with ``dpkg-deb``, with an ``os-release``, apt sources and the test key,
written to an OCI layout. The archive (``tests/fixtures/aptrepo.py``) serves the
release, ``-security`` and ``-updates`` suites on 127.0.0.1 and logs every request.
The real CLI runs in a subprocess; the tests check outcomes: exit codes, the one-line
error, the result JSON, the dpkg database and files of the written image, the request
log, and that a failure writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from suture.inspect import BASE_DIGEST_KEY
from suture.oci.image import Image
from tests.fixtures.aptrepo import AptRepo, GpgKeys
from tests.fixtures.patchimages import (
    Archive,
    contents,
    debian_os_release,
    error_line,
    hold,
    installed,
    layout_state,
    make_root,
    open_image,
    suture,
    tags,
    trivy_report,
    versions,
    write_image,
)

pytestmark = pytest.mark.tools

CODENAME = "bookworm"
SECURITY, UPDATES = f"{CODENAME}-security", f"{CODENAME}-updates"
CONFFILES = ["/etc/a.conf", "/etc/a/defaults.conf", "/etc/a/same.conf"]
A1 = {"usr/share/a/old.txt": b"only in 1.0\n", "usr/share/a/common": b"a 1.0\n",
      "etc/a.conf": b"setting=1\n", "etc/a/defaults.conf": b"default=1\n",
      "etc/a/same.conf": b"unchanged\n"}
A2 = {"usr/share/a/new.txt": b"only in 2.0\n", "usr/share/a/common": b"a 2.0\n",
      "etc/a.conf": b"setting=2\n", "etc/a/defaults.conf": b"default=2\n",
      "etc/a/same.conf": b"unchanged\n"}
DEBIAN_ONLY_RELEASE = "deb http://deb.debian.org/debian bookworm main\n"


@dataclass
class Scene:
    """The standard archive and what a v1 image installs from it.

    ``bookworm``: a 1.0-1, b 1.0-1, z 1.0-1 (never updated), c 1.0-1;
    ``-security``: a 2.0-1 (Depends: c), c 2.0-1; ``-updates``: b 2.0-1.
    """

    archive: Archive
    v1: list[Path]
    tmp: Path

    def image(self, tag: str, *, sources: str = DEBIAN_ONLY_RELEASE,
              files: dict[str, bytes] | None = None, held: tuple[str, ...] = ()) -> str:
        root = make_root(self.tmp / f"root-{tag}", self.v1, debian_os_release(),
                         sources={"etc/apt/sources.list": sources},
                         keyring=self.archive.key_asc(), files=files)
        if held:
            hold(root, *held)
        return write_image(root, self.tmp, tag)

    def patch(self, ref: str, *args: str, cache: str = "cache", mirrors: bool = True,
              result: str | None = "result.json") -> tuple[subprocess.CompletedProcess[str],
                                                           dict[str, Any] | None]:
        """Run ``suture patch -i ref`` with this scene's cache and mirrors; the result JSON."""
        out = self.tmp / result if result else None
        if out is not None:
            out.unlink(missing_ok=True)
        cmd = ["patch", "-i", ref, "--cache-dir", str(self.tmp / cache), "--no-host-keyrings",
               *(self.archive.mirror_args() if mirrors else []), *args,
               *(["--result", str(out)] if out is not None else [])]
        proc = suture(*cmd)
        doc = json.loads(out.read_text()) if out is not None and out.exists() else None
        return proc, doc

    @property
    def layout(self) -> Path:
        return self.tmp / "layout"


def _scene(apt_repo: AptRepo, gpg_keys: GpgKeys, tmp: Path, *,
           a2_depends: str = "c (>= 2.0)") -> Scene:
    archive = Archive.create(apt_repo, gpg_keys.good, tmp, CODENAME)
    v1 = [archive.add(CODENAME, "a", "1.0-1", A1, conffiles=CONFFILES),
          archive.add(CODENAME, "b", "1.0-1"),
          archive.add(CODENAME, "z", "1.0-1")]
    archive.add(CODENAME, "c", "1.0-1")
    archive.add(SECURITY, "a", "2.0-1", A2, conffiles=CONFFILES, depends=a2_depends)
    archive.add(SECURITY, "c", "2.0-1")
    archive.add(UPDATES, "b", "2.0-1")
    archive.publish()
    return Scene(archive, v1, tmp)


@pytest.fixture
def scene(apt_repo: AptRepo, gpg_keys: GpgKeys, tmp_path: Path) -> Scene:
    return _scene(apt_repo, gpg_keys, tmp_path)


def _ok(proc: subprocess.CompletedProcess[str], doc: dict[str, Any] | None
        ) -> tuple[dict[str, Any], dict[str, Any]]:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert doc is not None
    [platform] = doc["platforms"]
    return doc, platform


def _error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The failure's one line on stderr (exit code 1, no traceback, nothing but progress)."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return error_line(proc)


def _updates(platform: dict[str, Any]) -> dict[str, tuple[str | None, str, str]]:
    return {u["name"]: (u["from"], u["to"], u["reason"]) for u in platform["updates"]}


def _top_layer_names(image: Image) -> list[str]:
    with image.layers[-1].open_tar() as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        return [m.name.removeprefix("./") for m in tar]


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ---------------------------------------------------------------- update all


@pytest.mark.parametrize("sources", ["release-only", "all-suites"])
def test_update_all(scene: Scene, sources: str) -> None:
    """a and b go to 2.0-1; a file a 2.0 dropped is gone (whited out), one it added is there.

    ``release-only``: the image lists bookworm at deb.debian.org only; the engine adds
    -security (at debian-security) and -updates, all mapped here with --mirror.
    ``all-suites``: the image lists all three suites at the local URL; nothing is added
    and no --mirror is given."""
    url = scene.archive.url
    if sources == "all-suites":
        text = "".join(f"deb {url} {s} main\n" for s in scene.archive.suites)
        ref = scene.image("v1", sources=text)
    else:
        ref = scene.image("v1")
    mirrors = sources == "release-only"
    # Sources on 127.0.0.1 the image names itself are refused without the user's opt-in.
    allow = [] if mirrors else ["--allow-private-repos", url.removeprefix("http://")]
    dry, _ = scene.patch(ref, "--dry-run", *allow, mirrors=mirrors, result=None)
    assert dry.returncode == 0, dry.stderr
    added = [line for line in dry.stdout.splitlines() if "added suites" in line]
    if mirrors:
        [note] = added
        assert f"http://deb.debian.org/debian-security {SECURITY}" in note
        assert f"http://deb.debian.org/debian {UPDATES}" in note
    else:
        assert added == []

    proc, result = scene.patch(ref, *allow, mirrors=mirrors)
    doc, platform = _ok(proc, result)
    assert platform["status"] == "patched"
    # The real run says so too when suites were added.
    assert [line.split(": ", 2)[2] for line in proc.stdout.splitlines()
            if line.startswith("note: ") and "added suites" in line] == \
        [a.split("note: ", 1)[1] for a in added]
    assert _updates(platform) == {"a": ("1.0-1", "2.0-1", "update-all"),
                                  "b": ("1.0-1", "2.0-1", "update-all"),
                                  "c": (None, "2.0-1", "dependency")}
    assert doc["source"]["reference"] == ref
    assert doc["target"]["reference"] == ref + "-patched"
    assert tags(scene.layout) == {"v1", "v1-patched"}
    before, after = open_image(ref), open_image(ref + "-patched")
    assert after.digest == doc["target"]["digest"] == platform["digest"]
    assert len(after.layers) == len(before.layers) + 1
    assert platform["layer"]["digest"] == after.manifest.layers[-1].digest

    db = installed(after)
    assert {n: p.version for n, p in db.items()} == {"a": "2.0-1", "b": "2.0-1", "c": "2.0-1",
                                                      "z": "1.0-1"}
    for name in ("a", "b", "c", "z"):
        assert db[name].paragraph["Status"] == "install ok installed", name
    assert contents(before, "usr/share/a/old.txt")["usr/share/a/old.txt"] == b"only in 1.0\n"
    files = contents(after, "usr/share/a/old.txt", "usr/share/a/new.txt", "usr/share/a/common",
                     "usr/share/b/version", "usr/share/c/version", "etc/a.conf",
                     "etc/a/defaults.conf", "etc/a.conf.dpkg-dist")
    assert files == {"usr/share/a/old.txt": None, "usr/share/a/new.txt": b"only in 2.0\n",
                     "usr/share/a/common": b"a 2.0\n", "usr/share/b/version": b"b 2.0-1\n",
                     "usr/share/c/version": b"c 2.0-1\n", "etc/a.conf": b"setting=2\n",
                     "etc/a/defaults.conf": b"default=2\n", "etc/a.conf.dpkg-dist": None}
    assert "usr/share/a/.wh.old.txt" in _top_layer_names(after)
    listed = contents(after, "var/lib/dpkg/info/a.list")["var/lib/dpkg/info/a.list"] or b""
    assert b"/usr/share/a/new.txt\n" in listed and b"old.txt" not in listed
    # Everything came from the local archive, each package once.
    debs = sorted(scene.archive.fetched("/pool/"))
    assert [Path(p).name for p in debs] == ["a_2.0-1_amd64.deb", "b_2.0-1_amd64.deb",
                                            "c_2.0-1_amd64.deb"]


@pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci unpacks the image")
def test_patched_root_verifies_with_dpkg(scene: Scene, tmp_path: Path) -> None:
    """The patched image, unpacked by umoci, is what dpkg itself would call consistent."""
    ref = scene.image("v1")
    _ok(*scene.patch(ref))
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{scene.layout}:v1-patched", str(bundle)],
                   check=True, capture_output=True)
    root = bundle / "rootfs"
    verify = subprocess.run(["dpkg", f"--root={root}", "--verify"], capture_output=True,
                            text=True)
    assert verify.returncode == 0 and verify.stdout == "", verify.stdout + verify.stderr
    audit = subprocess.run(["dpkg", f"--root={root}", "--audit"], capture_output=True,
                           text=True)
    assert audit.returncode == 0 and audit.stdout == "", audit.stdout + audit.stderr
    query = subprocess.run(["dpkg-query", f"--root={root}", "-W", "-f",
                            "${Package} ${Version} ${db:Status-Abbrev}\n"],
                           capture_output=True, text=True, check=True)
    assert query.stdout.split("\n") == ["a 2.0-1 ii ", "b 2.0-1 ii ", "c 2.0-1 ii ",
                                        "z 1.0-1 ii ", ""]


def test_new_dependency_is_installed(scene: Scene) -> None:
    """a 2.0-1 depends on c (>= 2.0), which the image lacks: c comes in, as a dependency."""
    ref = scene.image("v1")
    assert "c" not in versions(open_image(ref))
    _, platform = _ok(*scene.patch(ref))
    [c] = [u for u in platform["updates"] if u["name"] == "c"]
    assert (c["from"], c["to"], c["reason"], c["vulnerabilities"]) == (None, "2.0-1",
                                                                      "dependency", [])
    after = open_image(ref + "-patched")
    db = installed(after)
    assert db["c"].version == "2.0-1"
    assert db["c"].paragraph["Status"] == "install ok installed"
    assert db["a"].paragraph["Depends"] == "c (>= 2.0)"
    assert contents(after, "usr/share/c/version") == {"usr/share/c/version": b"c 2.0-1\n"}
    listed = contents(after, "var/lib/dpkg/info/c.list")["var/lib/dpkg/info/c.list"] or b""
    assert b"/usr/share/c/version\n" in listed


def test_modified_conffile_is_kept(scene: Scene) -> None:
    """As ``dpkg --force-confold``: the user's /etc/a.conf stays and the package's new one is
    written beside it as .dpkg-dist; a conffile the user did not touch is replaced; one the
    user changed but the package did not is left alone, with no .dpkg-dist."""
    mine = b"# edited by the user\nsetting=42\n"
    also_mine = b"unchanged, said the package\n"
    ref = scene.image("v1", files={"etc/a.conf": mine, "etc/a/same.conf": also_mine})
    before = installed(open_image(ref))["a"]
    assert {c.path: c.md5 for c in before.conffiles}["/etc/a.conf"] == _md5(A1["etc/a.conf"])
    _, platform = _ok(*scene.patch(ref))
    assert platform["status"] == "patched"
    after = open_image(ref + "-patched")
    files = contents(after, "etc/a.conf", "etc/a.conf.dpkg-dist", "etc/a/defaults.conf",
                     "etc/a/defaults.conf.dpkg-dist", "etc/a/same.conf",
                     "etc/a/same.conf.dpkg-dist")
    assert files == {"etc/a.conf": mine, "etc/a.conf.dpkg-dist": b"setting=2\n",
                     "etc/a/defaults.conf": b"default=2\n", "etc/a/defaults.conf.dpkg-dist": None,
                     "etc/a/same.conf": also_mine, "etc/a/same.conf.dpkg-dist": None}
    # dpkg records the hash of the version the package ships, not the user's.
    recorded = {c.path: c.md5 for c in installed(after)["a"].conffiles}
    assert recorded == {"/etc/a.conf": _md5(A2["etc/a.conf"]),
                        "/etc/a/defaults.conf": _md5(A2["etc/a/defaults.conf"]),
                        "/etc/a/same.conf": _md5(A2["etc/a/same.conf"])}


def test_held_package_is_not_touched(scene: Scene) -> None:
    """a is held (``Status: hold ok installed``): it stays at 1.0-1 and the result says
    ``held``; b is still updated; exit 0."""
    ref = scene.image("v1", held=("a",))
    assert installed(open_image(ref))["a"].paragraph["Status"] == "hold ok installed"
    _, platform = _ok(*scene.patch(ref))
    assert _updates(platform) == {"b": ("1.0-1", "2.0-1", "update-all")}
    assert [(s["name"], s["reason"]) for s in platform["skipped"]] == [("a", "held")]
    db = installed(open_image(ref + "-patched"))
    assert db["a"].version == "1.0-1" and db["a"].paragraph["Status"] == "hold ok installed"
    assert db["b"].version == "2.0-1"
    assert "c" not in db
    assert [Path(p).name for p in scene.archive.fetched("/pool/")] == ["b_2.0-1_amd64.deb"]


# ---------------------------------------------------------------- reports


def _write_report(tmp: Path, name: str, doc: object) -> str:
    path = tmp / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return str(path)


def test_trivy_report_updates_only_what_it_names(scene: Scene, tmp_path: Path) -> None:
    ref = scene.image("v1")
    report = _write_report(tmp_path, "trivy.json", trivy_report(
        "debian", "12.7", [("CVE-2024-0001", "a", "1.0-1", "2.0-1")], artifact=ref))
    _, platform = _ok(*scene.patch(ref, "-r", report))
    assert platform["updates"] == [
        {"name": "a", "type": "deb", "from": "1.0-1", "to": "2.0-1",
         "vulnerabilities": ["CVE-2024-0001"], "reason": "report"},
        {"name": "c", "type": "deb", "from": None, "to": "2.0-1", "vulnerabilities": [],
         "reason": "dependency"},
    ]
    assert versions(open_image(ref + "-patched")) == {"a": "2.0-1", "b": "1.0-1", "c": "2.0-1",
                                                      "z": "1.0-1"}
    assert not any("/b_" in p for p in scene.archive.fetched("/pool/"))


def test_trivy_fix_the_archive_lacks_fails(scene: Scene, tmp_path: Path) -> None:
    ref = scene.image("v1")
    report = _write_report(tmp_path, "trivy.json", trivy_report(
        "debian", "12.7", [("CVE-2024-0002", "a", "1.0-1", "3.0-1")]))
    state = layout_state(scene.layout)
    proc, doc = scene.patch(ref, "-r", report)
    line = _error_line(proc)
    assert "a: fixed version 3.0-1 not available, newest candidate is 2.0-1" in line
    assert doc is not None and doc["target"] is None
    [platform] = doc["platforms"]
    assert platform["status"] == "error" and platform["digest"] is None
    assert [(f["name"], f["vulnerabilities"]) for f in platform["failures"]] == [
        ("a", ["CVE-2024-0002"])]
    assert layout_state(scene.layout) == state
    assert scene.archive.fetched("/pool/") == []


def test_trivy_report_for_another_os_fails(scene: Scene, tmp_path: Path) -> None:
    ref = scene.image("v1")
    report = _write_report(tmp_path, "alpine.json", trivy_report(
        "alpine", "3.20.1", [("CVE-2024-0003", "a", "1.0-1", "2.0-1")]))
    state = layout_state(scene.layout)
    proc, doc = scene.patch(ref, "-r", report)
    line = _error_line(proc)
    assert "alpine 3.20.1" in line and "debian 12" in line
    assert doc is not None and doc["target"] is None
    assert layout_state(scene.layout) == state
    assert scene.archive.fetched("/pool/") == []


@pytest.mark.parametrize(("document", "scanner", "says"), [
    ({"matches": [], "source": {"type": "image"}}, "trivy", "SchemaVersion 2"),  # Grype's
    ({"matches": [], "source": {"type": "image"}}, None, "grype report has no distro"),
    ([{"Target": "x"}], "trivy", "not an object"),
    ([{"Target": "x"}], None, "looks like a Trivy report from before SchemaVersion 2"),
    ("this is not JSON", "trivy", "not valid JSON"),
    ({"SchemaVersion": 2, "ArtifactName": "x", "Results": []}, None, "no Metadata.OS"),
], ids=["grype-as-trivy", "grype", "list-as-trivy", "list", "text", "no-os"])
def test_not_a_trivy_report_fails(scene: Scene, tmp_path: Path, document: object,
                                  scanner: str | None, says: str) -> None:
    """A document that is not a report of the kind named (or of any kind, when the format
    is detected) is an error before anything is opened, never "nothing to patch"."""
    ref = scene.image("v1")
    state = layout_state(scene.layout)
    proc, doc = scene.patch(ref, "-r", _write_report(tmp_path, "report.json", document),
                            *(["--scanner", scanner] if scanner else []))
    line = _error_line(proc)
    assert says in line and "report" in line.lower(), line
    assert "nothing to patch" not in proc.stdout + line and "up-to-date" not in proc.stdout
    assert doc is None  # refused before anything was opened
    assert layout_state(scene.layout) == state
    assert scene.archive.repo.requests == []


# ---------------------------------------------------------------- verification


@pytest.mark.parametrize("dry_run", [False, True])
def test_the_sources_start_the_index_downloads_before_the_pass_ends(scene: Scene,
                                                                    dry_run: bool) -> None:
    """DpkgEngine.prefetch, offered the image's sources.list as the pass over the layers
    reads it, downloads that suite's InRelease and native Packages and nothing else (a
    file apt does not read, nested in sources.list.d/, is ignored), and decompresses
    the index only in a dry run (otherwise the scripts' root takes the other core);
    prepare, given the whole tree, verifies those and fetches only what the prefetch
    could not know (the suites os-release adds): every index once, and then the same
    plan as a run without a prefetch."""
    from suture.inspect import inspect_image, wants_detection_data
    from suture.oci.fs import read_tree
    from suture.patch.dpkg import DpkgEngine
    from suture.patch.engines import wants_data
    from suture.patch.model import PatchOptions

    image = open_image(scene.image("v1"))
    args = scene.archive.mirror_args()
    options = PatchOptions(cache_dir=scene.tmp / "cache", host_keyrings=False,
                           mirrors=dict(a.split("=", 1) for a in args[1::2]), dry_run=dry_run)
    engine = DpkgEngine()
    prefetch = engine.prefetch(image, options)
    assert prefetch is not None
    prefetch.offer("etc/apt/sources.list.d/nested/more.list",
                   f"deb http://deb.debian.org/debian {UPDATES} main\n".encode())
    prefetch.offer("etc/apt/sources.list", DEBIAN_ONLY_RELEASE.encode())
    prefetch.offer("etc/apt/sources.list", DEBIAN_ONLY_RELEASE.encode())  # once is enough
    prefetch.wait()
    assert scene.archive.fetched("/InRelease") == [f"/dists/{CODENAME}/InRelease"]
    [index] = scene.archive.fetched("/binary-amd64/")
    assert index.startswith(f"/dists/{CODENAME}/main/binary-amd64/")
    release = scene.archive.repo.path("dists", CODENAME, "Release").read_text()
    plain = re.search(r"^ ([0-9a-f]{64}) +\d+ main/binary-amd64/Packages$",
                      release.split("SHA256:", 1)[1], re.M)
    assert plain is not None
    assert (prefetch.fetcher.cache.lookup(plain.group(1)) is not None) == dry_run

    tree = read_tree(image, lambda p: wants_detection_data(p) or wants_data(p))
    state = engine.prepare(image, inspect_image(image, tree), options, tree)
    assert sorted(scene.archive.fetched("/InRelease")) == sorted(
        f"/dists/{suite}/InRelease" for suite in (CODENAME, SECURITY, UPDATES))
    assert scene.archive.fetched(f"/dists/{CODENAME}/main/binary-amd64/") == [index]
    assert len(scene.archive.fetched("/binary-amd64/")) == 3
    assert scene.archive.fetched("/pool/") == []
    plan = state.plan(None)
    fresh = DpkgEngine().prepare(image, inspect_image(image, tree), options, tree).plan(None)
    assert [(u.name, u.to_version) for u in plan.updates] == \
        [(u.name, u.to_version) for u in fresh.updates] == \
        [("a", "2.0-1"), ("b", "2.0-1"), ("c", "2.0-1")]


def _tamper(archive: Archive, how: str) -> Path:
    """Change -security's Packages.xz after the Release listed its size and hash:
    ``flip`` one byte (same size), or ``rewrite`` an entry (another size)."""
    path = archive.repo.path("dists", SECURITY, "main", "binary-amd64", "Packages.xz")
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        text = lzma.decompress(bytes(data)).replace(b"Version: 2.0-1", b"Version: 9.0-1")
        data = bytearray(lzma.compress(text + b"\n"))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("how", ["flip", "rewrite"])
def test_tampered_packages_index_fails(scene: Scene, how: str) -> None:
    ref = scene.image("v1")
    release = scene.archive.repo.path("dists", SECURITY, "Release").read_text()
    listed = re.search(r"^ ([0-9a-f]{64}) +(\d+) main/binary-amd64/Packages.xz$",
                       release.split("SHA256:", 1)[1], re.M)
    assert listed is not None
    served = _tamper(scene.archive, how).read_bytes()
    state = layout_state(scene.layout)
    proc, doc = scene.patch(ref)
    line = _error_line(proc)
    assert f"{SECURITY}/main/binary-amd64/Packages.xz: " in line
    if how == "flip":
        assert (f"digest mismatch, expected sha256:{listed.group(1)}, "
                f"got sha256:{hashlib.sha256(served).hexdigest()}") in line
    else:
        assert f"size mismatch, expected {listed.group(2)} bytes, got {len(served)}" in line
    assert doc is not None and doc["target"] is None
    assert doc["platforms"][0]["status"] == "error"
    assert layout_state(scene.layout) == state
    assert scene.archive.fetched("/pool/") == []


@pytest.mark.parametrize("how", ["unknown-key", "tampered-inrelease"])
def test_bad_signature_fails(scene: Scene, gpg_keys: GpgKeys, how: str) -> None:
    """InRelease signed by a key the image does not trust, or changed after signing."""
    ref = scene.image("v1")
    if how == "unknown-key":
        scene.archive.publish(sign_with=gpg_keys.other)
    else:
        path = scene.archive.repo.path("dists", UPDATES, "InRelease")
        path.write_bytes(path.read_bytes().replace(b"Origin: Suture Test",
                                                   b"Origin: Evil Tests!"))
    state = layout_state(scene.layout)
    proc, doc = scene.patch(ref)
    line = _error_line(proc)
    if how == "unknown-key":
        assert f"/dists/{CODENAME}/InRelease: no trusted key for signature(s) by " \
               f"{gpg_keys.other.fpr}" in line
    else:
        assert f"/dists/{UPDATES}/InRelease: bad signature by {gpg_keys.good.fpr}" in line
    assert doc is not None and doc["target"] is None
    assert layout_state(scene.layout) == state
    assert scene.archive.fetched("/pool/") == []


def test_missing_dependency_fails(apt_repo: AptRepo, gpg_keys: GpgKeys, tmp_path: Path) -> None:
    scene = _scene(apt_repo, gpg_keys, tmp_path, a2_depends="libnowhere1 (>= 1.0)")
    ref = scene.image("v1")
    state = layout_state(scene.layout)
    proc, doc = scene.patch(ref)
    line = _error_line(proc)
    assert "a: a 2.0-1 needs 'libnowhere1 (>= 1.0)' (Depends)" in line
    assert doc is not None and doc["target"] is None
    [platform] = doc["platforms"]
    assert platform["status"] == "error"
    assert [f["name"] for f in platform["failures"]] == ["a"]
    assert layout_state(scene.layout) == state
    assert scene.archive.fetched("/pool/") == []


# ---------------------------------------------------------------- cache and offline


def test_cache_and_offline(scene: Scene, tmp_path: Path) -> None:
    repo = scene.archive.repo
    first = scene.image("first")
    _ok(*scene.patch(first))
    assert len(scene.archive.fetched("/pool/")) == 3
    # A second image needing the same packages: no package and no index downloaded again;
    # the InRelease files are only revalidated (304).
    second = scene.image("second", files={"srv/second": b"another image\n"})
    seen = len(repo.requests)
    _, platform = _ok(*scene.patch(second))
    assert platform["status"] == "patched"
    again = repo.requests[seen:]
    assert [r for r in again if "/pool/" in r.path or "Packages" in r.path] == []
    assert {(r.path.rsplit("/", 1)[-1], r.status) for r in again} == {("InRelease", 304)}
    assert len(again) == 3
    # Offline with an empty cache: exit 1, naming what is missing; nothing written.
    state = layout_state(scene.layout)
    seen = len(repo.requests)
    proc, doc = scene.patch(first, "--offline", "--dest", f"oci:{tmp_path}/offline:x",
                            cache="empty-cache")
    line = _error_line(proc)
    assert f"offline: InRelease ({scene.archive.url}/dists/{CODENAME}/InRelease) is not in " \
           "the cache" in line
    assert repo.requests[seen:] == []
    assert layout_state(scene.layout) == state and not (tmp_path / "offline").exists()
    # Offline with the warm cache: patched, without one request.
    doc, platform = _ok(*scene.patch(first, "--offline", "--dest", f"oci:{tmp_path}/offline:x"))
    assert platform["status"] == "patched"
    assert repo.requests[seen:] == []
    assert versions(open_image(f"oci:{tmp_path}/offline:x"))["a"] == "2.0-1"
    assert doc["target"]["digest"] == open_image(first + "-patched").digest


def test_packages_read_as_they_download_give_the_same_layer(scene: Scene,
                                                           tmp_path: Path) -> None:
    """A .deb downloaded now is read on its download's thread, beside the other
    downloads (DpkgState.fetch); one found in the cache is read by the build: the same
    patch layer either way."""
    ref = scene.image("v1")
    _ok(*scene.patch(ref, "--dest", f"oci:{tmp_path}/one:x"))
    assert len(scene.archive.fetched("/pool/")) == 3
    _ok(*scene.patch(ref, "--no-result-cache", "--dest", f"oci:{tmp_path}/two:x"))
    assert len(scene.archive.fetched("/pool/")) == 3  # all from the cache this time
    one, two = open_image(f"oci:{tmp_path}/one:x"), open_image(f"oci:{tmp_path}/two:x")
    assert one.layers[-1].digest == two.layers[-1].digest
    assert versions(two)["a"] == "2.0-1"


def test_offline_names_a_missing_package(scene: Scene) -> None:
    """With the indexes cached but one package not: exit 1 naming the package."""
    ref = scene.image("v1")
    dry, _ = scene.patch(ref, "--dry-run", result=None)  # caches the indexes only
    assert dry.returncode == 0, dry.stderr
    assert scene.archive.fetched("/pool/") == []
    proc, doc = scene.patch(ref, "--offline")
    line = _error_line(proc)
    assert re.search(r"offline: [ab]_2\.0-1_amd64\.deb \(http://\S+\.deb, sha256 [0-9a-f]{64}\) "
                     r"is not in the cache", line), line
    assert doc is not None and doc["target"] is None
    assert tags(scene.layout) == {"v1"}


# ---------------------------------------------------------------- re-patching


def test_repatching_replaces_the_patch_layer(scene: Scene, tmp_path: Path) -> None:
    ref = scene.image("v1")
    original = open_image(ref)
    first, _ = _ok(*scene.patch(ref))
    # The same input patched again gives the same image.
    twice, _ = _ok(*scene.patch(ref, "--dest", f"oci:{tmp_path}/twice:x"))
    assert twice["target"]["digest"] == first["target"]["digest"]

    scene.archive.add(UPDATES, "b", "3.0-1", {"usr/share/b/three": b"b 3\n"})
    scene.archive.publish()
    doc, platform = _ok(*scene.patch(ref + "-patched", "-t", "v1-repatched"))
    assert _updates(platform) == {"b": ("2.0-1", "3.0-1", "update-all")}
    out = open_image(ref + "-repatched")
    assert out.digest == doc["target"]["digest"]
    # The original layers, then one patch layer holding both patches.
    assert [d.digest for d in out.manifest.layers[:-1]] == [
        d.digest for d in original.manifest.layers]
    assert len(out.layers) == len(original.layers) + 1
    assert out.labels[BASE_DIGEST_KEY] == original.digest
    assert out.manifest.annotations[BASE_DIGEST_KEY] == original.digest
    assert versions(out) == {"a": "2.0-1", "b": "3.0-1", "c": "2.0-1", "z": "1.0-1"}
    files = contents(out, "usr/share/a/new.txt", "usr/share/a/old.txt", "usr/share/b/three",
                     "usr/share/b/version", "usr/share/c/version")
    assert files == {"usr/share/a/new.txt": b"only in 2.0\n", "usr/share/a/old.txt": None,
                     "usr/share/b/three": b"b 3\n", "usr/share/b/version": None,
                     "usr/share/c/version": b"c 2.0-1\n"}
    db = installed(out)
    assert all(p.paragraph["Status"] == "install ok installed" for p in db.values())
    # Re-patching the re-patched image: up to date, nothing written.
    up, platform = _ok(*scene.patch(ref + "-repatched", "-t", "never"))
    assert up["target"] is None and platform["status"] == "up-to-date"
    assert "never" not in tags(scene.layout)
    # Deterministic: the same re-patch again gives the same digest.
    same, _ = _ok(*scene.patch(ref + "-patched", "--dest", f"oci:{tmp_path}/same:x"))
    assert same["target"]["digest"] == doc["target"]["digest"]


# ---------------------------------------------------------------- dry run and naming


def test_dry_run_prints_the_plan_and_writes_nothing(scene: Scene) -> None:
    ref = scene.image("v1")
    state = layout_state(scene.layout)
    proc, doc = scene.patch(ref, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    plan = {m.group(1): m.groups()[1:] for m in re.finditer(
        r"^\s+(\S+)\s+(\S+) -> (\S+)\s+(\S+)\s*$", proc.stdout, re.M)}
    assert plan == {"a": ("1.0-1", "2.0-1", "update-all"),
                    "b": ("1.0-1", "2.0-1", "update-all"),
                    "c": ("(new)", "2.0-1", "dependency")}
    assert doc is not None and doc["target"] is None
    assert _updates(doc["platforms"][0]) == {"a": ("1.0-1", "2.0-1", "update-all"),
                                             "b": ("1.0-1", "2.0-1", "update-all"),
                                             "c": (None, "2.0-1", "dependency")}
    assert layout_state(scene.layout) == state
    assert scene.archive.fetched("/pool/") == []


def test_tag_and_destination_naming(scene: Scene, tmp_path: Path) -> None:
    ref = scene.image("v1")
    a, _ = _ok(*scene.patch(ref, "-t", "newtag"))
    assert a["target"]["reference"] == f"oci:{scene.layout}:newtag"
    b, _ = _ok(*scene.patch(ref, "--tag-suffix", "fixed"))
    assert b["target"]["reference"] == f"oci:{scene.layout}:v1-fixed"
    assert tags(scene.layout) == {"v1", "newtag", "v1-fixed"}
    state = layout_state(scene.layout)
    c, _ = _ok(*scene.patch(ref, "--dest", f"oci:{tmp_path}/other:tag"))
    assert c["target"]["reference"] == f"oci:{tmp_path}/other:tag"
    assert tags(tmp_path / "other") == {"tag"}
    assert layout_state(scene.layout) == state
    assert a["target"]["digest"] == b["target"]["digest"] == c["target"]["digest"]
    assert versions(open_image(f"oci:{tmp_path}/other:tag"))["b"] == "2.0-1"


def test_a_package_moving_from_all_to_the_native_architecture_is_upgraded(
        apt_repo: AptRepo, gpg_keys: GpgKeys, tmp_path: Path) -> None:
    """``Architecture: all`` stands for the native architecture (as dpkg and apt read it):
    d 1.0-1 (all) -> 2.0-1 (amd64) is an upgrade of the one package, its old file gone."""
    archive = Archive.create(apt_repo, gpg_keys.good, tmp_path, CODENAME)
    v1 = [archive.add(CODENAME, "d", "1.0-1", {"usr/share/d/old": b"1\n"}, arch="all")]
    archive.add(SECURITY, "d", "2.0-1", {"usr/share/d/new": b"2\n"})
    archive.publish()
    scene = Scene(archive, v1, tmp_path)
    ref = scene.image("v1")
    proc, result = scene.patch(ref)
    _doc, platform = _ok(proc, result)
    assert _updates(platform) == {"d": ("1.0-1", "2.0-1", "update-all")}
    after = open_image(ref + "-patched")
    db = installed(after)
    assert (db["d"].version, db["d"].architecture) == ("2.0-1", "amd64")
    assert contents(after, "usr/share/d/old", "usr/share/d/new") == {
        "usr/share/d/old": None, "usr/share/d/new": b"2\n"}
