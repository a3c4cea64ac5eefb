"""The one exception tree of suture.

Every error the library raises is a :class:`SutureError`. Subclasses carry the
fields a caller may act on. Messages are one line, say what failed, and never
contain credentials. ``hint`` is an optional second sentence telling the user
what to try.
"""

from __future__ import annotations


class SutureError(Exception):
    """Root of every error suture raises."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(SutureError):
    """The caller asked for something that cannot be done as asked."""


class ReferenceError(UsageError):
    """An image reference that does not parse."""

    def __init__(self, reference: str, reason: str) -> None:
        super().__init__(f"invalid image reference {reference!r}: {reason}")
        self.reference = reference
        self.reason = reason


class DigestMismatch(SutureError):
    """Bytes whose digest is not the one they were asked for by."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: digest mismatch, expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class SizeMismatch(SutureError):
    """A blob longer or shorter than its descriptor says, or over a ceiling."""

    def __init__(self, what: str, expected: int, actual: int, *, ceiling: bool = False) -> None:
        if ceiling:
            msg = f"{what}: larger than the limit of {expected} bytes"
        else:
            msg = f"{what}: size mismatch, expected {expected} bytes, got {actual}"
        super().__init__(msg)
        self.expected = expected
        self.actual = actual


class ManifestError(SutureError):
    """A manifest, index or config that is malformed or of a kind we do not know."""


class UnsupportedMediaType(ManifestError):
    def __init__(self, media_type: str, what: str = "manifest") -> None:
        super().__init__(f"unsupported {what} media type {media_type!r}")
        self.media_type = media_type


class LayerError(SutureError):
    """A layer whose content is unsafe or unreadable (path escape, bad tar, bad compression)."""

    def __init__(self, message: str, *, layer: str | None = None, path: str | None = None) -> None:
        prefix = f"layer {layer[:19]}: " if layer else ""
        super().__init__(prefix + message)
        self.layer = layer
        self.path = path


class NotFound(SutureError):
    """An image, tag, blob or file that does not exist where it was looked for."""


class TransportError(SutureError):
    """A source or sink that cannot be read or written (layout, archive, network)."""


class RegistryError(TransportError):
    """An error answered by (or on the way to) a registry."""

    def __init__(
        self, message: str, *, status: int | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class AuthError(RegistryError):
    """The registry refused our credentials, or we had none it would accept."""


class PlatformError(SutureError):
    """No image for the requested platform, or an ambiguous choice."""


class PackageDBError(SutureError):
    """A package database that cannot be parsed (or re-parsed after writing)."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class PackageFormatError(SutureError):
    """A package version, dependency relation or other metadata value that does not parse.

    ``text`` is the offending text. Parsers of whole databases or indexes wrap
    it into their own error naming the file.
    """

    def __init__(self, message: str, *, text: str) -> None:
        super().__init__(message)
        self.text = text
