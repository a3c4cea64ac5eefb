"""Reading and checking apk v2 packages and indexes (signatures, identity, datahash).

The helpers here build packages and indexes the way abuild lays them out (gzip
streams of cut tars, PAX ``APK-TOOLS.checksum.SHA1`` headers, ``.SIGN.RSA*`` over
the compressed control stream or index); they are reused by the other apk tests.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from suture.distro.apk.checksum import encode_checksum, q1
from suture.distro.apk.index import parse_apkindex, read_index_archive
from suture.distro.apk.package import read_apk
from suture.distro.apk.sign import Keys
from suture.distro.dpkg.repoerrors import BadSignature, NotSigned, RepositoryError, UnknownKey
from suture.errors import DigestMismatch, LayerError, PackageDBError
from suture.oci.layer import DIR, FILE, HARDLINK, SYMLINK

# --------------------------------------------------------------------------- builders


@dataclass(frozen=True)
class Key:
    name: str
    private: rsa.RSAPrivateKey

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, data: bytes, kind: str = "RSA") -> bytes:
        algorithm = {"RSA": hashes.SHA1, "RSA256": hashes.SHA256}[kind]()
        return self.private.sign(data, padding.PKCS1v15(), algorithm)


@functools.cache
def make_key(name: str = "test@example.org-1.rsa.pub") -> Key:
    return Key(name, rsa.generate_private_key(public_exponent=65537, key_size=2048))


def _tar(members: Sequence[tuple[tarfile.TarInfo, bytes | None]], *, cut: bool) -> bytes:
    """A tar of ``members``; ``cut``: without the end-of-archive blocks (as abuild-tar
    --cut leaves the signature and control parts)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        end = tar.offset
    return buf.getvalue()[:end] if cut else buf.getvalue()


def _file(name: str, data: bytes, mode: int = 0o644, mtime: int = 1700000000) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, mtime
    info.uname = info.gname = "root"
    return info


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


@dataclass
class Pkg:
    """What a test package holds. ``files``: path -> bytes (a file), ``"->target"`` (a
    symlink), ``"=>path"`` (a hard link); directories are made for every parent."""

    name: str
    version: str
    files: dict[str, bytes | str] = field(default_factory=dict)
    depends: str = ""
    provides: str = ""
    replaces: str = ""
    replaces_priority: int = 0
    origin: str = ""
    arch: str = "x86_64"
    scripts: dict[str, bytes] = field(default_factory=dict)
    triggers: str = ""
    modes: dict[str, int] = field(default_factory=dict)
    owners: dict[str, tuple[str, int]] = field(default_factory=dict)  # path -> (uname, uid)
    xattrs: dict[str, dict[str, bytes]] = field(default_factory=dict)
    dirs: tuple[str, ...] = ()
    builddate: int = 1700000000


@dataclass(frozen=True)
class Built:
    pkg: Pkg
    blob: bytes
    identity: str
    size: int
    installed_size: int

    def index_record(self) -> str:
        p = self.pkg
        lines = [f"C:{self.identity}", f"P:{p.name}", f"V:{p.version}", f"A:{p.arch}",
                 f"S:{self.size}", f"I:{self.installed_size}", f"T:{p.name} for tests",
                 "U:https://example.org", "L:MIT", f"o:{p.origin or p.name}",
                 "m:Tester <t@example.org>", f"t:{p.builddate}"]
        if p.depends:
            lines.append(f"D:{p.depends}")
        if p.provides:
            lines.append(f"p:{p.provides}")
        return "\n".join(lines) + "\n"


def data_tar(pkg: Pkg) -> bytes:
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    dirs = sorted({"/".join(path.split("/")[:i]) for path in pkg.files
                   for i in range(1, path.count("/") + 1)} | set(pkg.dirs))
    for d in dirs:
        info = tarfile.TarInfo(d)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, pkg.modes.get(d, 0o755), \
            pkg.builddate
        info.uname = info.gname = "root"
        members.append((info, None))
    hard = [p for p, v in pkg.files.items() if isinstance(v, str) and v.startswith("=>")]
    for path in sorted(set(pkg.files) - set(hard)) + sorted(hard):  # links after targets
        body = pkg.files[path]
        if isinstance(body, str) and body.startswith("->"):
            info = tarfile.TarInfo(path)
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, body[2:], 0o777
            digest = hashlib.sha1(body[2:].encode()).hexdigest()
            data = None
        elif isinstance(body, str) and body.startswith("=>"):
            info = tarfile.TarInfo(path)
            info.type, info.linkname = tarfile.LNKTYPE, body[2:]
            info.mode = pkg.modes.get(path, 0o755)
            digest, data = None, None
        else:
            assert isinstance(body, bytes)
            info = _file(path, body, pkg.modes.get(path, 0o644), pkg.builddate)
            digest, data = hashlib.sha1(body).hexdigest(), body
        info.mtime = pkg.builddate
        uname, uid = pkg.owners.get(path, ("root", 0))
        info.uname, info.uid = uname, uid
        info.gname = "root"
        headers: dict[str, str] = {}
        if digest is not None:
            headers["APK-TOOLS.checksum.SHA1"] = digest
        for k, v in pkg.xattrs.get(path, {}).items():
            headers["SCHILY.xattr." + k] = v.decode("utf-8", "surrogateescape")
        info.pax_headers = headers
        members.append((info, data))
    return _tar(members, cut=False)


def build_apk(pkg: Pkg, key: Key | None, *, kind: str = "RSA", datahash: bool = True,
              tamper_data: bool = False, data: bytes | None = None) -> Built:
    data_gz = _gz(data if data is not None else data_tar(pkg))
    size = sum(len(v) for v in pkg.files.values() if isinstance(v, bytes))
    info = [f"pkgname = {pkg.name}", f"pkgver = {pkg.version}", f"pkgdesc = {pkg.name}",
            "url = https://example.org", f"builddate = {pkg.builddate}",
            f"size = {size}", f"arch = {pkg.arch}", f"origin = {pkg.origin or pkg.name}",
            "license = MIT"]
    info += [f"depend = {d}" for d in pkg.depends.split()]
    info += [f"provides = {p}" for p in pkg.provides.split()]
    if pkg.replaces:
        info.append(f"replaces = {pkg.replaces}")
    if pkg.replaces_priority:
        info.append(f"replaces_priority = {pkg.replaces_priority}")
    if pkg.triggers:
        info.append(f"triggers = {pkg.triggers}")
    if datahash:
        info.append(f"datahash = {hashlib.sha256(data_gz).hexdigest()}")
    control = [(_file(".PKGINFO", ("\n".join(info) + "\n").encode()),
                ("\n".join(info) + "\n").encode())]
    for action, body in sorted(pkg.scripts.items()):
        control.append((_file("." + action, body, 0o755), body))
    control_gz = _gz(_tar(control, cut=True))
    blob = control_gz + (data_gz if datahash else b"")
    identity_source = control_gz if datahash else control_gz + data_gz
    if key is not None:
        signed = control_gz if datahash else control_gz + data_gz
        sig = key.sign(signed, kind)
        sig_gz = _gz(_tar([(_file(f".SIGN.{kind}.{key.name}", sig), sig)], cut=True))
        blob = sig_gz + control_gz + data_gz
    else:
        blob = control_gz + data_gz
    if tamper_data:
        blob = blob[:-20] + bytes(b ^ 1 for b in blob[-20:-12]) + blob[-12:]
    return Built(pkg, blob, q1(identity_source), len(blob), size)


def build_index(records: list[str], key: Key | None, *, kind: str = "RSA",
                description: str = "test repo") -> bytes:
    text = "\n".join(records).encode() + b"\n"
    index_gz = _gz(_tar([(_file("DESCRIPTION", description.encode()), description.encode()),
                         (_file("APKINDEX", text), text)], cut=False))
    if key is None:
        return index_gz
    sig = key.sign(index_gz, kind)
    return _gz(_tar([(_file(f".SIGN.{kind}.{key.name}", sig), sig)], cut=True)) + index_gz


def keys_for(*keys: Key) -> Keys:
    return Keys.load({k.name: k.public_pem for k in keys})


# --------------------------------------------------------------------------- tests

HELLO = Pkg("hello", "1.0-r1", {
    "usr/bin/hello": b"#!/bin/sh\necho hello\n",
    "usr/bin/hi": "->hello",
    "usr/bin/hey": "=>usr/bin/hello",
    "etc/hello.conf": b"greeting=hi\n",
}, depends="so:libc.musl-x86_64.so.1", modes={"usr/bin/hello": 0o755},
    scripts={"post-upgrade": b"#!/bin/sh\necho upgraded\n"}, triggers="/usr/share/hello/*",
    xattrs={"usr/bin/hello": {"security.capability": b"\x01\x00\x00\x02\xff"}})


def _write(tmp_path: Path, built: Built) -> Path:
    path = tmp_path / built.pkg.name
    path.write_bytes(built.blob)
    return path


@pytest.mark.parametrize("kind", ["RSA", "RSA256"])
def test_read_a_signed_package(tmp_path: Path, kind: str) -> None:
    key = make_key()
    built = build_apk(HELLO, key, kind=kind)
    archive = read_apk(_write(tmp_path, built), identity=built.identity, keys=keys_for(key),
                       what="hello.apk")
    c = archive.control
    assert (c.name, c.version, c.arch, c.build_time) == ("hello", "1.0-r1", "x86_64", 1700000000)
    assert c.signer == "/etc/apk/keys/" + key.name
    assert c.triggers == ("/usr/share/hello/*",)
    assert c.scripts == {"post-upgrade": b"#!/bin/sh\necho upgraded\n"}
    by_path = {m.path: m for m in archive.members}
    assert by_path["usr"].kind == DIR
    hello = by_path["usr/bin/hello"]
    assert (hello.kind, hello.mode, hello.data) == (FILE, 0o755, HELLO.files["usr/bin/hello"])
    assert hello.checksum == q1(HELLO.files["usr/bin/hello"])  # type: ignore[arg-type]
    assert hello.xattrs == {"security.capability": b"\x01\x00\x00\x02\xff"}
    assert by_path["usr/bin/hi"].kind == SYMLINK
    assert by_path["usr/bin/hi"].checksum == q1(b"hello")
    assert by_path["usr/bin/hey"].kind == HARDLINK
    assert by_path["usr/bin/hey"].linkname == "usr/bin/hello"


def test_unsigned_package_is_trusted_by_identity(tmp_path: Path) -> None:
    built = build_apk(HELLO, None)
    archive = read_apk(_write(tmp_path, built), identity=built.identity, keys=keys_for(),
                       what="hello.apk")
    assert archive.control.signer is None and archive.members


def test_package_signed_by_unknown_key_is_trusted_by_identity(tmp_path: Path) -> None:
    built = build_apk(HELLO, make_key("other.rsa.pub"))
    archive = read_apk(_write(tmp_path, built), identity=built.identity,
                       keys=keys_for(make_key()), what="hello.apk")
    assert archive.control.signer is None


def test_identity_mismatch(tmp_path: Path) -> None:
    built = build_apk(HELLO, make_key())
    other = build_apk(Pkg("hello", "1.0-r1", {"x": b"y"}), make_key())
    with pytest.raises(DigestMismatch, match="package checksum"):
        read_apk(_write(tmp_path, built), identity=other.identity, keys=keys_for(make_key()),
                 what="hello.apk")


def test_tampered_data_fails_the_datahash(tmp_path: Path) -> None:
    built = build_apk(HELLO, make_key(), tamper_data=True)
    with pytest.raises((DigestMismatch, RepositoryError)):
        read_apk(_write(tmp_path, built), identity=built.identity, keys=keys_for(make_key()),
                 what="hello.apk", members=False)


def test_bad_signature_by_a_trusted_key(tmp_path: Path) -> None:
    real, forger = make_key(), make_key("forger.rsa.pub")
    built = build_apk(HELLO, Key(real.name, forger.private))  # the trusted key's name
    with pytest.raises(BadSignature):
        read_apk(_write(tmp_path, built), identity=built.identity, keys=keys_for(real),
                 what="hello.apk")


def test_file_checksum_in_the_header_must_match(tmp_path: Path) -> None:
    raw = bytearray(data_tar(HELLO))
    at = raw.find(b"echo hello")
    raw[at] ^= 0x20  # content changed, header checksum left: the datahash is recomputed
    built = build_apk(HELLO, make_key(), data=bytes(raw))
    with pytest.raises(DigestMismatch, match="usr/bin/hello"):
        read_apk(_write(tmp_path, built), identity=built.identity, keys=keys_for(make_key()),
                 what="hello.apk")


def test_unsafe_member_is_refused(tmp_path: Path) -> None:
    bad = _tar([(_file("usr/../../etc/passwd", b"x"), b"x")], cut=False)
    built = build_apk(HELLO, make_key(), data=bad)
    with pytest.raises(LayerError):
        read_apk(_write(tmp_path, built), identity=built.identity, keys=keys_for(make_key()),
                 what="hello.apk")


def test_v3_package_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "v3.apk"
    path.write_bytes(b"ADBd\x00\x00\x00\x00")
    with pytest.raises(RepositoryError, match="apk v3"):
        read_apk(path, identity=q1(b""), keys=keys_for(), what="v3.apk")


def test_package_without_datahash(tmp_path: Path) -> None:
    built = build_apk(HELLO, make_key(), datahash=False)
    archive = read_apk(_write(tmp_path, built), identity=built.identity,
                       keys=keys_for(make_key()), what="hello.apk")
    assert archive.control.datahash is None and archive.control.signer


# --------------------------------------------------------------------------- indexes

def _records() -> list[str]:
    return [build_apk(HELLO, make_key()).index_record(),
            build_apk(Pkg("musl", "1.2.5-r1", {"lib/libc.so": b"libc"},
                          provides="so:libc.musl-x86_64.so.1=1"), make_key()).index_record()]


@pytest.mark.parametrize("kind", ["RSA", "RSA256"])
def test_index_verified_and_parsed(kind: str) -> None:
    key = make_key()
    blob = build_index(_records(), key, kind=kind)
    index = read_index_archive(blob, keys_for(key), what="APKINDEX.tar.gz")
    assert index.description == "test repo" and index.signer.name == key.name
    entries = parse_apkindex(index.apkindex, repository="http://r/main", tag="edge", order=2)
    assert [(e.name, e.version) for e in entries] == [("hello", "1.0-r1"), ("musl", "1.2.5-r1")]
    hello = entries[0]
    assert hello.repository == "http://r/main" and hello.tag == "edge" and hello.order == 2
    assert hello.filename == "hello-1.0-r1.apk" and hello.size > 0
    assert [str(d) for d in hello.depends] == ["so:libc.musl-x86_64.so.1"]
    only = parse_apkindex(index.apkindex, names=frozenset({"so:libc.musl-x86_64.so.1"}))
    assert [e.name for e in only] == ["musl"]


def test_user_key_verifies_whatever_its_name() -> None:
    key = make_key()
    blob = build_index(_records(), key)
    keys = Keys.load({}, [b"not a key", key.public_pem])
    assert read_index_archive(blob, keys, what="idx").signer.origin == "--keyring #2"


def test_unsigned_index() -> None:
    with pytest.raises(NotSigned):
        read_index_archive(build_index(_records(), None), keys_for(make_key()), what="idx")


def test_index_by_unknown_key() -> None:
    blob = build_index(_records(), make_key("someone-else.rsa.pub"))
    with pytest.raises(UnknownKey, match=r"someone-else\.rsa\.pub"):
        read_index_archive(blob, keys_for(make_key()), what="idx")


def test_tampered_index() -> None:
    """The index's content changed after signing, in a well-formed archive (re-gzipped,
    so gzip and tar read it fine): only the signature can tell."""
    key = make_key()
    records = _records()

    def index_gz(text: bytes) -> bytes:
        return _gz(_tar([(_file("DESCRIPTION", b"test repo"), b"test repo"),
                         (_file("APKINDEX", text), text)], cut=False))

    original = "\n".join(records).encode() + b"\n"
    tampered = original.replace(b"V:1.0-r1\n", b"V:9.9-r9\n", 1)
    assert tampered != original
    sig = key.sign(index_gz(original), "RSA")
    signature = _gz(_tar([(_file(f".SIGN.RSA.{key.name}", sig), sig)], cut=True))
    # The same signature over the untouched content verifies: the splice is sound.
    assert read_index_archive(signature + index_gz(original), keys_for(key),
                              what="idx").apkindex == original
    with pytest.raises(BadSignature):
        read_index_archive(signature + index_gz(tampered), keys_for(key), what="idx")


def test_index_with_a_wrong_key_of_the_right_name() -> None:
    real = make_key()
    blob = build_index(_records(), Key(real.name, make_key("forger.rsa.pub").private))
    with pytest.raises(BadSignature):
        read_index_archive(blob, keys_for(real), what="idx")


def test_v3_index_is_refused() -> None:
    with pytest.raises(RepositoryError, match="apk v3"):
        read_index_archive(b"ADBd....", keys_for(), what="idx")


def test_index_records_must_be_complete() -> None:
    with pytest.raises(PackageDBError, match="no C: field"):
        parse_apkindex(b"P:a\nV:1\n\n")
    with pytest.raises(PackageDBError, match="unsafe package name"):
        parse_apkindex(b"C:" + q1(b"x").encode() + b"\nP:../a\nV:1\n\n")
    assert encode_checksum(hashlib.sha1(b"x").digest()) == q1(b"x")
