"""Reading a report document: bounded JSON, shape checks, and telling kinds apart.

Every parser goes through :func:`load_json` and the small accessors here, so a
malformed document is one :class:`ReportError` naming the field, never a
``KeyError`` or ``TypeError`` from deep inside a parser.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from suture.reports.model import Finding, Report, ReportError
from suture.reports.normalize import normalize_architecture, normalize_os_family

MAX_REPORT = 512 << 20
"""The largest report (or plugin output) read, in bytes."""

TRIVY, GRYPE, NATIVE = "trivy", "grype", "native"
COPA_API_VERSIONS = ("v1alpha1", "v1alpha2")


def load_json(data: bytes, what: str) -> Any:
    """Parse ``data`` as JSON; every failure is a one-line :class:`ReportError` that
    starts with ``what`` (``"trivy report"``, ...)."""
    if len(data) > MAX_REPORT:
        raise ReportError(f"{what} is larger than {MAX_REPORT} bytes")
    if not data.strip():
        raise ReportError(f"{what} is empty")
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        text = exc.doc.rstrip()
        if exc.pos >= len(text) or exc.msg.startswith("Unterminated string"):
            line = text.count("\n") + 1
            column = len(text) - text.rfind("\n")
            raise ReportError(f"{what} is not valid JSON: it ends early, at line {line} "
                              f"column {column} (truncated?)") from None
        raise ReportError(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} "
                          f"column {exc.colno}") from None
    except UnicodeDecodeError:
        raise ReportError(f"{what} is not valid JSON: not UTF-8, UTF-16 or UTF-32 text") from None
    except RecursionError:
        raise ReportError(f"{what} is not a report: JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer past the int-digits limit
        raise ReportError(f"{what} is not valid JSON: {exc}") from None


def detect_format(doc: Any) -> str | None:
    """``trivy``, ``grype`` or ``native`` (copa) for a parsed document, by the keys
    each format always writes; ``None`` when it is none of them."""
    if not isinstance(doc, dict):
        return None
    if "SchemaVersion" in doc:
        return TRIVY
    if "matches" in doc and ("descriptor" in doc or "source" in doc):
        return GRYPE
    if "apiVersion" in doc and ("metadata" in doc or "updates" in doc or "osupdates" in doc):
        return NATIVE
    return None


def describe(doc: Any) -> str:
    """What a parsed JSON document looks like, for an error message: ``a Grype JSON
    report``, ``a CycloneDX SBOM``, ``a JSON object with keys a, b``, ..."""
    if isinstance(doc, list):
        if doc and all(isinstance(d, dict) and "Target" in d for d in doc):
            return "a Trivy report from before SchemaVersion 2 (a list of results)"
        return "a JSON list"
    if not isinstance(doc, dict):
        name = {str: "string", bool: "boolean", type(None): "null"}.get(type(doc), "number")
        return f"a JSON {name}"
    kind = detect_format(doc)
    if kind == TRIVY:
        return f"a Trivy JSON report (SchemaVersion {doc.get('SchemaVersion')!r})"
    if kind == GRYPE:
        return "a Grype JSON report"
    if kind == NATIVE:
        return f"a copa document (apiVersion {doc.get('apiVersion')!r})"
    if doc.get("bomFormat") == "CycloneDX":
        return "a CycloneDX SBOM"
    if "spdxVersion" in doc:
        return "an SPDX SBOM"
    if "artifacts" in doc and "descriptor" in doc:
        return "a Syft SBOM"
    if "runs" in doc and "sarif" in str(doc.get("$schema", "")).lower() + str(doc.get("version")):
        return "a SARIF log"
    if "openvex" in str(doc.get("@context", "")):
        return "an OpenVEX document"
    if "apiVersion" in doc:
        return f"a document with apiVersion {doc.get('apiVersion')!r}"
    keys = ", ".join(sorted(str(k) for k in doc)[:5])
    return f"a JSON object with keys {keys}" if keys else "an empty JSON object"


HINTS = {TRIVY: "--scanner trivy", GRYPE: "--scanner grype", NATIVE: "--scanner native"}


def wrong_kind(doc: Any, expected: str) -> ReportError:
    """The error for a JSON document that is not a report of the ``expected`` kind."""
    kind = detect_format(doc)
    hint = f"use {HINTS[kind]}, or no --scanner to detect the format" if kind else None
    return ReportError(f"not {expected}: it looks like {describe(doc)}", hint=hint)


def unknown_kind(doc: Any) -> ReportError:
    """The error for a JSON document that is no report suture reads."""
    old_trivy = isinstance(doc, list) and describe(doc).startswith("a Trivy")
    return ReportError(
        f"not a Trivy, Grype or copa v1alpha1/v1alpha2 report: it looks like {describe(doc)}",
        hint="use Trivy 0.20 or later with --format json" if old_trivy
        else "for another scanner's format, name its plugin with --scanner")


# --- accessors ---------------------------------------------------------------------


def as_document(doc: Any, what: str, *, hint: str | None = None) -> dict[str, Any]:
    """A parsed document as the object every format is; anything else is an error
    naming what it looks like."""
    if not isinstance(doc, dict):
        raise ReportError(f"{what}: the document is not an object (it looks like "
                          f"{describe(doc)})", hint=hint)
    return doc


def as_object(value: Any, where: str, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ReportError(f"{what}: {where} is not an object")
    return value


def get_object(parent: dict[str, Any], key: str, where: str, what: str) -> dict[str, Any]:
    """``parent[key]`` as an object; missing or ``null`` is an empty one."""
    value = parent.get(key)
    return {} if value is None else as_object(value, where, what)


def get_list(parent: dict[str, Any], key: str, where: str, what: str) -> list[Any]:
    """``parent[key]`` as a list; missing or ``null`` is an empty one."""
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ReportError(f"{what}: {where} is not a list")
    return value


def get_text(parent: dict[str, Any], key: str, where: str, what: str, *,
             required: bool = False) -> str:
    """``parent[key]`` as trimmed text. Numbers are accepted (a version may be written
    as ``12``); objects, lists and booleans are an error; missing, ``null`` or empty
    is ``""`` unless ``required``, then an error ``<where> has no <key>``."""
    value = parent.get(key)
    if isinstance(value, bool | dict | list):
        raise ReportError(f"{what}: {where}.{key} is not a string")
    text = "" if value is None else str(value).strip()
    if required and not text:
        raise ReportError(f"{what}: {where} has no {key}")
    return text


def split_versions(text: str) -> tuple[str, ...]:
    """A fixed-version field that may list several versions, comma-separated."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


def unique(findings: Iterable[Finding]) -> tuple[Finding, ...]:
    """Findings without exact repeats, in first-seen order."""
    return tuple(dict.fromkeys(findings))


def build_report(scanner: str, os_family: str, os_version: str, architecture: str,
                 variant: str, findings: Iterable[Finding], *, artifact: str = "",
                 api_version: str = "") -> Report:
    """The :class:`Report` of what a parser read, as the scanner wrote it: the OS family
    and the architecture normalised (no architecture: ``None``, and the variant with
    it), findings without exact repeats."""
    arch, var = (normalize_architecture(architecture, variant or None) if architecture
                 else (None, None))
    return Report(
        scanner=scanner,
        os_family=normalize_os_family(os_family),
        os_version=os_version,
        architecture=arch,
        variant=var,
        findings=unique(findings),
        artifact=artifact,
        api_version=api_version,
    )
