"""Trust for apk v2 files: RSA keys, gzip streams, and ``.SIGN.*`` signatures.

An apk v2 file (a package or an ``APKINDEX.tar.gz``) is a concatenation of gzip
streams, each a tar archive without its end-of-archive blocks except the last.
A signed file starts with a stream holding one or more ``.SIGN.<type>.<key name>``
members: PKCS#1 v1.5 RSA signatures (``RSA``: SHA-1, ``RSA256``: SHA-256,
``RSA512``: SHA-512) over the *compressed* bytes that follow: for an index,
everything after the signature stream; for a package with a ``datahash``, the
control stream only (the data is bound by that hash).

Trust follows apk: a signature counts when its key name is a file in the image's
``/etc/apk/keys`` and verifies with it. Keys the user names (``--keyring``) are
tried for every signature, whatever its name.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tarfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from suture.distro.errors import BadSignature, NotSigned, RepositoryError, UnknownKey
from suture.errors import SizeMismatch

__all__ = [
    "ApkKey",
    "Keys",
    "Signature",
    "gzip_members",
    "read_signatures",
    "verify_signatures",
]

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MAX_SIGNATURE_STREAM = 1 << 20
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "RSA512": hashes.SHA512, "RSA256": hashes.SHA256, "RSA": hashes.SHA1}


@dataclass(frozen=True)
class ApkKey:
    """An RSA public key and the file name apk knows it by (``""`` for a user's key)."""

    name: str
    key: rsa.RSAPublicKey
    origin: str = ""

    @property
    def fingerprint(self) -> str:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        der = self.key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(der).hexdigest()[:16]


def load_key(data: bytes, name: str = "", origin: str = "") -> ApkKey | None:
    """A PEM RSA public key, or ``None`` when ``data`` is not one."""
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError):
        return None
    if not isinstance(key, rsa.RSAPublicKey):
        return None
    return ApkKey(name, key, origin or name)


@dataclass(frozen=True)
class Keys:
    """The keys an image trusts (by file name) and the ones the user added."""

    named: Mapping[str, ApkKey] = field(default_factory=dict)
    extra: tuple[ApkKey, ...] = ()

    @classmethod
    def load(cls, files: Mapping[str, bytes], extra: Iterable[bytes] = ()) -> Keys:
        """``files``: key file name -> contents (``/etc/apk/keys``); ``extra``: the
        user's files (any that is not a PEM RSA public key is ignored)."""
        named = {}
        for name, data in sorted(files.items()):
            key = load_key(data, name, f"/etc/apk/keys/{name}")
            if key is None:
                log.info("/etc/apk/keys/%s: not an RSA public key, ignored", name)
                continue
            named[name] = key
        users = []
        for i, data in enumerate(extra, 1):
            key = load_key(data, "", f"--keyring #{i}")
            if key is not None:
                users.append(key)
        return cls(named, tuple(users))

    def __len__(self) -> int:
        return len(self.named) + len(self.extra)

    def candidates(self, key_name: str) -> list[ApkKey]:
        found = [self.named[key_name]] if key_name in self.named else []
        return found + list(self.extra)


@dataclass(frozen=True)
class Signature:
    kind: str  # RSA | RSA256 | RSA512 | other
    key_name: str
    data: bytes


def gzip_members(stream: IO[bytes], *, count: int, limit: int, what: str
                 ) -> tuple[list[tuple[int, int]], list[bytes]]:
    """The first ``count`` gzip streams of ``stream``: their ``(start, end)`` byte
    offsets and decompressed contents (together at most ``limit`` bytes).

    Fewer are returned when the file has fewer. A corrupt stream or one cut short
    raises :class:`RepositoryError`; too much output, :class:`SizeMismatch`.
    """
    spans: list[tuple[int, int]] = []
    outputs: list[bytes] = []
    offset = 0  # bytes of the file consumed so far
    start = 0
    dec = zlib.decompressobj(wbits=31)
    out = bytearray()
    total = 0
    pending = b""
    try:
        while len(spans) < count:
            if not pending:
                pending = stream.read(CHUNK)
                if not pending:
                    if offset != start:
                        raise RepositoryError(f"{what}: truncated gzip stream")
                    break
            before = len(pending)
            data = dec.decompress(pending, limit - total + 1)
            total += len(data)
            if total > limit:
                raise SizeMismatch(what, limit, total, ceiling=True)
            out += data
            if dec.eof:
                rest = dec.unused_data
                offset += before - len(rest)
                spans.append((start, offset))
                outputs.append(bytes(out))
                out = bytearray()
                start = offset
                dec = zlib.decompressobj(wbits=31)
                pending = rest
            else:
                rest = dec.unconsumed_tail
                offset += before - len(rest)
                pending = rest
    except zlib.error as exc:
        raise RepositoryError(f"{what}: corrupt gzip stream ({exc})") from None
    return spans, outputs


def _tar_files(data: bytes, what: str, *, max_file: int) -> list[tuple[str, bytes]]:
    """Regular files of a (possibly cut) tar, in order."""
    out = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                if member.size > max_file:
                    raise SizeMismatch(f"{what}: {member.name}", max_file, member.size,
                                       ceiling=True)
                fobj = tar.extractfile(member)
                out.append((member.name, fobj.read() if fobj is not None else b""))
    except (tarfile.TarError, EOFError) as exc:
        raise RepositoryError(f"{what}: unreadable tar ({exc})") from None
    return out


def read_signatures(first_stream: bytes, what: str) -> list[Signature] | None:
    """The signatures in the first stream of a file, or ``None`` when it holds other
    files (the file is not signed)."""
    files = _tar_files(first_stream, what, max_file=MAX_SIGNATURE_STREAM)
    if not files or not all(n.startswith(".SIGN.") for n, _ in files):
        return None
    sigs = []
    for name, data in files:
        kind, _, key_name = name[len(".SIGN."):].partition(".")
        sigs.append(Signature(kind, key_name, data))
    return sigs


def _verify_one(key: ApkKey, sig: Signature, signed: bytes) -> bool:
    algorithm = _HASHES[sig.kind]
    try:
        key.key.verify(sig.data, signed, padding.PKCS1v15(), algorithm())
    except InvalidSignature:
        return False
    return True


def verify_signatures(signatures: list[Signature] | None, signed: bytes, keys: Keys, *,
                      what: str, url: str | None = None) -> ApkKey:
    """The trusted key whose signature over ``signed`` verifies; else one clear error.

    No signatures: :class:`NotSigned`. Signatures only by keys not trusted:
    :class:`UnknownKey`. A signature by a trusted key that does not verify (and
    none that does): :class:`BadSignature`.
    """
    if not signatures:
        raise NotSigned(f"{what} is not signed", url=url,
                        hint="apk repositories sign their APKINDEX with abuild-sign")
    tried: list[str] = []
    for sig in signatures:
        if sig.kind not in _HASHES:
            continue
        for key in keys.candidates(sig.key_name):
            if _verify_one(key, sig, signed):
                log.info("%s: signature %s verified with %s", what, sig.kind, key.origin)
                return key
            tried.append(key.origin)
    names = tuple(s.key_name for s in signatures)
    if tried:
        raise BadSignature(f"{what}: the signature does not verify with "
                           f"{', '.join(sorted(set(tried)))} (the file was changed after "
                           "signing, or signed by another key of that name)",
                           url=url, issuers=names)
    raise UnknownKey(f"{what} is signed by {', '.join(names)}, which is not a trusted key "
                     "(none in /etc/apk/keys by that name)", url=url, issuers=names,
                     hint="pass --keyring FILE with the repository's public key")
