"""Which packages to install so that some installed packages end up newer: dpkg's rules, pure.

:class:`Resolver` takes what an image has installed (its dpkg ``status``), every
candidate its repositories offer (any suite, any number of Packages indexes),
the native architecture and the foreign ones, and answers
:meth:`Resolver.resolve` for a set of targets with a :class:`Resolution`: the
packages to install (each at one version), and, per target, why it was left
alone or why it cannot be updated.

Contract of a resolution, checked over the image's installed packages with the
changes applied:

* every target (all of the installed packages of that name) moves to its newest
  candidate; a target given with a minimum version whose newest candidate is
  lower fails instead;
* every package that was changed or added has its ``Pre-Depends`` and
  ``Depends`` met (versions, alternatives, virtual packages through
  ``Provides``, multi-arch qualifiers), and so does every installed package
  whose relations mention a changed package (a relation that was already
  unmet, or a ``Breaks``/``Conflicts`` that already held, before any change
  is left as it was: mending a broken image is not an update's job);
* no ``Breaks`` or ``Conflicts`` a change brings about holds;
* ``Multi-Arch: same`` packages installed for several architectures keep one
  version across them;
* a package is never downgraded and never removed; a package that is not
  installed is only added when a dependency needs it; a held package
  (``Status: hold ...``) is never changed.

How it decides (greedy with a one-step look-ahead, no backtracking,
deterministic): a dependency that is not met is fixed, in this order of
preference, by upgrading an installed (or already added) package to a version
that meets it; for an installed package that was not changed, by upgrading
that package itself to its newest candidate; by adding a package that is not
installed (per alternative, in order: the package of that name, then the
providers of the virtual package, the owner's architecture first). Newest
candidates come before older ones (apt only ever considers the newest, its
"candidate"; an older one is a fallback), and the first option whose own
dependencies can be met at all, and which breaks no held package, is taken. A
``Breaks``/``Conflicts`` is fixed by upgrading the broken package to its
highest candidate outside the relation, else the breaking one to its highest
candidate that no longer breaks it. Anything else is a :class:`ResolveFailure`
naming the target and the reason; failures are values, never exceptions. All
targets are first resolved together; when that fails, each target is resolved
on its own (in name order, on top of the targets already resolved), so one
target that cannot be updated does not stop the others.

Then, as apt 2.x does, each installed package built from the same source
package as a change, whose newest candidate comes from the same source version,
is upgraded too when that resolves (and quietly left alone otherwise).

Candidates: for one package name, architecture and version the first entry
given wins (give the indexes in order of preference). ``Architecture: all``
packages count as the native architecture's. Candidates whose relation fields
do not parse are never chosen.
"""

from __future__ import annotations

import heapq
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from suture.distro.dpkg.control import InstalledPackage, Relation, parse_relations
from suture.distro.dpkg.repo import PackageEntry
from suture.distro.dpkg.version import version_key
from suture.errors import PackageFormatError

__all__ = ["Change", "Resolution", "ResolveFailure", "Resolver", "resolve"]

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (package name, architecture with "all" read as the native one)

_DEP_FIELDS = ("Pre-Depends", "Depends")
_NEG_FIELDS = ("Breaks", "Conflicts")
_FIELDS = (*_DEP_FIELDS, *_NEG_FIELDS, "Provides")
_SOURCE = re.compile(r"(\S+)(?:\s*\(\s*(\S+)\s*\))?")
_PROVIDED_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9+._-]*)")


@dataclass(frozen=True)
class Change:
    """One package to install: ``name`` at ``to_version``, replacing ``from_version``.

    ``from_version`` is ``None`` for a package that is not installed yet.
    ``architecture`` is the candidate's own (``amd64``, ``i386``, ``all``).
    ``requested``: a target (else a dependency of one). ``needed_by`` says, for
    a package not requested, which package and relation pulled it in.
    """

    name: str
    architecture: str
    from_version: str | None
    to_version: str
    entry: PackageEntry
    requested: bool
    needed_by: str = ""


@dataclass(frozen=True)
class ResolveFailure:
    """A target that cannot be updated. ``package`` is the target as given.

    ``kind``: ``unavailable`` (no candidate reaches the minimum version asked
    for), ``held`` (a held package would have to change), ``unsatisfiable``
    (a dependency no candidate meets, or a ``Breaks``/``Conflicts`` nothing
    newer resolves).
    """

    package: str
    message: str
    kind: str = "unsatisfiable"


@dataclass(frozen=True)
class Resolution:
    """What :meth:`Resolver.resolve` decided; every tuple is sorted.

    ``changes``: the packages to install, by (name, architecture).
    ``failures``: targets that cannot be updated (nothing of theirs is in
    ``changes`` unless another target needs it). ``held``: targets left alone
    because they are held. ``up_to_date``: targets already at their newest
    candidate (or at the minimum asked for). ``not_installed``: targets the
    image does not have.
    """

    changes: tuple[Change, ...] = ()
    failures: tuple[ResolveFailure, ...] = ()
    held: tuple[str, ...] = ()
    up_to_date: tuple[str, ...] = ()
    not_installed: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failures


class _Pkg:
    """One version of one package, installed or candidate, with its relations parsed lazily."""

    __slots__ = ("_rels", "arch", "entry", "held", "installed", "key", "multi_arch", "name",
                 "version", "vkey")

    def __init__(self, key: Key, name: str, version: str, arch: str, multi_arch: str, *,
                 entry: PackageEntry | None = None,
                 installed: InstalledPackage | None = None) -> None:
        self.key = key
        self.name = name
        self.version = version
        self.vkey = version_key(version)
        self.arch = arch
        self.multi_arch = (multi_arch or "no").lower()
        self.entry = entry
        self.installed = installed
        self.held = (installed is not None and installed.status is not None
                     and installed.status.want == "hold")
        self._rels: dict[str, list[list[Relation]]] | None = None

    def _field_text(self, name: str) -> str:
        if self.entry is not None:
            return self.entry.paragraph.get(name) or ""
        assert self.installed is not None
        return self.installed.paragraph.get(name) or ""

    def _parse(self) -> dict[str, list[list[Relation]]]:
        if self._rels is None:
            rels: dict[str, list[list[Relation]]] = {}
            for name in _FIELDS:
                try:
                    rels[name] = parse_relations(self._field_text(name))
                except PackageFormatError as exc:
                    if self.entry is not None:
                        raise
                    log.warning("%s %s: ignoring its %s: %s", self.name, self.version, name,
                                exc.message)
                    rels[name] = []
            self._rels = rels
        return self._rels

    @property
    def usable(self) -> bool:
        """The relation fields parse (a candidate whose fields do not is never chosen)."""
        try:
            self._parse()
        except PackageFormatError as exc:
            log.warning("candidate %s %s ignored: %s", self.name, self.version, exc.message)
            self._rels = None
            return False
        return True

    def rel(self, name: str) -> list[list[Relation]]:
        return self._parse()[name]

    @property
    def provides(self) -> list[Relation]:
        return [r for group in self.rel("Provides") for r in group]

    def label(self, native: str) -> str:
        arch = "" if self.arch in (native, "all") else f":{self.arch}"
        return f"{self.name}{arch} {self.version}"


def _group_text(group: list[Relation]) -> str:
    return " | ".join(str(r) for r in group)


class _Abort(Exception):
    """A transaction that cannot be completed (internal; becomes a ResolveFailure)."""

    def __init__(self, message: str, kind: str = "unsatisfiable") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


class _Txn:
    """The installed set with some changes applied; changes only ever move a package up."""

    def __init__(self, resolver: Resolver, changes: Mapping[Key, _Pkg],
                 why: Mapping[Key, str]) -> None:
        self.r = resolver
        self.changes: dict[Key, _Pkg] = dict(changes)
        self.why: dict[Key, str] = dict(why)
        self._queue: list[Key] = []
        self._queued: set[Key] = set()

    def get(self, key: Key) -> _Pkg | None:
        got = self.changes.get(key)
        return got if got is not None else self.r._installed.get(key)

    def enqueue(self, keys: Iterable[Key]) -> None:
        for key in keys:
            if key not in self._queued:
                self._queued.add(key)
                heapq.heappush(self._queue, key)

    def set(self, pkg: _Pkg, why: str) -> None:
        old = self.get(pkg.key)
        assert old is None or pkg.vkey > old.vkey, "a change only moves a package up"
        self.changes[pkg.key] = pkg
        if pkg.key not in self.why:
            self.why[pkg.key] = why
        r = self.r
        r._index_reverse(pkg)
        names = {pkg.name, *(p.name for p in pkg.provides)}
        if old is not None:
            names.update(p.name for p in old.provides)
        dirty: set[Key] = {pkg.key}
        for name in names:
            dirty.update(r._reverse.get(name, ()))
        dirty.update(k for k in r._keys_by_name.get(pkg.name, ()) if self.get(k) is not None)
        self.enqueue(sorted(dirty))

    def run(self) -> None:
        while self._queue:
            key = heapq.heappop(self._queue)
            self._queued.discard(key)
            self.r._check(self, key)


class Resolver:
    """The installed packages and the candidates of one image, indexed once.

    ``installed``: every stanza of the image's dpkg database (packages whose
    files are not on disk, such as ``config-files``, count as not installed).
    ``candidates``: every entry of every Packages index of the image's
    repositories. ``architecture``: dpkg's native architecture;
    ``foreign_architectures``: the ones added with ``dpkg --add-architecture``.
    Candidates of other architectures are ignored.
    """

    def __init__(self, installed: Iterable[InstalledPackage], candidates: Iterable[PackageEntry],
                 *, architecture: str, foreign_architectures: Iterable[str] = ()) -> None:
        self.native = architecture
        self.foreign = tuple(sorted(set(foreign_architectures) - {architecture}))
        arches = {architecture, "all", *self.foreign}
        self._installed: dict[Key, _Pkg] = {}
        self._keys_by_name: dict[str, set[Key]] = {}
        self._providers: dict[str, set[Key]] = {}
        self._reverse: dict[str, set[Key]] = {}
        self._reverse_done: set[int] = set()
        for ip in installed:
            if not ip.has_files or not ip.version:
                continue
            key = self._key(ip.name, ip.architecture or architecture)
            pkg = _Pkg(key, ip.name, ip.version, ip.architecture or architecture,
                       ip.multi_arch, installed=ip)
            self._installed[key] = pkg
            self._add_name(pkg)
            self._index_reverse(pkg)
        self._base = _Txn(self, {}, {})  # the installed set as it is
        # Entries per key, in the order given; turned into candidates when first asked for.
        self._entries: dict[Key, list[PackageEntry]] = {}
        self._built: dict[Key, list[_Pkg]] = {}
        self._installed_by_source: dict[str, list[Key]] | None = None
        for entry in candidates:
            if entry.architecture not in arches:
                continue
            key = self._key(entry.package, entry.architecture)
            entries = self._entries.get(key)
            if entries is None:
                self._entries[key] = [entry]
                self._keys_by_name.setdefault(entry.package, set()).add(key)
            else:
                entries.append(entry)
            if entry.provides:
                for item in entry.provides.split(","):
                    name = _PROVIDED_NAME.match(item)
                    if name is not None:
                        self._providers.setdefault(name[1], set()).add(key)

    def _cands(self, key: Key) -> list[_Pkg]:
        """The candidates of ``key`` newer than what is installed, highest version first
        (the first entry given wins for a version)."""
        built = self._built.get(key)
        if built is None:
            current = self._installed.get(key)
            versions: dict[str, _Pkg] = {}
            for entry in self._entries.get(key, ()):
                try:
                    pkg = _Pkg(key, entry.package, entry.version, entry.architecture,
                               entry.multi_arch, entry=entry)
                except PackageFormatError as exc:
                    log.warning("candidate %s ignored: %s", entry.package, exc.message)
                    continue
                if (current is None or pkg.vkey > current.vkey) and pkg.vkey not in versions:
                    versions[pkg.vkey] = pkg
            built = sorted(versions.values(), key=lambda p: p.vkey, reverse=True)
            self._built[key] = built
        return built

    # ------------------------------------------------------------ indexes

    def _key(self, name: str, arch: str) -> Key:
        return (name, self.native if arch == "all" else arch)

    def _add_name(self, pkg: _Pkg) -> None:
        self._keys_by_name.setdefault(pkg.name, set()).add(pkg.key)
        for p in pkg.provides:
            self._providers.setdefault(p.name, set()).add(pkg.key)

    def _index_reverse(self, pkg: _Pkg) -> None:
        """Remember which names ``pkg``'s relations mention (monotone: stale entries only
        cause extra checks)."""
        if id(pkg) in self._reverse_done:
            return
        self._reverse_done.add(id(pkg))
        for field in (*_DEP_FIELDS, *_NEG_FIELDS):
            for group in pkg.rel(field):
                for rel in group:
                    self._reverse.setdefault(rel.name, set()).add(pkg.key)

    def _related(self, name: str) -> list[Key]:
        """Keys of packages called ``name`` or providing ``name``, installed or candidate."""
        return sorted(self._keys_by_name.get(name, set()) | self._providers.get(name, set()))

    def _owner_arch(self, pkg: _Pkg) -> str:
        return self.native if pkg.arch == "all" else pkg.arch

    def _meets(self, rel: Relation, pkg: _Pkg, owner: _Pkg) -> bool:
        return rel.satisfied_by(pkg.name, pkg.version, pkg.provides, architecture=pkg.arch,
                                multi_arch=pkg.multi_arch, native=self._owner_arch(owner))

    @staticmethod
    def _hits(rel: Relation, pkg: _Pkg) -> bool:
        """A ``Breaks``/``Conflicts`` relation matches ``pkg`` (unqualified: any architecture)."""
        if rel.arch not in (None, "any") and pkg.arch != rel.arch:
            return False
        return rel.satisfied_by(pkg.name, pkg.version, pkg.provides)

    # ------------------------------------------------------------ queries

    def installed(self, name: str) -> list[tuple[str, str]]:
        """``(architecture, version)`` of each installed package called ``name``, sorted."""
        return sorted((p.arch, p.version) for k, p in self._installed.items() if k[0] == name)

    def held(self, name: str) -> bool:
        """Some installed package called ``name`` is held (``Status: hold ...``)."""
        return any(p.held for k, p in self._installed.items() if k[0] == name)

    def newest(self, name: str) -> str | None:
        """The version every installed ``name`` can reach: the lowest, over its installed
        architectures, of the newest candidate or installed version; ``None`` if not installed."""
        keys = [k for k in self._keys_by_name.get(name, ()) if k in self._installed]
        if not keys:
            return None
        tops = []
        for key in keys:
            cands = [c for c in self._cands(key) if c.usable]
            tops.append(cands[0] if cands else self._installed[key])
        return min(tops, key=lambda p: p.vkey).version

    # ------------------------------------------------------------ checks and fixes

    def _check(self, txn: _Txn, key: Key) -> None:
        pkg = txn.get(key)
        if pkg is None:
            return
        unchanged = key not in txn.changes
        self._check_siblings(txn, pkg)
        for field in _DEP_FIELDS:
            for group in pkg.rel(field):
                if self._met(txn, group, pkg):
                    continue
                if unchanged and not self._met(self._base, group, pkg):
                    continue  # broken before any change: not ours to mend
                self._fix_depends(txn, pkg, field, group)
                txn.enqueue([key])  # check the rest (or the new version) again
                return
        for field in _NEG_FIELDS:
            for group in pkg.rel(field):
                for rel in group:
                    for k in self._related(rel.name):
                        other = txn.get(k)
                        if (other is None or k == key or other.name == pkg.name
                                or not self._hits(rel, other)):
                            continue
                        if unchanged and (before := self._installed.get(k)) is not None and (
                                self._hits(rel, before)):
                            continue  # held before any change: not ours to mend
                        self._fix_breaks(txn, pkg, field, rel, other)
                        txn.enqueue([key])
                        return

    def _met(self, txn: _Txn, group: list[Relation], owner: _Pkg) -> bool:
        for rel in group:
            for k in self._related(rel.name):
                other = txn.get(k)
                if other is not None and self._meets(rel, other, owner):
                    return True
        return False

    def _check_siblings(self, txn: _Txn, pkg: _Pkg) -> None:
        """``Multi-Arch: same``: every installed architecture of a package at one version."""
        for k in sorted(self._keys_by_name.get(pkg.name, ())):
            other = txn.get(k)
            if other is None or k == pkg.key or "same" not in (pkg.multi_arch, other.multi_arch):
                continue
            if pkg.key not in txn.changes and k not in txn.changes:
                continue  # skewed before any change
            if other.vkey == pkg.vkey:
                continue
            low, high = (other, pkg) if other.vkey < pkg.vkey else (pkg, other)
            if low.held:
                raise _Abort(f"{low.label(self.native)} is held, but Multi-Arch: same needs it at "
                             f"{high.version} like {high.label(self.native)}", "held")
            match = [c for c in self._cands(low.key) if c.vkey == high.vkey]
            if not match or not match[0].usable:
                raise _Abort(f"Multi-Arch: same needs {low.name}:{low.key[1]} at {high.version} "
                             f"like {high.label(self.native)}, but no candidate has that version")
            txn.set(match[0], f"{high.label(self.native)} (Multi-Arch: same)")

    def _fix_depends(self, txn: _Txn, pkg: _Pkg, field: str, group: list[Relation]) -> None:
        me = pkg.label(self.native)
        why = f"{me} ({field}: {_group_text(group)})"
        held_block: _Pkg | None = None
        options: list[tuple[_Pkg, str]] = []
        # (a) Upgrade an installed (or already added) package to a version that meets it:
        # newest candidates first (apt's candidate), then lower ones.
        upgrades: list[list[_Pkg]] = [[], []]
        for rel in group:
            for k in self._related(rel.name):
                current = txn.get(k)
                if current is None:
                    continue
                for i, cand in enumerate(self._cands(k)):
                    if cand.vkey <= current.vkey:
                        break
                    if self._meets(rel, cand, pkg) and cand.usable:
                        if current.held:
                            held_block = held_block or current
                            break
                        upgrades[min(i, 1)].append(cand)
                        if i:
                            break
        options += [(c, why) for c in upgrades[0] + upgrades[1]]
        # (c) An installed package left behind by a change: upgrade it to its newest.
        if pkg.key not in txn.changes and not pkg.held:
            newer = [c for c in self._cands(pkg.key) if c.usable]
            if newer:
                options.append((newer[0], f"{me} no longer has its {field} "
                                          f"'{_group_text(group)}' met"))
        # (b) Add a package that is not installed: per alternative a real package, then the
        # providers of a virtual one; the owner's architecture, then the native one first.
        additions: list[list[_Pkg]] = [[], []]
        owner_arch = self._owner_arch(pkg)
        for rel in group:
            for virtual in (False, True):
                found: list[tuple[int, Key, int, _Pkg]] = []
                for k in self._related(rel.name):
                    if txn.get(k) is not None or (k[0] != rel.name) != virtual:
                        continue
                    for i, cand in enumerate(self._cands(k)):
                        if self._meets(rel, cand, pkg) and cand.usable:
                            prefer = 0 if k[1] == owner_arch else 1 if k[1] == self.native else 2
                            found.append((prefer, k, min(i, 1), cand))
                            break
                found.sort(key=lambda o: (o[0], o[1]))
                for _, _, newest, cand in found:
                    additions[newest].append(cand)
        options += [(c, why) for c in additions[0] + additions[1]]
        if options:
            chosen = next((o for o in options if self._feasible(txn, o[0])), options[0])
            txn.set(*chosen)
            return
        if held_block is not None:
            raise _Abort(f"{me} needs '{_group_text(group)}' ({field}), but "
                         f"{held_block.label(self.native)} is held", "held")
        if pkg.held:
            raise _Abort(f"{me} is held and its {field} '{_group_text(group)}' would no longer "
                         f"be met", "held")
        raise _Abort(f"{me} needs '{_group_text(group)}' ({field}), which no available "
                     f"package meets{self._describe(txn, group)}")

    def _feasible(self, txn: _Txn, pkg: _Pkg) -> bool:
        """A look one step ahead: each of ``pkg``'s dependencies is met now or by some
        candidate a change may reach, and it breaks no held package."""
        for field in _DEP_FIELDS:
            for group in pkg.rel(field):
                ok = False
                for rel in group:
                    for k in self._related(rel.name):
                        current = pkg if k == pkg.key else txn.get(k)
                        if current is not None and self._meets(rel, current, pkg):
                            ok = True
                        elif current is None or (not current.held and k != pkg.key):
                            ok = any(c.vkey > current.vkey if current else True
                                     for c in self._cands(k) if self._meets(rel, c, pkg))
                        if ok:
                            break
                    if ok:
                        break
                if not ok:
                    return False
        for field in _NEG_FIELDS:
            for group in pkg.rel(field):
                for rel in group:
                    for k in self._related(rel.name):
                        other = txn.get(k)
                        if (other is not None and other.held and k != pkg.key
                                and other.name != pkg.name and self._hits(rel, other)):
                            return False
        return True

    def _describe(self, txn: _Txn, group: list[Relation]) -> str:
        """Where each package named in ``group`` stands: installed, changed to, newest."""
        bits = []
        for rel in group:
            for k in sorted(self._keys_by_name.get(rel.name, ())):
                before = self._installed.get(k)
                after = txn.changes.get(k)
                newest = self._cands(k)[:1]
                parts = [f"installed {before.version}" if before is not None
                         else "not installed"]
                if after is not None:
                    parts.append(f"going to {after.version}")
                top = after or before
                if newest and (top is None or newest[0].vkey > top.vkey):
                    parts.append(f"newest candidate {newest[0].version}")
                name = k[0] if k[1] == self.native else f"{k[0]}:{k[1]}"
                bits.append(f"{name} " + ", ".join(parts))
        return f" ({'; '.join(bits)})" if bits else ""

    def _fix_breaks(self, txn: _Txn, pkg: _Pkg, field: str, rel: Relation, other: _Pkg) -> None:
        verb = "breaks" if field == "Breaks" else "conflicts with"
        me, them = pkg.label(self.native), other.label(self.native)
        why = f"{me} ({field}: {rel})"
        if not other.held:
            for cand in self._cands(other.key):
                if cand.vkey <= other.vkey:
                    break
                if not self._hits(rel, cand) and cand.usable:
                    txn.set(cand, why)
                    return
        if not pkg.held:
            for cand in self._cands(pkg.key):
                if cand.vkey <= pkg.vkey:
                    break
                if cand.usable and not any(self._hits(r, other) for f in _NEG_FIELDS
                                           for g in cand.rel(f) for r in g):
                    txn.set(cand, f"{me} {verb} {them}")
                    return
        if other.held or pkg.held:
            held = other if other.held else pkg
            raise _Abort(f"{me} {verb} {them} ({field}: {rel}), and "
                         f"{held.label(self.native)} is held", "held")
        raise _Abort(f"{me} {verb} {them} ({field}: {rel}), and no newer version of "
                     f"{other.name} or {pkg.name} resolves it")

    # ------------------------------------------------------------ resolving

    def _attempt(self, base: _Txn, seeds: list[_Pkg], why: str = "requested") -> _Txn:
        txn = _Txn(self, base.changes, base.why)
        for pkg in seeds:
            current = txn.get(pkg.key)
            if current is None or pkg.vkey > current.vkey:
                txn.set(pkg, why)
            else:
                txn.enqueue([pkg.key])
        txn.run()
        return txn

    def _source(self, pkg: _Pkg) -> tuple[str, str]:
        """(source package name, sort key of the source version) of a candidate."""
        assert pkg.entry is not None
        m = _SOURCE.fullmatch(pkg.entry.source.strip()) if pkg.entry.source else None
        if m is None:
            return pkg.name, pkg.vkey
        return m[1], version_key(m[2]) if m[2] else pkg.vkey

    def _by_source(self, txn: _Txn) -> _Txn:
        """Also upgrade the installed packages built from the same source as a change, when
        their newest candidate comes from that same source version (as apt 2.x does); one at
        a time, each only if it resolves, and never a held one."""
        if self._installed_by_source is None:
            self._installed_by_source = {}
            for key in sorted(self._installed):
                newer = self._cands(key)
                if newer:
                    self._installed_by_source.setdefault(self._source(newer[0])[0], []).append(key)
        tried: set[Key] = set()
        while True:
            todo: list[tuple[_Pkg, _Pkg]] = []
            for key in sorted(txn.changes):
                changed = txn.changes[key]
                source = self._source(changed)
                for other in self._installed_by_source.get(source[0], ()):
                    if other in txn.changes or other in tried or self._installed[other].held:
                        continue
                    newest = [c for c in self._cands(other) if c.usable][:1]
                    if newest and self._source(newest[0]) == source:
                        tried.add(other)
                        todo.append((newest[0], changed))
            if not todo:
                return txn
            for sibling, changed in todo:
                if sibling.key in txn.changes:
                    continue
                try:
                    txn = self._attempt(txn, [sibling],
                                        f"same source as {changed.label(self.native)}")
                except _Abort as exc:
                    log.debug("not upgrading %s with its source: %s", sibling.name, exc.message)

    def resolve(self, targets: Mapping[str, str | None] | None = None, *,
                by_source: bool = True) -> Resolution:
        """Resolve ``targets`` (``{name: minimum version or None}``; ``None``: every installed
        package that has a newer candidate).

        A target name covers every installed architecture of that name;
        ``name:arch`` names one. With a minimum, a target already at or above it
        is up to date (even if something newer exists) and one whose newest
        candidate is below it fails with kind ``unavailable``. A held target
        with something to do is reported in ``held``, whatever its minimum.
        With ``targets=None`` only packages with a newer candidate count as
        targets (``up_to_date`` stays empty).

        ``by_source``: once the targets are resolved, each installed package
        built from the same source package as a change, whose newest candidate
        comes from the same source version, is upgraded too when that resolves
        (apt 2.x's ``APT::Get::Upgrade-By-Source-Package``); one that does not
        resolve is left as it is, without a failure.
        """
        up_to_date: list[str] = []
        not_installed: list[str] = []
        held: list[str] = []
        failures: list[ResolveFailure] = []
        wanted: dict[str, list[_Pkg]] = {}  # target -> its packages at their newest candidate
        names: dict[str, str | None] = (
            {k[0]: None for k in self._installed} if targets is None else dict(targets))
        for target in sorted(names):
            minimum = names[target]
            keys = self._target_keys(target)
            if not keys:
                not_installed.append(target)
                continue
            below = [k for k in keys if minimum is None
                     or version_key(minimum) > self._installed[k].vkey]
            tops = [newer[0] for k in below
                    if (newer := [c for c in self._cands(k) if c.usable])]
            if not below or (minimum is None and not tops):
                if targets is not None:
                    up_to_date.append(target)
                continue
            if any(self._installed[k].held for k in below):
                held.append(target)
                continue
            if minimum is not None:
                reach = {p.key: p for p in tops}
                short = [k for k in below
                         if k not in reach or reach[k].vkey < version_key(minimum)]
                if short:
                    newest = reach[short[0]] if short[0] in reach else self._installed[short[0]]
                    failures.append(ResolveFailure(
                        target, f"fixed version {minimum} not available, newest candidate is "
                                f"{newest.version}", "unavailable"))
                    continue
            wanted[target] = tops

        empty = _Txn(self, {}, {})
        try:
            txn = self._attempt(empty, [p for t in sorted(wanted) for p in wanted[t]])
            done = set(wanted)
        except _Abort:
            txn, done = empty, set()
            for target in sorted(wanted):
                try:
                    txn = self._attempt(txn, wanted[target])
                    done.add(target)
                except _Abort as exc:
                    failures.append(ResolveFailure(target, exc.message, exc.kind))
        if by_source:
            txn = self._by_source(txn)
        requested = {p.key for t in done for p in wanted[t]}
        changes = []
        for key in sorted(txn.changes):
            pkg = txn.changes[key]
            assert pkg.entry is not None
            before = self._installed.get(key)
            is_req = key in requested
            changes.append(Change(
                name=pkg.name, architecture=pkg.arch,
                from_version=before.version if before is not None else None,
                to_version=pkg.version, entry=pkg.entry, requested=is_req,
                needed_by="" if is_req else txn.why.get(key, "")))
        return Resolution(tuple(changes), tuple(sorted(failures, key=lambda f: f.package)),
                          tuple(held), tuple(up_to_date), tuple(not_installed))

    def _target_keys(self, target: str) -> list[Key]:
        name, _, arch = target.partition(":")
        keys = sorted(k for k in self._keys_by_name.get(name, ()) if k in self._installed)
        if arch:
            keys = [k for k in keys if k == self._key(name, arch)]
        return keys


def resolve(installed: Iterable[InstalledPackage], candidates: Iterable[PackageEntry],
            targets: Mapping[str, str | None] | None, *, architecture: str,
            foreign_architectures: Iterable[str] = (), by_source: bool = True) -> Resolution:
    """:meth:`Resolver.resolve` on a new :class:`Resolver` (see the module's contract)."""
    return Resolver(installed, candidates, architecture=architecture,
                    foreign_architectures=foreign_architectures).resolve(
                        targets, by_source=by_source)
