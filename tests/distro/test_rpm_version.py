"""rpm version order, EVR and dependency overlap, judged by librpm itself (python3-rpm in
the system python, one subprocess per batch); rich dependencies on hand-checked cases."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from suture.distro.rpm.model import SENSE_EQUAL, SENSE_GREATER, SENSE_LESS, Dep, PackageInfo
from suture.distro.rpm.version import (
    RichDep,
    RichDepError,
    compare_evr,
    compare_packages,
    dep_matches,
    parse_evr,
    parse_rich,
    rich_satisfied,
    rpmvercmp,
)

SYSTEM_PYTHON = Path("/usr/bin/python3")

ORACLE = r"""
import json, sys, rpm
req = json.load(sys.stdin)
def sign(x):
    return (x > 0) - (x < 0)
out = {"vercmp": [sign(rpm.labelCompare(("0", a, "1"), ("0", b, "1"))) for a, b in req["vercmp"]],
       "evr": [], "ds": []}
def overlap(f1, v1, f2, v2):
    return bool(rpm.ds(("n", f1, v1), rpm.RPMTAG_REQUIRENAME).Compare(
        rpm.ds(("n", f2, v2), rpm.RPMTAG_PROVIDENAME)))
# the order rpmdsCompare sees: equal when "= a" meets "= b", else "> a" meets "= b" or not
for a, b in req["evr"]:
    if overlap(rpm.RPMSENSE_EQUAL, a, rpm.RPMSENSE_EQUAL, b):
        out["evr"].append(0)
    else:
        out["evr"].append(-1 if overlap(rpm.RPMSENSE_GREATER, a, rpm.RPMSENSE_EQUAL, b) else 1)
for n1, f1, v1, n2, f2, v2 in req["ds"]:
    d1 = rpm.ds((n1, f1, v1), rpm.RPMTAG_REQUIRENAME)
    d2 = rpm.ds((n2, f2, v2), rpm.RPMTAG_PROVIDENAME)
    out["ds"].append(bool(d1.Compare(d2)))
json.dump(out, sys.stdout)
"""


def _have_rpm_module() -> bool:
    if not SYSTEM_PYTHON.exists():
        return False
    return subprocess.run([str(SYSTEM_PYTHON), "-c", "import rpm"],
                          capture_output=True).returncode == 0


needs_rpm = pytest.mark.skipif(not _have_rpm_module(), reason="python3-rpm not installed")


def oracle(vercmp: list[tuple[str, str]] = [], evr: list[tuple[str, str]] = [],  # noqa: B006
           ds: list[tuple[str, int, str, str, int, str]] = []) -> dict[str, list[int]]:  # noqa: B006
    proc = subprocess.run([str(SYSTEM_PYTHON), "-c", ORACLE], check=True, capture_output=True,
                          input=json.dumps({"vercmp": vercmp, "evr": evr, "ds": ds}).encode())
    result: dict[str, list[int]] = json.loads(proc.stdout)
    return result


# rpm's own tests/rpmvercmp.at cases plus the tilde/caret ones (no expected values here:
# librpm decides).
CLASSIC = [
    ("1.0", "1.0"), ("1.0", "2.0"), ("2.0", "1.0"), ("2.0.1", "2.0.1"), ("2.0", "2.0.1"),
    ("2.0.1a", "2.0.1a"), ("2.0.1a", "2.0.1"), ("2.0.1", "2.0.1a"), ("5.5p1", "5.5p1"),
    ("5.5p1", "5.5p2"), ("5.5p2", "5.5p1"), ("5.5p10", "5.5p10"), ("5.5p1", "5.5p10"),
    ("10xyz", "10.1xyz"), ("10.1xyz", "10xyz"), ("xyz10", "xyz10"), ("xyz10", "xyz10.1"),
    ("xyz.4", "xyz.4"), ("xyz.4", "8"), ("8", "xyz.4"), ("xyz.4", "2"), ("5.5p2", "5.6p1"),
    ("5.6p1", "6.5p1"), ("6.0.rc1", "6.0"), ("6.0", "6.0.rc1"), ("10b2", "10a1"),
    ("10a2", "10b2"), ("1.0aa", "1.0aa"), ("1.0a", "1.0aa"), ("1.0aa", "1.0a"),
    ("10.0001", "10.0001"), ("10.0001", "10.1"), ("10.1", "10.0001"), ("10.0001", "10.0039"),
    ("4.999.9", "5.0"), ("20101121", "20101121"), ("20101121", "20101122"), ("2_0", "2_0"),
    ("2.0", "2_0"), ("a", "a"), ("a+", "a+"), ("a+", "a_"), ("+a", "+a"), ("+a", "_a"),
    ("+", "_"), ("_", "+"), ("1.0~rc1", "1.0~rc1"), ("1.0~rc1", "1.0"), ("1.0", "1.0~rc1"),
    ("1.0~rc1", "1.0~rc2"), ("1.0~rc1~git123", "1.0~rc1"), ("1.0^", "1.0^"), ("1.0^", "1.0"),
    ("1.0", "1.0^"), ("1.0^git1", "1.0^git1"), ("1.0^git1", "1.0"), ("1.0^git1", "1.01"),
    ("1.0^20160101", "1.0.1"), ("1.0^20160101^git1", "1.0^20160101"), ("1.0~rc1^git1", "1.0~rc1"),
    ("1.0^git1~pre", "1.0^git1"), ("1.0", "1.0a"), ("1.0a", "1.0"), ("1.0~", "1.0"),
    ("1.0", "1.0.0"), ("01", "1"), ("1é", "1"), ("a", "1"), ("1..2", "1.2"),
]


@needs_rpm
def test_classic_cases_against_librpm() -> None:
    got = [rpmvercmp(a, b) for a, b in CLASSIC]
    assert got == oracle(vercmp=CLASSIC)["vercmp"]
    # the order is not trivially constant
    assert {-1, 0, 1} <= set(got)


SEGMENT = st.one_of(st.from_regex(r"\A[0-9]{1,3}\Z"), st.from_regex(r"\A[a-zA-Z]{1,3}\Z"),
                    st.sampled_from(["0", "00", "010", "rc", "git", "é", ""]))
SEP = st.sampled_from([".", "_", "+", "~", "^", "", "..", "~~", "^~"])
VERSION = st.lists(st.tuples(SEP, SEGMENT), min_size=1, max_size=5).map(
    lambda parts: "".join(s + g for s, g in parts)).filter(bool)


@needs_rpm
@settings(max_examples=12, deadline=None)
@given(st.lists(st.tuples(VERSION, VERSION), min_size=30, max_size=80))
def test_rpmvercmp_differential(pairs: list[tuple[str, str]]) -> None:
    # close pairs too: a version against a small edit of itself
    pairs = pairs + [(a, a + b[-1:]) for a, b in pairs] + [(a, a) for a, _ in pairs[:5]]
    assert [rpmvercmp(a, b) for a, b in pairs] == oracle(vercmp=pairs)["vercmp"]


def _random_version(rng: random.Random) -> str:
    out = ""
    for _ in range(rng.randint(1, 5)):
        out += rng.choice([".", "_", "+", "~", "^", "", "..", "~~", "^~"])
        kind = rng.random()
        if kind < 0.45:
            out += str(rng.randint(0, 120)).zfill(rng.choice([1, 1, 2, 3]))
        elif kind < 0.9:
            out += "".join(rng.choice("abcxyzAZ") for _ in range(rng.randint(1, 3)))
        else:
            out += rng.choice(["rc", "git", "é", "0"])
    return out or "0"


@needs_rpm
def test_rpmvercmp_bulk_against_librpm() -> None:
    rng = random.Random(20261204)
    pairs = [(_random_version(rng), _random_version(rng)) for _ in range(3000)]
    pairs += [(a, a + b[:2]) for a, b in pairs[:1500]]  # near pairs: a prefix and more
    got = [rpmvercmp(a, b) for a, b in pairs]
    want = oracle(vercmp=pairs)["vercmp"]
    assert [p for p, g, w in zip(pairs, got, want, strict=True) if g != w] == []
    assert got.count(0) > 10


EVR_TEXT = st.builds(
    lambda e, v, r: f"{e}{v}{r}",
    st.sampled_from(["", "0:", "1:", "2:", "10:"]), VERSION.filter(lambda v: v and "-" not in v),
    st.one_of(st.just(""), VERSION.filter(bool).map(lambda r: "-" + r)))


@needs_rpm
@settings(max_examples=10, deadline=None)
@given(st.lists(st.tuples(EVR_TEXT, EVR_TEXT), min_size=30, max_size=80))
def test_compare_evr_differential(pairs: list[tuple[str, str]]) -> None:
    got = [compare_evr(parse_evr(a), parse_evr(b)) for a, b in pairs]
    assert got == oracle(evr=pairs)["evr"]


def test_parse_evr() -> None:
    assert parse_evr("1:3.0.7-27.el9") == (1, "3.0.7", "27.el9")
    assert parse_evr("3.0.7") == (None, "3.0.7", None)
    assert parse_evr("1.0-1-2") == (None, "1.0-1", "2")
    assert parse_evr(":1.0-1") == (0, "1.0", "1")
    assert parse_evr("a:1.0") == (None, "a:1.0", None)


@needs_rpm
def test_missing_release_and_epoch_against_librpm() -> None:
    pairs = [("1.0", "1.0-5"), ("1.0-5", "1.0"), ("1.0", "0:1.0-1"), ("1:1.0", "1.0-9"),
             ("1.0-1", "1.0-2"), ("0:1.0", "1.0")]
    got = [compare_evr(parse_evr(a), parse_evr(b)) for a, b in pairs]
    assert got == oracle(evr=pairs)["evr"]
    assert got[0] == 0 and got[3] == 1


def test_compare_packages() -> None:
    a = PackageInfo("openssl", 1, "3.0.7", "27.el9", "x86_64")
    b = PackageInfo("openssl", None, "3.0.9", "1.el9", "x86_64")
    assert compare_packages(a, b) == 1
    assert compare_packages(b, a) == -1
    assert compare_packages(a, a) == 0


FLAGS = [0, SENSE_LESS, SENSE_GREATER, SENSE_EQUAL, SENSE_LESS | SENSE_EQUAL,
         SENSE_GREATER | SENSE_EQUAL]


@needs_rpm
@settings(max_examples=8, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(FLAGS),
                          st.sampled_from(["", "1.0", "1.0-1", "1.0-2", "1:1.0", "2.0", "0.9-9",
                                           "1.0~rc1", "0:1.0-1"]),
                          st.sampled_from(["a"]), st.sampled_from(FLAGS),
                          st.sampled_from(["", "1.0", "1.0-1", "1.0-2", "1:0.5", "2.0-1",
                                           "1.0^g1"])),
                min_size=30, max_size=80))
def test_dep_matches_differential(rows: list[tuple[str, int, str, str, int, str]]) -> None:
    # rpm.ds wants a version exactly when a sense is given
    rows = [(n1, f1 if v1 else 0, v1, n2, f2 if v2 else 0, v2)
            for n1, f1, v1, n2, f2, v2 in rows]
    got = [dep_matches(Dep(n1, f1, v1), Dep(n2, f2, v2)) for n1, f1, v1, n2, f2, v2 in rows]
    assert got == oracle(ds=rows)["ds"]


VERSIONS = ["", "1.0", "1.0-1", "1.0-2", "1:1.0", "2.0", "0.9-9", "1.0~rc1", "0:1.0-1",
            "1:0.5", "1.0^g1", "1:1.0-1"]


@needs_rpm
def test_dep_matches_every_pair_against_librpm() -> None:
    rows = list(dict.fromkeys(("a", f1 if v1 else 0, v1, "a", f2 if v2 else 0, v2)
                              for f1 in FLAGS for v1 in VERSIONS
                              for f2 in FLAGS for v2 in VERSIONS))
    got = [dep_matches(Dep(*r[:3]), Dep(*r[3:])) for r in rows]
    want = oracle(ds=rows)["ds"]
    assert [r for r, g, w in zip(rows, got, want, strict=True) if g != w] == []
    assert True in got and False in got


def test_dep_matches_cases() -> None:
    eq = SENSE_EQUAL
    assert dep_matches(Dep("openssl-libs", eq, "1:3.0.7-27"), Dep("openssl-libs", eq, "1:3.0.7-27"))
    assert not dep_matches(Dep("openssl-libs", eq, "1:3.0.7-27"),
                           Dep("openssl-libs", eq, "1:3.0.7-28"))
    assert dep_matches(Dep("x", SENSE_GREATER | eq, "2"), Dep("x"))
    assert not dep_matches(Dep("x"), Dep("y"))


def test_parse_rich() -> None:
    r = parse_rich("(a >= 1.0 or (b if c else d))")
    assert r == RichDep("or", (Dep("a", SENSE_GREATER | SENSE_EQUAL, "1.0"),
                               RichDep("if", (Dep("b"), Dep("c"), Dep("d")))))
    assert parse_rich("(perl(Foo::Bar) and config(x) = 1-2)").args == (
        Dep("perl(Foo::Bar)"), Dep("config(x)", SENSE_EQUAL, "1-2"))
    assert parse_rich("(a and b and c)").args == (Dep("a"), Dep("b"), Dep("c"))
    for bad in ["(a or)", "(a and b or c)", "(a else b)", "((a or b)", "(a or b))", "a or b",
                "(a if b else c else d)", "()"]:
        with pytest.raises(RichDepError):
            parse_rich(bad)


def test_rich_satisfied() -> None:
    present = {"a", "c"}

    def has(d: Dep) -> bool:
        return d.name in present

    assert rich_satisfied("(a or b)", has)
    assert not rich_satisfied("(a and b)", has)
    assert rich_satisfied("(b if x)", has)          # condition not met: nothing needed
    assert not rich_satisfied("(b if c)", has)
    assert rich_satisfied("(b if x else a)", has) is True
    assert not rich_satisfied("(b if x else d)", has)
    assert rich_satisfied("(b unless c)", has)       # c present: b not needed
    assert not rich_satisfied("(b unless x)", has)
    assert not rich_satisfied("(b unless c else d)", has)
    assert rich_satisfied("(a without b)", has)
    assert not rich_satisfied("(a without c)", has)
    assert rich_satisfied("(a with c)", has)
    assert rich_satisfied("((b or c) and (a if c))", has)
