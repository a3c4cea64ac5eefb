"""The plan for an apk image (Alpine, Wolfi, Chainguard): which packages go to which
version, and why. Pure.

:func:`plan_apk` takes the installed packages, the repositories' candidates
(already filtered to the image's architectures), ``/etc/apk/world`` and,
optionally, a scanner's findings. Dependency resolution is
:mod:`suture.distro.apk.resolve`'s; this module decides the targets and explains
the outcome per package, with the same vocabulary as the dpkg planner. Versions
are ordered as the image's apk-tools orders them: 3 by default, 2 with ``apk2``
(:func:`suture.distro.apk.version.apk2_order` tells which).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from suture.distro.apk.deps import Dependency
from suture.distro.apk.index import IndexEntry
from suture.distro.apk.installed import InstalledPackage
from suture.distro.apk.resolve import Resolution, Resolver
from suture.distro.apk.version import compare_versions, is_valid_version
from suture.plan import DEPENDENCY, REPORT, UPDATE_ALL, Plan, Update
from suture.plan.findings import FindingLike, Outcome, VersionOrder, plan_findings

__all__ = ["plan_apk"]

APK_ORDER = VersionOrder(compare_versions, is_valid_version)


def _compare_apk2(a: str, b: str) -> int:
    return compare_versions(a, b, apk2=True)


def _valid_apk2(version: str) -> bool:
    return is_valid_version(version, apk2=True)


APK2_ORDER = VersionOrder(_compare_apk2, _valid_apk2)


def plan_apk(
    installed: Sequence[InstalledPackage],
    candidates: Sequence[IndexEntry],
    findings: Sequence[FindingLike] | None,
    *,
    architecture: str,
    world: Sequence[Dependency] = (),
    notes: Iterable[str] = (),
    apk2: bool = False,
) -> Plan:
    """Plan the updates of an apk image; deterministic, never raises for a package's sake.

    Without findings every installed package with a newer allowed candidate is
    updated (``update-all``). With findings (``os-pkgs`` only, matched by binary
    package name): not installed -> skipped ``not-installed``; no fixed version ->
    ``unfixed``; already at a fixed version -> ``up-to-date``; kept back by a
    ``world`` constraint -> ``held``; otherwise the package goes to its newest allowed
    candidate (``report``) when that reaches the fixed version. A fix no candidate
    of the same name reaches is a :class:`~suture.plan.Failure`, which names the
    other package names of the same origin the repositories have (a new series such
    as ``libcrypto3`` for ``libcrypto1.1``): those are reported, never installed in
    its place. Packages added or upgraded for a dependency have reason
    ``dependency``; a target whose dependencies cannot be met is a ``Failure``.
    ``apk2``: order versions as apk-tools 2 does (else as apk-tools 3).
    """
    resolver = Resolver(installed, candidates, world, apk2=apk2)

    def versions(name: str) -> list[str]:
        version = resolver.installed(name)
        return [] if version is None else [version]

    out = Outcome()
    if findings is None:
        resolution = resolver.resolve(None)
    else:
        order = APK2_ORDER if apk2 else APK_ORDER
        resolution = resolver.resolve(plan_findings(findings, versions, resolver, order, out))
    out.add_resolution(held=resolution.held, up_to_date=resolution.up_to_date,
                       not_installed=resolution.not_installed, failures=resolution.failures)
    return out.plan("apk", architecture,
                    _updates(resolution, UPDATE_ALL if findings is None else REPORT, out.fixes),
                    notes)


def _updates(resolution: Resolution, reason: str, fixes: dict[str, tuple[str, ...]]
             ) -> list[Update]:
    out = []
    for change in resolution.changes:
        e = change.entry
        out.append(Update(
            name=change.name,
            architecture=e.arch,
            from_version=change.from_version,
            to_version=e.version,
            source=e.origin,
            reason=reason if change.requested else DEPENDENCY,
            vulnerabilities=fixes.get(change.name, ()) if change.requested else (),
            filename=e.filename,
            size=e.size,
            sha256="",
            base_uri=e.repository,
        ))
    return out
