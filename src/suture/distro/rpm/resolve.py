"""The targeted upgrade closure of an rpm image, as dnf would choose it. Pure.

Targets are upgraded by name to the newest candidate (copa's rule; a report's fixed
version is only a floor). Candidates of a name are those of the installed package's
architecture (an installed ``noarch`` package moves to ``noarch`` only); among them
dnf's repository priority decides first (the lowest number wins, the others are not
looked at), then the highest EVR. A candidate older than what is installed is refused.

The closure: each new package's ``Requires`` (``Requires(pre/post)`` and rich
dependencies included, ``rpmlib(...)`` ignored, file dependencies against the files of
installed and candidate packages) must hold in the set after the transaction
(installed, minus what is replaced or obsoleted, plus what is new). An unmet one is
met by upgrading an installed package, else by installing a package (``old=None``,
never a requested one). An installed package whose requirement the transaction breaks
(a provide that goes away, an exact-version pair such as ``openssl`` /
``openssl-libs``) is upgraded too. ``Conflicts`` in either direction refuse.

Obsoletes: a candidate of another name (and not installed) that obsoletes an installed
target replaces it: its :class:`Change` has ``old`` = the obsoleted package (so
``change.name != change.old.name``). Every installed package a new one obsoletes is
listed in :attr:`Resolution.erased` (the replaced ones of such renames included).
Failures are per requested name; a target that fails takes nothing of its closure
with it into the result.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from suture.distro.rpm.model import SENSE_EQUAL, SENSE_MISSINGOK, Dep, PackageInfo, RepoPackage
from suture.distro.rpm.version import (
    RichDep,
    RichDepError,
    compare_evr,
    compare_packages,
    dep_matches,
    parse_evr,
    parse_rich,
    rich_satisfied,
)

__all__ = ["Change", "Resolution", "Resolver", "compare_floor", "source_name"]


@dataclass(frozen=True)
class Change:
    """One package the transaction installs: ``old`` is what it replaces (``None``: newly
    installed, a dependency), ``requested`` whether a target asked for it."""

    name: str
    arch: str
    old: PackageInfo | None
    new: RepoPackage
    requested: bool


@dataclass
class Resolution:
    """The outcome: ``changes`` in (name, arch) order; targets already at their newest
    (``up_to_date``) or not installed; ``held`` and ``failures`` name -> why; ``erased``
    installed packages the new ones obsolete."""

    changes: list[Change] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)
    not_installed: list[str] = field(default_factory=list)
    held: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    erased: list[PackageInfo] = field(default_factory=list)


def compare_floor(evr: str, floor: str) -> int:
    """Order a package's ``[E:]V-R`` against a report's fixed version. A side written
    without an epoch takes the other side's (scanners write fixed versions both with and
    without; copa strips epochs on both sides): ``3.0.7-28`` is reached by
    ``1:3.0.7-28``. A missing release compares equal on release."""
    a, b = parse_evr(evr), parse_evr(floor)
    if a[0] is None or b[0] is None:
        a, b = (None, a[1], a[2]), (None, b[1], b[2])
    return compare_evr(a, b)


def source_name(sourcerpm: str) -> str:
    """The source package's name in a ``SOURCERPM`` value (``openssl-3.0.7-27.el9.src.rpm``
    -> ``openssl``); empty when there is none."""
    base = sourcerpm.removesuffix(".rpm")
    base = base.rsplit(".", 1)[0] if "." in base else base  # .src / .nosrc
    parts = base.rsplit("-", 2)
    return parts[0] if len(parts) == 3 else ""


def _self_provide(pkg: PackageInfo) -> Dep:
    return Dep(pkg.name, SENSE_EQUAL, f"{pkg.epoch or 0}:{pkg.version}-{pkg.release}")


def _by_evr(pkgs: Iterable[RepoPackage]) -> list[RepoPackage]:
    """Newest first; ties by repository order, then location (deterministic)."""
    def cmp(a: RepoPackage, b: RepoPackage) -> int:
        return (-compare_packages(a, b) or (a.repo_order > b.repo_order)
                - (a.repo_order < b.repo_order) or (a.location > b.location)
                - (a.location < b.location))
    return sorted(pkgs, key=functools.cmp_to_key(cmp))


class _World:
    """A package set and what it provides."""

    def __init__(self, pkgs: Iterable[PackageInfo]) -> None:
        self.pkgs = list(pkgs)
        self.provides: dict[str, list[tuple[Dep, PackageInfo]]] = {}
        self.files: dict[str, list[PackageInfo]] = {}
        for p in self.pkgs:
            for d in (_self_provide(p), *p.provides):
                self.provides.setdefault(d.name, []).append((d, p))
            for f in p.files:
                self.files.setdefault(f, []).append(p)

    def providers(self, dep: Dep) -> list[PackageInfo]:
        out = [p for d, p in self.provides.get(dep.name, ()) if dep_matches(dep, d)]
        if dep.name.startswith("/"):
            out += self.files.get(dep.name, [])
        return out

    def has(self, dep: Dep) -> bool:
        return bool(self.providers(dep))

    def satisfies(self, req: Dep) -> bool:
        if req.name.startswith("rpmlib(") or req.flags & SENSE_MISSINGOK:
            return True
        if req.rich:
            try:
                return rich_satisfied(req.name, self.has)
            except RichDepError:
                return False
        return self.has(req)


def _text(node: RichDep | Dep) -> str:
    if isinstance(node, Dep):
        return str(node)
    args = [_text(a) for a in node.args]
    if node.op in ("if", "unless") and len(args) == 3:
        return f"({args[0]} {node.op} {args[1]} else {args[2]})"
    return "(" + f" {node.op} ".join(args) + ")"


def _as_dep(node: RichDep | Dep) -> Dep:
    return node if isinstance(node, Dep) else Dep(_text(node))


def _split(node: RichDep | Dep, world: _World) -> list[Dep]:
    """What an unmet rich requirement comes down to in ``world``: each unmet operand of an
    ``and``/``with``, the branch an ``if``/``unless`` takes; ``or``/``without`` stay whole
    (one package must meet them)."""
    if isinstance(node, Dep):
        return [node]
    a = node.args
    if node.op in ("and", "with"):
        return [d for x in a if not world.satisfies(_as_dep(x)) for d in _split(x, world)]
    if node.op in ("if", "unless"):
        cond = world.satisfies(_as_dep(a[1]))
        if cond == (node.op == "if"):
            return _split(a[0], world)
        return _split(a[2], world) if len(a) == 3 else []
    return [_as_dep(node)]


def _parts(req: Dep, world: _World) -> list[Dep]:
    if not req.rich:
        return [req]
    try:
        return _split(parse_rich(req.name), world)
    except RichDepError:
        return [req]


@dataclass
class _Entry:
    old: PackageInfo | None
    new: RepoPackage
    requested: bool
    roots: frozenset[str]


class _Refused(Exception):
    def __init__(self, roots: Iterable[str], message: str) -> None:
        super().__init__(message)
        self.roots = frozenset(roots)
        self.message = message


class Resolver:
    """Resolve upgrades of ``installed`` from ``candidates`` (already filtered to the
    enabled repositories, excludes applied) for an image of basearch ``arch``."""

    def __init__(self, installed: Sequence[PackageInfo], candidates: Sequence[RepoPackage],
                 *, arch: str) -> None:
        self.arch = arch
        self._installed = list(installed)
        self._by_name: dict[str, list[PackageInfo]] = {}
        for p in installed:
            self._by_name.setdefault(p.name, []).append(p)
        self._cands: dict[str, list[RepoPackage]] = {}
        for c in candidates:
            self._cands.setdefault(c.name, []).append(c)
        self._candidate_world = _World(candidates)

    # -- what planning asks (suture.plan.findings.Candidates) ---------------------

    def installed(self, name: str) -> list[str]:
        """The installed EVRs of ``name`` (one per architecture)."""
        return [p.evr for p in self._by_name.get(name, ())]

    def _pool(self, old: PackageInfo) -> list[RepoPackage]:
        """The candidates ``old`` may move to, best priority only, newest first."""
        same = [c for c in self._cands.get(old.name, ()) if c.arch == old.arch]
        if not same:
            return []
        best = min(c.priority for c in same)
        return _by_evr(c for c in same if c.priority == best)

    def _best(self, old: PackageInfo) -> RepoPackage | None:
        pool = self._pool(old)
        return pool[0] if pool else None

    def newest(self, name: str) -> str | None:
        """The newest EVR every installed architecture of ``name`` may go to (the
        installed one when nothing newer is offered; ``None``: not installed); that of
        the package which obsoletes it when there is one."""
        have = self._by_name.get(name)
        if not have:
            return None
        tops: list[PackageInfo] = []
        for old in have:
            best = self._obsoleter(old) or self._best(old)
            tops.append(best if best is not None and compare_packages(best, old) > 0 else old)
        return min(tops, key=functools.cmp_to_key(compare_packages)).evr

    def held(self, name: str) -> str | None:
        """Why ``name`` may not go to a newer version a repository offers: a repository
        of a better priority takes precedence over one with a newer build."""
        for old in self._by_name.get(name, ()):
            best = self._best(old)
            others = [c for c in self._cands.get(name, ()) if c.arch == old.arch
                      and (best is None or c.priority > best.priority)
                      and compare_packages(c, best or old) > 0]
            if best is not None and others:
                top = _by_evr(others)[0]
                return (f"{top.evr} in {top.repo_id or 'a repository'} (priority {top.priority}) "
                        f"is not considered: {best.repo_id or 'a repository'} has priority "
                        f"{best.priority}")
        return None

    def series(self, name: str) -> list[str]:
        """Other package names built from the same source that the repositories offer and
        the image lacks."""
        sources = {source_name(p.sourcerpm) for p in self._by_name.get(name, ())} - {""}
        return sorted({c.name for cs in self._cands.values() for c in cs
                       if source_name(c.sourcerpm) in sources and c.name != name
                       and c.name not in self._by_name})

    # -- resolution -----------------------------------------------------------------

    def resolve(self, targets: Mapping[str, str | None] | None) -> Resolution:
        """Resolve ``targets`` (name -> the lowest EVR the update must reach, or ``None``;
        ``None`` for the whole mapping: every installed package with a newer candidate).
        Never raises for a package's sake."""
        out = Resolution()
        start: dict[str, list[_Entry]] = {}
        if targets is None:
            names: dict[str, str | None] = {}
            for name in sorted(self._by_name):
                if any(self._upgrade(o) is not None or self._obsoleter(o) is not None
                       for o in self._by_name[name]):
                    names[name] = None
            update_all = True
        else:
            names = dict(targets)
            update_all = False
        for name in sorted(names):
            self._start(name, names[name], out, start, update_all)
        roots = set(start)
        while True:
            try:
                entries, erased = self._close({r: start[r] for r in sorted(roots)})
            except _Refused as refusal:
                blamed = refusal.roots & roots or frozenset(roots)  # never loop
                for r in sorted(blamed):
                    out.failures[r] = refusal.message
                roots -= blamed
                continue
            break
        out.changes = [Change(e.new.name, e.new.arch, e.old, e.new, e.requested)
                       for e in sorted(entries, key=lambda e: (e.new.name, e.new.arch))]
        out.erased = sorted(erased, key=lambda p: (p.name, p.arch))
        out.up_to_date.sort()
        out.not_installed.sort()
        return out

    def _upgrade(self, old: PackageInfo) -> RepoPackage | None:
        best = self._best(old)
        return best if best is not None and compare_packages(best, old) > 0 else None

    def _obsoleter(self, old: PackageInfo) -> RepoPackage | None:
        """A candidate of a name not installed that obsoletes ``old``."""
        me = _self_provide(old)
        found = [c for cs in self._cands.values() for c in cs
                 if c.name != old.name and c.name not in self._by_name
                 and c.arch in (old.arch, "noarch")
                 and any(dep_matches(o, me) for o in c.obsoletes)]
        if not found:
            return None
        best = min(c.priority for c in found)
        return _by_evr(c for c in found if c.priority == best)[0]

    def _start(self, name: str, floor: str | None, out: Resolution,
               start: dict[str, list[_Entry]], update_all: bool) -> None:
        have = sorted(self._by_name.get(name, ()), key=lambda p: p.arch)
        if not have:
            out.not_installed.append(name)
            return
        if len({p.arch for p in have}) != len(have):
            out.failures[name] = (f"{name} is installed in several versions of one architecture "
                                  "(an install-only package such as a kernel): not upgraded")
            return
        entries: list[_Entry] = []
        current = 0
        for old in have:
            new = self._obsoleter(old)
            if new is None:
                best = self._best(old)
                if best is None:
                    if not update_all:
                        out.failures[name] = (f"no repository offers {name}.{old.arch}")
                    return
                rc = compare_packages(best, old)
                if rc < 0:
                    out.failures[name] = (f"repository offers only older {best.nevra} than "
                                          f"installed {old.nevra}")
                    return
                if rc == 0:
                    current += 1
                    continue
                new = best
            if floor is not None and compare_floor(new.evr, floor) < 0:
                why = self.held(name)
                if why is not None:
                    out.held[name] = why
                else:
                    out.failures[name] = (f"fixed version {floor} not available, newest "
                                          f"candidate is {new.evr}")
                return
            entries.append(_Entry(old, new, True, frozenset({name})))
        if current == len(have):
            out.up_to_date.append(name)
        elif current:
            arches = ", ".join(p.arch for p in have)
            out.failures[name] = (f"{name} is installed for {arches} and not every "
                                  "architecture has a newer candidate")
        else:
            start[name] = entries

    def _close(self, start: Mapping[str, list[_Entry]]
               ) -> tuple[list[_Entry], list[PackageInfo]]:
        """The closure of ``start``; raises :class:`_Refused` naming the roots at fault."""
        entries: dict[tuple[str, str], _Entry] = {}
        for es in start.values():
            for e in es:
                key = (e.new.name, e.new.arch)
                if key in entries:  # two targets meet at one package
                    e = _Entry(e.old, e.new, True, entries[key].roots | e.roots)
                entries[key] = e
        before = _World(self._installed)
        while True:
            gone = {id(e.old) for e in entries.values() if e.old is not None}
            obsoleted: dict[int, tuple[PackageInfo, frozenset[str]]] = {}
            for e in entries.values():
                for o in e.new.obsoletes:
                    for p in self._installed:
                        if (id(p) not in gone and p.name != e.new.name
                                and dep_matches(o, _self_provide(p))):
                            obsoleted[id(p)] = (p, e.roots)
            kept = [p for p in self._installed if id(p) not in gone and id(p) not in obsoleted]
            world = _World([*kept, *(e.new for e in entries.values())])
            added = self._step(entries, kept, world, before, obsoleted)
            if not added:
                erased = [p for p, _ in obsoleted.values()]
                erased += [e.old for e in entries.values()
                           if e.old is not None and e.old.name != e.new.name]
                return list(entries.values()), erased
            for e in added:
                entries[(e.new.name, e.new.arch)] = e

    def _step(self, entries: Mapping[tuple[str, str], _Entry], kept: list[PackageInfo],
              world: _World, before: _World,
              obsoleted: Mapping[int, tuple[PackageInfo, frozenset[str]]]) -> list[_Entry]:
        """One pass: what must be added for the set to hold (raises when nothing can)."""
        added: dict[tuple[str, str], _Entry] = {}
        for key in sorted(entries):
            e = entries[key]
            for req in e.new.requires:
                if world.satisfies(req):
                    continue
                for part in _parts(req, world):
                    if world.satisfies(part):
                        continue
                    provider = self._provider(part, entries, world)
                    if provider is None:
                        raise _Refused(e.roots,
                                       f"nothing provides {part} needed by {e.new.nevra}")
                    k = (provider.new.name, provider.new.arch)
                    if k not in added and k not in entries:
                        added[k] = _Entry(provider.old, provider.new, False, e.roots)
            for c in e.new.conflicts:
                hit = [p for p in world.providers(c) if p is not e.new]
                if hit:
                    raise _Refused(e.roots, f"{e.new.nevra} conflicts with {hit[0].nevra}")
        new_pkgs = [e.new for e in entries.values()]
        for p in kept:
            for c in p.conflicts:
                hit = [n for n in new_pkgs if any(dep_matches(c, d) for d in
                                                  (_self_provide(n), *n.provides))]
                if hit:
                    roots = frozenset().union(*(e.roots for e in entries.values()
                                                if e.new is hit[0]))
                    raise _Refused(roots, f"installed {p.nevra} conflicts with {hit[0].nevra}")
            broken = [r for r in p.requires if not world.satisfies(r) and before.satisfies(r)]
            if not broken:
                continue
            roots = self._breakers(broken[0], entries, obsoleted)
            if (p.name, p.arch) in added:
                continue
            new = self._upgrade(p)
            if new is None:
                raise _Refused(roots, f"the update breaks {p.nevra} (it requires {broken[0]}) "
                                      f"and no newer {p.name} is offered")
            added[(p.name, p.arch)] = _Entry(p, new, False, roots)
        return [added[k] for k in sorted(added)]

    def _breakers(self, req: Dep, entries: Mapping[tuple[str, str], _Entry],
                  obsoleted: Mapping[int, tuple[PackageInfo, frozenset[str]]]) -> frozenset[str]:
        """The roots whose changes took away what ``req`` was met by."""
        roots: set[str] = set()
        for e in entries.values():
            if e.old is not None and _World([e.old]).satisfies(req):
                roots |= e.roots
        for p, r in obsoleted.values():
            if _World([p]).satisfies(req):
                roots |= r
        if not roots:  # a rich requirement met by several: blame every change
            for e in entries.values():
                roots |= e.roots
        return frozenset(roots)

    def _provider(self, req: Dep, entries: Mapping[tuple[str, str], _Entry],
                  world: _World) -> _Entry | None:
        """A change that meets ``req``: an upgrade of an installed package first, else a
        package to install (its name equal to the dependency's first, then the shortest
        name, then by name)."""
        def meets(pkg: RepoPackage) -> bool:
            if req.rich:
                return _World([*world.pkgs, pkg]).satisfies(req)
            return _World([pkg]).satisfies(req)

        if req.rich:
            offered: list[PackageInfo] = [c for cs in self._cands.values() for c in cs]
        else:
            offered = self._candidate_world.providers(req)
        names = {c.name for c in offered}
        for p in sorted(self._installed, key=lambda p: (p.name, p.arch)):
            if (p.name, p.arch) in entries or p.name not in names:
                continue
            new = self._upgrade(p)
            if new is not None and meets(new):
                return _Entry(p, new, False, frozenset())
        fresh = sorted({n for n in names if n not in self._by_name},
                       key=lambda n: (n != req.name, len(n), n))
        for name in fresh:
            pool = [c for c in self._cands[name] if c.arch in (self.arch, "noarch")]
            if not pool:
                continue
            best = min(c.priority for c in pool)
            for c in _by_evr(c for c in pool if c.priority == best):
                if meets(c):
                    return _Entry(None, c, False, frozenset())
        return None
