"""Hostile input from images and reports: what dpkg refuses is refused, and nothing from
an image or a report reaches the terminal as a control sequence.

The package-database cases are checked against dpkg itself: ``dpkg-query`` on an
admin directory holding the same ``status`` file is the oracle for what is refused.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from suture.cli import _PrintableFormatter, _Renderer, printable
from suture.distro.dpkg.control import parse_status
from suture.errors import PackageDBError
from suture.progress import DOWNLOAD, STAGE, Event
from tests.fixtures.aptrepo import AptRepo, GpgKeys
from tests.fixtures.patchimages import (
    STATUS,
    Archive,
    debian_os_release,
    error_line,
    layout_state,
    make_root,
    suture,
    trivy_report,
    write_image,
)

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
def test_status_stanza_dpkg_cannot_read_is_refused(tmp_path: Path, case: str) -> None:
    text, message = REFUSED[case]
    with pytest.raises(PackageDBError) as info:
        parse_status(GOOD + "\n" + text, source="/var/lib/dpkg/status")
    assert info.value.path == "/var/lib/dpkg/status"
    assert message in str(info.value)
    # The second stanza is named (by number; by name when the name itself is valid).
    assert "stanza 2" in str(info.value)
    if shutil.which("dpkg-query") is None:
        return
    # The oracle: dpkg refuses the same file (or, for an architecture name, warns).
    result = _dpkg_query(tmp_path, text)
    if case in ARCH_WARNED:
        assert "is not a valid architecture name" in result.stderr
    else:
        assert result.returncode != 0, result.stdout
        assert "parsing file" in result.stderr


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_names_dpkg_accepts_still_parse(tmp_path: Path, case: str) -> None:
    """A guard against refusing too much (it passes on code that refuses nothing)."""
    name, dpkg_name = ACCEPTED[case]
    packages = parse_status(GOOD + "\n" + _stanza(name))
    assert [p.name for p in packages] == ["good", name]
    if shutil.which("dpkg-query") is None:
        return
    result = _dpkg_query(tmp_path, _stanza(name))
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == sorted(["good", dpkg_name])


def test_a_refused_name_in_a_status_d_file_names_that_file() -> None:
    with pytest.raises(PackageDBError) as info:
        parse_status(_stanza("../etc/x"), source="/var/lib/dpkg/status.d/x")
    assert info.value.path == "/var/lib/dpkg/status.d/x"
    assert "stanza 1: invalid package name '../etc/x'" in str(info.value)


def _archive_and_root(apt_repo: AptRepo, gpg_keys: GpgKeys, tmp_path: Path
                      ) -> tuple[Archive, Path]:
    """A local archive (a 1.0-1 in bookworm, 2.0-1 in -security) and a root with a 1.0-1."""
    archive = Archive.create(apt_repo, gpg_keys.good, tmp_path, "bookworm")
    v1 = archive.add("bookworm", "a", "1.0-1")
    archive.add("bookworm-security", "a", "2.0-1")
    archive.publish()
    root = make_root(tmp_path / "root", [v1], debian_os_release(),
                     sources={"etc/apt/sources.list":
                              "deb http://deb.debian.org/debian bookworm main\n"},
                     keyring=archive.key_asc())
    return archive, root


def _patch(archive: Archive, tmp_path: Path, ref: str, *args: str
           ) -> subprocess.CompletedProcess[str]:
    return suture("patch", "-i", ref, "--cache-dir", str(tmp_path / "c"), "--no-host-keyrings",
                  *archive.mirror_args(), *args)


@pytest.mark.tools
@pytest.mark.parametrize("evil", ["../../../../../tmp/probe-evilpkg", "evil\n ../../tmp/x"])
def test_patch_refuses_an_image_whose_status_dpkg_cannot_read(
        apt_repo: AptRepo, gpg_keys: GpgKeys, tmp_path: Path, evil: str) -> None:
    """The probe's B1/B2: the run fails naming the stanza, and writes nothing."""
    archive, root = _archive_and_root(apt_repo, gpg_keys, tmp_path)
    status = root / STATUS
    status.write_text(status.read_text() + "\n" + _stanza(evil))
    ref = write_image(root, tmp_path, "v1")
    before = layout_state(tmp_path / "layout")
    proc = _patch(archive, tmp_path, ref, "-t", "v1-patched")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = error_line(proc)
    assert "/var/lib/dpkg/status" in line and "stanza 2" in line, line
    assert ("invalid package name" if "\n" not in evil else "spans more than one line") in line
    assert layout_state(tmp_path / "layout") == before


# --- nothing untrusted reaches the terminal as a control sequence ------------------------

# The probe's C5 name, plus a C1 control (CSI), a bidirectional override, a zero-width
# space, a line break (a forged line) and a byte that is not UTF-8.
EVIL = "evil\x1b[31mRED\x1b[0m\rFAKE: all patched\x9b2J\u202edetcepxe\u200b\nsuture: ok"
EVIL_SHOWN = ("evil\\x1b[31mRED\\x1b[0m\\x0dFAKE: all patched\\x9b2J\\u202edetcepxe"
              "\\u200b\\x0asuture: ok")


def _assert_clean(text: str) -> None:
    """No character of ``text`` but line ends is one a terminal would act on."""
    assert all(line.isprintable() for line in text.split("\n")), ascii(text)


def test_printable_escapes_what_a_terminal_acts_on() -> None:
    assert printable(EVIL) == EVIL_SHOWN
    for code in [*range(0x20), 0x7F, *range(0x80, 0xA0)]:
        assert printable(f"a{chr(code)}b") == f"a\\x{code:02x}b"
    # Bytes that were not UTF-8 (decoded with surrogateescape) show as those bytes.
    assert printable(b"caf\xe9".decode("utf-8", "surrogateescape")) == "caf\\xe9"
    assert printable("\U000e0001tag") == "\\U000e0001tag"
    # Printable text, non-ASCII letters included, is unchanged.
    for text in ("libssl3 3.0.15-1~deb12u1 -> 3.0.16-1~deb12u1", "caf\u00e9 \u65e5\u672c", ""):
        assert printable(text) == text


def test_progress_lines_are_escaped() -> None:
    stream = io.StringIO()
    render = _Renderer("plain", stream)
    render(Event(STAGE, message=f"reading {EVIL}", scope="linux/amd64"))
    render(Event(DOWNLOAD, name=EVIL, done=10, total=10, finished=True, scope="linux/amd64"))
    _assert_clean(stream.getvalue())
    assert stream.getvalue().count("\n") == 2
    assert f"suture: linux/amd64: reading {EVIL_SHOWN}\n" in stream.getvalue()
    assert f"suture: linux/amd64: downloaded {EVIL_SHOWN} (10 B)\n" in stream.getvalue()


def test_log_records_are_escaped() -> None:
    formatter = _PrintableFormatter("%(levelname)s %(name)s: %(message)s")
    record = logging.LogRecord("suture.x", logging.WARNING, __file__, 1, "package %s", (EVIL,),
                               None)
    assert formatter.format(record) == f"WARNING suture.x: package {EVIL_SHOWN}"
    try:
        raise ValueError(EVIL)
    except ValueError:
        record.exc_info = sys.exc_info()
    _assert_clean(formatter.format(record))


@pytest.mark.tools
def test_report_names_are_escaped_in_the_plan_summary_and_errors(
        apt_repo: AptRepo, gpg_keys: GpgKeys, tmp_path: Path) -> None:
    """The probe's C5: a report's package name with escape sequences and a carriage
    return is shown escaped in the dry-run plan; a real patch's output and an error
    naming a hostile report file hold no control character either."""
    archive, root = _archive_and_root(apt_repo, gpg_keys, tmp_path)
    ref = write_image(root, tmp_path, "v1")
    report = tmp_path / "report.json"
    report.write_text(json.dumps(trivy_report("debian", "12.7", [
        ("CVE-2024-0001", "a", "1.0-1", "2.0-1"), ("CVE-2024-0002", EVIL, "1", "2")])))

    dry = _patch(archive, tmp_path, ref, "-r", str(report), "--dry-run", "--progress", "plain")
    assert dry.returncode == 0, dry.stderr
    _assert_clean(dry.stdout)
    _assert_clean(dry.stderr)
    assert any(line.startswith(f"  {EVIL_SHOWN} skipped: not-installed")
               for line in dry.stdout.split("\n")), dry.stdout

    real = _patch(archive, tmp_path, ref, "-r", str(report), "--progress", "plain")
    assert real.returncode == 0, real.stderr
    _assert_clean(real.stdout)
    _assert_clean(real.stderr)
    assert "patched" in real.stdout

    hostile = tmp_path / "r\x1b]0;pwned\x07\r.json"
    hostile.write_text("{not json")
    failed = _patch(archive, tmp_path, ref, "-r", str(hostile), "--dry-run")
    assert failed.returncode == 1
    _assert_clean(failed.stderr)
    assert "r\\x1b]0;pwned\\x07\\x0d.json" in error_line(failed)
