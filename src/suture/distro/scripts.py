"""What a package family asks to have run after its files are unpacked.

Families do not run anything: they describe maintainer-script work as
:class:`ScriptJob` values, in order, and the patch stage runs them in a sandbox
over the image root when it can, or reports each one it could not run.

Some package managers decide what to run next from what the last script did
(dpkg incorporates the triggers a script activated with ``dpkg-trigger`` and
processes them before it is done). Such a family hands over a
:class:`ScriptSequence`: the runner asks it for the next job after each one,
giving it the root's files as the scripts left them (:class:`RootFiles`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Staged:
    """A file that is at ``path`` only while one job runs: ``data`` (with ``mode``),
    or a copy of the host file ``source`` (a verified package in the cache, say), or
    nothing at all when both are None. Whatever was at ``path`` before is put back
    afterwards, so staging leaves no trace in the result."""

    path: str
    data: bytes | None
    mode: int = 0o644
    source: str | None = None


@dataclass(frozen=True)
class ScriptJob:
    """One script invocation, as the package manager would make it.

    ``path`` is where the script lives in the patched root (for dpkg,
    ``var/lib/dpkg/info/<pkg>.postinst``), ``args`` its arguments (for example
    ``("configure", "<old version>")`` or ``("triggered", "ldconfig")``).
    ``interpreter``: the command line that runs it, the script's path then appended
    (rpm runs a scriptlet as ``/bin/sh <file> <args>``, its interpreter taken from the
    package header); empty: the script is executed itself (``#!``, else ``/bin/sh``).
    ``staged``: files as they are while this job runs (the package manager's
    state at that moment: an old script not yet replaced, a control area being
    installed), removed or put back as they were once it is done.
    """

    package: str
    script: str  # preinst | postinst | prerm | postrm | triggered
    path: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    staged: tuple[Staged, ...] = ()
    interpreter: tuple[str, ...] = ()

    def describe(self) -> str:
        args = self.args[1:] if self.args[:1] == (self.script,) else self.args
        return f"{self.package} {self.script} {' '.join(args)}".strip()


class RootFiles(Protocol):
    """The root the scripts run in, as the jobs so far left it (paths are relative,
    resolved inside the root)."""

    def read(self, path: str, limit: int = 16 << 20) -> bytes | None:
        """The contents of the regular file at ``path``, or None when there is none
        (or it is larger than ``limit``)."""
        ...

    def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Replace (or create) the regular file at ``path``."""
        ...


class ScriptSequence(Protocol):
    """Jobs decided while they run. The runner calls :meth:`next_job` until it gives
    None, running each job before asking again, then :meth:`finish` once."""

    def next_job(self, root: RootFiles) -> ScriptJob | None:
        """The next job, given the root after the previous one (or before the first)."""
        ...

    def finish(self, root: RootFiles) -> None:
        """All jobs ran: bring the package manager's own state files up to date."""
        ...


class FixedSequence:
    """A :class:`ScriptSequence` of jobs known in advance."""

    def __init__(self, jobs: Sequence[ScriptJob]) -> None:
        self._jobs = list(jobs)
        self._next = 0

    def next_job(self, root: RootFiles) -> ScriptJob | None:
        del root
        if self._next >= len(self._jobs):
            return None
        self._next += 1
        return self._jobs[self._next - 1]

    def finish(self, root: RootFiles) -> None:
        del root
