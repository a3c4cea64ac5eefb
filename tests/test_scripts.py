"""Maintainer scripts run in a sandbox over a real Debian root; their effect comes back as entries.

The Debian tests use a real bookworm minbase root filesystem (mmdebstrap, cached)
and its own ``libc-bin`` postinst, and check outcomes: file contents, whiteouts,
an ``ld.so.cache`` that the host's ``ldconfig`` reads back.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from suture.devtools.debian_image import image_from_layers
from suture.distro.scripts import ScriptJob
from suture.errors import UsageError
from suture.oci.image import Image
from suture.oci.layer import DIR, FILE, HARDLINK, SYMLINK, WHITEOUT_PREFIX, Entry
from suture.oci.model import Platform
from suture.patch import sandbox
from suture.patch.sandbox import ScriptError, host_architecture
from suture.patch.scripts import run_scripts
from tests.fixtures.images import make_image

LIBDIR = "usr/lib/x86_64-linux-gnu"
DEMO = b'#!/bin/sh\nset -e\necho "$1 $2" > /etc/demo.conf\nrm -f /etc/issue.net\n'
DEMO_JOB = ScriptJob("demo", "postinst", "var/lib/dpkg/info/demo.postinst", ("configure", "1.0"))
LDCONFIG_JOB = ScriptJob("libc-bin", "triggered", "var/lib/dpkg/info/libc-bin.postinst",
                         ("triggered", "ldconfig"))
# Edge cases of change detection, run after the demo script.
EDGES = b"""#!/bin/sh
set -e
cat /etc/hostname > /tmp/h && cat /tmp/h > /etc/hostname   # same bytes, rewritten in place
chmod 0600 /etc/debian_version                               # metadata only
cat /etc/host.conf > /dev/null                               # read only (atime)
rm -rf /usr/share/doc/sed                                     # a whole tree
ln /etc/demo.conf /etc/demo-link.conf                         # a hard link
echo "$DPKG_MAINTSCRIPT_PACKAGE $DPKG_MAINTSCRIPT_NAME $DPKG_MAINTSCRIPT_ARCH" > /etc/edges.env
echo "$DPKG_RUNNING_VERSION" >> /etc/edges.env
mkdir -p /run/x /var/tmp/x && touch /run/x/f /var/tmp/x/f /tmp/f   # excluded areas
test -x /usr/sbin/policy-rc.d && echo policy >> /etc/edges.env
"""
GHOST_JOB = ScriptJob("ghost", "postinst", "var/lib/dpkg/info/ghost.postinst", ("configure",))
PLAIN_JOB = ScriptJob("plain", "postinst", "var/lib/dpkg/info/plain.postinst", ("configure",))
PERLY_JOB = ScriptJob("perly", "postinst", "var/lib/dpkg/info/perly.postinst", ("configure",))
# The family gives a job its environment (dpkg's variables); the runner adds only a
# plain PATH, HOME and LC_ALL.
EDGES_JOB = ScriptJob("edges", "postinst", "var/lib/dpkg/info/edges.postinst", ("configure", ""),
                      (("DPKG_MAINTSCRIPT_PACKAGE", "edges"), ("DPKG_MAINTSCRIPT_NAME", "postinst"),
                       ("DPKG_MAINTSCRIPT_ARCH", "amd64"), ("DPKG_RUNNING_VERSION", "1.21.99")))


def _script(name: str, body: bytes) -> Entry:
    return Entry.file(f"var/lib/dpkg/info/{name}", body, mode=0o755)


def _by_path(entries: list[Entry]) -> dict[str, Entry]:
    return {e.path: e for e in entries}


def _other_arch() -> str:
    return "arm64" if host_architecture() != "arm64" else "amd64"


# --------------------------------------------------------------------------- no shell, no run

def test_image_without_a_shell_runs_nothing(tmp_path: Path) -> None:
    image = make_image([Entry("etc", DIR, 0o755), Entry.file("etc/os-release", b"ID=x\n")])
    jobs = [DEMO_JOB, LDCONFIG_JOB]
    outcome = run_scripts(image, [_script("demo.postinst", DEMO)], jobs, workdir=tmp_path)
    assert outcome.entries == []
    assert outcome.ran == []
    assert outcome.not_run == [(j.describe(), "no /bin/sh in the image") for j in jobs]
    assert list(tmp_path.iterdir()) == []


def test_other_architecture_runs_nothing_and_says_why(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    arch = _other_arch()
    nowhere = tmp_path.parent / "no-binfmt_misc"  # no binfmt_misc: nothing emulates arch
    monkeypatch.setattr("suture.patch.emulation.BINFMT_MISC", nowhere)
    image = make_image([Entry.file("bin/sh", b"#!/nothing\n", mode=0o755)],
                       platform=f"linux/{arch}")
    outcome = run_scripts(image, [], [DEMO_JOB], workdir=tmp_path)
    reason = (f"image architecture {arch} differs from host {host_architecture()}: no "
              f"binfmt_misc handler with the F flag for {arch} (binfmt_misc is not mounted "
              f"or not enabled at {nowhere}); install qemu-user-static")
    assert outcome.not_run == [("demo postinst configure 1.0", reason)]
    assert outcome.entries == [] and outcome.ran == []
    assert list(tmp_path.iterdir()) == []  # nothing was extracted


def test_sandbox_none_reports_every_job(tmp_path: Path) -> None:
    image = make_image([Entry.file("bin/sh", b"", mode=0o755)])
    outcome = run_scripts(image, [], [DEMO_JOB, LDCONFIG_JOB], workdir=tmp_path, sandbox="none")
    assert outcome.not_run == [("demo postinst configure 1.0", "scripts disabled"),
                               ("libc-bin triggered ldconfig", "scripts disabled")]
    assert outcome.ran == [] and outcome.entries == []


def test_no_jobs_and_unknown_sandbox(tmp_path: Path) -> None:
    image = make_image([Entry.file("bin/sh", b"", mode=0o755)])
    assert run_scripts(image, [], [], workdir=tmp_path).not_run == []
    with pytest.raises(UsageError, match="unknown sandbox 'docker'"):
        run_scripts(image, [], [DEMO_JOB], sandbox="docker")


# --------------------------------------------------------------------------- real Debian root

@pytest.fixture(scope="module")
def bookworm_image(bookworm_rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Image:
    return image_from_layers([bookworm_rootfs], Platform.parse("linux/amd64"),
                             tmp_path_factory.mktemp("bookworm-image"))


@pytest.fixture(scope="module")
def libdemo(bookworm_rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """libattr.so.1 from the root, its SONAME renamed to libdemo.so.1 (same length)."""
    out = tmp_path_factory.mktemp("lib")
    subprocess.run(["tar", "-xf", str(bookworm_rootfs), "-C", str(out), "--wildcards",
                    f"./{LIBDIR}/libattr.so.1.*"], check=True)
    data = next((out / LIBDIR).glob("libattr.so.1.*")).read_bytes()
    assert data.count(b"libattr.so.1\0") == 1
    return data.replace(b"libattr.so.1\0", b"libdemo.so.1\0")


def _patch_entries(libdemo: bytes) -> list[Entry]:
    return [_script("demo.postinst", DEMO), _script("edges.postinst", EDGES),
            _script("plain.postinst", b'echo "plain $1" > /etc/plain.conf\n'),
            _script("perly.postinst", b"#!/usr/bin/python3\nprint(1)\n"),
            Entry.file(f"{LIBDIR}/libdemo.so.1", libdemo, mtime=1700000000)]


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the test root needs real ownership")


@pytest.mark.network
@needs_root
def test_scripts_change_the_root_and_the_changes_come_back(
        bookworm_image: Image, libdemo: bytes, tmp_path: Path) -> None:
    jobs = [DEMO_JOB, GHOST_JOB, EDGES_JOB, PLAIN_JOB, PERLY_JOB, LDCONFIG_JOB]
    outcome = run_scripts(bookworm_image, _patch_entries(libdemo), jobs, workdir=tmp_path,
                          sandbox="bwrap")
    assert outcome.ran == [j.describe() for j in (DEMO_JOB, EDGES_JOB, PLAIN_JOB, LDCONFIG_JOB)]
    assert outcome.not_run == [
        ("ghost postinst configure",
         "no /var/lib/dpkg/info/ghost.postinst in the image (nothing to run)"),
        ("perly postinst configure", "no /usr/bin/python3 in the image")]
    got = _by_path(outcome.entries)

    # demo.conf got a hard link: the first path in layer order holds the data
    link, demo = got["etc/demo-link.conf"], got["etc/demo.conf"]
    assert (link.kind, link.data, link.mtime) == (FILE, b"configure 1.0\n", None)
    assert (demo.kind, demo.linkname) == (HARDLINK, "etc/demo-link.conf")
    assert f"etc/{WHITEOUT_PREFIX}issue.net" in got
    cache = got["etc/ld.so.cache"]
    assert isinstance(cache.data, bytes)
    (tmp_path / "ld.so.cache").write_bytes(cache.data)
    listed = subprocess.run(["ldconfig", "-p", "-C", str(tmp_path / "ld.so.cache")],
                            capture_output=True, text=True, check=True).stdout
    assert f"libdemo.so.1 (libc6,x86-64) => /{LIBDIR}/libdemo.so.1" in listed.replace(
        "/lib/x86_64-linux-gnu/libdemo", f"/{LIBDIR}/libdemo")
    assert "libattr.so.1 (" in listed

    # dpkg's environment, and services held off while scripts run
    assert got["etc/edges.env"].data is not None
    env_lines = bytes(got["etc/edges.env"].data).decode().splitlines()  # type: ignore[arg-type]
    assert env_lines[0] == "edges postinst amd64"
    assert env_lines[1] == "1.21.99"  # the job's, not computed by the runner
    assert env_lines[2] == "policy"
    # change detection: a removed tree is one whiteout
    assert f"usr/share/doc/{WHITEOUT_PREFIX}sed" in got
    assert not any(p.startswith("usr/share/doc/sed/") for p in got)
    # metadata only: kept with its own time; rewritten identically or read: no entry
    version = got["etc/debian_version"]
    assert (version.mode, version.data is not None) == (0o600, True)
    assert version.mtime is not None and version.mtime > 0
    assert "etc/hostname" not in got and "etc/host.conf" not in got
    # excluded areas, unchanged inputs and the temporary policy-rc.d leave no trace
    for path in got:
        assert not path.startswith(("run/", "tmp/", "var/tmp/", "dev/", "proc/")), path
    assert not {"run", "tmp", "usr/sbin/policy-rc.d", f"{LIBDIR}/libdemo.so.1",
                "var/lib/dpkg/info/demo.postinst"} & set(got)
    assert [e.path for e in outcome.entries] == sorted(
        (e.path for e in outcome.entries), key=lambda p: p.split("/"))
    assert list(tmp_path.iterdir()) == [tmp_path / "ld.so.cache"]  # temp root removed

    assert got["etc/plain.conf"].data == b"plain configure\n"  # no #!: run by /bin/sh

    # identical inputs give identical entries, even through the chroot fallback
    again = run_scripts(bookworm_image, _patch_entries(libdemo), jobs, workdir=tmp_path,
                        sandbox="chroot")
    assert (again.entries, again.ran, again.not_run) == (outcome.entries, outcome.ran,
                                                         outcome.not_run)



# --------------------------------------------------------------------------- failures

MINI = {"bin", "lib", "lib64", "usr/bin/dash", "usr/bin/sh", "usr/bin/sleep", "usr/bin/rm",
        f"{LIBDIR}/libc.so.6", f"{LIBDIR}/ld-linux-x86-64.so.2", "usr/lib64/ld-linux-x86-64.so.2"}


@pytest.fixture(scope="module")
def mini_entries(bookworm_rootfs: Path) -> list[Entry]:
    """dash, sleep and libc out of the bookworm root: a shell image that extracts at once."""
    entries = [Entry(d, DIR, 0o755) for d in ("usr", "usr/bin", "usr/lib", LIBDIR, "usr/lib64",
                                               "tmp", "etc", "var", "var/lib", "var/lib/dpkg",
                                               "var/lib/dpkg/info")]
    with tarfile.open(bookworm_rootfs) as tar:
        for member in tar:
            path = member.name.removeprefix("./")
            if path not in MINI:
                continue
            if member.issym():
                entries.append(Entry(path, SYMLINK, 0o777, linkname=member.linkname))
            else:
                stream = tar.extractfile(member)
                assert stream is not None
                entries.append(Entry.file(path, stream.read(), mode=member.mode))
    assert len(entries) == 11 + len(MINI)
    return entries


@pytest.fixture(scope="module")
def mini_image(mini_entries: list[Entry]) -> Image:
    return make_image(mini_entries)


def _broken(name: str, body: bytes) -> tuple[Entry, ScriptJob]:
    return (_script(f"{name}.postinst", body),
            ScriptJob(name, "postinst", f"var/lib/dpkg/info/{name}.postinst", ("configure",)))


@pytest.mark.network
@needs_root
def test_failing_script_raises_one_line_and_leaves_nothing(
        mini_image: Image, tmp_path: Path) -> None:
    body = b"#!/bin/sh\necho starting\necho 'first problem' >&2\necho 'disk on fire' >&2\nexit 3\n"
    ok_script, ok_job = _broken("fine", b"#!/bin/sh\necho fine > /etc/fine\n")
    script, job = _broken("broken", body)
    with pytest.raises(ScriptError) as err:
        run_scripts(mini_image, [ok_script, script], [ok_job, job], workdir=tmp_path)
    message = str(err.value)
    assert message == ("maintainer script broken postinst configure exited with code 3: "
                       "disk on fire")
    assert (err.value.package, err.value.script, err.value.exit_code) == ("broken", "postinst", 3)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.network
@needs_root
def test_script_not_executable_fails_as_under_dpkg(mini_image: Image, tmp_path: Path) -> None:
    script, job = _broken("noexec", b"#!/bin/sh\nexit 0\n")
    script = Entry.file(script.path, b"#!/bin/sh\nexit 0\n", mode=0o644)
    with pytest.raises(ScriptError, match=r"noexec postinst configure exited with code \d+: "
                                          r".*Permission denied"):
        run_scripts(mini_image, [script], [job], workdir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.network
@needs_root
def test_script_that_hangs_is_stopped(mini_image: Image, tmp_path: Path) -> None:
    script, job = _broken("slow", b"#!/bin/sh\necho waiting >&2\nsleep 60 &\nsleep 60\n")
    start = time.monotonic()
    with pytest.raises(ScriptError, match=r"^maintainer script slow postinst configure timed "
                                          r"out after 1 s: waiting$"):
        run_scripts(mini_image, [script], [job], workdir=tmp_path, timeout=1)
    assert time.monotonic() - start < 15
    assert list(tmp_path.iterdir()) == []


@pytest.mark.network
@needs_root
def test_script_that_talks_too_much_is_stopped(mini_image: Image, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "MAX_SCRIPT_OUTPUT", 100_000)
    script, job = _broken("chatty", b"#!/bin/sh\nwhile :; do echo yes; done\n")
    with pytest.raises(ScriptError, match="wrote more than 100000 bytes of output: yes"):
        run_scripts(mini_image, [script], [job], workdir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.network
@needs_root
def test_patch_entries_are_applied_as_a_layer_before_scripts_run(
        mini_entries: list[Entry], tmp_path: Path) -> None:
    image = make_image(mini_entries, [Entry("srv", DIR, 0o755), Entry.file("srv/old", b"o"),
                                      Entry.file("etc/gone", b"g")])
    body = b"""#!/bin/sh
for p in /usr/bin/sleep /etc/gone /srv/* ; do [ -e "$p" ] && echo "$p" >> /etc/seen; done
[ /etc/hard -ef /etc/real ] && echo hard >> /etc/seen
[ -L /etc/link ] && [ /etc/link -ef /etc/real ] && echo link >> /etc/seen
rm /srv/new
"""
    script, job = _broken("look", body)
    patch = [script, Entry.whiteout("usr/bin/sleep"), Entry.whiteout("etc/gone"),
             Entry.opaque("srv"), Entry.file("srv/new", b"n"), Entry.file("etc/real", b"real"),
             Entry("etc/hard", HARDLINK, 0o644, linkname="etc/real"),
             Entry("etc/link", SYMLINK, 0o777, linkname="/etc/real")]
    outcome = run_scripts(image, patch, [job], workdir=tmp_path)
    assert outcome.ran == ["look postinst configure"]
    assert [(e.path, e.kind) for e in outcome.entries] == [
        ("etc/seen", FILE), (f"srv/{WHITEOUT_PREFIX}new", FILE)]
    assert outcome.entries[0].data == b"/srv/new\nhard\nlink\n"
    assert list(tmp_path.iterdir()) == []
