"""The apk database files: installed, world, triggers, scripts.tar, protected paths."""

from __future__ import annotations

import io
import tarfile

import pytest

from suture.distro.apk.checksum import decode_checksum, encode_checksum, q1, xattr_checksum
from suture.distro.apk.deps import Dependency, parse_dependencies
from suture.distro.apk.installed import (
    ALL,
    CHANGED,
    IGNORE,
    NONE,
    SYMLINKS_ONLY,
    Acl,
    ScriptMember,
    format_installed,
    format_scripts_tar,
    format_triggers,
    parse_installed,
    parse_protected_paths,
    parse_scripts_tar,
    parse_triggers,
    parse_world,
    protect_mode,
    render_record,
)
from suture.distro.apk.version import EQUAL, GREATER
from suture.errors import PackageDBError, PackageFormatError

MUSL = (
    "C:Q1jiOV7XQrHaUA9Ht3bJc4rs2zzPo=\n"
    "P:musl\n"
    "V:1.2.5-r0\n"
    "A:x86_64\n"
    "S:411323\n"
    "I:655360\n"
    "T:the musl c library (libc) implementation\n"
    "U:https://musl.libc.org/\n"
    "L:MIT\n"
    "o:musl\n"
    "m:Natanael Copa <ncopa@alpinelinux.org>\n"
    "t:1712149126\n"
    "c:ec6a1b6b3f4bdb8e3c6a47d3d8c7f3d1b1e9f1b0\n"
    "p:so:libc.musl-x86_64.so.1=1\n"
    "F:lib\n"
    "R:ld-musl-x86_64.so.1\n"
    "a:0:0:755\n"
    "Z:Q1L0N0m8fAyYR3v0e9P4HOMiLPV2I=\n"
    "R:libc.musl-x86_64.so.1\n"
    "a:0:0:777\n"
    "Z:Q17yJ3JFNypA4mxhJJr0ou6CzsJVI=\n"
)
BUSYBOX = (
    "C:Q1Zgv1Vq3vTYh3N2Q6mgpaYnAbLbw=\n"
    "P:busybox\n"
    "V:1.36.1-r29\n"
    "A:x86_64\n"
    "S:509868\n"
    "I:958464\n"
    "T:Size optimized toolbox of many common UNIX utilities\n"
    "U:https://busybox.net/\n"
    "L:GPL-2.0-only\n"
    "o:busybox\n"
    "D:so:libc.musl-x86_64.so.1\n"
    "p:/bin/sh cmd:busybox=1.36.1-r29 cmd:sh=1.36.1-r29\n"
    "r:busybox-initscripts\n"
    "q:100\n"
    "s:edge\n"
    "x:an unknown field kept as is\n"
    "F:bin\n"
    "R:busybox\n"
    "a:0:0:755\n"
    "Z:Q1WGZ6wv3t0ThDfYkVYyCXGAy0fBQ=\n"
    "F:etc\n"
    "F:etc/secfixes.d\n"
    "M:0:101:2750:Q1AAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
    "R:busybox\n"
    "Z:Q1a2b3c4d5e6f7g8h9i0jklmnopqrs=\n"
    "F:tmp\n"
    "M:0:0:1777\n"
)
DB = (MUSL + "\n" + BUSYBOX + "\n").encode()


def test_parse_fields_files_and_acls() -> None:
    musl, busybox = parse_installed(DB)
    assert (musl.name, musl.version, musl.arch) == ("musl", "1.2.5-r0", "x86_64")
    assert musl.identity == "Q1jiOV7XQrHaUA9Ht3bJc4rs2zzPo="
    assert musl.provides == (Dependency("so:libc.musl-x86_64.so.1", EQUAL, "1"),)
    files = dict(musl.files())
    assert set(files) == {"lib/ld-musl-x86_64.so.1", "lib/libc.musl-x86_64.so.1"}
    assert files["lib/libc.musl-x86_64.so.1"].acl == Acl(0, 0, 0o777)
    assert busybox.depends == (Dependency("so:libc.musl-x86_64.so.1"),)
    assert [d.name for d in busybox.replaces] == ["busybox-initscripts"]
    assert busybox.replaces_priority == 100 and busybox.tag == "edge"
    assert busybox.get("x") == "an unknown field kept as is"
    secfixes = next(d for d in busybox.dirs if d.name == "etc/secfixes.d")
    assert secfixes.acl == Acl(0, 101, 0o2750, "Q1AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
    assert [d.name for d in busybox.dirs] == ["bin", "etc", "etc/secfixes.d", "tmp"]
    assert next(d for d in busybox.dirs if d.name == "tmp").files == ()


def test_written_back_byte_for_byte() -> None:
    packages = parse_installed(DB)
    assert format_installed(packages) == DB
    # A record rendered from its parts is the same text apk writes (known fields in
    # apk's order, unknown ones after them).
    musl = packages[0]
    assert render_record(musl) == MUSL


def test_render_orders_fields_as_apk() -> None:
    busybox = parse_installed(DB)[1]
    text = render_record(busybox)
    letters = [line[0] for line in text.splitlines()]
    header = letters[:letters.index("F")]
    assert header == ["C", "P", "V", "A", "S", "I", "T", "U", "L", "o", "D", "p", "r", "q",
                      "s", "x"]
    again = parse_installed(text.encode() + b"\n")[0]
    assert again == busybox


def test_with_fields_replaces_and_removes() -> None:
    musl = parse_installed(DB)[0]
    changed = musl.with_fields(V="1.2.5-r1", c=None)
    assert changed.version == "1.2.5-r1" and changed.get("c") == "" and changed.raw == ""
    assert render_record(changed).splitlines()[2] == "V:1.2.5-r1"


def test_missing_final_blank_line_and_crlf_free() -> None:
    packages = parse_installed(MUSL.encode())
    assert [p.name for p in packages] == ["musl"]


@pytest.mark.parametrize(("text", "message"), [
    ("P:a\nV:1\nR:file\n", "R: before any F:"),
    ("P:a\nV:1\nF:dir\nZ:Q1xx\n", "Z: before any R:"),
    ("P:a\nV:1\nF:dir\nR:x\na:0:0\n", "malformed ACL"),
    ("P:a\nV:1\nM:0:0:755\n", "M: outside"),
    ("P:a\nV:1\nthis is not a field\n", "malformed line"),
    ("V:1\nA:x86_64\n", "no package name"),
    ("P:a\nV:1\n\nP:a\nV:2\n", "listed twice"),
    ("P:a\nV:1\nD:b>=\n", "bad dependency"),
    ("P:a\nV:1\nF:d\nR:x\nT:late\n", "after the file list"),
    ("P:a\nV:1\nF:d\nR:a/b\n", "bad file name"),
])
def test_corrupt_databases_are_refused(text: str, message: str) -> None:
    with pytest.raises(PackageDBError, match=message) as err:
        parse_installed(text.encode(), source="/lib/apk/db/installed")
    assert err.value.path == "/lib/apk/db/installed"


def test_v3_database_is_refused_clearly() -> None:
    with pytest.raises(PackageDBError, match="apk v3"):
        parse_installed(b"ADB.\x00\x00\x00\x00")


def test_world() -> None:
    world = parse_world(b"alpine-base busybox>=1.36 curl@edge openssl=3.3.2-r0\n!bash\n")
    assert [str(d) for d in world] == ["alpine-base", "busybox>=1.36", "curl@edge",
                                      "openssl=3.3.2-r0", "!bash"]
    assert world[2].tag == "edge" and world[4].conflict
    assert world[1].mask == GREATER | EQUAL
    with pytest.raises(PackageDBError):
        parse_world(b"foo>=\n")


def test_dependencies() -> None:
    deps = parse_dependencies("so:libc.musl-x86_64.so.1 cmd:sh pc:zlib>=1.2 !foo<2 "
                              "bar~1.2 baz><Q1abc=")
    assert [str(d) for d in deps] == ["so:libc.musl-x86_64.so.1", "cmd:sh", "pc:zlib>=1.2",
                                     "!foo<2", "bar~1.2", "baz><Q1abc="]
    assert deps[2].satisfied_by("pc:zlib", "1.3")
    assert not deps[2].satisfied_by("pc:zlib", None)  # an unversioned provide
    assert deps[0].satisfied_by("so:libc.musl-x86_64.so.1", None)
    assert deps[4].satisfied_by("bar", "1.2.7")
    assert deps[5].satisfied_by("baz", "9", identity="Q1abc=")
    for bad in ("foo@tag", "foo>=1.0_bad", "=1"):
        with pytest.raises(PackageFormatError):
            parse_dependencies(bad)


def test_triggers_round_trip() -> None:
    data = b"Q1abc= /usr/share/fonts/* /etc/fonts\nQ1def= /bin /sbin\n"
    entries = parse_triggers(data)
    assert entries == [("Q1abc=", ("/usr/share/fonts/*", "/etc/fonts")),
                       ("Q1def=", ("/bin", "/sbin"))]
    assert format_triggers(entries) == data


def test_scripts_tar_round_trip_and_read_by_tarfile() -> None:
    members = [ScriptMember.make("busybox", "1.36.1-r29", "Q1Zgv1Vq3vTYh3N2Q6/gpaYnAbLbw=",
                                 "post-upgrade", b"#!/bin/sh\nexit 0\n", 1712149126),
               ScriptMember.make("musl", "1.2.5-r0", "Q1jiOV7XQ=", "trigger", b"x" * 600, 5)]
    data = format_scripts_tar(members)
    assert len(data) % 512 == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        infos = tar.getmembers()
        assert [i.name for i in infos] == [m.name for m in members]
        assert infos[0].mode == 0o755 and infos[0].uname == "root" and infos[0].mtime == 1712149126
    back = parse_scripts_tar(data)
    assert back == members
    assert back[0].action == "post-upgrade"
    assert back[0].identity == "Q1Zgv1Vq3vTYh3N2Q6/gpaYnAbLbw="
    assert format_scripts_tar(back) == data
    assert parse_scripts_tar(b"") == []


def test_protected_paths() -> None:
    rules = parse_protected_paths([b"# a comment\n-etc/ignored\n+usr/local/conf\n",
                                   b"etc/ssl/*.pem\n"])
    assert protect_mode("etc", rules) == CHANGED
    assert protect_mode("etc/conf.d", rules) == CHANGED
    assert protect_mode("etc/init.d", rules) == SYMLINKS_ONLY
    assert protect_mode("etc/apk/keys", rules) == ALL
    assert protect_mode("etc/ignored/sub", rules) == IGNORE
    assert protect_mode("usr/local/conf", rules) == CHANGED
    assert protect_mode("usr/local", rules) == NONE
    assert protect_mode("usr/bin", rules) == NONE
    assert protect_mode("", rules) == NONE


def test_checksums() -> None:
    assert q1(b"") == "Q12jmj7l5rSw0yVb/vlWAYkK/YBwk="
    assert decode_checksum(q1(b"abc")).hex() == "a9993e364706816aba3e25717850c26c9cd0d89d"
    assert encode_checksum(bytes(32)).startswith("Q2")
    assert decode_checksum("d41d8cd98f00b204e9800998ecf8427e") == bytes.fromhex(
        "d41d8cd98f00b204e9800998ecf8427e")
    with pytest.raises(PackageFormatError):
        decode_checksum("Q1notbase64!")
    assert xattr_checksum({}) is None
    one = xattr_checksum({"user.b": b"2", "user.a": b"1"})
    assert one is not None and one.startswith("Q1")
    assert one == xattr_checksum({"user.a": b"1", "user.b": b"2"})
