"""apk package versions: validity and ordering as apk-tools orders them.

The grammar (apk-tools 3; apk-tools 2 differs a little, see below)::

    digits {"." digits} [letter] {"_" suffix [digits]} ["~" hexhash] ["-r" digits]

where ``letter`` is one of ``a``..``z``, ``suffix`` one of ``alpha``, ``beta``,
``pre``, ``rc`` (pre-releases: before the bare version) or ``cvs``, ``svn``,
``git``, ``hg``, ``p`` (after it), and ``hexhash`` lowercase hex digits.

Comparison walks both versions token by token. Numbers compare as numbers, except
that a dotted component with a leading zero in either version compares as a
string (``1.05 < 1.5``, ``1.010 < 1.09``); letters compare by character, suffixes
by their rank, a ``~`` hash as a string. When one version runs out first, the
longer one is newer unless what follows is a pre-release suffix
(``1.0_rc1 < 1.0 < 1.0_p1 < 1.0-r1``). Invalid text never raises: it sorts below
any valid continuation, as apk sorts it. The fuzzy operator ``~`` matches by
prefix (``1.2.3 ~ 1.2``).

apk-tools 2 (2.14: Alpine <= 3.22, Wolfi and Chainguard images whose ``apk-tools`` is
2.x) orders a few versions differently, and accepts a slightly different set: pass
``apk2=True`` to :func:`compare_versions`, :func:`is_valid_version` and
:func:`match_version` (or use :func:`version_key_for`) for its order. There a dotted
component's extra leading zeros count as a negative token before the rest of it
(``1.00 < 1.0``, ``1.010 > 1.09``), a letter may be followed by digits (``1.0a1``), an
empty ``-r`` counts as ``-r0``, a number has at most 17 digits and there is no ``~`` hash.
:func:`apk2_order` tells which order an image's ``apk`` uses. The fuzzy operator matches
by prefix in both orders.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "EQUAL",
    "FUZZY",
    "GREATER",
    "LESS",
    "apk2_order",
    "compare_versions",
    "is_valid_version",
    "match_version",
    "op_mask",
    "op_string",
    "version_key",
    "version_key_apk2",
    "version_key_for",
]

# Result bits, as apk combines them into dependency operators.
EQUAL, LESS, GREATER, FUZZY = 1, 2, 4, 8
ANY = EQUAL | LESS | GREATER
CHECKSUM = LESS | GREATER  # the "><" operator: a package identity, not a version

_INITIAL, _DIGIT, _LETTER, _SUFFIX, _SUFFIX_NO, _HASH, _REVISION, _END, _INVALID = range(9)
# Suffix ranks; anything below _NONE is a pre-release.
_PRE = {"alpha": 1, "beta": 2, "pre": 3, "rc": 4}
_NONE = 5
_POST = {"cvs": 6, "svn": 7, "git": 8, "hg": 9, "p": 10}
_SUFFIX_RANK = {**_PRE, **_POST}
_U64 = (1 << 64) - 1
_HEX = frozenset("0123456789abcdef")


@dataclass(slots=True)
class _Token:
    kind: int = _INITIAL
    number: int = 0
    suffix: int = 0
    value: str = ""


class _Lexer:
    """Yields the tokens of one version string, one call at a time."""

    __slots__ = ("pos", "text", "token")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.token = _Token()
        self._digits(_INITIAL)

    def _digits(self, kind: int) -> None:
        text, start = self.text, self.pos
        end = start
        number = 0
        while end < len(text) and "0" <= text[end] <= "9":
            number = (number * 10 + ord(text[end]) - 48) & _U64
            end += 1
        self.pos = end
        value = text[start:end]
        self.token = _Token(kind if value else _INVALID, number, 0, value)

    def _span(self, allowed: frozenset[str] | None) -> str:
        text, start = self.text, self.pos
        end = start
        while end < len(text) and (("a" <= text[end] <= "z") if allowed is None
                                   else text[end] in allowed):
            end += 1
        self.pos = end
        return text[start:end]

    def advance(self) -> None:
        text, kind = self.text, self.token.kind
        if self.pos >= len(text):
            self.token = _Token(_END)
            return
        char = text[self.pos]
        if "a" <= char <= "z":
            if kind > _DIGIT:
                self.token = _Token(_INVALID)
                return
            self.pos += 1
            self.token = _Token(_LETTER, value=char)
        elif char == "." or "0" <= char <= "9":
            if char == ".":
                if kind > _DIGIT:
                    self.token = _Token(_INVALID)
                    return
                self.pos += 1
            if kind in (_INITIAL, _DIGIT):
                self._digits(_DIGIT)
            elif kind == _SUFFIX:
                self._digits(_SUFFIX_NO)
            else:
                self.token = _Token(_INVALID)
        elif char == "_":
            if kind > _SUFFIX_NO:
                self.token = _Token(_INVALID)
                return
            self.pos += 1
            name = self._span(None)
            rank = _SUFFIX_RANK.get(name, 0)
            self.token = _Token(_SUFFIX if rank else _INVALID, suffix=rank, value=name)
        elif char == "~":
            if kind >= _HASH:
                self.token = _Token(_INVALID)
                return
            self.pos += 1
            value = self._span(_HEX)
            self.token = _Token(_HASH if value else _INVALID, value=value)
        elif char == "-":
            if kind >= _REVISION or not text.startswith("-r", self.pos):
                self.token = _Token(_INVALID)
                return
            self.pos += 2
            self._digits(_REVISION)
        else:
            self.token = _Token(_INVALID)


def _string_order(a: str, b: str) -> int:
    ab, bb = a.encode(), b.encode()
    common = min(len(ab), len(bb))
    if ab[:common] != bb[:common]:
        return -1 if ab[:common] < bb[:common] else 1
    return (len(ab) > len(bb)) - (len(ab) < len(bb))


def _token_order(a: _Token, b: _Token) -> int:
    kind = a.kind
    if kind == _DIGIT and (a.value.startswith("0") or b.value.startswith("0")):
        return _string_order(a.value, b.value)
    if kind in (_INITIAL, _DIGIT, _SUFFIX_NO, _REVISION):
        x, y = a.number, b.number
    elif kind == _LETTER:
        x, y = ord(a.value), ord(b.value)
    elif kind == _SUFFIX:
        x, y = a.suffix, b.suffix
    else:
        return _string_order(a.value, b.value)
    return (x > y) - (x < y)


def _compare(a: str, b: str, fuzzy: bool) -> int:
    """``EQUAL``, ``LESS`` or ``GREATER`` (apk's result bits)."""
    la, lb = _Lexer(a), _Lexer(b)
    while la.token.kind == lb.token.kind and la.token.kind < _END:
        order = _token_order(la.token, lb.token)
        if order:
            return LESS if order < 0 else GREATER
        la.advance()
        lb.advance()
    ta, tb = la.token, lb.token
    if ta.kind == tb.kind or (fuzzy and tb.kind == _END):
        return EQUAL
    if ta.kind == _SUFFIX and ta.suffix < _NONE:
        return LESS
    if tb.kind == _SUFFIX and tb.suffix < _NONE:
        return GREATER
    return LESS if ta.kind > tb.kind else GREATER


def compare_versions(a: str, b: str, *, apk2: bool = False) -> int:
    """-1, 0 or 1 as ``a`` is older than, the same as, or newer than ``b`` (as apk-tools 2
    orders them with ``apk2``, else as apk-tools 3)."""
    result = _compare_apk2(a, b, False) if apk2 else _compare(a, b, False)
    return -1 if result == LESS else (1 if result == GREATER else 0)


def _compare_v2(a: str, b: str) -> int:
    result = _compare_apk2(a, b, False)
    return -1 if result == LESS else (1 if result == GREATER else 0)


version_key = functools.cmp_to_key(compare_versions)
"""A sort key ordering versions as apk-tools 3 does (``sorted(vs, key=version_key)``)."""

version_key_apk2 = functools.cmp_to_key(_compare_v2)
"""A sort key ordering versions as apk-tools 2 does."""


def version_key_for(apk2: bool) -> Callable[[str], Any]:
    """The sort key of one order: :data:`version_key_apk2` or :data:`version_key`."""
    return version_key_apk2 if apk2 else version_key


def is_valid_version(version: str, *, apk2: bool = False) -> bool:
    """Whether ``version`` follows the grammar of apk-tools 2 (``apk2``) or 3 (apk
    refuses dependencies on others)."""
    if apk2:
        return _apk2_tokens(version)[-1][1] == _V2_END
    lexer = _Lexer(version)
    while lexer.token.kind < _END:
        lexer.advance()
    return lexer.token.kind == _END


# ------------------------------------------------------------------ apk-tools 2
# Its lexer reads a token's value, then the type of the token after it; a version is the
# list of (value, type of the next token) pairs, up to _V2_END or _V2_INVALID.
(_V2_DIGIT_OR_ZERO, _V2_DIGIT, _V2_LETTER, _V2_SUFFIX, _V2_SUFFIX_NO, _V2_REVISION,
 _V2_END) = range(7)
_V2_INVALID = -1
_V2_PRE = ("alpha", "beta", "pre", "rc")
_V2_POST = ("cvs", "svn", "git", "hg", "p")
_V2_SUFFIXES = tuple((w, i - len(_V2_PRE)) for i, w in enumerate(_V2_PRE)) + \
    tuple((w, i) for i, w in enumerate(_V2_POST))
_V2_MAX_DIGITS = 18  # apk-tools 2.14 refuses a number this long


def _v2_next(text: str, pos: int, kind: int) -> tuple[int, int]:
    """The type of the token at ``pos`` after one of ``kind``, and where it starts."""
    char = text[pos]
    if kind <= _V2_DIGIT and "a" <= char <= "z":
        new = _V2_LETTER
    elif kind == _V2_LETTER and "0" <= char <= "9":
        new = _V2_DIGIT
    elif kind == _V2_SUFFIX and "0" <= char <= "9":
        new = _V2_SUFFIX_NO
    else:
        new = _V2_INVALID
        if char == ".":
            new = _V2_DIGIT_OR_ZERO
        elif char == "_":
            new = _V2_SUFFIX
        elif char == "-" and text.startswith("r", pos + 1):
            new, pos = _V2_REVISION, pos + 1
        pos += 1
    if new < kind and not ((new == _V2_DIGIT_OR_ZERO and kind == _V2_DIGIT)
                           or (new == _V2_SUFFIX and kind == _V2_SUFFIX_NO)
                           or (new == _V2_DIGIT and kind == _V2_LETTER)):
        new = _V2_INVALID
    return new, pos


@functools.lru_cache(maxsize=1 << 16)
def _apk2_tokens(text: str) -> tuple[tuple[int, int], ...]:
    """apk-tools 2's ``get_token`` over all of ``text``: (value, type of the next token)."""
    out: list[tuple[int, int]] = []
    pos, kind, size = 0, _V2_DIGIT, len(text)
    while True:
        if pos >= size:
            out.append((0, _V2_END))
            return tuple(out)
        then = None
        if kind == _V2_DIGIT_OR_ZERO and text[pos] == "0":
            # the extra leading zeros count as minus their number; the last one stays
            end = pos
            while end + 1 < size and text[end + 1] == "0":
                end += 1
            value, then = pos - end, _V2_DIGIT
        elif kind in (_V2_DIGIT_OR_ZERO, _V2_DIGIT, _V2_SUFFIX_NO, _V2_REVISION):
            end = pos
            while end < size and "0" <= text[end] <= "9":
                end += 1
            if end - pos >= _V2_MAX_DIGITS:
                out.append((-1, _V2_INVALID))
                return tuple(out)
            value = int(text[pos:end]) if end > pos else 0
        elif kind == _V2_LETTER:
            value, end = ord(text[pos]), pos + 1
        elif kind == _V2_SUFFIX:
            for word, rank in _V2_SUFFIXES:
                if text.startswith(word, pos):
                    value, end = rank, pos + len(word)
                    break
            else:
                out.append((-1, _V2_INVALID))
                return tuple(out)
        else:  # pragma: no cover - the loop stops at _V2_END and _V2_INVALID
            out.append((-1, _V2_INVALID))
            return tuple(out)
        pos = end
        if pos >= size:
            kind = _V2_END
        elif then is not None:
            kind = then
        else:
            kind, pos = _v2_next(text, pos, kind)
        out.append((value, kind))
        if kind in (_V2_END, _V2_INVALID):
            return tuple(out)


def _compare_apk2(a: str, b: str, fuzzy: bool) -> int:
    """apk-tools 2's ``apk_version_compare_blob_fuzzy``: ``EQUAL``, ``LESS`` or ``GREATER``."""
    if a == b:
        return EQUAL
    ta, tb = _apk2_tokens(a), _apk2_tokens(b)
    i = 0
    while True:
        av, at = ta[i]
        bv, bt = tb[i]
        if av != bv:
            return LESS if av < bv else GREATER
        if at != bt:
            break
        if at in (_V2_END, _V2_INVALID):
            return EQUAL
        i += 1
    if fuzzy and bt == _V2_END:
        return EQUAL
    # equal so far: the longer one is newer, unless what follows is a pre-release suffix
    if at == _V2_SUFFIX and ta[i + 1][0] < 0:
        return LESS
    if bt == _V2_SUFFIX and tb[i + 1][0] < 0:
        return GREATER
    return LESS if at > bt else GREATER


def apk2_order(apk_tools: str | None, os_id: str = "", version_id: str = "") -> bool:
    """Whether an image's versions are ordered as apk-tools 2 orders them.

    ``apk_tools``: the version of the image's installed ``apk-tools`` package (``None``
    when it has none, as distroless images): 2.x -> apk-tools 2, 3.x or later -> 3.
    Without it, Alpine (``os_id`` ``alpine``) by its ``VERSION_ID``: up to 3.22 -> 2,
    later (and ``edge``, or a version it cannot read) -> 3; any other distribution
    (Wolfi, Chainguard) -> 2.
    """
    if apk_tools:
        major = apk_tools.split(".", 1)[0]
        if major.isdigit():
            return int(major) < 3
    if os_id == "alpine":
        parts = version_id.split(".")
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
            return (int(parts[0]), int(parts[1])) <= (3, 22)
        return False
    return True


def op_mask(op: str) -> int:
    """The result bits of an operator: ``<``, ``<=``, ``=``, ``>=``, ``>``, ``~``,
    ``<~``, ``>~``, ``><``; 0 for text that is not one."""
    mask = 0
    for char in op:
        if char == "<":
            mask |= LESS
        elif char == ">":
            mask |= GREATER
        elif char == "=":
            mask |= EQUAL
        elif char == "~":
            mask |= FUZZY | EQUAL
        else:
            return 0
    return mask


def op_string(mask: int) -> str:
    """The operator apk writes for ``mask`` (the inverse of :func:`op_mask`)."""
    return {LESS: "<", LESS | EQUAL: "<=", LESS | EQUAL | FUZZY: "<~", EQUAL | FUZZY: "~",
            FUZZY: "~", EQUAL: "=", GREATER | EQUAL: ">=", GREATER | EQUAL | FUZZY: ">~",
            GREATER: ">", CHECKSUM: "><", ANY: ""}.get(mask, "?")


def match_version(version: str, mask: int, target: str, *, apk2: bool = False) -> bool:
    """Whether ``version`` stands in relation ``mask`` (see :func:`op_mask`) to ``target``
    (in apk-tools 2's order with ``apk2``)."""
    if mask & ANY == ANY:
        return True
    compare = _compare_apk2 if apk2 else _compare
    return bool(compare(version, target, bool(mask & FUZZY)) & mask)
