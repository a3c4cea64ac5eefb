"""apt source lists: real-world samples in both formats, the standard suites, mirrors."""

from __future__ import annotations

import pytest

from suture.distro.dpkg.release import Keyring
from suture.distro.dpkg.repoerrors import SourcesError
from suture.distro.dpkg.sources import (
    SourceEntry,
    add_standard_suites,
    apply_mirrors,
    debian_security_suite,
    parse_deb822_sources,
    parse_sources_files,
    parse_sources_list,
)

# /etc/apt/sources.list.d/debian.sources of the debian:bookworm image.
DEBIAN_BOOKWORM = b"""\
Types: deb
# http://snapshot.debian.org/archive/debian/20240513T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
# http://snapshot.debian.org/archive/debian-security/20240513T000000Z
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

# /etc/apt/sources.list.d/ubuntu.sources of the ubuntu:24.04 image (header comment shortened).
UBUNTU_NOBLE = b"""\
## Ubuntu distribution repository
##
## The following settings can be adjusted to configure which packages to use from Ubuntu.
## Mirror your choices (except for URIs and Suites) in the security section below to
## ensure timely security updates.
##
## See the sources.list(5) manual page for further settings.
Types: deb
URIs: http://archive.ubuntu.com/ubuntu/
Suites: noble noble-updates noble-backports
Components: main universe restricted multiverse
Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg

## Ubuntu security updates. Aside from URIs and Suites,
## this should mirror your choices in the previous section.
Types: deb
URIs: http://security.ubuntu.com/ubuntu/
Suites: noble-security
Components: main universe restricted multiverse
Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg
"""

# /etc/apt/sources.list of the debian:buster image.
DEBIAN_BUSTER = b"""\
# deb http://snapshot.debian.org/archive/debian/20200607T000000Z buster main
deb http://deb.debian.org/debian buster main
# deb http://snapshot.debian.org/archive/debian-security/20200607T000000Z buster/updates main
deb http://security.debian.org/debian-security buster/updates main
# deb http://snapshot.debian.org/archive/debian/20200607T000000Z buster-updates main
deb http://deb.debian.org/debian buster-updates main
"""

# The start of /etc/apt/sources.list of the ubuntu:20.04 image.
UBUNTU_FOCAL = b"""\
# See http://help.ubuntu.com/community/UpgradeNotes for how to upgrade to
# newer versions of the distribution.
deb http://archive.ubuntu.com/ubuntu/ focal main restricted
# deb-src http://archive.ubuntu.com/ubuntu/ focal main restricted

## Major bug fix updates produced after the final release of the
## distribution.
deb http://archive.ubuntu.com/ubuntu/ focal-updates main restricted
# deb-src http://archive.ubuntu.com/ubuntu/ focal-updates main restricted
deb http://security.ubuntu.com/ubuntu/ focal-security main restricted
deb-src http://security.ubuntu.com/ubuntu/ focal-security main restricted
"""

# A third-party repository as its vendor documents it.
DOCKER = (b"deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.gpg] "
          b"https://download.docker.com/linux/debian bookworm stable\n")


def test_debian_bookworm_deb822():
    entries = parse_deb822_sources(DEBIAN_BOOKWORM, "/etc/apt/sources.list.d/debian.sources")
    assert [(e.type, e.uri, e.suite, e.components) for e in entries] == [
        ("deb", "http://deb.debian.org/debian", "bookworm", ("main",)),
        ("deb", "http://deb.debian.org/debian", "bookworm-updates", ("main",)),
        ("deb", "http://deb.debian.org/debian-security", "bookworm-security", ("main",)),
    ]
    assert {e.signed_by for e in entries} == {("/usr/share/keyrings/debian-archive-keyring.gpg",)}
    assert entries[0].origin == "/etc/apt/sources.list.d/debian.sources:1"
    assert entries[2].origin == "/etc/apt/sources.list.d/debian.sources:8"
    assert all(e.signed_by_key is None and e.architectures == () for e in entries)


def test_ubuntu_noble_deb822():
    entries = parse_deb822_sources(UBUNTU_NOBLE)
    assert [e.suite for e in entries] == ["noble", "noble-updates", "noble-backports",
                                          "noble-security"]
    assert entries[-1].uri == "http://security.ubuntu.com/ubuntu/"
    assert entries[0].components == ("main", "universe", "restricted", "multiverse")


def test_old_one_line_sources_list():
    entries = parse_sources_list(DEBIAN_BUSTER)
    assert [(e.uri, e.suite) for e in entries] == [
        ("http://deb.debian.org/debian", "buster"),
        ("http://security.debian.org/debian-security", "buster/updates"),
        ("http://deb.debian.org/debian", "buster-updates"),
    ]
    assert [e.origin for e in entries] == ["/etc/apt/sources.list:2", "/etc/apt/sources.list:4",
                                           "/etc/apt/sources.list:6"]
    focal = parse_sources_list(UBUNTU_FOCAL)
    assert [(e.type, e.suite) for e in focal] == [
        ("deb", "focal"), ("deb", "focal-updates"), ("deb", "focal-security"),
        ("deb-src", "focal-security")]
    assert not focal[-1].is_binary


def test_one_line_options():
    [docker] = parse_sources_list(DOCKER)
    assert docker.architectures == ("amd64",)
    assert docker.signed_by == ("/etc/apt/keyrings/docker.gpg",)
    assert (docker.suite, docker.components) == ("bookworm", ("stable",))
    [e] = parse_sources_list(
        b"deb [ arch=amd64,i386 trusted=yes check-valid-until=no lang=en arch+=arm64 ]"
        b" http://snapshot.debian.org/archive/debian/20240101T000000Z bookworm main contrib"
        b" # a comment\n")
    assert e.architectures == ("amd64", "i386")
    assert e.trusted is True and e.check_valid_until is False
    assert e.options == (("lang", "en"), ("arch+", "arm64"))
    assert e.option("lang") == "en" and e.option("pdiffs") is None
    assert e.components == ("main", "contrib")
    assert "[arch=amd64,i386 trusted=yes check-valid-until=no lang=en arch+=arm64]" in e.to_line()
    assert parse_sources_list(e.to_line().encode())[0] == e


def test_one_line_special_forms():
    [flat, cdrom] = parse_sources_list(
        b"deb http://repo.example/flat ./\n"
        b"deb cdrom:[Debian GNU/Linux 12.0.0 _Bookworm_ - Official amd64 DVD]/ bookworm main\n")
    assert flat.flat and flat.components == ()
    assert cdrom.uri == "cdrom:[Debian GNU/Linux 12.0.0 _Bookworm_ - Official amd64 DVD]/"


@pytest.mark.parametrize("line,message", [
    (b"rpm http://x/ a main", "unknown source type"),
    (b"deb http://x/", "expected a URI and a suite"),
    (b"deb http://x/ bookworm", "needs at least one component"),
    (b"deb http://x/ ./ main", "takes no components"),
    (b"deb [arch=amd64 http://x/ bookworm main", "unterminated"),
    (b"deb [arch] http://x/ bookworm main", "not name=value"),
    (b"deb [trusted=maybe] http://x/ bookworm main", "not yes or no"),
])
def test_one_line_errors_name_file_and_line(line, message):
    with pytest.raises(SourcesError, match=message) as info:
        parse_sources_list(b"# first\n" + line + b"\n", "/etc/apt/sources.list.d/x.list")
    assert (info.value.path, info.value.line) == ("/etc/apt/sources.list.d/x.list", 2)
    assert str(info.value).startswith("/etc/apt/sources.list.d/x.list:2: ")


def _inline(armored: bytes) -> bytes:
    lines = armored.decode().strip().splitlines()
    return "\n".join(" " + (ln if ln.strip() else ".") for ln in lines).encode()


def test_deb822_inline_signed_by_key(gpg_keys):
    armored = gpg_keys.good.public(armor=True)
    text = (b"Types: deb deb-src\nURIs: https://repo.example/debian\nSuites: stable\n"
            b"Components: main\nArchitectures: amd64 arm64\nSigned-By:\n" + _inline(armored)
            + b"\nCheck-Valid-Until: no\nSnapshot: 20240101T000000Z\n")
    entries = parse_deb822_sources(text)
    assert [e.type for e in entries] == ["deb", "deb-src"]
    e = entries[0]
    assert e.signed_by == () and e.signed_by_key is not None
    assert e.signed_by_key.startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n")
    assert e.signed_by_key.strip() == armored.strip()
    assert Keyring.from_bytes(e.signed_by_key).fingerprints == (gpg_keys.good.fpr,)
    assert e.architectures == ("amd64", "arm64")
    assert e.check_valid_until is False
    assert e.option("snapshot") == "20240101T000000Z"


def test_deb822_inline_key_sample_structure():
    # The shape of the sources.list(5) example, with the key body shortened.
    text = b"""\
Types: deb
URIs: https://deb.debian.org
Suites: stable
Components: main contrib non-free
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mDMEYCQjIxYJKwYBBAHaRw8BAQdAD/P5Nvvnvk66SxBBHDbhRml9ORg1WV5CvzKY
 CuMfoIS0BmFiY2RlZoiQBBMWCgA4FiEErCIG1VhKWMWo2yfAREZd5NfO31cFAmAk
 =Gh1w
 -----END PGP PUBLIC KEY BLOCK-----
"""
    [e] = parse_deb822_sources(text)
    assert e.signed_by_key == (b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n"
                               b"mDMEYCQjIxYJKwYBBAHaRw8BAQdAD/P5Nvvnvk66SxBBHDbhRml9ORg1WV5CvzKY\n"
                               b"CuMfoIS0BmFiY2RlZoiQBBMWCgA4FiEErCIG1VhKWMWo2yfAREZd5NfO31cFAmAk\n"
                               b"=Gh1w\n-----END PGP PUBLIC KEY BLOCK-----\n")
    assert "signed-by=<inline>" in e.to_line()


def test_deb822_enabled_no_and_multiple_values():
    text = b"""\
Types: deb
URIs: http://a.example/debian http://b.example/debian
Suites: bookworm bookworm-updates
Components: main

# disabled
Enabled: no
Types: deb
URIs: http://c.example/debian
Suites: bookworm
Components: main

types: deb
uris: http://d.example/debian
suites: ./
signed-by: 0123456789ABCDEF0123456789ABCDEF01234567
Enabled: yes
"""
    entries = parse_deb822_sources(text)
    assert [(e.uri.split("/")[2], e.suite) for e in entries] == [
        ("a.example", "bookworm"), ("a.example", "bookworm-updates"),
        ("b.example", "bookworm"), ("b.example", "bookworm-updates"),
        ("d.example", "./")]
    assert entries[-1].flat
    assert entries[-1].signed_by == ("0123456789ABCDEF0123456789ABCDEF01234567",)


@pytest.mark.parametrize("text,message", [
    (b"Types: deb\nURIs: http://x/\nComponents: main\n", "no 'Suites'"),
    (b"Types: deb\nURIs: http://x/\nSuites: a\n", "needs Components"),
    (b"Types: deb\nURIs: http://x/\nSuites: ./\nComponents: main\n", "takes no Components"),
    (b"Types: deb rpm\nURIs: http://x/\nSuites: a\nComponents: main\n", "unknown source type"),
    (b"Types: deb\nTypes: deb\n", "duplicate field"),
    (b" continuation\n", "continuation line outside a field"),
    (b"Types deb\n", "expected 'Field: value'"),
    (b"Enabled: perhaps\nTypes: deb\n", "not yes or no"),
])
def test_deb822_errors(text, message):
    with pytest.raises(SourcesError, match=message):
        parse_deb822_sources(text, "/etc/apt/sources.list.d/x.sources")


def test_parse_sources_files_follows_apt_order_and_names():
    files = {
        "/etc/apt/sources.list.d/zz.sources": DEBIAN_BOOKWORM,
        "etc/apt/sources.list.d/docker.list": DOCKER,
        "etc/apt/sources.list.d/old.list.save": b"deb http://old/ x main\n",
        "etc/apt/sources.list.d/disabled.sources.disabled": b"garbage",
        "etc/apt/sources.list.d/bad name.list": b"garbage",
        "etc/apt/sources.list.d/sub/x.list": b"garbage",
        "etc/apt/sources.list": DEBIAN_BUSTER,
        "etc/apt/preferences": b"garbage",
    }
    entries = parse_sources_files(files)
    assert [e.origin.rsplit(":", 1)[0] for e in entries] == (
        ["/etc/apt/sources.list"] * 3 + ["/etc/apt/sources.list.d/docker.list"]
        + ["/etc/apt/sources.list.d/zz.sources"] * 3)
    assert parse_sources_files({}) == []


# ---------------------------------------------------------------- standard suites


def _suites(entries: list[SourceEntry]) -> list[tuple[str, str]]:
    return [(e.uri, e.suite) for e in entries]


def test_bookworm_image_needs_nothing():
    entries = parse_deb822_sources(DEBIAN_BOOKWORM)
    out, added = add_standard_suites(entries, "debian", "bookworm")
    assert added == [] and out == entries


def test_distroless_debian_gets_everything():
    out, added = add_standard_suites([], "debian", "bookworm")
    assert out == added
    assert _suites(added) == [
        ("http://deb.debian.org/debian", "bookworm"),
        ("http://deb.debian.org/debian-security", "bookworm-security"),
        ("http://deb.debian.org/debian", "bookworm-updates"),
    ]
    assert all(e.components == ("main",) and e.origin == "added" for e in added)


def test_added_suites_copy_the_release_entry():
    [base] = parse_sources_list(b"deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian"
                                b" trixie main contrib non-free-firmware\n")
    out, added = add_standard_suites([base], "debian", "trixie")
    assert out[0] is base
    assert _suites(added) == [("http://deb.debian.org/debian-security", "trixie-security"),
                              ("http://mirror.example/debian", "trixie-updates")]
    for e in added:
        assert e.components == ("main", "contrib", "non-free-firmware")
        assert e.architectures == ("amd64",) and e.signed_by == ("/k.gpg",)


def test_old_debian_security_layout():
    assert debian_security_suite("buster") == "buster/updates"
    assert debian_security_suite("bullseye") == "bullseye-security"
    entries = parse_sources_list(DEBIAN_BUSTER)
    assert add_standard_suites(entries, "debian", "buster")[1] == []
    _, added = add_standard_suites(entries[:1], "debian", "buster")
    assert _suites(added) == [("http://deb.debian.org/debian-security", "buster/updates"),
                              ("http://deb.debian.org/debian", "buster-updates")]


def test_sid_has_no_security_or_updates():
    _, added = add_standard_suites([], "debian", "sid")
    assert _suites(added) == [("http://deb.debian.org/debian", "sid")]


def test_ubuntu_suites_use_the_release_uri():
    assert add_standard_suites(parse_deb822_sources(UBUNTU_NOBLE), "ubuntu", "noble")[1] == []
    [base] = parse_sources_list(b"deb http://mirror.example/ubuntu jammy main universe\n")
    _, added = add_standard_suites([base], "ubuntu", "jammy")
    assert _suites(added) == [("http://mirror.example/ubuntu", "jammy-security"),
                              ("http://mirror.example/ubuntu", "jammy-updates")]
    assert added[0].components == ("main", "universe")
    _, added = add_standard_suites([], "ubuntu", "noble", architecture="arm64")
    assert {e.uri for e in added} == {"http://ports.ubuntu.com/ubuntu-ports"}
    assert added[0].components == ("main", "restricted", "universe", "multiverse")


def test_deb_src_entries_do_not_count():
    entries = parse_sources_list(b"deb http://deb.debian.org/debian bookworm main\n"
                                 b"deb-src http://deb.debian.org/debian-security"
                                 b" bookworm-security main\n")
    _, added = add_standard_suites(entries, "DEBIAN", "bookworm")
    assert [e.suite for e in added] == ["bookworm-security", "bookworm-updates"]


def test_other_distributions_are_left_alone():
    assert add_standard_suites([], "alpine", "v3.19") == ([], [])
    assert add_standard_suites([], "debian", "") == ([], [])


# ---------------------------------------------------------------- mirrors


def test_apply_mirrors():
    entries = parse_deb822_sources(DEBIAN_BOOKWORM) + parse_sources_list(DOCKER)
    out = apply_mirrors(entries, {
        "http://deb.debian.org/debian": "http://mirror.local/debian/",
        "http://deb.debian.org/": "http://wrong.local/",
        "http://deb.debian.org/debian-security/": "http://mirror.local/security",
    })
    assert [e.uri for e in out] == ["http://mirror.local/debian", "http://mirror.local/debian",
                                    "http://mirror.local/security",
                                    "https://download.docker.com/linux/debian"]
    assert out[3] is entries[3]
    assert [e.suite for e in out] == [e.suite for e in entries]
    # Whole path segments only; the longest prefix wins.
    out = apply_mirrors(entries[2:3], {"http://deb.debian.org/debian": "http://m/debian",
                                       "http://deb.debian.org": "http://n"})
    assert out[0].uri == "http://n/debian-security"
    [archived] = apply_mirrors(parse_sources_list(DEBIAN_BUSTER)[:1],
                               {"http://deb.debian.org/debian": "http://archive.debian.org/debian"})
    assert archived.uri == "http://archive.debian.org/debian"
