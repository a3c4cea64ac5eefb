"""Scanner reports, parsed into one :class:`Report` model.

Parsers are pure functions over bytes. A document that is JSON but not a report
of the expected kind is an error, never "nothing to patch". :func:`parse_report`
reads every format (detecting it unless told); :func:`run_plugin` runs a copa
scanner plugin, whose output :func:`parse_report` then reads as ``native``.
"""

from suture.reports.copa import parse_copa
from suture.reports.document import MAX_REPORT, describe, detect_format
from suture.reports.grype import parse_grype
from suture.reports.model import LANG_PKGS, OS_PKGS, Finding, Report, ReportError
from suture.reports.normalize import normalize_architecture, normalize_os_family
from suture.reports.parse import BUILTIN_SCANNERS, parse_report
from suture.reports.plugin import PLUGIN_PREFIX, plugin_executable, run_plugin
from suture.reports.trivy import parse_trivy

__all__ = [
    "BUILTIN_SCANNERS",
    "LANG_PKGS",
    "MAX_REPORT",
    "OS_PKGS",
    "PLUGIN_PREFIX",
    "Finding",
    "Report",
    "ReportError",
    "describe",
    "detect_format",
    "normalize_architecture",
    "normalize_os_family",
    "parse_copa",
    "parse_grype",
    "parse_report",
    "parse_trivy",
    "plugin_executable",
    "run_plugin",
]
