"""Trivy JSON reports (``trivy image --format json``, SchemaVersion 2)."""

from __future__ import annotations

from typing import Any

from suture.reports.document import (
    as_document,
    as_object,
    build_report,
    get_list,
    get_object,
    get_text,
    load_json,
    split_versions,
    wrong_kind,
)
from suture.reports.model import LANG_PKGS, OS_PKGS, Finding, Report, ReportError

__all__ = ["parse_trivy"]

WHAT = "trivy report"


def parse_trivy(data: bytes) -> Report:
    """Parse a Trivy JSON report.

    Read: ``Metadata.OS.Family``/``Name`` (required: Trivy writes them for every OS it
    detects), ``Metadata.ImageConfig.architecture``/``variant``, ``ArtifactName``,
    and per ``Results[]`` entry its ``Class`` and ``Type`` and each of its
    ``Vulnerabilities[]``: ``VulnerabilityID`` and ``PkgName`` (required),
    ``InstalledVersion``, ``FixedVersion`` (a comma-separated list), ``Status``,
    ``Severity``, ``PkgIdentifier.PURL``. A result without ``Class`` (older Trivy) is
    ``os-pkgs`` when its ``Type`` is the OS family, else ``lang-pkgs``. The
    Alpine-family OSes (``alpine``, ``wolfi``, ``chainguard``) read like any other.

    Raises :class:`ReportError` for invalid JSON, a document that is not a Trivy
    report (naming what it looks like), a schema other than 2, or a report without
    ``Metadata.OS``.
    """
    return from_document(load_json(data, WHAT))


def from_document(doc: Any) -> Report:
    """:func:`parse_trivy` over an already parsed JSON document."""
    doc = as_document(doc, WHAT, hint="use Trivy 0.20 or later with --format json")
    if "SchemaVersion" not in doc:
        raise wrong_kind(doc, "a Trivy JSON report with SchemaVersion 2")
    if doc.get("SchemaVersion") != 2:
        raise ReportError(
            f"not a Trivy JSON report with SchemaVersion 2 (got {doc.get('SchemaVersion')!r})",
            hint="use Trivy 0.20 or later with --format json")
    metadata = get_object(doc, "Metadata", "Metadata", WHAT)
    os_info = metadata.get("OS")
    if not isinstance(os_info, dict):
        os_info = {}
    family = get_text(os_info, "Family", "Metadata.OS", WHAT)
    if not family:
        raise ReportError(f"{WHAT} has no Metadata.OS: the scanner found no OS in the image")
    config = get_object(metadata, "ImageConfig", "Metadata.ImageConfig", WHAT)
    architecture = get_text(config, "architecture", "Metadata.ImageConfig", WHAT)
    variant = get_text(config, "variant", "Metadata.ImageConfig", WHAT) if architecture else ""
    findings: list[Finding] = []
    for n, result in enumerate(get_list(doc, "Results", "Results", WHAT)):
        where = f"Results[{n}]"
        result = as_object(result, where, WHAT)
        package_type = get_text(result, "Type", where, WHAT)
        # Trivy before 0.2x wrote no Class; an OS result's Type is the OS family.
        package_class = get_text(result, "Class", where, WHAT) or (
            OS_PKGS if package_type.lower() in (family.lower(), "") else LANG_PKGS)
        vulns = get_list(result, "Vulnerabilities", f"{where}.Vulnerabilities", WHAT)
        for m, vuln in enumerate(vulns):
            at = f"{where}.Vulnerabilities[{m}]"
            vuln = as_object(vuln, at, WHAT)
            ident = get_object(vuln, "PkgIdentifier", f"{at}.PkgIdentifier", WHAT)
            findings.append(Finding(
                vulnerability_id=get_text(vuln, "VulnerabilityID", at, WHAT, required=True),
                package=get_text(vuln, "PkgName", at, WHAT, required=True),
                installed_version=get_text(vuln, "InstalledVersion", at, WHAT),
                fixed_versions=split_versions(get_text(vuln, "FixedVersion", at, WHAT)),
                status=get_text(vuln, "Status", at, WHAT),
                severity=get_text(vuln, "Severity", at, WHAT),
                package_class=package_class,
                package_type=package_type,
                purl=get_text(ident, "PURL", f"{at}.PkgIdentifier", WHAT),
            ))
    return build_report("trivy", family, get_text(os_info, "Name", "Metadata.OS", WHAT),
                        architecture, variant, findings,
                        artifact=get_text(doc, "ArtifactName", "the document", WHAT))
