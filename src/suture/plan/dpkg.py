"""The plan for a dpkg image: which packages go to which version, and why. Pure.

:func:`plan_dpkg` turns the image's installed packages, its repositories'
candidates and, optionally, a scanner's findings into a :class:`~suture.plan.Plan`.
Dependency resolution is :mod:`suture.distro.dpkg.resolve`'s; this module
decides the targets and explains the outcome per package.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from suture.distro.dpkg.control import InstalledPackage
from suture.distro.dpkg.repo import PackageEntry
from suture.distro.dpkg.resolve import Resolution, Resolver
from suture.distro.dpkg.version import compare_versions, version_key
from suture.errors import PackageFormatError
from suture.plan import DEPENDENCY, REPORT, UPDATE_ALL, Failure, Plan, Skip, Update

__all__ = ["FindingLike", "plan_dpkg"]

HELD = "held in the dpkg database (want=hold)"


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


def _ids(findings: Iterable[FindingLike]) -> tuple[str, ...]:
    return tuple(sorted({f.vulnerability_id for f in findings}))


def _valid(version: str) -> bool:
    try:
        version_key(version)
    except PackageFormatError:
        return False
    return True


def plan_dpkg(
    installed: Sequence[InstalledPackage],
    candidates: Sequence[PackageEntry],
    findings: Sequence[FindingLike] | None,
    *,
    architecture: str,
    foreign_architectures: Iterable[str] = (),
    notes: Iterable[str] = (),
) -> Plan:
    """Plan the updates of a dpkg image; deterministic, never raises for a package's sake.

    ``findings=None`` (no report): every installed package that has a newer
    candidate is updated (reason ``update-all``); held ones are skipped
    (``held``). With findings, only ``os-pkgs`` ones count, matched to
    installed packages by binary name:

    * a package that is not installed: skipped ``not-installed``;
    * findings without a fixed version: skipped ``unfixed``;
    * findings whose fix the installed version already reaches (it is at or
      above one of the fixed versions listed): skipped ``up-to-date``;
    * a held package (``Status: hold``) with findings to fix: skipped ``held``;
    * the rest: the package goes to its newest candidate (reason ``report``),
      provided that reaches the highest of the fixed versions that apply (for
      each finding, the lowest of its fixed versions). Findings whose fixed
      version no candidate reaches are a :class:`~suture.plan.Failure` ("fixed
      version X not available, newest candidate is Y"); when the newest
      candidate still fixes some of the package's findings, it is updated for
      those.

    ``Update.vulnerabilities`` lists the findings an update fixes. Packages
    added or upgraded only because an update needs them, or (as apt 2.x does)
    because they are built from the same source version as an update, have
    reason ``dependency``. A target that cannot be resolved (unmet dependency,
    ``Breaks`` nothing resolves, a held package in the way) is a ``Failure``
    with the resolver's message. When a finding's installed version is not the
    image's, the image's counts and a note says so; ``notes`` are kept first.
    """
    resolver = Resolver(installed, candidates, architecture=architecture,
                        foreign_architectures=foreign_architectures)
    out_notes: list[str] = []
    skipped: list[Skip] = []
    failures: list[Failure] = []
    fixes: dict[str, tuple[str, ...]] = {}  # target -> the finding IDs its update fixes

    if findings is None:
        resolution = resolver.resolve(None)
        reason = UPDATE_ALL
    else:
        reason = REPORT
        targets: dict[str, str | None] = {}
        by_name: dict[str, list[FindingLike]] = {}
        other = 0
        for f in findings:
            if f.package_class == "os-pkgs":
                by_name.setdefault(f.package, []).append(f)
            else:
                other += 1
        if other:
            out_notes.append(f"{other} finding(s) not about OS packages left to other planners")
        for name in sorted(by_name):
            minimum = _plan_package(resolver, name, by_name[name], skipped, failures, out_notes,
                                    fixes)
            if minimum is not None:
                targets[name] = minimum
        resolution = resolver.resolve(targets)

    updates = _updates(resolution, reason, fixes)
    for target in resolution.held:
        skipped.append(Skip(target, "held", HELD, fixes.get(target, ())))
    for target in resolution.up_to_date:
        skipped.append(Skip(target, "up-to-date", "", fixes.get(target, ())))
    for target in resolution.not_installed:
        skipped.append(Skip(target, "not-installed", "", fixes.get(target, ())))
    for failure in resolution.failures:
        failures.append(Failure(failure.package, failure.message, fixes.get(failure.package, ())))
    return Plan(
        family="dpkg",
        architecture=architecture,
        updates=tuple(updates),
        skipped=tuple(sorted(skipped, key=lambda s: (s.name, s.reason, s.vulnerabilities))),
        failures=tuple(sorted(failures, key=lambda f: (f.name, f.message))),
        notes=(*notes, *out_notes),
    )


def _plan_package(resolver: Resolver, name: str, findings: list[FindingLike],
                  skipped: list[Skip], failures: list[Failure], notes: list[str],
                  fixes: dict[str, tuple[str, ...]]) -> str | None:
    """Sort one package's findings into skips and failures; give its minimum version as a
    target (``None``: not a target)."""
    have = resolver.installed(name)
    if not have:
        skipped.append(Skip(name, "not-installed", "not installed in the image", _ids(findings)))
        return None
    lowest = min((v for _, v in have), key=version_key)
    said = sorted({f.installed_version for f in findings if f.installed_version
                   and not any(_same(f.installed_version, v) for _, v in have)})
    if said:
        notes.append(f"{name}: the report says {', '.join(said)} is installed, the image has "
                     f"{', '.join(sorted({v for _, v in have}))}; planning from the image")
    unfixed = [f for f in findings if not any(_valid(v) for v in f.fixed_versions)]
    if unfixed:
        skipped.append(Skip(name, "unfixed", "no fixed version known", _ids(unfixed)))
    done: list[FindingLike] = []
    needs: list[tuple[FindingLike, str]] = []
    for f in findings:
        versions = [v for v in f.fixed_versions if _valid(v)]
        if not versions:
            continue
        if any(compare_versions(lowest, v) >= 0 for v in versions):
            done.append(f)
        else:
            needs.append((f, min(versions, key=version_key)))
    if done:
        skipped.append(Skip(name, "up-to-date", f"installed {lowest}", _ids(done)))
    if not needs:
        return None
    if resolver.held(name):
        skipped.append(Skip(name, "held", HELD, _ids(f for f, _ in needs)))
        return None
    newest = resolver.newest(name) or lowest
    reached = [(f, m) for f, m in needs if compare_versions(newest, m) >= 0]
    missed = [(f, m) for f, m in needs if compare_versions(newest, m) < 0]
    if missed:
        top = max((m for _, m in missed), key=version_key)
        failures.append(Failure(name, f"fixed version {top} not available, newest candidate is "
                                      f"{newest}", _ids(f for f, _ in missed)))
    if not reached:
        return None
    fixes[name] = _ids(f for f, _ in reached)
    return max((m for _, m in reached), key=version_key)


def _same(a: str, b: str) -> bool:
    try:
        return compare_versions(a, b) == 0
    except PackageFormatError:
        return a == b


def _updates(resolution: Resolution, reason: str,
             fixes: dict[str, tuple[str, ...]]) -> list[Update]:
    updates = []
    for change in resolution.changes:
        e = change.entry
        updates.append(Update(
            name=change.name,
            architecture=change.architecture,
            from_version=change.from_version,
            to_version=change.to_version,
            source=e.source_name,
            reason=reason if change.requested else DEPENDENCY,
            vulnerabilities=fixes.get(change.name, ()) if change.requested else (),
            filename=e.filename,
            size=e.size,
            sha256=e.sha256,
            base_uri=e.base_uri,
        ))
    return updates
