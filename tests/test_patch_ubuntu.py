"""`suture patch` on Ubuntu images built here, from a local signed archive laid out like Ubuntu's.

The archive serves ``dists/noble``, ``dists/noble-security`` and ``dists/noble-updates``
with ``main`` and ``universe`` (``pool/main/...``, ``pool/universe/...``), signed by
a throwaway key that plays the Ubuntu archive key. One image is a regular noble
image with deb822 sources; the other is "chiseled": a dpkg status file and the files,
but no apt sources, no keyrings and no shell, patched with ``--mirror`` and
``--keyring``. The real CLI runs in a subprocess; outcomes are checked.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.aptrepo import AptRepo, GpgKeys
from tests.fixtures.patchimages import (
    UBUNTU_ARCHIVE,
    Archive,
    contents,
    error_line,
    installed,
    layout_state,
    make_root,
    open_image,
    suture,
    tags,
    trivy_report,
    ubuntu_os_release,
    versions,
    write_image,
)

pytestmark = pytest.mark.tools

NOBLE = "noble"
SECURITY, UPDATES = "noble-security", "noble-updates"
OLD, FIX = "3.0.13-0ubuntu3", "3.0.13-0ubuntu3.1"
KEYRING = "usr/share/keyrings/ubuntu-archive-keyring.gpg"
UBUNTU_SOURCES = f"""\
Types: deb
URIs: {UBUNTU_ARCHIVE}/
Suites: noble noble-updates noble-security
Components: main universe
Signed-By: /{KEYRING}
"""
# What noble's own sources.list says now.
SOURCES_LIST_STUB = "# Ubuntu sources have moved to /etc/apt/sources.list.d/ubuntu.sources\n"
POSTINST_V1 = "#!/bin/sh\nexit 0\n"
POSTINST_V2 = "#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then ldconfig; fi\n"


def _archive(apt_repo: AptRepo, gpg_keys: GpgKeys, tmp: Path) -> tuple[Archive, list[Path]]:
    """libssl3t64 and openssl (source openssl, main), foo-tools (universe), tzdata (main).

    -security: openssl's two binaries at the fixed version and foo-tools;
    -updates: tzdata."""
    archive = Archive.create(apt_repo, gpg_keys.good, tmp, NOBLE, ["main", "universe"])
    src = {"Source": "openssl"}
    v1 = [
        archive.add(NOBLE, "libssl3t64", OLD, {"usr/lib/x86_64-linux-gnu/libssl.so.3":
                                               b"libssl " + OLD.encode()},
                    fields={**src, "Multi-Arch": "same"}, scripts={"postinst": POSTINST_V1}),
        archive.add(NOBLE, "openssl", OLD, {"usr/bin/openssl": b"openssl " + OLD.encode()},
                    depends=f"libssl3t64 (>= {OLD})", fields=src),
        archive.add(NOBLE, "foo-tools", "1.0-1", component="universe"),
        archive.add(NOBLE, "tzdata", "2024a-1ubuntu1"),
    ]
    archive.add(SECURITY, "libssl3t64", FIX, {"usr/lib/x86_64-linux-gnu/libssl.so.3":
                                              b"libssl " + FIX.encode()},
                fields={**src, "Multi-Arch": "same"}, scripts={"postinst": POSTINST_V2})
    archive.add(SECURITY, "openssl", FIX, {"usr/bin/openssl": b"openssl " + FIX.encode()},
                depends=f"libssl3t64 (>= {FIX})", fields=src)
    archive.add(SECURITY, "foo-tools", "1.0-1ubuntu0.1", component="universe")
    archive.add(UPDATES, "tzdata", "2024b-0ubuntu0.24.04")
    archive.publish()
    return archive, v1


def _patch(ref: str, tmp: Path, *args: str, cache: str = "cache"
           ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    out = tmp / "result.json"
    out.unlink(missing_ok=True)
    proc = suture("patch", "-i", ref, "--cache-dir", str(tmp / cache), "--result", str(out),
                  *args)
    return proc, (json.loads(out.read_text()) if out.exists() else None)


def _platform(proc: subprocess.CompletedProcess[str], doc: dict[str, Any] | None
              ) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert doc is not None
    [platform] = doc["platforms"]
    assert isinstance(platform, dict)
    return platform


def _updates(platform: dict[str, Any]) -> dict[str, tuple[str | None, str, str]]:
    return {u["name"]: (u["from"], u["to"], u["reason"]) for u in platform["updates"]}


def _fetched_debs(archive: Archive) -> list[tuple[str, str]]:
    """(component, file name) of each package downloaded."""
    paths = [p.split("/pool/", 1)[1] for p in archive.fetched("/pool/")]
    return sorted((p.split("/", 1)[0], p.rsplit("/", 1)[1]) for p in paths)


def _noble_image(archive: Archive, v1: list[Path], tmp: Path) -> str:
    root = make_root(tmp / "root", v1, ubuntu_os_release(),
                     sources={"etc/apt/sources.list": SOURCES_LIST_STUB,
                              "etc/apt/sources.list.d/ubuntu.sources": UBUNTU_SOURCES},
                     keyring=archive.key.public(), keyring_path=KEYRING)
    return write_image(root, tmp, "24.04")


def test_noble_deb822_sources_patched_from_security(apt_repo: AptRepo, gpg_keys: GpgKeys,
                                                    tmp_path: Path) -> None:
    archive, v1 = _archive(apt_repo, gpg_keys, tmp_path)
    ref = _noble_image(archive, v1, tmp_path)
    mirror = ["--mirror", f"{UBUNTU_ARCHIVE}={archive.url}", "--no-host-keyrings"]
    # The image lists all three suites: nothing is added.
    dry = suture("patch", "-i", ref, "--dry-run", "--cache-dir", str(tmp_path / "cache"),
                 *mirror)
    assert dry.returncode == 0, dry.stderr
    assert "added suites" not in dry.stdout and "host" not in dry.stdout

    platform = _platform(*_patch(ref, tmp_path, *mirror))
    assert platform["status"] == "patched"
    assert platform["os"] == {"family": "ubuntu", "version": "24.04"}
    assert _updates(platform) == {
        "libssl3t64": (OLD, FIX, "update-all"),
        "openssl": (OLD, FIX, "update-all"),
        "foo-tools": ("1.0-1", "1.0-1ubuntu0.1", "update-all"),
        "tzdata": ("2024a-1ubuntu1", "2024b-0ubuntu0.24.04", "update-all"),
    }
    # Each from its component's pool.
    assert _fetched_debs(archive) == [
        ("main", f"libssl3t64_{FIX}_amd64.deb"),
        ("main", f"openssl_{FIX}_amd64.deb"),
        ("main", "tzdata_2024b-0ubuntu0.24.04_amd64.deb"),
        ("universe", "foo-tools_1.0-1ubuntu0.1_amd64.deb"),
    ]
    out = open_image(ref + "-patched")
    db = installed(out)
    assert {n: p.version for n, p in db.items()} == {
        "libssl3t64": FIX, "openssl": FIX, "foo-tools": "1.0-1ubuntu0.1",
        "tzdata": "2024b-0ubuntu0.24.04"}
    assert all(p.paragraph["Status"] == "install ok installed" for p in db.values())
    files = contents(out, "usr/bin/openssl", "usr/lib/x86_64-linux-gnu/libssl.so.3")
    assert files == {"usr/bin/openssl": b"openssl " + FIX.encode(),
                     "usr/lib/x86_64-linux-gnu/libssl.so.3": b"libssl " + FIX.encode()}
    # The image has no /bin/sh: libssl3t64's new postinst is reported, not run, not hidden.
    assert platform["scripts"] == {"ran": [], "notRun": [
        {"script": f"libssl3t64:amd64 postinst configure {OLD}",
         "reason": "no /bin/sh in the image"}]}


def test_noble_trivy_report_brings_same_source_binaries(apt_repo: AptRepo, gpg_keys: GpgKeys,
                                                        tmp_path: Path) -> None:
    """A report naming libssl3t64 only: openssl (same source, same version) comes along as
    apt 2.x does, as a dependency; foo-tools and tzdata, not named, are left alone."""
    archive, v1 = _archive(apt_repo, gpg_keys, tmp_path)
    ref = _noble_image(archive, v1, tmp_path)
    report = tmp_path / "trivy.json"
    report.write_text(json.dumps(trivy_report(
        "ubuntu", "24.04", [("CVE-2024-5535", "libssl3t64", OLD, FIX)], artifact=ref)))
    platform = _platform(*_patch(ref, tmp_path, "-r", str(report), "--mirror",
                                 f"{UBUNTU_ARCHIVE}={archive.url}"))
    assert _updates(platform) == {"libssl3t64": (OLD, FIX, "report"),
                                  "openssl": (OLD, FIX, "dependency")}
    assert [u["vulnerabilities"] for u in platform["updates"]] == [["CVE-2024-5535"], []]
    after = versions(open_image(ref + "-patched"))
    assert (after["foo-tools"], after["tzdata"]) == ("1.0-1", "2024a-1ubuntu1")


# ---------------------------------------------------------------- chiseled


def _chiseled_image(archive: Archive, v1: list[Path], tmp: Path, *, status_d: bool = False
                    ) -> str:
    """The files and a dpkg status file (or ``status.d/``), no info/, apt, keyrings or shell."""
    root = make_root(tmp / "root", v1[:2], ubuntu_os_release())
    dpkg = root / "var/lib/dpkg"
    status = (dpkg / "status").read_text()
    for path in sorted(dpkg.iterdir()):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if status_d:
        (dpkg / "status.d").mkdir()
        for stanza in status.strip().split("\n\n"):
            name = stanza.split("\n", 1)[0].removeprefix("Package: ")
            text = "".join(line + "\n" for line in stanza.splitlines()
                           if not line.startswith("Status:"))
            (dpkg / "status.d" / name).write_text(text)
    else:
        (dpkg / "status").write_text(status)
    assert not (root / "etc/apt").exists() and not (root / "usr/share/keyrings").exists()
    assert not (root / "bin/sh").exists()
    return write_image(root, tmp, "chiseled")


def test_chiseled_image_with_mirror_and_keyring(apt_repo: AptRepo, gpg_keys: GpgKeys,
                                                tmp_path: Path) -> None:
    archive, v1 = _archive(apt_repo, gpg_keys, tmp_path)
    ref = _chiseled_image(archive, v1, tmp_path)
    mirror = ["--mirror", f"{UBUNTU_ARCHIVE}={archive.url}"]
    layout = tmp_path / "layout"
    state = layout_state(layout)
    # No keyring in the image and none given: this host's keyrings do not know the key.
    proc, doc = _patch(ref, tmp_path, *mirror)
    assert proc.returncode == 1, proc.stderr
    assert f"/dists/{NOBLE}/InRelease: no trusted key for signature(s) by " \
           f"{archive.key.fpr}" in proc.stderr.splitlines()[-1]
    proc, doc = _patch(ref, tmp_path, *mirror, "--no-host-keyrings")
    assert proc.returncode == 1, proc.stderr
    assert error_line(proc) == (
        f"suture: error: linux/amd64: no trusted keys for {archive.url} {NOBLE} (hint: pass "
        "--keyring FILE with the archive's signing keys)")
    assert doc is not None and doc["target"] is None
    assert layout_state(layout) == state

    proc, doc = _patch(ref, tmp_path, *mirror, "--keyring", str(archive.key_file()))
    platform = _platform(proc, doc)
    assert platform["status"] == "patched"
    assert _updates(platform) == {"libssl3t64": (OLD, FIX, "update-all"),
                                  "openssl": (OLD, FIX, "update-all")}
    # The standard suites were added (with Ubuntu's four components; the archive has two).
    notes = [line for line in proc.stdout.splitlines() if line.startswith("note: ")]
    # A chiseled image keeps no file lists: the user is told what that means.
    assert notes == [f"note: linux/amd64: added suites missing from the image's apt sources: "
                     f"{UBUNTU_ARCHIVE} {NOBLE}, {UBUNTU_ARCHIVE} {SECURITY}, "
                     f"{UBUNTU_ARCHIVE} {UPDATES}"] + [
        f"note: linux/amd64: {name}: no file list in the image; files of the old "
        "version are not removed (as dpkg assumes too)"
        for name in ("libssl3t64:amd64", "openssl")]  # named as dpkg names them
    not_run = [{"script": f"libssl3t64:amd64 postinst configure {OLD}",
                "reason": "no /bin/sh in the image"}]
    assert platform["scripts"] == {"ran": [], "notRun": not_run}
    assert (f"warning: linux/amd64: not run: libssl3t64:amd64 postinst configure {OLD}: "
            "no /bin/sh in the image") in proc.stderr.splitlines()
    out = open_image(ref + "-patched")
    assert tags(layout) == {"chiseled", "chiseled-patched"}
    db = installed(out)
    assert {n: (p.version, p.paragraph["Status"]) for n, p in db.items()} == {
        "libssl3t64": (FIX, "install ok installed"), "openssl": (FIX, "install ok installed")}
    assert contents(out, "usr/bin/openssl") == {"usr/bin/openssl": b"openssl " + FIX.encode()}
    assert contents(out, "etc/apt/sources.list", f"{KEYRING}") == {
        "etc/apt/sources.list": None, KEYRING: None}


def test_status_d_image_reports_scripts_not_run(apt_repo: AptRepo, gpg_keys: GpgKeys,
                                                tmp_path: Path) -> None:
    archive, v1 = _archive(apt_repo, gpg_keys, tmp_path)
    ref = _chiseled_image(archive, v1, tmp_path, status_d=True)
    proc, doc = _patch(ref, tmp_path, "--mirror", f"{UBUNTU_ARCHIVE}={archive.url}",
                       "--keyring", str(archive.key_file()))
    platform = _platform(proc, doc)
    assert platform["status"] == "patched"
    assert versions(open_image(ref + "-patched"))["libssl3t64"] == FIX
    assert [n["script"] for n in platform["scripts"]["notRun"]] == [
        f"libssl3t64:amd64 postinst configure {OLD}"]
