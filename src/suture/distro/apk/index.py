"""Repository indexes: ``APKINDEX.tar.gz`` verified, and its ``APKINDEX`` parsed.

The archive is a signature stream (see :mod:`suture.distro.apk.sign`) followed
by a gzip'd tar holding ``DESCRIPTION`` and ``APKINDEX``. ``APKINDEX`` is a list
of records separated by blank lines, each line ``<letter>:<value>``, with the
same letters as the installed database's header (``C`` identity, ``P``, ``V``,
``A``, ``S``, ``I``, ``T``, ``U``, ``L``, ``o``, ``m``, ``t``, ``c``, ``k``,
``D``, ``p``, ``i``...).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field

from suture.distro.apk.checksum import decode_checksum
from suture.distro.apk.installed import ADB_MAGIC
from suture.distro.apk.record import PackageFields
from suture.distro.apk.sign import ApkKey, Keys, gzip_members, read_signatures, verify_signatures
from suture.distro.errors import RepositoryError
from suture.errors import PackageDBError, PackageFormatError

__all__ = ["IndexEntry", "VerifiedIndex", "parse_apkindex", "read_index_archive"]

MAX_INDEX = 512 << 20  # decompressed APKINDEX.tar; Alpine edge main+community is ~30 MB
MAX_INDEX_MEMBER = 256 << 20


@dataclass(frozen=True)
class IndexEntry(PackageFields):
    """One package of an index. ``fields`` holds every line as ``(letter, value)``.

    ``repository`` is the base URL its ``.apk`` is under (``<repository>/<arch>/
    <name>-<version>.apk``), ``tag`` the repository's tag (``""`` if none) and
    ``order`` the repository's position in the image's configuration.
    """

    fields: tuple[tuple[str, str], ...]
    repository: str = ""
    tag: str = ""
    order: int = 0
    source: str = field(default="", compare=False)

    @property
    def size(self) -> int:
        return self.number("S")

    @property
    def provider_priority(self) -> int:
        return self.number("k")

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.apk"


def _check_entry(fields: list[tuple[str, str]], source: str, line: int) -> None:
    have = {k: v for k, v in fields}
    for letter in "PVC":
        if not have.get(letter):
            raise PackageDBError(f"record ending at line {line} has no {letter}: field",
                                 path=source)
    name = have["P"]
    if "/" in name or name in (".", "..") or any(c.isspace() for c in name):
        raise PackageDBError(f"unsafe package name {name!r}", path=source)
    version = have["V"]
    if "/" in version or any(c.isspace() for c in version):
        raise PackageDBError(f"package {name}: unsafe version {version!r}", path=source)
    if not have.get("S", "0").isdigit():
        raise PackageDBError(f"package {name}: bad S: field", path=source)
    try:
        decode_checksum(have["C"])
    except PackageFormatError:
        raise PackageDBError(f"package {name}: malformed C: {have['C']!r}", path=source) \
            from None


def parse_apkindex(data: bytes, *, repository: str = "", tag: str = "", order: int = 0,
                   source: str = "APKINDEX", names: frozenset[str] | None = None
                   ) -> list[IndexEntry]:
    """Parse the text of an ``APKINDEX`` into entries.

    ``names``: keep only entries with these names, or that provide one of them
    (memory follows what a resolution can use, not the repository's size).
    Every entry needs ``P``, ``V`` and ``C``; names and versions may not hold
    ``/`` or white space: otherwise :class:`PackageDBError` naming ``source``.
    """
    text = data.decode("utf-8", "surrogateescape")
    out: list[IndexEntry] = []
    fields: list[tuple[str, str]] = []
    lineno = 0
    for lineno, line in enumerate(text.split("\n"), 1):
        if len(line) < 2:
            if fields:
                _add(out, fields, repository, tag, order, source, lineno, names)
                fields = []
            continue
        if line[1] != ":":
            raise PackageDBError(f"line {lineno}: malformed line {line[:60]!r}", path=source)
        fields.append((line[0], line[2:]))
    if fields:
        _add(out, fields, repository, tag, order, source, lineno, names)
    return out


def _add(out: list[IndexEntry], fields: list[tuple[str, str]], repository: str, tag: str,
         order: int, source: str, line: int, names: frozenset[str] | None) -> None:
    _check_entry(fields, source, line)
    entry = IndexEntry(tuple(fields), repository, tag, order, source)
    if names is not None and entry.name not in names:
        provided = {p.partition("=")[0] for k, v in fields if k == "p" for p in v.split()}
        if not provided & names:
            return
    try:
        entry.depends, entry.provides, entry.install_if  # noqa: B018
    except PackageFormatError as exc:
        raise PackageDBError(f"package {entry.name}: {exc}", path=source) from None
    out.append(entry)


@dataclass(frozen=True)
class VerifiedIndex:
    """The contents of a verified ``APKINDEX.tar.gz``."""

    apkindex: bytes
    description: str
    signer: ApkKey


def read_index_archive(blob: bytes, keys: Keys, *, what: str, url: str | None = None,
                       limit: int = MAX_INDEX) -> VerifiedIndex:
    """Verify ``blob`` (an ``APKINDEX.tar.gz``) against ``keys`` and return its index.

    Raises :class:`~suture.distro.errors.SignatureError` subclasses for an
    unsigned, tampered or untrusted index, :class:`RepositoryError` for a malformed
    one or an apk v3 (ADB) index, :class:`SizeMismatch` past ``limit``.
    """
    if blob.startswith(ADB_MAGIC):
        raise RepositoryError(f"{what}: apk v3 (ADB) index format is not supported yet",
                              url=url)
    stream = io.BytesIO(blob)
    spans, outputs = gzip_members(stream, count=1, limit=MAX_INDEX_MEMBER, what=what)
    if not spans:
        raise RepositoryError(f"{what}: empty file", url=url)
    signatures = read_signatures(outputs[0], what)
    signed_from = spans[0][1] if signatures is not None else 0
    signer = verify_signatures(signatures, blob[signed_from:], keys, what=what, url=url)
    _spans, parts = gzip_members(io.BytesIO(blob[signed_from:]), count=1 << 16, limit=limit,
                                 what=what)
    files = _index_files(b"".join(parts), what)
    if "APKINDEX" not in files:
        raise RepositoryError(f"{what}: no APKINDEX in the archive", url=url)
    return VerifiedIndex(files["APKINDEX"], files.get("DESCRIPTION", b"").decode(
        "utf-8", "replace").strip(), signer)


def _index_files(data: bytes, what: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
            for member in tar:
                if member.isreg() and member.name in ("APKINDEX", "DESCRIPTION"):
                    fobj = tar.extractfile(member)
                    out[member.name] = fobj.read() if fobj is not None else b""
    except (tarfile.TarError, EOFError) as exc:
        raise RepositoryError(f"{what}: unreadable tar ({exc})") from None
    return out


def newest_first(entries: Sequence[IndexEntry]) -> list[IndexEntry]:
    """``entries`` newest version first; equal versions in repository order."""
    from suture.distro.apk.version import version_key

    return sorted(entries, key=lambda e: (version_key(e.version), -e.order), reverse=True)
