"""Errors every package family's repositories share: unreachable, refused, offline,
untrusted signatures, a full cache.

All are :class:`~suture.errors.SutureError` subclasses with the fields a caller
may act on. Checksum failures of downloaded files are the shared
:class:`~suture.errors.DigestMismatch` and :class:`~suture.errors.SizeMismatch`.
A family's own (apt's sources and Release files, say) live in the family.
"""

from __future__ import annotations

from datetime import datetime

from suture.errors import SutureError

__all__ = [
    "BadSignature",
    "CacheFull",
    "ExpiredKey",
    "KeyringError",
    "NotSigned",
    "OfflineCacheMiss",
    "PrivateRepository",
    "RepositoryError",
    "RepositoryHTTPError",
    "RepositoryNotFound",
    "RevokedKey",
    "SignatureError",
    "UnknownKey",
]


class RepositoryError(SutureError):
    """A repository that cannot be used: unreachable, malformed or refused.

    ``url`` is the file that was being fetched or checked, when there is one.
    """

    def __init__(self, message: str, *, url: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.url = url


class RepositoryHTTPError(RepositoryError):
    """The server answered with an error status (``status``) or not at all (``None``)."""

    def __init__(
        self, message: str, *, url: str, status: int | None, hint: str | None = None
    ) -> None:
        if hint is None:
            hint = ("the repository is not reachable: check the network or proxy, or "
                    "point --mirror at a reachable copy") if status is None or status >= 500 \
                else "check the repository URL, or point --mirror at a copy that has it"
        super().__init__(message, url=url, hint=hint)
        self.status = status


class RepositoryNotFound(RepositoryHTTPError):
    """A 404/410 for a file the repository should have (for example a suite that moved)."""


class OfflineCacheMiss(RepositoryError):
    """Offline mode was asked for and the cache does not hold ``missing``."""

    def __init__(self, missing: str, *, url: str | None = None) -> None:
        super().__init__(
            f"offline: {missing} is not in the cache",
            url=url,
            hint="run once with network access to fill the cache, or drop offline mode",
        )
        self.missing = missing


class SignatureError(RepositoryError):
    """Repository metadata whose OpenPGP signature cannot be trusted.

    ``issuers`` are the fingerprints (or key ids) the signatures name.
    """

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        issuers: tuple[str, ...] = (),
        hint: str | None = None,
    ) -> None:
        super().__init__(message, url=url, hint=hint)
        self.issuers = issuers


class NotSigned(SignatureError):
    """Data that is not a well-formed signed message (or has text outside the signed part)."""


class BadSignature(SignatureError):
    """A signature by a trusted key that does not verify (tampered data), or a weak one."""


class UnknownKey(SignatureError):
    """No signature was made by a key in the trusted keyrings."""


class ExpiredKey(SignatureError):
    """The only signatures by trusted keys were made with keys that have expired."""

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        issuers: tuple[str, ...] = (),
        expired_at: datetime | None = None,
    ) -> None:
        super().__init__(message, url=url, issuers=issuers)
        self.expired_at = expired_at


class RevokedKey(SignatureError):
    """The only signatures by trusted keys were made with revoked keys."""


class KeyringError(SignatureError):
    """A keyring that cannot be read as OpenPGP certificates."""


class PrivateRepository(RepositoryError):
    """A repository URL (or a redirect) that points at a loopback, link-local or private
    address the user has not allowed."""


class CacheFull(RepositoryError):
    """The download cache's file system is full (or over quota): ``cache`` is its directory."""

    def __init__(self, cache: str, reason: str) -> None:
        super().__init__(f"cache {cache}: {reason}",
                         hint="free space there, or point --cache-dir at a file system "
                              "with room")
        self.cache = cache
