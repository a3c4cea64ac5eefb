"""Progress events: what the library tells a front end while it works.

The library never prints (DESIGN rule 8); it calls a :data:`Progress` callback with
:class:`Event` values, and the CLI draws them (bars on a terminal, plain lines,
JSON lines, or nothing). Any layer may import this module: it imports nothing.

Transfers (downloads and uploads) report through a :class:`Transfer`, which
throttles byte events so a fast stream does not flood the front end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

STAGE, DOWNLOAD, UPLOAD = "stage", "download", "upload"


@dataclass(frozen=True)
class Event:
    """One thing worth telling.

    ``kind``: ``stage`` (a step of the work begins: ``message`` says which),
    ``download`` or ``upload`` (bytes moved for ``name``: ``done`` of ``total``,
    ``total`` None when unknown; ``finished`` on the last event of that transfer).
    ``scope``: the platform the event belongs to, or ``""`` for the whole run.
    """

    kind: str
    message: str = ""
    name: str = ""
    done: int = 0
    total: int | None = None
    finished: bool = False
    scope: str = ""

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"event": self.kind}
        if self.scope:
            out["platform"] = self.scope
        if self.kind == STAGE:
            out["message"] = self.message
        else:
            out.update(name=self.name, done=self.done, total=self.total,
                       finished=self.finished)
        return out


Progress = Callable[[Event], None]


class Transfer:
    """Counts the bytes of one download or upload and reports them, at most every
    ``interval`` seconds, plus once when :meth:`finish` is called (a transfer that
    never finishes, a 304 answer say, may have said nothing at all). Thread-safe;
    does nothing when ``progress`` is None."""

    def __init__(self, progress: Progress | None, kind: str, name: str, total: int | None,
                 *, interval: float = 0.2, clock: Callable[[], float] = time.monotonic) -> None:
        self._progress = progress
        self._kind = kind
        self._name = name
        self._total = total
        self._interval = interval
        self._clock = clock
        self._done = 0
        self._last = clock()
        self._lock = threading.Lock()
        self._finished = False

    def advance(self, n: int) -> None:
        if self._progress is None:
            return
        with self._lock:
            self._done += n
            now = self._clock()
            if now - self._last < self._interval:
                return
            self._last = now
            done = self._done
        self._progress(Event(self._kind, name=self._name, done=done, total=self._total))

    def restart(self) -> None:
        """The transfer starts over from byte 0 (a server that ignored a Range)."""
        with self._lock:
            self._done = 0

    def finish(self) -> None:
        if self._progress is None:
            return
        with self._lock:
            if self._finished:
                return
            self._finished = True
            done = self._done
        self._progress(Event(self._kind, name=self._name, done=done,
                             total=self._total if self._total is not None else done,
                             finished=True))
