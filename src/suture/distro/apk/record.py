"""The package fields ``APKINDEX`` and the installed database share.

Both write a package as lines ``<letter>:<value>`` with the same letters (``C``
identity, ``P`` name, ``V`` version, ``A`` arch, ``o`` origin, ``D``/``p``/``i``
relations, ...); :class:`PackageFields` reads them for both
(:class:`~suture.distro.apk.index.IndexEntry`,
:class:`~suture.distro.apk.installed.InstalledPackage`).
"""

from __future__ import annotations

import functools

from suture.distro.apk.deps import Dependency, parse_dependencies

__all__ = ["PackageFields"]


class PackageFields:
    """What a record's ``fields`` (every line as ``(letter, value)``, in order) say.

    Relations are parsed when first asked for; a malformed one raises
    :class:`~suture.errors.PackageFormatError`.
    """

    fields: tuple[tuple[str, str], ...]

    def get(self, letter: str, default: str = "") -> str:
        """The first value of ``letter``."""
        for key, value in self.fields:
            if key == letter:
                return value
        return default

    def values(self, letter: str) -> list[str]:
        """Every value of ``letter``, in order."""
        return [v for k, v in self.fields if k == letter]

    def number(self, letter: str) -> int:
        """The value of ``letter`` as a whole number; 0 when absent or not one."""
        value = self.get(letter)
        return int(value) if value.isdigit() else 0

    @property
    def name(self) -> str:
        return self.get("P")

    @property
    def version(self) -> str:
        return self.get("V")

    @property
    def arch(self) -> str:
        return self.get("A")

    @property
    def identity(self) -> str:
        return self.get("C")

    @property
    def origin(self) -> str:
        return self.get("o") or self.name

    def _deps(self, letter: str) -> tuple[Dependency, ...]:
        return tuple(d for v in self.values(letter)
                     for d in parse_dependencies(v, source=f"{self.name} {letter}:"))

    @functools.cached_property
    def depends(self) -> tuple[Dependency, ...]:
        return self._deps("D")

    @functools.cached_property
    def provides(self) -> tuple[Dependency, ...]:
        return self._deps("p")

    @functools.cached_property
    def install_if(self) -> tuple[Dependency, ...]:
        return self._deps("i")
