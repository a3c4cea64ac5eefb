"""The plan for an rpm image (RHEL and its rebuilds, Amazon Linux, Azure Linux, Fedora,
SUSE): which packages go to which version, and why. Pure.

:func:`plan_rpm` takes the installed packages, the enabled repositories' candidates
and, optionally, a scanner's findings. Dependency resolution is
:mod:`suture.distro.rpm.resolve`'s; this module decides the targets and explains the
outcome per package, with the vocabulary of the dpkg and apk planners.

Versions are ``[E:]V-R``, the epoch shown only when the package has a nonzero one.
A finding's fixed version is compared as :func:`~suture.distro.rpm.resolve.compare_floor`
does: scanners write fixed versions with an epoch (``1:3.0.7-28.el9``, Red Hat's data)
or without one (``3.0.7-28.el9``); a side without an epoch takes the other side's, so an
epoch-less fixed version is reached by the same V-R at any epoch (copa strips epochs on
both sides) while one that names an epoch is held to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from suture.distro.rpm.model import PackageInfo, RepoPackage
from suture.distro.rpm.resolve import Resolution, Resolver, compare_floor, source_name
from suture.distro.rpm.version import parse_evr
from suture.plan import DEPENDENCY, REPORT, UPDATE_ALL, Plan, Update
from suture.plan.findings import FindingLike, Outcome, VersionOrder, plan_findings

__all__ = ["RPM_ORDER", "plan_rpm"]


def _valid(version: str) -> bool:
    """An EVR a finding may name: a version, an optional numeric epoch and release."""
    if not version or any(c.isspace() for c in version):
        return False
    head, sep, _ = version.partition(":")
    if sep and not head.isdigit():
        return False
    _, v, r = parse_evr(version)
    return bool(v) and r != ""


def _same(report: str, image: str) -> bool:
    return compare_floor(report, image) == 0


RPM_ORDER = VersionOrder(compare_floor, _valid, _same)


def plan_rpm(
    installed: Sequence[PackageInfo],
    candidates: Sequence[RepoPackage],
    findings: Sequence[FindingLike] | None,
    *,
    architecture: str,
    notes: Iterable[str] = (),
) -> Plan:
    """Plan the updates of an rpm image; deterministic, never raises for a package's sake.

    ``architecture`` is the image's basearch (``x86_64``, ``aarch64``...). Without
    findings every installed package with a newer candidate is updated
    (``update-all``). With findings (``os-pkgs`` only, matched by binary package name):
    not installed -> skipped ``not-installed``; no fixed version -> ``unfixed``; already
    at a fixed version -> ``up-to-date``; kept back by a repository of better priority ->
    ``held``; otherwise the package goes to its newest candidate (``report``) when that
    reaches the fixed version, else a :class:`~suture.plan.Failure` naming other
    package names of the same source rpm the repositories have. Packages upgraded or
    installed for a dependency have reason ``dependency``. A package obsoleted by a
    rename appears as the update of the new name, ``from_version`` the old package's.
    """
    resolver = Resolver(installed, candidates, arch=architecture)
    out = Outcome()
    if findings is None:
        resolution = resolver.resolve(None)
    else:
        resolution = resolver.resolve(
            plan_findings(findings, resolver.installed, resolver, RPM_ORDER, out))
    out.add_resolution(held=sorted(resolution.held.items()), up_to_date=resolution.up_to_date,
                       not_installed=resolution.not_installed,
                       failures=sorted(resolution.failures.items()))
    for p in resolution.erased:
        out.notes.append(f"{p.nevra} is obsoleted and erased")
    return out.plan("rpm", architecture,
                    _updates(resolution, UPDATE_ALL if findings is None else REPORT, out.fixes),
                    notes)


def _updates(resolution: Resolution, reason: str, fixes: dict[str, tuple[str, ...]]
             ) -> list[Update]:
    out = []
    for change in resolution.changes:
        new = change.new
        key = change.old.name if change.old is not None else change.name
        out.append(Update(
            name=change.name,
            architecture=new.arch,
            from_version=change.old.evr if change.old is not None else None,
            to_version=new.evr,
            source=_source(new),
            reason=reason if change.requested else DEPENDENCY,
            vulnerabilities=fixes.get(key, ()) if change.requested else (),
            filename=new.location,
            size=new.size,
            sha256=new.checksum if new.checksum_type.lower() in ("sha256", "sha-256") else "",
            base_uri=new.base_url,
        ))
    return out


def _source(pkg: PackageInfo) -> str:
    return source_name(pkg.sourcerpm) or pkg.name
