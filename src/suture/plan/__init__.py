"""The plan: which package goes to which version, and why. A pure, JSON-ready value.

``Plan`` is what ``--dry-run`` prints, what fetching reads, and what the result
JSON and the VEX document are built from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

REPORT, UPDATE_ALL, DEPENDENCY = "report", "update-all", "dependency"


def _to_json(value: Update | Skip | Failure) -> dict[str, Any]:
    out = asdict(value)
    out["vulnerabilities"] = list(value.vulnerabilities)
    return out


@dataclass(frozen=True)
class Update:
    """One package to install at ``to_version`` (``from_version`` None: newly installed).

    ``reason``: ``report`` (a finding named it), ``update-all`` (no report: newer
    version available), ``dependency`` (needed by another update).
    ``vulnerabilities``: the report's identifiers this update fixes.
    ``filename``/``size``/``sha256``/``base_uri``: where the verified package is.
    """

    name: str
    architecture: str
    from_version: str | None
    to_version: str
    source: str
    reason: str
    vulnerabilities: tuple[str, ...] = ()
    filename: str = ""
    size: int = 0
    sha256: str = ""
    base_uri: str = ""

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)


@dataclass(frozen=True)
class Skip:
    """A package the plan leaves alone, and why (``held``, ``no-fix``, ``not-installed``,
    ``up-to-date``, ``unfixed``)."""

    name: str
    reason: str
    detail: str = ""
    vulnerabilities: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)


@dataclass(frozen=True)
class Failure:
    """A package that must be updated but cannot be (its message says why)."""

    name: str
    message: str
    vulnerabilities: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)


@dataclass(frozen=True)
class Plan:
    family: str
    architecture: str
    updates: tuple[Update, ...] = ()
    skipped: tuple[Skip, ...] = ()
    failures: tuple[Failure, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def vulnerabilities(self) -> frozenset[str]:
        """Every identifier the updates fix (each counted once)."""
        return frozenset(v for u in self.updates for v in u.vulnerabilities)

    def with_vulnerabilities(self, found: dict[str, tuple[str, ...]]) -> Plan:
        """This plan with ``found[name]`` added to each update's vulnerabilities (the
        identifiers a package's own changelog says its new version fixes)."""
        updates = tuple(
            replace(u, vulnerabilities=tuple(sorted({*u.vulnerabilities, *found[u.name]})))
            if found.get(u.name) else u for u in self.updates)
        return replace(self, updates=updates)

    def to_json(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "architecture": self.architecture,
            "updates": [u.to_json() for u in self.updates],
            "skipped": [s.to_json() for s in self.skipped],
            "failures": [f.to_json() for f in self.failures],
            "notes": list(self.notes),
        }
