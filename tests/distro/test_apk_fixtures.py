"""The apk fixtures (tests/fixtures/apkrepo.py) and the version table (tests/data/apk_versions.txt)
are the oracle for suture's apk engine, so they are checked here on their own: signatures verify
with openssl (and the ``cryptography`` package), checksums match the streams they name, the
installed database follows the package contents, the table parses and is self-consistent.

When a real apk-tools is at hand (``SUTURE_TEST_APK2`` / ``SUTURE_TEST_APK3`` naming an ``apk``
binary, or an ``apk`` on PATH), the fixtures are also checked against it: ``apk verify``, ``apk
index``, ``apk add --initdb`` into a scratch root (database, ``scripts.tar`` and ``triggers``
byte for byte), the broken repositories refused, and every row of the table through
``apk version -t``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import itertools
import os
import re
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from suture.oci.fs import read_file
from tests.fixtures.apkrepo import (
    SCRIPT_TYPES,
    V3_INDEX,
    V3_PACKAGE,
    V3_PACKAGE_PLAIN,
    ApkDir,
    ApkFile,
    ApkHardlink,
    ApkKey,
    ApkKeys,
    ApkRepoServer,
    ApkSpec,
    ApkSymlink,
    apk_image,
    apk_version_compare,
    apk_version_valid,
    assemble_apk,
    build_apk,
    build_repo,
    gunzip,
    gzip_members,
    installed_db,
    q1,
    read_apk,
    read_index,
    read_tar,
    scripts_tar,
    triggers_db,
    write_oci,
    write_v3_repo,
    xattr_checksum,
)
from tests.fixtures.images import layer_tars

TABLE = Path(__file__).resolve().parents[1] / "data" / "apk_versions.txt"
OPS = {"<": -1, "=": 0, ">": 1}

MUSL = ApkSpec("musl", "1.2.5-r0", provides=["so:libc.musl-x86_64.so.1=1"],
               files={"lib/ld-musl-x86_64.so.1": ApkFile(b"\x7fELF musl", 0o755),
                      "lib/libc.musl-x86_64.so.1": ApkSymlink("ld-musl-x86_64.so.1")})
BUSYBOX = ApkSpec(
    "busybox", "1.36.1-r29", depends=["so:libc.musl-x86_64.so.1"],
    provides=["cmd:busybox=1.36.1-r29", "/bin/sh"],
    files={"bin/busybox": ApkFile(b"busybox", 0o755), "bin/sh": ApkSymlink("/bin/busybox"),
           "etc/securetty": b"tty1\n", "var/cache/misc/.keep_dir": b""},
    scripts={"post-install": b"#!/bin/sh\nexit 0\n", ".post-upgrade": b"#!/bin/sh\nexit 0\n"},
    triggers=["/bin", "/usr/bin"], replaces=["busybox-initscripts"], replaces_priority=10)
HELLO = ApkSpec(
    "hello", "1.0-r0",
    depends=["so:libc.musl-x86_64.so.1", "!hello-old", "busybox>=1.36"],
    provides=["cmd:hello=1.0-r0"], provider_priority=100,
    scripts={".post-install": b"#!/bin/sh\necho hi\n", "pre-upgrade": b"#!/bin/sh\n"},
    files={"usr/bin/hello": ApkFile(b"#!/bin/sh\necho hello\n", 0o755),
           "usr/bin/hi": ApkSymlink("hello"),
           "usr/bin/hello2": ApkHardlink("usr/bin/hello"),
           "usr/bin/suid": ApkFile(b"suid", 0o4755),
           "usr/bin-extra/x": b"x",
           "etc/hello.conf": ApkFile(b"x=1\n", 0o640, 0, 42,
                                     {"user.foo": b"bar", "user.aaa": b"\x00\x01"}),
           "var/empty": ApkDir(0o700),
           "var/lib/hello": ApkDir(0o750, 100, 101, {"user.d": b"dir"}),
           "usr/share/doc/hello/" + "long" * 30: b"a name longer than 100 bytes"})
OLDSTYLE = ApkSpec("oldstyle", "0.1-r0", datahash=False, files={"usr/share/oldstyle": b"old"})
META = ApkSpec("empty-meta", "1-r0", files={}, depends=["hello"], install_if=["hello", "musl"])


@pytest.fixture(scope="module")
def key(apk_keys: ApkKeys) -> ApkKey:
    return apk_keys.good


# ---------------------------------------------------------------- packages


def test_package_is_three_gzip_streams_that_form_one_tar(key: ApkKey, tmp_path: Path) -> None:
    path = build_apk(HELLO, key, tmp_path)
    assert path.name == "hello-1.0-r0.apk"
    raw = path.read_bytes()
    streams = gzip_members(raw)
    assert len(streams) == 3 and b"".join(streams) == raw
    for s in streams:
        assert s[:4] == b"\x1f\x8b\x08\x00" and s[4:8] == b"\0\0\0\0"  # gzip -n
    sig_tar, control_tar, data_tar = (gunzip(s) for s in streams)
    # signature and control are cut (no end-of-archive); data is a whole GNU tar
    assert read_tar(sig_tar)[1] is False and read_tar(control_tar)[1] is False
    members, ended = read_tar(data_tar)
    assert ended and len(data_tar) % 10240 == 0
    # a plain tar reader sees one archive: signature, control, then data, in this order
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(raw))) as tar:
        names = tar.getnames()
    assert names[:4] == [".SIGN.RSA." + key.pub_name, ".PKGINFO", ".post-install",
                         ".pre-upgrade"]
    assert names[4:] == [m.name.rstrip("/") for m in members]
    # data entries in `LC_ALL=C sort` order, every parent directory present
    paths = [m.name.rstrip("/") for m in members]
    assert paths == sorted(paths, key=lambda p: p.encode())
    assert all(p.rpartition("/")[0] in paths for p in paths if "/" in p)


def test_signature_covers_the_compressed_control_stream(key: ApkKey, apk_keys: ApkKeys,
                                                        tmp_path: Path) -> None:
    info = read_apk(build_apk(HELLO, key, tmp_path))
    ((name, signature),) = info.signatures
    assert name == f".SIGN.RSA.{key.pub_name}"
    assert key.verify(info.control, signature, "sha1")
    assert not key.verify(info.control + b"x", signature, "sha1")
    assert not apk_keys.other.verify(info.control, signature, "sha1")
    pytest.importorskip("cryptography")  # a second verifier, independent of openssl's CLI
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    public = serialization.load_pem_public_key(key.public_pem)
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(signature, info.control, padding.PKCS1v15(), hashes.SHA1())


def test_sha256_signature_and_unsigned_package(key: ApkKey, tmp_path: Path) -> None:
    info = read_apk(build_apk(HELLO, key, tmp_path / "a", sign="sha256"))
    ((name, signature),) = info.signatures
    assert name == f".SIGN.RSA256.{key.pub_name}"
    assert key.verify(info.control, signature, "sha256")
    assert not key.verify(info.control, signature, "sha1")
    unsigned = read_apk(build_apk(HELLO, None, tmp_path / "b", sign=None))
    assert unsigned.signatures == () and len(gzip_members(unsigned.raw)) == 2
    # the identity does not depend on the signature
    assert unsigned.checksum == info.checksum


def test_pkginfo_datahash_and_checksums(key: ApkKey) -> None:
    built = assemble_apk(HELLO, key)
    info = read_apk(built.raw)
    assert info.field("datahash") == hashlib.sha256(info.data).hexdigest() == built.datahash
    assert info.checksum == built.checksum == q1(hashlib.sha1(info.control).digest())
    assert built.checksum.startswith("Q1") and len(built.checksum) == 30
    assert info.field("pkgname") == "hello" and info.field("pkgver") == "1.0-r0"
    assert info.fields("depend") == list(HELLO.depends)
    assert info.fields("provides") == ["cmd:hello=1.0-r0"]
    # size = regular file bytes, hard links once
    files = [c for c in HELLO.files.values()  # type: ignore[union-attr]
             if isinstance(c, ApkFile | bytes)]
    expected = sum(len(c.data if isinstance(c, ApkFile) else c) for c in files)
    assert int(info.field("size")) == built.installed_size == expected
    for m in info.members:
        csum = m.pax_value("APK-TOOLS.checksum.SHA1")
        if m.typeflag == b"0":
            assert csum == hashlib.sha1(m.data).hexdigest().encode()
        elif m.typeflag == b"2":
            assert csum == hashlib.sha1(m.linkname.encode()).hexdigest().encode()
        else:
            assert csum is None
        assert m.pax_value("ctime") == b"0" and m.pax_value("atime") == b"0"
    by_name = {m.name: m for m in info.members}
    long = "usr/share/doc/hello/" + "long" * 30
    assert by_name[long].data == b"a name longer than 100 bytes"
    assert by_name["usr/bin/hello2"].typeflag == b"1"
    assert by_name["usr/bin/hello2"].linkname == "usr/bin/hello"
    conf = by_name["etc/hello.conf"]
    assert (conf.mode, conf.uid, conf.gid) == (0o640, 0, 42)
    assert conf.pax_value("SCHILY.xattr.user.foo") == b"bar"


def test_package_without_datahash_is_signed_over_control_and_data(key: ApkKey) -> None:
    info = read_apk(assemble_apk(OLDSTYLE, key).raw)
    assert info.field("datahash") == ""
    ((_, signature),) = info.signatures
    assert key.verify(info.control + info.data, signature)
    assert not key.verify(info.control, signature)
    assert info.identity == hashlib.sha1(info.control + info.data).digest()


def test_builds_are_deterministic(key: ApkKey) -> None:
    one, two = assemble_apk(HELLO, key), assemble_apk(HELLO, key)
    assert one.raw == two.raw  # RSA PKCS#1 v1.5 signatures are deterministic too
    assert assemble_apk(HELLO.with_(version="1.0-r1"), key).checksum != one.checksum


def test_hard_link_groups_store_content_once() -> None:
    spec = ApkSpec("links", "1-r0", files={"b/target": b"data",
                                           "a/link": ApkHardlink("b/target")})
    info = read_apk(assemble_apk(spec, None, sign=None).raw)
    by_name = {m.name: m for m in info.members}
    # GNU tar stores the path that sorts first as the file
    assert by_name["a/link"].typeflag == b"0" and by_name["a/link"].data == b"data"
    assert by_name["b/target"].typeflag == b"1" and by_name["b/target"].linkname == "a/link"
    assert int(info.field("size")) == 4


# ---------------------------------------------------------------- repositories


def test_repository_index_matches_its_packages(key: ApkKey, tmp_path: Path) -> None:
    older = HELLO.with_(version="0.9-r3")
    repo = build_repo(tmp_path, [HELLO, MUSL, older, BUSYBOX], key)
    assert repo.index_path == tmp_path / "x86_64" / "APKINDEX.tar.gz"
    sigs, sig_stream, index_stream, files = read_index(repo.index_path)
    assert list(files) == ["DESCRIPTION", "APKINDEX"]
    ((name, signature),) = sigs
    assert name == f".SIGN.RSA.{key.pub_name}"
    assert key.verify(index_stream, signature, "sha1")
    assert repo.index_path.read_bytes() == sig_stream + index_stream
    assert read_tar(gunzip(index_stream))[1] is True  # apk index ends the tar
    records = [r for r in files["APKINDEX"].decode().split("\n\n") if r]
    seen = []
    for record in records:
        fields = dict(line.split(":", 1) for line in record.splitlines())
        path = repo.arch_dir / f"{fields['P']}-{fields['V']}.apk"
        raw = path.read_bytes()
        info = read_apk(raw)
        assert fields["C"] == q1(hashlib.sha1(info.control).digest())
        assert int(fields["S"]) == len(raw)
        assert fields["I"] == info.field("size")
        assert [line[0] for line in record.splitlines()] == [
            c for c in "CPVASITULomtckDpi" if c in fields]
        seen.append((fields["P"], fields["V"]))
    assert seen == [("busybox", "1.36.1-r29"), ("hello", "0.9-r3"), ("hello", "1.0-r0"),
                    ("musl", "1.2.5-r0")]
    assert "D:so:libc.musl-x86_64.so.1 !hello-old busybox>=1.36\n" in files["APKINDEX"].decode()


def test_broken_repository_variants(key: ApkKey, apk_keys: ApkKeys, tmp_path: Path) -> None:
    other = apk_keys.other

    def index(name: str, **options: object) -> tuple[tuple[tuple[str, bytes], ...], bytes]:
        repo = build_repo(tmp_path / name, [HELLO], key, **options)  # type: ignore[arg-type]
        sigs, _, stream, _ = read_index(repo.index_path)
        return sigs, stream

    sigs, stream = index("sha256", sign="sha256")
    assert sigs[0][0] == f".SIGN.RSA256.{key.pub_name}"
    assert key.verify(stream, sigs[0][1], "sha256")
    sigs, stream = index("tampered", tamper_index=True)
    assert not key.verify(stream, sigs[0][1])
    assert b"T:tampered after signing" in gunzip(stream)
    assert index("unsigned", sign=None)[0] == ()
    sigs, stream = index("other", signer=other)
    assert sigs[0][0] == f".SIGN.RSA.{other.pub_name}" and other.verify(stream, sigs[0][1])
    sigs, stream = index("forged", signer=other, sign_name=key.pub_name)
    assert sigs[0][0] == f".SIGN.RSA.{key.pub_name}" and not key.verify(stream, sigs[0][1])
    repo = build_repo(tmp_path / "mismatch", [HELLO, MUSL], key, mismatch=["hello"])
    text = repo.index_text.decode()
    bad = read_apk(repo.arch_dir / "hello-1.0-r0.apk")
    good = read_apk(repo.arch_dir / "musl-1.2.5-r0.apk")
    assert f"C:{bad.checksum}\n" not in text and f"C:{good.checksum}\n" in text
    assert key.verify(bad.control, bad.signatures[0][1])  # validly signed, just not indexed


# ---------------------------------------------------------------- installed database


def test_installed_db_records(key: ApkKey) -> None:
    text = installed_db([HELLO, MUSL], key).decode()
    hello, musl, tail = text.split("\n\n")
    assert tail == ""
    built = assemble_apk(HELLO, key)
    lines = hello.splitlines()
    assert lines[:3] == [f"C:{built.checksum}", "P:hello", "V:1.0-r0"]
    assert f"S:{built.size}" in lines and f"I:{built.installed_size}" in lines
    assert "k:100" in lines and "p:cmd:hello=1.0-r0" in lines
    assert lines.index("F:etc") > lines.index("p:cmd:hello=1.0-r0")
    conf = lines.index("R:hello.conf")
    xcsum = q1(xattr_checksum({"user.foo": b"bar", "user.aaa": b"\x00\x01"}) or b"")
    assert lines[conf + 1] == f"a:0:42:640:{xcsum}"
    conf_z = q1(hashlib.sha1(b"x=1\n").digest())
    assert lines[conf + 2] == f"Z:{conf_z}"
    hi = lines.index("R:hi")
    assert lines[hi + 1:hi + 3] == ["a:0:0:777", f"Z:{q1(hashlib.sha1(b'hello').digest())}"]
    h2 = lines.index("R:hello2")
    assert lines[h2 + 2] == lines[lines.index("R:hello") + 2]  # hard link: the file's Z
    assert "F:var/empty" in lines and lines[lines.index("F:var/empty") + 1] == "M:0:0:700"
    assert lines[lines.index("F:var/lib/hello") + 1].startswith("M:100:101:750:Q1")
    assert "F:usr/bin" in lines and lines[lines.index("F:usr/bin") + 1] == "R:hello"
    assert musl.splitlines()[1] == "P:musl"
    bb = installed_db([BUSYBOX], key).decode().splitlines()
    assert bb.index("r:busybox-initscripts") == bb.index("q:10") - 1 < bb.index("F:bin")
    assert "R:.keep_dir" not in bb


def test_scripts_tar_and_triggers(key: ApkKey) -> None:
    built = [assemble_apk(s, key) for s in (MUSL, BUSYBOX, HELLO)]
    members, ended = read_tar(scripts_tar(built))
    assert ended
    assert [m.name for m in members] == [
        f"busybox-1.36.1-r29.{built[1].checksum}.post-install",
        f"busybox-1.36.1-r29.{built[1].checksum}.post-upgrade",
        f"busybox-1.36.1-r29.{built[1].checksum}.trigger",
        f"hello-1.0-r0.{built[2].checksum}.post-install",
        f"hello-1.0-r0.{built[2].checksum}.pre-upgrade"]
    assert all(m.mode == 0o755 and m.uname == "root" for m in members)
    assert all(m.name.rsplit(".", 1)[1] in SCRIPT_TYPES for m in members)
    assert triggers_db(built) == f"{built[1].checksum} /bin /usr/bin\n".encode()


# ---------------------------------------------------------------- images and serving


def test_apk_image_flavors_and_layers(key: ApkKey, tmp_path: Path) -> None:
    paths = [build_apk(s, key, tmp_path / "pkgs") for s in (MUSL, BUSYBOX, HELLO)]
    repos = ["https://dl-cdn.alpinelinux.org/alpine/v3.20/main",
             "@edge https://dl-cdn.alpinelinux.org/alpine/edge/main"]
    image = apk_image(paths, repos, key, flavor="alpine")
    assert b"ID=alpine\n" in read_file(image, "etc/os-release")
    assert b"VERSION_ID=3.20.3\n" in read_file(image, "etc/os-release")
    assert read_file(image, "etc/apk/repositories").decode().splitlines() == repos
    assert read_file(image, "etc/apk/arch") == b"x86_64\n"
    assert read_file(image, "etc/apk/world") == b"busybox\nhello\nmusl\n"
    assert read_file(image, f"etc/apk/keys/{key.pub_name}") == key.public_pem
    assert read_file(image, "lib/apk/db/installed") == installed_db(paths)
    assert read_file(image, "lib/apk/db/scripts.tar") == scripts_tar(paths)
    assert read_file(image, "usr/bin/hello") == b"#!/bin/sh\necho hello\n"
    with tarfile.open(fileobj=io.BytesIO(layer_tars(image)[0])) as tar:
        names = set(tar.getnames())
        assert tar.getmember("bin/sh").issym()  # busybox's link, not the stub
        assert tar.getmember("usr/bin/suid").mode == 0o4755
        assert "SCHILY.xattr.user.foo" in tar.getmember("etc/hello.conf").pax_headers
    assert "sbin/apk" in names and "var/cache/misc/.keep_dir" not in names
    for flavor, ident in (("wolfi", b"ID=wolfi\n"), ("chainguard", b"ID=chainguard\n")):
        assert ident in read_file(apk_image(paths, repos, key, flavor=flavor), "etc/os-release")
    distroless = apk_image(paths[:1], repos, key, flavor="distroless")
    with tarfile.open(fileobj=io.BytesIO(layer_tars(distroless)[0])) as tar:
        assert "sbin/apk" not in tar.getnames() and "bin/sh" not in tar.getnames()
    two = apk_image(paths[:2], repos, key, upper=paths[2:])
    _, upper = layer_tars(two)
    with tarfile.open(fileobj=io.BytesIO(upper)) as tar:
        assert "usr/bin/hello" in tar.getnames() and "bin/busybox" not in tar.getnames()
    assert read_file(two, "lib/apk/db/installed") == installed_db(paths)
    ref = write_oci(two, tmp_path / "layout", "two")
    assert ref == f"oci:{tmp_path / 'layout'}:two" and (tmp_path / "layout/index.json").exists()


def test_repo_server_serves_and_injects_faults(apk_repo_server: ApkRepoServer,
                                               key: ApkKey) -> None:
    repo = apk_repo_server.publish([MUSL], key, path="main")
    url = apk_repo_server.sub("main") + "/x86_64/APKINDEX.tar.gz"
    with urllib.request.urlopen(url) as response:
        assert response.read() == repo.index_path.read_bytes()
    apk_repo_server.fail("APKINDEX.tar.gz", status=404)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url)
    assert err.value.code == 404
    assert [r.status for r in apk_repo_server.requests_for("APKINDEX")] == [200, 404]


def test_v3_samples_are_adb_not_gzip(tmp_path: Path) -> None:
    assert V3_PACKAGE[:4] == V3_INDEX[:4] == b"ADBd"
    assert V3_PACKAGE_PLAIN[:8] == b"ADB.pckg"
    with pytest.raises(Exception):  # noqa: B017 - any error: it is not gzip
        gzip_members(V3_PACKAGE)
    arch_dir = write_v3_repo(tmp_path)
    assert (arch_dir / "APKINDEX.tar.gz").read_bytes() == V3_INDEX
    apk = _real_apk("3")
    if apk is not None:
        for blob in (V3_PACKAGE, V3_PACKAGE_PLAIN, V3_INDEX):
            path = tmp_path / "blob"
            path.write_bytes(blob)
            dump = _run(apk, "adbdump", str(path))
            assert dump.returncode == 0 and "hello-v3" in dump.stdout


# ---------------------------------------------------------------- the version table


def _table() -> list[tuple[str, ...]]:
    rows = []
    for line in TABLE.read_text().splitlines():
        parts = line.split("#", 1)[0].split()
        if parts:
            rows.append(tuple(parts))
    return rows


def test_version_table_parses_and_is_consistent() -> None:
    rows = _table()
    common = [r for r in rows if len(r) == 3]
    dialect = [r for r in rows if len(r) == 4]
    invalid = [r for r in rows if len(r) == 2]
    assert len(common) >= 500 and len(rows) == len(common) + len(dialect) + len(invalid)
    assert all(r[1] in OPS for r in common) and all(r[0] in ("apk2", "apk3") and r[2] in OPS
                                                    for r in dialect)
    assert {r[0] for r in invalid} <= {"invalid", "invalid-apk2", "invalid-apk3"}
    for a, op, b in common:
        for d in ("apk2", "apk3"):
            assert apk_version_valid(a, d) and apk_version_valid(b, d), (a, b)
            assert apk_version_compare(a, b, d) == OPS[op], (d, a, op, b)
            assert apk_version_compare(b, a, d) == -OPS[op], (d, b, a)
    for d, a, op, b in dialect:
        assert apk_version_compare(a, b, d) == OPS[op], (d, a, op, b)
    for kind, v in invalid:
        want = {"invalid": (False, False), "invalid-apk3": (True, False),
                "invalid-apk2": (False, True)}[kind]
        assert (apk_version_valid(v, "apk2"), apk_version_valid(v, "apk3")) == want, v
    # the grammar's suffix order, and transitivity over every version of the common rows
    order = ["1.0_alpha", "1.0_beta", "1.0_pre", "1.0_rc", "1.0", "1.0_cvs", "1.0_svn",
             "1.0_git", "1.0_hg", "1.0_p"]
    for a, b in itertools.combinations(order, 2):
        assert apk_version_compare(a, b, "apk2") == apk_version_compare(a, b, "apk3") == -1
    # one total order holds every common row (no cycles)
    versions = sorted({v for a, _, b in common for v in (a, b)})
    for d in ("apk2", "apk3"):
        ranked = sorted(versions, key=functools.cmp_to_key(
            lambda x, y, d=d: apk_version_compare(x, y, d)))  # type: ignore[misc]
        rank = {v: i for i, v in enumerate(ranked)}
        assert all(rank[a] < rank[b] for a, op, b in common if op == "<")
        assert all(rank[a] > rank[b] for a, op, b in common if op == ">")


# ---------------------------------------------------------------- the real apk-tools (optional)


def _real_apk(major: str) -> str | None:
    path = os.environ.get(f"SUTURE_TEST_APK{major}") or shutil.which("apk")
    if not path:
        return None
    proc = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return path if re.match(rf"apk-tools {major}\.", proc.stdout) else None


@pytest.fixture
def apk2() -> str:
    path = _real_apk("2")
    if path is None:
        pytest.skip("no apk-tools 2 (set SUTURE_TEST_APK2 to an apk binary)")
    return path


def _run(apk: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([apk, *args], capture_output=True, text=True, check=False,
                          env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})


def test_real_apk_installs_what_the_fixtures_describe(apk2: str, key: ApkKey,
                                                      tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(key.public_path, keys)
    specs = [MUSL, BUSYBOX, HELLO, OLDSTYLE, META]
    paths = [build_apk(s, key, tmp_path / "pkgs") for s in specs]
    paths.append(build_apk(ApkSpec("wolfi-thing", "2.0-r3"), key, tmp_path / "pkgs",
                           sign="sha256"))
    for p in paths:
        assert _run(apk2, "verify", "--keys-dir", str(keys), str(p)).returncode == 0
    repo = build_repo(tmp_path / "repo", paths, key, sign="sha256")
    out = tmp_path / "index.tar.gz"
    assert _run(apk2, "index", "--keys-dir", str(keys), "-d", "v3.20.3-0-gsuture", "-o",
                str(out), *map(str, repo.packages)).returncode == 0
    assert gunzip(gzip_members(out.read_bytes())[0]) == gunzip(read_index(repo.index_path)[2])
    root = tmp_path / "root"
    root.mkdir()
    proc = _run(apk2, "add", "--root", str(root), "--initdb", "--keys-dir", str(keys),
                "--repository", str(tmp_path / "repo"), "--no-scripts", "--no-cache",
                "--arch", "x86_64", "empty-meta", "oldstyle", "wolfi-thing")
    assert proc.returncode == 0, proc.stderr
    db = root / "lib/apk/db"
    assert (db / "installed").read_bytes() == installed_db(repo.packages)
    installed_order = [repo.arch_dir / f"{n}.apk" for n in
                       ("musl-1.2.5-r0", "busybox-1.36.1-r29", "hello-1.0-r0")]
    assert (db / "scripts.tar").read_bytes() == scripts_tar(installed_order)
    assert (db / "triggers").read_bytes() == triggers_db(repo.packages)


@pytest.mark.parametrize("options,message", [
    ({"sign": None}, "UNTRUSTED signature"),
    ({"tamper_index": True}, "BAD signature"),
    ({"signer": "other"}, "UNTRUSTED signature"),
    ({"signer": "other", "sign_name": "good"}, "BAD signature"),
    ({"mismatch": ["hello"]}, "BAD signature"),
])
def test_real_apk_refuses_the_broken_repositories(apk2: str, apk_keys: ApkKeys, tmp_path: Path,
                                                  options: dict[str, object],
                                                  message: str) -> None:
    key = apk_keys.good
    opts = dict(options)
    if opts.get("signer") == "other":
        opts["signer"] = apk_keys.other
    if opts.get("sign_name") == "good":
        opts["sign_name"] = key.pub_name
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(key.public_path, keys)
    build_repo(tmp_path / "repo", [HELLO.with_(depends=())], key, **opts)  # type: ignore[arg-type]
    root = tmp_path / "root"
    root.mkdir()
    proc = _run(apk2, "add", "--root", str(root), "--initdb", "--keys-dir", str(keys),
                "--repository", str(tmp_path / "repo"), "--no-scripts", "--no-cache",
                "--arch", "x86_64", "hello")
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr


@pytest.mark.parametrize("major", ["2", "3"])
def test_real_apk_agrees_with_the_version_table(major: str) -> None:
    apk = _real_apk(major)
    if apk is None:
        pytest.skip(f"no apk-tools {major} (set SUTURE_TEST_APK{major} to an apk binary)")
    dialect = f"apk{major}"
    checks = [(r[0], r[1], r[2]) for r in _table() if len(r) == 3]
    checks += [(r[1], r[2], r[3]) for r in _table() if len(r) == 4 and r[0] == dialect]
    wrong = [f"{a} {op} {b}: apk says {got}" for a, op, b in checks
             if (got := _run(apk, "version", "-t", "--", a, b).stdout.strip()) != op]
    assert wrong == []
    invalid = {r[1] for r in _table() if len(r) == 2 and r[0] in
               ("invalid", "invalid-apk2" if major == "2" else "invalid-apk3")}
    valid = {r[1] for r in _table() if len(r) == 2} - invalid
    flagged = set(_run(apk, "version", "-c", "--", *sorted(invalid | valid)).stdout.split())
    assert flagged == invalid


def test_real_apk_reads_an_image_database(apk2: str, key: ApkKey, tmp_path: Path) -> None:
    """The database in an apk_image is one apk-tools accepts: ``apk info`` lists it and
    ``apk audit`` finds nothing changed on the extracted root."""
    paths = [build_apk(s, key, tmp_path / "pkgs") for s in (MUSL, BUSYBOX, HELLO)]
    image = apk_image(paths, ["https://example.invalid/main"], key, flavor="alpine")
    root = tmp_path / "root"
    for layer in layer_tars(image):
        with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
            tar.extractall(root, filter="fully_trusted")
    proc = _run(apk2, "--root", str(root), "info")
    assert proc.returncode == 0 and set(proc.stdout.split()) == {"busybox", "hello", "musl"}
    audit = _run(apk2, "--root", str(root), "audit", "--system")
    assert audit.returncode == 0 and audit.stdout.strip() == "", audit.stdout + audit.stderr
