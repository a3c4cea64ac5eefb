"""Key-based signatures in cosign's format, so ``cosign verify --key`` and ``cosign
verify-attestation --key`` accept what suture signs.

* A **key** is cosign's encrypted private key (``cosign generate-key-pair``: PEM
  ``ENCRYPTED SIGSTORE PRIVATE KEY`` around JSON naming an scrypt KDF and a NaCl
  secretbox over the PKCS#8 key) or an unencrypted PEM EC/Ed25519 private key.
* An **image signature** is the simple-signing payload (the image's repository and
  manifest digest) signed with ECDSA-SHA256 (DER, base64), carried as a layer of
  the image tagged ``sha256-<hex>.sig`` with the signature in the layer annotation
  ``dev.cosignproject.cosign/signature``.
* An **attestation** is a DSSE envelope (payload type ``application/vnd.in-toto+json``,
  signature over the pre-authentication encoding) as a layer of the image tagged
  ``sha256-<hex>.att``, annotated with its ``predicateType``.

Keyless signing (Fulcio certificates, Rekor entries) needs services this machine
cannot reach: not done. Verifiers are told to skip the transparency log
(``--insecure-ignore-tlog``), as for any signature made offline.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from suture.errors import NotFound, SutureError
from suture.oci.artifact import Blob, new_artifact
from suture.oci.image import BlobSource, Image, Origin
from suture.oci.model import Descriptor, canonical_json

SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE = "application/vnd.dsse.envelope.v1+json"
IN_TOTO = "application/vnd.in-toto+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
_ENCRYPTED = ("ENCRYPTED SIGSTORE PRIVATE KEY", "ENCRYPTED COSIGN PRIVATE KEY")


class SigningError(SutureError):
    """A key that cannot be read or used."""


@dataclass(frozen=True)
class SigningKey:
    """A private key and what signing with it needs."""

    key: Any  # cryptography private key (EC or Ed25519)

    def sign(self, data: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519

        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            return bytes(self.key.sign(data, ec.ECDSA(hashes.SHA256())))
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return bytes(self.key.sign(data))
        raise SigningError("the signing key is neither EC nor Ed25519")

    def public_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return bytes(self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def _pem_body(data: bytes) -> tuple[str, bytes] | None:
    text = data.decode("ascii", "replace")
    for label in _ENCRYPTED:
        begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
        if begin in text and end in text:
            body = text.split(begin, 1)[1].split(end, 1)[0]
            return label, base64.b64decode("".join(body.split()))
    return None


def load_signing_key(data: bytes, password: bytes | None) -> SigningKey:
    """The key in ``data``: cosign's encrypted key (``password`` decrypts it; cosign's
    ``COSIGN_PASSWORD``), else an unencrypted (or PEM-encrypted) PKCS#8/SEC1 key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    found = _pem_body(data)
    if found is not None:
        der = _decrypt_cosign(found[1], password or b"")
        try:
            key = serialization.load_der_private_key(der, password=None)
        except ValueError as exc:
            raise SigningError(f"the decrypted cosign key does not parse: {exc}") from None
    else:
        try:
            key = serialization.load_pem_private_key(data, password=password or None)
        except (ValueError, TypeError) as exc:
            raise SigningError(f"not a PEM private key or a cosign key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise SigningError("only EC (P-256) and Ed25519 keys sign cosign signatures")
    return SigningKey(key)


def _decrypt_cosign(blob: bytes, password: bytes) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
    from nacl.exceptions import CryptoError
    from nacl.secret import SecretBox

    try:
        doc = json.loads(blob)
        kdf, cipher = doc["kdf"], doc["cipher"]
        params = kdf["params"]
        salt = base64.b64decode(kdf["salt"])
        nonce = base64.b64decode(cipher["nonce"])
        ciphertext = base64.b64decode(doc["ciphertext"])
    except (ValueError, KeyError, TypeError):
        raise SigningError("the cosign key's envelope does not parse") from None
    if kdf.get("name") != "scrypt" or cipher.get("name") != "nacl/secretbox":
        raise SigningError(f"unknown cosign key encryption {kdf.get('name')}/"
                           f"{cipher.get('name')}")
    n, r, p = int(params["N"]), int(params["r"]), int(params["p"])
    if n > 1 << 20 or r > 32 or p > 16:
        raise SigningError("the cosign key's scrypt parameters are out of bounds")
    secret = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(password)
    try:
        return bytes(SecretBox(secret).decrypt(ciphertext, nonce))
    except CryptoError:
        raise SigningError("cannot decrypt the cosign key: wrong password",
                           hint="set COSIGN_PASSWORD") from None


# ---------------------------------------------------------------- payloads


def simple_signing_payload(repository: str, digest: str) -> bytes:
    """cosign's payload for the image ``digest`` of ``repository`` (``registry/repo``)."""
    doc = {"critical": {"identity": {"docker-reference": repository},
                        "image": {"docker-manifest-digest": digest},
                        "type": "cosign container image signature"},
           "optional": None}
    return json.dumps(doc, separators=(",", ":")).encode()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def dsse_envelope(statement: bytes, key: SigningKey) -> bytes:
    """A DSSE envelope of the in-toto ``statement``, signed with ``key``."""
    signature = key.sign(pae(IN_TOTO, statement))
    doc = {"payloadType": IN_TOTO, "payload": base64.b64encode(statement).decode(),
           "signatures": [{"keyid": "", "sig": base64.b64encode(signature).decode()}]}
    return json.dumps(doc, separators=(",", ":")).encode()


def signature_layer(repository: str, digest: str, key: SigningKey) -> Blob:
    payload = simple_signing_payload(repository, digest)
    sig = base64.b64encode(key.sign(payload)).decode()
    return Blob(SIMPLE_SIGNING, payload, {SIGNATURE_ANNOTATION: sig})


def attestation_layer(statement: bytes, predicate_type: str, key: SigningKey) -> Blob:
    return Blob(DSSE, dsse_envelope(statement, key),
                {SIGNATURE_ANNOTATION: "", "predicateType": predicate_type})


def tag_for(digest: str, suffix: str) -> str:
    """cosign's tag for ``digest``'s signatures (``sig``) or attestations (``att``)."""
    algorithm, _, value = digest.partition(":")
    return f"{algorithm}-{value}.{suffix}"


def signature_image(layers: Sequence[Blob], existing: Image | None = None) -> Image:
    """The image cosign reads signatures or attestations from: the layers of
    ``existing`` (the tag as it was: other signers' signatures are kept, their blobs read
    from where it is) then ``layers``; a layer already there (same digest and
    annotations) is not added twice."""
    kept = list(existing.manifest.layers) if existing is not None else []
    seen = {(d.digest, tuple(sorted(d.annotations.items()))) for d in kept}
    fresh = [b for b in layers
             if (Descriptor.of_bytes(b.media_type, b.data).digest,
                 tuple(sorted(b.annotations.items()))) not in seen]
    digests = [d.digest for d in kept] + [
        Descriptor.of_bytes(b.media_type, b.data).digest for b in fresh]
    config = canonical_json({
        "architecture": "", "os": "", "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"} for _ in digests],
        "rootfs": {"type": "layers", "diff_ids": digests}})
    image = new_artifact("", fresh, None, config=Blob(CONFIG_TYPE, config))
    if existing is None or not kept:
        return image
    from suture.oci.model import build_manifest

    manifest = build_manifest(image.manifest.config, [*kept, *image.manifest.layers])
    return Image(manifest, _Both(image.source, existing.source), config_bytes=config)


class _Both:
    """The new blobs, then the existing signature image's (from its registry or layout)."""

    def __init__(self, new: BlobSource, old: BlobSource) -> None:
        self.new, self.old = new, old

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        try:
            return self.new.open_blob(desc)
        except NotFound:
            return self.old.open_blob(desc)

    def read_manifest(self, desc: Descriptor) -> bytes:
        return self.new.read_manifest(desc)

    def origin(self) -> Origin | None:
        return self.old.origin()
