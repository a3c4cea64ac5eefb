"""Grype JSON reports (``grype IMAGE -o json``)."""

from __future__ import annotations

import base64
import binascii
import json
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

__all__ = ["OS_PACKAGE_TYPES", "parse_grype"]

WHAT = "grype report"

OS_PACKAGE_TYPES = frozenset({"deb", "apk", "rpm", "alpm"})
"""Grype (Syft) artifact types installed by the OS package manager; every other type
(``python``, ``npm``, ``go-module``, ``java-archive``, ``binary``, ...) is ``lang-pkgs``."""

MAX_CONFIG = 4 << 20


def parse_grype(data: bytes) -> Report:
    """Parse a Grype JSON report.

    Read: ``distro.name``/``version`` (required: Grype writes them when it finds an
    OS), the image's architecture from ``source.target.architecture`` and
    ``architectureVariant`` for image sources (else from the image config Grype
    embeds base64-encoded in ``source.target.config``), ``source.target.userInput``,
    and for each of ``matches[]``: ``vulnerability.id`` and ``artifact.name``
    (required), ``artifact.version``, ``type`` and ``purl``,
    ``vulnerability.fix.versions`` and ``fix.state``, ``vulnerability.severity``
    (upper-cased, as Trivy writes it). ``ignoredMatches`` are left out: the user
    told Grype to ignore them.

    Raises :class:`ReportError` for invalid JSON, a document that is not a Grype
    report (naming what it looks like), or a report without a distro.
    """
    return from_document(load_json(data, WHAT))


def from_document(doc: Any) -> Report:
    """:func:`parse_grype` over an already parsed JSON document."""
    doc = as_document(doc, WHAT)
    if "matches" not in doc or not ("descriptor" in doc or "source" in doc
                                    or "distro" in doc):
        raise wrong_kind(doc, "a Grype JSON report")
    distro = get_object(doc, "distro", "distro", WHAT)
    family = get_text(distro, "name", "distro", WHAT)
    if not family:
        raise ReportError(f"{WHAT} has no distro: the scanner found no OS in the image")
    source = get_object(doc, "source", "source", WHAT)
    target = source.get("target")
    architecture = variant = artifact = ""
    if get_text(source, "type", "source", WHAT) == "image" and isinstance(target, dict):
        artifact = get_text(target, "userInput", "source.target", WHAT)
        architecture, variant = _platform(target)
    elif isinstance(target, str):
        artifact = target.strip()
    findings: list[Finding] = []
    for n, match in enumerate(get_list(doc, "matches", "matches", WHAT)):
        where = f"matches[{n}]"
        match = as_object(match, where, WHAT)
        vuln = as_object(match.get("vulnerability"), f"{where}.vulnerability", WHAT)
        package = as_object(match.get("artifact"), f"{where}.artifact", WHAT)
        fix = get_object(vuln, "fix", f"{where}.vulnerability.fix", WHAT)
        versions: list[str] = []
        for m, version in enumerate(get_list(fix, "versions",
                                             f"{where}.vulnerability.fix.versions", WHAT)):
            if not isinstance(version, str):
                raise ReportError(f"{WHAT}: {where}.vulnerability.fix.versions[{m}] is not "
                                  "a string")
            versions.extend(split_versions(version))
        kind = get_text(package, "type", f"{where}.artifact", WHAT)
        findings.append(Finding(
            vulnerability_id=get_text(vuln, "id", f"{where}.vulnerability", WHAT,
                                      required=True),
            package=get_text(package, "name", f"{where}.artifact", WHAT, required=True),
            installed_version=get_text(package, "version", f"{where}.artifact", WHAT),
            fixed_versions=tuple(dict.fromkeys(versions)),
            status=get_text(fix, "state", f"{where}.vulnerability.fix", WHAT),
            severity=get_text(vuln, "severity", f"{where}.vulnerability", WHAT).upper(),
            package_class=OS_PKGS if kind in OS_PACKAGE_TYPES else LANG_PKGS,
            package_type=kind,
            purl=get_text(package, "purl", f"{where}.artifact", WHAT),
        ))
    return build_report("grype", family, get_text(distro, "version", "distro", WHAT),
                        architecture, variant, findings, artifact=artifact)


def _platform(target: dict[str, Any]) -> tuple[str, str]:
    """The scanned image's architecture and variant as written: Syft's ``architecture``
    and ``architectureVariant`` fields, else the image config Syft embeds (base64)."""
    arch = get_text(target, "architecture", "source.target", WHAT)
    variant = get_text(target, "architectureVariant", "source.target", WHAT)
    if not arch:
        config = _embedded_config(target.get("config"))
        arch = get_text(config, "architecture", "source.target.config", WHAT)
        variant = variant or get_text(config, "variant", "source.target.config", WHAT)
    return arch, variant


def _embedded_config(value: Any) -> dict[str, Any]:
    """The image config Syft records as base64 bytes; ``{}`` when absent or unreadable
    (it only ever supplements the explicit fields)."""
    if not isinstance(value, str) or not value or len(value) > MAX_CONFIG:
        return {}
    try:
        config = json.loads(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError, RecursionError):
        return {}
    return config if isinstance(config, dict) else {}
