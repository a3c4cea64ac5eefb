"""`suture patch` on image indexes whose platforms are built from real Debian amd64, arm64
and armhf packages (tests/fixtures/multiarch.py), patched on this host.

Packages are unpacked and the database written natively for every architecture; the
maintainer scripts of a foreign platform run under emulation (a binfmt_misc handler
with the F flag, as scripts/setup-binfmt registers qemu-user-static's), or are
reported as not run, with what is missing, when the host has none.

Checked against outcomes: versions in each platform's written database, the ELF
machine of every file in each patch layer, the maintainer scripts each platform ran or
reported, the ``ld.so.cache`` their ``ldconfig`` trigger wrote (whose flags say which
architecture's ldconfig made it), the environment scripts get, the children and
annotations of the written index byte for byte, the real dpkg reading the patched
foreign-architecture roots, the patched programs running, and skopeo reading the
pushed index.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from suture.cli import main as cli_main
from suture.devtools.debs_image import main as debs_image_main
from suture.distro.dpkg.control import parse_md5sums, parse_status
from suture.distro.scripts import ScriptJob
from suture.oci.fs import read_files
from suture.oci.image import Image, ImageIndex
from suture.oci.layer import Entry
from suture.oci.model import Platform
from suture.oci.mutate import append_layers
from suture.patch import emulation
from suture.patch.emulation import emulation_note, emulator_for, no_emulator_reason
from suture.patch.scripts import run_scripts
from suture.transports import open_artifact, write_artifact
from tests.fixtures.debian import CACHE
from tests.fixtures.images import layer_from
from tests.fixtures.multiarch import (
    ATTESTATION_TYPE,
    ELF_MACHINE,
    LD_CACHE_FLAGS,
    PACKAGES,
    PLATFORMS,
    Multiarch,
    elf_machine,
    installed_versions,
    ld_cache_flags,
    raw_index,
    top_layer_files,
)
from tests.fixtures.oci_tools import Runner
from tests.test_vex import validate_openvex

pytestmark = [pytest.mark.network, pytest.mark.tools]

HOST = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64",
        "arm64": "arm64"}.get(platform.machine().lower(), platform.machine().lower())
# Debian architecture names by OCI architecture.
DEB_ARCH = {Platform.parse(p).architecture: arch for arch, p in PLATFORMS.items()}
ALIASED = ("bin/", "sbin/", "lib/", "lib64/")  # symlinks into usr/ in these images
SANDBOXED = shutil.which("bwrap") is not None or os.geteuid() == 0
EMULATION_NOTE = "maintainer scripts ran under emulation"


def suture(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "suture", *args], capture_output=True,
                          text=True, timeout=900)


def _patch(ref: str, tmp: Path, *extra: str) -> tuple[dict[str, Any], str]:
    """Run ``suture patch``; the result JSON and the CLI's stderr."""
    result = tmp / f"result-{len(list(tmp.glob('result-*')))}.json"
    proc = suture("patch", "-i", ref, "--result", str(result), *extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc: dict[str, Any] = json.loads(result.read_text())
    return doc, proc.stderr


def _by_platform(index: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for desc in index["manifests"]:
        plat = desc["platform"]
        key = "/".join(p for p in (plat["os"], plat["architecture"], plat.get("variant")) if p)
        assert key not in out
        out[key] = desc
    return out


def _child(ref: str, platform_text: str) -> Image:
    index = open_artifact(ref)
    assert isinstance(index, ImageIndex)
    return index.select(Platform.parse(platform_text))


def _check_patched(patched: Image, base: Image, outcome: dict[str, Any]) -> None:
    """The database has the new versions (and nothing else changed), every file the
    upgraded packages' new md5sums list is in the patch layer with that content, written
    through the merged-/usr symlinks, and every ELF file of the layer is for the image's
    own architecture."""
    assert outcome["status"] == "patched", outcome
    assert patched.platform is not None
    arch = DEB_ARCH[patched.platform.architecture]
    updates = outcome["updates"]
    assert updates, f"{outcome['platform']}: bookworm-security/-updates upgrade nothing here"
    before, after = installed_versions(base), installed_versions(patched)
    changed = {u["name"] for u in updates}
    for u in updates:
        assert before[u["name"]] == u["from"] != u["to"] == after[u["name"]], u
    assert {n: v for n, v in after.items() if n not in changed} == {
        n: v for n, v in before.items() if n not in changed}
    layer = top_layer_files(patched)
    assert not [p for p in layer if p.startswith(ALIASED)], "wrote over a /usr symlink"
    status = layer["var/lib/dpkg/status"]
    assert {p.name: p.version for p in parse_status(status)} == after
    listed_elves = []
    for name in changed:
        sums = layer.get(f"var/lib/dpkg/info/{name}:{arch}.md5sums") or \
            layer[f"var/lib/dpkg/info/{name}.md5sums"]
        for path, digest in parse_md5sums(sums).items():
            where = path if path in layer else f"usr/{path}"
            assert hashlib.md5(layer[where]).hexdigest() == digest, where
            if elf_machine(layer[where]) is not None:
                listed_elves.append(where)
    assert listed_elves, f"no ELF file among the upgraded files of {sorted(changed)}"
    machines = {p: elf_machine(d) for p, d in layer.items() if elf_machine(d) is not None}
    assert set(machines.values()) == {ELF_MACHINE[arch]}, machines


def _dpkg_clean(image: Image, tmp: Path, umoci: Runner) -> Path:
    """Unpack ``image`` with umoci; the real dpkg's --verify and --audit are clean."""
    assert image.platform is not None
    name = image.platform.architecture
    write_artifact(image, f"oci:{tmp}/single:{name}")
    umoci("unpack", "--image", f"{tmp}/single:{name}", tmp / f"bundle-{name}")
    root = tmp / f"bundle-{name}" / "rootfs"
    for check in ("--verify", "--audit"):
        proc = subprocess.run(["dpkg", f"--root={root}", check], capture_output=True,
                              text=True)
        assert proc.returncode == 0 and proc.stdout == "", (check, proc.stdout + proc.stderr)
    return root


def _needs_emulation(*architectures: str) -> None:
    """Skip unless scripts can run here, for ``architectures`` too."""
    if not SANDBOXED:
        pytest.skip("no sandbox for maintainer scripts (bubblewrap, or root for chroot)")
    for arch in architectures:
        if arch != HOST and emulator_for(arch) is None:
            pytest.skip(f"{arch} programs cannot run here: {no_emulator_reason(arch)} "
                        "(scripts/setup-binfmt registers it)")


def _ld_cache(image: Image) -> dict[str, int]:
    """The ``ld.so.cache`` the patch layer of ``image`` holds: library path -> flags."""
    return ld_cache_flags(top_layer_files(image)["etc/ld.so.cache"])


def test_index_patched_per_platform_scripts_emulated(tmp_path: Path, multiarch: Multiarch,
                                                     umoci_cli: Runner) -> None:
    _needs_emulation("amd64", "arm64")
    dest = f"oci:{tmp_path}/out:patched"
    vex_file = tmp_path / "vex.json"
    doc, _stderr = _patch(multiarch.two, tmp_path, "--dest", dest, "-o", str(vex_file))
    outcomes = {o["platform"]: o for o in doc["platforms"]}
    assert sorted(outcomes) == ["linux/amd64", "linux/arm64/v8"]  # not the attestation
    assert len(doc["platforms"]) == 2
    written = open_artifact(dest)
    assert isinstance(written, ImageIndex)
    assert written.digest == doc["target"]["digest"]
    source, out = raw_index(multiarch.two), raw_index(dest)
    assert out["annotations"] == source["annotations"]
    src_children, out_children = _by_platform(source), _by_platform(out)
    # The attestation describes the amd64 image as built (its SBOM, its provenance):
    # once that image is patched it describes nothing in the index, and is left out.
    attestation = src_children["unknown/unknown"]
    assert attestation["annotations"]["vnd.docker.reference.type"] == ATTESTATION_TYPE
    assert attestation["annotations"]["vnd.docker.reference.digest"] == \
        src_children["linux/amd64"]["digest"]
    assert list(out_children) == [k for k in src_children if k != "unknown/unknown"]
    for key, outcome in outcomes.items():
        assert outcome["sourceDigest"] == src_children[key]["digest"]
        assert out_children[key]["digest"] == outcome["digest"] != outcome["sourceDigest"]
        arch = DEB_ARCH[Platform.parse(key).architecture]
        _check_patched(_child(dest, key), multiarch.images[arch], outcome)

    # The VEX (update-all: CVEs from the Debian changelogs) is valid, names the patched
    # image of each platform and the index as products, with each platform's packages.
    vex = json.loads(vex_file.read_text())
    validate_openvex(vex)
    cves = {v for o in outcomes.values() for u in o["updates"] for v in u["vulnerabilities"]}
    assert cves, "no upgraded package's changelog names a CVE"
    assert {s["vulnerability"]["name"] for s in vex["statements"]} == cves
    products = {p["@id"] for s in vex["statements"] for p in s["products"]}
    digests = {o["digest"] for o in outcomes.values()} | {doc["target"]["digest"]}
    assert {p.split("@", 1)[1].split("?", 1)[0].replace("%3A", ":") for p in products} \
        == digests
    for statement in vex["statements"]:
        for product in statement["products"]:
            for sub in product["subcomponents"]:
                assert sub["@id"].startswith("pkg:deb/debian/"), sub

    # Every platform ran the same maintainer scripts, the foreign one under emulation (its
    # note says how); the ldconfig trigger of each wrote an ld.so.cache of its own
    # architecture's libraries, the upgraded ones among them.
    ran = {key: o["scripts"]["ran"] for key, o in outcomes.items()}
    assert ran["linux/amd64"] == ran["linux/arm64/v8"], ran
    assert "libc-bin triggered ldconfig" in ran["linux/amd64"], ran
    for key, outcome in outcomes.items():
        arch = Platform.parse(key).architecture
        assert outcome["scripts"]["notRun"] == [], outcome["scripts"]
        notes = [n for n in outcome["notes"] if n.startswith(EMULATION_NOTE)]
        if arch == HOST:
            assert notes == []
        else:
            assert notes == [emulation_note(arch, HOST)]
            assert "binfmt_misc qemu-aarch64: " in notes[0]
        cache = _ld_cache(_child(dest, key))
        assert set(cache.values()) == {LD_CACHE_FLAGS[DEB_ARCH[arch]]}, cache
        names = {path.rpartition("/")[2] for path in cache}
        assert {"libc.so.6", "libssl.so.3", "libcrypto.so.3"} <= names, names

    # The real dpkg reads both patched roots and finds them whole; as root, the upgraded
    # openssl of each runs in a chroot of its root (arm64's under emulation).
    roots = {key: _dpkg_clean(_child(dest, key), tmp_path, umoci_cli) for key in outcomes}
    if os.geteuid() == 0:
        for key, root in roots.items():
            run = subprocess.run(["chroot", str(root), "openssl", "version"],
                                 capture_output=True, text=True, check=True)
            new = installed_versions(_child(dest, key))["openssl"]
            assert run.stdout.startswith(f"OpenSSL {new.split('-')[0]} "), (key, run.stdout)


def test_foreign_scripts_reported_without_emulation(tmp_path: Path, multiarch: Multiarch,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]
                                                    ) -> None:
    """With no binfmt_misc where suture looks, the arm64 platform's scripts are each
    reported with what is missing (and the CLI warns); the amd64 ones still run."""
    _needs_emulation("amd64")
    nowhere = tmp_path / "no-binfmt_misc"
    monkeypatch.setattr(emulation, "BINFMT_MISC", nowhere)
    result = tmp_path / "result.json"
    dest = f"oci:{tmp_path}/out:patched"
    code = cli_main(["patch", "-i", multiarch.two, "--dest", dest, "--result", str(result)])
    stderr = capsys.readouterr().err
    assert code == 0, stderr
    outcomes = {o["platform"]: o for o in json.loads(result.read_text())["platforms"]}
    native, foreign = outcomes["linux/amd64"], outcomes["linux/arm64/v8"]
    assert "libc-bin triggered ldconfig" in native["scripts"]["ran"]
    assert native["scripts"]["notRun"] == []
    assert foreign["scripts"]["ran"] == []
    assert [item["script"] for item in foreign["scripts"]["notRun"]] == \
        native["scripts"]["ran"]
    reason = (f"image architecture arm64 differs from host {HOST}: no binfmt_misc handler "
              f"with the F flag for arm64 (binfmt_misc is not mounted or not enabled at "
              f"{nowhere}); install qemu-user-static")
    for item in foreign["scripts"]["notRun"]:
        assert item["reason"] == reason
        assert f"linux/arm64/v8: not run: {item['script']}" in stderr
    assert not [n for o in outcomes.values() for n in o["notes"] if EMULATION_NOTE in n]
    # Nothing ran for arm64: no ld.so.cache in its layer (the image had none); amd64's
    # ldconfig wrote one.
    assert "etc/ld.so.cache" not in top_layer_files(_child(dest, "linux/arm64/v8"))
    assert set(_ld_cache(_child(dest, "linux/amd64")).values()) == {LD_CACHE_FLAGS["amd64"]}


# The images have no coreutils: the shell's builtins, and the image's own openssl, whose
# `version -p` names the platform it was built for.
ENV_SCRIPT = b"""#!/bin/sh
set -e
echo "$DPKG_MAINTSCRIPT_PACKAGE $DPKG_MAINTSCRIPT_NAME $DPKG_MAINTSCRIPT_ARCH $*" >> /var/lib/env
openssl version -p >> /var/lib/env
"""


def test_emulated_scripts_get_the_image_architecture(tmp_path: Path,
                                                     multiarch: Multiarch) -> None:
    """An arm64 image whose installed openssl and libssl3 (Multi-Arch: same) have a
    ``prerm`` recording how it was called: patched here, the dpkg engine runs them
    (``prerm upgrade NEW``) under emulation with dpkg's environment naming the
    packages' own architecture, and they run the image's own arm64 programs."""
    _needs_emulation("arm64")
    base = multiarch.images["arm64"]
    extra = [Entry.file(f"var/lib/dpkg/info/{name}.prerm", ENV_SCRIPT, mode=0o755)
             for name in ("openssl", "libssl3:arm64")]
    ref = f"oci:{tmp_path}/in:arm64"
    write_artifact(append_layers(base, [layer_from(extra)]), ref)
    dest = f"oci:{tmp_path}/out:arm64"
    doc, _ = _patch(ref, tmp_path, "--dest", dest)
    [outcome] = doc["platforms"]
    new = {u["name"]: u["to"] for u in outcome["updates"]}
    assert {"openssl", "libssl3"} <= set(new), new
    ran = outcome["scripts"]["ran"]
    for name in ("openssl", "libssl3:arm64"):
        assert f"{name} prerm upgrade {new[name.partition(':')[0]]}" in ran, ran
    assert outcome["scripts"]["notRun"] == []
    assert [n for n in outcome["notes"] if n.startswith(EMULATION_NOTE)] == [
        emulation_note("arm64", HOST)]
    patched = open_artifact(dest)
    assert isinstance(patched, Image)
    lines = top_layer_files(patched)["var/lib/env"].decode().splitlines()
    assert sorted(lines) == sorted([
        f"openssl prerm arm64 upgrade {new['openssl']}", "platform: debian-arm64",
        f"libssl3 prerm arm64 upgrade {new['libssl3']}", "platform: debian-arm64"]), lines


@pytest.mark.parametrize("deb_arch", ["arm64", "armhf"])
def test_emulated_scripts_run_the_image_programs(tmp_path: Path, multiarch: Multiarch,
                                                 deb_arch: str) -> None:
    """Jobs over a foreign image run under emulation, with the environment they carry,
    and run the image's own programs (arm64 and armhf)."""
    image = multiarch.images[deb_arch]
    assert image.platform is not None
    _needs_emulation(image.platform.architecture)
    entries = [Entry.file("var/lib/dpkg/info/libssl3.postinst", ENV_SCRIPT, mode=0o755)]
    env = (("DPKG_MAINTSCRIPT_PACKAGE", "libssl3"), ("DPKG_MAINTSCRIPT_NAME", "postinst"),
           ("DPKG_MAINTSCRIPT_ARCH", deb_arch))
    jobs = [ScriptJob("libssl3", "postinst", "var/lib/dpkg/info/libssl3.postinst",
                      ("configure", "1"), env=env)]
    outcome = run_scripts(image, entries, jobs, workdir=tmp_path)
    assert outcome.not_run == [] and outcome.ran == [j.describe() for j in jobs]
    written = {e.path: e.data for e in outcome.entries if isinstance(e.data, bytes)}
    assert written == {"var/lib/env": (f"libssl3 postinst {deb_arch} configure 1\n"
                                       f"platform: debian-{deb_arch}\n").encode()}


def test_one_platform_selected_others_carried_byte_for_byte(tmp_path: Path,
                                                            multiarch: Multiarch) -> None:
    dest = f"oci:{tmp_path}/out:arm64-only"
    doc, _ = _patch(multiarch.three, tmp_path, "--platform", "linux/arm64", "--dest", dest)
    [outcome] = doc["platforms"]
    assert outcome["platform"] == "linux/arm64/v8" and outcome["status"] == "patched"
    source, out = raw_index(multiarch.three), raw_index(dest)
    assert set(out) == set(source)
    assert out["annotations"] == source["annotations"]
    assert len(out["manifests"]) == len(source["manifests"]) == 4
    for old, new in zip(source["manifests"], out["manifests"], strict=True):
        if old["platform"]["architecture"] == "arm64":
            assert new["digest"] == outcome["digest"] != old["digest"]
            assert {k: v for k, v in new.items() if k not in ("digest", "size")} == {
                k: v for k, v in old.items() if k not in ("digest", "size")}
        else:  # amd64, arm/v7 and the attestation: the very same descriptors
            assert new == old
    # The carried children are the source's bytes; the patched one reads back whole.
    layout = Path(f"{tmp_path}/out/blobs/sha256")
    for old in source["manifests"]:
        if old["platform"]["architecture"] != "arm64":
            data = (layout / old["digest"].split(":")[1]).read_bytes()
            assert "sha256:" + hashlib.sha256(data).hexdigest() == old["digest"]
    _check_patched(_child(dest, "linux/arm64"), multiarch.images["arm64"], outcome)


@pytest.mark.registry
def test_index_pushed_to_registry_and_read_back(tmp_path: Path, multiarch: Multiarch,
                                                registry: Any, skopeo_cli: Runner) -> None:
    repo = f"127.0.0.1:{registry.port}/multi/debian"
    doc, _ = _patch(multiarch.two, tmp_path, "--dest", f"docker://{repo}:12-patched")
    assert doc["target"]["reference"].endswith(f"{repo}:12-patched")
    raw = skopeo_cli("inspect", "--raw", "--tls-verify=false",
                     f"docker://{repo}:12-patched").stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == doc["target"]["digest"]
    pushed = json.loads(raw)
    children = _by_platform(pushed)
    expected = {o["platform"]: o["digest"] for o in doc["platforms"]}
    assert {k: children[k]["digest"] for k in expected} == expected
    assert sorted(children) == sorted(expected)  # the stale attestation is left out
    for key, digest in expected.items():
        child = skopeo_cli("inspect", "--raw", "--tls-verify=false",
                           f"docker://{repo}@{digest}").stdout
        assert "sha256:" + hashlib.sha256(child).hexdigest() == digest
        config = json.loads(skopeo_cli("inspect", "--config", "--raw", "--tls-verify=false",
                                       f"docker://{repo}@{digest}").stdout)
        assert config["architecture"] == Platform.parse(key).architecture
    tags = json.loads(skopeo_cli("list-tags", "--tls-verify=false", f"docker://{repo}").stdout)
    assert tags["Tags"] == ["12-patched"]  # no per-architecture tags


def test_patching_twice_gives_the_same_index(tmp_path: Path, multiarch: Multiarch) -> None:
    first, _ = _patch(multiarch.two, tmp_path, "--dest", f"oci:{tmp_path}/a:x")
    second, _ = _patch(multiarch.two, tmp_path, "--dest", f"oci:{tmp_path}/b:x")
    assert first["target"]["digest"] == second["target"]["digest"]
    assert [(o["platform"], o["digest"], o["layer"]) for o in first["platforms"]] == [
        (o["platform"], o["digest"], o["layer"]) for o in second["platforms"]]
    # The patched index is up to date: nothing to do, nothing written.
    again, _ = _patch(f"oci:{tmp_path}/a:x", tmp_path, "--dest", f"oci:{tmp_path}/c:x")
    assert again["target"] is None
    assert [o["status"] for o in again["platforms"]] == ["up-to-date", "up-to-date"]
    assert not (tmp_path / "c").exists()


# --- the images themselves -----------------------------------------------------------------

def _info_files(image: Image) -> dict[str, bytes]:
    found = read_files(image, ["var/lib/dpkg/status"], prefixes=["var/lib/dpkg/info"])
    return {p: e.data for p, e in found.items() if e.data is not None}


def test_built_database_is_what_dpkg_writes(tmp_path: Path, multiarch: Multiarch,
                                            bookworm_openssl_rootfs: Path,
                                            umoci_cli: Runner) -> None:
    """The amd64 image's database matches, stanza for stanza and file for file, what
    dpkg wrote in an mmdebstrap root for the same package versions; the real dpkg
    finds every built root (arm64 and armhf too) whole."""
    ours = _info_files(multiarch.images["amd64"])
    theirs: dict[str, bytes] = {}
    with tarfile.open(bookworm_openssl_rootfs) as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if member.isfile() and name.startswith("var/lib/dpkg/"):
                stream = tar.extractfile(member)
                assert stream is not None
                theirs[name] = stream.read()

    def stanzas(data: bytes) -> dict[str, str]:
        return {block.split("\n", 1)[0]: block
                for block in data.decode().strip().split("\n\n")}

    mine, dpkgs = stanzas(ours["var/lib/dpkg/status"]), stanzas(theirs["var/lib/dpkg/status"])
    versions = {p.name: p.version for p in parse_status(ours["var/lib/dpkg/status"])}
    theirs_versions = {p.name: p.version for p in parse_status(theirs["var/lib/dpkg/status"])}
    same = sorted(n for n in versions if theirs_versions.get(n) == versions[n])
    assert {"openssl", "libssl3", "libc6", "dash", "base-files"} <= set(same)
    for name in same:
        assert mine[f"Package: {name}"] == dpkgs[f"Package: {name}"]
        files = [p for p in ours if p.startswith((f"var/lib/dpkg/info/{name}.",
                                                   f"var/lib/dpkg/info/{name}:"))]
        assert files and {p: ours[p] for p in files} == {p: theirs.get(p) for p in files}
    assert ours["var/lib/dpkg/info/format"] == theirs["var/lib/dpkg/info/format"]
    for image in multiarch.images.values():
        _dpkg_clean(image, tmp_path, umoci_cli)


def test_debs_image_cli_builds_the_same_image(tmp_path: Path, multiarch: Multiarch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    dest = f"oci:{tmp_path}/cli:arm64"
    code = debs_image_main(["bookworm", "arm64", dest, "--cache-dir", str(CACHE / "apt"),
                            "--packages", ",".join(PACKAGES)])
    assert code == 0
    assert capsys.readouterr().out.split() == [dest, multiarch.images["arm64"].digest]
    built = open_artifact(dest)
    assert isinstance(built, Image) and str(built.platform) == "linux/arm64/v8"
