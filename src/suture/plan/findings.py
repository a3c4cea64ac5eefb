"""Planning from a scanner's findings: the rules every package family shares. Pure.

A family's planner (:mod:`suture.plan.dpkg`, :mod:`suture.plan.apk`) brings its
installed versions, what its resolver says of a package and its version order;
:func:`plan_findings` sorts each package's findings into skips, failures and the
minimum version an update must reach, with the same vocabulary for every family, and
:class:`Outcome` gathers what becomes the :class:`~suture.plan.Plan`.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from suture.plan import Failure, Plan, Skip, Update

__all__ = ["Candidates", "FindingLike", "Outcome", "VersionOrder", "finding_ids",
           "plan_findings"]


class FindingLike(Protocol):
    """What the planner reads of a finding (:class:`suture.reports.model.Finding` fits;
    ``plan`` may not import ``reports``)."""

    @property
    def vulnerability_id(self) -> str: ...

    @property
    def package(self) -> str: ...

    @property
    def installed_version(self) -> str: ...

    @property
    def fixed_versions(self) -> tuple[str, ...]: ...

    @property
    def package_class(self) -> str: ...


class Candidates(Protocol):
    """What planning from findings asks a family's resolver of an installed package."""

    def newest(self, name: str) -> str | None:
        """The newest version ``name`` may go to (``None``, or the installed one: it may not
        move)."""
        ...

    def held(self, name: str) -> str | None:
        """Why ``name`` may not go past :meth:`newest` (``None``: nothing keeps it back)."""
        ...

    def series(self, name: str) -> Sequence[str]:
        """Other package names that may carry a fix ``name``'s candidates lack; named in
        the failure, never installed in its place."""
        ...


@dataclass(frozen=True)
class VersionOrder:
    """A family's version order: ``compare(a, b)`` is negative, zero or positive as ``a``
    is older than, the same as or newer than ``b``; ``valid`` tells the versions it
    accepts (a finding's other fixed versions are ignored); ``same`` tells whether a
    report's installed version names the image's."""

    compare: Callable[[str, str], int]
    valid: Callable[[str], bool]
    same: Callable[[str, str], bool] = operator.eq

    def lowest(self, versions: Iterable[str]) -> str:
        return min(versions, key=functools.cmp_to_key(self.compare))

    def highest(self, versions: Iterable[str]) -> str:
        return max(versions, key=functools.cmp_to_key(self.compare))


def finding_ids(findings: Iterable[FindingLike]) -> tuple[str, ...]:
    """The findings' vulnerability identifiers, sorted, each once."""
    return tuple(sorted({f.vulnerability_id for f in findings}))


@dataclass
class Outcome:
    """What a planner decides besides the updates, gathered package by package: skips,
    failures, notes, and the finding IDs each target's update fixes (``fixes``)."""

    skipped: list[Skip] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fixes: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def add_resolution(self, *, held: Iterable[tuple[str, str]], up_to_date: Iterable[str],
                       not_installed: Iterable[str],
                       failures: Iterable[tuple[str, str]]) -> None:
        """Add what the resolver said of targets it did not move: ``held`` as
        ``(name, detail)``, ``failures`` as ``(name, message)``."""
        for name, detail in held:
            self.skipped.append(Skip(name, "held", detail, self.fixes.get(name, ())))
        for name in up_to_date:
            self.skipped.append(Skip(name, "up-to-date", "", self.fixes.get(name, ())))
        for name in not_installed:
            self.skipped.append(Skip(name, "not-installed", "", self.fixes.get(name, ())))
        for name, message in failures:
            self.failures.append(Failure(name, message, self.fixes.get(name, ())))

    def plan(self, family: str, architecture: str, updates: Iterable[Update],
             notes: Iterable[str] = ()) -> Plan:
        """The plan: skips and failures sorted, ``notes`` before the gathered ones."""
        return Plan(
            family=family,
            architecture=architecture,
            updates=tuple(updates),
            skipped=tuple(sorted(self.skipped,
                                 key=lambda s: (s.name, s.reason, s.vulnerabilities))),
            failures=tuple(sorted(self.failures, key=lambda f: (f.name, f.message))),
            notes=(*notes, *self.notes),
        )


def plan_findings(findings: Iterable[FindingLike], installed: Callable[[str], Sequence[str]],
                  candidates: Candidates, order: VersionOrder,
                  out: Outcome) -> dict[str, str | None]:
    """The targets a report asks for: package name -> the lowest version its update must
    reach. Never raises for a package's sake.

    Only ``os-pkgs`` findings count (a note counts the others), matched to installed
    packages by binary name (``installed(name)``: the image's versions of it, more than
    one where several architectures have it; the lowest is the one planned from):

    * a package that is not installed: skipped ``not-installed``;
    * findings without a fixed version ``order`` accepts: skipped ``unfixed``;
    * findings whose fix the installed version already reaches (it is at or above one
      of the fixed versions listed): skipped ``up-to-date``;
    * the rest need the package at the lowest of their fixed versions. Those that the
      newest candidate reaches make it a target, at the highest such version. Those it
      does not reach are skipped ``held`` when the package is held, and otherwise are a
      :class:`~suture.plan.Failure` ("fixed version X not available, newest candidate
      is Y", naming the :meth:`Candidates.series`).

    A finding's installed version that is not the image's adds a note; the image counts.
    ``out.fixes`` gets, per target, the findings its update fixes.
    """
    by_name: dict[str, list[FindingLike]] = {}
    other = 0
    for f in findings:
        if f.package_class == "os-pkgs":
            by_name.setdefault(f.package, []).append(f)
        else:
            other += 1
    if other:
        out.notes.append(f"{other} finding(s) not about OS packages left to other planners")
    targets: dict[str, str | None] = {}
    for name in sorted(by_name):
        minimum = _plan_package(name, by_name[name], installed(name), candidates, order, out)
        if minimum is not None:
            targets[name] = minimum
    return targets


def _plan_package(name: str, findings: list[FindingLike], have: Sequence[str],
                  candidates: Candidates, order: VersionOrder, out: Outcome) -> str | None:
    """Sort one package's findings into skips and failures; give its minimum version as a
    target (``None``: not a target)."""
    if not have:
        out.skipped.append(Skip(name, "not-installed", "not installed in the image",
                                finding_ids(findings)))
        return None
    lowest = order.lowest(have)
    said = sorted({f.installed_version for f in findings if f.installed_version
                   and not any(order.same(f.installed_version, v) for v in have)})
    if said:
        out.notes.append(f"{name}: the report says {', '.join(said)} is installed, the image "
                         f"has {', '.join(sorted(set(have)))}; planning from the image")
    unfixed = [f for f in findings if not any(order.valid(v) for v in f.fixed_versions)]
    if unfixed:
        out.skipped.append(Skip(name, "unfixed", "no fixed version known", finding_ids(unfixed)))
    done: list[FindingLike] = []
    needs: list[tuple[FindingLike, str]] = []
    for f in findings:
        versions = [v for v in f.fixed_versions if order.valid(v)]
        if not versions:
            continue
        if any(order.compare(lowest, v) >= 0 for v in versions):
            done.append(f)
        else:
            needs.append((f, order.lowest(versions)))
    if done:
        out.skipped.append(Skip(name, "up-to-date", f"installed {lowest}", finding_ids(done)))
    if not needs:
        return None
    newest = candidates.newest(name) or lowest
    held = candidates.held(name)
    reached = [(f, m) for f, m in needs if order.compare(newest, m) >= 0]
    missed = [(f, m) for f, m in needs if order.compare(newest, m) < 0]
    if missed:
        if held is not None:
            out.skipped.append(Skip(name, "held", held, finding_ids(f for f, _ in missed)))
        else:
            top = order.highest(m for _, m in missed)
            message = f"fixed version {top} not available, newest candidate is {newest}"
            series = candidates.series(name)
            if series:
                message += (f"; the fix may be in {', '.join(series)} (a new package name: "
                            "not installed in its place)")
            out.failures.append(Failure(name, message, finding_ids(f for f, _ in missed)))
    if not reached:
        return None
    out.fixes[name] = finding_ids(f for f, _ in reached)
    return order.highest(m for _, m in reached)
