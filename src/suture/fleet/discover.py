"""Tag discovery and re-patch tag naming, as copa's bulk mode does them. Pure functions
over tag lists; the caller lists the tags.

* ``list``: the tags as written.
* ``pattern``: every tag the regular expression finds a match in (unanchored, as Go's
  ``MatchString``), less ``exclude``, kept only when it reads as a semantic version
  (Masterminds ``NewVersion``: ``v`` prefix, missing minor/patch and pre-release
  allowed), sorted oldest first; ``maxTags`` keeps the newest N.
* ``latest``: the highest semantic version among all tags less ``exclude``.
* Re-patching (copa #1475): existing target tags ``<base>`` and ``<base>-N`` (not the
  ``<base>-<arch>`` tags of a multi-platform push) make the next tag ``<base>-<max+1>``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from suture.fleet.config import TagStrategy

_SEMVER = re.compile(r"^v?([0-9]+)(\.[0-9]+)?(\.[0-9]+)?"
                     r"(-([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?"
                     r"(\+([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?$")
#: copa's arch tag suffixes (its valid platforms, ``/`` as ``-``).
ARCH_SUFFIXES = frozenset({"386", "amd64", "arm", "arm-v5", "arm-v6", "arm-v7", "arm64",
                           "arm64-v8", "ppc64le", "s390x", "riscv64"})


@dataclass(frozen=True)
class SemVer:
    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...]
    original: str


def parse_semver(tag: str) -> SemVer | None:
    m = _SEMVER.match(tag)
    if m is None:
        return None
    pre = tuple(m.group(5).split(".")) if m.group(5) else ()
    return SemVer(int(m.group(1)), int((m.group(2) or ".0")[1:]),
                  int((m.group(3) or ".0")[1:]), pre, tag)


def _compare_pre(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    if a == b:
        return 0
    if not a:
        return 1  # a release is higher than its pre-releases
    if not b:
        return -1
    for x, y in zip(a, b, strict=False):
        if x == y:
            continue
        if x.isdigit() and y.isdigit():
            return -1 if int(x) < int(y) else 1
        if x.isdigit() != y.isdigit():
            return -1 if x.isdigit() else 1
        return -1 if x < y else 1
    return -1 if len(a) < len(b) else 1


def compare_semver(a: SemVer, b: SemVer) -> int:
    """Semantic version precedence; equal versions are ordered by their text, so every
    sort is deterministic."""
    for x, y in ((a.major, b.major), (a.minor, b.minor), (a.patch, b.patch)):
        if x != y:
            return -1 if x < y else 1
    pre = _compare_pre(a.prerelease, b.prerelease)
    if pre:
        return pre
    return (a.original > b.original) - (a.original < b.original)


def _sorted_semver(tags: list[str], warnings: list[str], what: str) -> list[SemVer]:
    versions = []
    for tag in tags:
        v = parse_semver(tag)
        if v is None:
            warnings.append(f"{what}: tag {tag!r} is not a semantic version, skipped")
        else:
            versions.append(v)
    return sorted(versions, key=functools.cmp_to_key(compare_semver))


def select_tags(strategy: TagStrategy, all_tags: list[str] | None, what: str
                ) -> tuple[list[str], list[str]]:
    """The tags ``strategy`` picks out of ``all_tags`` (None for ``list``, which needs no
    listing), and warnings."""
    warnings: list[str] = []
    if strategy.strategy == "list":
        return list(strategy.tags), warnings
    assert all_tags is not None
    excluded = set(strategy.exclude)
    if strategy.strategy == "pattern":
        matching = [t for t in all_tags if strategy.matches(t) and t not in excluded]
        versions = _sorted_semver(matching, warnings, what)
        if strategy.max_tags > 0:
            versions = versions[-strategy.max_tags:]
        if not versions:
            warnings.append(f"{what}: no semantic-version tag matches {strategy.pattern!r}")
        return [v.original for v in versions], warnings
    versions = _sorted_semver([t for t in all_tags if t not in excluded], warnings, what)
    if not versions:
        warnings.append(f"{what}: no semantic-version tag to take as 'latest'")
        return [], warnings
    return [versions[-1].original], warnings


def patch_tag_number(tag: str, base: str) -> int | None:
    """0 for ``base``, N for ``base-N``; None for other tags (``base-amd64`` too)."""
    if tag == base:
        return 0
    if not tag.startswith(base + "-"):
        return None
    suffix = tag[len(base) + 1:]
    if suffix in ARCH_SUFFIXES or not suffix.isdigit() or not suffix.isascii():
        return None
    return int(suffix)


def existing_patch_tags(target_tags: list[str], base: str) -> list[str]:
    """The target repository's tags that are ``base`` or a re-patch of it, oldest first."""
    found = [(n, t) for t in target_tags if (n := patch_tag_number(t, base)) is not None]
    return [t for _n, t in sorted(found)]


def next_patch_tag(base: str, existing: list[str]) -> str:
    if not existing:
        return base
    top = max(patch_tag_number(t, base) or 0 for t in existing)
    return f"{base}-{top + 1}"
