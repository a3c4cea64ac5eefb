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
    apk2_order,
    compare_versions,
    is_valid_version,
    match_version,
    op_mask,
    op_string,
    version_key,
    version_key_apk2,
    version_key_for,
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


def _flavoured_rows() -> list[tuple[bool, list[str]]]:
    """Each row of the shared table with the flavour (``apk2``) it is checked in: rows
    for both in both, ``apk2``/``apk3`` rows and ``invalid-*`` lines in theirs."""
    out: list[tuple[bool, list[str]]] = []
    for row in _shared_rows():
        if (len(row) == 3 and row[1] in ("<", "=", ">")) or row[0] == "invalid":
            out += [(False, row), (True, row)]
        elif row[0] in ("apk2", "apk3", "invalid-apk2", "invalid-apk3"):
            out.append((row[0].endswith("apk2"), row))
        else:
            raise AssertionError(f"unknown row {row}")
    return out


@pytest.mark.skipif(not _SHARED.exists(), reason="tests/data/apk_versions.txt not written yet")
def test_shared_table() -> None:
    """The shared table (checked against apk-tools 2.14 and 3.0): every row holds in its
    flavour, both ways round, and validity follows each flavour."""
    expected = {"<": -1, "=": 0, ">": 1}
    bad = []
    checked = {False: 0, True: 0}
    for apk2, row in _flavoured_rows():
        checked[apk2] += 1
        if row[0].startswith("invalid"):
            # "invalid-apk3 V": accepted by apk-tools 2 only, and the reverse
            want = (row[0] == "invalid-apk3" and apk2) or (row[0] == "invalid-apk2" and not apk2)
            if is_valid_version(row[1], apk2=apk2) is not want:
                bad.append(f"{'apk2' if apk2 else 'apk3'}: {' '.join(row)}")
            continue
        a, op, b = row[-3:]
        if (compare_versions(a, b, apk2=apk2) != expected[op]
                or compare_versions(b, a, apk2=apk2) != -expected[op]
                or not is_valid_version(a, apk2=apk2) or not is_valid_version(b, apk2=apk2)):
            bad.append(f"{'apk2' if apk2 else 'apk3'}: {' '.join(row)}")
    assert checked[False] > 1000 and checked[True] > 1000
    assert bad == []


def test_default_is_apk3() -> None:
    """Callers that name no flavour get apk-tools 3's order, as before."""
    assert compare_versions("1.010", "1.09") == -1
    assert compare_versions("1.010", "1.09", apk2=False) == -1
    assert compare_versions("1.010", "1.09", apk2=True) == 1
    assert is_valid_version("1.0~abc") and not is_valid_version("1.0~abc", apk2=True)
    assert is_valid_version("1.0a1", apk2=True) and not is_valid_version("1.0a1")
    assert sorted(["1.0", "1.00"], key=version_key) == ["1.0", "1.00"]
    assert sorted(["1.0", "1.00"], key=version_key_apk2) == ["1.00", "1.0"]
    assert version_key_for(True) is version_key_apk2 and version_key_for(False) is version_key


@pytest.mark.parametrize(("version", "op", "target", "apk2", "expected"), [
    ("1.2.3", "~", "1.2", True, True), ("1.2", "~", "1.2.3", True, False),
    ("1.3", "~", "1.2", True, False), ("1.0", ">", "1.00", True, True),
    ("1.0", ">", "1.00", False, False), ("1.00-r5", "<", "1.0-r1", True, True),
    ("1.0a2", ">=", "1.0a1", True, True),
])
def test_match_flavours(version: str, op: str, target: str, apk2: bool, expected: bool) -> None:
    assert match_version(version, op_mask(op), target, apk2=apk2) is expected


def test_apk2_transitive_on_the_table() -> None:
    versions = sorted({v for apk2, row in _flavoured_rows() if apk2 and len(row) >= 3
                       for v in (row[-3], row[-1])}, key=version_key_apk2)
    assert len(versions) > 100
    for i, a in enumerate(versions):
        for b in versions[i + 1:i + 40]:
            assert compare_versions(a, b, apk2=True) <= 0, (a, b)


@pytest.mark.parametrize(("apk_tools", "os_id", "version_id", "apk2"), [
    ("2.14.10-r0", "alpine", "3.23.0", True),   # the installed apk-tools decides
    ("3.0.3-r1", "alpine", "3.22.1", False),
    ("3.0.0_pre1-r0", "wolfi", "20230201", False),
    ("2.14.9-r1", "wolfi", "20230201", True),
    (None, "alpine", "3.22.2", True),           # distroless: the release decides
    (None, "alpine", "3.18", True),
    (None, "alpine", "3.23.0", False),
    (None, "alpine", "3.23.0_alpha20250612", False),
    (None, "alpine", "edge", False),
    (None, "alpine", "", False),
    (None, "wolfi", "20230201", True),           # Wolfi and Chainguard: apk-tools 2
    (None, "chainguard", "20230214", True),
    ("", "alpine", "3.20.0", True),
])
def test_apk2_order(apk_tools: str | None, os_id: str, version_id: str, apk2: bool) -> None:
    assert apk2_order(apk_tools, os_id, version_id) is apk2
