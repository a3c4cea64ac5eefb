"""The sandbox maintainer scripts run in, and running one command inside it.

Which sandbox (:func:`preflight`, :func:`choose_sandbox`), the command line that
enters it (:func:`command`), and running one job to completion with its time and
output bounded (:func:`run_one`). It knows no package family: what to run, in
which order and with which environment is the caller's business.

Sandboxes
    ``bwrap`` (bubblewrap): the root is bind-mounted read-write as ``/``, with a
    fresh ``/dev``, ``/proc``, and tmpfs ``/tmp`` and ``/run``; new IPC, PID, UTS,
    network (no network at all) and cgroup namespaces; an empty environment. As
    root, no user namespace is made (scripts must be able to ``chown`` to any id)
    and the capabilities are cut to those a ``docker build`` step has, minus
    ``CAP_MKNOD``. As a normal user, a user namespace maps the caller to root.

    ``chroot`` (root only, the fallback): ``chroot ROOT SCRIPT``. Weaker isolation:
    no namespaces (the script shares the host's network, PIDs and IPC, with all of
    root's capabilities), and nothing is mounted, so there is no ``/proc`` and no
    ``/dev`` in the root (scripts that need them fail). Mounting nothing also means
    the temporary root can always be removed without touching the host.

    ``none``: nothing runs; every job is reported as ``scripts disabled``.

    ``auto``: ``bwrap`` if it works here (probed once per process), else ``chroot``
    when running as root, else nothing runs and every job says why.

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
import logging
import os
import platform
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import IO

from suture.distro.scripts import ScriptJob
from suture.errors import SutureError, UsageError
from suture.oci.image import Image
from suture.patch.emulation import emulator_for

log = logging.getLogger(__name__)

SANDBOXES = ("auto", "bwrap", "chroot", "none")
SCRIPT_TIMEOUT = 300.0
MAX_SCRIPT_OUTPUT = 16 << 20  # stdout + stderr of one script
_TAIL = 4096
# What a `docker build` step may do, without CAP_MKNOD (no device nodes in layers).
_CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_NET_RAW",
         "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
         "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE")
_HOST_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
              "i386": "386", "i486": "386", "i586": "386", "i686": "386", "armv5l": "arm",
              "armv6l": "arm", "armv7l": "arm", "armv8l": "arm", "ppc64le": "ppc64le",
              "s390x": "s390x", "riscv64": "riscv64", "mips64": "mips64le",
              "loongarch64": "loong64"}


class ScriptError(SutureError):
    """A maintainer script that failed: non-zero exit, killed, timed out or too verbose.

    ``exit_code`` is ``None`` when the script did not exit by itself; ``detail`` is
    the last line of its stderr (or stdout), or what went wrong.
    """

    def __init__(self, job: ScriptJob, *, exit_code: int | None, detail: str,
                 how: str | None = None) -> None:
        what = how or (f"exited with code {exit_code}" if exit_code is not None
                       else "did not finish")
        super().__init__(f"maintainer script {job.describe()} {what}: {detail}",
                         hint="nothing was written; --sandbox none patches without "
                              "running maintainer scripts (and reports them)")
        self.package = job.package
        self.script = job.script
        self.exit_code = exit_code
        self.detail = detail


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


def _namespace_args() -> list[str]:
    args = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session"]
    if _as_root():
        args += ["--cap-drop", "ALL"]
        for cap in _CAPS:
            args += ["--cap-add", cap]
    else:
        args += ["--unshare-user", "--uid", "0", "--gid", "0"]
    return args


@functools.cache
def probe_bwrap() -> str | None:
    """``None`` if bubblewrap can make our sandbox here, else why not (probed once)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bwrap is not installed"
    true = shutil.which("true") or "/bin/true"
    cmd = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
           *_namespace_args(), "--", true]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap does not start: {exc}"
    if proc.returncode != 0:
        return "bwrap does not work here: " + _last_line(proc.stderr.encode(), "no output")
    return None


def choose_sandbox(requested: str, *, quiet: bool = False) -> tuple[str | None, str]:
    """The sandbox to use, or ``None`` and why no script can run."""
    chroot_ok = _as_root() and shutil.which("chroot") is not None
    if requested == "bwrap":
        why = probe_bwrap()
        if why is not None:
            raise UsageError(f"sandbox 'bwrap' is not usable here: {why}",
                             hint="use --sandbox auto, chroot (as root) or none")
        return "bwrap", ""
    if requested == "chroot":
        if not chroot_ok:
            raise UsageError("sandbox 'chroot' needs root and the chroot command",
                             hint="use --sandbox auto, bwrap or none")
        return "chroot", ""
    why = probe_bwrap()
    if why is None:
        return "bwrap", ""
    if chroot_ok:
        if not quiet:
            log.warning("%s; running maintainer scripts under chroot (no namespaces, "
                        "no /proc or /dev)", why)
        return "chroot", ""
    return None, f"no sandbox available ({why}; chroot needs root)"



def command(kind: str, root: Path, env: dict[str, str], argv: list[str]) -> list[str]:
    if kind == "chroot":
        return [shutil.which("chroot") or "chroot", str(root), *argv]
    cmd = [shutil.which("bwrap") or "bwrap", "--bind", str(root), "/", "--dev", "/dev",
           "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/run", *_namespace_args(),
           "--chdir", "/", "--clearenv"]
    for name, value in sorted(env.items()):
        cmd += ["--setenv", name, value]
    return [*cmd, "--", *argv]


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


def run_one(job: ScriptJob, cmd: list[str], env: dict[str, str], timeout: float) -> None:
    """Run one sandboxed command; raise :class:`ScriptError` unless it exits 0."""
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, cwd="/",
                                start_new_session=True, umask=0o022)
    except OSError as exc:
        raise ScriptError(job, exit_code=None, detail=str(exc), how="could not start") from None
    output = _Output(proc)
    timed_out = False
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        code = proc.wait()
    finally:
        _kill_group(proc)  # whatever it left behind in its session
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
    if code < 0:
        raise ScriptError(job, exit_code=None, detail=last, how=f"was killed by signal {-code}")
    if code != 0:
        raise ScriptError(job, exit_code=code, detail=last)
