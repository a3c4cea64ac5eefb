"""copa scanner plugins: ``copa-NAME REPORT`` prints a v1alpha1/v1alpha2 document.

copa runs the executable ``copa-NAME`` found on ``PATH`` with the report file as its
one argument and reads the document it prints. suture does the same, so existing
plugins work unchanged, but reads standard output only (copa mixes in standard
error), bounds the output and the run time, and turns every failure into one
:class:`ReportError` line.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

from suture.reports.copa import WHAT as copa_what
from suture.reports.copa import from_document as copa_from_document
from suture.reports.document import MAX_REPORT, load_json
from suture.reports.model import ReportError

__all__ = ["PLUGIN_PREFIX", "plugin_executable", "run_plugin"]

PLUGIN_PREFIX = "copa-"
# copa's own rule for a scanner name, so that it is safe in an executable's name.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_STDERR_TAIL = 64 << 10
_CHUNK = 64 << 10


def plugin_executable(name: str, search_path: str | None) -> Path:
    """Where ``copa-NAME`` is on ``search_path`` (``os.pathsep``-separated, as
    ``PATH``; ``None`` means :data:`os.defpath`). Raises :class:`ReportError` for an
    invalid name or when no executable of that name is found."""
    if not _NAME.fullmatch(name):
        raise ReportError(f"invalid scanner name {name!r}: expected letters, digits, '-' "
                          "and '_', starting with a letter or digit")
    program = PLUGIN_PREFIX + name
    found = shutil.which(program, path=os.defpath if search_path is None else search_path)
    if found is None:
        raise ReportError(f"scanner plugin {program} not found on PATH",
                          hint=f"install {program}, or use --scanner trivy, grype or native")
    return Path(found)


def run_plugin(name: str, report_path: Path, *, search_path: str | None,
               timeout: float | None, max_output: int = MAX_REPORT) -> bytes:
    """Run ``copa-NAME REPORT`` and return what it printed: a copa ``v1alpha1`` or
    ``v1alpha2`` document (checked here, so a plugin's bad output is reported as the
    plugin's; parse it with ``parse_report(data, "native")``).

    The executable is looked up on ``search_path`` only (see
    :func:`plugin_executable`); it inherits this process's environment, gets no
    standard input, and runs in its own session (so a Ctrl-C on the terminal reaches
    suture, not the plugin). However this function is left (the plugin's exit, a
    timeout, or an exception raised in this thread by a signal handler: Ctrl-C, the
    CLI's ``--timeout`` alarm, SIGTERM), the plugin's whole process group is killed
    first. ``timeout`` is in seconds (``None``: no limit; the CLI passes what is
    left of the run's ``--timeout``); standard output is bounded by ``max_output``
    bytes.

    Raises :class:`ReportError`: the plugin is missing, cannot be started, exits
    non-zero or by a signal (with the last line it wrote to standard error), runs
    past ``timeout``, prints more than ``max_output`` bytes, or prints something
    that is not a v1alpha1/v1alpha2 document.
    """
    program = plugin_executable(name, search_path)
    label = f"scanner plugin {PLUGIN_PREFIX}{name}"
    if not report_path.is_file():
        raise ReportError(f"report {report_path}: no such file")
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        proc = subprocess.Popen(
            [str(program), str(report_path)], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        raise ReportError(f"{label} cannot be run: {exc.strerror or exc}") from None
    assert proc.stdout is not None and proc.stderr is not None
    out = _Collector(proc.stdout, max_output + 1, keep="head")
    err = _Collector(proc.stderr, _STDERR_TAIL, keep="tail")
    timed_out = False
    try:
        # Standard output ends (or passes its bound), or time runs out; then the exit.
        out.thread.join(_left(deadline))
        if out.size <= max_output:
            try:
                proc.wait(_left(deadline))
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        if proc.returncode is None:
            _kill(proc)
            proc.wait()
        # Killing the session closes the pipes; a process that left the session may
        # hold them open, so do not wait for the readers forever.
        out.thread.join(5)
        err.thread.join(5)
        if not out.thread.is_alive() and not err.thread.is_alive():
            proc.stdout.close()
            proc.stderr.close()
    if timed_out:
        raise ReportError(f"{label} timed out after {round(timeout or 0, 1):g} s")
    if out.size > max_output:
        raise ReportError(f"{label} printed more than {max_output} bytes")
    if proc.returncode != 0:
        why = (f"was killed by signal {-proc.returncode}" if proc.returncode < 0
               else f"failed with exit status {proc.returncode}")
        last = err.last_line()
        raise ReportError(f"{label} {why}" + (f": {last}" if last else ""))
    data = out.data()
    try:
        copa_from_document(load_json(data, f"{label} output"))
    except ReportError as exc:
        message = exc.message
        if not message.startswith(label):
            message = f"{label}: {message.removeprefix(copa_what + ': ')}"
        raise ReportError(message) from None
    return data


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """End the plugin and everything in its session (it was started as the leader)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


class _Collector:
    """Reads a pipe on a thread, keeping at most about ``limit`` bytes: the first ones
    (``head``: stops reading there) or the last ones (``tail``: reads to the end)."""

    def __init__(self, stream: IO[bytes], limit: int, *, keep: str) -> None:
        self.fd, self.limit, self.keep = stream.fileno(), limit, keep
        self.chunks: list[bytes] = []
        self.size = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                chunk = os.read(self.fd, _CHUNK)
                if not chunk:
                    return
                self.chunks.append(chunk)
                self.size += len(chunk)
                if self.keep == "head" and self.size >= self.limit:
                    return
                while self.keep == "tail" and self.size - len(self.chunks[0]) >= self.limit:
                    self.size -= len(self.chunks.pop(0))
        except OSError:
            return

    def data(self) -> bytes:
        return b"".join(self.chunks)

    def last_line(self) -> str:
        """The last non-empty line, printable characters only, at most 300 of them."""
        text = self.data().decode("utf-8", "replace")
        for line in reversed(text.splitlines()):
            clean = "".join(c for c in line if c.isprintable()).strip()
            if clean:
                return clean[:300]
        return ""
