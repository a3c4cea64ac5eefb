"""apk dependency expressions: ``D:``, ``p:``, ``i:``, ``r:`` fields and ``/etc/apk/world``.

One expression is ``[!]name[@tag][op version]``, expressions separated by white
space. ``op`` is one of ``<``, ``<=``, ``=``, ``>=``, ``>``, ``~`` (fuzzy: a
version prefix), ``<~``, ``>~``, or ``><`` with a package identity (``Q1...``)
instead of a version. A leading ``!`` makes it a conflict. ``@tag`` only appears
in ``world`` and pins the package to the repository tagged so.

Provides (``p:``) use the same syntax: ``so:libc.musl-x86_64.so.1=1``,
``cmd:busybox=1.36.1-r29``, or a bare name. As in apk-tools 2, a provide without a
version satisfies only dependencies without one.

A version is accepted when apk-tools 2 or 3 accepts it (which one the image has is
known only later); :meth:`Dependency.satisfied_by` compares in the order its ``apk2``
says (:mod:`suture.distro.apk.version`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from suture.distro.apk.version import (
    ANY,
    CHECKSUM,
    is_valid_version,
    match_version,
    op_mask,
    op_string,
)
from suture.errors import PackageFormatError

__all__ = ["Dependency", "format_dependencies", "parse_dependencies"]

_COMPARERS = "<>=~"


@dataclass(frozen=True)
class Dependency:
    """One dependency, provide or world entry.

    ``mask`` holds :mod:`suture.distro.apk.version` result bits (``ANY`` when no
    version is given); ``version`` is ``None`` then. ``tag`` is the repository tag
    without its ``@``, ``""`` when none.
    """

    name: str
    mask: int = ANY
    version: str | None = None
    conflict: bool = False
    tag: str = ""

    def __str__(self) -> str:
        text = ("!" if self.conflict else "") + self.name + (f"@{self.tag}" if self.tag else "")
        if self.version is not None:
            text += op_string(self.mask) + self.version
        return text

    @property
    def versioned(self) -> bool:
        return self.version is not None

    def _version_ok(self, version: str | None, identity: str | None, apk2: bool) -> bool:
        if self.version is None:
            return True
        if self.mask == CHECKSUM:
            return identity is not None and identity == self.version
        if version is None:  # a provide without a version: only unversioned dependencies
            return False
        return match_version(version, self.mask, self.version, apk2=apk2)

    def satisfied_by(self, name: str, version: str | None, *, identity: str | None = None,
                     apk2: bool = False) -> bool:
        """Whether a package (or a provide) ``name`` at ``version`` meets the version
        constraint, ignoring ``conflict`` (``name`` must be this dependency's name);
        ``apk2``: compare as apk-tools 2 does."""
        return name == self.name and self._version_ok(version, identity, apk2)


def _parse_one(token: str, *, allow_tag: bool, source: str) -> Dependency:
    text = token
    conflict = text.startswith("!")
    if conflict:
        text = text[1:]
    cut = next((i for i, c in enumerate(text) if c in _COMPARERS), None)
    mask, version = ANY, None
    if cut is not None:
        name = text[:cut]
        end = cut
        while end < len(text) and text[end] in _COMPARERS:
            end += 1
        mask = op_mask(text[cut:end])
        version = text[end:]
        if mask == 0 or not version:
            raise PackageFormatError(f"{source}: bad dependency {token!r}", text=token)
        if mask != CHECKSUM and not (is_valid_version(version)
                                     or is_valid_version(version, apk2=True)):
            raise PackageFormatError(f"{source}: bad version in dependency {token!r}",
                                     text=token)
    else:
        name = text
    tag = ""
    if "@" in name:
        name, _, tag = name.partition("@")
        if not allow_tag or not tag:
            raise PackageFormatError(f"{source}: unexpected repository tag in {token!r}",
                                     text=token)
    if not name:
        raise PackageFormatError(f"{source}: bad dependency {token!r}", text=token)
    return Dependency(name, mask, version, conflict, tag)


def parse_dependencies(text: str, *, allow_tag: bool = False, source: str = "dependency"
                       ) -> tuple[Dependency, ...]:
    """Parse white-space separated expressions; :class:`PackageFormatError` on a bad one.

    ``allow_tag``: accept ``name@tag`` (``/etc/apk/world`` only).
    """
    return tuple(_parse_one(t, allow_tag=allow_tag, source=source) for t in text.split())


def format_dependencies(deps: Iterable[Dependency]) -> str:
    """Expressions as apk writes them, separated by one space."""
    return " ".join(str(d) for d in deps)
