"""Which packages an apk image gets: targets, their dependencies, and what stops them.

The :class:`Resolver` works on the image's installed packages, the candidates of
its repositories (already filtered to the image's architectures) and its
``world``. A candidate is allowed for a name when it comes from an untagged
repository or from one tagged with a tag the name is pinned to (``name@tag`` in
``world``, the installed record's ``s:``, or a pinned package it is a dependency
of), and when its version meets every ``world`` constraint on that name. A
package is never downgraded.

:meth:`Resolver.resolve` upgrades each target to its newest allowed candidate,
then closes over dependencies until every package of the result has its ``D:``
met (by name, or by a ``p:`` provide: ``so:``, ``cmd:``, ``pc:``...), and no
``!`` conflict of any package matches another. An unmet dependency is met, in
turn, by upgrading the package that has the name, or a package providing it; by
upgrading the installed package whose dependency broke; or by installing a new
package (by name first, then the provider with the highest ``k:`` priority). A
target whose closure cannot be completed is dropped with everything it pulled
in and reported as a failure; the other targets go ahead. ``install_if``
packages are not added. Versions are ordered as apk-tools 3 orders them, or as
apk-tools 2 does with ``apk2`` (:func:`suture.distro.apk.version.apk2_order`).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from suture.distro.apk.deps import Dependency
from suture.distro.apk.index import IndexEntry
from suture.distro.apk.installed import InstalledPackage
from suture.distro.apk.version import compare_versions, version_key_for

__all__ = ["Change", "Resolution", "Resolver"]

MAX_ROUNDS = 2_000_000  # package checks in one resolution: a bound, never reached


@dataclass(frozen=True)
class _Pkg:
    name: str
    version: str
    identity: str
    depends: tuple[Dependency, ...]
    provides: tuple[Dependency, ...]
    entry: IndexEntry | None = None  # None: the installed version

    def provides_dep(self, dep: Dependency, apk2: bool = False) -> bool | None:
        """True/False when this package has the dependency's name (by name or provide)
        and meets / misses it; None when it is irrelevant to it."""
        if dep.name == self.name:
            return dep.satisfied_by(self.name, self.version, identity=self.identity,
                                    apk2=apk2)
        for p in self.provides:
            if p.name == dep.name:
                return dep.satisfied_by(p.name, p.version, apk2=apk2)
        return None


def _from_installed(p: InstalledPackage) -> _Pkg:
    return _Pkg(p.name, p.version, p.identity, p.depends, p.provides)


def _from_entry(e: IndexEntry) -> _Pkg:
    return _Pkg(e.name, e.version, e.identity, e.depends, e.provides, e)


@dataclass(frozen=True)
class Change:
    """One package to install: ``from_version`` None when it is new. ``requested``: a
    target (else a dependency); ``cause``: the target it was resolved for."""

    name: str
    from_version: str | None
    entry: IndexEntry
    requested: bool
    cause: str

    @property
    def to_version(self) -> str:
        return self.entry.version


@dataclass
class Resolution:
    changes: list[Change] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (target, why)
    held: list[tuple[str, str]] = field(default_factory=list)  # (target, detail)
    up_to_date: list[str] = field(default_factory=list)
    not_installed: list[str] = field(default_factory=list)


class _Unresolvable(Exception):
    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause
        self.message = message


class _State:
    """The package set being resolved, with its indexes kept current: which packages
    have or provide each name, which depend on (or conflict with) each name, and which
    still need their dependencies checked (smallest name first, for determinism)."""

    def __init__(self, final: dict[str, _Pkg], apk2: bool = False) -> None:
        self.final = final
        self.apk2 = apk2
        self._holders: dict[str, set[str]] = {}
        self._dependents: dict[str, set[str]] = {}
        self._queue: list[str] = []
        self._queued: set[str] = set()
        for pkg in final.values():
            self._index(pkg, add=True)

    @staticmethod
    def _names(pkg: _Pkg | None) -> set[str]:
        if pkg is None:
            return set()
        return {pkg.name, *(p.name for p in pkg.provides)}

    def _index(self, pkg: _Pkg, *, add: bool) -> None:
        for name in self._names(pkg):
            bucket = self._holders.setdefault(name, set())
            (bucket.add if add else bucket.discard)(pkg.name)
        for dep in pkg.depends:
            bucket = self._dependents.setdefault(dep.name, set())
            (bucket.add if add else bucket.discard)(pkg.name)

    def _enqueue(self, name: str) -> None:
        if name not in self._queued:
            self._queued.add(name)
            heapq.heappush(self._queue, name)

    def put(self, pkg: _Pkg) -> None:
        """Make ``pkg`` the package of its name; what it affects is checked again."""
        old = self.final.get(pkg.name)
        if old is not None:
            self._index(old, add=False)
        self.final[pkg.name] = pkg
        self._index(pkg, add=True)
        self._enqueue(pkg.name)
        for name in self._names(old) | self._names(pkg):
            for owner in self._dependents.get(name, ()):
                self._enqueue(owner)

    def next(self) -> str | None:
        if not self._queue:
            return None
        name = heapq.heappop(self._queue)
        self._queued.discard(name)
        return name

    def _have(self, name: str) -> list[_Pkg]:
        return [self.final[n] for n in sorted(self._holders.get(name, ()))]

    def unmet(self, owner: str) -> list[Dependency]:
        """The dependencies of ``owner`` not met, and its conflicts that match."""
        out = []
        for dep in self.final[owner].depends:
            if dep.conflict:
                positive = Dependency(dep.name, dep.mask, dep.version)
                if any(o.name != owner and o.provides_dep(positive, self.apk2)
                       for o in self._have(dep.name)):
                    out.append(dep)
            elif not any(o.provides_dep(dep, self.apk2) for o in self._have(dep.name)):
                out.append(dep)
        return out

    def holders(self, dep: Dependency) -> list[str]:
        """Packages that have ``dep``'s name (or provide it) without meeting it."""
        return [o.name for o in self._have(dep.name) if o.provides_dep(dep, self.apk2) is False]

    def clashing(self, owner: str, dep: Dependency) -> list[str]:
        positive = Dependency(dep.name, dep.mask, dep.version)
        return [o.name for o in self._have(dep.name)
                if o.name != owner and o.provides_dep(positive, self.apk2)]


class Resolver:
    def __init__(self, installed: Sequence[InstalledPackage], candidates: Sequence[IndexEntry],
                 world: Sequence[Dependency] = (), *, apk2: bool = False) -> None:
        self._apk2 = apk2
        self._installed = {p.name: p for p in installed}
        self._world = [d for d in world if not d.conflict]
        self._pins: dict[str, set[str]] = {}
        for d in self._world:
            if d.tag:
                self._pins.setdefault(d.name, set()).add(d.tag)
        for pkg in installed:
            if pkg.tag:
                self._pins.setdefault(pkg.name, set()).add(pkg.tag)
        self._baseline: set[tuple[str, Dependency]] | None = None
        self._by_name: dict[str, list[IndexEntry]] = {}
        self._by_provide: dict[str, list[IndexEntry]] = {}
        for e in candidates:
            self._by_name.setdefault(e.name, []).append(e)
            for p in e.provides:
                self._by_provide.setdefault(p.name, []).append(e)
        key = version_key_for(apk2)
        for entries in (*self._by_name.values(), *self._by_provide.values()):
            entries.sort(key=lambda e: (key(e.version), -e.order), reverse=True)

    # ------------------------------------------------------------------ queries
    def installed(self, name: str) -> str | None:
        pkg = self._installed.get(name)
        return pkg.version if pkg is not None else None

    def installed_package(self, name: str) -> InstalledPackage | None:
        return self._installed.get(name)

    def _tag_ok(self, entry: IndexEntry, pins: Iterable[str] = ()) -> bool:
        return not entry.tag or entry.tag in self._pins.get(entry.name, set()) or \
            entry.tag in set(pins)

    def _world_ok(self, entry: IndexEntry) -> bool:
        return all(d.satisfied_by(entry.name, entry.version, identity=entry.identity,
                                  apk2=self._apk2)
                   for d in self._world if d.name == entry.name)

    def allowed(self, name: str, pins: Iterable[str] = ()) -> list[IndexEntry]:
        """Candidates of ``name`` it may go to, newest first."""
        pins = tuple(pins)
        return [e for e in self._by_name.get(name, ())
                if self._tag_ok(e, pins) and self._world_ok(e)]

    def newest(self, name: str) -> str | None:
        """The newest version ``name`` may go to (its installed one if none is newer)."""
        have = self.installed(name)
        for e in self.allowed(name):
            if have is None or compare_versions(e.version, have, apk2=self._apk2) > 0:
                return e.version
        return have

    def held(self, name: str) -> str | None:
        """Why ``world`` keeps ``name`` below its newest candidate, or None."""
        have = self.installed(name)
        tagged = [e for e in self._by_name.get(name, ()) if self._tag_ok(e)]
        if not tagged or (have is not None and
                          compare_versions(tagged[0].version, have, apk2=self._apk2) <= 0):
            return None
        if self._world_ok(tagged[0]):
            return None
        rules = " ".join(str(d) for d in self._world if d.name == name)
        return f"/etc/apk/world pins {rules}"

    def series(self, name: str) -> list[str]:
        """Other package names built from the same origin that are not installed (a
        renamed series such as ``libcrypto1.1`` -> ``libcrypto3``)."""
        pkg = self._installed.get(name)
        if pkg is None:
            return []
        origin = pkg.origin
        found = {e.name for entries in self._by_name.values() for e in entries
                 if e.origin == origin and e.name != name and e.name not in self._installed}
        return sorted(found)

    # ------------------------------------------------------------------ resolution
    def resolve(self, targets: Mapping[str, str | None] | None) -> Resolution:
        """Resolve ``targets`` (name -> lowest acceptable version, or None for any newer
        one); ``None``: every installed package that has a newer allowed candidate."""
        result = Resolution()
        wanted: dict[str, IndexEntry] = {}
        names = sorted(self._installed) if targets is None else sorted(targets)
        for name in names:
            have = self.installed(name)
            if have is None:
                result.not_installed.append(name)
                continue
            minimum = None if targets is None else targets[name]
            newer = [e for e in self.allowed(name)
                     if compare_versions(e.version, have, apk2=self._apk2) > 0]
            if not newer or (minimum is not None and
                             compare_versions(newer[0].version, minimum, apk2=self._apk2) < 0):
                why = self.held(name)
                if why is not None:
                    result.held.append((name, why))
                elif not newer and targets is not None:
                    result.up_to_date.append(name)
                elif newer:
                    result.failures.append((name, f"newest candidate {newer[0].version} is "
                                                  f"below {minimum}"))
                continue
            wanted[name] = newer[0]
        failed: dict[str, str] = {}
        for _ in range(len(wanted) + 1):
            try:
                changes = self._close({n: e for n, e in wanted.items() if n not in failed})
            except _Unresolvable as exc:
                if exc.cause in wanted and exc.cause not in failed:
                    failed[exc.cause] = exc.message
                else:  # not attributable to one target: none of them can go
                    failed.update({n: exc.message for n in wanted if n not in failed})
                continue
            result.changes = changes
            break
        result.failures.extend(sorted(failed.items()))
        return result

    def _close(self, wanted: Mapping[str, IndexEntry]) -> list[Change]:
        state = _State({n: _from_installed(p) for n, p in self._installed.items()}, self._apk2)
        if self._baseline is None:
            self._baseline = {(o, d) for o in state.final for d in state.unmet(o)}
        causes: dict[str, str] = {}
        pins: dict[str, set[str]] = {}
        for name, entry in sorted(wanted.items()):
            state.put(_from_entry(entry))
            causes[name] = name
        for _round in range(MAX_ROUNDS):
            owner = state.next()
            if owner is None:
                break
            for dep in state.unmet(owner):
                if state.final[owner].entry is None and (owner, dep) in self._baseline:
                    continue  # broken in the image already: not ours to fix
                if dep in state.unmet(owner):  # an earlier fix may have met it
                    self._fix(state, causes, pins, owner, dep)
        else:  # pragma: no cover - a bound, not a path
            raise _Unresolvable(sorted(causes)[0], "dependency resolution does not converge")
        changes = []
        for name in sorted(causes):
            pkg = state.final[name]
            assert pkg.entry is not None
            changes.append(Change(name, self.installed(name), pkg.entry, name in wanted,
                                  causes[name]))
        return changes

    def _fix(self, state: _State, causes: dict[str, str], pins: dict[str, set[str]],
             owner: str, dep: Dependency) -> None:
        final = state.final
        pkg = final[owner]
        cause = causes.get(owner)
        if dep.conflict:
            clashing = state.clashing(owner, dep)
            # An installed package that conflicts with a change may have a newer version
            # that does not: try that first.
            if cause is None and self._upgrade(state, causes, pins, owner, None,
                                               cause_of=clashing):
                return
            blame = cause or next((causes[c] for c in clashing if c in causes), owner)
            raise _Unresolvable(blame, f"{owner} {pkg.version} conflicts with "
                                       f"{', '.join(clashing)} ({dep})")
        inherited = pins.get(owner, set()) | self._pins.get(owner, set())
        # 1. The package that has the name, or that provides it, can be upgraded.
        holders = state.holders(dep)
        for holder in holders:
            if self._upgrade(state, causes, pins, holder, dep, cause_of=[owner],
                             extra_pins=inherited):
                return
        # 2. The installed package whose dependency broke can be upgraded.
        if cause is None and self._upgrade(state, causes, pins, owner, None,
                                           cause_of=self._changed_providers(final, causes,
                                                                            dep)):
            return
        # 3. Nothing has it: install the best package that provides it.
        if not holders:
            entry = self._provider(dep, inherited)
            if entry is not None and entry.name not in final:
                state.put(_from_entry(entry))
                causes[entry.name] = cause or self._blame(causes, final, dep, owner)
                if inherited:
                    pins[entry.name] = set(inherited)
                return
        blame = cause or self._blame(causes, final, dep, owner)
        have = ", ".join(f"{h} {final[h].version}" for h in holders)
        raise _Unresolvable(blame, f"{owner} {pkg.version} depends on {dep}, which "
                                   + (f"{have} does not meet and no allowed candidate does"
                                      if holders else "no allowed candidate provides"))

    def _changed_providers(self, final: Mapping[str, _Pkg], causes: Mapping[str, str],
                           dep: Dependency) -> list[str]:
        out = []
        for name in sorted(causes):
            old = self._installed.get(name)
            was = (old is not None
                   and _from_installed(old).provides_dep(dep, self._apk2) is not None)
            if was or final[name].provides_dep(dep, self._apk2) is not None:
                out.append(name)
        return out

    def _blame(self, causes: Mapping[str, str], final: Mapping[str, _Pkg], dep: Dependency,
               owner: str) -> str:
        changed = self._changed_providers(final, causes, dep)
        return causes[changed[0]] if changed else (sorted(set(causes.values())) or [owner])[0]

    def _upgrade(self, state: _State, causes: dict[str, str], pins: dict[str, set[str]],
                 name: str, dep: Dependency | None, *, cause_of: Sequence[str],
                 extra_pins: Iterable[str] = ()) -> bool:
        """Move ``name`` to its newest allowed candidate newer than what it is now that
        meets ``dep`` (any newer one when ``dep`` is None); False if none."""
        current = state.final[name]
        for entry in self.allowed(name, (*pins.get(name, set()), *extra_pins)):
            if compare_versions(entry.version, current.version, apk2=self._apk2) <= 0:
                break
            candidate = _from_entry(entry)
            if dep is not None and not candidate.provides_dep(dep, self._apk2):
                continue
            state.put(candidate)
            if name not in causes:
                blame = [causes[c] for c in cause_of if c in causes]
                causes[name] = blame[0] if blame else name
            return True
        return False

    def _provider(self, dep: Dependency, pins: Iterable[str]) -> IndexEntry | None:
        pins = tuple(pins)
        by_name = [e for e in self.allowed(dep.name, pins)
                   if _from_entry(e).provides_dep(dep, self._apk2)]
        if by_name:
            return by_name[0]
        providers = [e for e in self._by_provide.get(dep.name, ())
                     if self._tag_ok(e, pins) and self._world_ok(e)
                     and _from_entry(e).provides_dep(dep, self._apk2)]
        if not providers:
            return None
        providers.sort(key=lambda e: (-e.provider_priority, e.name))
        best = providers[0].name
        return next(e for e in providers if e.name == best)
