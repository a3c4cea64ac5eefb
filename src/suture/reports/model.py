"""The one model every scanner report is parsed into."""

from __future__ import annotations

from dataclasses import dataclass, field

from suture.errors import SutureError
from suture.reports.normalize import normalize_architecture


class ReportError(SutureError):
    """A report that cannot be read, is of the wrong kind, or does not fit the image."""


OS_PKGS = "os-pkgs"
LANG_PKGS = "lang-pkgs"


@dataclass(frozen=True)
class Finding:
    """One vulnerability in one installed package, as a scanner reported it.

    ``fixed_versions`` holds every version the scanner names as a fix (Trivy and copa
    documents may give a comma-separated list, Grype a list); empty when no fix is
    known. ``status`` is the scanner's own word for the fix state (Trivy ``Status``,
    Grype ``fix.state``; empty for copa documents). ``package_class`` is ``os-pkgs``
    or ``lang-pkgs``; ``package_type`` is the scanner's own type (Trivy's result
    ``Type`` such as ``debian``, Grype's artifact type such as ``deb``, copa's
    ``type``). ``purl`` is the package URL when the scanner gave one.
    """

    vulnerability_id: str
    package: str
    installed_version: str
    fixed_versions: tuple[str, ...] = ()
    status: str = ""
    severity: str = ""
    package_class: str = OS_PKGS
    package_type: str = ""
    purl: str = ""

    @property
    def fixable(self) -> bool:
        return bool(self.fixed_versions)


@dataclass(frozen=True)
class Report:
    """What a scanner said about one image (one platform).

    ``scanner`` is the format the findings came in: ``trivy``, ``grype`` or
    ``native`` (a copa ``v1alpha1``/``v1alpha2`` document, whether read from a file
    or printed by a scanner plugin); ``api_version`` is the copa document's
    ``apiVersion``, empty otherwise.

    ``os_family`` is normalised to the ``ID`` the distribution writes in
    ``/etc/os-release`` (``debian``, ``ubuntu``, ``alpine``, ``wolfi``,
    ``chainguard``, ``rhel``, ``amzn``, ...), whatever name the scanner used;
    ``os_version`` is the scanner's version string as written (Trivy writes
    Debian's point release, ``12.7``; Grype the major version, ``12``).

    ``architecture``/``variant`` use OCI names (``amd64``, ``arm64``, ``arm`` +
    ``v7``, ``386``, ...) whatever the source wrote (``x86_64``, ``aarch64``,
    ``armhf``, ...); ``None`` when the report does not say. ``artifact`` is the
    image reference the scanner was given, when it recorded one.
    """

    scanner: str
    os_family: str
    os_version: str
    architecture: str | None
    variant: str | None
    findings: tuple[Finding, ...] = field(default=())
    artifact: str = ""
    api_version: str = ""

    def os_findings(self) -> list[Finding]:
        return [f for f in self.findings if f.package_class == OS_PKGS]

    def matches_platform(self, architecture: str, variant: str | None = None) -> bool:
        """Whether this report can be about an image of ``architecture``/``variant``.

        Both sides are normalised first. A report without an architecture fits any
        image, and a variant left unstated (on either side) fits any variant.
        """
        if self.architecture is None:
            return True
        arch, var = normalize_architecture(architecture, variant)
        if arch != self.architecture:
            return False
        return self.variant is None or var is None or self.variant == var
