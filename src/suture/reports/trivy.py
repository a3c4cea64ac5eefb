"""Trivy JSON reports (``trivy image --format json``, SchemaVersion 2)."""

from __future__ import annotations

import json
from typing import Any

from suture.reports.model import Finding, Report, ReportError

MAX_REPORT = 512 << 20


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ReportError(f"trivy report: {where} is not an object")
    return value


def parse_trivy(data: bytes) -> Report:
    """Parse a Trivy JSON report.

    Raises :class:`ReportError` for invalid JSON, a schema other than 2, or a report
    without ``Metadata.OS`` (Trivy writes it for every OS it detects).
    """
    if len(data) > MAX_REPORT:
        raise ReportError(f"trivy report is larger than {MAX_REPORT} bytes")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"trivy report is not valid JSON: {exc}") from None
    doc = _object(doc, "the document")
    if doc.get("SchemaVersion") != 2:
        raise ReportError(
            f"not a Trivy JSON report with SchemaVersion 2 (got {doc.get('SchemaVersion')!r})")
    metadata = _object(doc.get("Metadata") or {}, "Metadata")
    os_info = metadata.get("OS")
    if not isinstance(os_info, dict) or not os_info.get("Family"):
        raise ReportError("trivy report has no Metadata.OS: the scanner found no OS in the image")
    config = metadata.get("ImageConfig") if isinstance(metadata.get("ImageConfig"), dict) else {}
    assert isinstance(config, dict)
    findings: list[Finding] = []
    results = doc.get("Results") or []
    if not isinstance(results, list):
        raise ReportError("trivy report: Results is not a list")
    for n, result in enumerate(results):
        result = _object(result, f"Results[{n}]")
        package_class = str(result.get("Class") or "os-pkgs")
        package_type = str(result.get("Type") or "")
        vulns = result.get("Vulnerabilities") or []
        if not isinstance(vulns, list):
            raise ReportError(f"trivy report: Results[{n}].Vulnerabilities is not a list")
        for m, vuln in enumerate(vulns):
            vuln = _object(vuln, f"Results[{n}].Vulnerabilities[{m}]")
            try:
                vid = str(vuln["VulnerabilityID"])
                name = str(vuln["PkgName"])
                installed = str(vuln.get("InstalledVersion") or "")
            except KeyError as exc:
                raise ReportError(f"trivy report: Results[{n}].Vulnerabilities[{m}] has no "
                                  f"{exc.args[0]}") from None
            fixed = tuple(v.strip() for v in str(vuln.get("FixedVersion") or "").split(",")
                          if v.strip())
            findings.append(Finding(vid, name, installed, fixed, str(vuln.get("Status") or ""),
                                    str(vuln.get("Severity") or ""), package_class,
                                    package_type))
    return Report(
        scanner="trivy",
        os_family=str(os_info["Family"]).lower(),
        os_version=str(os_info.get("Name") or ""),
        architecture=str(config["architecture"]) if config.get("architecture") else None,
        variant=str(config["variant"]) if config.get("variant") else None,
        findings=tuple(findings),
    )
