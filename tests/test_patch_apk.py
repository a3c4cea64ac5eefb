"""`suture patch` end to end on Alpine-, Wolfi- and distroless-style images, against signed
apk repositories served on 127.0.0.1.

Packages, repositories and images come from the independent fixture
(``tests/fixtures/apkrepo.py``: packages as abuild builds them, indexes as ``apk index``
and ``abuild-sign`` make them, databases as ``apk add`` leaves them). The images list the
upstream repository URL, which ``--mirror`` maps to the local server. The tests check
outcomes: the database, files and whiteouts of the written image, what ``apk audit``
would compare, digests, the request log, the result JSON and the VEX, and that each bad
input gives one clear error and writes nothing.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from suture.distro.apk.checksum import q1
from suture.distro.apk.installed import InstalledPackage, parse_installed
from suture.inspect import BASE_LAYERS_KEY
from suture.oci.fs import read_files, resolve_links, scan_files
from suture.oci.image import Image, ImageIndex
from suture.oci.layer import DIR, SYMLINK, Entry
from suture.patch import patch
from suture.patch.model import PatchOptions, PatchResult
from suture.transports import open_artifact, write_artifact
from suture.transports.reference import parse_reference
from tests.fixtures.apkrepo import (
    V3_INDEX,
    ApkFile,
    ApkKey,
    ApkKeys,
    ApkRepoServer,
    ApkSpec,
    ApkSymlink,
    apk_image,
    apk_rootfs_entries,
    build_apk,
    write_oci,
)
from tests.fixtures.images import make_image, make_index
from tests.fixtures.patchimages import layout_state, suture, trivy_report

ALPINE_URL = "https://dl-cdn.alpinelinux.org/alpine/v3.20/main"
WOLFI_URL = "https://packages.wolfi.dev/os"
CREATED = "2024-06-01T00:00:00Z"

MUSL1 = ApkSpec("musl", "1.2.5-r0", files={
    "lib/ld-musl-x86_64.so.1": ApkFile(b"musl 1\n", 0o755),
    "lib/libc.musl-x86_64.so.1": ApkSymlink("ld-musl-x86_64.so.1")},
    provides=["so:libc.musl-x86_64.so.1=1"])
MUSL2 = MUSL1.with_(version="1.2.5-r1", files={
    "lib/ld-musl-x86_64.so.1": ApkFile(b"musl 2\n", 0o755),
    "lib/libc.musl-x86_64.so.1": ApkSymlink("ld-musl-x86_64.so.1")})
HELLO1 = ApkSpec("hello", "1.0-r0", files={
    "usr/bin/hello": ApkFile(b"hello 1\n", 0o755), "usr/share/hello/old.txt": b"old\n",
    "etc/hello.conf": b"a=1\n"}, depends=["so:libc.musl-x86_64.so.1"],
    scripts={"post-upgrade": b"#!/bin/sh\necho upgraded > /var/ran\n"})
HELLO2 = HELLO1.with_(version="1.1-r0", files={
    "usr/bin/hello": ApkFile(b"hello 2\n", 0o755), "usr/share/hello/new.txt": b"new\n",
    "etc/hello.conf": b"a=2\n"}, depends=["so:libc.musl-x86_64.so.1", "so:libnew.so.1"])
HELLO3 = HELLO2.with_(version="1.2-r0", files={
    "usr/bin/hello": ApkFile(b"hello 3\n", 0o755), "usr/share/hello/new.txt": b"newer\n",
    "etc/hello.conf": b"a=2\n"}, scripts={})
LIBNEW = ApkSpec("libnew", "1.0-r0", files={"usr/lib/libnew.so.1": b"new lib\n"},
                 provides=["so:libnew.so.1=1"])
ZLIB = ApkSpec("zlib", "1.3.1-r0", files={"usr/lib/libz.so.1": b"zlib\n"},
               provides=["so:libz.so.1=1"])
V1 = [MUSL1, HELLO1, ZLIB]
V2 = [MUSL1, MUSL2, HELLO1, HELLO2, LIBNEW, ZLIB]


@dataclass
class Scene:
    """One repository (``V2`` published, signed with ``key``) and images made from ``V1``."""

    tmp: Path
    server: ApkRepoServer
    key: ApkKey
    flavor: str = "alpine"
    upstream: str = ALPINE_URL
    sign: str = "sha1"

    @property
    def layout(self) -> Path:
        return self.tmp / "layout"

    @property
    def repo_dir(self) -> Path:
        return self.server.root / "main" / "x86_64"

    def publish(self, packages: list[ApkSpec], **options: Any) -> None:
        options.setdefault("sign", self.sign)
        options.setdefault("package_sign", self.sign)
        self.server.publish(packages, self.key, path="main", **options)

    def v1(self) -> list[Path]:
        return [build_apk(p, self.key, self.tmp / "v1", sign=self.sign) for p in V1]

    def image(self, tag: str, **kw: Any) -> str:
        image = apk_image(self.v1(), [self.upstream], self.key, flavor=self.flavor, **kw)
        return write_oci(image, self.layout, tag)

    def image_from(self, entries: list[Entry], tag: str) -> str:
        by_path = {e.path: e for e in entries}  # later entries win
        return write_oci(make_image(list(by_path.values())), self.layout, tag)

    def options(self, **kw: Any) -> PatchOptions:
        # The fixture's /bin/sh is a stub that cannot run scripts: no sandbox by default
        # (the scripts are then reported as not run).
        base: dict[str, Any] = dict(cache_dir=self.tmp / "cache", created=CREATED,
                                    mirrors={self.upstream: self.server.sub("main")},
                                    sandbox="none")
        base.update(kw)
        return PatchOptions(**base)

    def patch(self, ref: str, tag: str, **kw: Any) -> PatchResult:
        """``suture patch`` through the library: ``ref`` to this layout's ``tag``."""
        return patch(parse_reference(ref), parse_reference(f"oci:{self.layout}:{tag}"),
                     self.options(**kw))


@pytest.fixture
def alpine(tmp_path: Path, apk_repo_server: ApkRepoServer, apk_keys: ApkKeys) -> Scene:
    scene = Scene(tmp_path, apk_repo_server, apk_keys.good)
    scene.publish(V2)
    return scene


def _image(layout: Path, tag: str) -> Image:
    image = open_artifact(f"oci:{layout}:{tag}")
    assert isinstance(image, Image)
    return image


def _db(image: Image) -> dict[str, InstalledPackage]:
    found = read_files(image, ["lib/apk/db/installed"])
    return {p.name: p for p in parse_installed(found["lib/apk/db/installed"].data or b"")}


def _versions(image: Image) -> dict[str, str]:
    return {n: p.version for n, p in _db(image).items()}


def _contents(image: Image, *paths: str) -> dict[str, bytes | None]:
    found = read_files(image, paths)
    return {p: (found[p].data if p in found else None) for p in paths}


def _last_layer_names(image: Image) -> set[str]:
    with image.layers[-1].open_tar() as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        return {m.name.rstrip("/") for m in tar}


def _audit(image: Image) -> None:
    """What ``apk audit`` compares: every file the database lists is on disk with its
    ``Z:`` (a symlink's is the checksum of its target; parent symlinks are followed)."""
    db = _db(image)
    paths = [p for pkg in db.values() for p, _r in pkg.files()]
    _found, links = scan_files(image, lambda p: False)
    real = {p: resolve_links(p, links.get, follow_last=False) for p in paths}
    found = read_files(image, [r for r in real.values() if r not in links])
    for pkg in db.values():
        for path, record in pkg.files():
            where = real[path]
            if where in links:
                assert record.checksum == q1(links[where].encode()), path
            else:
                assert where in found, path
                assert record.checksum == q1(found[where].data or b""), path


def _ok(result: PatchResult) -> dict[str, Any]:
    (platform,) = result.to_json()["platforms"]
    assert platform["status"] == "patched", platform["message"]
    return dict(platform)


def _package_requests(scene: Scene) -> list[str]:
    return sorted(r.path for r in scene.server.requests if r.path.endswith(".apk"))


# --------------------------------------------------------------------------- patching


def test_alpine_update_all(alpine: Scene) -> None:
    ref = alpine.image("v1")
    platform = _ok(alpine.patch(ref, "v1-patched"))
    image = _image(alpine.layout, "v1-patched")
    assert _versions(image) == {"hello": "1.1-r0", "libnew": "1.0-r0", "musl": "1.2.5-r1",
                                "zlib": "1.3.1-r0"}
    assert _contents(image, "usr/bin/hello", "usr/share/hello/new.txt",
                     "usr/share/hello/old.txt", "etc/hello.conf", "lib/ld-musl-x86_64.so.1",
                     "usr/lib/libnew.so.1") == {
        "usr/bin/hello": b"hello 2\n", "usr/share/hello/new.txt": b"new\n",
        "usr/share/hello/old.txt": None, "etc/hello.conf": b"a=2\n",
        "lib/ld-musl-x86_64.so.1": b"musl 2\n", "usr/lib/libnew.so.1": b"new lib\n"}
    names = _last_layer_names(image)
    assert "usr/share/hello/.wh.old.txt" in names
    assert {"lib/apk/db/installed", "lib/apk/db/scripts.tar", "lib/apk/db/triggers"} <= names
    _audit(image)
    updates = {u["name"]: u for u in platform["updates"]}
    assert updates["hello"] == {"name": "hello", "type": "apk", "from": "1.0-r0",
                                "to": "1.1-r0", "vulnerabilities": [], "reason": "update-all"}
    assert updates["libnew"]["from"] is None and updates["libnew"]["reason"] == "dependency"
    # Scripts are reported, never skipped silently.
    assert platform["scripts"] == {"ran": [], "notRun": [
        {"script": "hello post-upgrade 1.1-r0 1.0-r0", "reason": "scripts disabled"}]}
    assert _package_requests(alpine) == ["/main/x86_64/hello-1.1-r0.apk",
                                         "/main/x86_64/libnew-1.0-r0.apk",
                                         "/main/x86_64/musl-1.2.5-r1.apk"]


def test_a_config_file_the_user_changed_is_kept(alpine: Scene) -> None:
    entries = [e if e.path != "etc/hello.conf" else Entry.file(e.path, b"a=mine\n")
               for e in apk_rootfs_entries(alpine.v1(), [ALPINE_URL], alpine.key)]
    ref = alpine.image_from(entries, "v1")
    platform = _ok(alpine.patch(ref, "patched"))
    # The user is told, in the result's notes (the CLI prints them too).
    assert "hello: /etc/hello.conf was changed in the image: kept, the new version is " \
        "/etc/hello.conf.apk-new" in platform["notes"]
    image = _image(alpine.layout, "patched")
    assert _contents(image, "etc/hello.conf", "etc/hello.conf.apk-new") == {
        "etc/hello.conf": b"a=mine\n", "etc/hello.conf.apk-new": b"a=2\n"}
    record = dict(_db(image)["hello"].files())["etc/hello.conf"]
    assert record.checksum == q1(b"a=2\n")  # as apk records it: apk audit shows the change


def test_same_input_same_digest_and_the_cache_serves_offline(alpine: Scene) -> None:
    ref = alpine.image("v1")
    first = alpine.patch(ref, "a").target_digest
    second = alpine.patch(ref, "b", offline=True).target_digest
    assert first is not None and first == second
    assert len(_package_requests(alpine)) == 3  # downloaded once


def test_offline_without_cache_says_what_is_missing(alpine: Scene) -> None:
    ref = alpine.image("v1")
    _refused(alpine, ref, match="offline: APKINDEX.tar.gz", offline=True)


def test_repatching_keeps_one_patch_layer(alpine: Scene) -> None:
    ref = alpine.image("v1")
    _ok(alpine.patch(ref, "p1"))
    base = _image(alpine.layout, "v1")
    alpine.publish([*V2, HELLO3])
    _ok(alpine.patch(f"oci:{alpine.layout}:p1", "p2"))
    image = _image(alpine.layout, "p2")
    assert len(image.layers) == len(base.layers) + 1
    assert image.labels[BASE_LAYERS_KEY] == str(len(base.layers))
    assert _versions(image)["hello"] == "1.2-r0"
    assert _contents(image, "usr/bin/hello", "usr/share/hello/old.txt") == {
        "usr/bin/hello": b"hello 3\n", "usr/share/hello/old.txt": None}
    _audit(image)


def test_wolfi_merged_usr_sha256_signatures(tmp_path: Path, apk_repo_server: ApkRepoServer,
                                            apk_keys: ApkKeys) -> None:
    scene = Scene(tmp_path, apk_repo_server, apk_keys.good, "wolfi", WOLFI_URL, "sha256")
    scene.publish(V2)
    entries = []
    for e in apk_rootfs_entries(scene.v1(), [WOLFI_URL], scene.key, flavor="wolfi"):
        if e.path == "lib":
            continue
        if e.path.startswith("lib/"):
            e = Entry(**{**e.__dict__, "path": "usr/" + e.path})
        entries.append(e)
    entries.append(Entry("lib", SYMLINK, 0o777, linkname="usr/lib"))
    # The keys as the alpine-keys package ships them: symlinks into /usr/share/apk/keys.
    key_path = f"etc/apk/keys/{scene.key.pub_name}"
    entries = [e for e in entries if e.path != key_path] + [
        Entry.file(f"usr/share/apk/keys/x86_64/{scene.key.pub_name}", scene.key.public_pem),
        Entry(key_path, SYMLINK, 0o777,
              linkname=f"../../../usr/share/apk/keys/x86_64/{scene.key.pub_name}")]
    ref = scene.image_from(entries, "v1")
    _ok(scene.patch(ref, "patched"))
    image = _image(scene.layout, "patched")
    assert _versions(image)["musl"] == "1.2.5-r1"
    names = _last_layer_names(image)
    assert "usr/lib/ld-musl-x86_64.so.1" in names and "lib/ld-musl-x86_64.so.1" not in names
    assert "usr/lib/apk/db/installed" in names and "lib" not in names
    assert _contents(image, "lib/ld-musl-x86_64.so.1") == {
        "lib/ld-musl-x86_64.so.1": b"musl 2\n"}
    _audit(image)


def test_distroless_without_apk_or_shell(tmp_path: Path, apk_repo_server: ApkRepoServer,
                                         apk_keys: ApkKeys) -> None:
    scene = Scene(tmp_path, apk_repo_server, apk_keys.good, "distroless")
    scene.publish(V2)
    ref = scene.image("v1")
    platform = _ok(scene.patch(ref, "patched", sandbox="auto"))
    image = _image(scene.layout, "patched")
    assert _versions(image)["hello"] == "1.1-r0"
    assert _contents(image, "sbin/apk", "bin/sh") == {"sbin/apk": None, "bin/sh": None}
    (not_run,) = platform["scripts"]["notRun"]
    assert not_run["script"] == "hello post-upgrade 1.1-r0 1.0-r0"
    assert not_run["reason"] == "no /bin/sh in the image" or "sandbox" in not_run["reason"]


def test_chainguard_report_family(tmp_path: Path, apk_repo_server: ApkRepoServer,
                                  apk_keys: ApkKeys) -> None:
    scene = Scene(tmp_path, apk_repo_server, apk_keys.good, "chainguard", WOLFI_URL, "sha256")
    scene.publish(V2)
    ref = scene.image("v1")
    platform = _ok(scene.patch(ref, "patched"))
    assert platform["os"] == {"family": "chainguard", "version": "20230214"}


def test_multi_platform_index(alpine: Scene) -> None:
    arm = [spec.with_(arch="aarch64") for spec in V2]
    alpine.publish(arm, arch="aarch64")
    images = [apk_image(alpine.v1(), [ALPINE_URL], alpine.key),
              apk_image([build_apk(p.with_(arch="aarch64"), alpine.key, alpine.tmp / "arm")
                         for p in V1], [ALPINE_URL], alpine.key, arch="aarch64")]
    ref = f"oci:{alpine.layout}:multi"
    write_artifact(make_index(*images), ref)
    result = alpine.patch(ref, "multi-patched")
    doc = result.to_json()
    assert [(p["platform"], p["status"]) for p in doc["platforms"]] == [
        ("linux/amd64", "patched"), ("linux/arm64/v8", "patched")]
    index = open_artifact(f"oci:{alpine.layout}:multi-patched")
    assert isinstance(index, ImageIndex) and result.target_digest == index.digest
    for desc in index.image_descriptors():
        child = index.child(desc)
        assert isinstance(child, Image)
        assert _versions(child)["hello"] == "1.1-r0"
    assert "/main/aarch64/hello-1.1-r0.apk" in _package_requests(alpine)


def _host_shell() -> list[Entry]:
    """The host's dash and the C library it needs, so scripts can run in the sandbox."""
    out = [Entry("bin", DIR, 0o755), Entry("lib64", DIR, 0o755), Entry("var", DIR, 0o755),
           Entry("lib/x86_64-linux-gnu", DIR, 0o755)]
    for src, dest in (("/usr/bin/dash", "bin/sh"),
                      ("/lib/x86_64-linux-gnu/libc.so.6", "lib/x86_64-linux-gnu/libc.so.6"),
                      ("/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2")):
        out.append(Entry.file(dest, Path(src).resolve().read_bytes(), 0o755))
    return out


def test_scripts_run_in_the_sandbox(alpine: Scene) -> None:
    from suture.patch.sandbox import host_architecture
    from suture.patch.sandbox import probe_bwrap as _probe_bwrap

    if host_architecture() != "amd64" or _probe_bwrap() is not None \
            or not Path("/usr/bin/dash").exists():
        pytest.skip("needs bubblewrap and dash on an amd64 host")
    entries = [e for e in apk_rootfs_entries(alpine.v1(), [ALPINE_URL], alpine.key)
               if e.path != "bin/sh"] + _host_shell()
    ref = alpine.image_from(entries, "v1")
    platform = _ok(alpine.patch(ref, "patched", sandbox="auto"))
    assert platform["scripts"] == {"ran": ["hello post-upgrade 1.1-r0 1.0-r0"], "notRun": []}
    image = _image(alpine.layout, "patched")
    assert _contents(image, "var/ran") == {"var/ran": b"upgraded\n"}
    assert not any(n.startswith("lib/apk/exec") for n in _last_layer_names(image))


def test_report_driven_cli_with_result_and_vex(alpine: Scene) -> None:
    ref = alpine.image("v1")
    report = alpine.tmp / "trivy.json"
    report.write_text(json.dumps(trivy_report("alpine", "3.20.3", [
        ("CVE-2024-0001", "musl", "1.2.5-r0", "1.2.5-r1"),
        ("CVE-2024-0002", "zlib", "1.3.1-r0", "")])))
    out, vex = alpine.tmp / "result.json", alpine.tmp / "vex.json"
    proc = suture("patch", "-i", ref, "-t", "fixed", "-r", str(report), "--result", str(out),
                  "-o", str(vex), "--cache-dir", str(alpine.tmp / "cache"), "--sandbox", "none",
                  "--mirror", f"{ALPINE_URL}={alpine.server.sub('main')}",
                  "--progress", "quiet")
    assert proc.returncode == 0, proc.stderr
    (platform,) = json.loads(out.read_text())["platforms"]
    assert [(u["name"], u["type"], u["to"], u["vulnerabilities"]) for u in
            platform["updates"]] == [("musl", "apk", "1.2.5-r1", ["CVE-2024-0001"])]
    assert [(s["name"], s["reason"]) for s in platform["skipped"]] == [("zlib", "unfixed")]
    (statement,) = json.loads(vex.read_text())["statements"]
    assert statement["vulnerability"]["name"] == "CVE-2024-0001"
    subs = [s["@id"] for p in statement["products"] for s in p["subcomponents"]]
    assert subs == ["pkg:apk/alpine/musl@1.2.5-r1?arch=x86_64"]
    image = _image(alpine.layout, "fixed")
    assert _versions(image) == {"hello": "1.0-r0", "musl": "1.2.5-r1", "zlib": "1.3.1-r0"}


# --------------------------------------------------------------------------- refusals


def _refused(scene: Scene, ref: str, *, match: str, **kw: Any) -> str:
    before = layout_state(scene.layout)
    result = scene.patch(ref, "bad", **kw)
    (platform,) = result.to_json()["platforms"]
    assert platform["status"] == "error"
    assert match in platform["message"], platform["message"]
    assert result.target_digest is None
    assert layout_state(scene.layout) == before  # nothing written
    return str(platform["message"])


def test_tampered_index(alpine: Scene) -> None:
    ref = alpine.image("v1")
    alpine.publish(V2, tamper_index=True)
    _refused(alpine, ref, match="the signature does not verify")


def test_unsigned_index(alpine: Scene) -> None:
    ref = alpine.image("v1")
    alpine.publish(V2, sign=None)
    _refused(alpine, ref, match="APKINDEX.tar.gz is not signed")


def test_index_signed_by_a_key_the_image_does_not_trust(alpine: Scene,
                                                        apk_keys: ApkKeys) -> None:
    ref = alpine.image("v1")
    alpine.publish(V2, signer=apk_keys.other)
    _refused(alpine, ref, match=f"{apk_keys.other.pub_name}, which is not a trusted key")


def test_index_signed_by_another_key_under_a_trusted_name(alpine: Scene,
                                                          apk_keys: ApkKeys) -> None:
    ref = alpine.image("v1")
    alpine.publish(V2, signer=apk_keys.other, sign_name=alpine.key.pub_name)
    _refused(alpine, ref, match="the signature does not verify")


def test_user_keyring_trusts_another_key(alpine: Scene, apk_keys: ApkKeys) -> None:
    ref = alpine.image("v1")
    alpine.publish(V2, signer=apk_keys.other)
    _ok(alpine.patch(ref, "ok", keyrings=(apk_keys.other.public_pem,)))


def test_package_substituted_after_indexing(alpine: Scene) -> None:
    ref = alpine.image("v1")
    alpine.publish([MUSL2, HELLO2, LIBNEW, ZLIB], mismatch=["hello"])
    message = _refused(alpine, ref, match="hello-1.1-r0.apk")
    assert "package checksum against the index" in message or "size mismatch" in message


def test_unsatisfiable_dependency(alpine: Scene) -> None:
    ref = alpine.image("v1")
    alpine.publish([MUSL1, HELLO2.with_(depends=["so:libgone.so.9"]), ZLIB])
    _refused(alpine, ref, match="hello: hello 1.1-r0 depends on so:libgone.so.9")


def test_corrupt_installed_database(alpine: Scene) -> None:
    entries = [e if not e.path.endswith("apk/db/installed") else
               Entry.file(e.path, b"P:hello\nV:1.0-r0\nR:orphan-file\n\n")
               for e in apk_rootfs_entries(alpine.v1(), [ALPINE_URL], alpine.key)]
    ref = alpine.image_from(entries, "v1")
    _refused(alpine, ref, match="/lib/apk/db/installed: line 3: R: before any F:")


def test_v3_repository_is_refused_clearly(alpine: Scene) -> None:
    ref = alpine.image("v1")
    (alpine.repo_dir / "APKINDEX.tar.gz").write_bytes(V3_INDEX)
    _refused(alpine, ref, match="apk v3 (ADB) index format is not supported yet")


def test_version_order_per_image() -> None:
    """Which apk-tools order an image's versions follow: its installed apk-tools says;
    without one (distroless), Alpine by its release, Wolfi and Chainguard as apk-tools 2."""
    from suture.distro.detect import OSRelease
    from suture.patch.apk import image_apk2

    def db(*packages: tuple[str, str]) -> list[InstalledPackage]:
        return parse_installed("".join(f"C:{q1(n.encode())}\nP:{n}\nV:{v}\nA:x86_64\n\n"
                                       for n, v in packages).encode())

    def rel(os_id: str, version_id: str) -> OSRelease:
        return OSRelease(os_id, version_id, "", "")

    musl = ("musl", "1.2.5-r0")
    assert image_apk2(db(musl, ("apk-tools", "2.14.10-r0")), rel("alpine", "3.23.0"))
    assert not image_apk2(db(musl, ("apk-tools", "3.0.3-r1")), rel("alpine", "3.22.0"))
    assert not image_apk2(db(("apk-tools", "3.0.1-r0")), rel("wolfi", "20230201"))
    assert image_apk2(db(("apk-tools", "2.14.9-r1")), rel("chainguard", "20230214"))
    assert image_apk2(db(musl), rel("alpine", "3.22.2"))
    assert not image_apk2(db(musl), rel("alpine", "3.23.1"))
    assert image_apk2(db(musl), rel("wolfi", "20230201"))
    assert image_apk2(db(musl), rel("chainguard", "20230214"))
    assert image_apk2(db(musl), None)  # no os-release, no apk-tools: apk-tools 2 as Wolfi
    assert image_apk2(db(("apk-tools-static", "3.0.1-r0"), musl), rel("alpine", "3.21.0"))
