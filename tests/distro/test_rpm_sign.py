"""rpm signature checks against real gpg, gpg1, gpgv, rpmsign and rpmkeys.

Every signature here is made by gpg (v4) or gpg1 (v3); every verdict of ours is
compared with gpgv's on the same key, data and signature (it must accept exactly
what we accept), and the package cases with ``rpmkeys --checksig``.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from suture.distro.rpm.header import Header, Tag, pad8, parse_header
from suture.distro.rpm.sign import (
    Keyring,
    RpmSignatureError,
    Signer,
    header_signature,
    signed_header_bytes,
)
from tests.fixtures.rpmbuild import GpgKey, build_rpm, have_rpm_tools, make_gpg_key, sign_rpms

pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("gpg", "gpg1", "gpgv")),
                                reason="gpg, gpg1 or gpgv missing")

DATA = b"<?xml version='1.0'?>\n<repomd>suture signature test data</repomd>\n" * 20


def _env(home: Path) -> dict[str, str]:
    return {"GNUPGHOME": str(home), "PATH": "/usr/bin:/bin", "LC_ALL": "C"}


def _run(args: list[str], home: Path, data: bytes | None = None) -> bytes:
    return subprocess.run(args, env=_env(home), input=data, check=True,
                          capture_output=True).stdout


def _sign(key: GpgKey, data: bytes, *args: str, v3: bool = False) -> bytes:
    tool = "gpg1" if v3 else key.gpg
    extra = ["--force-v3-sigs"] if v3 else [] if tool == "gpg1" else [
        "--pinentry-mode", "loopback", "--passphrase", ""]
    return _run([tool, "--batch", "--yes", *extra, "-u", key.uid, *args, "--detach-sign"],
                key.home, data)


def _export(key: GpgKey) -> bytes:
    return _run([key.gpg, "--batch", "--export", key.uid], key.home)


@dataclass
class Signed:
    key: GpgKey
    armored: bytes  # the public key as the image would hold it
    binary: bytes  # the same exported binary, for gpgv
    data: bytes
    sig: bytes


def _strip_header(packet: bytes) -> tuple[int, bytes]:
    """(header length, body) of one packet as gpg writes it (old or new format)."""
    first = packet[0]
    if first & 0x40:
        o = packet[1]
        n = 2 if o < 192 else 3 if o < 224 else 6
    else:
        n = 1 + (1 << (first & 3))
    return n, packet[n:]


def _gpgv(tmp: Path, keyring: bytes, data: bytes, sig: bytes) -> bool:
    """Whether gpgv calls the signature good (its exit status)."""
    return _gpgv_status(tmp, keyring, data, sig)[0]


def _gpgv_status(tmp: Path, keyring: bytes, data: bytes, sig: bytes) -> tuple[bool, str]:
    """gpgv's exit status (True: 0) and its status lines."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "home").mkdir(exist_ok=True, mode=0o700)
    (tmp / "keyring.gpg").write_bytes(keyring)
    (tmp / "data").write_bytes(data)
    (tmp / "data.sig").write_bytes(sig)
    done = subprocess.run(["gpgv", "--status-fd", "1", "--keyring", str(tmp / "keyring.gpg"),
                           str(tmp / "data.sig"), str(tmp / "data")],
                          env=_env(tmp / "home"), capture_output=True, text=True)
    return done.returncode == 0, done.stdout


def _quick_check_offset(sig: bytes) -> int:
    """Where the left 16 bits of the digest sit in a signature packet."""
    n, body = _strip_header(sig)
    if body[0] == 3:
        return n + 17
    at = n + 6 + int.from_bytes(body[4:6], "big")
    return at + 2 + int.from_bytes(sig[at:at + 2], "big")


def _ours(keyring: Keyring, data: bytes, sig: bytes) -> Signer | RpmSignatureError:
    try:
        return keyring.verify(data, sig, what="test data")
    except RpmSignatureError as exc:
        return exc


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, GpgKey]:
    base = tmp_path_factory.mktemp("gpg")
    out = {
        "rsa2048": make_gpg_key(base / "rsa2048", "rsa2048@suture.invalid"),
        "rsa4096": make_gpg_key(base / "rsa4096", "rsa4096@suture.invalid", algo="rsa4096"),
        "ed25519": make_gpg_key(base / "ed25519", "ed25519@suture.invalid", algo="ed25519"),
        "nistp256": make_gpg_key(base / "p256", "p256@suture.invalid", algo="nistp256"),
        "nistp384": make_gpg_key(base / "p384", "p384@suture.invalid", algo="nistp384"),
        "dsa2048": make_gpg_key(base / "dsa", "dsa@suture.invalid", algo="dsa2048"),
        "gpg1": make_gpg_key(base / "gpg1", "gpg1@suture.invalid", gpg1=True),
        "other": make_gpg_key(base / "other", "other@suture.invalid"),
    }
    sub = make_gpg_key(base / "subkey", "subkey@suture.invalid")
    _run(["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "",
          "--quick-add-key", sub.fingerprint, "rsa2048", "sign", "never"], sub.home)
    armored = _run(["gpg", "--batch", "--armor", "--export", sub.uid], sub.home)
    out["subkey"] = GpgKey(sub.home, sub.uid, sub.fingerprint, armored)
    return out


CASES = {
    # name: (key, gpg arguments, v3)
    "rsa2048-sha256": ("rsa2048", ("--digest-algo", "sha256"), False),
    "rsa2048-sha512": ("rsa2048", ("--digest-algo", "sha512"), False),
    "rsa2048-sha1": ("rsa2048", ("--digest-algo", "sha1"), False),
    "rsa2048-sha224": ("rsa2048", ("--digest-algo", "sha224"), False),
    "rsa4096-sha256": ("rsa4096", ("--digest-algo", "sha256"), False),
    "rsa4096-sha512": ("rsa4096", ("--digest-algo", "sha512"), False),
    "rsa4096-sha384": ("rsa4096", ("--digest-algo", "sha384"), False),
    "v3-rsa-sha256": ("gpg1", ("--digest-algo", "sha256"), True),
    "v3-rsa-sha512": ("gpg1", ("--digest-algo", "sha512"), True),
    "v4-gpg1-sha256": ("gpg1", ("--digest-algo", "sha256"), False),
    "ed25519": ("ed25519", (), False),
    "ecdsa-p256": ("nistp256", (), False),
    "ecdsa-p384": ("nistp384", (), False),
    "dsa2048": ("dsa2048", ("--digest-algo", "sha256"), False),
    "subkey": ("subkey", (), False),
}


@pytest.fixture(scope="module")
def signed(keys: dict[str, GpgKey]) -> dict[str, Signed]:
    out = {}
    for name, (key_name, args, v3) in CASES.items():
        key = keys[key_name]
        if v3:
            _run(["gpg1", "--batch", "--yes", "--force-v3-sigs", "-u", key.uid, *args,
                  "--detach-sign", "-o", str(key.home / "v3.sig"), "-"], key.home, DATA)
            sig = (key.home / "v3.sig").read_bytes()
        else:
            sig = _sign(key, DATA, *args)
        out[name] = Signed(key, key.armored, _export(key), DATA, sig)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_good_signature_agrees_with_gpgv(name: str, signed: dict[str, Signed],
                                         tmp_path: Path) -> None:
    case = signed[name]
    keyring = Keyring.load([("/etc/pki/rpm-gpg/RPM-GPG-KEY-test", case.armored)])
    assert len(keyring) == 1
    result = _ours(keyring, case.data, case.sig)
    assert isinstance(result, Signer), result
    assert _gpgv(tmp_path, case.binary, case.data, case.sig)
    assert result.origin == "/etc/pki/rpm-gpg/RPM-GPG-KEY-test"
    if name == "subkey":
        assert result.fingerprint != case.key.fingerprint.lower()
        listing = _run(["gpg", "--batch", "--with-colons", "--list-keys", case.key.uid],
                       case.key.home).decode()
        subs = [ln.split(":")[4].lower() for ln in listing.splitlines() if ln.startswith("sub:")]
        assert result.keyid in subs
    else:
        assert result.fingerprint == case.key.fingerprint.lower()
        assert result.keyid == case.key.keyid
    # the version gpg wrote is the one the case is about
    _, body = _strip_header(case.sig)
    assert body[0] == (3 if name.startswith("v3") else 4)
    # the binary export reads the same
    assert Keyring.load([("bin", case.binary)]).verify(case.data, case.sig, what="x") == \
        Signer(result.keyid, result.fingerprint, "bin")

    # one byte of the data changed: both refuse
    tampered = bytearray(case.data)
    tampered[len(tampered) // 2] ^= 0x01
    bad = _ours(keyring, bytes(tampered), case.sig)
    assert isinstance(bad, RpmSignatureError)
    assert "bad signature" in str(bad) and result.keyid in str(bad) and "test data" in str(bad)
    assert not _gpgv(tmp_path / "tampered", case.binary, bytes(tampered), case.sig)


@pytest.mark.parametrize("name", ["rsa2048-sha256", "v3-rsa-sha256", "ed25519", "ecdsa-p256",
                                  "subkey"])
def test_tampered_signature_refused_as_gpgv_does(name: str, signed: dict[str, Signed],
                                                 tmp_path: Path) -> None:
    case = signed[name]
    keyring = Keyring.load([("k", case.armored)])
    n, body = _strip_header(case.sig)
    variants: dict[str, bytes] = {}
    if body[0] == 4:
        # a byte of the hashed subpackets (in the creation time: subpacket 2 comes
        # first in gpg's signatures, or the issuer fingerprint)
        hashed_start = n + 6
        variants["hashed subpacket"] = _flip(case.sig, hashed_start + 4)
        variants["signature type"] = _flip(case.sig, n + 1)
    else:
        variants["creation time"] = _flip(case.sig, n + 3 + 3)
    variants["signature value"] = _flip(case.sig, len(case.sig) - 3)
    variants["trailing garbage"] = case.sig + b"\x00"
    for what, sig in variants.items():
        ours = _ours(keyring, case.data, sig)
        assert isinstance(ours, RpmSignatureError), what
        assert not _gpgv(tmp_path / what.replace(" ", "-"), case.binary, case.data, sig), what
    # A wrong quick check (the digest's left 16 bits, which the signature does not
    # cover) is refused, as rpm refuses it (test_package_header_signature); gpgv
    # ignores these two bytes, so here it is the one that accepts.
    wrong = _flip(case.sig, _quick_check_offset(case.sig))
    err = _ours(keyring, case.data, wrong)
    assert isinstance(err, RpmSignatureError) and "bad signature" in str(err)
    assert _gpgv(tmp_path / "quick", case.binary, case.data, wrong)
    # A second signature packet after the first: rpm's tag holds one signature, so
    # anything after it is refused; a detached signature file may hold several, and
    # gpgv accepts the pair.
    err = _ours(keyring, case.data, case.sig + case.sig)
    assert isinstance(err, RpmSignatureError) and "not one signature packet" in str(err)
    assert _gpgv(tmp_path / "two", case.binary, case.data, case.sig + case.sig)


def _flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


def test_unknown_key(signed: dict[str, Signed], keys: dict[str, GpgKey], tmp_path: Path) -> None:
    case = signed["rsa2048-sha256"]
    other = keys["other"]
    keyring = Keyring.load([("other.asc", other.armored)])
    with pytest.raises(RpmSignatureError) as err:
        keyring.verify(case.data, case.sig, what="hello-1.0-1.x86_64.rpm")
    assert f"signed by unknown key {case.key.keyid}" in str(err.value)
    assert "hello-1.0-1.x86_64.rpm" in str(err.value)
    assert err.value.keyid == case.key.keyid
    assert not _gpgv(tmp_path, _export(other), case.data, case.sig)
    # v3 names its key in another field
    v3 = signed["v3-rsa-sha256"]
    with pytest.raises(RpmSignatureError, match=f"signed by unknown key {v3.key.keyid}"):
        keyring.verify(v3.data, v3.sig, what="x")
    # an empty keyring knows nothing
    with pytest.raises(RpmSignatureError, match="unknown key"):
        Keyring.load([]).verify(case.data, case.sig, what="x")


def test_several_keys_in_one_file(signed: dict[str, Signed]) -> None:
    both = signed["rsa2048-sha256"].armored + signed["ed25519"].armored
    keyring = Keyring.load([("/etc/pki/rpm-gpg/RPM-GPG-KEY-both", both)])
    assert len(keyring) == 2
    for name in ("rsa2048-sha256", "ed25519"):
        case = signed[name]
        assert keyring.verify(case.data, case.sig, what="x").keyid == case.key.keyid
    binary = signed["rsa2048-sha256"].binary + signed["v3-rsa-sha256"].binary
    assert len(Keyring.load([("bin", binary)])) == 2


def test_armored_detached(keys: dict[str, GpgKey], tmp_path: Path) -> None:
    key = keys["rsa4096"]
    repomd = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<repomd/>\n"
    asc = _sign(key, repomd, "--armor")
    assert asc.startswith(b"-----BEGIN PGP SIGNATURE-----")
    keyring = Keyring.load([("repomd.xml.key", key.armored)])
    signer = keyring.verify_armored_detached(repomd, asc, what="repodata/repomd.xml")
    assert signer.fingerprint == key.fingerprint.lower()
    binary = _export(key)
    assert _gpgv(tmp_path / "good", binary, repomd, asc)
    changed = repomd.replace(b"repomd/", b"repomd /")
    with pytest.raises(RpmSignatureError, match=r"repodata/repomd\.xml: bad signature"):
        keyring.verify_armored_detached(changed, asc, what="repodata/repomd.xml")
    assert not _gpgv(tmp_path / "bad", binary, changed, asc)
    # a damaged armor checksum, two signatures, no armor
    lines = asc.splitlines(keepends=True)
    crc = next(i for i, ln in enumerate(lines) if ln.startswith(b"="))
    lines[crc] = b"=AAAA\n" if lines[crc] != b"=AAAA\n" else b"=AAAB\n"
    with pytest.raises(RpmSignatureError, match="checksum"):
        keyring.verify_armored_detached(repomd, b"".join(lines), what="r")
    with pytest.raises(RpmSignatureError, match="2 armored blocks"):
        keyring.verify_armored_detached(repomd, asc + asc, what="r")
    with pytest.raises(RpmSignatureError, match="no armored"):
        keyring.verify_armored_detached(repomd, b"hello", what="r")


def test_critical_notation_refused_as_gpgv_does(keys: dict[str, GpgKey], tmp_path: Path
                                                ) -> None:
    key = keys["rsa2048"]
    sig = _sign(key, DATA, "--sig-notation", "!critical@suture.invalid=1")
    keyring = Keyring.load([("k", key.armored)])
    with pytest.raises(RpmSignatureError, match="unknown critical subpacket 20"):
        keyring.verify(DATA, sig, what="x")
    assert not _gpgv(tmp_path, _export(key), DATA, sig)
    plain = _sign(key, DATA, "--sig-notation", "plain@suture.invalid=1")
    assert keyring.verify(DATA, plain, what="x").keyid == key.keyid
    assert _gpgv(tmp_path / "plain", _export(key), DATA, plain)


def test_text_signature(keys: dict[str, GpgKey], tmp_path: Path) -> None:
    key = keys["rsa2048"]
    sig = _sign(key, DATA, "--textmode")
    _, body = _strip_header(sig)
    assert body[1] == 0x01
    keyring = Keyring.load([("k", key.armored)])
    assert keyring.verify(DATA, sig, what="x").keyid == key.keyid
    assert _gpgv(tmp_path, _export(key), DATA, sig)


def test_revoked_key_refused_as_gpgv_does(keys: dict[str, GpgKey], tmp_path: Path) -> None:
    home = tmp_path / "revoked"
    key = make_gpg_key(home, "revoked@suture.invalid")
    sig = _sign(key, DATA)
    rev = (home / "openpgp-revocs.d" / f"{key.fingerprint}.rev").read_bytes()
    rev = rev.replace(b":-----BEGIN", b"-----BEGIN")
    _run(["gpg", "--batch", "--import"], home, rev)
    revoked = _run(["gpg", "--batch", "--armor", "--export", key.uid], home)
    with pytest.raises(RpmSignatureError, match=f"key {key.keyid} may not sign .*revoked"):
        Keyring.load([("k", revoked)]).verify(DATA, sig, what="x")
    # gpgv's exit status accepts it; its status line says the key is revoked
    good, status = _gpgv_status(tmp_path / "gpgv", _run(["gpg", "--batch", "--export"], home),
                                DATA, sig)
    assert good and f"REVKEYSIG {key.keyid.upper()}" in status
    # before the revocation was imported the same key and signature verify
    assert Keyring.load([("k", key.armored)]).verify(DATA, sig, what="x").keyid == key.keyid


def test_expired_key(tmp_path: Path) -> None:
    """A key that expired after signing still vouches for what it signed; a
    signature made after its expiry, or before the key existed, is refused. gpgv
    calls the first two EXPKEYSIG (its exit status accepts both) and refuses the
    third."""
    home = tmp_path / "expiring"
    home.mkdir(mode=0o700)
    uid = "exp@suture.invalid"

    def gpg_at(when: str, *args: str, data: bytes | None = None) -> bytes:
        return _run(["gpg", "--batch", "--yes", "--faked-system-time", f"{when}!",
                     "--pinentry-mode", "loopback", "--passphrase", "",
                     "--ignore-time-conflict", *args], home, data)

    gpg_at("20200101T000000", "--quick-gen-key", f"Exp <{uid}>", "rsa2048", "sign", "never")
    alive = gpg_at("20200601T000000", "-u", uid, "--detach-sign", data=DATA)
    late = gpg_at("20220101T000000", "-u", uid, "--detach-sign", data=DATA)
    early = gpg_at("20190101T000000", "-u", uid, "--detach-sign", data=DATA)
    listing = _run(["gpg", "--batch", "--with-colons", "--fingerprint", uid], home).decode()
    fpr = next(ln.split(":")[9] for ln in listing.splitlines() if ln.startswith("fpr:"))
    gpg_at("20200102T000000", "--quick-set-expire", fpr, "1y")  # expires 2021-01-02
    armored = _run(["gpg", "--batch", "--armor", "--export"], home)
    binary = _run(["gpg", "--batch", "--export"], home)
    keyring = Keyring.load([("k", armored)])
    keyid = fpr[-16:]

    assert isinstance(_ours(keyring, DATA, alive), Signer)
    good, status = _gpgv_status(tmp_path / "alive", binary, DATA, alive)
    assert good and f"EXPKEYSIG {keyid}" in status
    err = _ours(keyring, DATA, late)
    assert isinstance(err, RpmSignatureError) and "expired when it signed" in str(err)
    good, status = _gpgv_status(tmp_path / "late", binary, DATA, late)
    assert f"EXPKEYSIG {keyid}" in status
    err = _ours(keyring, DATA, early)
    assert isinstance(err, RpmSignatureError) and "older than the key" in str(err)
    assert not _gpgv(tmp_path / "early", binary, DATA, early)


def test_bad_key_material() -> None:
    with pytest.raises(RpmSignatureError, match="/etc/pki/rpm-gpg/RPM-GPG-KEY-x"):
        Keyring.load([("/etc/pki/rpm-gpg/RPM-GPG-KEY-x", b"not a key\n")])
    with pytest.raises(RpmSignatureError, match="RPM-GPG-KEY-y"):
        Keyring.load([("RPM-GPG-KEY-y", b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n"
                                         b"!!!!\n-----END PGP PUBLIC KEY BLOCK-----\n")])
    # a packet claiming 4 GiB
    with pytest.raises(RpmSignatureError, match="limit"):
        Keyring.load([("huge", b"\xc6\xff\xff\xff\xff\xff" + b"\x04" * 100)])
    with pytest.raises(RpmSignatureError, match="runs past the end"):
        Keyring.load([("cut", b"\x99\x01\x0d\x04")])


def test_absurd_signature_lengths(signed: dict[str, Signed]) -> None:
    keyring = Keyring.load([("k", signed["rsa2048-sha256"].armored)])
    for sig in (b"\xc2\xff\xff\xff\xff\xff", b"\x8b\xff\xff\xff\xff" + b"\x04" * 50,
                b"\xc2\xe5" + b"\x04" * 40, b"", b"\x04\x00"):
        with pytest.raises(RpmSignatureError, match="x: unusable signature"):
            keyring.verify(DATA, sig, what="x")


# ---------------------------------------------------------------- rpm packages

SPEC = """\
Name: sutsig
Version: 1.0
Release: 1
Summary: signature test package
License: MIT
BuildArch: noarch

%description
A package whose header signature is checked by suture and by rpmkeys.

%install
mkdir -p %{buildroot}/usr/share/sutsig
echo hello > %{buildroot}/usr/share/sutsig/hello

%files
/usr/share/sutsig/hello
"""


@pytest.fixture(scope="module")
def packages(keys: dict[str, GpgKey], tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, tuple[Path, GpgKey]]:
    if not have_rpm_tools() or not shutil.which("rpmkeys"):
        pytest.skip("rpm tools missing")
    base = tmp_path_factory.mktemp("rpms")
    out = {}
    for name, key_name, v3 in (("v4", "rsa4096", False), ("v3", "gpg1", True),
                               ("ed25519", "ed25519", False), ("dsa", "dsa2048", False)):
        paths = build_rpm(SPEC, base / name, payload="gzip")
        sign_rpms(paths, keys[key_name], v3=v3)
        out[name] = (paths[0], keys[key_name])
    unsigned = build_rpm(SPEC, base / "unsigned", payload="gzip")
    out["unsigned"] = (unsigned[0], keys["rsa2048"])
    return out


def _headers(data: bytes) -> tuple[Header, Header, int]:
    sig, end = parse_header(data, 96, what="signature header")
    start = end + pad8(end)
    main, _ = parse_header(data, start, what="main header")
    return sig, main, start


def _rpmkeys(tmp: Path, key: GpgKey, package: Path) -> bool:
    db = tmp / "db"
    db.mkdir(parents=True)
    (tmp / "key.asc").write_bytes(key.armored)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "LC_ALL": "C"}
    subprocess.run(["rpmkeys", "--dbpath", str(db), "--import", str(tmp / "key.asc")],
                   env=env, check=True, capture_output=True)
    done = subprocess.run(["rpmkeys", "--dbpath", str(db), "--checksig", "-v", str(package)],
                          env=env, capture_output=True, text=True)
    return done.returncode == 0 and "NOKEY" not in done.stdout


@pytest.mark.parametrize("name", ["v4", "v3", "ed25519", "dsa"])
def test_package_header_signature(name: str, packages: dict[str, tuple[Path, GpgKey]],
                                  tmp_path: Path) -> None:
    path, key = packages[name]
    data = path.read_bytes()
    sig_header, main, start = _headers(data)
    signature = header_signature(sig_header)
    assert signature is not None
    # rpm files RSA signatures under RSAHEADER, the others (DSA, EdDSA) under DSAHEADER
    tag = Tag.RSAHEADER if name in ("v4", "v3") else Tag.DSAHEADER
    assert sig_header.binary(tag) == signature
    _, body = _strip_header(signature)
    assert body[0] == (3 if name == "v3" else 4)
    keyring = Keyring.load([(f"rpmdb gpg-pubkey-{key.keyid[8:]}-00000000", key.armored)])
    signer = keyring.verify(signed_header_bytes(main), signature, what=path.name)
    assert signer.keyid == key.keyid
    assert _rpmkeys(tmp_path / "good", key, path)

    # one byte of the description changed in the main header's data
    at = start + data[start:].index(b"whose header signature")
    tampered = bytearray(data)
    tampered[at] ^= 0x20
    bad_path = tmp_path / path.name
    bad_path.write_bytes(bytes(tampered))
    _, bad_main, _ = _headers(bytes(tampered))
    with pytest.raises(RpmSignatureError, match=f"{path.name}: bad signature by key {key.keyid}"):
        keyring.verify(signed_header_bytes(bad_main), signature, what=path.name)
    assert not _rpmkeys(tmp_path / "bad", key, bad_path)

    # the digest's quick check damaged in RSAHEADER (the main header untouched)
    at = data.index(signature, 96, start) + _quick_check_offset(signature)
    quick = bytearray(data)
    quick[at] ^= 0x01
    quick_path = tmp_path / "quick" / path.name
    quick_path.parent.mkdir()
    quick_path.write_bytes(bytes(quick))
    quick_sig, quick_main, _ = _headers(bytes(quick))
    wrong = header_signature(quick_sig)
    assert wrong is not None and wrong != signature
    with pytest.raises(RpmSignatureError, match="bad signature"):
        keyring.verify(signed_header_bytes(quick_main), wrong, what=path.name)
    assert not _rpmkeys(tmp_path / "quick-db", key, quick_path)

    # the package checked with another key: both refuse
    other = Keyring.load([("other", packages["unsigned"][1].armored)])
    with pytest.raises(RpmSignatureError, match=f"signed by unknown key {key.keyid}"):
        other.verify(signed_header_bytes(main), signature, what=path.name)
    assert not _rpmkeys(tmp_path / "other", packages["unsigned"][1], path)


def test_key_as_rpmdb_holds_it(packages: dict[str, tuple[Path, GpgKey]], tmp_path: Path
                               ) -> None:
    """The armored key rpm keeps in a gpg-pubkey entry's DESCRIPTION reads back."""
    path, key = packages["v4"]
    assert _rpmkeys(tmp_path, key, path)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LC_ALL": "C"}
    done = subprocess.run(["rpm", "--dbpath", str(tmp_path / "db"), "-q", "gpg-pubkey",
                           "--qf", "%{VERSION}-%{RELEASE}\\n%{DESCRIPTION}"],
                          env=env, check=True, capture_output=True)
    nvr, _, description = done.stdout.partition(b"\n")
    assert b"Version: rpm-" in description
    origin = f"rpmdb gpg-pubkey-{nvr.decode()}"
    keyring = Keyring.load([(origin, description)])
    sig_header, main, _ = _headers(path.read_bytes())
    signature = header_signature(sig_header)
    assert signature is not None
    assert keyring.verify(signed_header_bytes(main), signature, what=path.name) == \
        Signer(key.keyid, key.fingerprint.lower(), origin)


@pytest.mark.parametrize("key_name", ["rsa2048", "ed25519"])
def test_mutations_give_a_verdict(key_name: str, signed: dict[str, Signed]) -> None:
    """Random damage to a key or a signature ends in a Signer or an
    RpmSignatureError, never another exception; damage to the signed part of the
    signature is always refused."""
    case = signed["rsa2048-sha256" if key_name == "rsa2048" else "ed25519"]
    keyring = Keyring.load([("k", case.binary)])
    n, body = _strip_header(case.sig)
    hashed_end = n + 6 + int.from_bytes(body[4:6], "big")
    rnd = random.Random(20261204)
    for _ in range(400):
        sig = bytearray(case.sig)
        at = rnd.randrange(len(sig))
        sig[at] ^= rnd.randrange(1, 256)
        result = _ours(keyring, case.data, bytes(sig))
        if at < hashed_end or at >= _quick_check_offset(case.sig):
            assert isinstance(result, RpmSignatureError), at
        key = bytearray(case.binary)
        for _ in range(rnd.randint(1, 3)):
            key[rnd.randrange(len(key))] = rnd.randrange(256)
        if rnd.random() < 0.2:
            del key[rnd.randrange(len(key)):]
        with contextlib.suppress(RpmSignatureError):
            _ours(Keyring.load([("k", bytes(key))]), case.data, case.sig)


def test_unsigned_package(packages: dict[str, tuple[Path, GpgKey]]) -> None:
    path, _ = packages["unsigned"]
    sig_header, _, _ = _headers(path.read_bytes())
    assert header_signature(sig_header) is None


# ---------------------------------------------------------------- hand-made certificates
# gpg always writes key flags and back-signatures; the certificates below are made
# byte by byte (a minimal OpenPGP writer on cryptography) to reach what it will
# not write, and gpgv judges them as it judges gpg's.


def _packet(tag: int, body: bytes) -> bytes:
    return bytes((0xC0 | tag, 0xFF)) + len(body).to_bytes(4, "big") + body


def _subpacket(kind: int, data: bytes) -> bytes:
    size = len(data) + 1
    head = bytes((size,)) if size < 192 else b"\xff" + size.to_bytes(4, "big")
    return head + bytes((kind,)) + data


def _mpi(value: int) -> bytes:
    return value.bit_length().to_bytes(2, "big") + value.to_bytes((value.bit_length() + 7) // 8,
                                                                   "big")


@dataclass
class _HandKey:
    private: rsa.RSAPrivateKey
    body: bytes

    @property
    def hashed(self) -> bytes:
        return b"\x99" + len(self.body).to_bytes(2, "big") + self.body

    @property
    def fingerprint(self) -> bytes:
        return hashlib.sha1(self.hashed).digest()


def _hand_key(created: int) -> _HandKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = private.public_key().public_numbers()
    body = b"\x04" + created.to_bytes(4, "big") + b"\x01" + _mpi(numbers.n) + _mpi(numbers.e)
    return _HandKey(private, body)


def _hand_sig(key: _HandKey, sig_type: int, signed: bytes, created: int,
              extra: bytes = b"", unhashed_extra: bytes = b"") -> bytes:
    hashed = (_subpacket(33, b"\x04" + key.fingerprint) + _subpacket(2, created.to_bytes(4, "big"))
              + extra)
    head = bytes((4, sig_type, 1, 8)) + len(hashed).to_bytes(2, "big") + hashed
    trailer = head + b"\x04\xff" + len(head).to_bytes(4, "big")
    value = key.private.sign(signed + trailer, padding.PKCS1v15(), hashes.SHA256())
    unhashed = _subpacket(16, key.fingerprint[-8:]) + unhashed_extra
    return (head + len(unhashed).to_bytes(2, "big") + unhashed
            + hashlib.sha256(signed + trailer).digest()[:2]
            + _mpi(int.from_bytes(value, "big")))


def _hand_cert(primary: _HandKey, created: int, flags: bytes | None,
               subkey: tuple[_HandKey, bool] | None = None) -> bytes:
    uid = b"Hand Made <hand@suture.invalid>"
    extra = _subpacket(27, flags) if flags is not None else b""
    cert = _packet(6, primary.body) + _packet(13, uid) + _packet(2, _hand_sig(
        primary, 0x13, primary.hashed + b"\xb4" + len(uid).to_bytes(4, "big") + uid, created,
        extra))
    if subkey is not None:
        sub, back = subkey
        bound = primary.hashed + sub.hashed
        embedded = _subpacket(32, _hand_sig(sub, 0x19, bound, created)) if back else b""
        cert += _packet(14, sub.body) + _packet(2, _hand_sig(
            primary, 0x18, bound, created, _subpacket(27, b"\x02") + embedded))
    return cert


def test_hand_made_certificates_judged_as_gpgv_does(tmp_path: Path) -> None:
    created = 1_600_000_000
    primary = _hand_key(created)
    data_sig = _packet(2, _hand_sig(primary, 0x00, DATA, created + 10))
    keyid = primary.fingerprint[-8:].hex()

    # no key flags at all (Amazon Linux 2023's key): may sign
    no_flags = _hand_cert(primary, created, None)
    signer = Keyring.load([("al2023", no_flags)]).verify(DATA, data_sig, what="x")
    assert signer == Signer(keyid, primary.fingerprint.hex(), "al2023")
    assert _gpgv(tmp_path / "no-flags", no_flags, DATA, data_sig)

    # an unknown critical subpacket, even in the unhashed area
    for hashed, unhashed in ((_subpacket(0x80 | 100, b"x"), b""), (b"", _subpacket(0x80 | 100,
                                                                                     b"x"))):
        critical = _packet(2, _hand_sig(primary, 0x00, DATA, created + 10, hashed, unhashed))
        with pytest.raises(RpmSignatureError, match="unknown critical subpacket 100"):
            Keyring.load([("k", no_flags)]).verify(DATA, critical, what="x")
        assert not _gpgv(tmp_path / f"critical-{len(hashed)}", no_flags, DATA, critical)
    # a known subpacket may be critical
    known = _packet(2, _hand_sig(primary, 0x00, DATA, created + 10,
                                 _subpacket(0x80 | 3, (10 ** 9).to_bytes(4, "big"))))
    assert Keyring.load([("k", no_flags)]).verify(DATA, known, what="x").keyid == keyid
    assert _gpgv(tmp_path / "critical-known", no_flags, DATA, known)

    # a signature that expired (five seconds after it was made, in 2020): refused;
    # gpgv's status says EXPSIG
    expired = _packet(2, _hand_sig(primary, 0x00, DATA, created + 10,
                                   _subpacket(3, (5).to_bytes(4, "big"))))
    with pytest.raises(RpmSignatureError, match=f"the signature by {keyid} expired"):
        Keyring.load([("k", no_flags)]).verify(DATA, expired, what="x")
    assert f"EXPSIG {keyid.upper()}" in _gpgv_status(tmp_path / "expsig", no_flags, DATA,
                                                      expired)[1]

    # flags that allow signing
    signing = _hand_cert(primary, created, b"\x03")
    assert Keyring.load([("k", signing)]).verify(DATA, data_sig, what="x").keyid == keyid
    assert _gpgv(tmp_path / "signing", signing, DATA, data_sig)

    # certify-only: refused
    certify = _hand_cert(primary, created, b"\x01")
    with pytest.raises(RpmSignatureError, match=f"key {keyid} may not sign .*key flags"):
        Keyring.load([("k", certify)]).verify(DATA, data_sig, what="x")
    assert not _gpgv(tmp_path / "certify", certify, DATA, data_sig)

    # a self-signature that does not verify: the key may not sign, and gpgv, which
    # drops the user id and with it the key, refuses too
    broken = bytearray(no_flags)
    broken[-5] ^= 0x01
    with pytest.raises(RpmSignatureError, match="no valid self-signature"):
        Keyring.load([("k", bytes(broken))]).verify(DATA, data_sig, what="x")
    assert not _gpgv(tmp_path / "broken", bytes(broken), DATA, data_sig)

    # a signing subkey with and without its back-signature
    sub = _hand_key(created)
    sub_sig = _packet(2, _hand_sig(sub, 0x00, DATA, created + 10))
    sub_id = sub.fingerprint[-8:].hex()
    crossed = _hand_cert(primary, created, b"\x01", (sub, True))
    assert Keyring.load([("k", crossed)]).verify(DATA, sub_sig, what="x").keyid == sub_id
    assert _gpgv(tmp_path / "crossed", crossed, DATA, sub_sig)
    uncrossed = _hand_cert(primary, created, b"\x01", (sub, False))
    with pytest.raises(RpmSignatureError, match="not cross-certified"):
        Keyring.load([("k", uncrossed)]).verify(DATA, sub_sig, what="x")
    assert not _gpgv(tmp_path / "uncrossed", uncrossed, DATA, sub_sig)
    # a subkey without its binding signature
    unbound = _packet(6, primary.body) + no_flags[len(_packet(6, primary.body)):] + \
        _packet(14, sub.body)
    with pytest.raises(RpmSignatureError, match="no valid binding signature"):
        Keyring.load([("k", unbound)]).verify(DATA, sub_sig, what="x")
    assert not _gpgv(tmp_path / "unbound", unbound, DATA, sub_sig)


def test_weak_and_unknown_algorithms_refused_as_gpgv_does(keys: dict[str, GpgKey],
                                                          tmp_path: Path) -> None:
    key = keys["gpg1"]
    md5 = _run(["gpg1", "--batch", "--yes", "-u", key.uid, "--digest-algo", "md5",
                "--detach-sign"], key.home, DATA)
    keyring = Keyring.load([("k", key.armored)])
    with pytest.raises(RpmSignatureError, match=f"unsupported signature by {key.keyid}: "
                                                "digest algorithm MD5"):
        keyring.verify(DATA, md5, what="x")
    assert not _gpgv(tmp_path / "md5", _export(key), DATA, md5)
    # an unknown public-key algorithm in the signature
    good = _sign(key, DATA)
    n, _ = _strip_header(good)
    unknown = bytearray(good)
    unknown[n + 2] = 99
    with pytest.raises(RpmSignatureError, match="unusable signature: signature algorithm 99"):
        keyring.verify(DATA, bytes(unknown), what="x")
    assert not _gpgv(tmp_path / "99", _export(key), DATA, bytes(unknown))


def test_dsa_signature_verifies_without_a_warning(packages: dict[str, tuple[Path, GpgKey]],
                                                  tmp_path: Path) -> None:
    """cryptography 51 deprecated DSA and warns on each use; suture must verify a DSA
    package signature and print nothing but its own lines. Run with every warning an
    error, in a fresh interpreter (pytest's own filters would hide it here)."""
    path, key = packages["dsa"]
    (tmp_path / "key.asc").write_bytes(key.armored)
    code = f"""
from pathlib import Path
from suture.distro.rpm.header import pad8, parse_header
from suture.distro.rpm.sign import Keyring, header_signature, signed_header_bytes
data = Path({str(path)!r}).read_bytes()
sig, end = parse_header(data, 96, what="signature header")
main, _ = parse_header(data, end + pad8(end), what="main header")
keyring = Keyring.load([("key", Path({str(tmp_path / "key.asc")!r}).read_bytes())])
print(keyring.verify(signed_header_bytes(main), header_signature(sig), what="p").keyid)
"""
    done = subprocess.run([sys.executable, "-W", "error", "-c", code],
                          capture_output=True, text=True)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, key.keyid, "")
