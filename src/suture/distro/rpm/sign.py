"""rpm signatures: OpenPGP header signatures of packages and detached signatures of
``repomd.xml``, checked against the keys an image trusts.

rpm stores one binary OpenPGP signature packet in the signature header's RSAHEADER
(268, RSA) or DSAHEADER (267, DSA and EdDSA as rpm 4.18 files them) tag; it signs
the main header with its magic (:func:`signed_header_bytes`). Packages are signed
with v3 signature packets as often as with v4, which Sequoia refuses, so this module
reads OpenPGP itself (RFC 4880, on ``cryptography``) for the few things it needs:
public keys and subkeys, their self-signatures, and signature packets v3 and v4.

What a signature must pass to be accepted (:meth:`Keyring.verify`):

- one well-formed signature packet of type binary (0x00) or text (0x01) document,
  nothing after it; no unknown critical subpacket (in either area); a creation
  time; not expired (signature expiration subpacket) at the time of the check;
- an issuer (key id, or issuer fingerprint, which must agree) naming a key of the
  keyring; public-key algorithm RSA (PKCS#1 v1.5), EdDSA (Ed25519), ECDSA (P-256,
  P-384, P-521) or DSA; digest SHA-1, SHA-224, SHA-256, SHA-384 or SHA-512 (MD5 and
  RIPEMD-160 are refused);
- the digest's left 16 bits match the packet's quick check, then the signature
  verifies over the data and the packet's hashed trailer (gpgv ignores the quick
  check; rpm refuses a signature that fails it, and so does this);
- nothing in the unhashed area is trusted: its issuer key id is a hint (it must
  agree with a hashed issuer fingerprint), the rest is ignored. gpgv refuses a
  signature whose unhashed issuer subpacket was turned into another subpacket even
  when the hashed issuer fingerprint names the key; this accepts it.

What a key must pass to sign (:meth:`Keyring.load` records why one cannot):

- a v4 primary key needs a self-signature (user ID certification or direct-key
  signature) that verifies; the newest of those gives its expiry and key flags. A
  key with key flags that do not include signing may not sign; a key without key
  flags may (Amazon Linux 2023's key has none). A verified key revocation (0x20),
  whatever its reason (soft revocations included), makes it unusable.
- a subkey needs a binding signature (0x18) by the primary that verifies and, as gpg
  and rpm require of signing subkeys, an embedded back-signature (0x19) by the
  subkey that verifies; a verified subkey revocation (0x28) or a revoked primary
  makes it unusable; its key flags must include signing.
- the signature must be made after the key was created and before it expired. A
  key that expired later still vouches for what it signed while alive (packages
  stay in repositories for years); a warning is logged. gpgv calls both EXPKEYSIG.
- v3 keys (RSA) are accepted as they are: their key id is the low 64 bits of the
  modulus and they carry no fingerprint here; their validity period is honoured,
  their self-signatures are not checked.

Revocations by designated revokers (other keys) are not seen: only the key's own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import struct
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning

from suture.distro.errors import SignatureError
from suture.distro.rpm.header import MAGIC, Header, Tag

__all__ = [
    "Keyring",
    "RpmSignatureError",
    "Signer",
    "header_signature",
    "signed_header_bytes",
]

log = logging.getLogger(__name__)

MAX_KEY_FILE = 8 << 20  # the biggest distribution key files are a few KiB
MAX_KEY_PACKET = 1 << 20  # user attributes (photos) are the big ones
MAX_SIGNATURE = 64 << 10  # an RSA-16384 signature is 2 KiB; notations add little
MAX_MPI_BITS = 16384

# packet tags
_SIG, _PUBKEY, _USERID, _PUBSUBKEY, _USERATTR = 2, 6, 13, 14, 17
# signature types
_BINARY, _TEXT = 0x00, 0x01
_CERTIFICATIONS = (0x10, 0x11, 0x12, 0x13)
_SUBKEY_BINDING, _PRIMARY_BINDING, _DIRECT_KEY = 0x18, 0x19, 0x1F
_KEY_REVOCATION, _SUBKEY_REVOCATION = 0x20, 0x28
# public-key algorithms
_RSA, _RSA_SIGN, _DSA, _ECDSA, _EDDSA = 1, 3, 17, 19, 22
_RSA_ENCRYPT, _ELGAMAL, _ECDH = 2, 16, 18
_ALGO_NAMES = {1: "RSA", 2: "RSA (encrypt-only)", 3: "RSA (sign-only)", 16: "Elgamal",
               17: "DSA", 18: "ECDH", 19: "ECDSA", 22: "EdDSA", 27: "Ed25519", 28: "Ed448"}
_HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    2: hashes.SHA1, 8: hashes.SHA256, 9: hashes.SHA384, 10: hashes.SHA512, 11: hashes.SHA224}
_HASH_NAMES = {1: "MD5", 2: "SHA-1", 3: "RIPEMD-160", 8: "SHA-256", 9: "SHA-384",
               10: "SHA-512", 11: "SHA-224"}
_ED25519_OID = bytes.fromhex("2b06010401da470f01")
_CURVES: dict[bytes, ec.EllipticCurve] = {
    bytes.fromhex("2a8648ce3d030107"): ec.SECP256R1(),
    bytes.fromhex("2b81040022"): ec.SECP384R1(),
    bytes.fromhex("2b81040023"): ec.SECP521R1(),
}
# subpackets understood, so allowed to be critical: creation time, signature
# expiration, exportable, revocable, key expiration, preferred algorithms, issuer,
# keyserver preferences, primary user id, key flags, signer's user id, revocation
# reason, features, embedded signature, issuer fingerprint
_KNOWN_SUBPACKETS = frozenset({2, 3, 4, 7, 9, 11, 16, 21, 22, 23, 25, 27, 28, 29, 30, 32,
                               33, 34})
_KEY_FLAG_SIGN = 0x02
_NOT_SIGNING = "not a signing key (key flags)"


class RpmSignatureError(SignatureError):
    """A signature that cannot be trusted (tampered, bad, by an unknown or unusable
    key, of an unsupported kind) or key material that cannot be read.

    ``keyid`` is the 16-hex key id the signature names (``""`` when unknown)."""

    def __init__(self, message: str, *, keyid: str = "", hint: str | None = None) -> None:
        super().__init__(message, issuers=(keyid,) if keyid else (), hint=hint)
        self.keyid = keyid


@dataclass(frozen=True)
class Signer:
    """The key a signature verified with: its 16-hex key id, its fingerprint (hex,
    ``""`` for a v3 key) and where the key came from (a file in the image,
    ``rpmdb gpg-pubkey-XXXXXXXX-YYYYYYYY`` or a user's keyring path)."""

    keyid: str
    fingerprint: str
    origin: str


class _Malformed(Exception):
    """Internal: bytes that are not the OpenPGP expected (message only)."""


# ---------------------------------------------------------------- packets


def _packets(data: bytes, limit: int) -> Iterator[tuple[int, bytes]]:
    """(tag, body) of each packet of ``data``; old and new formats, no partial or
    indeterminate lengths, no body over ``limit`` bytes."""
    pos = 0
    n = len(data)
    while pos < n:
        first = data[pos]
        if not first & 0x80:
            raise _Malformed(f"not an OpenPGP packet at byte {pos}")
        if first & 0x40:  # new format
            tag = first & 0x3F
            if pos + 2 > n:
                raise _Malformed("truncated packet header")
            o = data[pos + 1]
            if o < 192:
                length, pos = o, pos + 2
            elif o < 224:
                if pos + 3 > n:
                    raise _Malformed("truncated packet header")
                length, pos = ((o - 192) << 8) + data[pos + 2] + 192, pos + 3
            elif o == 255:
                if pos + 6 > n:
                    raise _Malformed("truncated packet header")
                length, pos = struct.unpack_from(">I", data, pos + 2)[0], pos + 6
            else:
                raise _Malformed(f"packet tag {tag} with a partial length")
        else:
            tag = (first >> 2) & 0x0F
            kind = first & 3
            if kind == 3:
                raise _Malformed(f"packet tag {tag} with an indeterminate length")
            size = 1 << kind
            if pos + 1 + size > n:
                raise _Malformed("truncated packet header")
            length = int.from_bytes(data[pos + 1:pos + 1 + size], "big")
            pos += 1 + size
        if length > limit:
            raise _Malformed(f"packet tag {tag} of {length} bytes (limit {limit})")
        if pos + length > n:
            raise _Malformed(f"packet tag {tag} runs past the end ({length} bytes)")
        yield tag, data[pos:pos + length]
        pos += length


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _Malformed("truncated packet")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def mpi(self) -> int:
        bits = self.u16()
        if bits > MAX_MPI_BITS:
            raise _Malformed(f"a {bits}-bit number")
        return int.from_bytes(self.take((bits + 7) // 8), "big")

    def mpi_bytes(self) -> bytes:
        bits = self.u16()
        if bits > MAX_MPI_BITS:
            raise _Malformed(f"a {bits}-bit number")
        return self.take((bits + 7) // 8)

    def oid(self) -> bytes:
        n = self.byte()
        if n in (0, 0xFF):
            raise _Malformed("bad curve OID")
        return self.take(n)

    @property
    def done(self) -> bool:
        return self.pos == len(self.data)


# ---------------------------------------------------------------- keys

# cryptography 51 deprecated DSA and warns at each use of its names. Old rpm keys
# still sign with DSA, the user can do nothing about the warning, and it was a stray
# non-suture line on stderr before every error and progress line: it is quieted for
# uses in this module only (the filter matches warnings attributed to it).
warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning,
                        module=r"suture\.distro\.rpm\.sign\Z")

_PublicKey = (rsa.RSAPublicKey | dsa.DSAPublicKey | ec.EllipticCurvePublicKey
              | ed25519.Ed25519PublicKey)


@dataclass
class _Key:
    """One primary key or subkey, and what its certificate says about it."""

    version: int
    algo: int
    created: int
    body: bytes  # the key packet's body, hashed by signatures over the key
    public: _PublicKey | None  # None: an algorithm this module cannot verify with
    keyid: str
    fingerprint: str
    origin: str
    expires: int | None = None  # seconds since the epoch
    flags: int | None = None  # key flags of the newest self-signature, None when absent
    problem: str | None = None  # why the key may not sign, None when it may
    primary: _Key | None = field(default=None, repr=False)

    @property
    def hashed(self) -> bytes:
        return b"\x99" + struct.pack(">H", len(self.body)) + self.body


def _public_key(algo: int, r: _Reader) -> _PublicKey | None:
    """The key material after the algorithm byte of a key packet."""
    try:
        if algo in (_RSA, _RSA_SIGN, _RSA_ENCRYPT):
            n, e = r.mpi(), r.mpi()
            return rsa.RSAPublicNumbers(e, n).public_key()
        if algo == _DSA:
            p, q, g, y = r.mpi(), r.mpi(), r.mpi(), r.mpi()
            return dsa.DSAPublicNumbers(y, dsa.DSAParameterNumbers(p, q, g)).public_key()
        if algo == _EDDSA:
            oid, point = r.oid(), r.mpi_bytes()
            if oid != _ED25519_OID or len(point) != 33 or point[0] != 0x40:
                return None
            return ed25519.Ed25519PublicKey.from_public_bytes(point[1:])
        if algo == _ECDSA:
            oid, point = r.oid(), r.mpi_bytes()
            curve = _CURVES.get(oid)
            if curve is None:
                return None
            return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _Malformed(f"bad {_ALGO_NAMES.get(algo, algo)} key ({exc})") from None
    return None


def _parse_key(body: bytes, origin: str) -> _Key:
    r = _Reader(body)
    version = r.byte()
    if version == 4:
        created = r.u32()
        algo = r.byte()
        public = _public_key(algo, r)
        fpr = hashlib.sha1(b"\x99" + struct.pack(">H", len(body)) + body).hexdigest()
        return _Key(4, algo, created, body, public, fpr[-16:], fpr, origin)
    if version in (2, 3):
        created = r.u32()
        days = r.u16()
        algo = r.byte()
        if algo not in (_RSA, _RSA_SIGN):
            raise _Malformed(f"a v3 key of algorithm {_ALGO_NAMES.get(algo, algo)}")
        start = r.pos
        n = r.mpi()
        r.pos = start
        public = _public_key(algo, r)
        key = _Key(3, algo, created, body, public, f"{n & (2**64 - 1):016x}", "", origin)
        key.expires = created + days * 86400 if days else None
        return key
    raise _Malformed(f"key packet version {version}")


# ---------------------------------------------------------------- signatures


@dataclass(frozen=True)
class _Sig:
    version: int
    type: int
    algo: int
    hash_algo: int
    created: int | None
    expires_after: int | None  # signature expiration (seconds after creation)
    key_expires_after: int | None
    key_flags: int | None
    issuer: str  # 16 hex, "" when absent
    issuer_fpr: str  # hex, "" when absent
    trailer: bytes  # hashed after the data
    quick: bytes
    values: tuple[int, ...]  # the algorithm's numbers (RSA: s; DSA/ECDSA/EdDSA: r, s)
    embedded: bytes | None  # the embedded signature (a back-signature's packet body)

    @property
    def issuers(self) -> tuple[str, ...]:
        return tuple(i for i in (self.issuer_fpr, self.issuer) if i)


def _subpackets(area: bytes) -> Iterator[tuple[int, bool, bytes]]:
    """(type, critical, data) of each subpacket of a signature's area."""
    r = _Reader(area)
    while not r.done:
        o = r.byte()
        if o < 192:
            length = o
        elif o < 255:
            length = ((o - 192) << 8) + r.byte() + 192
        else:
            length = r.u32()
        if length == 0:
            raise _Malformed("empty subpacket")
        data = r.take(length)
        kind = data[0]
        yield kind & 0x7F, bool(kind & 0x80), data[1:]


def _parse_sig(body: bytes) -> _Sig:
    r = _Reader(body)
    version = r.byte()
    created: int | None = None
    expires_after = key_expires_after = key_flags = None
    issuer = issuer_fpr = ""
    embedded: bytes | None = None
    if version == 3:
        if r.byte() != 5:
            raise _Malformed("v3 signature with a hashed length other than 5")
        hashed_part = r.take(5)
        sig_type = hashed_part[0]
        created = int.from_bytes(hashed_part[1:], "big")
        issuer = r.take(8).hex()
        algo, hash_algo = r.byte(), r.byte()
        trailer = hashed_part
    elif version == 4:
        sig_type, algo, hash_algo = r.byte(), r.byte(), r.byte()
        hashed_len = r.u16()
        hashed = r.take(hashed_len)
        unhashed = r.take(r.u16())
        trailer = (bytes((4, sig_type, algo, hash_algo)) + struct.pack(">H", hashed_len)
                   + hashed)
        trailer += b"\x04\xff" + struct.pack(">I", len(trailer))
        for area, is_hashed in ((hashed, True), (unhashed, False)):
            for kind, critical, data in _subpackets(area):
                if critical and kind not in _KNOWN_SUBPACKETS:
                    raise _Malformed(f"unknown critical subpacket {kind}")
                if kind == 16 and len(data) == 8:
                    if is_hashed or not issuer:
                        issuer = data.hex()
                elif kind == 33 and len(data) == 21 and data[0] == 4:
                    if is_hashed or not issuer_fpr:
                        issuer_fpr = data[1:].hex()
                elif kind == 32 and embedded is None:
                    embedded = data  # the hashed area is read first
                if not is_hashed:
                    continue  # only the issuer hints and the embedded signature count
                if kind == 2 and len(data) == 4:
                    created = int.from_bytes(data, "big")
                elif kind == 3 and len(data) == 4:
                    expires_after = int.from_bytes(data, "big")
                elif kind == 9 and len(data) == 4:
                    key_expires_after = int.from_bytes(data, "big")
                elif kind == 27 and data:
                    key_flags = data[0]
        if issuer_fpr and issuer and not issuer_fpr.endswith(issuer):
            raise _Malformed(f"issuer {issuer} and issuer fingerprint {issuer_fpr} disagree")
        if issuer_fpr and not issuer:
            issuer = issuer_fpr[-16:]
    else:
        raise _Malformed(f"signature packet version {version}")
    quick = r.take(2)
    if algo in (_RSA, _RSA_SIGN):
        values: tuple[int, ...] = (r.mpi(),)
    elif algo in (_DSA, _ECDSA, _EDDSA):
        values = (r.mpi(), r.mpi())
    else:
        raise _Malformed(f"signature algorithm {_ALGO_NAMES.get(algo, algo)}")
    if not r.done:
        raise _Malformed("trailing bytes in the signature packet")
    return _Sig(version, sig_type, algo, hash_algo, created, expires_after, key_expires_after,
                key_flags, issuer, issuer_fpr, trailer, quick, values, embedded)


def _check(sig: _Sig, key: _Key, signed: bytes) -> bool:
    """Whether ``sig`` by ``key`` verifies over ``signed``. Raises _Malformed for what
    cannot be checked (algorithms, a key of another algorithm)."""
    hash_cls = _HASHES.get(sig.hash_algo)
    if hash_cls is None:
        raise _Malformed(f"digest algorithm {_HASH_NAMES.get(sig.hash_algo, sig.hash_algo)}")
    if key.public is None:
        raise _Malformed(f"key algorithm {_ALGO_NAMES.get(key.algo, key.algo)}")
    h = hashes.Hash(hash_cls())
    h.update(signed)
    h.update(sig.trailer)
    digest = h.finalize()
    if digest[:2] != sig.quick:
        return False
    prehashed = Prehashed(hash_cls())
    public = key.public
    try:
        if sig.algo in (_RSA, _RSA_SIGN) and isinstance(public, rsa.RSAPublicKey):
            size = (public.key_size + 7) // 8
            s = sig.values[0]
            if s.bit_length() > 8 * size:
                return False
            public.verify(s.to_bytes(size, "big"), digest, padding.PKCS1v15(), prehashed)
        elif sig.algo == _EDDSA and isinstance(public, ed25519.Ed25519PublicKey):
            r_, s_ = sig.values
            if r_.bit_length() > 256 or s_.bit_length() > 256:
                return False
            public.verify(r_.to_bytes(32, "big") + s_.to_bytes(32, "big"), digest)
        elif sig.algo == _ECDSA and isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(encode_dss_signature(*sig.values), digest, ec.ECDSA(prehashed))
        elif sig.algo == _DSA and isinstance(public, dsa.DSAPublicKey):
            public.verify(encode_dss_signature(*sig.values), digest, prehashed)
        else:
            raise _Malformed(f"a {_ALGO_NAMES.get(sig.algo, sig.algo)} signature by a "
                             f"{_ALGO_NAMES.get(key.algo, key.algo)} key")
    except InvalidSignature:
        return False
    except ValueError as exc:  # e.g. a digest too short for the key
        raise _Malformed(str(exc)) from None
    return True


def _self_check(sig: _Sig, key: _Key, signed: bytes) -> bool:
    """Whether a signature in a certificate, made by ``key``, verifies (False for
    anything malformed or unsupported, which the certificate then lacks)."""
    if sig.issuers and not any(key.fingerprint.endswith(i) or key.keyid == i
                               for i in sig.issuers):
        return False
    try:
        return _check(sig, key, signed)
    except _Malformed:
        return False


# ---------------------------------------------------------------- certificates


def _dearmor(data: bytes, origin: str) -> list[bytes]:
    """The binary contents of each armored block of ``data`` (CRC checked)."""
    out: list[bytes] = []
    lines = data.decode("ascii", "replace").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not (line.startswith("-----BEGIN PGP ") and line.endswith("-----")):
            continue
        end = "-----END " + line[len("-----BEGIN "):]
        while i < len(lines) and lines[i].strip() and ":" in lines[i]:
            i += 1  # armor headers (Version: ...)
        body: list[str] = []
        crc: str | None = None
        while i < len(lines) and lines[i].strip() != end:
            text = lines[i].strip()
            i += 1
            if text.startswith("=") and len(text) == 5:
                crc = text[1:]
            elif text:
                body.append(text)
        if i == len(lines):
            raise _Malformed(f"unterminated armor block in {origin}")
        i += 1
        try:
            raw = base64.b64decode("".join(body), validate=True)
            if crc is not None and base64.b64decode(crc, validate=True) != \
                    _crc24(raw).to_bytes(3, "big"):
                raise _Malformed(f"armor checksum mismatch in {origin}")
        except binascii.Error:
            raise _Malformed(f"bad base64 in the armor of {origin}") from None
        out.append(raw)
    if not out:
        raise _Malformed(f"{origin} holds no armored OpenPGP block")
    return out


def _crc24(data: bytes) -> int:
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def _binary(data: bytes, origin: str) -> list[bytes]:
    if b"-----BEGIN PGP " in data:
        return _dearmor(data, origin)
    if data and data[0] & 0x80:
        return [data]
    raise _Malformed(f"{origin} is neither an armored nor a binary OpenPGP key")


def _certificate_keys(packets: list[tuple[int, bytes]], origin: str) -> list[_Key]:
    """The usable-or-not keys of one certificate (primary key first)."""
    primary = _parse_key(packets[0][1], origin)
    keys = [primary]
    if primary.public is None:
        primary.problem = f"unsupported key algorithm {_ALGO_NAMES.get(primary.algo, primary.algo)}"
    if primary.version != 4:
        return keys
    # group: signatures directly on the primary, per user id, per subkey
    current: tuple[str, bytes, _Key | None] = ("direct", b"", None)
    self_sigs: list[_Sig] = []
    revoked = False
    subkeys: list[tuple[_Key, list[_Sig]]] = []
    for tag, body in packets[1:]:
        if tag == _USERID:
            current = ("uid", b"\xb4" + struct.pack(">I", len(body)) + body, None)
        elif tag == _USERATTR:
            current = ("uid", b"\xd1" + struct.pack(">I", len(body)) + body, None)
        elif tag == _PUBSUBKEY:
            try:
                sub = _parse_key(body, origin)
            except _Malformed as exc:
                log.warning("%s: subkey skipped: %s", origin, exc)
                current = ("skip", b"", None)
                continue
            sub.primary = primary
            subkeys.append((sub, []))
            current = ("subkey", b"", sub)
        elif tag == _SIG:
            try:
                sig = _parse_sig(body)
            except _Malformed as exc:
                log.debug("%s: certificate signature skipped: %s", origin, exc)
                continue
            kind, extra, sub_key = current
            if kind == "direct" and sig.type == _KEY_REVOCATION:
                if _self_check(sig, primary, primary.hashed):
                    revoked = True
            elif (kind == "direct" and sig.type == _DIRECT_KEY) or \
                    (kind == "uid" and sig.type in _CERTIFICATIONS):
                if _self_check(sig, primary, primary.hashed + extra):
                    self_sigs.append(sig)
            elif kind == "subkey" and sub_key is not None:
                subkeys[-1][1].append(sig)
    if primary.problem:
        pass
    elif revoked:
        primary.problem = "revoked"
    elif not self_sigs:
        primary.problem = "no valid self-signature"
    else:
        newest = max(self_sigs, key=lambda s: s.created or 0)
        if newest.key_expires_after:
            primary.expires = primary.created + newest.key_expires_after
        primary.flags = next((s.key_flags for s in sorted(
            self_sigs, key=lambda s: -(s.created or 0)) if s.key_flags is not None), None)
        if primary.flags is not None and not primary.flags & _KEY_FLAG_SIGN:
            primary.problem = _NOT_SIGNING
    for sub, sigs in subkeys:
        _judge_subkey(primary, sub, sigs)
        keys.append(sub)
    return keys


def _judge_subkey(primary: _Key, sub: _Key, sigs: list[_Sig]) -> None:
    signed = primary.hashed + sub.hashed
    bindings = [s for s in sigs if s.type == _SUBKEY_BINDING and _self_check(s, primary, signed)]
    if sub.public is None:
        sub.problem = f"unsupported key algorithm {_ALGO_NAMES.get(sub.algo, sub.algo)}"
        return
    if any(s.type == _SUBKEY_REVOCATION and _self_check(s, primary, signed) for s in sigs):
        sub.problem = "revoked"
        return
    if primary.problem is not None and primary.problem != _NOT_SIGNING:
        sub.problem = f"its primary key is unusable ({primary.problem})"
        return
    if not bindings:
        sub.problem = "no valid binding signature"
        return
    binding = max(bindings, key=lambda s: s.created or 0)
    if binding.key_expires_after:
        sub.expires = sub.created + binding.key_expires_after
    sub.flags = binding.key_flags
    if sub.flags is None or not sub.flags & _KEY_FLAG_SIGN:
        sub.problem = "not a signing subkey (key flags)"
        return
    back: _Sig | None = None
    if binding.embedded is not None:
        try:
            back = _parse_sig(binding.embedded)
        except _Malformed:
            back = None
    if back is None or back.type != _PRIMARY_BINDING or not _self_check(back, sub, signed):
        sub.problem = "signing subkey without a valid back-signature (not cross-certified)"
        return
    if primary.expires is not None and (sub.expires is None or sub.expires > primary.expires):
        sub.expires = primary.expires


def _split_certificates(data: bytes, origin: str) -> list[list[tuple[int, bytes]]]:
    certs: list[list[tuple[int, bytes]]] = []
    for tag, body in _packets(data, MAX_KEY_PACKET):
        if tag == _PUBKEY:
            certs.append([(tag, body)])
        elif tag in (5, 7):
            raise _Malformed(f"{origin} holds a secret key")
        elif not certs:
            if tag in (10, 12):  # marker, trust
                continue
            raise _Malformed(f"{origin} does not start with a public key (packet tag {tag})")
        else:
            certs[-1].append((tag, body))
    return certs


# ---------------------------------------------------------------- keyring


class Keyring:
    """The OpenPGP keys an image (or the user) trusts to sign packages and
    repository metadata."""

    def __init__(self, keys: Iterable[_Key] = ()) -> None:
        self._keys: list[_Key] = list(keys)
        self._by_id: dict[str, list[_Key]] = {}
        for key in self._keys:
            self._by_id.setdefault(key.keyid, []).append(key)

    @classmethod
    def load(cls, keys: Iterable[tuple[str, bytes]]) -> Keyring:
        """Keys from ``(origin, contents)`` pairs: ASCII-armored or binary OpenPGP
        public keys, several per file allowed. Anything that is not (a secret key,
        broken armor, a malformed packet, a file with no key) raises
        :class:`RpmSignatureError` naming the origin. Keys that may not sign
        (revoked, without a valid self-signature or binding) are kept, and a
        signature by one is refused with the reason."""
        found: list[_Key] = []
        for origin, data in keys:
            if len(data) > MAX_KEY_FILE:
                raise RpmSignatureError(f"{origin}: key file larger than {MAX_KEY_FILE} bytes")
            try:
                count = 0
                for blob in _binary(data, origin):
                    for packets in _split_certificates(blob, origin):
                        cert = _certificate_keys(packets, origin)
                        for key in cert:
                            if key.problem:
                                log.info("%s: key %s cannot sign: %s", origin, key.keyid,
                                         key.problem)
                        found.extend(cert)
                        count += 1
                if not count:
                    raise _Malformed("no public key")
            except _Malformed as exc:
                msg = str(exc)
                raise RpmSignatureError(
                    msg if origin in msg else f"{origin}: not an OpenPGP public key ({msg})"
                ) from None
        return cls(found)

    def __len__(self) -> int:
        """The number of certificates (primary keys) held."""
        return sum(1 for k in self._keys if k.primary is None)

    def verify(self, data: bytes, signature: bytes, *, what: str,
               now: float | None = None) -> Signer:
        """The key of this keyring whose ``signature`` (one binary OpenPGP signature
        packet, as rpm stores in RSAHEADER/DSAHEADER) verifies over ``data``; else
        :class:`RpmSignatureError` naming ``what`` and the key id. ``now``: the
        time of the check (seconds since the epoch), for signature expiry."""
        if len(signature) > MAX_SIGNATURE + 6:
            raise RpmSignatureError(f"{what}: signature larger than {MAX_SIGNATURE} bytes")
        try:
            packets = list(_packets(signature, MAX_SIGNATURE))
            if len(packets) != 1 or packets[0][0] != _SIG:
                tags = ", ".join(str(t) for t, _ in packets) or "none"
                raise _Malformed(f"not one signature packet (packet tags {tags})")
            sig = _parse_sig(packets[0][1])
        except _Malformed as exc:
            raise RpmSignatureError(f"{what}: unusable signature: {exc}") from None
        return self._verify_sig(data, sig, what, time.time() if now is None else now)

    def verify_armored_detached(self, data: bytes, armored: bytes, *, what: str,
                                now: float | None = None) -> Signer:
        """Verify an ASCII-armored detached signature (``repomd.xml.asc``) over
        ``data``: the armor must hold exactly one signature packet, checked as by
        :meth:`verify`."""
        if len(armored) > 4 * MAX_SIGNATURE:
            raise RpmSignatureError(f"{what}: signature larger than {4 * MAX_SIGNATURE} bytes")
        try:
            blocks = _dearmor(armored, what)
        except _Malformed as exc:
            raise RpmSignatureError(f"{what}: unusable signature: {exc}") from None
        if len(blocks) != 1:
            raise RpmSignatureError(f"{what}: {len(blocks)} armored blocks, expected one")
        return self.verify(data, blocks[0], what=what, now=now)

    def _verify_sig(self, data: bytes, sig: _Sig, what: str, now: float) -> Signer:
        keyid = sig.issuer
        if not keyid:
            raise RpmSignatureError(f"{what}: the signature names no key")
        if sig.type not in (_BINARY, _TEXT):
            raise RpmSignatureError(f"{what}: signature of type {sig.type:#04x} by {keyid} "
                                    "is not a document signature", keyid=keyid)
        if sig.created is None:
            raise RpmSignatureError(f"{what}: signature by {keyid} has no creation time",
                                    keyid=keyid)
        candidates = [k for k in self._by_id.get(keyid, ())
                      if not sig.issuer_fpr or k.fingerprint == sig.issuer_fpr]
        if not candidates:
            raise RpmSignatureError(f"{what}: signed by unknown key {keyid}", keyid=keyid,
                                    hint="import the distribution's key (gpgkey= in the "
                                         "repository's configuration) or pass its key file")
        if sig.expires_after and sig.created + sig.expires_after <= now:
            raise RpmSignatureError(f"{what}: the signature by {keyid} expired", keyid=keyid)
        signed = data
        if sig.type == _TEXT:
            signed = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        problems: list[str] = []
        for key in candidates:
            problem = key.problem
            if problem is None and sig.created < key.created:
                problem = "the signature is older than the key"
            if problem is None and key.expires is not None and sig.created >= key.expires:
                problem = "the key had expired when it signed"
            if problem is not None:
                problems.append(f"{key.origin}: {problem}")
                continue
            try:
                ok = _check(sig, key, signed)
            except _Malformed as exc:
                raise RpmSignatureError(f"{what}: unsupported signature by {keyid}: {exc}",
                                        keyid=keyid) from None
            if ok:
                if key.expires is not None and key.expires <= now:
                    log.warning("%s: signed by %s (%s), which has expired since", what,
                                keyid, key.origin)
                if sig.hash_algo == 2:
                    log.info("%s: signature by %s uses SHA-1", what, keyid)
                return Signer(keyid, key.fingerprint, key.origin)
            problems.append(f"{key.origin}: bad signature")
        if all(p.endswith(": bad signature") for p in problems):
            raise RpmSignatureError(
                f"{what}: bad signature by key {keyid} (the data was changed after signing, "
                "or the signature is damaged)", keyid=keyid)
        raise RpmSignatureError(f"{what}: key {keyid} may not sign ({'; '.join(problems)})",
                                keyid=keyid)


# ---------------------------------------------------------------- rpm headers


def header_signature(signature_header: Header) -> bytes | None:
    """The OpenPGP signature over the main header in a package's signature header:
    RSAHEADER (268), else DSAHEADER (267); ``None`` when the package is unsigned.
    A tag that is not binary raises :class:`~suture.distro.rpm.header.HeaderError`."""
    for tag in (Tag.RSAHEADER, Tag.DSAHEADER):
        if tag in signature_header:
            return signature_header.binary(tag)
    return None


def signed_header_bytes(main_header: Header) -> bytes:
    """What RSAHEADER/DSAHEADER sign: the main header with its magic."""
    return MAGIC + main_header.blob
