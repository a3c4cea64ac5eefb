"""apt Release files: OpenPGP verification and parsing.

The trust root of an apt repository is its ``InRelease`` (clearsigned) or its
``Release`` plus detached ``Release.gpg``. :func:`verify_release` checks the
signatures with Sequoia (``pysequoia``) against the keyrings it is given and
parses only the bytes the signatures cover; :func:`check_release` then refuses
a Release that has expired or that is not the suite that was asked for.

Signature policy, as apt's: at least one good signature by a trusted key is
needed; any cryptographically bad signature by a trusted key refuses the file
even when others are good; signatures by keys we do not hold are ignored when a
good one exists; signatures by expired or revoked keys count for nothing.

Sequoia on its own accepts a signature made before the signing key expired; we
additionally require the key (primary and signing subkey) to be alive at
``now``, as gpgv/apt do (``EXPKEYSIG`` is not a good signature for apt).
Sequoia checks the signature itself against the system clock. Its error
messages may carry a Rust backtrace unless ``RUST_BACKTRACE=0``; only their
first line is ever used here (and only in debug logs).
"""

from __future__ import annotations

import email.utils
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pysequoia
from pysequoia import packet as pgp_packet

from suture.distro.dpkg.control import parse_paragraphs
from suture.distro.dpkg.repoerrors import (
    BadSignature,
    ExpiredKey,
    KeyringError,
    MalformedRelease,
    NotSigned,
    ReleaseExpired,
    ReleaseMismatch,
    RevokedKey,
    UnknownKey,
)
from suture.errors import PackageDBError

log = logging.getLogger(__name__)

MAX_RELEASE = 32 << 20  # the biggest real InRelease (Ubuntu) is well under 1 MB

_BEGIN_SIGNED = "-----BEGIN PGP SIGNED MESSAGE-----"
_BEGIN_SIG = "-----BEGIN PGP SIGNATURE-----"
_END_SIG = "-----END PGP SIGNATURE-----"


# ---------------------------------------------------------------- keyrings


@dataclass(frozen=True)
class _KeyInfo:
    fingerprint: str  # of this (sub)key
    cert: str  # fingerprint of the certificate's primary key
    expires: datetime | None


@dataclass(frozen=True)
class Keyring:
    """A set of trusted OpenPGP certificates.

    Build it with :meth:`from_bytes` from keyring files as found on disk or in
    an image: binary keyrings (``debian-archive-keyring.gpg``, ``trusted.gpg.d/*.gpg``)
    and armored ``.asc`` files, each possibly holding several certificates.
    """

    certs: tuple[Any, ...] = ()  # pysequoia.Cert
    _keys: tuple[_KeyInfo, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_bytes(cls, *blobs: bytes, names: Sequence[str] = ()) -> Keyring:
        """Read certificates from keyring files (binary or armored).

        Empty blobs are skipped (apt leaves an empty ``trusted.gpg`` around).
        ``names`` label the blobs in error messages. A blob that is not OpenPGP
        raises :class:`KeyringError`.
        """
        certs: list[Any] = []
        for i, blob in enumerate(blobs):
            if not blob.strip():
                continue
            name = names[i] if i < len(names) else f"keyring #{i + 1}"
            try:
                found = pysequoia.Cert.split_bytes(blob)
            except Exception as exc:  # pysequoia raises plain exceptions
                raise KeyringError(f"{name}: not an OpenPGP keyring ({_first_line(exc)})") \
                    from None
            if not found:
                raise KeyringError(f"{name}: holds no OpenPGP certificate")
            certs.extend(found)
        return cls._of(certs)

    @classmethod
    def _of(cls, certs: Iterable[Any]) -> Keyring:
        unique: dict[str, Any] = {}
        for cert in certs:
            fpr = cert.fingerprint.lower()
            unique[fpr] = unique[fpr].merge(cert) if fpr in unique else cert
        keys: list[_KeyInfo] = []
        for fpr, cert in unique.items():
            keys.extend(_key_infos(fpr, cert))
        return cls(tuple(unique.values()), tuple(keys))

    def __len__(self) -> int:
        return len(self.certs)

    def __add__(self, other: Keyring) -> Keyring:
        return Keyring._of([*self.certs, *other.certs])

    @property
    def fingerprints(self) -> tuple[str, ...]:
        """Primary-key fingerprints (lowercase hex) of the certificates held."""
        return tuple(c.fingerprint.lower() for c in self.certs)

    def restrict(self, fingerprints: Iterable[str]) -> Keyring:
        """The certificates whose primary key or a subkey has one of ``fingerprints``.

        Fingerprints may carry apt's ``!`` suffix (exact subkey); it is ignored:
        the whole certificate is kept.
        """
        wanted = {f.strip().rstrip("!").replace(" ", "").lower() for f in fingerprints}
        certs = {k.cert for k in self._keys if k.fingerprint in wanted or k.cert in wanted}
        return Keyring._of(c for c in self.certs if c.fingerprint.lower() in certs)

    def find(self, issuer: str) -> _KeyInfo | None:
        """The (sub)key a signature's issuer fingerprint or 16-hex key id names."""
        issuer = issuer.lower()
        for key in self._keys:
            if key.fingerprint == issuer or (len(issuer) == 16
                                             and key.fingerprint.endswith(issuer)):
                return key
        return None

    def cert(self, fingerprint: str) -> Any:
        for cert in self.certs:
            if cert.fingerprint.lower() == fingerprint:
                return cert
        raise KeyError(fingerprint)


def _key_infos(fpr: str, cert: Any) -> list[_KeyInfo]:
    """The primary key and the subkeys of ``cert`` with their expiry times."""
    out = [_KeyInfo(fpr, fpr, cert.expiration)]
    sub: str | None = None
    created: datetime | None = None
    newest: datetime | None = None
    period: timedelta | None = None

    def flush() -> None:
        if sub is not None:
            expires = created + period if created is not None and period is not None else None
            out.append(_KeyInfo(sub, fpr, expires))

    for pkt in pgp_packet.PacketPile.from_bytes(bytes(cert)):
        tag = pkt.tag
        if tag in (pgp_packet.Tag.PublicSubkey, pgp_packet.Tag.SecretSubkey):
            flush()
            sub, created, newest, period = (pkt.fingerprint or "").lower(), pkt.key_created, \
                None, None
        elif tag in (pgp_packet.Tag.PublicKey, pgp_packet.Tag.SecretKey):
            flush()
            sub = None
        elif (sub is not None and tag == pgp_packet.Tag.Signature
              and pkt.signature_type == pgp_packet.SignatureType.SubkeyBinding):
            when = pkt.signature_created
            if newest is None or (when is not None and when >= newest):
                newest, period = when, pkt.key_validity_period
    flush()
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---------------------------------------------------------------- signatures


@dataclass(frozen=True)
class SignedText:
    """Bytes covered by good signatures, and the certificates that made them."""

    text: bytes
    signers: tuple[str, ...]  # primary-key fingerprints, lowercase hex


def _split_clearsigned(data: bytes, what: str) -> tuple[bytes, bytes]:
    """Return (cleartext, armored signature) of a clearsigned message, strictly.

    Only blank lines may surround the message; there must be exactly one signed
    message; lines of the text that start with ``-`` must be dash-escaped.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise NotSigned(f"{what}: not UTF-8 text", url=what) from None
    lines = text.split("\n")
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    i = 0
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i == len(lines) or lines[i] != _BEGIN_SIGNED:
        raise NotSigned(f"{what}: not a clearsigned message", url=what)
    i += 1
    while i < len(lines) and lines[i].strip():  # armor headers (Hash: SHA512)
        if ":" not in lines[i]:
            raise NotSigned(f"{what}: malformed armor header {lines[i][:40]!r}", url=what)
        i += 1
    i += 1
    body: list[str] = []
    while i < len(lines) and lines[i] != _BEGIN_SIG:
        line = lines[i]
        if line.startswith("- "):
            line = line[2:]
        elif line.startswith("-"):
            raise NotSigned(f"{what}: unescaped dash line {line[:40]!r} in signed text",
                            url=what)
        body.append(line)
        i += 1
    if i == len(lines):
        raise NotSigned(f"{what}: no signature block", url=what)
    start = i
    while i < len(lines) and lines[i] != _END_SIG:
        i += 1
    if i == len(lines):
        raise NotSigned(f"{what}: unterminated signature block", url=what)
    armored = "\n".join(lines[start:i + 1]) + "\n"
    if any(ln.strip() for ln in lines[i + 1:]):
        raise NotSigned(f"{what}: data after the signature", url=what)
    return "\n".join(body).encode(), armored.encode()


def _signature_packets(sig: bytes, what: str) -> list[Any]:
    try:
        pile = pgp_packet.PacketPile.from_bytes(sig)
    except Exception as exc:
        raise NotSigned(f"{what}: unreadable signature ({_first_line(exc)})", url=what) \
            from None
    pkts = [p for p in pile if p.tag == pgp_packet.Tag.Signature]
    if not pkts:
        raise NotSigned(f"{what}: no signature packet", url=what)
    return pkts


def _issuer(pkt: Any) -> str:
    return str(pkt.issuer_fingerprint or pkt.issuer_key_id or "").lower()


_WEAK = ("MD5", "SHA1", "RipeMD")


def _weak(pkt: Any) -> str | None:
    algo = pkt.hash_algorithm
    for name in _WEAK:
        if algo == getattr(pgp_packet.HashAlgorithm, name):
            return name
    return None


def _verify(
    data: bytes,
    keyring: Keyring,
    *,
    detached: bytes | None,
    what: str,
    now: datetime,
) -> SignedText:
    """Check the signatures over ``data`` (clearsigned, or with ``detached``)."""
    if detached is None:
        cleartext, armored = _split_clearsigned(data, what)
        packets = _signature_packets(armored, what)
    else:
        cleartext = data
        packets = _signature_packets(detached, what)
    certs = list(keyring.certs)

    def store(_ids: list[str]) -> list[Any]:
        return certs

    # valid (certificate fpr, signing key fpr) pairs Sequoia accepted
    valid: set[tuple[str, str]] = set()
    verified_text: bytes | None = None
    if certs:
        if detached is None:
            try:
                result = pysequoia.verify(bytes=data, store=store)
                verified_text = result.bytes
                valid = {(s.certificate.lower(), s.signing_key.lower())
                         for s in result.valid_sigs}
            except Exception as exc:
                log.debug("%s: sequoia: %s", what, _first_line(exc))
        else:
            for pkt in packets:
                try:
                    sig = pysequoia.Sig.from_bytes(bytes(pkt))
                    result = pysequoia.verify(bytes=data, store=store, signature=sig)
                    valid |= {(s.certificate.lower(), s.signing_key.lower())
                              for s in result.valid_sigs}
                except Exception as exc:
                    log.debug("%s: sequoia: %s", what, _first_line(exc))
            verified_text = data
    if valid and verified_text != cleartext:
        # Sequoia's idea of the signed text must be ours: parse nothing else.
        raise NotSigned(f"{what}: signed text is ambiguous", url=what)

    good: list[str] = []
    bad: list[str] = []
    expired: list[tuple[str, datetime | None]] = []
    revoked: list[str] = []
    unknown: list[str] = []
    for pkt in packets:
        issuer = _issuer(pkt)
        key = keyring.find(issuer) if issuer else None
        if key is None:
            unknown.append(issuer or "(no issuer)")
            continue
        cert = keyring.cert(key.cert)
        primary = keyring.find(key.cert)
        ok = any(k == key.fingerprint or k.endswith(issuer) for _, k in valid)
        dead_at = next((t for t in (primary.expires if primary else None, key.expires)
                        if t is not None and t <= now), None)
        if cert.is_revoked:
            revoked.append(key.cert)
        elif dead_at is not None:
            expired.append((key.cert, dead_at))
        elif ok:
            good.append(key.cert)
        elif (weak := _weak(pkt)) is not None:
            bad.append(f"{key.cert} (weak digest {weak})")
        else:
            bad.append(key.cert)
    issuers = tuple(_issuer(p) for p in packets)
    if bad:
        raise BadSignature(f"{what}: bad signature by {', '.join(bad)}", url=what,
                           issuers=issuers)
    if good:
        return SignedText(cleartext, tuple(dict.fromkeys(good)))
    if expired:
        when = expired[0][1]
        raise ExpiredKey(
            f"{what}: signed only by expired key{'s' if len(expired) > 1 else ''} "
            f"{', '.join(f for f, _ in expired)} (expired {when.isoformat() if when else '?'})",
            url=what, issuers=issuers, expired_at=when)
    if revoked:
        raise RevokedKey(f"{what}: signed only by revoked key(s) {', '.join(revoked)}",
                         url=what, issuers=issuers)
    raise UnknownKey(
        f"{what}: no trusted key for signature(s) by {', '.join(unknown)}", url=what,
        issuers=issuers,
        hint="add the repository's key to the keyrings (Signed-By or trusted.gpg.d)"
        if certs else "no keyring was given",
    )


def verify_clearsigned(data: bytes, keyring: Keyring, *, what: str = "InRelease",
                       now: datetime | None = None) -> SignedText:
    """Verify a clearsigned message (``InRelease``) and return the text it signs.

    Refuses (a :class:`~suture.distro.dpkg.repoerrors.SignatureError`) a message
    with anything but blank lines outside the signed part, a bad signature, no
    signature by a key of ``keyring``, or only signatures by expired/revoked keys.
    """
    if len(data) > MAX_RELEASE:
        raise NotSigned(f"{what}: larger than {MAX_RELEASE} bytes", url=what)
    return _verify(data, keyring, detached=None, what=what, now=now or datetime.now(UTC))


def verify_detached(data: bytes, signature: bytes, keyring: Keyring, *,
                    what: str = "Release", now: datetime | None = None) -> SignedText:
    """Verify ``signature`` (``Release.gpg``, armored or binary, one or more
    signatures) over ``data``; same refusals as :func:`verify_clearsigned`."""
    if len(data) > MAX_RELEASE:
        raise NotSigned(f"{what}: larger than {MAX_RELEASE} bytes", url=what)
    return _verify(data, keyring, detached=signature, what=what, now=now or datetime.now(UTC))


# ---------------------------------------------------------------- Release


@dataclass(frozen=True)
class ReleaseFile:
    """One file listed in a Release's ``SHA256`` field (path relative to the suite)."""

    path: str
    size: int
    sha256: str  # hex


@dataclass(frozen=True)
class Release:
    """A parsed Release file. Field names of ``fields`` are lowercase.

    ``signers`` are the certificates whose good signatures covered it (empty
    when it was parsed without verification, which only tests should do).
    """

    origin: str
    label: str
    suite: str
    codename: str
    version: str
    date: datetime | None
    valid_until: datetime | None
    architectures: tuple[str, ...]
    components: tuple[str, ...]
    acquire_by_hash: bool
    files: Mapping[str, ReleaseFile] = field(compare=False, repr=False)
    fields: Mapping[str, str] = field(compare=False, repr=False)
    signers: tuple[str, ...] = ()

    def matches(self, asked: str) -> bool:
        """Whether ``asked`` (a sources.list suite) names this Release.

        It does when it equals the Suite or Codename, also after dropping what
        follows its last ``/`` (``buster/updates`` names Codename ``buster``);
        a flat repository's ``./`` matches anything.
        """
        names = {self.suite, self.codename} - {""}
        if asked in names:
            return True
        trimmed = asked.rsplit("/", 1)[0] if "/" in asked else asked
        return trimmed in ("", ".") or trimmed in names


def parse_release_date(value: str) -> datetime:
    """An RFC 2822 date as apt writes it (``Sat, 11 Jul 2026 10:16:37 UTC``), in UTC."""
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"not an RFC 2822 date: {value!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


_HASH_LINE = re.compile(r"^([0-9a-fA-F]{64})\s+(\d+)\s+(\S+)$")


def parse_release(data: bytes, *, what: str = "Release") -> Release:
    """Parse the text of a Release (the signed part of an InRelease).

    Pure and unverified: give it only what :func:`verify_clearsigned` or
    :func:`verify_detached` returned. The text must be a single deb822
    paragraph; ``SHA256`` entries become :attr:`Release.files` (other hash
    fields are kept raw in ``fields`` but never used). Malformed input raises
    :class:`~suture.distro.dpkg.repoerrors.MalformedRelease`.
    """
    try:
        text = data.decode("utf-8")
        paragraphs = parse_paragraphs(text.replace("\r\n", "\n").strip("\n") + "\n",
                                      source=what)
    except UnicodeDecodeError:
        raise MalformedRelease(f"{what}: not UTF-8", url=what) from None
    except PackageDBError as exc:
        raise MalformedRelease(str(exc), url=what) from None
    if len(paragraphs) != 1:
        raise MalformedRelease(f"{what}: {len(paragraphs)} paragraphs, want one", url=what)
    fields = {name.lower(): value for name, value in paragraphs[0].items()}
    if not fields:
        raise MalformedRelease(f"{what}: empty", url=what)

    files: dict[str, ReleaseFile] = {}
    for entry in fields.get("sha256", "").split("\n"):
        entry = entry.strip()
        if not entry:
            continue
        m = _HASH_LINE.match(entry)
        if not m:
            raise MalformedRelease(f"{what}: malformed SHA256 line {entry[:80]!r}", url=what)
        path = m.group(3)
        if path.startswith("/") or ".." in path.split("/"):
            raise MalformedRelease(f"{what}: unsafe path {path!r}", url=what)
        files[path] = ReleaseFile(path, int(m.group(2)), m.group(1).lower())

    def date(name: str) -> datetime | None:
        if name.lower() not in fields:
            return None
        try:
            return parse_release_date(fields[name.lower()])
        except ValueError as exc:
            raise MalformedRelease(f"{what}: {name}: {exc}", url=what) from None

    return Release(
        origin=fields.get("origin", ""),
        label=fields.get("label", ""),
        suite=fields.get("suite", ""),
        codename=fields.get("codename", ""),
        version=fields.get("version", ""),
        date=date("Date"),
        valid_until=date("Valid-Until"),
        architectures=tuple(fields.get("architectures", "").split()),
        components=tuple(fields.get("components", "").split()),
        acquire_by_hash=fields.get("acquire-by-hash", "").lower() == "yes",
        files=files,
        fields=fields,
    )


def unverified_release(inrelease: bytes, *, what: str = "InRelease") -> Release:
    """The Release an ``InRelease`` carries, its signature *not* checked.

    Only for choosing what to download ahead of time into the content-addressed cache
    (see :class:`suture.patch.dpkg.IndexPrefetch`): nothing it names is trusted until
    :func:`verify_release` of the same bytes lists the same SHA-256. Raises like
    :func:`parse_release`, or :class:`~suture.distro.dpkg.repoerrors.NotSigned` for a
    message that is not clearsigned.
    """
    if len(inrelease) > MAX_RELEASE:
        raise NotSigned(f"{what}: larger than {MAX_RELEASE} bytes", url=what)
    text, _signature = _split_clearsigned(inrelease, what)
    return parse_release(text, what=what)


def verify_release(
    keyring: Keyring,
    *,
    inrelease: bytes | None = None,
    release: bytes | None = None,
    release_gpg: bytes | None = None,
    what: str = "InRelease",
    now: datetime | None = None,
) -> Release:
    """Verify and parse an ``InRelease``, or a ``Release`` with its ``Release.gpg``.

    Exactly one form must be given. The returned :class:`Release` is parsed from
    the signed bytes only and carries the signers. Signature refusals are
    :class:`~suture.distro.dpkg.repoerrors.SignatureError` subclasses. This does
    not check Valid-Until or the suite name: see :func:`check_release`.
    """
    if inrelease is not None and (release is None and release_gpg is None):
        signed = verify_clearsigned(inrelease, keyring, what=what, now=now)
    elif inrelease is None and release is not None and release_gpg is not None:
        signed = verify_detached(release, release_gpg, keyring, what=what, now=now)
    elif inrelease is None and release is not None:
        raise NotSigned(f"{what}: Release has no Release.gpg", url=what)
    else:
        raise ValueError("give either inrelease, or release and release_gpg")
    return replace(parse_release(signed.text, what=what), signers=signed.signers)


def check_release(
    release: Release,
    *,
    suite: str | None,
    what: str = "InRelease",
    now: datetime | None = None,
    check_valid_until: bool = True,
) -> Release:
    """Refuse a Release that is past its ``Valid-Until`` or is not ``suite``.

    ``check_valid_until=False`` accepts an expired Release (apt's
    ``Check-Valid-Until=false``, for archived snapshots). ``suite=None`` skips
    the name check. Returns ``release`` unchanged when it passes.
    """
    now = now or datetime.now(UTC)
    if check_valid_until and release.valid_until is not None and release.valid_until < now:
        raise ReleaseExpired(what, release.valid_until, now)
    if suite is not None and not release.matches(suite):
        raise ReleaseMismatch(what, suite, release.suite, release.codename)
    return release
