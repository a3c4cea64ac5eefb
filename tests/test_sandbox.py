"""Hostile maintainer scripts stay inside the sandbox (docs/security.md).

Each test runs a real script through suture's own runner (:func:`run_scripts`) over a
real bookworm minbase root (mmdebstrap, cached) and checks an outcome on the host or in
what the scripts changed: the host's kernel settings, the host's files, a listener on
127.0.0.1, the limits that stopped a script. The probe's cases B13-B20 (see the
reliability probe) are the model.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from suture.devtools.debian_image import image_from_layers
from suture.distro.scripts import ScriptJob
from suture.errors import LayerError
from suture.oci import extract
from suture.oci.image import Image
from suture.oci.layer import DIR, FILE, HARDLINK, Entry
from suture.oci.model import Platform
from suture.patch import sandbox
from suture.patch.sandbox import Limits, ScriptError, host_architecture
from suture.patch.scripts import ScriptOutcome, run_scripts
from suture.patch.seccomp import SeccompUnavailable
from tests.fixtures.aptrepo import AptRepo, GpgKeys
from tests.fixtures.images import make_image
from tests.fixtures.patchimages import (
    Archive,
    debian_os_release,
    layout_state,
    make_root,
    suture,
    write_image,
)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="scripts run as root over a root with real "
                                                 "ownership"),
    pytest.mark.skipif(host_architecture() != "amd64", reason="the test root is amd64"),
]


@pytest.fixture(scope="module")
def bookworm_image(bookworm_rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Image:
    return image_from_layers([bookworm_rootfs], Platform.parse("linux/amd64"),
                             tmp_path_factory.mktemp("bookworm-image"))


@pytest.fixture(autouse=True)
def _bwrap_probed_afresh() -> Iterator[None]:
    sandbox.probe_bwrap.cache_clear()
    yield
    sandbox.probe_bwrap.cache_clear()


def _job(name: str) -> ScriptJob:
    return ScriptJob(name, "postinst", f"var/lib/dpkg/info/{name}.postinst", ("configure",))


def _run(image: Image, name: str, body: str, workdir: Path, **kwargs: object
         ) -> ScriptOutcome:
    script = Entry.file(f"var/lib/dpkg/info/{name}.postinst", body.encode(), mode=0o755)
    workdir.mkdir(parents=True, exist_ok=True)
    return run_scripts(image, [script], [_job(name)], workdir=workdir,
                       **kwargs)  # type: ignore[arg-type]


def _file(outcome: ScriptOutcome, path: str) -> str:
    found = {e.path: e for e in outcome.entries}
    entry = found[path]
    assert entry.kind == FILE and isinstance(entry.data, bytes)
    return entry.data.decode()


@pytest.fixture
def no_bwrap(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A PATH with chroot and everything else but bwrap (the probe's B20 setting)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("chroot", "true", "sh"):
        found = shutil.which(name)
        assert found is not None
        (bin_dir / name).symlink_to(found)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert shutil.which("bwrap") is None and shutil.which("chroot") is not None


# --------------------------------------------------------------------------- the kernel

@pytest.mark.network
def test_host_sysctls_and_kernel_files_cannot_be_written(bookworm_image: Image,
                                                          tmp_path: Path) -> None:
    # Harmless even if the write went through: the value read is written back.
    body = """#!/bin/sh
v=$(cat /proc/sys/kernel/core_pattern)
if printf '%s\\n' "$v" > /proc/sys/kernel/core_pattern 2>/dev/null; then
    echo core_pattern written > /etc/probe
else
    echo core_pattern refused > /etc/probe
fi
if [ -e /proc/sysrq-trigger ] && echo h > /proc/sysrq-trigger 2>/dev/null; then
    echo sysrq written >> /etc/probe
fi
echo "kcore $(head -c 16 /proc/kcore 2>/dev/null | wc -c)" >> /etc/probe
echo "sys $(ls -A /sys | wc -l)" >> /etc/probe
"""
    before = Path("/proc/sys/kernel/core_pattern").read_text()
    outcome = _run(bookworm_image, "sysctl", body, tmp_path, sandbox="bwrap")
    assert outcome.ran == ["sysctl postinst configure"]
    assert _file(outcome, "etc/probe").splitlines() == ["core_pattern refused", "kcore 0",
                                                         "sys 0"]
    assert Path("/proc/sys/kernel/core_pattern").read_text() == before


@pytest.mark.network
def test_scripts_have_their_own_user_namespace_and_still_chown_to_any_id(
        bookworm_image: Image, tmp_path: Path) -> None:
    """What adduser and dpkg-statoverride do in real postinsts still works; the
    namespaces, devices and mounts of the host are out of reach."""
    body = """#!/bin/sh
set -e
readlink /proc/self/ns/user > /etc/probe-userns
groupadd --system demo
useradd --system --gid demo --home-dir /var/lib/demo --no-create-home demo
install -d -o demo -g demo -m 0750 /var/lib/demo
echo x > /etc/demo.conf
dpkg-statoverride --update --add demo demo 0640 /etc/demo.conf
touch /etc/far-ids && chown 123456:654321 /etc/far-ids
: > /etc/probe
mknod /dev/probe-disk b 8 0 2>/dev/null && echo mknod allowed >> /etc/probe
mkdir -p /mnt/t && mount -t tmpfs none /mnt/t 2>/dev/null && echo mount allowed >> /etc/probe
unshare --user --map-root-user true 2>/dev/null && echo userns allowed >> /etc/probe
unshare --mount true 2>/dev/null && echo mountns allowed >> /etc/probe
exit 0
"""
    outcome = _run(bookworm_image, "owners", body, tmp_path, sandbox="bwrap")
    assert outcome.ran == ["owners postinst configure"]
    assert _file(outcome, "etc/probe") == ""
    host_userns = os.readlink("/proc/self/ns/user")
    assert _file(outcome, "etc/probe-userns").strip() not in ("", host_userns)
    entries = {e.path: e for e in outcome.entries}
    passwd = _file(outcome, "etc/passwd").splitlines()
    demo = next(line.split(":") for line in passwd if line.startswith("demo:"))
    uid, gid = int(demo[2]), int(demo[3])
    assert 0 < uid < 1000 and 0 < gid < 1000
    home = entries["var/lib/demo"]
    assert (home.kind, home.uid, home.gid, home.mode) == (DIR, uid, gid, 0o750)
    conf = entries["etc/demo.conf"]
    assert (conf.uid, conf.gid, conf.mode) == (uid, gid, 0o640)
    assert "demo demo 640 /etc/demo.conf" in _file(outcome, "var/lib/dpkg/statoverride")
    far = entries["etc/far-ids"]
    assert (far.uid, far.gid) == (123456, 654321)


MOUNTS_PROBE = """#!/bin/sh
cat /proc/self/mountinfo > /etc/probe-self-mountinfo
cat /proc/1/mountinfo > /etc/probe-1-mountinfo
cat /proc/self/mounts > /etc/probe-self-mounts
cat /proc/1/mounts > /etc/probe-1-mounts
readlink /proc/self/root /proc/self/cwd /proc/1/root /proc/1/cwd > /etc/probe-links
exit 0
"""


@pytest.mark.network
def test_no_host_path_of_the_root_is_visible_in_the_sandbox(bookworm_image: Image,
                                                            tmp_path: Path) -> None:
    """The root is an overlay of its own in the sandbox, not a bind mount of a host
    directory: /proc/*/mountinfo (whose 4th field is a bind mount's path in its file
    system) and /proc/*/mounts name no directory of the host the root lives in."""
    workdir = tmp_path / "work"
    outcome = _run(bookworm_image, "mounts", MOUNTS_PROBE, workdir, sandbox="bwrap")
    assert outcome.ran == ["mounts postinst configure"]
    host_dirs = [str(p) for p in [workdir, *workdir.parents] if str(p) not in ("/", "/tmp")]
    assert str(tmp_path) in host_dirs and len(host_dirs) >= 3
    for name in ("self-mountinfo", "1-mountinfo", "self-mounts", "1-mounts", "links"):
        text = _file(outcome, f"etc/probe-{name}")
        assert text.strip(), name
        for line in text.splitlines():
            assert "suture-" not in line, (name, line)
            for host_dir in host_dirs:
                assert host_dir not in line, (name, line, host_dir)
    # The sandbox's "/" is the root of a file system of its own, named by relative paths.
    roots = [line.split() for line in _file(outcome, "etc/probe-self-mountinfo").splitlines()
             if line.split()[4] == "/"]
    assert len(roots) == 1
    fields = roots[0]
    assert fields[3] == "/"
    assert fields[fields.index("-") + 1] == "overlay"
    assert _file(outcome, "etc/probe-links").split() == ["/", "/", "/", "/"]


CHANGES = """#!/bin/sh
set -e
rm -rf /usr/share/doc
rm /etc/debian_version && mkdir /etc/debian_version && echo in-dir > /etc/debian_version/f
rm -rf /etc/apt/apt.conf.d && echo now-a-file > /etc/apt/apt.conf.d
rm -rf /var/lib/apt && mkdir -p /var/lib/apt/lists && echo only > /var/lib/apt/lists/only
echo linked > /etc/hl-a && ln /etc/hl-a /etc/hl-b
mv /etc/issue.net /etc/issue.moved
echo appended >> /etc/issue
chmod 0710 /var/cache && chown 12:34 /var/cache
mkdir -p /opt/new/deep && echo deep > /opt/new/deep/file && ln -s ../new /opt/new/link
touch -d @1000000000 /opt/new/deep/file
echo first > /etc/first-job
exit 0
"""
SECOND = """#!/bin/sh
set -e
# What the first job did is in the root the second one sees.
test -d /etc/debian_version && test ! -e /usr/share/doc && test ! -e /etc/issue.net
grep -q first /etc/first-job && echo second >> /etc/first-job
test "$(stat -c %h /etc/hl-a)" = 2
exit 0
"""


@pytest.mark.network
def test_what_scripts_do_through_the_overlay_is_what_lands_in_the_root(
        bookworm_image: Image, tmp_path: Path) -> None:
    """Deletions (whiteouts), a file become a directory and back, a directory replaced
    whole (opaque), hard links, renames, owners, modes and times: after each job the
    root holds what the script did, as it did with the root bound directly."""
    scripts = [Entry.file("var/lib/dpkg/info/one.postinst", CHANGES.encode(), mode=0o755),
               Entry.file("var/lib/dpkg/info/two.postinst", SECOND.encode(), mode=0o755)]
    outcome = run_scripts(bookworm_image, scripts, [_job("one"), _job("two")],
                          workdir=tmp_path, sandbox="bwrap")
    assert outcome.ran == ["one postinst configure", "two postinst configure"]
    entries = {e.path: e for e in outcome.entries}
    assert "usr/share/.wh.doc" in entries
    assert not any(p.startswith("usr/share/doc/") for p in entries)
    assert entries["etc/debian_version"].kind == DIR
    assert _file(outcome, "etc/debian_version/f") == "in-dir\n"
    assert _file(outcome, "etc/apt/apt.conf.d") == "now-a-file\n"
    assert _file(outcome, "var/lib/apt/lists/only") == "only\n"
    gone = [p for p in entries if p.startswith("var/lib/apt/") and ".wh." in p]
    assert gone  # the old contents of /var/lib/apt are deleted, not merged
    assert _file(outcome, "etc/hl-a") == "linked\n"
    assert (entries["etc/hl-b"].kind, entries["etc/hl-b"].linkname) == (HARDLINK, "etc/hl-a")
    assert "etc/.wh.issue.net" in entries and _file(outcome, "etc/issue.moved")
    assert _file(outcome, "etc/issue").endswith("appended\n")
    cache = entries["var/cache"]
    assert (cache.kind, cache.mode, cache.uid, cache.gid) == (DIR, 0o710, 12, 34)
    assert _file(outcome, "opt/new/deep/file") == "deep\n"
    assert entries["opt/new/link"].linkname == "../new"
    assert _file(outcome, "etc/first-job") == "first\nsecond\n"
    # Nothing of the overlay's own is left in what the scripts changed.
    for entry in outcome.entries:
        assert not any(k.startswith(("trusted.overlay.", "user.overlay."))
                       for k in entry.xattrs), entry.path
    assert not [p for p in tmp_path.rglob("*") if ".suture-overlay-" in str(p)]


# --------------------------------------------------------------------------- limits

@pytest.mark.network
def test_a_fork_bomb_stops_at_the_process_limit(bookworm_image: Image, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    if "pids" not in sandbox.cgroup_support():
        pytest.skip("no pids cgroup here: the process limit cannot hold for root")
    monkeypatch.setattr(sandbox, "LIMITS", Limits(processes=64))
    body = """#!/bin/sh
i=0
while [ $i -lt 300 ]; do sleep 30 & i=$((i+1)); done
echo "all $i started" > /etc/probe
"""
    with pytest.raises(ScriptError) as err:
        _run(bookworm_image, "forks", body, tmp_path, sandbox="bwrap")
    assert err.value.limit == "processes"
    assert "(hit the limit of 64 processes)" in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.network
def test_filling_tmp_stops_at_the_tmpfs_limit(bookworm_image: Image, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "LIMITS", Limits(tmpfs=8 << 20))
    body = "#!/bin/sh\nset -e\ndd if=/dev/zero of=/tmp/big bs=1M count=64 2>&1\n"
    with pytest.raises(ScriptError) as err:
        _run(bookworm_image, "filler", body, tmp_path, sandbox="bwrap")
    assert err.value.limit == "tmpfs"
    assert "(ran out of space (/tmp, /run and /dev/shm hold 8 MiB each))" in str(err.value)


@pytest.mark.network
def test_memory_is_bounded(bookworm_image: Image, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "LIMITS", Limits(memory=64 << 20))
    body = "#!/bin/sh\nset -e\nperl -e '$x = q(a) x (512 * 1024 * 1024); print length $x'\n"
    with pytest.raises(ScriptError) as err:
        _run(bookworm_image, "hog", body, tmp_path, sandbox="bwrap")
    if "memory" in sandbox.cgroup_support():
        assert err.value.limit == "memory"
        assert "(hit the memory limit of 64 MiB)" in str(err.value)
    else:  # RLIMIT_AS: perl cannot get the memory and says so
        assert "Out of memory" in err.value.detail


@pytest.mark.network
def test_files_larger_than_the_file_size_limit_stop_the_script(
        bookworm_image: Image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "LIMITS", Limits(file_size=4 << 20))
    body = "#!/bin/sh\nset -e\ndd if=/dev/zero of=/var/big bs=1M count=64\n"
    with pytest.raises(ScriptError) as err:
        _run(bookworm_image, "bigfile", body, tmp_path, sandbox="bwrap")
    assert err.value.limit == "file size"
    assert "(hit the file size limit of 4 MiB)" in str(err.value)


# --------------------------------------------------------------------------- escapes

def _listener() -> socket.socket:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    return server


def _connections(server: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


@pytest.mark.network
def test_the_hosts_network_is_out_of_reach(bookworm_image: Image, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    server = _listener()
    port = server.getsockname()[1]
    body = f"""#!/bin/bash
if exec 3<>/dev/tcp/127.0.0.1/{port}; then echo hello >&3; echo reached > /etc/probe
else echo refused > /etc/probe; fi
exit 0
"""
    try:
        contained = _run(bookworm_image, "net", body, tmp_path / "a", sandbox="auto")
        assert contained.ran == ["net postinst configure"]
        assert _file(contained, "etc/probe") == "refused\n"
        # Without bwrap, auto runs nothing (it once fell back to chroot, on the host's
        # network).
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "chroot").symlink_to(shutil.which("chroot") or "/usr/sbin/chroot")
        monkeypatch.setenv("PATH", str(bin_dir))
        sandbox.probe_bwrap.cache_clear()
        unconfined = _run(bookworm_image, "net", body, tmp_path / "b", sandbox="auto")
        assert _connections(server) == 0
        assert unconfined.ran == []
    finally:
        server.close()


ESCAPE = """#!/bin/sh
cat > /var/escape.pl <<'PERL'
mkdir "/cx";
chroot "/cx" or die "chroot: $!";
chdir ".." for 1 .. 64;
chroot "." or die "chroot back: $!";
open(my $f, ">", "{target}") or die "open: $!";
print $f "escaped\\n";
close $f;
PERL
perl /var/escape.pl 2> /var/escape.err || true
exit 0
"""


@pytest.mark.network
def test_the_classic_chroot_escape_stays_in_the_image(bookworm_image: Image, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "escaped-to-the-host"
    body = ESCAPE.replace("{target}", str(target))
    contained = _run(bookworm_image, "escape", body, tmp_path / "a", sandbox="auto")
    assert contained.ran == ["escape postinst configure"]
    assert not target.exists()
    # Inside the sandbox, the escape ends at the image's root: the host path is not there.
    assert "open: No such file or directory" in _file(contained, "var/escape.err")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "chroot").symlink_to(shutil.which("chroot") or "/usr/sbin/chroot")
    monkeypatch.setenv("PATH", str(bin_dir))
    sandbox.probe_bwrap.cache_clear()
    _run(bookworm_image, "escape", body, tmp_path / "b", sandbox="auto")
    assert not target.exists()


@pytest.mark.network
def test_auto_without_bwrap_reports_scripts_as_not_run_and_never_chroots(
        bookworm_image: Image, tmp_path: Path, no_bwrap: None) -> None:
    marker = tmp_path / "ran-on-the-host"
    body = f"#!/bin/sh\necho ran > /etc/probe\necho ran > {marker} 2>/dev/null\nexit 0\n"
    outcome = _run(bookworm_image, "fallback", body, tmp_path / "w", sandbox="auto")
    assert outcome.ran == []
    assert outcome.entries == []
    assert outcome.not_run == [("fallback postinst configure",
                                "no sandbox available (bwrap is not installed)")]
    assert not marker.exists()
    # chroot stays available, by name only.
    named = _run(bookworm_image, "fallback", body, tmp_path / "c", sandbox="chroot")
    assert named.ran == ["fallback postinst configure"]
    assert _file(named, "etc/probe") == "ran\n"


# --------------------------------------------------------------------------- the root

def test_a_decompression_bomb_is_refused_naming_its_layer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small layer that inflates past the root's ceiling (probe A12) stops the run
    with one line that names the layer; nothing is left behind."""
    if sandbox.probe_bwrap() is not None:
        pytest.skip(f"no sandbox, so no root is written: {sandbox.probe_bwrap()}")
    monkeypatch.setattr(extract, "MAX_ROOT_BYTES", 16 << 20, raising=False)
    base = [Entry("bin", DIR, 0o755), Entry.file("bin/sh", b"#!/nothing\n", mode=0o755)]
    bomb = [Entry("var", DIR, 0o755), Entry.file("var/zeros", bytes(64 << 20))]
    image = make_image(base, bomb)
    bomb_layer = image.layers[1].digest
    assert image.layers[1].descriptor.size < 1 << 20  # 64 MiB of zeros compress to a few kB
    with pytest.raises(LayerError) as err:
        run_scripts(image, [], [_job("demo")], workdir=tmp_path, sandbox="bwrap")
    message = str(err.value)
    assert message.startswith(f"layer {bomb_layer[:19]}: expands the root for maintainer "
                              "scripts past its ceiling of 16 MiB")
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_without_libseccomp_no_script_runs_and_the_reason_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("bwrap is not installed")

    def no_library() -> bytes:
        raise SeccompUnavailable("libseccomp is not installed (test)")

    monkeypatch.setattr(sandbox, "filter_bpf", no_library, raising=False)
    image = make_image([Entry("bin", DIR, 0o755),
                        Entry.file("bin/sh", b"#!/nothing\n", mode=0o755)])
    outcome = run_scripts(image, [], [_job("demo")], workdir=tmp_path, sandbox="auto")
    assert outcome.ran == []
    assert outcome.not_run == [("demo postinst configure", "no sandbox available (no seccomp "
                                "filter: libseccomp is not installed (test))")]
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the CLI

@pytest.mark.tools
def test_scripts_required_fails_when_a_script_cannot_run(
        apt_repo: AptRepo, gpg_keys: GpgKeys, tmp_path: Path) -> None:
    """An upgrade whose postinst cannot run (the image has no /bin/sh): reported as not
    run by default; with --scripts-required the patch fails and writes nothing."""
    archive = Archive.create(apt_repo, gpg_keys.good, tmp_path, "bookworm")
    v1 = [archive.add("bookworm", "a", "1.0-1")]
    archive.add("bookworm-security", "a", "2.0-1",
                scripts={"postinst": "#!/bin/sh\necho configured > /etc/a.done\n"})
    archive.publish()
    root = make_root(tmp_path / "root", v1, debian_os_release(),
                     sources={"etc/apt/sources.list": "deb http://deb.debian.org/debian "
                                                      "bookworm main\n"},
                     keyring=archive.key_asc())
    ref = write_image(root, tmp_path, "v1")
    before = layout_state(tmp_path / "layout")
    common = ["--cache-dir", str(tmp_path / "cache"), "--no-host-keyrings",
              *archive.mirror_args()]
    result = tmp_path / "result.json"

    refused = suture("patch", "-i", ref, "-t", "strict", *common, "--scripts-required",
                     "--result", str(result))
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        "suture: error: linux/amd64: 1 maintainer script(s) could not run (first: a postinst "
        "configure 1.0-1: no /bin/sh in the image); nothing written (--scripts-required) "
        "(hint: without --scripts-required the image is patched and they are reported as "
        "not run)")
    assert layout_state(tmp_path / "layout") == before

    lenient = suture("patch", "-i", ref, "-t", "lenient", *common, "--result", str(result))
    assert lenient.returncode == 0, lenient.stderr
    [platform] = json.loads(result.read_text())["platforms"]
    assert platform["status"] == "patched"
    assert platform["scripts"] == {"ran": [], "notRun": [
        {"script": "a postinst configure 1.0-1", "reason": "no /bin/sh in the image"}]}


def test_a_root_that_requires_its_overlay_never_falls_back_to_a_bind_mount(
        bookworm_image: Image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the overlay cannot be mounted, scripts over an ordinary root run on a bind
    mount of it (with a warning); over a root that requires its overlay (a kept root's
    hard links, which a script must never write in place) the script fails instead,
    before it runs."""
    broken = "lowerdir=lower,upperdir=upper,workdir=work,no_such_option"
    monkeypatch.setattr(sandbox, "_OVERLAY_AS_ROOT", broken)
    monkeypatch.setattr(sandbox, "_OVERLAY_IN_USERNS", broken)
    body = "#!/bin/sh\necho ran > /etc/ran\n"
    plain = _run(bookworm_image, "plain", body, tmp_path / "a", sandbox="bwrap")
    assert _file(plain, "etc/ran") == "ran\n"  # fell back to binding the root itself

    real = sandbox.run_one
    seen: list[str] = []

    def required(job: ScriptJob, cmd: list[str], env: dict[str, str], timeout: float
                 ) -> None:
        root = cmd[cmd.index("--bind") + 1].removeprefix("@ROOT@")
        sandbox.require_overlay(Path(root))
        seen.append(root)
        real(job, cmd, env, timeout)

    monkeypatch.setattr("suture.patch.scripts.run_one", required)
    with pytest.raises(ScriptError,
                       match=r"exited with code 125: .*cannot enter the sandbox: .*mount overlay"):
        _run(bookworm_image, "required", body, tmp_path / "b", sandbox="bwrap")
    assert len(seen) == 1
