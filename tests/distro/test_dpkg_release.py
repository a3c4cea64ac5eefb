"""Release files and keyrings: parsing, signature edge cases, trust anchors from an image."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from suture.distro.dpkg.release import (
    Keyring,
    Release,
    check_release,
    parse_release,
    parse_release_date,
    verify_clearsigned,
    verify_detached,
    verify_release,
)
from suture.distro.dpkg.repo import default_keyring, keyring_for, keyring_paths
from suture.distro.dpkg.repoerrors import (
    BadSignature,
    ExpiredKey,
    KeyringError,
    MalformedRelease,
    NotSigned,
    ReleaseExpired,
    ReleaseMismatch,
)
from suture.distro.dpkg.sources import parse_deb822_sources, parse_sources_list
from tests.fixtures.aptrepo import GpgKeys, gpgv_verdict

H1 = "a" * 64
H2 = "b" * 64
RELEASE = f"""\
Origin: Debian
Label: Debian-Security
Suite: oldstable-security
Version: 12
Codename: bookworm-security
Date: Tue, 24 Nov 2026 00:34:33 UTC
Valid-Until: Tue, 01 Dec 2026 00:34:33 UTC
Acquire-By-Hash: yes
Architectures: amd64 arm64
Components: updates/main updates/contrib
Description: Debian 12 - Security Updates
MD5Sum:
 0123456789abcdef0123456789abcdef  2531138 main/binary-amd64/Packages
SHA256:
 {H1}  2531138 main/binary-amd64/Packages
 {H2.upper()}   379616 main/binary-amd64/Packages.xz
""".encode()


def test_parse_release_fields():
    r = parse_release(RELEASE)
    assert (r.origin, r.label, r.suite, r.codename, r.version) == \
        ("Debian", "Debian-Security", "oldstable-security", "bookworm-security", "12")
    assert r.date == datetime(2026, 11, 24, 0, 34, 33, tzinfo=UTC)
    assert r.valid_until == datetime(2026, 12, 1, 0, 34, 33, tzinfo=UTC)
    assert r.acquire_by_hash
    assert r.architectures == ("amd64", "arm64")
    assert r.components == ("updates/main", "updates/contrib")
    assert sorted(r.files) == ["main/binary-amd64/Packages", "main/binary-amd64/Packages.xz"]
    xz = r.files["main/binary-amd64/Packages.xz"]
    assert (xz.size, xz.sha256) == (379616, H2)
    assert r.fields["description"] == "Debian 12 - Security Updates"
    assert r.signers == ()


@pytest.mark.parametrize("mutation,message", [
    (lambda b: b + b"\nOrigin: again\n", "paragraphs"),
    (lambda b: b.replace(b"Codename:", b"Codename :"), "not a field"),
    (lambda b: b.replace(b"  379616", b"  lots"), "malformed SHA256 line"),
    (lambda b: b.replace(b"main/binary-amd64/Packages.xz", b"../../x"), "unsafe path"),
    (lambda b: b.replace(b"Tue, 01 Dec 2026", b"someday"), "Valid-Until"),
    (lambda b: b"", "empty"),
    (lambda b: b"\xff\xfe", "UTF-8"),
])
def test_parse_release_refuses_malformed(mutation, message):
    with pytest.raises(MalformedRelease, match=message):
        parse_release(mutation(RELEASE))


def test_release_dates():
    assert parse_release_date("Sat, 11 Jul 2026 10:16:37 UTC") == \
        datetime(2026, 7, 11, 10, 16, 37, tzinfo=UTC)
    assert parse_release_date("Sat, 11 Jul 2026 12:16:37 +0200") == \
        datetime(2026, 7, 11, 10, 16, 37, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_release_date("2026-07-11")


@pytest.mark.parametrize("asked,ok", [
    ("bookworm-security", True), ("oldstable-security", True), ("bookworm", False),
    ("bookworm-security/updates", True), ("stable-security", False), ("./", True),
])
def test_release_matches_suite_or_codename(asked, ok):
    r = parse_release(RELEASE)
    assert r.matches(asked) is ok


def test_check_release():
    r = parse_release(RELEASE)
    before = datetime(2026, 11, 30, tzinfo=UTC)
    after = datetime(2026, 12, 2, tzinfo=UTC)
    assert check_release(r, suite="bookworm-security", now=before) is r
    with pytest.raises(ReleaseExpired) as info:
        check_release(r, suite="bookworm-security", now=after)
    assert info.value.valid_until == r.valid_until and info.value.now == after
    check_release(r, suite=None, now=after, check_valid_until=False)
    with pytest.raises(ReleaseMismatch):
        check_release(r, suite="trixie-security", now=before)


# ---------------------------------------------------------------- signatures


def _sign(keys: GpgKeys, tmp: Path, key_name: str, data: bytes, **kw: object) -> Path:
    src = tmp / "Release"
    src.write_bytes(data)
    out = tmp / "InRelease"
    keys.sign(src, out, [keys.create(key_name, **kw)], clear=True)  # type: ignore[arg-type]
    return out


def test_expired_signing_subkey_is_refused(gpg_keys, tmp_path):
    key = gpg_keys.create("subexpired", expired_subkey=True)
    assert key.signer and key.signer != key.fingerprint
    signed = _sign(gpg_keys, tmp_path, "subexpired", RELEASE)
    assert gpgv_verdict(signed, [key.keyring_file()]) == "expired"
    with pytest.raises(ExpiredKey) as info:
        verify_clearsigned(signed.read_bytes(), key.keyring())
    assert info.value.expired_at is not None and info.value.expired_at.year == 2020
    # Back when the subkey was alive it was good.
    then = datetime(2020, 1, 1, 18, tzinfo=UTC)
    assert verify_clearsigned(signed.read_bytes(), key.keyring(), now=then).signers == (key.fpr,)


def test_weak_digest_is_refused(gpg_keys, tmp_path):
    key = gpg_keys.create("weak-rsa", algo="rsa2048")
    src = tmp_path / "Release"
    src.write_bytes(RELEASE)
    gpg_keys.sign(src, tmp_path / "InRelease", [key], clear=True, digest="SHA1")
    assert gpgv_verdict(tmp_path / "InRelease", [key.keyring_file()]) == "weak"
    with pytest.raises(BadSignature, match="weak digest SHA1"):
        verify_clearsigned((tmp_path / "InRelease").read_bytes(), key.keyring())
    gpg_keys.sign(src, tmp_path / "InRelease2", [key], clear=True, digest="SHA512")
    assert verify_clearsigned((tmp_path / "InRelease2").read_bytes(), key.keyring())


def test_dash_escaped_lines_round_trip(gpg_keys, tmp_path):
    data = b"Origin: x\nDescription: a\n -- dashes\n-- not a field but signed\n"
    signed = _sign(gpg_keys, tmp_path, "good", data)
    assert b"\n- -- not a field" in signed.read_bytes()
    text = verify_clearsigned(signed.read_bytes(), gpg_keys.good.keyring()).text
    assert text == data.rstrip(b"\n")


def test_clearsigned_structure_is_checked(gpg_keys, tmp_path):
    signed = _sign(gpg_keys, tmp_path, "good", RELEASE).read_bytes()
    ring = gpg_keys.good.keyring()
    assert verify_clearsigned(b"\n\n" + signed + b"\n\n", ring).signers == (gpg_keys.good.fpr,)
    for bad, message in [
        (signed.split(b"-----BEGIN PGP SIGNATURE-----")[0], "no signature block"),
        (signed.replace(b"-----BEGIN PGP SIGNATURE-----", b"-----BEGIN PGP SIGNATURX-----"),
         "unescaped dash"),
        (signed.replace(b"-----END PGP SIGNATURE-----", b"-----END PGP SIGNATURX-----"),
         "unterminated"),
        (signed.replace(b"\nOrigin:", b"\n-Origin:"), "unescaped dash"),
        (signed.replace(b"Hash: ", b"Hash "), "armor header"),
        (RELEASE, "not a clearsigned message"),
        (signed + signed, "data after the signature"),
        (b"\xff" + signed, "UTF-8"),
    ]:
        with pytest.raises(NotSigned, match=message):
            verify_clearsigned(bad, ring)


def _gpgv_signed_text(signed: Path, keyring: Path) -> bytes | None:
    """The text gpgv says is signed (its ``--output``, without the final line end), or
    None when gpgv finds no good signature."""
    out = signed.with_name(signed.name + ".gpgv-out")
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpgv-") as home:
        proc = subprocess.run(["gpgv", "--status-fd", "1", "--keyring", str(keyring.resolve()),
                               "--output", str(out), str(signed)], capture_output=True,
                              check=False, env={**os.environ, "GNUPGHOME": home})
    if b"[GNUPG:] GOODSIG " not in proc.stdout or b"[GNUPG:] BADSIG " in proc.stdout:
        return None
    text = out.read_bytes()
    return text.removesuffix(b"\r\n") if text.endswith(b"\r\n") else text.removesuffix(b"\n")


_Edit = Callable[[bytes], bytes]
# Clearsigned inputs where a parser's idea of the signed text can part from the
# signature's: (text signed, edit of the signed message afterwards).
SIGNED_TEXT_EDGES: dict[str, tuple[bytes, _Edit]] = {
    "CRLF line ends": (b"Origin: x\nLabel: y\n", lambda m: m.replace(b"\n", b"\r\n")),
    "CRLF in the signed text": (b"Origin: x\r\nLabel: y\r\n", lambda m: m),
    "trailing spaces added": (b"Origin: x\nLabel: y\n",
                              lambda m: m.replace(b"Origin: x\n", b"Origin: x  \n")),
    "trailing tab added": (b"Origin: x\nLabel: y\n",
                           lambda m: m.replace(b"Label: y\n", b"Label: y\t\n")),
    "trailing spaces signed": (b"Origin: x\nLabel: y  \n", lambda m: m),
    "dash-escaped last line": (b"Origin: x\n-- end\n", lambda m: m),
    "dash-escaped last line with trailing blanks": (
        b"Origin: x\n-- end\n", lambda m: m.replace(b"- -- end\n", b"- -- end \t\n")),
    "a lone dash, dash-escaped, last": (b"Origin: x\n-\n", lambda m: m),
    "a dash and a space, dash-escaped, last": (b"Origin: x\n- \n", lambda m: m),
    "CR before the armor": (b"Origin: x\nLabel: y\n", lambda m: m.replace(
        b"\n-----BEGIN PGP SIGNATURE", b"\r\n-----BEGIN PGP SIGNATURE")),
    "CR inside a line": (b"Origin: x\nLabel: y\n",
                         lambda m: m.replace(b"Origin: x\n", b"Origin: x\rLabel: z\n")),
    "blank line before the armor": (b"Origin: x\nLabel: y\n", lambda m: m.replace(
        b"\n-----BEGIN PGP SIGNATURE", b"\n\n-----BEGIN PGP SIGNATURE")),
    "signed trailing blank line": (b"Origin: x\n\n", lambda m: m),
    "blanks after the armor header": (b"Origin: x\nLabel: y\n",
                                      lambda m: m.replace(b"Hash: SHA512\n\n",
                                                          b"Hash: SHA512 \n \t\n")),
}


@pytest.mark.parametrize("case", sorted(SIGNED_TEXT_EDGES))
def test_signed_text_is_refused_or_agrees_with_gpgv(gpg_keys: GpgKeys, tmp_path: Path,
                                                     case: str) -> None:
    """suture returns only the text gpgv says is signed, or refuses: never a text the
    signature does not cover (trailing blanks and line ends are not signed)."""
    text, edit = SIGNED_TEXT_EDGES[case]
    signed = tmp_path / "Edited"
    signed.write_bytes(edit(_sign(gpg_keys, tmp_path, "good", text).read_bytes()))
    expected = _gpgv_signed_text(signed, gpg_keys.good.keyring_file())
    try:
        got = verify_clearsigned(signed.read_bytes(), gpg_keys.good.keyring()).text
    except (NotSigned, BadSignature):
        return  # refused
    assert expected is not None, f"gpgv finds no good signature, suture read {got!r}"
    assert got == expected


def test_signed_text_edges_exercise_the_ambiguity_check(gpg_keys: GpgKeys,
                                                        tmp_path: Path) -> None:
    """Some of the inputs above are verified by Sequoia with a text suture's own
    clearsign parser reads differently: they are refused as ambiguous."""
    for case in ("CRLF line ends", "trailing spaces added",
                 "a dash and a space, dash-escaped, last"):
        text, edit = SIGNED_TEXT_EDGES[case]
        signed = edit(_sign(gpg_keys, tmp_path, "good", text).read_bytes())
        with pytest.raises(NotSigned, match="signed text is ambiguous"):
            verify_clearsigned(signed, gpg_keys.good.keyring())


def test_verify_release_forms(gpg_keys, tmp_path):
    ring = gpg_keys.good.keyring()
    signed = _sign(gpg_keys, tmp_path, "good", RELEASE)
    r = verify_release(ring, inrelease=signed.read_bytes())
    assert isinstance(r, Release) and r.signers == (gpg_keys.good.fpr,)
    gpg_keys.sign(tmp_path / "Release", tmp_path / "Release.gpg", [gpg_keys.good], clear=False,
                  armor=False)
    r2 = verify_release(ring, release=RELEASE, release_gpg=(tmp_path / "Release.gpg").read_bytes())
    assert r2 == r
    assert verify_detached(RELEASE, (tmp_path / "Release.gpg").read_bytes(), ring).text == RELEASE
    with pytest.raises(NotSigned):
        verify_release(ring, release=RELEASE)
    with pytest.raises(NotSigned, match="signature"):
        verify_detached(RELEASE, b"garbage", ring)
    with pytest.raises(ValueError):
        verify_release(ring)


# ---------------------------------------------------------------- keyrings


def test_keyring_reading(gpg_keys):
    good, other = gpg_keys.good, gpg_keys.other
    ring = Keyring.from_bytes(good.public(), b"", other.public(armor=True), good.public())
    assert sorted(ring.fingerprints) == sorted([good.fpr, other.fpr])
    assert len(ring) == 2
    assert ring.restrict([other.fingerprint + "!"]).fingerprints == (other.fpr,)
    assert ring.restrict(["00" * 20]).fingerprints == ()
    with pytest.raises(KeyringError, match=r"my\.gpg"):
        Keyring.from_bytes(b"not a key", names=["my.gpg"])


def test_restrict_by_subkey_fingerprint(gpg_keys):
    key = gpg_keys.create("subexpired", expired_subkey=True)
    assert key.signer
    ring = key.keyring() + gpg_keys.good.keyring()
    assert ring.restrict([key.signer]).fingerprints == (key.fpr,)
    assert ring.find(key.signer[-16:]) is not None


def test_host_debian_keyrings_read():
    host = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
    if not host.exists():
        pytest.skip("no debian-archive-keyring on this host")
    ring = Keyring.from_bytes(host.read_bytes())
    assert len(ring) >= 3
    asc = sorted(Path("/etc/apt/trusted.gpg.d").glob("*.asc"))
    if asc:
        assert len(Keyring.from_bytes(*(p.read_bytes() for p in asc))) >= 1


def test_keyring_for_follows_apt(gpg_keys):
    good, other = gpg_keys.good, gpg_keys.other
    files = {
        "etc/apt/trusted.gpg": b"",  # apt leaves an empty one behind
        "etc/apt/trusted.gpg.d/debian.asc": good.public(armor=True),
        "/etc/apt/trusted.gpg.d/other.gpg": other.public(),
        "etc/apt/trusted.gpg.d/ignored.txt": b"garbage",
        "usr/share/keyrings/vendor.gpg": other.public(),
    }
    assert sorted(default_keyring(files).fingerprints) == sorted([good.fpr, other.fpr])

    [plain] = parse_sources_list(b"deb http://x/debian bookworm main\n")
    assert sorted(keyring_for(plain, files).fingerprints) == sorted([good.fpr, other.fpr])

    [by_path] = parse_sources_list(
        b"deb [signed-by=/usr/share/keyrings/vendor.gpg] http://x/debian bookworm main\n")
    assert keyring_for(by_path, files).fingerprints == (other.fpr,)

    [by_fpr] = parse_sources_list(
        f"deb [signed-by={good.fingerprint}] http://x/debian bookworm main\n".encode())
    assert keyring_for(by_fpr, files).fingerprints == (good.fpr,)

    text = (b"Types: deb\nURIs: http://x/\nSuites: s\nComponents: main\nSigned-By:\n"
            + b"\n".join(b" " + (ln or b".") for ln in good.public(armor=True).splitlines())
            + b"\n")
    [inline] = parse_deb822_sources(text)
    assert keyring_for(inline, {}).fingerprints == (good.fpr,)
    extra = keyring_for(inline, {}, extra=other.keyring())
    assert sorted(extra.fingerprints) == sorted([good.fpr, other.fpr])

    [missing] = parse_sources_list(
        b"deb [signed-by=/etc/apt/keyrings/nope.gpg] http://x/debian bookworm main\n")
    with pytest.raises(KeyringError, match=r"nope\.gpg"):
        keyring_for(missing, files)
    assert keyring_paths([missing, plain]) == (
        ["etc/apt/keyrings/nope.gpg", "etc/apt/trusted.gpg"], ["etc/apt/trusted.gpg.d/"])
