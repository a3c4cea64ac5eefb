"""apk package versions: validity and ordering as apk-tools orders them.

The grammar (apk-tools 3, which also reads every apk-tools 2 version)::

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

Known difference from apk-tools 2.14: that version compared leading-zero
components numerically after the zeros (``1.010 > 1.09`` there). Versions that
differ so are not seen in Alpine or Wolfi repositories.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

__all__ = [
    "EQUAL",
    "FUZZY",
    "GREATER",
    "LESS",
    "compare_versions",
    "is_valid_version",
    "match_version",
    "op_mask",
    "op_string",
    "version_key",
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


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` is older than, the same as, or newer than ``b``."""
    result = _compare(a, b, False)
    return -1 if result == LESS else (1 if result == GREATER else 0)


version_key = functools.cmp_to_key(compare_versions)
"""A sort key ordering versions as apk does (``sorted(vs, key=version_key)``)."""


def is_valid_version(version: str) -> bool:
    """Whether ``version`` follows the grammar (apk refuses dependencies on others)."""
    lexer = _Lexer(version)
    while lexer.token.kind < _END:
        lexer.advance()
    return lexer.token.kind == _END


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


def match_version(version: str, mask: int, target: str) -> bool:
    """Whether ``version`` stands in relation ``mask`` (see :func:`op_mask`) to ``target``."""
    if mask & ANY == ANY:
        return True
    return bool(_compare(version, target, bool(mask & FUZZY)) & mask)
