"""What every family's layer builder shares: the file-conflict refusal and the view of
the image's tree it reads."""

from __future__ import annotations

from typing import Protocol

from suture.errors import SutureError

__all__ = ["FileConflictError", "TreeNode"]


class FileConflictError(SutureError):
    """A new package ships a file another package owns, and the package manager would
    refuse it (dpkg without ``Replaces``, apk without ``replaces=``)."""

    def __init__(self, path: str, package: str, owner: str, *,
                 hint: str | None = None) -> None:
        super().__init__(f"{package}: trying to overwrite /{path}, which is also in package "
                         f"{owner}", hint=hint)
        self.path = path
        self.package = package
        self.owner = owner


class TreeNode(Protocol):
    """What the merged view holds at a path: its kind, mode and owner and, for a
    symlink, the target. :class:`suture.oci.fs.FileEntry` is one."""

    @property
    def kind(self) -> str: ...

    @property
    def linkname(self) -> str: ...

    @property
    def mode(self) -> int: ...

    @property
    def uid(self) -> int: ...

    @property
    def gid(self) -> int: ...
