"""``--sign-key``: cosign's key-based signature format, judged by cosign itself.

Keys come from ``cosign generate-key-pair`` (encrypted: scrypt + NaCl secretbox) or are
unencrypted PEM EC keys. The patched image, each attached artifact and the documents
(as DSSE attestations) are signed; ``cosign verify --key`` and ``cosign
verify-attestation --key`` must accept them (without a transparency log: nothing
here can reach Rekor). A signature cosign made before is kept beside suture's.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from suture.sign import load_signing_key
from tests.fixtures.peers import peer
from tests.fixtures.registry import RegistryServer
from tests.fixtures.supplychain import ChainScene, validate_provenance

pytestmark = pytest.mark.tools

PASSWORD = "correct horse"
COSIGN_FLAGS = ("--insecure-ignore-tlog=true", "--allow-insecure-registry",
                "--allow-http-registry")


def _cosign(*args: str, cwd: Path | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
    home = cwd or Path(tempfile.gettempdir()) / "suture-test-cosign-home"
    home.mkdir(exist_ok=True)  # cosign keeps its TUF cache in $HOME/.sigstore
    env = {**os.environ, "COSIGN_PASSWORD": PASSWORD, "COSIGN_YES": "true",
           "HOME": str(home)}
    proc = subprocess.run([str(peer("cosign")), *args], capture_output=True, text=True,
                          timeout=180, env=env, cwd=cwd)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture
def cosign_keys(tmp_path: Path) -> tuple[Path, Path]:
    where = tmp_path / "keys"
    where.mkdir()
    _cosign("generate-key-pair", cwd=where)
    return where / "cosign.key", where / "cosign.pub"


def _push_and_patch(scene: ChainScene, host: str, key: Path, *extra: str,
                    password: str | None = PASSWORD) -> str:
    ref = f"docker://{host}/app:v1"
    proc = subprocess.run([sys.executable, "-m", "suture", "copy", scene.source, ref],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    env.pop("COSIGN_PASSWORD", None)
    if password is not None:
        env["COSIGN_PASSWORD"] = password
    cmd = [sys.executable, "-m", "suture", "patch", "-i", ref, "-t",
           f"docker://{host}/app:v1-patched", "--cache-dir", str(scene.tmp / "cache"),
           "--no-host-keyrings", *scene.archive.mirror_args(), "--progress", "quiet",
           "--attach", "--sbom", "cyclonedx", "--sign-key", str(key), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [wrote] = [line for line in proc.stdout.splitlines() if line.startswith("wrote ")]
    return wrote.split()[-1]


def _payloads(proc: subprocess.CompletedProcess[str]) -> list[Any]:
    """What cosign printed: a JSON array of verified payloads (verify) or one envelope
    per line (verify-attestation)."""
    out: list[Any] = []
    for line in proc.stdout.splitlines():
        if line.startswith("["):
            out += json.loads(line)
        elif line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_cosign_verifies_signature_and_attestations(
        chain_scene: ChainScene, registry: RegistryServer, cosign_keys: tuple[Path, Path],
        tmp_path: Path) -> None:
    key, pub = cosign_keys
    host = registry.host
    digest = _push_and_patch(chain_scene, host, key)
    image = f"{host}/app@{digest}"
    verified = _payloads(_cosign("verify", "--key", str(pub), *COSIGN_FLAGS, image))
    assert [p["critical"]["image"]["docker-manifest-digest"] for p in verified] == [digest]
    assert verified[0]["critical"]["identity"]["docker-reference"] == f"{host}/app"

    proc = _cosign("verify-attestation", "--key", str(pub), "--type", "slsaprovenance1",
                   *COSIGN_FLAGS, image)
    [envelope] = _payloads(proc)


    statement = json.loads(base64.b64decode(envelope["payload"]))
    validate_provenance(statement)
    assert statement["subject"][0]["digest"] == {"sha256": digest.split(":")[1]}
    proc = _cosign("verify-attestation", "--key", str(pub), "--type", "cyclonedx",
                   *COSIGN_FLAGS, image)
    [envelope] = _payloads(proc)
    bom = json.loads(base64.b64decode(envelope["payload"]))["predicate"]
    assert {c["name"]: c["version"] for c in bom["components"]
            if c["type"] == "library"} == {"a": "2.0-1", "b": "1.0-1", "c": "2.0-1"}

    proc = _cosign("verify-attestation", "--key", str(pub), "--type", "openvex",
                   *COSIGN_FLAGS, image)
    [envelope] = _payloads(proc)
    vex = json.loads(base64.b64decode(envelope["payload"]))["predicate"]
    assert vex["@context"] == "https://openvex.dev/ns/v0.2.0"

    # Each attached artifact is signed too.
    tree = subprocess.run([str(peer("oras")), "discover", "--plain-http", "--format", "json",
                           "--depth", "1", image], capture_output=True, text=True, check=True)
    doc = json.loads(tree.stdout)
    attached = [r["digest"] for r in doc.get("referrers") or doc["manifests"]]
    assert len(attached) == 3
    for artifact in attached:
        _cosign("verify", "--key", str(pub), *COSIGN_FLAGS, f"{host}/app@{artifact}")

    # Another key does not verify.
    other = tmp_path / "other"
    other.mkdir()
    _cosign("generate-key-pair", cwd=other)
    proc = _cosign("verify", "--key", str(other / "cosign.pub"), *COSIGN_FLAGS, image,
                   check=False)
    assert proc.returncode != 0


def test_plain_pem_key_and_an_earlier_cosign_signature_kept(
        chain_scene: ChainScene, registry: RegistryServer, cosign_keys: tuple[Path, Path],
        tmp_path: Path) -> None:
    """cosign signs the patched image first (its key); suture then signs it again with an
    unencrypted PEM EC key: both signatures verify, each with its own key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    cosign_key, cosign_pub = cosign_keys
    host = registry.host
    pem_key = tmp_path / "ec.pem"
    private = ec.generate_private_key(ec.SECP256R1())
    pem_key.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    pem_pub = tmp_path / "ec.pub"
    pem_pub.write_bytes(load_signing_key(pem_key.read_bytes(), None).public_pem())
    digest = _push_and_patch(chain_scene, host, cosign_key)  # the image exists; signed once
    image = f"{host}/app@{digest}"
    _cosign("sign", "--key", str(cosign_key), "--tlog-upload=false", *COSIGN_FLAGS[1:], image)
    _push_and_patch(chain_scene, host, pem_key, password=None)
    _cosign("verify", "--key", str(cosign_pub), *COSIGN_FLAGS, image)
    _cosign("verify", "--key", str(pem_pub), *COSIGN_FLAGS, image)


def test_wrong_password_is_one_line_and_nothing_is_signed(
        chain_scene: ChainScene, cosign_keys: tuple[Path, Path], tmp_path: Path) -> None:
    key, _pub = cosign_keys
    dest = tmp_path / "out"
    env = {**os.environ, "COSIGN_PASSWORD": "wrong"}
    proc = subprocess.run([sys.executable, "-m", "suture", "patch", "-i", chain_scene.source,
                           "-t", f"oci:{dest}:v1-patched", "--cache-dir",
                           str(chain_scene.tmp / "cache"), "--no-host-keyrings",
                           *chain_scene.archive.mirror_args(), "--progress", "quiet",
                           "--sign-key", str(key)],
                          capture_output=True, text=True, timeout=300, env=env,
                          cwd=chain_scene.tmp)  # --sbom spdx writes sbom-*.json here
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "suture: error: cannot decrypt the cosign key: wrong password "
        "(hint: set COSIGN_PASSWORD)")
    assert not dest.exists()


def test_source_signature_copied_and_spdx_attested(
        chain_scene: ChainScene, registry: RegistryServer, cosign_keys: tuple[Path, Path]
        ) -> None:
    """cosign signs the source; a patch into another repository with
    --copy-source-referrers brings that signature along (cosign verifies the source
    digest in the target repository), and an SPDX SBOM is attested as spdxjson."""
    key, pub = cosign_keys
    host = registry.host
    ref = f"docker://{host}/app:v1"
    proc = subprocess.run([sys.executable, "-m", "suture", "copy", chain_scene.source, ref],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    source_digest = proc.stdout.split()[-1]
    _cosign("sign", "--key", str(key), "--tlog-upload=false", *COSIGN_FLAGS[1:],
            f"{host}/app@{source_digest}")
    env = {**os.environ, "COSIGN_PASSWORD": PASSWORD}
    proc = subprocess.run([sys.executable, "-m", "suture", "patch", "-i", ref, "-t",
                           f"docker://{host}/hardened/app:v1", "--cache-dir",
                           str(chain_scene.tmp / "cache"), "--no-host-keyrings",
                           *chain_scene.archive.mirror_args(), "--progress", "quiet",
                           "--sbom", "spdx", "--attach", "--copy-source-referrers",
                           "--sign-key", str(key)],
                          capture_output=True, text=True, timeout=300, env=env,
                          cwd=chain_scene.tmp)  # --sbom spdx writes sbom-*.json here
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [wrote] = [line for line in proc.stdout.splitlines() if line.startswith("wrote ")]
    digest = wrote.split()[-1]
    _cosign("verify", "--key", str(pub), *COSIGN_FLAGS, f"{host}/hardened/app@{source_digest}")
    proc = _cosign("verify-attestation", "--key", str(pub), "--type", "spdxjson",
                   *COSIGN_FLAGS, f"{host}/hardened/app@{digest}")


    [envelope] = _payloads(proc)
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["predicate"]["spdxVersion"] == "SPDX-2.3"
    assert statement["subject"][0]["digest"] == {"sha256": digest.split(":")[1]}


def test_layout_signatures_accumulate(chain_scene: ChainScene, cosign_keys: tuple[Path, Path],
                                      tmp_path: Path) -> None:
    """In an OCI layout the ``.sig`` image is a tag of the layout; a second signer's run
    adds its signature beside the first's (read back and checked with each public key)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from suture.oci.image import Image
    from suture.transports import open_artifact

    key, pub = cosign_keys
    pem_key = tmp_path / "ec.pem"
    pem_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    layout = tmp_path / "out"
    for signer, password in ((key, PASSWORD), (pem_key, None)):
        env = {k: v for k, v in os.environ.items() if k != "COSIGN_PASSWORD"}
        if password:
            env["COSIGN_PASSWORD"] = password
        proc = subprocess.run([sys.executable, "-m", "suture", "patch", "-i",
                               chain_scene.source, "-t", f"oci:{layout}:v1-patched",
                               "--cache-dir", str(chain_scene.tmp / "cache"),
                               "--no-host-keyrings", *chain_scene.archive.mirror_args(),
                               "--progress", "quiet", "--sign-key", str(signer)],
                              capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    image = open_artifact(f"oci:{layout}:v1-patched")
    sig = open_artifact(f"oci:{layout}:sha256-{image.digest.split(':')[1]}.sig")
    assert isinstance(sig, Image) and len(sig.manifest.layers) == 2
    publics = [serialization.load_pem_public_key(pub.read_bytes()),
               load_signing_key(pem_key.read_bytes(), None).key.public_key()]
    for layer, public in zip(sig.manifest.layers, publics, strict=True):
        with sig.source.open_blob(layer) as stream:
            payload = stream.read()
        assert json.loads(payload)["critical"]["image"]["docker-manifest-digest"] == \
            image.digest
        signature = base64.b64decode(layer.annotations["dev.cosignproject.cosign/signature"])
        public.verify(signature, payload, ec.ECDSA(hashes.SHA256()))


def test_keys_suture_refuses(cosign_keys: tuple[Path, Path], tmp_path: Path) -> None:
    """An RSA key, a cosign key whose scrypt cost is out of bounds, and a damaged
    envelope are refused with a SigningError, never a traceback."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from suture.sign import SigningError

    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    with pytest.raises(SigningError, match="EC"):
        load_signing_key(rsa_pem, None)
    key, _pub = cosign_keys
    text = key.read_text()
    label = text.splitlines()[0].removeprefix("-----BEGIN ").removesuffix("-----")
    body = json.loads(base64.b64decode("".join(text.splitlines()[1:-1])))
    assert body["kdf"]["name"] == "scrypt" and body["cipher"]["name"] == "nacl/secretbox"

    def pem(doc: object) -> bytes:
        data = base64.b64encode(json.dumps(doc).encode()).decode()
        return f"-----BEGIN {label}-----\n{data}\n-----END {label}-----\n".encode()

    costly = json.loads(json.dumps(body))
    costly["kdf"]["params"]["N"] = 1 << 30
    with pytest.raises(SigningError, match="out of bounds"):
        load_signing_key(pem(costly), PASSWORD.encode())
    with pytest.raises(SigningError, match="does not parse"):
        load_signing_key(pem({"kdf": {}}), PASSWORD.encode())
    assert load_signing_key(pem(body), PASSWORD.encode()).public_pem() == _pub.read_bytes()
