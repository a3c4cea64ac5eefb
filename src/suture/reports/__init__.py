"""Scanner reports, parsed into one :class:`Report` model.

Parsers are pure functions over bytes. A document that is JSON but not a report
of the expected kind is an error, never "nothing to patch".
"""

from suture.reports.model import Finding, Report, ReportError
from suture.reports.trivy import parse_trivy

__all__ = ["Finding", "Report", "ReportError", "parse_trivy"]
