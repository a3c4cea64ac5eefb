"""Mirror overrides shared by every family: archive URL prefixes replaced for
air-gapped users (``--mirror FROM=TO``)."""

from __future__ import annotations

from collections.abc import Mapping


def _norm(url: str) -> str:
    return url.rstrip("/") + "/"


def mirror_url(url: str, mirrors: Mapping[str, str]) -> str:
    """``url`` with its longest matching prefix replaced by that prefix's mirror.

    A prefix matches whole path segments (``.../debian`` does not match
    ``.../debian-security``); a URL no prefix matches is returned unchanged.
    """
    target = _norm(url)
    for prefix in sorted(mirrors, key=lambda p: len(_norm(p)), reverse=True):
        if target.startswith(_norm(prefix)):
            return (_norm(mirrors[prefix]) + target[len(_norm(prefix)):]).rstrip("/")
    return url
