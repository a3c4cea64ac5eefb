"""One entry point for every report format, with the format detected when not named."""

from __future__ import annotations

from suture.reports import copa, grype, trivy
from suture.reports.document import (
    GRYPE,
    NATIVE,
    TRIVY,
    detect_format,
    load_json,
    unknown_kind,
)
from suture.reports.model import Report, ReportError

__all__ = ["BUILTIN_SCANNERS", "parse_report"]

BUILTIN_SCANNERS = (TRIVY, GRYPE, NATIVE)
"""Scanner names read by :func:`parse_report`; any other name is a plugin
(:func:`suture.reports.plugin.run_plugin`)."""

_READERS = {TRIVY: (trivy.WHAT, trivy.from_document), GRYPE: (grype.WHAT, grype.from_document),
            NATIVE: (copa.WHAT, copa.from_document)}


def parse_report(data: bytes, scanner: str | None = None) -> Report:
    """Parse a scanner report of the format ``scanner`` names: ``trivy`` (Trivy JSON,
    SchemaVersion 2), ``grype`` (Grype JSON), ``native`` (copa ``v1alpha1`` or
    ``v1alpha2``, also what plugins print), or ``None`` to detect it from the keys
    each format always writes (Trivy ``SchemaVersion``; Grype ``matches`` with
    ``descriptor`` or ``source``; copa ``apiVersion``).

    Raises :class:`ReportError` when the bytes are not JSON (saying so when they end
    early), are JSON but not a report of the named (or any known) kind (naming what
    they look like), lack the OS the report is about, or are malformed; and for a
    ``scanner`` that is none of :data:`BUILTIN_SCANNERS`.
    """
    if scanner is None:
        doc = load_json(data, "report")
        kind = detect_format(doc)
        if kind is None:
            raise unknown_kind(doc)
        return _READERS[kind][1](doc)
    if scanner not in _READERS:
        raise ReportError(f"unknown scanner {scanner!r}: suture reads "
                          f"{', '.join(BUILTIN_SCANNERS)}; other scanners run as plugins")
    what, reader = _READERS[scanner]
    return reader(load_json(data, what))
