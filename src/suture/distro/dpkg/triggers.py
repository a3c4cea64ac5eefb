"""dpkg triggers: the ``triggers`` control file, the interest state, and one run's bookkeeping.

A package declares ``interest``/``interest-await``/``interest-noawait NAME``
(a trigger it wants to hear about) and ``activate``/``activate-await``/
``activate-noawait NAME`` (a trigger it fires whenever it is unpacked or
configured) in its ``triggers`` control file (deb-triggers(5)). A NAME that
starts with ``/`` is a *file trigger*: any package unpacking or removing that
path, or anything below it, activates it.

dpkg keeps who is interested in what under ``/var/lib/dpkg/triggers/``: the
file ``File`` (``<path> <package>[/noawait]`` a line) for file triggers, and one
file per explicit trigger name listing the interested packages. They are
rewritten when a package with interests is unpacked: its old interests are
removed and its new ones appended.

:class:`TriggerRun` replays what dpkg records during one ``dpkg --install``:
which packages have which triggers pending, in which order the deferred queue
processes them, and the argument each ``postinst triggered`` call gets. Pure:
no files are read or written here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from suture.errors import PackageDBError

__all__ = [
    "Interest",
    "TriggerDirectives",
    "TriggerRun",
    "format_explicit_interests",
    "format_file_interests",
    "is_file_trigger",
    "parse_explicit_interests",
    "parse_file_interests",
    "parse_triggers",
    "parse_unincorp",
]

_INTEREST = {"interest": False, "interest-await": False, "interest-noawait": True}
_ACTIVATE = {"activate": False, "activate-await": False, "activate-noawait": True}


@dataclass(frozen=True, slots=True)
class TriggerDirectives:
    """A parsed ``triggers`` control file: ``(name, noawait)`` pairs, in file order."""

    interests: tuple[tuple[str, bool], ...] = ()
    activates: tuple[tuple[str, bool], ...] = ()


def _check_name(name: str, source: str, line: int) -> None:
    if not name or any(c <= " " or c >= "\x7f" for c in name):
        raise PackageDBError(f"line {line}: invalid trigger name {name!r}", path=source)
    if name.startswith("/") and ("//" in name or (name.endswith("/") and name != "/")):
        raise PackageDBError(f"line {line}: invalid file trigger name {name!r}", path=source)


def parse_triggers(data: bytes | str, *, source: str = "triggers") -> TriggerDirectives:
    """Parse a ``triggers`` control file (deb-triggers(5)).

    ``#`` starts a comment; blank lines are ignored. An unknown directive, a
    directive without exactly one trigger name, or an invalid name raises
    :class:`PackageDBError` naming ``source`` (dpkg refuses them too).
    """
    text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
    interests: list[tuple[str, bool]] = []
    activates: list[tuple[str, bool]] = []
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if len(words) != 2:
            raise PackageDBError(f"line {number}: want '<directive> <trigger>': {raw!r}",
                                 path=source)
        directive, name = words
        _check_name(name, source, number)
        if directive in _INTEREST:
            interests.append((name, _INTEREST[directive]))
        elif directive in _ACTIVATE:
            activates.append((name, _ACTIVATE[directive]))
        else:
            raise PackageDBError(f"line {number}: unknown directive {directive!r}",
                                 path=source)
    return TriggerDirectives(tuple(interests), tuple(activates))


@dataclass(frozen=True, slots=True)
class Interest:
    """One registered interest: ``owner`` is the package as dpkg names it there
    (``bar``, or ``libx:amd64`` for a ``Multi-Arch: same`` package)."""

    trigger: str
    owner: str
    noawait: bool = False

    def owner_field(self) -> str:
        return self.owner + ("/noawait" if self.noawait else "")


def _owner(word: str) -> tuple[str, bool]:
    if word.endswith("/noawait"):
        return word[: -len("/noawait")], True
    if word.endswith("/await"):
        return word[: -len("/await")], False
    return word, False


def parse_file_interests(data: bytes | str, *, source: str = "triggers/File") -> list[Interest]:
    """Parse dpkg's ``triggers/File``: ``<absolute path> <package>[/noawait]`` lines, in order."""
    text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
    out: list[Interest] = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        path, _, owner = line.rstrip().partition(" ")
        if not path.startswith("/") or not owner or " " in owner:
            raise PackageDBError(f"line {number}: syntax error: {line!r}", path=source)
        name, noawait = _owner(owner)
        out.append(Interest(path, name, noawait))
    return out


def parse_explicit_interests(trigger: str, data: bytes | str, *,
                             source: str = "triggers/<name>") -> list[Interest]:
    """Parse one explicit-trigger interest file: a ``<package>[/noawait]`` a line."""
    text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
    out: list[Interest] = []
    for number, line in enumerate(text.split("\n"), 1):
        word = line.strip()
        if not word:
            continue
        if " " in word:
            raise PackageDBError(f"line {number}: syntax error: {line!r}", path=source)
        name, noawait = _owner(word)
        out.append(Interest(trigger, name, noawait))
    return out


def parse_unincorp(data: bytes | str, *, source: str = "triggers/Unincorp"
                   ) -> list[tuple[str, tuple[str, ...]]]:
    """Parse dpkg's ``triggers/Unincorp``, what ``dpkg-trigger`` recorded and dpkg has
    not taken in yet: ``<trigger> <awaiter>...`` a line (``-`` for no awaiter)."""
    text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
    out: list[tuple[str, tuple[str, ...]]] = []
    for number, line in enumerate(text.split("\n"), 1):
        words = line.split()
        if not words:
            continue
        _check_name(words[0], source, number)
        if len(words) < 2:
            raise PackageDBError(f"line {number}: a trigger without an awaiter: {line!r}",
                                 path=source)
        out.append((words[0], tuple(w for w in words[1:] if w != "-")))
    return out


def format_file_interests(interests: Iterable[Interest]) -> bytes:
    """The text of ``triggers/File`` for ``interests`` (in the order given)."""
    return "".join(f"{i.trigger} {i.owner_field()}\n" for i in interests).encode(
        "utf-8", "surrogateescape")


def format_explicit_interests(interests: Iterable[Interest]) -> bytes:
    """The text of one explicit-trigger interest file."""
    return "".join(f"{i.owner_field()}\n" for i in interests).encode("utf-8", "surrogateescape")


def is_file_trigger(name: str) -> bool:
    return name.startswith("/")


@dataclass
class TriggerRun:
    """dpkg's trigger bookkeeping over one run, as a small state machine.

    ``interests`` are the registered interests (file and explicit); ``installed``
    the owners (in the interest-file spelling) whose status lets them receive
    activations: dpkg records an activation only for a package that is
    installed (or already has triggers pending). Call :meth:`unpacking` and
    :meth:`configured` as the run proceeds, :meth:`activate` and
    :meth:`activate_path` for each activation, and :meth:`process` at the end:
    it gives ``(owner, names)`` in the order dpkg's deferred queue runs them,
    ``names`` being the ``postinst triggered`` argument (most recent
    activation first, as dpkg lists them).
    """

    interests: list[Interest]
    installed: set[str]
    pending: dict[str, list[str]] = field(default_factory=dict)
    queue: list[str] = field(default_factory=list)
    _by_path: dict[str, list[Interest]] = field(default_factory=dict)
    _by_name: dict[str, list[Interest]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.set_interests(self.interests)

    def set_interests(self, interests: list[Interest]) -> None:
        """Replace the registered interests (a package was unpacked with new ones)."""
        self.interests = list(interests)
        self._by_path, self._by_name = {}, {}
        for interest in self.interests:
            table = self._by_path if is_file_trigger(interest.trigger) else self._by_name
            table.setdefault(interest.trigger, []).append(interest)

    def _record(self, owner: str, trigger: str) -> None:
        if owner not in self.installed:
            return  # dpkg: "not interested then" (unpacked, half-configured...)
        names = self.pending.setdefault(owner, [])
        if trigger not in names:
            names.insert(0, trigger)
        if owner not in self.queue:
            self.queue.append(owner)

    def activate(self, trigger: str) -> None:
        """Activate an explicit trigger (or a file trigger by its exact name)."""
        if is_file_trigger(trigger):
            interests: Iterable[Interest] = reversed(self._by_path.get(trigger, ()))
        else:
            interests = self._by_name.get(trigger, ())
        for interest in interests:
            self._record(interest.owner, interest.trigger)

    def activate_path(self, path: str) -> None:
        """A path (absolute) was unpacked or removed: activate interests in it and its parents."""
        node = path.rstrip("/")
        while node:
            # dpkg keeps each path's interests newest first (the reverse of File's order).
            for interest in reversed(self._by_path.get(node, ())):
                self._record(interest.owner, interest.trigger)
            node = node.rpartition("/")[0]

    def unpacking(self, owner: str) -> None:
        """``owner`` leaves the installed state (its pending triggers are dropped)."""
        self.installed.discard(owner)
        self.pending.pop(owner, None)

    def configured(self, owner: str) -> None:
        """``owner`` is installed again (its ``postinst configure`` ran)."""
        self.installed.add(owner)

    def take(self) -> tuple[str, str] | None:
        """The deferred queue's next ``(owner, "name1 name2")`` for a ``postinst
        triggered`` (its triggers are then no longer pending), or None when empty."""
        while self.queue:
            owner = self.queue.pop(0)
            names = self.pending.pop(owner, None)
            if names:
                return owner, " ".join(names)
        return None

    def process(self, *, limit: int = 1000) -> list[tuple[str, str]]:
        """Run the deferred queue: ``(owner, "name1 name2")`` for each ``postinst triggered``."""
        out: list[tuple[str, str]] = []
        while len(out) < limit and (item := self.take()) is not None:
            out.append(item)
        return out

