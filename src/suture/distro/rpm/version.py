"""rpm's version order, EVR parsing, dependency-range overlap and rich dependencies. Pure.

:func:`rpmvercmp` is rpm's segment comparison (``lib/rpmvercmp.c``), written from the
algorithm: a version is split into runs of ASCII digits and ASCII letters, everything
else separates them; ``~`` sorts before anything (even the end), ``^`` after the end
of the other side but before any further segment; a numeric segment beats an alphabetic
one; numbers compare without their leading zeros.

:func:`dep_matches` is rpm's ``rpmdsCompare``: whether two dependency ranges overlap.
:func:`parse_rich` / :func:`rich_satisfied` read rpm 4.13+ rich (boolean) dependencies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from suture.distro.rpm.model import (
    SENSE_EQUAL,
    SENSE_GREATER,
    SENSE_LESS,
    Dep,
    PackageInfo,
)
from suture.errors import SutureError

__all__ = [
    "EVR",
    "RichDep",
    "RichDepError",
    "compare_evr",
    "compare_packages",
    "dep_matches",
    "parse_evr",
    "parse_rich",
    "rich_satisfied",
    "rpmvercmp",
]

EVR = tuple[int | None, str, str | None]
SENSE_MASK = SENSE_LESS | SENSE_GREATER | SENSE_EQUAL

# Bound on the text a rich dependency may have (rpm's own are a few hundred bytes).
MAX_RICH = 64 * 1024


class RichDepError(SutureError):
    """A rich dependency that does not parse."""


def _alpha(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z")


def _digit(c: str) -> bool:
    return "0" <= c <= "9"


def _alnum(c: str) -> bool:
    return _alpha(c) or _digit(c)


def rpmvercmp(a: str, b: str) -> int:
    """rpm's order of two version (or release) strings: -1, 0 or 1."""
    if a == b:
        return 0
    i, j, la, lb = 0, 0, len(a), len(b)
    while i < la or j < lb:
        while i < la and not _alnum(a[i]) and a[i] not in "~^":
            i += 1
        while j < lb and not _alnum(b[j]) and b[j] not in "~^":
            j += 1
        ca = a[i] if i < la else ""
        cb = b[j] if j < lb else ""
        if ca == "~" or cb == "~":
            if ca != "~":
                return 1
            if cb != "~":
                return -1
            i, j = i + 1, j + 1
            continue
        if ca == "^" or cb == "^":
            if not ca:
                return -1
            if not cb:
                return 1
            if ca != "^":
                return 1
            if cb != "^":
                return -1
            i, j = i + 1, j + 1
            continue
        if not (ca and cb):
            break
        kind = _digit if _digit(ca) else _alpha
        si, sj = i, j
        while i < la and kind(a[i]):
            i += 1
        while j < lb and kind(b[j]):
            j += 1
        sa, sb = a[si:i], b[sj:j]
        if not sb:  # different kinds: the numeric one is newer
            return 1 if kind is _digit else -1
        if kind is _digit:
            sa, sb = sa.lstrip("0"), sb.lstrip("0")
            if len(sa) != len(sb):
                return 1 if len(sa) > len(sb) else -1
        if sa != sb:
            return 1 if sa > sb else -1
    if i >= la and j >= lb:
        return 0
    return -1 if i >= la else 1


def parse_evr(text: str) -> EVR:
    """``[E:]V[-R]`` -> ``(epoch or None, version, release or None)``, split as rpm's
    ``parseEVR`` does: the epoch is the leading digits before a ``:`` (an empty one is
    0), the release what follows the last ``-``."""
    k = 0
    while k < len(text) and _digit(text[k]):
        k += 1
    epoch: int | None = None
    rest = text
    if k < len(text) and text[k] == ":":
        epoch = int(text[:k]) if k else 0
        rest = text[k + 1:]
    version, sep, release = rest.rpartition("-")
    if not sep:
        return epoch, rest, None
    return epoch, version, release


def compare_evr(a: EVR, b: EVR) -> int:
    """Order two EVRs: a missing epoch is 0; a missing release on either side leaves the
    releases out of it (rpm's ``rpmverCmp``)."""
    ea, eb = a[0] or 0, b[0] or 0
    if ea != eb:
        return 1 if ea > eb else -1
    rc = rpmvercmp(a[1], b[1])
    if rc or a[2] is None or b[2] is None:
        return rc
    return rpmvercmp(a[2], b[2])


def compare_packages(a: PackageInfo, b: PackageInfo) -> int:
    """The EVR order of two packages (names and arches are not looked at)."""
    return compare_evr((a.epoch, a.version, a.release), (b.epoch, b.version, b.release))


def dep_matches(dep: Dep, provide: Dep) -> bool:
    """Whether ``dep`` and ``provide`` overlap, as rpm's ``rpmdsCompare``: same name, and
    either unversioned (or without a sense), or their ranges share a version."""
    if dep.name != provide.name:
        return False
    fa, fb = dep.flags & SENSE_MASK, provide.flags & SENSE_MASK
    if not (fa and fb) or not (dep.version and provide.version):
        return True
    a, b = parse_evr(dep.version), parse_evr(provide.version)
    sense = compare_evr(a, b)
    if sense == 0 and (a[2] is None) != (b[2] is None):
        # ``= V`` without a release stands for every release of V: it meets any range
        # that reaches V (rpm: ``a < 1.0-1`` is provided by ``a = 1.0``).
        bare = fa if a[2] is None else fb
        if bare & SENSE_EQUAL:
            return True
    if sense < 0:
        return bool(fa & SENSE_GREATER or fb & SENSE_LESS)
    if sense > 0:
        return bool(fa & SENSE_LESS or fb & SENSE_GREATER)
    return bool(fa & fb)


# -- rich dependencies ---------------------------------------------------------------

_OPS = ("and", "or", "if", "else", "unless", "with", "without")
_SENSES = {"<": SENSE_LESS, ">": SENSE_GREATER, "=": SENSE_EQUAL,
           "<=": SENSE_LESS | SENSE_EQUAL, ">=": SENSE_GREATER | SENSE_EQUAL,
           "=<": SENSE_LESS | SENSE_EQUAL, "=>": SENSE_GREATER | SENSE_EQUAL}


@dataclass(frozen=True)
class RichDep:
    """A parenthesised rich dependency: ``op`` one of ``and or if else unless with
    without`` (``if``/``unless`` with an ``else`` branch have three ``args``: condition
    second, else third); ``and``/``or``/``with`` may have more than two."""

    op: str
    args: tuple[RichDep | Dep, ...]


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    k, n = 0, len(text)
    while k < n:
        c = text[k]
        if c.isspace():
            k += 1
        elif c in "()":
            out.append(c)
            k += 1
        else:
            s = k
            depth = 0
            while k < n and not text[k].isspace():
                if text[k] == "(":
                    depth += 1  # a name such as ``perl(Foo)`` or ``config(x)``
                elif text[k] == ")":
                    if depth == 0:
                        break
                    depth -= 1
                k += 1
            out.append(text[s:k])
    return out


def parse_rich(text: str) -> RichDep:
    """Parse a rich dependency such as ``(a >= 1 or (b if c else d))``; raises
    :class:`RichDepError` on anything else (unbalanced parentheses, mixed operators,
    an operator without operands)."""
    if len(text) > MAX_RICH:
        raise RichDepError("rich dependency too long")
    toks = _tokens(text)
    pos = 0

    def term() -> RichDep | Dep:
        nonlocal pos
        if pos >= len(toks):
            raise RichDepError(f"rich dependency ends early: {text!r}")
        if toks[pos] == "(":
            return group()
        name = toks[pos]
        if name == ")" or name in _OPS:
            raise RichDepError(f"rich dependency lacks an operand: {text!r}")
        pos += 1
        if pos + 1 < len(toks) and toks[pos] in _SENSES:
            flags = _SENSES[toks[pos]]
            version = toks[pos + 1]
            if version in ("(", ")") or version in _OPS:
                raise RichDepError(f"rich dependency lacks a version: {text!r}")
            pos += 2
            return Dep(name, flags, version)
        return Dep(name)

    def group() -> RichDep:
        nonlocal pos
        pos += 1  # "("
        first = term()
        if pos < len(toks) and toks[pos] == ")":  # "(a)": a group of one
            pos += 1
            if isinstance(first, RichDep):
                return first
            return RichDep("and", (first,))
        if pos >= len(toks) or toks[pos] not in _OPS:
            raise RichDepError(f"rich dependency lacks an operator: {text!r}")
        op = toks[pos]
        if op == "else":
            raise RichDepError(f"'else' without 'if' or 'unless': {text!r}")
        args: list[RichDep | Dep] = [first]
        while pos < len(toks) and toks[pos] != ")":
            word = toks[pos]
            chained = word == op and (op in ("and", "or", "with") or len(args) == 1)
            branch = word == "else" and op in ("if", "unless") and len(args) == 2
            if not (chained or branch):
                raise RichDepError(f"unexpected {word!r} in rich dependency {text!r}")
            pos += 1
            args.append(term())
        if pos >= len(toks):
            raise RichDepError(f"unbalanced parentheses: {text!r}")
        pos += 1  # ")"
        if len(args) < 2:
            raise RichDepError(f"operator {op!r} lacks an operand: {text!r}")
        return RichDep(op, tuple(args))

    if not toks or toks[0] != "(":
        raise RichDepError(f"not a rich dependency: {text!r}")
    out = group()
    if pos != len(toks):
        raise RichDepError(f"text after rich dependency: {text!r}")
    return out


def _holds(node: RichDep | Dep, has: Callable[[Dep], bool]) -> bool:
    if isinstance(node, Dep):
        return has(node)
    a = node.args
    if node.op in ("and", "with"):
        # ``with`` asks one package to satisfy all: approximated here by each being met.
        return all(_holds(x, has) for x in a)
    if node.op == "or":
        return any(_holds(x, has) for x in a)
    if node.op == "without":
        return _holds(a[0], has) and not _holds(a[1], has)
    if node.op == "if":
        if _holds(a[1], has):
            return _holds(a[0], has)
        return _holds(a[2], has) if len(a) > 2 else True
    # unless: A unless B [else C]: A when B is not met, else C (or nothing)
    if _holds(a[1], has):
        return _holds(a[2], has) if len(a) > 2 else True
    return _holds(a[0], has)


def rich_satisfied(text: str, has: Callable[[Dep], bool]) -> bool:
    """Whether the rich dependency ``text`` is met as a ``Requires`` when ``has`` tells
    which simple dependencies the package set provides. ``with`` is approximated as
    ``and`` (rpm asks one package to provide both)."""
    return _holds(parse_rich(text), has)
