"""Debian package versions: parsing and dpkg's exact ordering.

A version is ``[epoch:]upstream[-revision]``. Ordering follows dpkg: epochs
compare as numbers; upstream and revision compare part by part, alternating a
non-digit part (compared character by character, where ``~`` sorts before
everything, even the end of the part, letters sort before all other
characters, and the end of the part sorts before letters) and a digit part
(compared as a number, so ``1.0`` equals ``1.00``). An absent revision equals
``0``, and an absent epoch equals ``0``: ``1.0``, ``0:1.0`` and ``1.0-0`` are
equal versions.

Each version is turned once into a sort key, a plain string whose code-point
order is dpkg's order; equal versions have equal keys, so :class:`Version` is
hashable consistently with its ordering.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from suture.errors import PackageFormatError

__all__ = ["Version", "compare_versions", "parse_version", "split_version", "version_key"]

_INT_MAX = 2**31 - 1  # dpkg keeps the epoch in a C int

# Character weights for non-digit parts, as code points: "~" < end of part < letters < the rest.
_TILDE, _END = "\x01", "\x02"
_ORDER = {ord("~"): _TILDE}
_ORDER.update({c: chr(c) for c in range(256) if chr(c).isascii() and chr(c).isalpha()})
_ORDER.update({c: chr(c + 256) for c in range(256) if c not in _ORDER and not 48 <= c <= 57})
_ORDER_TABLE = str.maketrans(_ORDER)

_PARTS = re.compile(r"([^0-9]*)([0-9]*)")
_STRICT_UPSTREAM = re.compile(r"[0-9][A-Za-z0-9.+~:-]*")
_STRICT_REVISION = re.compile(r"[A-Za-z0-9.+~]+")
_EPOCH = re.compile(r"[+-]?[0-9]+")


def _number_key(digits: str) -> str:
    """An order-preserving encoding of a run of digits (leading zeros do not count)."""
    digits = digits.lstrip("0")
    return chr(0x30 + len(digits)) + digits


def _string_key(text: str) -> str:
    """The sort key of an upstream version or a revision (dpkg's ``verrevcmp``)."""
    if not text.isascii():  # dpkg compares bytes; weigh each UTF-8 byte on its own
        text = text.encode("utf-8", "surrogateescape").decode("latin-1")
    pieces: list[str] = []
    for alpha, digits in _PARTS.findall(text):
        if alpha or digits:
            pieces.append(alpha.translate(_ORDER_TABLE))
            pieces.append(_END)
            pieces.append(_number_key(digits))
    if not pieces:  # the empty string compares like "0"
        pieces = [_END, _number_key("")]
    pieces.append(_END)  # the end of the string compares like an empty non-digit part
    return "".join(pieces)


@dataclass(frozen=True, eq=False, slots=True)
class Version:
    """A parsed Debian version; compares, sorts and hashes in dpkg's order.

    ``revision`` is ``""`` when the version has none. ``str()`` gives the
    canonical spelling, which leaves out a zero epoch (unless the upstream
    version holds a colon).
    """

    epoch: int
    upstream: str
    revision: str = ""
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = _number_key(str(self.epoch)) + _string_key(self.upstream) + _string_key(
            self.revision)
        object.__setattr__(self, "key", key)

    def __str__(self) -> str:
        show_epoch = self.epoch or ":" in self.upstream
        text = f"{self.epoch}:{self.upstream}" if show_epoch else self.upstream
        return f"{text}-{self.revision}" if self.revision else text

    def __eq__(self, other: object) -> bool:
        return self.key == other.key if isinstance(other, Version) else NotImplemented

    def __hash__(self) -> int:
        return hash(self.key)

    def __lt__(self, other: Version) -> bool:
        return self.key < other.key

    def __le__(self, other: Version) -> bool:
        return self.key <= other.key

    def __gt__(self, other: Version) -> bool:
        return self.key > other.key

    def __ge__(self, other: Version) -> bool:
        return self.key >= other.key


def _invalid(text: str, reason: str) -> PackageFormatError:
    return PackageFormatError(f"invalid version {text!r}: {reason}", text=text)


def parse_version(text: str, *, strict: bool = True) -> Version:
    """Parse a Debian version, raising :class:`PackageFormatError` naming ``text``.

    Leading and trailing spaces or tabs are ignored. Whatever dpkg refuses is
    always refused: an empty version, embedded blanks, an empty, non-numeric,
    negative or over-large epoch, nothing after the epoch's colon, an empty
    upstream version or an empty revision. With ``strict`` (the default) the
    version must also follow Debian policy, which dpkg only warns about: the
    upstream version starts with a digit and holds only letters, digits and
    ``.+~-:``, the revision only letters, digits and ``.+~``, and the epoch is
    plain digits. ``strict=False`` accepts exactly what ``dpkg
    --compare-versions`` accepts.
    """
    return Version(*split_version(text, strict=strict))


def split_version(text: str, *, strict: bool = True) -> tuple[int, str, str]:
    """Check ``text`` as :func:`parse_version` does; give ``(epoch, upstream, revision)``.

    Cheaper than :func:`parse_version` when only validity matters (builds no sort key).
    """
    string = text.strip(" \t")
    if not string:
        raise _invalid(text, "version string is empty")
    if " " in string or "\t" in string:
        raise _invalid(text, "version string has embedded spaces")
    epoch_text, colon, rest = string.partition(":")
    if colon:
        if not epoch_text:
            raise _invalid(text, "epoch in version is empty")
        if not _EPOCH.fullmatch(epoch_text) or (strict and not epoch_text.isdigit()):
            raise _invalid(text, "epoch in version is not a number")
        epoch = int(epoch_text)
        if epoch < 0:
            raise _invalid(text, "epoch in version is negative")
        if epoch > _INT_MAX:
            raise _invalid(text, "epoch in version is too big")
        if not rest:
            raise _invalid(text, "nothing after colon in version number")
    else:
        epoch, rest = 0, string
    upstream, hyphen, revision = rest.rpartition("-")
    if not hyphen:
        upstream, revision = rest, ""
    elif not revision:
        raise _invalid(text, "revision number is empty")
    if not upstream:
        raise _invalid(text, "version number is empty")
    if strict:
        if not upstream[0].isascii() or not upstream[0].isdigit():
            raise _invalid(text, "version number does not start with a digit")
        if not _STRICT_UPSTREAM.fullmatch(upstream):
            raise _invalid(text, "invalid character in version number")
        if hyphen and not _STRICT_REVISION.fullmatch(revision):
            raise _invalid(text, "invalid character in revision number")
    return epoch, upstream, revision


@lru_cache(maxsize=65536)
def version_key(text: str) -> str:
    """The sort key of a version string (dpkg's order; lenient parse, cached).

    ``sorted(versions, key=version_key)`` sorts as dpkg would.
    """
    return parse_version(text, strict=False).key


def compare_versions(a: str, b: str) -> int:
    """Compare two version strings as dpkg does: negative, zero or positive.

    Accepts what ``dpkg --compare-versions`` accepts (``strict=False``) and
    raises :class:`PackageFormatError` for what it refuses.
    """
    ka, kb = version_key(a), version_key(b)
    return (ka > kb) - (ka < kb)
