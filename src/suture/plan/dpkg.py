"""The plan for a dpkg image: which packages go to which version, and why. Pure.

:func:`plan_dpkg` turns the image's installed packages, its repositories'
candidates and, optionally, a scanner's findings into a :class:`~suture.plan.Plan`.
Dependency resolution is :mod:`suture.distro.dpkg.resolve`'s; this module
decides the targets and explains the outcome per package.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from suture.distro.dpkg.control import InstalledPackage
from suture.distro.dpkg.repo import PackageEntry
from suture.distro.dpkg.resolve import Resolution, Resolver
from suture.distro.dpkg.version import compare_versions, version_key
from suture.errors import PackageFormatError
from suture.plan import DEPENDENCY, REPORT, UPDATE_ALL, Plan, Update
from suture.plan.findings import FindingLike, Outcome, VersionOrder, plan_findings

__all__ = ["FindingLike", "plan_dpkg"]

HELD = "held in the dpkg database (want=hold)"


def _valid(version: str) -> bool:
    try:
        version_key(version)
    except PackageFormatError:
        return False
    return True


def _same(a: str, b: str) -> bool:
    try:
        return compare_versions(a, b) == 0
    except PackageFormatError:
        return a == b


DPKG_ORDER = VersionOrder(compare_versions, _valid, _same)


@dataclass(frozen=True)
class _Candidates:
    """The resolver as :func:`~suture.plan.findings.plan_findings` asks it: a held
    package goes nowhere."""

    resolver: Resolver

    def newest(self, name: str) -> str | None:
        return None if self.resolver.held(name) else self.resolver.newest(name)

    def held(self, name: str) -> str | None:
        return HELD if self.resolver.held(name) else None

    def series(self, name: str) -> Sequence[str]:
        return ()


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
    out = Outcome()
    if findings is None:
        resolution = resolver.resolve(None)
    else:
        resolution = resolver.resolve(plan_findings(
            findings, lambda name: [v for _, v in resolver.installed(name)],
            _Candidates(resolver), DPKG_ORDER, out))
    out.add_resolution(held=((name, HELD) for name in resolution.held),
                       up_to_date=resolution.up_to_date, not_installed=resolution.not_installed,
                       failures=((f.package, f.message) for f in resolution.failures))
    return out.plan("dpkg", architecture,
                    _updates(resolution, UPDATE_ALL if findings is None else REPORT, out.fixes),
                    notes)


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
