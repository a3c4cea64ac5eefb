"""deb822 paragraphs, relations and dpkg's status database, checked against dpkg itself."""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from suture.distro.dpkg.control import (
    Conffile,
    InstalledPackage,
    PackageStatus,
    Paragraph,
    Relation,
    format_paragraph,
    format_paragraphs,
    format_relations,
    parse_conffiles,
    parse_md5sums,
    parse_package_status,
    parse_paragraphs,
    parse_relations,
    parse_status,
)
from suture.errors import PackageDBError, PackageFormatError

HOST_STATUS = Path("/var/lib/dpkg/status")
needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs dpkg")
needs_host_status = pytest.mark.skipif(not HOST_STATUS.is_file(), reason="no dpkg status")

RS, FS = "<<END-OF-RECORD>>", "<<FIELD>>"
QUERY_FIELDS = ["Package", "Version", "Architecture", "source:Package", "source:Version",
                "Status", "Multi-Arch", "Conffiles"]


def make_admindir(tmp_path: Path, status: str | bytes) -> Path:
    admin = tmp_path / "admin"
    for sub in ("info", "updates", "triggers"):
        (admin / sub).mkdir(parents=True, exist_ok=True)
    (admin / "available").write_bytes(b"")
    data = status.encode() if isinstance(status, str) else status
    (admin / "status").write_bytes(data)
    return admin


def dpkg_query(admin: Path, fields: list[str]) -> dict[str, list[str]]:
    """``dpkg-query -W`` over ``admin``: {package: [value of each field]}."""
    fmt = FS.join(f"${{{f}}}" for f in fields) + RS
    out = subprocess.run(["dpkg-query", f"--admindir={admin}", "-W", "-f", fmt],
                         capture_output=True, text=True, check=True,
                         errors="surrogateescape").stdout
    records = {}
    for record in out.split(RS)[:-1]:
        values = record.split(FS)
        records[values[0]] = values
    return records


def our_record(pkg: InstalledPackage) -> list[str]:
    conffiles = "\n".join(f" {c.status_line()}" for c in pkg.conffiles)
    return [pkg.name, pkg.version, pkg.architecture, pkg.source_name, pkg.source_version,
            str(pkg.status), pkg.multi_arch, conffiles]


# --- byte-exact round trips of real files -----------------------------------------------

@needs_host_status
def test_host_status_round_trips_byte_for_byte() -> None:
    data = HOST_STATUS.read_bytes()
    paragraphs = parse_paragraphs(data)
    assert len(paragraphs) == data.count(b"\nPackage: ") + data.startswith(b"Package: ")
    assert format_paragraphs(paragraphs).encode("utf-8", "surrogateescape") == data
    assert all(format_paragraph(p).endswith("\n") for p in paragraphs)


@pytest.mark.parametrize("path", ["/var/lib/dpkg/available", "/var/lib/dpkg/status-old"])
def test_other_host_databases_round_trip(path: str) -> None:
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        pytest.skip(f"no {path}")
    data = Path(path).read_bytes()
    assert format_paragraphs(parse_paragraphs(data)).encode("utf-8", "surrogateescape") == data


def _apt_lists() -> list[str]:
    return sorted(glob.glob("/var/lib/apt/lists/*_Packages*"))


@pytest.mark.skipif(not _apt_lists() or not os.path.exists("/usr/lib/apt/apt-helper"),
                    reason="no apt lists on this host")
@pytest.mark.parametrize("path", _apt_lists())
def test_apt_packages_indexes_round_trip(path: str) -> None:
    # apt-helper decompresses whatever apt stored (lz4, gz, xz, plain).
    data = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", path], capture_output=True,
                          check=True).stdout
    paragraphs = parse_paragraphs(data, source=path)
    assert len(paragraphs) == data.count(b"\nPackage: ") + data.startswith(b"Package: ")
    assert format_paragraphs(paragraphs).encode("utf-8", "surrogateescape") == data
    for p in paragraphs:
        assert p["Package"] and p["Version"] and p["Filename"]
        assert len(p["SHA256"]) == 64


# --- the status database against dpkg-query ---------------------------------------------

@needs_dpkg
@needs_host_status
def test_parse_status_of_host_matches_dpkg_query() -> None:
    packages = parse_status(HOST_STATUS.read_bytes())
    expected = dpkg_query(HOST_STATUS.parent, QUERY_FIELDS)
    # dpkg-query lists one line per (package, arch); the name is enough on a one-arch host.
    ours = {p.name: our_record(p) for p in packages}
    assert {k: v for k, v in ours.items() if k in expected} == expected
    assert set(expected) <= set(ours)


CRAFTED_STATUS = """\
Package: alpha
Status: install ok installed
Priority: optional
Maintainer: A <a@example.org>
Architecture: amd64
Multi-Arch: same
Source: alpha-src (2.0-0.1)
Version: 1:2.0-1
Conffiles:
 /etc/alpha.conf 0123456789abcdef0123456789abcdef
 /etc/old.conf 11111111111111111111111111111111 obsolete
 /etc/gone.conf 22222222222222222222222222222222 remove-on-upgrade
 /etc/both.conf 33333333333333333333333333333333 obsolete remove-on-upgrade
 /etc/with space.conf 44444444444444444444444444444444
Description: short summary
 a long line with trailing space\x20
 .
 after an empty line
Homepage: https://example.org/

Package: beta
Status: deinstall ok config-files
Priority: optional
Architecture: all
Source: beta-src
Version: 3.0
Maintainer: B <b@example.org>
Conffiles:
 /etc/beta/beta.cfg 55555555555555555555555555555555 obsolete
Description: beta



package: gamma
status:   install reinstreq half-installed
architecture:amd64
maintainer: G <g@example.org>
version:\t0.1~rc1+dfsg-2\x20\x20
description: gamma
\tcontinued with a tab
Depends: alpha (>= 1:2.0), beta:any | delta, epsilon (<< 2~)

Package: omega
Status: install ok unpacked
Version: 2.0
Architecture: amd64
Maintainer: O <o@example.org>
Description: caf\xc3\xa9 and a byte that is not UTF-8: \xff
"""


@pytest.fixture()
def crafted_status() -> bytes:
    return CRAFTED_STATUS.encode("latin-1")


def test_crafted_status_round_trips(crafted_status: bytes) -> None:
    paragraphs = parse_paragraphs(crafted_status)
    # The three blank lines after 'beta' become one: the only normalisation.
    assert format_paragraphs(paragraphs).encode("utf-8", "surrogateescape") == \
        crafted_status.replace(b"\n\n\n\n", b"\n\n") + b"\n"


@needs_dpkg
def test_crafted_status_matches_dpkg_query(tmp_path: Path, crafted_status: bytes) -> None:
    admin = make_admindir(tmp_path, crafted_status)
    expected = dpkg_query(admin, QUERY_FIELDS)
    packages = parse_status(crafted_status, source=str(admin / "status"))
    assert {p.name: our_record(p) for p in packages if p.name in expected} == expected
    descriptions = dpkg_query(admin, ["Package", "Description"])
    for p in packages:
        if p.name in descriptions:
            assert p.paragraph["Description"] == descriptions[p.name][1]


def test_crafted_status_model(crafted_status: bytes) -> None:
    alpha, beta, gamma, omega = parse_status(crafted_status)
    assert (alpha.name, alpha.version, alpha.architecture) == ("alpha", "1:2.0-1", "amd64")
    assert (alpha.source_name, alpha.source_version) == ("alpha-src", "2.0-0.1")
    assert alpha.multi_arch == "same"
    assert alpha.status == PackageStatus("install", "ok", "installed")
    assert alpha.is_installed and alpha.has_files
    assert alpha.conffiles == (
        Conffile("/etc/alpha.conf", "0123456789abcdef0123456789abcdef"),
        Conffile("/etc/old.conf", "11111111111111111111111111111111", obsolete=True),
        Conffile("/etc/gone.conf", "22222222222222222222222222222222", remove_on_upgrade=True),
        Conffile("/etc/both.conf", "33333333333333333333333333333333", True, True),
        Conffile("/etc/with space.conf", "44444444444444444444444444444444"),
    )
    assert (beta.source_name, beta.source_version) == ("beta-src", "3.0")
    assert not beta.is_installed and not beta.has_files
    assert beta.multi_arch == "no"
    assert gamma.version == "0.1~rc1+dfsg-2"
    assert gamma.status == PackageStatus("install", "reinstreq", "half-installed")
    assert not gamma.is_installed and gamma.has_files
    assert [[str(r) for r in g] for g in gamma.depends] == [
        ["alpha (>= 1:2.0)"], ["beta:any", "delta"], ["epsilon (<< 2~)"]]
    assert gamma.paragraph["Description"] == "gamma\n\tcontinued with a tab"
    assert list(gamma.paragraph)[:2] == ["package", "status"]
    assert omega.paragraph["Description"].endswith("\udcff")
    assert not omega.is_installed and omega.has_files


def test_distroless_status_d_files() -> None:
    # distroless writes one file per package, with no Status field; a file may hold several.
    base_files = b"""Package: base-files
Version: 12.4+deb12u5
Architecture: amd64
Maintainer: Santiago Vila <sanvila@debian.org>
Installed-Size: 347
Essential: yes
Priority: required
Section: admin
Description: Debian base system miscellaneous files
"""
    two = b"""Package: libssl3
Source: openssl
Version: 3.0.11-1~deb12u2
Architecture: amd64
Multi-Arch: same
Depends: libc6 (>= 2.34)

Package: openssl
Source: openssl (3.0.11-1~deb12u2)
Version: 3.0.11-1~deb12u2+b1
Architecture: amd64
"""
    (bf,) = parse_status(base_files, source="/var/lib/dpkg/status.d/base-files")
    assert bf.status is None and bf.is_installed and bf.essential
    assert (bf.source_name, bf.source_version) == ("base-files", "12.4+deb12u5")
    libssl, openssl = parse_status(two)
    assert (libssl.source_name, libssl.source_version) == ("openssl", "3.0.11-1~deb12u2")
    assert (openssl.source_name, openssl.source_version) == ("openssl", "3.0.11-1~deb12u2")
    assert libssl.depends == [[Relation("libc6", ">=", "2.34")]]


BAD_STATUS = [
    ("Package: a\nVersion: 1\nnot a field\n", 3),
    (" continuation\nPackage: a\n", 1),
    ("Package: a\nVersion: 1\n\n\n continuation\n", 5),
    ("Package: a\nVersion: 1\nVersion: 2\n", 1),
    ("Package: a\nVersion: 1\nversion: 2\n", 1),
    ("Package: a\n\n#comment\n", 3),
    ("Package: a\n\nPackage: b\n-Field: x\n", 4),
]


@pytest.mark.parametrize(("text", "line"), BAD_STATUS)
def test_malformed_paragraphs_are_refused(text: str, line: int) -> None:
    with pytest.raises(PackageDBError) as info:
        parse_paragraphs(text, source="/x/status")
    assert info.value.path == "/x/status"
    assert f"line {line}" in str(info.value)


@needs_dpkg
@pytest.mark.parametrize(("text", "line"), BAD_STATUS)
def test_dpkg_refuses_the_same_paragraphs(tmp_path: Path, text: str, line: int) -> None:
    admin = make_admindir(tmp_path, text.replace("Package: a\n", "Package: a\nStatus: "
                                                 "install ok installed\n"))
    result = subprocess.run(["dpkg-query", f"--admindir={admin}", "-W"], capture_output=True)
    assert result.returncode != 0


@pytest.mark.parametrize("status", ["install ok", "install ok installed extra",
                                    "wanted ok installed", "install fine installed",
                                    "install ok configured"])
def test_bad_status_field(status: str) -> None:
    with pytest.raises(PackageFormatError):
        parse_package_status(status)
    with pytest.raises(PackageDBError) as info:
        parse_status(f"Package: a\nStatus: {status}\nVersion: 1\n".encode())
    assert "package a" in str(info.value)


def test_bad_values_in_status_name_the_package() -> None:
    for text in ("Package: a\nVersion: 1.0-\n", "Package: a\nVersion: 1\nSource: s (:1)\n",
                 "Package: a\nConffiles:\n etc/relative 0123\n", "Version: 1\n"):
        with pytest.raises(PackageDBError):
            parse_status(text.encode(), source="status")


# --- paragraphs as values ----------------------------------------------------------------

def test_paragraph_mapping_behaviour() -> None:
    (p,) = parse_paragraphs("Package: x\nVersion:1.0\nDescription: a\n b\n .\n c\n")
    assert list(p) == ["Package", "Version", "Description"]
    assert p["package"] == p["PACKAGE"] == "x"
    assert p["Version"] == "1.0"
    assert "version" in p and "Depends" not in p and 3 not in p  # type: ignore[comparison-overlap]
    assert p.get("depends") is None and p.get("Depends", "") == ""
    assert p["Description"] == "a\n b\n .\n c"
    with pytest.raises(KeyError):
        p["Depends"]
    p["version"] = "2.0"  # keeps the existing spelling and place
    p["Depends"] = "libc6"
    assert list(p.items()) == [("Package", "x"), ("Version", "2.0"),
                               ("Description", "a\n b\n .\n c"), ("Depends", "libc6")]
    assert format_paragraph(p) == "Package: x\nVersion: 2.0\nDescription: a\n b\n .\n c\n" \
                                  "Depends: libc6\n"
    del p["DESCRIPTION"]
    assert "Description" not in p and len(p) == 3
    p["Conffiles"] = "\n /etc/a 0123"
    assert format_paragraph(p).endswith("Conffiles:\n /etc/a 0123\n")
    p.rename("depends", "Pre-Depends")
    assert list(p) == ["Package", "Version", "Pre-Depends", "Conffiles"]
    q = p.copy()
    q["Package"] = "y"
    assert p["Package"] == "x"
    assert Paragraph([("A", "1"), ("B", "2")]) == Paragraph({"A": "1", "B": "2"})
    assert parse_paragraphs(format_paragraph(p)) == [p]


@pytest.mark.parametrize("value", ["a\nb", " lead", "trail ", "a\n b\n", "a\n\n b"])
def test_paragraph_refuses_values_that_would_not_parse_back(value: str) -> None:
    with pytest.raises(ValueError):
        Paragraph()["Field"] = value


@pytest.mark.parametrize("name", ["", "has space", "co:lon", "#hash", "-dash", "caf\u00e9"])
def test_paragraph_refuses_bad_field_names(name: str) -> None:
    with pytest.raises(ValueError):
        Paragraph()[name] = "x"


def test_empty_and_blank_input() -> None:
    assert parse_paragraphs(b"") == []
    assert parse_paragraphs("\n\n\n") == []
    assert parse_paragraphs(b"A: b") == [Paragraph({"A": "b"})]  # no final newline


# --- relations ---------------------------------------------------------------------------

def test_parse_relations_forms() -> None:
    groups = parse_relations(
        "libc6 (>= 2.34), libfoo:any (<< 2~) | bar [amd64 !i386] <!nocheck> <stage1 cross>,"
        "\n baz (>2), qux (<1:0), exact (1.0), arch:amd64(=1-1), Up.Case+x"
    )
    assert groups == [
        [Relation("libc6", ">=", "2.34")],
        [Relation("libfoo", "<<", "2~", "any"),
         Relation("bar", arches=("amd64", "!i386"), profiles=(("!nocheck",), ("stage1", "cross")))],
        [Relation("baz", ">=", "2")],
        [Relation("qux", "<=", "1:0")],
        [Relation("exact", "=", "1.0")],
        [Relation("arch", "=", "1-1", "amd64")],
        [Relation("Up.Case+x")],
    ]
    assert format_relations(groups) == (
        "libc6 (>= 2.34), libfoo:any (<< 2~) | bar [amd64 !i386] <!nocheck> <stage1 cross>, "
        "baz (>= 2), qux (<= 1:0), exact (= 1.0), arch:amd64 (= 1-1), Up.Case+x")
    assert parse_relations("") == parse_relations(" \n ") == []


BAD_RELATIONS = ["a (>= 1.0", "a,, b", "a, ", "a (=> 1)", "_a", "a:", "a (>= 1:)", "a | ",
                 "a (>= )", "a b", "a (>= 1) (<< 2)", "a [", "a []", "a <>"]


@pytest.mark.parametrize("text", BAD_RELATIONS)
def test_bad_relations_are_refused(text: str) -> None:
    with pytest.raises(PackageFormatError) as info:
        parse_relations(text)
    assert info.value.text


@needs_dpkg
def test_relation_syntax_agrees_with_dpkg_deb(tmp_path: Path) -> None:
    # dpkg-deb --build parses Depends of a binary package; [arch] and <profile> are
    # source-only syntax it refuses, so they are left out here.
    cases = [r for r in BAD_RELATIONS if "[" not in r and "<>" not in r] + [
        "a (>= 1.0), b | c", "a:any", "a (< 1)", "a (1.0)", "A", "a:native (>= 1) | b:amd64",
        "a\n (>= 1.0)"]
    for text in cases:
        pkg = tmp_path / "pkg"
        (pkg / "DEBIAN").mkdir(parents=True, exist_ok=True)
        value = text.replace("\n", "\n ")
        (pkg / "DEBIAN" / "control").write_text(
            f"Package: t\nVersion: 1\nArchitecture: all\nMaintainer: x <x@y>\n"
            f"Description: t\nDepends: {value}\n")
        built = subprocess.run(["dpkg-deb", "--build", str(pkg), str(tmp_path / "t.deb")],
                               capture_output=True).returncode == 0
        try:
            parse_relations(text)
            ours = True
        except PackageFormatError:
            ours = False
        assert ours == built, text


ORACLE_DB = """\
Package: foo
Status: install ok installed
Version: 1.2-3
Architecture: amd64
Maintainer: x <x@example.org>
Multi-Arch: allowed
Provides: vfoo (= 2.0), vbar
Description: x

Package: libbar
Status: install ok installed
Version: 2:0.5
Architecture: amd64
Maintainer: x <x@example.org>
Multi-Arch: same
Description: x

Package: tool
Status: install ok installed
Version: 1.0
Architecture: arm64
Maintainer: x <x@example.org>
Multi-Arch: foreign
Provides: vtool (= 1.0)
Description: x

Package: data
Status: install ok installed
Version: 1.0~git1
Architecture: all
Maintainer: x <x@example.org>
Description: x

Package: armonly
Status: install ok installed
Version: 3
Architecture: arm64
Maintainer: x <x@example.org>
Provides: varm
Description: x

"""

ORACLE_RELATIONS = [
    "foo", "foo (>= 1.2-3)", "foo (>> 1.2-3)", "foo (<< 1.2-3.1)", "foo (= 1.2-3)",
    "foo (<= 1.2-2)", "vfoo", "vfoo (>= 1.5)", "vfoo (>> 2.0)", "vbar", "vbar (>= 1)",
    "foo:any", "libbar:any", "tool:any", "tool", "tool:amd64", "tool:arm64", "vtool",
    "vtool (= 1.0)", "libbar", "libbar:amd64", "libbar (<< 1:9)", "libbar (>> 1:9)", "data",
    "data (>= 1.0~)", "data (>= 1.0)", "data:amd64", "data:arm64", "data:any", "armonly",
    "armonly:arm64", "varm", "missing", "missing | foo (>= 1)", "missing | vbar (>= 1)",
]
# ":native" only has a meaning in Build-Depends: dpkg itself takes it for an architecture
# called "native". These are checked against dpkg-checkbuilddeps instead.
NATIVE_RELATIONS = ["tool:native", "libbar:native", "data:native", "foo:native",
                    "armonly:native", "foo:native (>= 1.2)"]


def our_verdict(packages: list[InstalledPackage], text: str, native: str) -> bool:
    (group,) = parse_relations(text)
    return any(
        r.satisfied_by(p.name, p.version, p.provides, architecture=p.architecture,
                       multi_arch=p.multi_arch, native=native)
        for r in group for p in packages
    )


@needs_dpkg
def test_satisfied_by_agrees_with_dpkg(tmp_path: Path) -> None:
    # dpkg decides whether an unpacked package 't' (amd64) may be configured: its Depends
    # must be met by the database. --dry-run changes nothing.
    native = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                            check=True).stdout.strip()
    db = ORACLE_DB.replace("amd64", native)
    packages = parse_status(db.encode())
    mismatches = []
    for text in ORACLE_RELATIONS:
        text = text.replace("amd64", native)
        admin = make_admindir(tmp_path, db + (
            f"Package: t\nStatus: install ok unpacked\nVersion: 1\nArchitecture: {native}\n"
            f"Maintainer: x <x@example.org>\nDepends: {text}\nDescription: x\n\n"))
        (admin / "info" / "t.list").write_text("")
        result = subprocess.run(
            ["dpkg", f"--root={tmp_path}", f"--admindir={admin}", "--force-not-root",
             "--force-script-chrootless", "--dry-run", "--configure", "t"],
            capture_output=True, text=True)
        theirs = result.returncode == 0
        if theirs != our_verdict(packages, text, native):
            mismatches.append((text, theirs, result.stderr[-300:]))
    assert mismatches == []


def test_satisfied_by_without_architectures() -> None:
    (r,) = parse_relations("foo (>= 1.0)")[0]
    assert r.satisfied_by("foo", "1.0")
    assert not r.satisfied_by("foo", "1.0~rc1")
    assert not r.satisfied_by("bar", "2.0")
    assert r.satisfied_by("bar", "0.1", [Relation("foo", "=", "1.5")])
    assert not r.satisfied_by("bar", "0.1", [Relation("foo")])
    assert not r.satisfied_by("bar", "0.1", [Relation("foo", "=", "0.9")])
    assert Relation("foo").satisfied_by("bar", None, [Relation("foo")])
    assert not r.version_matches(None)


@pytest.mark.skipif(shutil.which("dpkg-checkbuilddeps") is None, reason="needs dpkg-dev")
def test_native_qualifier_agrees_with_dpkg_checkbuilddeps(tmp_path: Path) -> None:
    native = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                            check=True).stdout.strip()
    db = ORACLE_DB.replace("amd64", native)
    admin = make_admindir(tmp_path, db)
    control = tmp_path / "control"
    control.write_text("Source: s\nMaintainer: x <x@example.org>\n\n"
                       "Package: s\nArchitecture: any\nDescription: x\n")
    packages = parse_status(db.encode())
    for text in NATIVE_RELATIONS:
        result = subprocess.run(["dpkg-checkbuilddeps", f"--admindir={admin}", "-d", text,
                                 str(control)], capture_output=True, text=True)
        assert (result.returncode == 0) == our_verdict(packages, text, native), text


# --- md5sums and conffiles ---------------------------------------------------------------

def test_parse_md5sums_and_conffiles() -> None:
    sums = parse_md5sums(b"0123456789abcdef0123456789ABCDEF  usr/bin/a b\n"
                         b"fedcba9876543210fedcba9876543210 *usr/share/x\n\n")
    assert sums == {"usr/bin/a b": "0123456789abcdef0123456789abcdef",
                    "usr/share/x": "fedcba9876543210fedcba9876543210"}
    with pytest.raises(PackageFormatError):
        parse_md5sums(b"nothex  usr/bin/a\n")
    assert parse_conffiles(b"/etc/a\nremove-on-upgrade /etc/b\n\n/etc/c d\n") == [
        Conffile("/etc/a"), Conffile("/etc/b", remove_on_upgrade=True), Conffile("/etc/c d")]
    with pytest.raises(PackageFormatError):
        parse_conffiles(b"etc/relative\n")


@needs_host_status
def test_host_md5sums_files_match_the_files_on_disk() -> None:
    checked = 0
    for path in sorted(glob.glob("/var/lib/dpkg/info/*.md5sums"))[:40]:
        sums = parse_md5sums(Path(path).read_bytes())
        assert len(sums) == Path(path).read_bytes().count(b"\n")
        for name, md5 in list(sums.items())[:3]:
            target = Path("/") / name
            if target.is_file() and not target.is_symlink():
                assert hashlib.md5(target.read_bytes()).hexdigest() == md5, name
                checked += 1
    if checked == 0:
        pytest.skip("no md5sums to check on this host")
