"""The one model every scanner report is parsed into."""

from __future__ import annotations

from dataclasses import dataclass, field

from suture.errors import SutureError


class ReportError(SutureError):
    """A report that cannot be read, is of the wrong kind, or does not fit the image."""


@dataclass(frozen=True)
class Finding:
    """One vulnerability in one installed package, as a scanner reported it.

    ``fixed_versions`` holds every version the scanner names as a fix (Trivy may give
    a comma-separated list); empty when no fix is known. ``package_class`` is
    ``os-pkgs`` or ``lang-pkgs``.
    """

    vulnerability_id: str
    package: str
    installed_version: str
    fixed_versions: tuple[str, ...] = ()
    status: str = ""
    severity: str = ""
    package_class: str = "os-pkgs"
    package_type: str = ""

    @property
    def fixable(self) -> bool:
        return bool(self.fixed_versions)


@dataclass(frozen=True)
class Report:
    """What a scanner said about one image (one platform)."""

    scanner: str
    os_family: str
    os_version: str
    architecture: str | None
    variant: str | None
    findings: tuple[Finding, ...] = field(default=())

    def os_findings(self) -> list[Finding]:
        return [f for f in self.findings if f.package_class == "os-pkgs"]
