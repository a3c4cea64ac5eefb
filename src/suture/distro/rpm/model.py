"""The values the rpm family's modules hand each other: dependencies, packages as the
resolver sees them (installed or in a repository), and their files.

Versions are kept as rpm writes them (epoch as a number, version, release); ordering
is :mod:`suture.distro.rpm.version`'s. Nothing here parses or does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "SENSE_EQUAL",
    "SENSE_GREATER",
    "SENSE_LESS",
    "Dep",
    "PackageInfo",
    "RepoPackage",
]

# rpm's RPMSENSE_* bits a dependency's flags carry (rpmds.h).
SENSE_ANY = 0
SENSE_LESS = 1 << 1
SENSE_GREATER = 1 << 2
SENSE_EQUAL = 1 << 3
SENSE_POSTTRANS = 1 << 5
SENSE_PREREQ = 1 << 6
SENSE_PRETRANS = 1 << 7
SENSE_INTERP = 1 << 8
SENSE_SCRIPT_PRE = 1 << 9
SENSE_SCRIPT_POST = 1 << 10
SENSE_SCRIPT_PREUN = 1 << 11
SENSE_SCRIPT_POSTUN = 1 << 12
SENSE_RPMLIB = 1 << 24
SENSE_CONFIG = 1 << 28
SENSE_MISSINGOK = 1 << 19
SENSE_META = 1 << 29


@dataclass(frozen=True)
class Dep:
    """One dependency, as a header's ``*NAME``/``*FLAGS``/``*VERSION`` arrays or a
    repository's ``<rpm:entry>`` give it: ``version`` is ``[E:]V[-R]`` as written, or
    empty for an unversioned one; ``flags`` rpm's ``RPMSENSE_*`` bits. A rich
    dependency (``(a or b)``) keeps its whole text as ``name``."""

    name: str
    flags: int = 0
    version: str = ""

    @property
    def rich(self) -> bool:
        return self.name.startswith("(")

    def __str__(self) -> str:
        if not self.version:
            return self.name
        op = {SENSE_LESS: "<", SENSE_GREATER: ">", SENSE_EQUAL: "=",
              SENSE_LESS | SENSE_EQUAL: "<=", SENSE_GREATER | SENSE_EQUAL: ">="}.get(
                  self.flags & (SENSE_LESS | SENSE_GREATER | SENSE_EQUAL), "?")
        return f"{self.name} {op} {self.version}"


@dataclass(frozen=True)
class PackageInfo:
    """A package as the resolver sees it, installed or available."""

    name: str
    epoch: int | None  # None: the header has no EPOCH tag (orders as 0)
    version: str
    release: str
    arch: str
    provides: tuple[Dep, ...] = ()
    requires: tuple[Dep, ...] = ()
    obsoletes: tuple[Dep, ...] = ()
    conflicts: tuple[Dep, ...] = ()
    # Paths the package owns that a dependency may name (all of them for an installed
    # package; for a repository package, what primary.xml lists).
    files: tuple[str, ...] = ()
    sourcerpm: str = ""

    @property
    def evr(self) -> str:
        """``[E:]V-R`` as rpm prints it (no ``0:`` for a missing epoch)."""
        head = f"{self.epoch}:" if self.epoch else ""
        return f"{head}{self.version}-{self.release}"

    @property
    def nevra(self) -> str:
        return f"{self.name}-{self.evr}.{self.arch}"


@dataclass(frozen=True)
class RepoPackage(PackageInfo):
    """A package a repository's ``primary.xml`` offers: where it is and its checksum."""

    location: str = ""  # location href, relative to the repository's base URL
    base_url: str = ""  # the repository base it came from (location xml:base if given)
    checksum_type: str = "sha256"
    checksum: str = ""  # hex
    size: int = 0  # package file size
    repo_id: str = ""
    repo_order: int = 0  # the repository's place in the image's configuration
    priority: int = 99  # dnf's repository priority (lower wins)
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
