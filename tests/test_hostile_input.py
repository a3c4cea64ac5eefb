"""Hostile input from images and reports: what dpkg refuses is refused, and nothing from
an image or a report reaches the terminal as a control sequence.

The package-database cases are checked against dpkg itself: ``dpkg-query`` on an
admin directory holding the same ``status`` file is the oracle for what is refused.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from suture.distro.dpkg.control import parse_status
from suture.errors import PackageDBError
from tests.fixtures.aptrepo import AptRepo, GpgKeys
from tests.fixtures.patchimages import (
    STATUS,
    Archive,
    debian_os_release,
    error_line,
    layout_state,
    make_root,
    suture,
    write_image,
)

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs dpkg")

GOOD = "Package: good\nStatus: install ok installed\nVersion: 1.0\nArchitecture: amd64\n"


def _stanza(package: str = "ab", *, version: str = "1.0", arch: str = "amd64") -> str:
    return (f"Package: {package}\nStatus: install ok installed\nVersion: {version}\n"
            f"Architecture: {arch}\nMaintainer: m <m@example.org>\nDescription: d\n")


# (status text, what suture's message must say). dpkg-query refuses each of these
# (checked below), except where the architecture name is illegal: dpkg only warns
# there, but the name goes into info/NAME:ARCH.list paths and package URLs.
REFUSED = {
    "dot-dot path": (_stanza("../../../tmp/x"), "must start with an alphanumeric"),
    "absolute path": (_stanza("/tmp/x"), "must start with an alphanumeric"),
    "continued name": (_stanza("evil\n ../../tmp/x"), "Package 'evil\\n ../../tmp/x' spans"),
    "name on a continuation line": (_stanza("\n good"), "spans more than one line"),
    "slash inside": (_stanza("a/../../x"), "character '/' not allowed"),
    "arch qualifier": (_stanza("ab:amd64"), "character ':' not allowed"),
    "leading plus": (_stanza("+ab"), "must start with an alphanumeric"),
    "non-ASCII letter": (_stanza("caf\u00e9"), "character '\u00e9' not allowed"),
    "escape sequence": (_stanza("ab\x1b[31m"), "character '\\x1b' not allowed"),
    "continued version": (_stanza(version="1.0\n 2"), "Version '1.0\\n 2' spans"),
    "continued architecture": (_stanza(arch="amd64\n x"), "Architecture 'amd64\\n x' spans"),
    "architecture with a path": (_stanza(arch="amd64/../x"), "invalid architecture name"),
    "architecture with a dash first": (_stanza(arch="-amd64"), "invalid architecture name"),
}
ARCH_WARNED = {"continued architecture", "architecture with a path",
               "architecture with a dash first"}

# What dpkg accepts must still parse (names as dpkg's pkg_name_is_illegal allows them).
ACCEPTED = {
    "one letter": ("a", "a"),
    "all allowed characters": ("a0+.-_b", "a0+.-_b"),
    "digit first": ("0ad", "0ad"),
    "upper case": ("Foo", "foo"),  # dpkg folds the case; suture keeps the spelling
}


def _dpkg_query(tmp_path: Path, status: str) -> subprocess.CompletedProcess[str]:
    admin = tmp_path / "admin"
    for sub in ("info", "updates", "triggers"):
        (admin / sub).mkdir(parents=True, exist_ok=True)
    (admin / "available").write_bytes(b"")
    (admin / "status").write_text(GOOD + "\n" + status)
    return subprocess.run(["dpkg-query", f"--admindir={admin}", "-W", "-f",
                           "${Package}\\n"], capture_output=True, text=True,
                          errors="surrogateescape")


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_status_stanza_dpkg_cannot_read_is_refused(case: str) -> None:
    text, message = REFUSED[case]
    with pytest.raises(PackageDBError) as info:
        parse_status(GOOD + "\n" + text, source="/var/lib/dpkg/status")
    assert info.value.path == "/var/lib/dpkg/status"
    assert message in str(info.value)
    # The second stanza is named (by number; by name when the name itself is valid).
    assert "stanza 2" in str(info.value)


@needs_dpkg
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_dpkg_refuses_or_warns_about_the_same_stanzas(tmp_path: Path, case: str) -> None:
    result = _dpkg_query(tmp_path, REFUSED[case][0])
    if case in ARCH_WARNED:
        assert "is not a valid architecture name" in result.stderr
    else:
        assert result.returncode != 0, result.stdout
        assert "parsing file" in result.stderr


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_names_dpkg_accepts_still_parse(case: str) -> None:
    name, _ = ACCEPTED[case]
    packages = parse_status(GOOD + "\n" + _stanza(name))
    assert [p.name for p in packages] == ["good", name]


@needs_dpkg
@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_dpkg_accepts_the_same_names(tmp_path: Path, case: str) -> None:
    name, dpkg_name = ACCEPTED[case]
    result = _dpkg_query(tmp_path, _stanza(name))
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == sorted(["good", dpkg_name])


def test_a_refused_name_in_a_status_d_file_names_that_file() -> None:
    with pytest.raises(PackageDBError) as info:
        parse_status(_stanza("../etc/x"), source="/var/lib/dpkg/status.d/x")
    assert info.value.path == "/var/lib/dpkg/status.d/x"
    assert "stanza 1: invalid package name '../etc/x'" in str(info.value)


@pytest.mark.tools
@pytest.mark.parametrize("evil", ["../../../../../tmp/probe-evilpkg", "evil\n ../../tmp/x"])
def test_patch_refuses_an_image_whose_status_dpkg_cannot_read(
        apt_repo: AptRepo, gpg_keys: GpgKeys, tmp_path: Path, evil: str) -> None:
    """The probe's B1/B2: the run fails naming the stanza, and writes nothing."""
    archive = Archive.create(apt_repo, gpg_keys.good, tmp_path, "bookworm")
    v1 = archive.add("bookworm", "a", "1.0-1")
    archive.add("bookworm-security", "a", "2.0-1")
    archive.publish()
    root = make_root(tmp_path / "root", [v1], debian_os_release(),
                     sources={"etc/apt/sources.list":
                              "deb http://deb.debian.org/debian bookworm main\n"},
                     keyring=archive.key_asc())
    status = root / STATUS
    status.write_text(status.read_text() + "\n" + _stanza(evil))
    ref = write_image(root, tmp_path, "v1")
    before = layout_state(tmp_path / "layout")
    proc = suture("patch", "-i", ref, "-t", "v1-patched", "--cache-dir", str(tmp_path / "c"),
                  "--no-host-keyrings", *archive.mirror_args())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = error_line(proc)
    assert "/var/lib/dpkg/status" in line and "stanza 2" in line, line
    assert ("invalid package name" if "\n" not in evil else "spans more than one line") in line
    assert layout_state(tmp_path / "layout") == before
