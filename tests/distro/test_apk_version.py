"""apk version ordering, from the grammar apk-tools documents (our own vectors), and
the shared table in tests/data/apk_versions.txt when it is there."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from suture.distro.apk.version import (
    ANY,
    CHECKSUM,
    EQUAL,
    FUZZY,
    GREATER,
    LESS,
    compare_versions,
    is_valid_version,
    match_version,
    op_mask,
    op_string,
    version_key,
)

# Each row: a < b.
OLDER = [
    ("1", "2"), ("1.0", "1.1"), ("1.9", "1.10"), ("1.2", "1.2.1"), ("0.99", "1"),
    ("1.0", "1.0a"), ("1.0a", "1.0b"), ("1.0z", "1.1"),
    ("1.0_alpha", "1.0_beta"), ("1.0_beta", "1.0_pre"), ("1.0_pre", "1.0_rc"),
    ("1.0_rc", "1.0"), ("1.0", "1.0_cvs"), ("1.0_cvs", "1.0_svn"), ("1.0_svn", "1.0_git"),
    ("1.0_git", "1.0_hg"), ("1.0_hg", "1.0_p"), ("1.0_alpha1", "1.0_alpha2"),
    ("1.0_alpha9", "1.0_alpha10"), ("1.0_rc1", "1.0_rc1_p1"), ("1.0_alpha", "1.0_alpha1"),
    ("1.0_rc9", "1.0"), ("1.0_p1", "1.0_p2"), ("1.0", "1.0.1_alpha"),
    ("1.0-r0", "1.0-r1"), ("1.0-r9", "1.0-r10"), ("1.0", "1.0-r1"), ("1.0-r5", "1.0.1"),
    ("1.0-r5", "1.0a"), ("1.0_p1-r9", "1.0_p2"), ("1.0_rc1-r3", "1.0"),
    ("1.0~abc", "1.0~abd"), ("1.0", "1.0~abc"), ("1.0~ffff-r1", "1.0~ffff-r2"),
    ("1.0-r0", "1.0~abc-r9"), ("1.0_p", "1.0_p0"), ("1.0_rc1", "1.0_rc1~ab"),
    # a component with a leading zero compares as a string
    ("1.01", "1.1"), ("1.001", "1.01"), ("1.05", "1.5"), ("1.010", "1.09"), ("1.0", "1.00"),
    ("2.0.0", "2.0.00"),
    # the initial number is always a number
    ("09", "10"), ("009", "10"),
    # big numbers
    ("1.99999999999999999", "1.100000000000000000"),
    # an invalid continuation sorts first; a letter is read before what makes it invalid
    ("1.0_foo", "1.0"), ("1.0-x", "1.0"), ("1.0.", "1.0"), ("1.0", "1.0bc"),
]

EQUAL_PAIRS = [("1.0", "1.0"), ("1.0-r0", "1.0-r0"), ("0.0", "0.0"), ("1.0_p1", "1.0_p01"),
               ("1.0~abc", "1.0~abc"), ("1.0-r00", "1.0-r0"), ("1.0_alpha01", "1.0_alpha1")]

VALID = ["0", "1.0", "1.2.3.4.5", "1.0a", "1.0_alpha", "1.0_alpha1_beta2_p3", "1.0-r0",
         "1.0~1234abcd", "1.0_rc1~deadbeef-r3", "20230201", "1.36.1-r29", "3.0.15-r0",
         "1.0_p", "2.38_git20230101-r1", "0.0.0"]
INVALID = ["", "a", "1.0-", "1.0-r", "1.0_", "1.0_foo", "1.0.", ".1", "1..0", "1.0a.1",
           "1.0ab", "1.0~", "1.0~xyz", "1.0~ABC", "1.0-r1-r2", "1.0-r1_p1", "1.0~ab~cd",
           "1.0-r1~ab", "1.0 ", "1.0A", "1a1", "1.0_p1a", "-r1", "1.0--r1"]


@pytest.mark.parametrize(("a", "b"), OLDER)
def test_older(a: str, b: str) -> None:
    assert compare_versions(a, b) == -1
    assert compare_versions(b, a) == 1


@pytest.mark.parametrize(("a", "b"), EQUAL_PAIRS)
def test_equal(a: str, b: str) -> None:
    assert compare_versions(a, b) == 0
    assert compare_versions(b, a) == 0


@pytest.mark.parametrize("v", VALID)
def test_valid(v: str) -> None:
    assert is_valid_version(v)
    assert compare_versions(v, v) == 0


@pytest.mark.parametrize("v", INVALID)
def test_invalid(v: str) -> None:
    assert not is_valid_version(v)


def test_sorting_a_shuffled_chain() -> None:
    chain = ["0.9", "1.0_alpha", "1.0_alpha2", "1.0_beta", "1.0_pre1", "1.0_rc1", "1.0",
             "1.0-r1", "1.0_p1", "1.0a", "1.0b", "1.0.1", "1.1_rc1", "1.1", "1.10", "2"]
    shuffled = chain[:]
    random.Random(7).shuffle(shuffled)
    assert sorted(shuffled, key=version_key) == chain


def test_transitive_on_the_whole_table() -> None:
    versions = sorted({v for pair in OLDER for v in pair if is_valid_version(v)} | set(VALID),
                      key=version_key)
    for i, a in enumerate(versions):
        for b in versions[i + 1:]:
            assert compare_versions(a, b) <= 0, (a, b)


@pytest.mark.parametrize(("version", "op", "target", "expected"), [
    ("1.2.3", "~", "1.2", True), ("1.3", "~", "1.2", False), ("1.2", "~", "1.2.3", False),
    ("1.2.3-r1", "~", "1.2.3", True), ("1.0", ">=", "1.0", True), ("1.0", ">", "1.0", False),
    ("1.0", "<", "1.0-r1", True), ("1.0", "<=", "1.0", True), ("2", "=", "2.0", False),
    ("1.2.9", "<~", "1.2", True), ("1.3", ">~", "1.2", True), ("1.1", ">~", "1.2", False),
])
def test_match(version: str, op: str, target: str, expected: bool) -> None:
    assert match_version(version, op_mask(op), target) is expected


def test_operators_round_trip() -> None:
    for op in ("<", "<=", "=", ">=", ">", "~", "<~", ">~", "><"):
        assert op_string(op_mask(op)) == op
    assert op_mask("=>") == GREATER | EQUAL
    assert op_mask("!") == 0
    assert op_mask("~") == FUZZY | EQUAL
    assert op_string(ANY) == "" and op_mask("><") == CHECKSUM == LESS | GREATER


_SHARED = Path(__file__).resolve().parents[1] / "data" / "apk_versions.txt"


def _shared_rows() -> list[list[str]]:
    if not _SHARED.exists():
        return []
    return [line.split("#", 1)[0].split() for line in _SHARED.read_text().splitlines()
            if line.split("#", 1)[0].strip()]


@pytest.mark.skipif(not _SHARED.exists(), reason="tests/data/apk_versions.txt not written yet")
def test_shared_table() -> None:
    """The shared table (checked against apk-tools 2.14 and 3.0): we order as apk-tools 3,
    so rows for both and for apk3 hold, and validity follows apk-tools 3."""
    rows = _shared_rows()
    expected = {"<": -1, "=": 0, ">": 1}
    bad = []
    checked = 0
    for row in rows:
        if len(row) == 3 and row[1] in expected:
            a, op, b = row
        elif len(row) == 4 and row[0] == "apk3":
            _, a, op, b = row
        elif row[0] in ("invalid", "invalid-apk3") and len(row) == 2:
            checked += 1
            if is_valid_version(row[1]):
                bad.append(" ".join(row))
            continue
        elif row[0] == "invalid-apk2" and len(row) == 2:
            checked += 1
            if not is_valid_version(row[1]):
                bad.append(" ".join(row))
            continue
        else:
            continue  # apk-tools 2 only
        checked += 1
        if compare_versions(a, b) != expected[op]:
            bad.append(" ".join(row))
    assert checked > 1000
    assert bad == []
