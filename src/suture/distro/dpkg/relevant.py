"""Cutting Packages indexes down to the stanzas a resolution can reach.

A full index holds ~65,000 stanzas; an image has a few hundred packages. The
resolver can only ever look at candidates named by the installed packages, by
what those candidates depend on (transitively), or that provide such a name.
:func:`relevant_stanzas` finds exactly that set working on the raw bytes (no
parsing of fields it does not need), so parsing, memory and resolution stay
proportional to the image rather than to the archive.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# Field lines whose package names can pull in another candidate.
_PULLING = re.compile(rb"^(?:Depends|Pre-Depends):[ \t]*(.*(?:\n[ \t].*)*)",
                      re.MULTILINE | re.IGNORECASE)
_PROVIDES = re.compile(rb"^Provides:[ \t]*(.*(?:\n[ \t].*)*)", re.MULTILINE | re.IGNORECASE)
_PACKAGE = re.compile(rb"^Package:[ \t]*(\S+)", re.MULTILINE | re.IGNORECASE)
_NAME = re.compile(rb"(?:^|[,|])\s*([a-z0-9][a-z0-9+.-]*)", re.IGNORECASE)


def _names(value: bytes) -> set[bytes]:
    """Package names in a relation field (versions, arch qualifiers and lists dropped)."""
    stripped = re.sub(rb"\([^)]*\)|\[[^\]]*\]|<[^>]*>", b"", value)
    return {m.group(1).split(b":")[0].lower() for m in _NAME.finditer(stripped)}


def relevant_stanzas(indexes: Sequence[bytes], roots: Iterable[str]) -> list[bytes]:
    """Per index, the stanzas reachable from ``roots`` (installed package names),
    re-joined as index bytes (same format, subset of stanzas, original order)."""
    stanzas: list[list[bytes]] = []
    by_name: dict[bytes, list[tuple[int, int]]] = {}
    by_provided: dict[bytes, list[tuple[int, int]]] = {}
    for i, data in enumerate(indexes):
        parts = [p.strip(b"\n") for p in data.replace(b"\r\n", b"\n").split(b"\n\n")
                 if p.strip()]
        stanzas.append(parts)
        for j, stanza in enumerate(parts):
            match = _PACKAGE.search(stanza)
            if match is None:
                continue
            by_name.setdefault(match.group(1).lower(), []).append((i, j))
            if b"rovides:" in stanza:
                provides = _PROVIDES.search(stanza)
                if provides is not None:
                    for name in _names(provides.group(1)):
                        by_provided.setdefault(name, []).append((i, j))
    keep: set[tuple[int, int]] = set()
    seen: set[bytes] = set()
    todo = [r.encode().lower() for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for where in (*by_name.get(name, ()), *by_provided.get(name, ())):
            if where in keep:
                continue
            keep.add(where)
            stanza = stanzas[where[0]][where[1]]
            for field in _PULLING.finditer(stanza):
                todo.extend(_names(field.group(1)) - seen)
    out = []
    for i, parts in enumerate(stanzas):
        kept = [s for j, s in enumerate(parts) if (i, j) in keep]
        out.append(b"\n\n".join(kept) + b"\n" if kept else b"")
    return out
