"""The sandbox maintainer scripts run in, and running one command inside it.

Which sandbox (:func:`preflight`, :func:`choose_sandbox`), the command line that
enters it (:func:`command`), and running one job to completion with its time,
output, processes, memory and files bounded (:func:`run_one`). It knows no
package family: what to run, in which order and with which environment is the
caller's business. docs/security.md gives the threat model: the image (its
scripts, its shell, its perl, its ldconfig) is hostile; the user's flags are not.

Sandboxes
    ``bwrap`` (bubblewrap): the root is mounted read-write as ``/`` through an
    overlay of its own for each run (:class:`_Overlay`: no mount in the sandbox names
    a host directory; the run's changes are moved into the root when it ends), with a
    fresh ``/dev`` and ``/proc``, and size-bounded tmpfs ``/tmp``, ``/run`` and
    ``/dev/shm``; new user, mount, IPC, PID, UTS, network (no network at all) and
    cgroup namespaces; an empty environment. In ``/proc``, ``sys``, ``sysrq-trigger``,
    ``irq``, ``bus`` and ``fs`` are read-only and ``kcore``, ``keys``, ``kallsyms``,
    ``timer_list``, ``sched_debug`` and the like are masked, as Docker does; ``/sys``
    is not mounted. As root, the user namespace maps every uid and gid to itself
    (scripts must be able to ``chown`` to any id, as ``adduser`` and
    ``dpkg-statoverride`` do), so the files they write keep their real owners, but
    their capabilities count in that namespace only (no say over the host's
    kernel, devices or mounts), and the few they keep are those of a ``docker
    build`` step, minus ``CAP_MKNOD`` (:data:`_CAPS`). As a normal user, the user
    namespace maps the caller to root. Always, a seccomp filter no weaker than
    Docker's default (:mod:`suture.patch.seccomp`) refuses ``mount``, ``unshare``,
    ``ptrace``, ``bpf``, module loading and the like.

    ``chroot`` (root only, and only when asked for by name: it confines nothing
    from a hostile script, which can leave it with ``chroot`` and ``chdir``):
    ``chroot ROOT SCRIPT``, with no namespaces, all of root's capabilities, no
    ``/proc`` and no ``/dev``. The limits below still apply.

    ``none``: nothing runs; every job is reported as ``scripts disabled``.

    ``auto``: ``bwrap`` if it works here (probed once per process), else nothing
    runs and every job says why. ``auto`` never picks ``chroot``.

Limits (:class:`Limits`, :data:`LIMITS`): each script runs in a cgroup of its own
(v2, or the v1 ``pids`` and ``memory`` controllers; :func:`cgroup_support` says
which) with at most ``processes`` tasks and ``memory`` bytes (tmpfs pages
included); without cgroups, ``RLIMIT_AS`` bounds each process's memory and
nothing bounds the number of processes (``RLIMIT_NPROC`` does not hold for root),
which is logged. Always: ``RLIMIT_FSIZE`` (``file_size``), ``RLIMIT_CORE`` 0,
``RLIMIT_NOFILE``, and ``tmpfs`` bytes for each of ``/tmp``, ``/run`` and
``/dev/shm``. A script stopped by a limit raises :class:`ScriptError` naming it.

Scripts of the image's architecture only are run: if it differs from the host's,
every job is reported, unless :mod:`suture.patch.emulation` finds a way to run
that architecture's programs here.

Each script gets ``SCRIPT_TIMEOUT`` seconds and ``MAX_SCRIPT_OUTPUT`` bytes of
output; a script that exits non-zero, is killed, times out or talks too much
raises :class:`ScriptError`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import platform
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from suture.distro.scripts import ScriptJob
from suture.errors import SutureError, UsageError
from suture.oci.image import Image
from suture.patch.emulation import emulator_for
from suture.patch.seccomp import SeccompUnavailable, filter_bpf

log = logging.getLogger(__name__)

SANDBOXES = ("auto", "bwrap", "chroot", "none")
SCRIPT_TIMEOUT = 300.0
MAX_SCRIPT_OUTPUT = 16 << 20  # stdout + stderr of one script
_TAIL = 4096
# What a `docker build` step may do, without CAP_MKNOD (no device nodes in layers).
# As root they count inside the scripts' user namespace only.
_CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_NET_RAW",
         "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
         "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE")
# /proc as Docker leaves it: kernel interfaces read-only, the revealing ones masked.
_PROC_READ_ONLY = ("bus", "fs", "irq", "sys", "sysrq-trigger")
_PROC_MASKED_FILES = ("kcore", "keys", "kallsyms", "kmsg", "latency_stats", "timer_list",
                      "timer_stats", "sched_debug", "config.gz", "kpagecount", "kpageflags",
                      "kpagecgroup", "iomem", "ioports", "vmallocinfo")
_PROC_MASKED_DIRS = ("acpi", "asound", "scsi", "driver")
_FULL_MAP = "0 0 4294967295\n"  # every id to itself
_HOST_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
              "i386": "386", "i486": "386", "i586": "386", "i686": "386", "armv5l": "arm",
              "armv6l": "arm", "armv7l": "arm", "armv8l": "arm", "ppc64le": "ppc64le",
              "s390x": "s390x", "riscv64": "riscv64", "mips64": "mips64le",
              "loongarch64": "loong64"}


@dataclass(frozen=True)
class Limits:
    """What one maintainer script (with everything it starts) may use.

    ``processes``: tasks at once (cgroup ``pids``); ``memory``: bytes of memory,
    the pages of its tmpfs files included (cgroup ``memory``; else ``RLIMIT_AS`` per
    process); ``tmpfs``: bytes in each of ``/tmp``, ``/run`` and ``/dev/shm``;
    ``file_size``: the largest file it may write (``RLIMIT_FSIZE``); ``open_files``:
    descriptors per process (``RLIMIT_NOFILE``).
    """

    processes: int = 512
    memory: int = 2 << 30
    tmpfs: int = 512 << 20
    file_size: int = 1 << 30
    open_files: int = 4096


LIMITS = Limits()


class ScriptError(SutureError):
    """A maintainer script that failed: non-zero exit, killed, timed out, too verbose,
    or stopped by a limit.

    ``exit_code`` is ``None`` when the script did not exit by itself; ``detail`` is
    the last line of its stderr (or stdout), or what went wrong; ``limit`` names the
    limit that stopped it (``"processes"``, ``"memory"``, ``"file size"``, ``"tmpfs"``)
    when one did.
    """

    def __init__(self, job: ScriptJob, *, exit_code: int | None, detail: str,
                 how: str | None = None, limit: str | None = None) -> None:
        what = how or (f"exited with code {exit_code}" if exit_code is not None
                       else "did not finish")
        super().__init__(f"maintainer script {job.describe()} {what}: {detail}",
                         hint="nothing was written; --sandbox none patches without "
                              "running maintainer scripts (and reports them)")
        self.package = job.package
        self.script = job.script
        self.exit_code = exit_code
        self.detail = detail
        self.limit = limit


def host_architecture() -> str:
    """This machine's architecture as OCI names it (``amd64``, ``arm64``...)."""
    machine = platform.machine().lower()
    return _HOST_ARCH.get(machine, machine)


def preflight(image: Image, sandbox: str, *, quiet: bool = False) -> tuple[str | None, str]:
    """The sandbox scripts would run in over ``image``, or None and why none can."""
    if sandbox not in SANDBOXES:
        raise UsageError(f"unknown sandbox {sandbox!r} (one of {', '.join(SANDBOXES)})")
    if sandbox == "none":
        return None, "scripts disabled"
    host = host_architecture()
    image_platform = image.platform
    if image_platform is None:
        return None, "image architecture unknown"
    if image_platform.architecture != host and emulator_for(
            image_platform.architecture, image_platform.variant) is None:
        from suture.patch.emulation import no_emulator_reason

        return None, (f"image architecture {image_platform.architecture} differs "
                      f"from host {host}: {no_emulator_reason(image_platform.architecture)}")
    return choose_sandbox(sandbox, quiet=quiet)


def _as_root() -> bool:
    return os.geteuid() == 0


# --------------------------------------------------------------------------- namespaces

_USERNS_CHILD = ("import ctypes,sys\n"
                 "libc=ctypes.CDLL(None,use_errno=True)\n"
                 "if libc.unshare(0x10000000)!=0: sys.exit(ctypes.get_errno() or 1)\n"
                 "sys.stdout.write('ready\\n');sys.stdout.flush();sys.stdin.read()\n")
_userns_lock = threading.Lock()
_userns: list[int] = []


class SandboxUnavailable(Exception):
    """Part of the sandbox cannot be made here (the message says why)."""


def _make_userns() -> int:
    """An open descriptor of a new user namespace in which every uid and gid maps to
    itself (made by a short-lived child: a threaded process cannot unshare one)."""
    if not sys.executable:
        raise SandboxUnavailable("no interpreter to make a user namespace with")
    try:
        child = subprocess.Popen([sys.executable, "-I", "-S", "-c", _USERNS_CHILD],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL)
    except OSError as exc:
        raise SandboxUnavailable(f"cannot make a user namespace: {exc}") from None
    assert child.stdin is not None and child.stdout is not None
    try:
        if child.stdout.readline() != b"ready\n":
            child.wait()
            raise SandboxUnavailable("cannot make a user namespace: "
                                     f"{os.strerror(child.returncode or 1)}")
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{child.pid}/{name}", "w") as fh:
                fh.write(_FULL_MAP)
        return os.open(f"/proc/{child.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SandboxUnavailable(f"cannot map ids in a user namespace: {exc}") from None
    finally:
        child.stdin.close()
        child.stdout.close()
        if child.poll() is None:
            child.kill()
        child.wait()


def _userns_fd() -> int:
    """The user namespace scripts run in as root (made once per process)."""
    with _userns_lock:
        if not _userns:
            _userns.append(_make_userns())
        return _userns[0]


def _seccomp() -> bytes:
    try:
        return filter_bpf()
    except SeccompUnavailable as exc:
        raise SandboxUnavailable(f"no seccomp filter: {exc}") from None


def _namespace_args() -> list[str]:
    """bwrap's options for namespaces and capabilities; ``@USERNS@`` and ``@SECCOMP@``
    stand for descriptors that :func:`run_one` opens for each run."""
    args = ["--seccomp", "@SECCOMP@", "--unshare-ipc", "--unshare-pid", "--unshare-net",
            "--unshare-uts", "--unshare-cgroup-try", "--die-with-parent", "--new-session"]
    if _as_root():
        args = ["--userns", "@USERNS@", *args, "--cap-drop", "ALL"]
        for cap in _CAPS:
            args += ["--cap-add", cap]
    else:
        args += ["--unshare-user", "--disable-userns", "--uid", "0", "--gid", "0"]
    return args


def _proc_args(limits: Limits) -> list[str]:
    """A fresh ``/proc`` with the kernel's interfaces read-only or masked, ``/dev``
    with a bounded ``/dev/shm``."""
    args = ["--dev", "/dev", "--size", str(limits.tmpfs), "--tmpfs", "/dev/shm",
            "--proc", "/proc"]
    for name in _PROC_READ_ONLY:
        if os.path.lexists(f"/proc/{name}"):
            args += ["--ro-bind", f"/proc/{name}", f"/proc/{name}"]
    for name in _PROC_MASKED_FILES:
        if os.path.isfile(f"/proc/{name}"):
            args += ["--ro-bind", "/dev/null", f"/proc/{name}"]
    for name in _PROC_MASKED_DIRS:
        if os.path.isdir(f"/proc/{name}"):
            args += ["--perms", "0555", "--size", "4096", "--tmpfs", f"/proc/{name}",
                     "--remount-ro", f"/proc/{name}"]
    return args


@functools.cache
def probe_bwrap() -> str | None:
    """``None`` if bubblewrap can make our sandbox here, else why not (probed once)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bwrap is not installed"
    true = shutil.which("true") or "/bin/true"
    cmd = [bwrap, *_namespace_args(), "--ro-bind", "/", "/", *_proc_args(LIMITS), "--", true]
    try:
        with _descriptors(cmd) as (filled, fds):
            proc = subprocess.run(filled, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=30, check=False, pass_fds=fds)
    except SandboxUnavailable as exc:
        return str(exc)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap does not start: {exc}"
    if proc.returncode != 0:
        return "bwrap does not work here: " + _last_line(proc.stderr.encode(), "no output")
    return None


def choose_sandbox(requested: str, *, quiet: bool = False) -> tuple[str | None, str]:
    """The sandbox to use, or ``None`` and why no script can run. ``auto`` is bwrap or
    nothing: ``chroot`` confines nothing from a hostile script and is used only when
    asked for by name."""
    del quiet  # nothing to warn about: what is not run is reported
    if requested == "bwrap":
        why = probe_bwrap()
        if why is not None:
            raise UsageError(f"sandbox 'bwrap' is not usable here: {why}",
                             hint="use --sandbox none (scripts reported, not run)")
        return "bwrap", ""
    if requested == "chroot":
        if not (_as_root() and shutil.which("chroot") is not None):
            raise UsageError("sandbox 'chroot' needs root and the chroot command",
                             hint="use --sandbox auto, bwrap or none")
        return "chroot", ""
    why = probe_bwrap()
    if why is None:
        return "bwrap", ""
    return None, f"no sandbox available ({why})"


def command(kind: str, root: Path, env: dict[str, str], argv: list[str]) -> list[str]:
    """The command that runs ``argv`` in sandbox ``kind`` over ``root`` (for
    :func:`run_one`, which supplies the descriptors it names, the root's overlay and
    the limits)."""
    if kind == "chroot":
        return [shutil.which("chroot") or "chroot", str(root), *argv]
    size = str(LIMITS.tmpfs)
    cmd = [shutil.which("bwrap") or "bwrap", *_namespace_args(),
           "--bind", _ROOT + str(root), "/",
           *_proc_args(LIMITS), "--size", size, "--tmpfs", "/tmp", "--size", size,
           "--tmpfs", "/run", "--chdir", "/", "--clearenv"]
    for name, value in sorted(env.items()):
        cmd += ["--setenv", name, value]
    return [*cmd, "--", *argv]


@contextlib.contextmanager
def _descriptors(cmd: list[str]) -> Iterator[tuple[list[str], tuple[int, ...]]]:
    """``cmd`` with its ``@USERNS@``/``@SECCOMP@`` placeholders (only as the values of
    bwrap's own ``--userns``/``--seccomp``, before any other option) replaced by open
    descriptors, and those descriptors (to pass to the child)."""
    filled = list(cmd)
    fds: list[int] = []
    opened: list[int] = []
    try:
        for i in range(1, min(len(filled) - 1, 5)):
            if filled[i] == "--userns" and filled[i + 1] == "@USERNS@":
                fd = _userns_fd()
                filled[i + 1] = str(fd)
                fds.append(fd)
            elif filled[i] == "--seccomp" and filled[i + 1] == "@SECCOMP@":
                program = _seccomp()
                read_fd, write_fd = os.pipe()
                opened.append(read_fd)
                try:
                    os.write(write_fd, program)  # a few kB: fits in the pipe
                finally:
                    os.close(write_fd)
                filled[i + 1] = str(read_fd)
                fds.append(read_fd)
        yield filled, tuple(fds)
    finally:
        for fd in opened:
            os.close(fd)


# --------------------------------------------------------------------------- the root

# In command(): the root given as the source of bwrap's `--bind ... /`, which run_one
# replaces by the root's overlay.
_ROOT = "@ROOT@"
# The overlay's own xattrs in its upper directory (trusted.* when mounted as root,
# user.* in a user namespace): never part of what the scripts wrote.
_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")
# The layers named relative to the overlay's directory (the mount's working
# directory): the options /proc/self/mountinfo shows in the sandbox name no host path.
# One lower layer, so no redirects, metacopy or index: the upper directory holds only
# whole files, directories, symlinks, whiteouts and opaque directories.
_OVERLAY_OPTIONS = "lowerdir=lower,upperdir=upper,workdir=work"
_OVERLAY_AS_ROOT = _OVERLAY_OPTIONS + ",redirect_dir=nofollow,index=off,metacopy=off,volatile"
_OVERLAY_IN_USERNS = _OVERLAY_OPTIONS + ",userxattr,volatile"
_fallback_said = False


class _Overlay:
    """The scripts' root as one run sees it: an overlay file system with the root as
    its lower layer and an empty upper directory, mounted by the run's first process
    (:data:`_ENTER`) in a mount namespace of its own and bind-mounted as ``/`` by
    bwrap. A bind mount of the root itself would show the root's path on the host in
    the sandbox's ``/proc/self/mountinfo``; the overlay is a file system of its own,
    whose mount shows ``/`` and these options.

    :meth:`finish` (after every process of the run has ended) moves what the run
    wrote from the upper directory into the root, so the root is what a bind mount
    would have left: files, symlinks and directories the run made or changed replace
    the root's (by rename: same owners, modes, times, xattrs and hard links), whiteouts
    delete, opaque directories replace the whole directory, and the directories it
    changed get its owner, mode, xattrs and times. One difference: a file of the root
    with several names that the run changed through one of them is a file of its own
    after the run (overlayfs copies it up alone), as in a container.

    When the overlay cannot be mounted over the root's file system (overlayfs missing,
    or an upper directory it does not support), the run binds the root itself, as
    before, and a warning says that the sandbox sees the root's host path.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        with _homes_lock:  # one run at a time over a root: its directory is taken
            home = _homes.pop(str(root), None)
        if home is None or not _reusable(home, root):
            if home is not None:
                _discard(home)
            home = _new_home(root)
        self.dir = home
        try:
            # "/" in the sandbox is the upper directory's inode: give it the root's looks.
            _copy_meta(str(root), os.lstat(root), str(home / "upper"))
        except BaseException:
            _discard(home)
            raise

    @property
    def merged(self) -> str:
        return str(self.dir / "merged")

    def spec(self) -> dict[str, object]:
        """What :data:`_ENTER` needs to mount it."""
        return {"dir": str(self.dir), "merged": self.merged, "root": str(self.root),
                "userns": not _as_root(), "required": str(self.root) in _required,
                "options": _OVERLAY_AS_ROOT if _as_root() else _OVERLAY_IN_USERNS}

    def finish(self) -> None:
        """Apply the run's changes to the root; keep the overlay's directories, empty,
        for the next run over the same root."""
        global _fallback_said
        try:
            why = (self.dir / "fallback").read_text()
        except OSError:
            why = None
        if why is not None and not _fallback_said:
            _fallback_said = True
            log.warning("maintainer scripts see where their root is on this host: cannot "
                        "mount an overlay over %s (%s); its own bind mount is used",
                        self.root, why.strip())
        kept = False
        try:
            _merge(str(self.dir / "upper"), str(self.root))
            # The next mount needs a work directory without the mark of a volatile mount:
            # moved aside (removing it took ~18 ms a run on this disk: rmdir of
            # directories an overlay used is slow), removed with the overlay's directory.
            spent = self.dir / "spent"
            spent.mkdir(exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.dir / "work" / "work", spent / str(len(os.listdir(spent))))
            if why is not None:
                (self.dir / "fallback").unlink()
            kept = True
        finally:
            if kept:
                with _homes_lock:
                    _homes[str(self.root)] = self.dir
            else:
                _discard(self.dir)


# Roots whose scripts must run through the overlay or not at all (require_overlay).
_required: set[str] = set()


def require_overlay(root: Path) -> None:
    """Scripts over ``root`` run through its overlay or fail (exit 125, "cannot enter the
    sandbox"): no fallback to binding the root itself. For a root whose files are
    shared with another tree (hard links of a kept root, :mod:`suture.oci.rootcache`),
    which a script must never write in place."""
    _required.add(str(root))


# root -> the directory of its overlay (beside it: upper, work, merged, and lower, a
# symlink to the root), kept from one run to the next; it goes with the root's parent.
_homes: dict[str, Path] = {}
_homes_lock = threading.Lock()


def _new_home(root: Path) -> Path:
    home = Path(tempfile.mkdtemp(prefix=".suture-overlay-", dir=root.parent))
    try:
        for name in ("upper", "work", "merged"):
            (home / name).mkdir()
        (home / "lower").symlink_to(root)
    except BaseException:
        _discard(home)
        raise
    return home


def _reusable(home: Path, root: Path) -> bool:
    try:
        return os.readlink(home / "lower") == str(root) and not os.listdir(home / "upper")
    except OSError:
        return False


def _discard(home: Path) -> None:
    try:
        _remove_tree(str(home))
    except OSError as exc:
        log.warning("cannot remove %s: %s", home, exc)


def _with_overlay(cmd: list[str]) -> tuple[list[str], _Overlay | None]:
    """``cmd`` with the root of bwrap's ``--bind @ROOT@... /`` replaced by the mount
    point of a new :class:`_Overlay` over it (or by the root itself, if no overlay can
    be prepared there), and that overlay."""
    for i in range(len(cmd) - 2):
        if cmd[i] == "--bind" and cmd[i + 1].startswith(_ROOT) and cmd[i + 2] == "/":
            root = Path(cmd[i + 1][len(_ROOT):])
            try:
                overlay = _Overlay(root)
            except OSError as exc:
                log.warning("no overlay for maintainer scripts next to %s (%s): they see "
                            "where their root is on this host", root, exc)
                return [*cmd[:i + 1], str(root), *cmd[i + 2:]], None
            return [*cmd[:i + 1], overlay.merged, *cmd[i + 2:]], overlay
        if cmd[i] == "--":
            break
    return cmd, None


def _overlay_xattrs(names: list[str]) -> list[str]:
    return [n for n in names if n.startswith(_OVERLAY_XATTRS)]


def _xattrs(target: str | int) -> dict[str, bytes]:
    """The xattrs of a path (not followed) or descriptor, the overlay's own left out."""
    if isinstance(target, int):
        return {n: os.getxattr(target, n) for n in os.listxattr(target)
                if not n.startswith(_OVERLAY_XATTRS)}
    return {n: os.getxattr(target, n, follow_symlinks=False)
            for n in os.listxattr(target, follow_symlinks=False)
            if not n.startswith(_OVERLAY_XATTRS)}


def _copy_meta(src: str | int, st: os.stat_result, dst: str) -> None:
    """Give directory ``dst`` the owner, mode, xattrs (the overlay's own left out) and
    times of ``src`` (a path or descriptor, whose ``lstat`` is ``st``); what is
    already so is not written again."""
    wanted = _xattrs(src)
    present = set(os.listxattr(dst, follow_symlinks=False))
    for name in present - wanted.keys():
        if not name.startswith(_OVERLAY_XATTRS) and name != "security.selinux":
            os.removexattr(dst, name, follow_symlinks=False)
    for name, value in wanted.items():
        if name not in present or os.getxattr(dst, name, follow_symlinks=False) != value:
            os.setxattr(dst, name, value, follow_symlinks=False)
    now = os.lstat(dst)
    if (now.st_uid, now.st_gid) != (st.st_uid, st.st_gid):
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
        now = os.lstat(dst)
    if now.st_mode != st.st_mode:
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    if (now.st_atime_ns, now.st_mtime_ns) != (st.st_atime_ns, st.st_mtime_ns):
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _remove_tree(path: str) -> None:
    """Remove ``path`` (not followed if a symlink) and everything under it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    if st.st_mode & 0o700 != 0o700:  # overlayfs makes its work directory 000
        os.chmod(path, 0o700)
    stack = [path]
    done: list[str] = []
    while stack:  # iterative: a script may nest directories deeper than Python recurses
        top = stack.pop()
        done.append(top)
        with os.scandir(top) as it:
            for de in it:
                if de.is_dir(follow_symlinks=False):
                    if de.stat(follow_symlinks=False).st_mode & 0o700 != 0o700:
                        os.chmod(de.path, 0o700)
                    stack.append(de.path)
                else:
                    os.unlink(de.path)
    for top in reversed(done):
        os.rmdir(top)


def _is_whiteout(st: os.stat_result, private: list[str]) -> bool:
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return True
    return any(n.endswith(".overlay.whiteout") for n in private) and stat.S_ISREG(st.st_mode)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _merge(upper: str, root: str) -> None:
    """Move what a run left in the overlay's ``upper`` directory into ``root`` (see
    :class:`_Overlay`), leaving ``upper`` empty. The upper directory is walked by
    descriptors opened without following symlinks; in the root (which only this
    process writes), every directory merged into is checked to be one."""
    top = os.open(upper, _DIR_FLAGS)
    # (descriptor, names left, its stat, its place in the root, parent's descriptor, name)
    frames: list[tuple[int, list[str], os.stat_result, str, int | None, str]] = [
        (top, sorted(os.listdir(top), reverse=True), os.fstat(top), root, None, "")]
    try:
        while frames:
            fd, names, st, target_dir, parent, name = frames[-1]
            if not names:  # its children are done: its own metadata, times last
                frames.pop()
                try:
                    _copy_meta(fd, st, target_dir)
                finally:
                    os.close(fd)
                if parent is not None:
                    os.rmdir(name, dir_fd=parent)
                continue
            child = names.pop()
            opened = _merge_one(fd, child, f"{target_dir}/{child}")
            if opened is not None:
                frames.append((opened, sorted(os.listdir(opened), reverse=True),
                               os.fstat(opened), f"{target_dir}/{child}", fd, child))
    finally:
        for fd, *_rest in frames:
            os.close(fd)


def _merge_one(up_fd: int, name: str, target: str) -> int | None:
    """Merge entry ``name`` of upper directory ``up_fd`` into ``target``; a descriptor
    of it if it is a directory to merge into ``target`` entry by entry."""
    st = os.lstat(name, dir_fd=up_fd)
    up = f"/proc/self/fd/{up_fd}/{name}"  # for the xattr calls, which take no dir_fd
    private = _overlay_xattrs(os.listxattr(up, follow_symlinks=False))
    try:
        old: os.stat_result | None = os.lstat(target)
    except FileNotFoundError:
        old = None
    if _is_whiteout(st, private):
        if old is not None:
            _remove_tree(target)
        os.unlink(name, dir_fd=up_fd)
        return None
    if stat.S_ISDIR(st.st_mode):
        opaque = any(n.endswith(".overlay.opaque") and
                     os.getxattr(up, n, follow_symlinks=False) == b"y" for n in private)
        if old is not None and stat.S_ISDIR(old.st_mode) and not opaque:
            return os.open(name, _DIR_FLAGS, dir_fd=up_fd)
    if old is not None and (stat.S_ISDIR(old.st_mode) or stat.S_ISDIR(st.st_mode)):
        _remove_tree(target)
    for n in private:
        os.removexattr(up, n, follow_symlinks=False)
    os.rename(name, target, src_dir_fd=up_fd)
    if stat.S_ISDIR(st.st_mode):
        _scrub(target)
    return None


def _scrub(top: str) -> None:
    """Remove the overlay's xattrs and whiteouts from a directory tree moved out of the
    upper directory whole (one the run made, or an opaque one)."""
    stack = [top]
    while stack:
        here = stack.pop()
        with os.scandir(here) as it:
            for de in it:
                st = de.stat(follow_symlinks=False)
                private = _overlay_xattrs(os.listxattr(de.path, follow_symlinks=False))
                if _is_whiteout(st, private):
                    os.unlink(de.path)
                    continue
                for n in private:
                    os.removexattr(de.path, n, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(de.path)
    # Removing a whiteout changed the times of its directory: none, in practice (overlayfs
    # makes no whiteouts where no lower layer has the name).


# --------------------------------------------------------------------------- limits

@dataclass(frozen=True)
class _Hierarchy:
    controller: str
    version: int
    base: Path  # this process's cgroup in that hierarchy


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, type, super options) of the cgroup file systems."""
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if len(fields) >= 5 and len(rest) >= 3 and rest[0] in ("cgroup", "cgroup2"):
            point = fields[4].replace("\\040", " ")
            found.append((point, rest[0], set(rest[2].split(","))))
    return found


def _own_cgroups() -> dict[str, str]:
    """controller (``""`` for v2) -> this process's cgroup path."""
    paths: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _enable_v2(base: Path, controller: str) -> bool:
    try:
        if controller in (base / "cgroup.subtree_control").read_text().split():
            return True
        if controller not in (base / "cgroup.controllers").read_text().split():
            return False
        (base / "cgroup.subtree_control").write_text(f"+{controller}")
        return True
    except OSError:
        return False


@functools.cache
def _hierarchies() -> tuple[_Hierarchy, ...]:
    """Where a cgroup for one script can be made with each controller (v2 first)."""
    if not _as_root():
        return ()
    own = _own_cgroups()
    found: dict[str, _Hierarchy] = {}
    mounts = _mounts()
    for point, kind, _options in mounts:
        if kind == "cgroup2" and "" in own:
            base = Path(point + own[""])
            for controller in ("pids", "memory"):
                if controller not in found and _enable_v2(base, controller):
                    found[controller] = _Hierarchy(controller, 2, base)
    for point, kind, options in mounts:
        for controller in ("pids", "memory"):
            if kind == "cgroup" and controller in options and controller not in found \
                    and controller in own:
                base = Path(point + own[controller])
                if os.access(base, os.W_OK):
                    found[controller] = _Hierarchy(controller, 1, base)
    hierarchies = tuple(found[c] for c in ("pids", "memory") if c in found)
    for hierarchy in hierarchies:
        _sweep(hierarchy.base)
    return hierarchies


def _sweep(base: Path) -> None:
    """Remove the cgroups that suture processes now gone left under ``base`` (killed
    while a script ran); they are empty, their processes having died with them."""
    try:
        children = [p for p in base.iterdir() if p.name.startswith("suture-")]
    except OSError:
        return
    for child in children:
        pid = child.name.split("-")[1]
        if pid.isdigit() and int(pid) != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            with contextlib.suppress(OSError):
                child.rmdir()


def cgroup_support() -> str:
    """Which of the script limits cgroups enforce here, as a phrase (for the docs and
    logs): e.g. ``pids (cgroup v1), memory (cgroup v1)``, or ``none``."""
    found = _hierarchies()
    return ", ".join(f"{h.controller} (cgroup v{h.version})" for h in found) or "none"


class _Cgroups:
    """The cgroups of one script run (one per hierarchy), with its limits set; the
    process joins them by writing itself into :attr:`procs` before it execs."""

    _counter = 0
    _lock = threading.Lock()

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.made: list[tuple[_Hierarchy, Path]] = []
        with _Cgroups._lock:
            _Cgroups._counter += 1
            name = f"suture-{os.getpid()}-{_Cgroups._counter}"
        for hierarchy in _hierarchies():
            path = hierarchy.base / name
            try:
                path.mkdir()
            except OSError as exc:
                log.debug("no %s cgroup for a script: %s", hierarchy.controller, exc)
                continue
            self.made.append((hierarchy, path))
            try:
                self._set(hierarchy, path)
            except OSError as exc:
                log.debug("cannot limit %s: %s", hierarchy.controller, exc)
                self.made.pop()
                self._rmdir(path)
        self.controllers = {h.controller for h, _ in self.made}

    def _set(self, hierarchy: _Hierarchy, path: Path) -> None:
        if hierarchy.controller == "pids":
            (path / "pids.max").write_text(str(self.limits.processes))
        elif hierarchy.version == 2:
            (path / "memory.max").write_text(str(self.limits.memory))
            with contextlib.suppress(OSError):
                (path / "memory.swap.max").write_text("0")
        else:
            (path / "memory.limit_in_bytes").write_text(str(self.limits.memory))
            with contextlib.suppress(OSError):
                (path / "memory.memsw.limit_in_bytes").write_text(str(self.limits.memory))

    @property
    def procs(self) -> list[str]:
        return [str(path / "cgroup.procs") for _, path in self.made]

    def _events(self, path: Path, name: str) -> dict[str, int]:
        try:
            pairs = (line.split() for line in (path / name).read_text().splitlines())
            return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].isdigit()}
        except OSError:
            return {}

    def hit(self) -> str | None:
        """The limit the script ran into, if any (processes first: a fork bomb)."""
        for hierarchy, path in self.made:
            if hierarchy.controller == "pids" and self._events(path, "pids.events").get("max"):
                return "processes"
        for hierarchy, path in self.made:
            if hierarchy.controller != "memory":
                continue
            if hierarchy.version == 2:
                events = self._events(path, "memory.events")
                if events.get("oom_kill") or events.get("oom"):
                    return "memory"
            else:
                oom = self._events(path, "memory.oom_control")
                if oom.get("oom_kill") or oom.get("under_oom"):
                    return "memory"
        return None

    def kill(self) -> None:
        """SIGKILL whatever is left in the cgroups."""
        for _, path in self.made:
            with contextlib.suppress(OSError, ValueError):
                for pid in (path / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(int(pid), signal.SIGKILL)

    @staticmethod
    def _rmdir(path: Path) -> bool:
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            return False

    def remove(self) -> None:
        for _, path in self.made:
            for attempt in range(60):
                if self._rmdir(path):
                    break
                self.kill()
                # Its last processes are usually gone within a millisecond or two: a
                # fixed 0.1 s here cost a third of the script runs that much each.
                time.sleep(min(0.1, 0.001 * 2 ** attempt))
            else:
                log.warning("cannot remove cgroup %s", path)
        self.made = []


# The first program of every script run: puts back the signals Python ignores, joins
# the run's cgroups, mounts the root's overlay (see _Overlay: in a mount namespace of
# its own, as root in the host's user namespace, else in a user namespace of its own
# that maps the caller to itself; if it cannot, the run binds the root itself), sets
# the rlimits, then execs the sandbox. Exit 125 if it cannot.
_ENTER = ("import json,os,resource,signal,sys\n"
          "spec=json.loads(sys.argv[1])\n"
          "for s in ('SIGPIPE','SIGXFSZ','SIGXFZ'):\n"
          "    if hasattr(signal,s): signal.signal(getattr(signal,s),signal.SIG_DFL)\n"
          "argv=sys.argv[2:]\n"
          "def overlay(ov):\n"
          "    import _ctypes as C\n"  # not ctypes: 10 times slower to import
          "    class I(C._SimpleCData): _type_='i'\n"
          "    class F(C.CFuncPtr): _flags_=C.FUNCFLAG_CDECL|C.FUNCFLAG_USE_ERRNO; _restype_=I\n"
          "    class libc: _handle=C.dlopen(None,os.RTLD_NOW)\n"
          "    def call(r,what):\n"
          "        if r!=0:\n"
          "            e=C.get_errno(); raise OSError(e,'%s: %s'%(what,os.strerror(e)))\n"
          "    unshare,mount=F(('unshare',libc)),F(('mount',libc))\n"
          "    if ov['userns']:\n"
          "        uid,gid=os.getuid(),os.getgid()\n"
          "        call(unshare(0x10020000),'unshare')\n"
          "        for n,t in (('setgroups','deny'),('uid_map','%d %d 1'%(uid,uid)),\n"
          "                    ('gid_map','%d %d 1'%(gid,gid))):\n"
          "            with open('/proc/self/'+n,'w') as f: f.write(t)\n"
          "    else:\n"
          "        call(unshare(0x20000),'unshare')\n"
          "    call(mount(b'none',b'/',None,0x44000,None),'private mounts')\n"
          "    os.chdir(ov['dir'])\n"
          "    call(mount(b'suture',b'merged',b'overlay',0,ov['options'].encode()),\n"
          "         'mount overlay')\n"
          "    os.chdir('/')\n"
          "try:\n"
          "    for p in spec['procs']:\n"
          "        with open(p,'w') as f: f.write(str(os.getpid()))\n"
          "    if spec['overlay']:\n"
          "        try: overlay(spec['overlay'])\n"
          "        except OSError as e:\n"
          "            if spec['overlay'].get('required'): raise\n"
          "            ov=spec['overlay']\n"
          "            argv=[ov['root'] if a==ov['merged'] else a for a in argv]\n"
          "            with open(ov['dir']+'/fallback','w') as f: f.write(str(e))\n"
          "    for name,value in spec['rlimits']:\n"
          "        r=getattr(resource,name); hard=resource.getrlimit(r)[1]\n"
          "        if hard!=resource.RLIM_INFINITY: value=min(value,hard)\n"
          "        resource.setrlimit(r,(value,value))\n"
          "    os.execv(argv[0],argv)\n"
          "except OSError as e:\n"
          "    sys.stderr.write('suture: cannot enter the sandbox: %s\\n' % e); sys.exit(125)\n")


def _entry(cgroups: _Cgroups, limits: Limits, overlay: _Overlay | None = None) -> list[str]:
    rlimits: list[tuple[str, int]] = [("RLIMIT_CORE", 0), ("RLIMIT_FSIZE", limits.file_size),
                                      ("RLIMIT_NOFILE", limits.open_files)]
    if "memory" not in cgroups.controllers:
        rlimits.append(("RLIMIT_AS", limits.memory))
    spec = json.dumps({"procs": cgroups.procs, "rlimits": rlimits,
                       "overlay": overlay.spec() if overlay is not None else None})
    return [sys.executable, "-I", "-S", "-c", _ENTER, spec]


_unlimited_said = False


def _say_unlimited(cgroups: _Cgroups) -> None:
    global _unlimited_said
    if not _unlimited_said and "pids" not in cgroups.controllers:
        _unlimited_said = True
        log.warning("no pids cgroup here: the number of processes of maintainer scripts "
                    "is not limited (memory: %s)",
                    "cgroup" if "memory" in cgroups.controllers else "RLIMIT_AS per process")


# --------------------------------------------------------------------------- running

class _Output:
    """Drains the script's pipes, keeping the tails, and kills it past the output limit."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.total = 0
        self.too_much = False
        self.tails = {"stdout": bytearray(), "stderr": bytearray()}
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._drain, args=(stream, name), daemon=True)
                        for name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr))]
        for t in self.threads:
            t.start()

    def _drain(self, stream: IO[bytes] | None, name: str) -> None:
        if stream is None:
            return
        fd = stream.fileno()
        tail = self.tails[name]
        while chunk := os.read(fd, 1 << 16):
            with self._lock:
                self.total += len(chunk)
                if self.total > MAX_SCRIPT_OUTPUT and not self.too_much:
                    self.too_much = True
                    _kill_group(self.proc)
            tail += chunk
            del tail[:-_TAIL]
            if log.isEnabledFor(logging.DEBUG):
                log.debug("script %s: %s", name, chunk[-1000:].decode("utf-8", "replace"))

    def join(self) -> None:
        for t in self.threads:
            t.join(10)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _last_line(data: bytes | bytearray, default: str) -> str:
    lines = [ln.strip() for ln in bytes(data).decode("utf-8", "replace").splitlines()]
    lines = [ln for ln in lines if ln]
    return lines[-1][:300] if lines else default


_SIGXFSZ = getattr(signal, "SIGXFSZ", 25)


def _limit_hit(cgroups: _Cgroups, code: int, tails: dict[str, bytearray],
               limits: Limits) -> tuple[str, str] | None:
    """(limit, phrase) for the limit that stopped a failed script, if one did."""
    hit = cgroups.hit()
    if hit == "processes":
        return hit, f"hit the limit of {limits.processes} processes"
    if hit == "memory":
        return hit, f"hit the memory limit of {limits.memory >> 20} MiB"
    text = bytes(tails["stderr"] + tails["stdout"])
    if code in (-_SIGXFSZ, 128 + _SIGXFSZ) or b"File too large" in text:
        return "file size", f"hit the file size limit of {limits.file_size >> 20} MiB"
    if b"No space left on device" in text:
        return "tmpfs", (f"ran out of space (/tmp, /run and /dev/shm hold "
                         f"{limits.tmpfs >> 20} MiB each)")
    return None


def run_one(job: ScriptJob, cmd: list[str], env: dict[str, str], timeout: float) -> None:
    """Run one sandboxed command under :data:`LIMITS`; raise :class:`ScriptError`
    unless it exits 0."""
    limits = LIMITS
    cgroups = _Cgroups(limits)
    _say_unlimited(cgroups)
    overlay: _Overlay | None = None
    try:
        with _descriptors(cmd) as (filled, fds):
            filled, overlay = _with_overlay(filled)
            _run(job, [*_entry(cgroups, limits, overlay), *filled], env, timeout, fds,
                 cgroups, limits)
    except SandboxUnavailable as exc:
        raise ScriptError(job, exit_code=None, detail=str(exc), how="could not start") \
            from None
    finally:
        cgroups.kill()
        cgroups.remove()
        if overlay is not None:
            _finish(job, overlay)


def _finish(job: ScriptJob, overlay: _Overlay) -> None:
    """Apply what the run wrote in its overlay to the root (its processes all gone)."""
    try:
        overlay.finish()
    except (OSError, RecursionError) as exc:
        raise ScriptError(job, exit_code=None, detail=str(exc),
                          how="left changes that could not be applied to the root") from None


def _run(job: ScriptJob, cmd: list[str], env: dict[str, str], timeout: float,
         fds: tuple[int, ...], cgroups: _Cgroups, limits: Limits) -> None:
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, cwd="/",
                                start_new_session=True, umask=0o022, pass_fds=fds)
    except OSError as exc:
        raise ScriptError(job, exit_code=None, detail=str(exc), how="could not start") from None
    output = _Output(proc)
    # A timer kills it at the deadline while this thread blocks in waitpid: Popen.wait
    # with a timeout polls with sleeps of up to 50 ms, which a run of many short
    # scriptlets pays each time (measured: most of bench/rpm.py's script stage).
    expired = threading.Event()

    def expire() -> None:
        if proc.returncode is None:
            expired.set()
            _kill_group(proc)

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        try:
            code = proc.wait()
        finally:
            timer.cancel()
        timed_out = expired.is_set()
    finally:
        _kill_group(proc)  # whatever it left behind in its session
        cgroups.kill()
        output.join()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    last = _last_line(output.tails["stderr"], "") or _last_line(output.tails["stdout"],
                                                                 "no output")
    if timed_out:
        raise ScriptError(job, exit_code=None, detail=last, how=f"timed out after {timeout:g} s")
    if output.too_much:
        raise ScriptError(job, exit_code=None, detail=last,
                          how=f"wrote more than {MAX_SCRIPT_OUTPUT} bytes of output")
    if code == 0:
        return
    limit = _limit_hit(cgroups, code, output.tails, limits)
    what = (f"exited with code {code}" if code > 0 else f"was killed by signal {-code}")
    if limit is not None:
        raise ScriptError(job, exit_code=code if code > 0 else None, detail=last,
                          how=f"{what} ({limit[1]})", limit=limit[0])
    if code < 0:
        raise ScriptError(job, exit_code=None, detail=last, how=what)
    raise ScriptError(job, exit_code=code, detail=last)
