"""Debian version parsing and ordering, checked against ``dpkg --compare-versions``."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from suture.distro.dpkg.version import (
    Version,
    compare_versions,
    parse_version,
    split_version,
    version_key,
)
from suture.errors import PackageFormatError, SutureError

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg")

# Reads "a<TAB>b" lines, prints dpkg's verdict for each: -1, 0, 1, or E (dpkg refused).
_DPKG_LOOP = r"""
while IFS="$(printf '\t')" read -r a b; do
  if dpkg --compare-versions "$a" lt "$b" 2>/dev/null; then echo -1
  elif dpkg --compare-versions "$a" eq "$b" 2>/dev/null; then echo 0
  elif dpkg --compare-versions "$a" gt "$b" 2>/dev/null; then echo 1
  else echo E
  fi
done
"""


def dpkg_compare(pairs: list[tuple[str, str]]) -> list[int | None]:
    """dpkg's verdict on each pair, in one shell process; ``None`` where dpkg refuses."""
    lines = "".join(f"{a}\t{b}\n" for a, b in pairs)
    out = subprocess.run(["sh", "-c", _DPKG_LOOP], input=lines, capture_output=True,
                         text=True, check=True, timeout=120).stdout.split()
    assert len(out) == len(pairs)
    return [None if v == "E" else int(v) for v in out]


def ours(a: str, b: str) -> int | None:
    try:
        c = compare_versions(a, b)
    except PackageFormatError:
        return None
    return (c > 0) - (c < 0)


KNOWN = [
    ("1.0", "1.0", 0),
    ("1.0", "1.0-0", 0),
    ("0:1.0", "1.0", 0),
    ("1.0", "1.00", 0),
    ("1.0-1", "1.0-01", 0),
    ("1", "1.0", -1),
    ("1.0", "1.0.0", -1),
    ("1.0~rc1", "1.0", -1),
    ("1.0~~", "1.0~", -1),
    ("1.0~~a", "1.0~~", 1),
    ("1.0~", "1.0", -1),
    ("1.0", "1.0a", -1),
    ("1.0a", "1.0+", -1),  # letters sort before non-letters
    ("1.0+", "1.0.", -1),  # '+' < '.' in ASCII, both non-letters
    ("1.0Z", "1.0a", -1),  # upper case before lower case
    ("1.0", "1.0+b1", -1),
    ("1.0-1", "1.0-1+b1", -1),
    ("1.0-1~bpo12+1", "1.0-1", -1),
    ("2.0-1", "2.0-1.1", -1),
    ("9", "10", -1),
    ("1:0.1", "2.0", 1),
    ("1:2.0", "2:1.0", -1),
    ("2.30-1", "2.3-1", 1),
    ("1.2.3-4", "1.2.3-4", 0),
    ("1.2-3-4", "1.2-3-5", -1),  # the revision starts after the last hyphen
    ("1:2:3", "1:2:4", -1),
    ("7.88.1-10+deb12u5", "7.88.1-10+deb12u12", -1),
    ("3.0.11-1~deb12u2", "3.0.11-1", -1),
    ("2.36-9+deb12u4", "2.36-9+deb12u10", -1),
    ("1.0.0~alpha", "1.0.0~beta", -1),
    ("0~20230101", "0", -1),
    ("1" + "0" * 40, "9" * 40, 1),  # numbers longer than a machine word
]


@pytest.mark.parametrize(("a", "b", "expected"), KNOWN)
def test_known_orderings(a: str, b: str, expected: int) -> None:
    assert ours(a, b) == expected
    assert ours(b, a) == -expected


@needs_dpkg
def test_known_orderings_agree_with_dpkg() -> None:
    pairs = [(a, b) for a, b, _ in KNOWN]
    assert dpkg_compare(pairs) == [expected for _, _, expected in KNOWN]


def test_parse_fields_and_canonical_text() -> None:
    v = parse_version("2:1.2.3-4+deb12u1")
    assert (v.epoch, v.upstream, v.revision) == (2, "1.2.3", "4+deb12u1")
    assert str(v) == "2:1.2.3-4+deb12u1"
    assert parse_version("1.0") == Version(0, "1.0", "")
    assert str(parse_version("0:1.0")) == "1.0"
    assert parse_version(" 1.0 ").upstream == "1.0"
    v = parse_version("1:2.0-rc1-3")
    assert (v.upstream, v.revision) == ("2.0-rc1", "3")
    assert split_version("3:4:5-6") == (3, "4:5", "6")


def test_equal_versions_hash_equal() -> None:
    same = ["1.0", "0:1.0", "1.0-0", "1.00", "01.0-00"]
    assert len({parse_version(v) for v in same}) == 1
    assert len({version_key(v) for v in same}) == 1
    assert parse_version("1.0") != parse_version("1.0.0")
    assert parse_version("1.0") != "1.0"


def test_sorting_uses_dpkg_order() -> None:
    versions = ["1.0", "1.0~rc1", "1:0.1", "1.0-1", "1.0+b1", "1.0a", "0.9", "1.0~~"]
    assert sorted(versions, key=version_key) == [
        "0.9", "1.0~~", "1.0~rc1", "1.0", "1.0-1", "1.0a", "1.0+b1", "1:0.1"]
    assert sorted(map(parse_version, versions)) == sorted(
        map(parse_version, versions), key=lambda v: v.key)
    assert max(map(parse_version, versions)) == parse_version("1:0.1")


REFUSED_BY_DPKG = [
    "", "   ", "1 0", "1.0 -1", ":1.0", "abc:1.0", "-1:1.0", "1.0-a:b", "1:", "1:-1",
    "1.0-", "-1", "2147483648:1", "99999999999999999999:1",
]


@pytest.mark.parametrize("text", REFUSED_BY_DPKG)
def test_refuses_what_dpkg_refuses(text: str) -> None:
    with pytest.raises(PackageFormatError) as info:
        parse_version(text, strict=False)
    assert info.value.text == text
    assert isinstance(info.value, SutureError)
    assert repr(text) in str(info.value)


@needs_dpkg
def test_dpkg_refuses_the_same() -> None:
    candidates = [t for t in REFUSED_BY_DPKG if t.strip() and "\t" not in t]
    # dpkg takes "-1" for an option: that one cannot go through the command line.
    candidates = [t for t in candidates if not t.startswith("-")]
    assert dpkg_compare([(t, "1") for t in candidates]) == [None] * len(candidates)


POLICY_ONLY = ["a1.0", "1.0_1", "1.0-1_2", "1!0", "+1:1.0", "é1"]


@pytest.mark.parametrize("text", POLICY_ONLY)
def test_strict_refuses_what_dpkg_only_warns_about(text: str) -> None:
    with pytest.raises(PackageFormatError):
        parse_version(text)
    parse_version(text, strict=False)


def test_epoch_limits() -> None:
    assert parse_version("2147483647:1").epoch == 2**31 - 1
    assert parse_version("00:1").epoch == 0


# --- differential test against dpkg ------------------------------------------------------

_TOKENS = ["0", "1", "2", "9", "00", "01", "10", "123", "a", "b", "z", "A", "Z", "~", "~~",
           ".", "+", "-", "rc", "deb", "ubuntu", ":"]
_REV_TOKENS = ["0", "1", "2", "10", "01", "a", "b", "Z", "~", ".", "+", "deb", "u"]


@st.composite
def versions(draw: st.DrawFn) -> str:
    epoch = draw(st.sampled_from(["", "", "", "0:", "1:", "2:", "00:", "10:"]))
    first = draw(st.sampled_from(["0", "1", "2", "9", "00", "10"]))
    tokens = [t for t in draw(st.lists(st.sampled_from(_TOKENS), max_size=6))
              if epoch or t != ":"]
    upstream = first + "".join(tokens)
    revision = "".join(draw(st.lists(st.sampled_from(_REV_TOKENS), max_size=4)))
    if draw(st.booleans()) and revision:
        return f"{epoch}{upstream}-{revision}"
    return epoch + upstream.replace("-", ".")  # no revision: no hyphen either


@st.composite
def version_pairs(draw: st.DrawFn) -> tuple[str, str]:
    a = draw(versions())
    how = draw(st.sampled_from(["independent", "append", "prefix", "same"]))
    if how == "independent":
        b = draw(versions())
    elif how == "append":
        b = a + draw(st.sampled_from(["~", "~~", "+", ".", "a", "0", "1", "-0", "-1", "~1"]))
    elif how == "prefix":
        b = draw(st.sampled_from(["", "0:", "1:"])) + a.split(":", 1)[-1]
    else:
        b = a.replace(".", ".0", 1) if "." in a else a + ".0"
    return a, b


# Some strings only dpkg's lenient reading accepts: letters first, odd characters.
_lenient = st.text(alphabet="0123456789abAZ~+.-:_!", min_size=1, max_size=8)


@needs_dpkg
# No shrinking: each run costs a few hundred dpkg processes, and the assertion lists
# every mismatching pair anyway.
@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.generate])
@given(st.lists(version_pairs(), min_size=250, max_size=250),
       st.lists(st.tuples(_lenient, _lenient), min_size=50, max_size=50))
def test_agrees_with_dpkg_compare_versions(
    pairs: list[tuple[str, str]], lenient: list[tuple[str, str]]
) -> None:
    # dpkg reads a leading "-" as an option: keep those out of the command line.
    pairs = pairs + [(a, b) for a, b in lenient if not a.startswith("-")
                     and not b.startswith("-")]
    expected = dpkg_compare(pairs)
    mismatches = [(a, b, e, ours(a, b)) for (a, b), e in zip(pairs, expected, strict=True)
                  if ours(a, b) != e]
    assert mismatches == []


@given(versions(), versions(), versions())
def test_order_is_total_and_consistent(a: str, b: str, c: str) -> None:
    va, vb, vc = parse_version(a), parse_version(b), parse_version(c)
    assert compare_versions(a, b) == -compare_versions(b, a)
    assert (va == vb) == (compare_versions(a, b) == 0)
    assert (va < vb) == (compare_versions(a, b) < 0)
    if va == vb:
        assert hash(va) == hash(vb)
    if va <= vb <= vc:
        assert va <= vc
    assert parse_version(str(va)) == va
