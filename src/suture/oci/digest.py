"""Content digests and streams that verify them while they are read.

A digest is the string ``"<algorithm>:<hex>"``; sha256 and sha512 are accepted.
"""

from __future__ import annotations

import hashlib
import io
import re
from typing import IO, Any, BinaryIO

from suture.errors import DigestMismatch, ManifestError, SizeMismatch

_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
CHUNK = 1 << 20

# Ceilings for things held in memory. Blobs are streamed and bounded by their descriptor.
MAX_MANIFEST = 8 << 20
MAX_CONFIG = 32 << 20


def is_digest(value: str) -> bool:
    return bool(_DIGEST.match(value))


def check_digest(value: str) -> str:
    """Return ``value`` if it is a well-formed digest, else raise :class:`ManifestError`."""
    if not isinstance(value, str) or not _DIGEST.match(value):
        raise ManifestError(f"malformed digest {value!r}")
    return value


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def hasher(digest: str) -> hashlib._Hash:
    algo = check_digest(digest).split(":", 1)[0]
    return hashlib.new(algo)


def verify_bytes(data: bytes, digest: str, what: str, size: int | None = None) -> bytes:
    """Return ``data`` when it has ``digest`` (and ``size``), else raise."""
    if size is not None and len(data) != size:
        raise SizeMismatch(what, size, len(data))
    h = hasher(digest)
    h.update(data)
    actual = f"{digest.split(':', 1)[0]}:{h.hexdigest()}"
    if actual != digest:
        raise DigestMismatch(what, digest, actual)
    return data


class VerifyingReader(io.RawIOBase, BinaryIO):
    """A read-only stream over ``raw`` that checks size and digest as it is read.

    Reading past ``size`` bytes raises :class:`SizeMismatch`; at end of stream a
    short read or a wrong digest raises. The reader owns ``raw`` and closes it.
    ``size`` may be ``None`` only with a ``limit`` (a ceiling, not an exact size).
    """

    def __init__(
        self,
        raw: IO[bytes],
        digest: str,
        size: int | None,
        what: str,
        *,
        limit: int | None = None,
    ) -> None:
        super().__init__()
        self._raw = raw
        self._digest = digest
        self._size = size
        self._limit = limit if size is None else size
        self._what = what
        self._hash = hasher(digest)
        self._seen = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._done:
            return 0
        view = memoryview(buffer).cast("B")
        want = len(view)
        if self._limit is not None:
            # Ask for one byte beyond the limit so an over-long stream is noticed.
            want = min(want, self._limit - self._seen + 1)
        data = self._raw.read(want)
        if not data:
            self._finish()
            return 0
        n = len(data)
        self._seen += n
        if self._limit is not None and self._seen > self._limit:
            raise SizeMismatch(
                self._what, self._limit, self._seen, ceiling=self._size is None
            )
        self._hash.update(data)
        view[:n] = data
        return n

    def _finish(self) -> None:
        self._done = True
        if self._size is not None and self._seen != self._size:
            raise SizeMismatch(self._what, self._size, self._seen)
        actual = f"{self._digest.split(':', 1)[0]}:{self._hash.hexdigest()}"
        if actual != self._digest:
            raise DigestMismatch(self._what, self._digest, actual)

    def read_all_verified(self) -> bytes:
        out = bytearray()
        while chunk := self.read(CHUNK):
            out += chunk
        return bytes(out)

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


class HashingWriter:
    """A write-only sink that counts and hashes what passes through to ``out``."""

    def __init__(self, out: Any, algorithm: str = "sha256") -> None:
        self._out = out
        self._hash = hashlib.new(algorithm)
        self._algorithm = algorithm
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._hash.update(data)
        n = len(data)
        self.size += n
        if self._out is not None:
            self._out.write(data)
        return n

    def flush(self) -> None:
        if self._out is not None:
            self._out.flush()

    @property
    def digest(self) -> str:
        return f"{self._algorithm}:{self._hash.hexdigest()}"
