"""The plan for an apk image (Alpine, Wolfi, Chainguard): which packages go to which
version, and why. Pure.

:func:`plan_apk` takes the installed packages, the repositories' candidates
(already filtered to the image's architectures), ``/etc/apk/world`` and,
optionally, a scanner's findings. Dependency resolution is
:mod:`suture.distro.apk.resolve`'s; this module decides the targets and explains
the outcome per package, with the same vocabulary as the dpkg planner.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from suture.distro.apk.deps import Dependency
from suture.distro.apk.index import IndexEntry
from suture.distro.apk.installed import InstalledPackage
from suture.distro.apk.resolve import Resolution, Resolver
from suture.distro.apk.version import compare_versions, is_valid_version, version_key
from suture.plan import DEPENDENCY, REPORT, UPDATE_ALL, Failure, Plan, Skip, Update
from suture.plan.dpkg import FindingLike

__all__ = ["plan_apk"]


def _ids(findings: Iterable[FindingLike]) -> tuple[str, ...]:
    return tuple(sorted({f.vulnerability_id for f in findings}))


def plan_apk(
    installed: Sequence[InstalledPackage],
    candidates: Sequence[IndexEntry],
    findings: Sequence[FindingLike] | None,
    *,
    architecture: str,
    world: Sequence[Dependency] = (),
    notes: Iterable[str] = (),
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
    """
    resolver = Resolver(installed, candidates, world)
    out_notes: list[str] = []
    skipped: list[Skip] = []
    failures: list[Failure] = []
    fixes: dict[str, tuple[str, ...]] = {}
    if findings is None:
        resolution = resolver.resolve(None)
        reason = UPDATE_ALL
    else:
        reason = REPORT
        by_name: dict[str, list[FindingLike]] = {}
        other = 0
        for f in findings:
            if f.package_class == "os-pkgs":
                by_name.setdefault(f.package, []).append(f)
            else:
                other += 1
        if other:
            out_notes.append(f"{other} finding(s) not about OS packages left to other planners")
        targets: dict[str, str | None] = {}
        for name in sorted(by_name):
            minimum = _plan_package(resolver, name, by_name[name], skipped, failures,
                                    out_notes, fixes)
            if minimum is not None:
                targets[name] = minimum
        resolution = resolver.resolve(targets)
    updates = _updates(resolution, reason, fixes)
    for name, detail in resolution.held:
        skipped.append(Skip(name, "held", detail, fixes.get(name, ())))
    for name in resolution.up_to_date:
        skipped.append(Skip(name, "up-to-date", "", fixes.get(name, ())))
    for name in resolution.not_installed:
        skipped.append(Skip(name, "not-installed", "", fixes.get(name, ())))
    for name, message in resolution.failures:
        failures.append(Failure(name, message, fixes.get(name, ())))
    return Plan(
        family="apk",
        architecture=architecture,
        updates=tuple(updates),
        skipped=tuple(sorted(skipped, key=lambda s: (s.name, s.reason, s.vulnerabilities))),
        failures=tuple(sorted(failures, key=lambda f: (f.name, f.message))),
        notes=(*notes, *out_notes),
    )


def _plan_package(resolver: Resolver, name: str, findings: list[FindingLike],
                  skipped: list[Skip], failures: list[Failure], notes: list[str],
                  fixes: dict[str, tuple[str, ...]]) -> str | None:
    have = resolver.installed(name)
    if have is None:
        skipped.append(Skip(name, "not-installed", "not installed in the image", _ids(findings)))
        return None
    said = sorted({f.installed_version for f in findings
                   if f.installed_version and f.installed_version != have})
    if said:
        notes.append(f"{name}: the report says {', '.join(said)} is installed, the image has "
                     f"{have}; planning from the image")
    unfixed = [f for f in findings if not any(is_valid_version(v) for v in f.fixed_versions)]
    if unfixed:
        skipped.append(Skip(name, "unfixed", "no fixed version known", _ids(unfixed)))
    done: list[FindingLike] = []
    needs: list[tuple[FindingLike, str]] = []
    for f in findings:
        versions = [v for v in f.fixed_versions if is_valid_version(v)]
        if not versions:
            continue
        if any(compare_versions(have, v) >= 0 for v in versions):
            done.append(f)
        else:
            needs.append((f, min(versions, key=version_key)))
    if done:
        skipped.append(Skip(name, "up-to-date", f"installed {have}", _ids(done)))
    if not needs:
        return None
    newest = resolver.newest(name) or have
    held = resolver.held(name)
    reached = [(f, m) for f, m in needs if compare_versions(newest, m) >= 0]
    missed = [(f, m) for f, m in needs if compare_versions(newest, m) < 0]
    if missed:
        top = max((m for _, m in missed), key=version_key)
        if held is not None:
            skipped.append(Skip(name, "held", held, _ids(f for f, _ in missed)))
        else:
            message = f"fixed version {top} not available, newest candidate is {newest}"
            series = resolver.series(name)
            if series:
                message += (f"; the fix may be in {', '.join(series)} (a new package name: "
                            "not installed in its place)")
            failures.append(Failure(name, message, _ids(f for f, _ in missed)))
    if not reached:
        return None
    fixes[name] = _ids(f for f, _ in reached)
    return max((m for _, m in reached), key=version_key)


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
