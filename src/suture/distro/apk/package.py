"""Reading an apk v2 package (``.apk``) and checking it before anything is used.

A package is three gzip streams (see :mod:`suture.distro.apk.sign`): signatures,
the control tar (``.PKGINFO`` and scripts such as ``.post-upgrade``), the data tar.
:func:`read_apk` checks, in apk's order:

* the identity: the checksum of the control stream's compressed bytes (of
  control and data, for old packages without a ``datahash``) must be the one the
  verified index lists (``C:``); this binds the package to the signed index;
* the package's own signature, when it names a key we trust (a trusted key whose
  signature fails is an error; a key we do not have is only logged, as apk
  installs by identity too);
* ``datahash``: the SHA-256 of the data stream's compressed bytes;
* each file against the ``APK-TOOLS.checksum.SHA1`` its tar header carries.

Reads are bounded: the control stream, each file held in memory and the whole
data tar have ceilings. Entries with ``..``, absolute names or device nodes are
refused with :class:`~suture.errors.LayerError`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from suture.distro.apk.checksum import decode_checksum, encode_checksum
from suture.distro.apk.deps import Dependency, parse_dependencies
from suture.distro.apk.installed import ADB_MAGIC, SCRIPT_TYPES
from suture.distro.apk.sign import Keys, gzip_members, read_signatures, verify_signatures
from suture.distro.errors import RepositoryError, UnknownKey
from suture.errors import DigestMismatch, LayerError, PackageFormatError, SizeMismatch
from suture.oci.fs import normalize
from suture.oci.layer import DIR, FIFO, FILE, HARDLINK, SYMLINK

__all__ = ["ApkArchive", "ApkControl", "DataMember", "read_apk"]

log = logging.getLogger(__name__)

MAX_CONTROL = 64 << 20
MAX_DATA = 16 << 30
MAX_FILE = 1 << 30
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ApkControl:
    """The control part: ``.PKGINFO`` lines in order, scripts by action, the identity
    and, when the signature was checked, the key that made it."""

    pkginfo: tuple[tuple[str, str], ...]
    scripts: dict[str, bytes] = field(default_factory=dict)
    identity: str = ""
    datahash: str | None = None
    signer: str | None = None

    def get(self, key: str, default: str = "") -> str:
        for k, v in self.pkginfo:
            if k == key:
                return v
        return default

    def values(self, key: str) -> list[str]:
        return [v for k, v in self.pkginfo if k == key]

    @property
    def name(self) -> str:
        return self.get("pkgname")

    @property
    def version(self) -> str:
        return self.get("pkgver")

    @property
    def arch(self) -> str:
        return self.get("arch")

    @property
    def build_time(self) -> int:
        value = self.get("builddate")
        return int(value) if value.isdigit() else 0

    @property
    def triggers(self) -> tuple[str, ...]:
        return tuple(t for v in self.values("triggers") for t in v.split())

    @property
    def replaces(self) -> tuple[Dependency, ...]:
        return tuple(d for v in self.values("replaces")
                     for d in parse_dependencies(v, source=f"{self.name} replaces"))

    @property
    def replaces_priority(self) -> int:
        value = self.get("replaces_priority")
        return int(value) if value.isdigit() else 0


@dataclass(frozen=True)
class DataMember:
    """One entry of the data tar. ``path`` is root-relative; ``checksum`` is what apk
    records as ``Z:`` (``None`` for directories and hard links); ``uname``/``gname``
    are mapped through the image's users by the caller, as apk does."""

    path: str
    kind: str
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    mtime: int
    linkname: str = ""
    data: bytes | None = None
    xattrs: dict[str, bytes] = field(default_factory=dict)
    checksum: str | None = None
    size: int = 0


@dataclass(frozen=True)
class ApkArchive:
    control: ApkControl
    members: list[DataMember]


def _parse_pkginfo(data: bytes) -> tuple[tuple[str, str], ...]:
    out = []
    for line in data.decode("utf-8", "surrogateescape").splitlines():
        if not line or line.startswith("#") or " = " not in line:
            continue
        key, _, value = line.partition(" = ")
        out.append((key, value))
    return tuple(out)


def _control(data: bytes, what: str) -> tuple[tuple[tuple[str, str], ...], dict[str, bytes]]:
    pkginfo: tuple[tuple[str, str], ...] | None = None
    scripts: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
            for member in tar:
                if not member.name.startswith("."):
                    raise PackageFormatError(f"{what}: {member.name!r} in the control part "
                                             "(apk v1 packages are not supported)",
                                             text=member.name)
                if not member.isreg():
                    continue
                fobj = tar.extractfile(member)
                body = fobj.read() if fobj is not None else b""
                if member.name == ".PKGINFO":
                    pkginfo = _parse_pkginfo(body)
                elif member.name[1:] in SCRIPT_TYPES:
                    scripts[member.name[1:]] = body
    except (tarfile.TarError, EOFError) as exc:
        raise RepositoryError(f"{what}: unreadable control tar ({exc})") from None
    if pkginfo is None:
        raise PackageFormatError(f"{what}: no .PKGINFO", text=what)
    return pkginfo, scripts


def _digest_range(stream: IO[bytes], start: int, end: int | None, algorithm: str) -> bytes:
    h = hashlib.new(algorithm)
    stream.seek(start)
    left = None if end is None else end - start
    while left is None or left > 0:
        chunk = stream.read(_CHUNK if left is None else min(_CHUNK, left))
        if not chunk:
            break
        h.update(chunk)
        if left is not None:
            left -= len(chunk)
    return h.digest()


def read_apk(path: Path, *, identity: str, keys: Keys, what: str, members: bool = True,
             max_data: int = MAX_DATA, max_file: int = MAX_FILE) -> ApkArchive:
    """Check the package at ``path`` against ``identity`` (the index's ``C:``) and its
    own signature and data hash, and read it (see the module docstring).

    Errors: :class:`DigestMismatch` (identity, data hash or a file's checksum),
    :class:`~suture.distro.errors.BadSignature`, :class:`RepositoryError`
    (not an apk v2 package), :class:`LayerError` (unsafe entries),
    :class:`SizeMismatch` (a ceiling). ``members=False``: check, but do not read the
    data tar (the result has no members).
    """
    with path.open("rb") as stream:
        if stream.read(3) == ADB_MAGIC:
            raise RepositoryError(f"{what}: apk v3 (ADB) package format is not supported yet")
        stream.seek(0)
        spans, outputs = gzip_members(stream, count=2, limit=MAX_CONTROL, what=what)
        if not spans:
            raise RepositoryError(f"{what}: not an apk package (no gzip stream)")
        signatures = read_signatures(outputs[0], what)
        index = 1 if signatures is not None else 0
        if len(spans) <= index:
            raise RepositoryError(f"{what}: no control part")
        control_start, control_end = spans[index]
        pkginfo, scripts = _control(outputs[index], what)
        datahash = dict(pkginfo).get("datahash")
        stream.seek(0, io.SEEK_END)
        file_end = stream.tell()
        # The identity covers the control part, or control and data without a datahash.
        id_end = control_end if datahash else None
        expected = decode_checksum(identity)
        algorithm = {16: "md5", 20: "sha1", 32: "sha256"}[len(expected)]
        actual = _digest_range(stream, control_start, id_end, algorithm)
        if actual != expected:
            raise DigestMismatch(f"{what} (package checksum against the index)", identity,
                                 encode_checksum(actual))
        signer = None
        if signatures is not None:
            signed_end = control_end if datahash else file_end
            stream.seek(control_start)
            signed = stream.read(signed_end - control_start)  # no bigger than the file
            try:
                signer = verify_signatures(signatures, signed, keys, what=what).origin
            except UnknownKey as exc:
                log.info("%s: %s; trusted through the signed index", what, exc)
        if datahash:
            try:
                want = bytes.fromhex(datahash)
            except ValueError:
                raise PackageFormatError(f"{what}: malformed datahash", text=datahash) \
                    from None
            got = _digest_range(stream, control_end, None, "sha256")
            if got != want:
                raise DigestMismatch(f"{what} (data hash)", "sha256:" + datahash,
                                     "sha256:" + got.hex())
        control = ApkControl(pkginfo, scripts, identity, datahash, signer)
        stream.seek(control_end)
        data = list(_data_members(stream, what, max_data, max_file)) if members else []
    return ApkArchive(control, data)


class _Ceiling(io.RawIOBase):
    def __init__(self, inner: IO[bytes], limit: int, what: str) -> None:
        self.inner, self.left, self.limit, self.what = inner, limit, limit, what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(min(len(buffer), self.left + 1))
        if len(data) > self.left:
            raise SizeMismatch(f"{self.what} (data)", self.limit, self.limit + 1,
                               ceiling=True)
        self.left -= len(data)
        buffer[:len(data)] = data
        return len(data)


def _data_members(stream: IO[bytes], what: str, max_data: int, max_file: int
                  ) -> Iterator[DataMember]:
    gz = cast(IO[bytes], gzip.GzipFile(fileobj=stream, mode="rb"))
    plain = io.BufferedReader(_Ceiling(gz, max_data, what), _CHUNK)
    try:
        with tarfile.open(fileobj=plain, mode="r|", errorlevel=2) as tar:
            for info in tar:
                member = _member(tar, info, what, max_file)
                if member is not None:
                    yield member
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise RepositoryError(f"{what}: unreadable data tar ({exc})") from None


def _hex_checksum(info: tarfile.TarInfo) -> str | None:
    value = info.pax_headers.get("APK-TOOLS.checksum.SHA1")
    if value is not None:
        try:
            digest = bytes.fromhex(value)
        except ValueError:
            digest = b""
        if len(digest) != 20:
            raise PackageFormatError(f"{info.name}: malformed APK-TOOLS.checksum.SHA1",
                                     text=value)
        return encode_checksum(digest)
    md5 = info.pax_headers.get("APK-TOOLS.checksum.MD5")
    return md5.lower() if md5 else None


def _member(tar: tarfile.TarFile, info: tarfile.TarInfo, what: str, max_file: int
            ) -> DataMember | None:
    raw = info.name
    if raw.startswith("."):
        return None  # apk installs nothing whose name starts with a dot at the top
    if raw.startswith("/") or any(ord(c) < 0x20 or c == "\x7f" for c in raw):
        raise LayerError(f"{what}: unsafe entry {raw!r}", path=raw)
    path = normalize(raw, layer=what)
    if not path:
        return None
    if info.ischr() or info.isblk():
        raise LayerError(f"{what}: device node {raw!r} refused", path=raw)
    xattrs = {k[len("SCHILY.xattr."):]: v.encode("utf-8", "surrogateescape")
              for k, v in info.pax_headers.items() if k.startswith("SCHILY.xattr.")}
    header = _hex_checksum(info)

    def member(kind: str, **extra: Any) -> DataMember:
        return DataMember(path, kind, info.mode & 0o7777, info.uid, info.gid,
                          info.uname or "", info.gname or "", int(info.mtime), xattrs=xattrs,
                          **extra)

    if info.isdir():
        return member(DIR)
    if info.issym():
        target = info.linkname.encode("utf-8", "surrogateescape")
        actual = encode_checksum(hashlib.sha1(target, usedforsecurity=False).digest())
        if header is not None and header.startswith("Q1") and header != actual:
            raise DigestMismatch(f"{what}: symlink {path}", header, actual)
        return member(SYMLINK, linkname=info.linkname, checksum=header or actual)
    if info.islnk():
        return member(HARDLINK, linkname=normalize(info.linkname, layer=what))
    if info.isfifo():
        return member(FIFO)
    if not info.isreg():
        return None
    if info.size > max_file:
        raise SizeMismatch(f"{what}: {path}", max_file, info.size, ceiling=True)
    fobj = tar.extractfile(info)
    data = fobj.read() if fobj is not None else b""
    if header is not None and len(header) == 32:  # an MD5 header from very old abuild
        actual = hashlib.md5(data, usedforsecurity=False).hexdigest()
    else:
        actual = encode_checksum(hashlib.sha1(data, usedforsecurity=False).digest())
    if header is not None and header != actual:
        raise DigestMismatch(f"{what}: file {path}", header, actual)
    return member(FILE, data=data, checksum=actual, size=len(data))
