"""Options and outcomes of a patch run: values the CLI builds and the result JSON reads."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suture.oci.image import Image
from suture.oci.layer import LayerInfo
from suture.oci.model import Platform
from suture.plan import Plan
from suture.progress import Progress
from suture.reports.model import Report, ReportError
from suture.sbom import Package
from suture.transports import Options

PATCHED, UP_TO_DATE, ERROR, SKIPPED = "patched", "up-to-date", "error", "skipped"


@dataclass(frozen=True)
class PatchOptions:
    """How to patch. Every field has a safe default; the CLI fills them from flags.

    ``reports``: per platform (``str(Platform)``) or ``"*"`` for every platform; no
    entry means update-all. ``mirrors`` maps archive URI prefixes to mirrors.
    ``keyrings``: extra trusted OpenPGP keys (bytes of .gpg/.asc files).
    ``sandbox``: ``auto``, ``bwrap``, ``chroot`` or ``none`` for maintainer scripts.
    """

    reports: dict[str, Report] = field(default_factory=dict)
    platforms: tuple[Platform, ...] = ()
    cache_dir: Path = Path.home() / ".cache" / "suture"
    offline: bool = False
    mirrors: dict[str, str] = field(default_factory=dict)
    # Repository hosts (HOST, HOST:PORT or "all") that may be loopback or private.
    allow_private_repos: tuple[str, ...] = ()
    keyrings: tuple[bytes, ...] = ()
    host_keyrings: bool = True
    sandbox: str = "auto"
    # Fail (nothing written) when any maintainer script cannot run, instead of
    # patching and reporting it as not run.
    scripts_required: bool = False
    ignore_errors: bool = False
    dry_run: bool = False
    transport: Options = field(default_factory=Options)
    workdir: Path | None = None
    compression: str = "gzip"
    created: str | None = None
    # The source's registry name (``registry/repo[:tag]``), written into each patched
    # manifest as ``org.opencontainers.image.base.name``; empty for local sources.
    base_name: str = ""
    # List every installed package of each patched image (PlatformOutcome.packages),
    # for an SBOM.
    inventory: bool = False
    # Keep and reuse patch layers in cache_dir (suture.patch.results); off with
    # --no-result-cache. (Merged views are kept either way.)
    result_cache: bool = True
    deadline: float | None = None  # time.monotonic() value after which work stops
    progress: Progress | None = None  # stage, download and upload events
    # Set (by a front end's Ctrl-C or timer) to stop every platform at its next step.
    cancel: threading.Event = field(default_factory=threading.Event, compare=False)

    def report_for(self, platform: Platform | None) -> Report | None:
        """The report for ``platform``: the one for every platform (``"*"``), else the
        one whose key (``os/arch[/variant]``, from the report's own architecture)
        matches it; None when there is none."""
        if "*" in self.reports:
            return self.reports["*"]
        if platform is None:
            return None
        found = [report for _key, report in sorted(self.reports.items())
                 if report.matches_platform(platform.architecture, platform.variant)]
        if len(found) > 1:
            raise ReportError(f"{len(found)} reports fit platform {platform}",
                              hint="give one report per platform")
        return found[0] if found else None

    @property
    def per_platform_reports(self) -> bool:
        """Reports were given per platform (``-r DIR``): a platform without one is
        left as it is."""
        return bool(self.reports) and "*" not in self.reports


@dataclass
class PlatformOutcome:
    """What happened to one platform's image."""

    platform: Platform | None
    status: str
    source_digest: str
    os_family: str = ""
    os_version: str = ""
    plan: Plan | None = None
    layer: LayerInfo | None = None
    image: Image | None = None  # the patched image, when status is "patched"
    message: str = ""
    scripts_not_run: list[tuple[str, str]] = field(default_factory=list)
    scripts_ran: list[str] = field(default_factory=list)
    package_type: str = ""  # the purl type of the family's packages (deb, apk...)
    # Every package of the patched image (with PatchOptions.inventory), for its SBOM.
    packages: list[Package] | None = None

    def to_json(self) -> dict[str, Any]:
        updates = []
        if self.plan is not None and self.status != ERROR:
            kind = self.package_type or self.plan.family
            updates = [{"name": u.name, "type": kind, "from": u.from_version,
                        "to": u.to_version, "vulnerabilities": list(u.vulnerabilities),
                        "reason": u.reason} for u in self.plan.updates]
        return {
            "platform": str(self.platform) if self.platform else None,
            "status": self.status,
            "os": {"family": self.os_family, "version": self.os_version},
            "sourceDigest": self.source_digest,
            "digest": self.image.digest if self.image is not None else None,
            "updates": updates,
            "skipped": [s.to_json() for s in self.plan.skipped] if self.plan else [],
            "failures": [f.to_json() for f in self.plan.failures] if self.plan else [],
            "layer": ({"digest": self.layer.digest, "diffID": self.layer.diff_id,
                       "size": self.layer.size} if self.layer is not None else None),
            "scripts": {"ran": self.scripts_ran,
                        "notRun": [{"script": s, "reason": r} for s, r in self.scripts_not_run]},
            "notes": list(self.plan.notes) if self.plan else [],
            "message": self.message,
        }


@dataclass
class PatchResult:
    source_reference: str
    source_digest: str
    target_reference: str | None
    target_digest: str | None
    platforms: list[PlatformOutcome]

    @property
    def failed(self) -> bool:
        return any(p.status == ERROR for p in self.platforms)

    def to_json(self) -> dict[str, Any]:
        target = None
        if self.target_reference is not None:
            target = {"reference": self.target_reference, "digest": self.target_digest}
        return {
            "schemaVersion": 1,
            "source": {"reference": self.source_reference, "digest": self.source_digest},
            "target": target,
            "platforms": [p.to_json() for p in self.platforms],
        }
