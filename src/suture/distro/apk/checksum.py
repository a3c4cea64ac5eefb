"""The checksums apk writes: ``Q1`` + base64 of a SHA-1 digest (``Q2``: SHA-256).

A package's identity (``C:`` in an index and in the installed database) is the
checksum of its control part; a file's ``Z:`` is the checksum of its contents (of
its target, for a symlink); an ``a:``/``M:`` ACL may end with the checksum of the
entry's extended attributes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Mapping

from suture.errors import PackageFormatError

__all__ = ["checksum_algorithm", "decode_checksum", "encode_checksum", "q1", "xattr_checksum"]

_BY_SIZE = {20: "Q1", 32: "Q2"}
_ALGORITHM = {"Q1": "sha1", "Q2": "sha256"}


def encode_checksum(digest: bytes) -> str:
    """``Q1``/``Q2`` + base64 for a SHA-1/SHA-256 digest, as apk writes them."""
    prefix = _BY_SIZE.get(len(digest))
    if prefix is None:
        return digest.hex()
    return prefix + base64.b64encode(digest).decode()


def decode_checksum(text: str) -> bytes:
    """The digest a checksum names (``Q1``/``Q2`` base64, or the hex older apk wrote)."""
    try:
        if text[:2] in _ALGORITHM:
            digest = base64.b64decode(text[2:], validate=True)
            if len(digest) != (20 if text[:2] == "Q1" else 32):
                raise ValueError
            return digest
        digest = bytes.fromhex(text)
        if len(digest) not in (16, 20):
            raise ValueError
        return digest
    except (ValueError, binascii.Error):
        raise PackageFormatError(f"malformed checksum {text!r}", text=text) from None


def checksum_algorithm(text: str) -> str:
    """The hashlib name of the digest ``text`` holds (``sha1``, ``sha256``, ``md5``)."""
    digest = decode_checksum(text)
    return {16: "md5", 20: "sha1", 32: "sha256"}[len(digest)]


def q1(data: bytes) -> str:
    """``Q1`` + base64 SHA-1 of ``data``."""
    return encode_checksum(hashlib.sha1(data, usedforsecurity=False).digest())


def xattr_checksum(xattrs: Mapping[str, bytes]) -> str | None:
    """The checksum apk records for a set of extended attributes (None when empty):
    SHA-1 over each name and value, by name, each preceded by its 32-bit big-endian
    length."""
    if not xattrs:
        return None
    h = hashlib.sha1(usedforsecurity=False)
    for name in sorted(xattrs, key=lambda n: n.encode("utf-8", "surrogateescape")):
        raw = name.encode("utf-8", "surrogateescape")
        value = xattrs[name]
        h.update(struct.pack(">I", len(raw)) + raw)
        h.update(struct.pack(">I", len(value)) + value)
    return encode_checksum(h.digest())
