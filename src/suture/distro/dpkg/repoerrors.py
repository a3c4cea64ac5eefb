"""Errors raised while reading apt configuration and apt repositories.

The errors every family's repositories share are :mod:`suture.distro.errors`'s
(re-exported here); these are apt's own.
"""

from __future__ import annotations

from datetime import datetime

from suture.distro.errors import (  # re-exported: apt's callers catch them from here
    BadSignature,
    CacheFull,
    ExpiredKey,
    KeyringError,
    NotSigned,
    OfflineCacheMiss,
    PrivateRepository,
    RepositoryError,
    RepositoryHTTPError,
    RepositoryNotFound,
    RevokedKey,
    SignatureError,
    UnknownKey,
)
from suture.errors import SutureError

__all__ = [
    "BadSignature",
    "CacheFull",
    "ExpiredKey",
    "IndexNotListed",
    "KeyringError",
    "MalformedRelease",
    "NotSigned",
    "OfflineCacheMiss",
    "PrivateRepository",
    "ReleaseExpired",
    "ReleaseMismatch",
    "RepositoryError",
    "RepositoryHTTPError",
    "RepositoryNotFound",
    "RevokedKey",
    "SignatureError",
    "SourcesError",
    "UnknownKey",
]


class SourcesError(SutureError):
    """An apt sources file (one-line or deb822) that does not parse."""

    def __init__(self, message: str, *, path: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


class IndexNotListed(RepositoryError):
    """The Release file lists no SHA256 for the index that was asked for."""


class MalformedRelease(RepositoryError):
    """A Release/InRelease whose structure or fields do not parse."""


class ReleaseExpired(RepositoryError):
    """A Release whose ``Valid-Until`` has passed (a possible replay of stale metadata)."""

    def __init__(self, url: str, valid_until: datetime, now: datetime) -> None:
        super().__init__(
            f"{url}: Release expired at {valid_until.isoformat()} (now {now.isoformat()})",
            url=url,
            hint="for an archived snapshot, disable the Valid-Until check "
            "(like apt's Check-Valid-Until=false)",
        )
        self.valid_until = valid_until
        self.now = now


class ReleaseMismatch(RepositoryError):
    """A Release whose Suite and Codename are not the suite that was asked for."""

    def __init__(self, url: str, asked: str, suite: str, codename: str) -> None:
        super().__init__(
            f"{url}: asked for suite {asked!r} but the Release says "
            f"Suite {suite!r}, Codename {codename!r}",
            url=url,
        )
        self.asked = asked
        self.suite = suite
        self.codename = codename


