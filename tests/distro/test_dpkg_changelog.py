"""Debian changelogs: parsing (against dpkg's own parser), CVE ranges, reading them from .debs."""

from __future__ import annotations

import gzip
import io
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from suture.distro.dpkg.changelog import (
    ChangelogEntry,
    cves_between,
    cves_for_update,
    entries_between,
    find_cves,
    parse_changelog,
    read_deb_changelog,
    source_version,
)
from suture.distro.dpkg.version import compare_versions
from suture.errors import LayerError, PackageFormatError, SizeMismatch
from tests.fixtures.debs import File, Hardlink, Symlink, build_deb, require_dpkg

ORACLE = Path(__file__).resolve().parents[1] / "data" / "changelog" / "oracle.pl"

# --------------------------------------------------------------------------- sample texts

OPENSSL = b"""\
openssl (3.0.15-1~deb12u2) bookworm-security; urgency=high

  * CVE-2024-9143 (Low-level invalid GF(2^m) parameters lead to OOB memory
    access).
  * Fix for cve-2024-13176 (lower case) and (CVE-2024-5535, CVE-2024-4741).

 -- Sebastian Andrzej Siewior <sebastian@breakpoint.cc>  Sun, 02 Feb 2025 10:00:00 +0100

openssl (3.0.15-1~deb12u1) bookworm; urgency=medium

  * Import 3.0.15
  * CVE-2024-4603 and CVE-2024-2511 (already fixed upstream).

 -- Sebastian Andrzej Siewior <sebastian@breakpoint.cc>  Sat, 09 Nov 2024 12:00:00 +0100

openssl (3.0.11-1~deb12u2) bookworm-security; urgency=medium

  * CVE-2023-5678 (Excessive time spent in DH check / generation).
  * CVE-2023-5363 (Incorrect cipher key & IV length processing).

 -- Sebastian Andrzej Siewior <sebastian@breakpoint.cc>  Tue, 24 Oct 2023 21:41:07 +0200

openssl (3.0.11-1~deb12u1) bookworm; urgency=medium

  * Import 3.0.11 (CVE-2023-2975, CVE-2023-3446, CVE-2023-3817).

 -- Sebastian Andrzej Siewior <sebastian@breakpoint.cc>  Sat, 23 Sep 2023 13:57:48 +0200

openssl (3.0.9-1) unstable; urgency=medium

  * New upstream release (CVE-2023-2650).

 -- Sebastian Andrzej Siewior <sebastian@breakpoint.cc>  Wed, 31 May 2023 20:04:54 +0200
"""

JUNK_TAIL = b"""\
foo (1.1-1) unstable; urgency=low

  * Fixes CVE-2020-1111.

 -- A Maintainer <a@example.org>  Mon, 01 Jan 2024 00:00:00 +0000

Old Changelog:

Mon Jan  1 12:00:00 1996  Ian Jackson  <ian@example.org>

  * CVE-1999-0001 in the old format, not Debian's.

foo (0.9-1) unstable; urgency=low

  * CVE-1999-0002 after the old format: still not parsed.

 -- A Maintainer <a@example.org>  Mon, 01 Jan 1996 00:00:00 +0000
"""

# "Rebuild for bookworm" above the unstable entry that holds the changes (dbus, debianutils).
REBUILD = b"""\
dbus (1.14.10-1~deb12u1) bookworm; urgency=medium

  * Rebuild for bookworm

 -- Simon McVittie <smcv@debian.org>  Sat, 16 Sep 2023 11:03:58 +0100

dbus (1.14.10-1) unstable; urgency=medium

  * New upstream stable release (CVE-2023-34969 follow-up, CVE-2023-99999).

 -- Simon McVittie <smcv@debian.org>  Fri, 01 Sep 2023 15:41:38 +0100

dbus (1.14.8-2~deb12u1) bookworm; urgency=medium

  * Rebuild for bookworm

 -- Simon McVittie <smcv@debian.org>  Tue, 11 Jul 2023 20:59:33 +0100

dbus (1.14.8-2) unstable; urgency=high

  * CVE-2023-34969.

 -- Simon McVittie <smcv@debian.org>  Tue, 11 Jul 2023 10:00:00 +0100
"""

EPOCHS = b"""\
shadow (1:4.13+dfsg1-1+deb12u1) bookworm-security; urgency=medium

  * CVE-2023-4641: gpasswd leaks password in memory.

 -- Debian Security <security@debian.org>  Mon, 01 Jan 2024 00:00:00 +0000

shadow (1:4.13+dfsg1-1) unstable; urgency=medium

  * CVE-2023-29383.

 -- Debian Security <security@debian.org>  Sun, 01 Jan 2023 00:00:00 +0000

shadow (4.5-1) unstable; urgency=low

  * Before the epoch: CVE-2017-2616.

 -- Debian Security <security@debian.org>  Sun, 01 Jan 2017 00:00:00 +0000
"""


def _entry(version: str, *cves: str) -> ChangelogEntry:
    return ChangelogEntry(f"p ({version}) unstable; urgency=low", "p", version,
                          ("unstable",), "low", tuple(f"  * {c}" for c in cves))


# --------------------------------------------------------------------------- parsing

def test_parse_entries_fields_and_cves():
    entries = parse_changelog(OPENSSL)
    assert [e.version for e in entries] == [
        "3.0.15-1~deb12u2", "3.0.15-1~deb12u1", "3.0.11-1~deb12u2", "3.0.11-1~deb12u1",
        "3.0.9-1"]
    top = entries[0]
    assert top.source == "openssl"
    assert top.distributions == ("bookworm-security",)
    assert top.urgency == "high"
    assert top.maintainer == "Sebastian Andrzej Siewior <sebastian@breakpoint.cc>"
    assert top.date == "Sun, 02 Feb 2025 10:00:00 +0100"
    assert top.header == "openssl (3.0.15-1~deb12u2) bookworm-security; urgency=high"
    assert top.changes[0] == ("  * CVE-2024-9143 (Low-level invalid GF(2^m) parameters lead to "
                              "OOB memory")
    assert top.cves == ("CVE-2024-13176", "CVE-2024-4741", "CVE-2024-5535", "CVE-2024-9143")
    assert entries[-1].cves == ("CVE-2023-2650",)


def test_find_cves_spellings():
    text = ("CVE-2024-1234, (CVE-2024-56789, cve-2024-0001) Cve-2023-1234567;"
            "debian/patches/CVE-2022-1111.patch fix_CVE-2021-2222 xCVE-2020-3333 "
            "CVE-2019-123 CVE-2019-12345678901234567890 CVE-2024-1234")
    assert find_cves(text) == ("CVE-2021-2222", "CVE-2022-1111", "CVE-2023-1234567",
                               "CVE-2024-0001", "CVE-2024-1234", "CVE-2024-56789")
    assert find_cves("") == ()


def test_old_format_tail_ends_the_parse():
    entries = parse_changelog(JUNK_TAIL)
    assert [e.version for e in entries] == ["1.1-1"]
    assert entries[0].cves == ("CVE-2020-1111",)


@pytest.mark.parametrize("junk", [
    "Local variables:", ";; Local Variables:", "vim: set ft=debchangelog:",
    "Mon Jan  1 12:00:00 1996  Ian Jackson  <ian@example.org>",
    "Tue Feb 12, 1996 Someone <x@y>", "foo (1.0)", "foo-1.0 Debian 1", "foo 1.0 Debian 1",
    "Changes from version 0.1 to 0.2:", "Changes for foo-1.0:", "1.0:", "2:1.0",
])
def test_where_dpkg_stops(junk):
    text = JUNK_TAIL.split(b"Old Changelog:")[0] + junk.encode() + b"\n" + OPENSSL
    assert [e.version for e in parse_changelog(text)] == ["1.1-1"]


@pytest.mark.parametrize("junk", [
    "# a comment", "$Id: changelog,v 1.1 2000/01/01 $", "/* C comment */",
    "Badly formatted heading line here", " -- not a trailer",
])
def test_what_dpkg_skips(junk):
    text = JUNK_TAIL.split(b"Old Changelog:")[0] + junk.encode() + b"\n" + OPENSSL
    entries = parse_changelog(text)
    assert [e.version for e in entries] == ["1.1-1", *(e.version for e in parse_changelog(OPENSSL))]
    assert entries[0].changes == ("  * Fixes CVE-2020-1111.",)


def test_headerless_changes_after_a_trailer_are_an_entry_without_version():
    text = OPENSSL.replace(b"openssl (3.0.11-1~deb12u1) bookworm; urgency=medium\n", b"")
    entries = parse_changelog(text)
    assert [e.version for e in entries] == [
        "3.0.15-1~deb12u2", "3.0.15-1~deb12u1", "3.0.11-1~deb12u2", "", "3.0.9-1"]
    assert entries[3].cves == ("CVE-2023-2975", "CVE-2023-3446", "CVE-2023-3817")
    assert entries[3].header == ""


def test_invalid_version_and_binary_only_headers():
    text = (b"foo (1.0-1+b1) unstable; urgency=low, binary-only=yes\n\n  * Rebuild.\n\n"
            b" -- B <b@d.o>  Mon, 01 Jan 2024 00:00:00 +0000\n\n"
            b"foo (a.0-1) unstable; urgency=LOW extra\n\n  * Bad version.\n\n"
            b" -- B <b@d.o>  Mon, 01 Jan 2024 00:00:00 +0000\n")
    entries = parse_changelog(text)
    assert [(e.source, e.version, e.urgency) for e in entries] == [
        ("foo", "1.0-1+b1", "low"), ("foo", "", "low")]


def test_crlf_non_utf8_and_empty():
    crlf = parse_changelog(OPENSSL.replace(b"\n", b"\r\n"))
    assert [e.version for e in crlf] == [e.version for e in parse_changelog(OPENSSL)]
    assert crlf[0].urgency == "high"
    assert crlf[0].cves == parse_changelog(OPENSSL)[0].cves
    latin1 = OPENSSL.replace(b"Andrzej", b"Andr\xe9j")
    assert parse_changelog(latin1)[0].maintainer.startswith("Sebastian Andr\ufffdj")
    assert parse_changelog(b"") == []
    assert parse_changelog(b"\n\n") == []


def test_size_ceiling():
    with pytest.raises(SizeMismatch):
        parse_changelog(OPENSSL, max_size=100)


@pytest.mark.parametrize("line", [
    "Mon Jan 1 12:30:45 " + "1111 (" * 20000,
    "Mon Jan 1, 2023 " + " ( " * 20000,
    "a-" * 50000,
    "Changes from version " + " to " * 20000,
    "Changes for " + "a-" * 50000 + " x",
    " -- " + " <>  1" * 20000,
    " -- " + "> 1 Jan 2023 12:00:00 +0000x" * 5000,
    "pkg (1.0) unstable;" + " " * 50000 + "x",
    "1:" + "a" * 100000 + " b",
])
def test_pathological_lines_are_linear(line):
    data = OPENSSL + line.encode() + b"\n"
    start = time.perf_counter()
    parse_changelog(data)
    assert time.perf_counter() - start < 0.5


# --------------------------------------------------------------------------- ranges

def test_range_with_the_installed_version_present():
    entries = parse_changelog(OPENSSL)
    assert cves_between(entries, "3.0.11-1~deb12u2", "3.0.15-1~deb12u2") == (
        "CVE-2024-13176", "CVE-2024-2511", "CVE-2024-4603", "CVE-2024-4741", "CVE-2024-5535",
        "CVE-2024-9143")
    assert cves_between(entries, "3.0.15-1~deb12u1", "3.0.15-1~deb12u2") == (
        "CVE-2024-13176", "CVE-2024-4741", "CVE-2024-5535", "CVE-2024-9143")
    assert cves_between(entries, "3.0.15-1~deb12u2", "3.0.15-1~deb12u2") == ()


def test_range_with_the_installed_version_absent():
    entries = parse_changelog(OPENSSL)
    # A binNMU of the installed version: above 3.0.11-1~deb12u2, below the next upload.
    assert [e.version for e in entries_between(entries, "3.0.11-1~deb12u2+b1",
                                               "3.0.15-1~deb12u2")] == [
        "3.0.15-1~deb12u2", "3.0.15-1~deb12u1"]
    # A version the changelog never had: the range ends at the next older entry.
    assert [e.version for e in entries_between(entries, "3.0.10-1~deb12u1",
                                               "3.0.15-1~deb12u2")][-1] == "3.0.11-1~deb12u1"
    # Older than every entry: all of them.
    assert len(entries_between(entries, "1.1.1n-0+deb11u4", "3.0.15-1~deb12u2")) == 5
    # A binNMU of the new version: the source entry is its top.
    assert cves_between(entries, "3.0.15-1~deb12u1", "3.0.15-1~deb12u2+b1") == (
        "CVE-2024-13176", "CVE-2024-4741", "CVE-2024-5535", "CVE-2024-9143")
    # binNMU to binNMU of the same source version: nothing changed.
    assert cves_between(entries, "3.0.15-1~deb12u2", "3.0.15-1~deb12u2+b1") == ()
    assert cves_between(entries, "3.0.15-1~deb12u2+b1", "3.0.15-1~deb12u2+b2") == ()


def test_range_is_positional_for_stable_rebuilds():
    entries = parse_changelog(REBUILD)
    # 1.14.10-1 > 1.14.10-1~deb12u1, yet its changes are what the rebuild brings.
    assert [e.version for e in entries_between(entries, "1.14.8-2~deb12u1",
                                               "1.14.10-1~deb12u1")] == [
        "1.14.10-1~deb12u1", "1.14.10-1"]
    assert cves_between(entries, "1.14.8-2~deb12u1", "1.14.10-1~deb12u1") == (
        "CVE-2023-34969", "CVE-2023-99999")


def test_range_with_epochs():
    entries = parse_changelog(EPOCHS)
    assert cves_between(entries, "1:4.13+dfsg1-1", "1:4.13+dfsg1-1+deb12u1") == (
        "CVE-2023-4641",)
    assert cves_between(entries, "1:4.13+dfsg1-1+deb12u1", "1:4.13+dfsg1-1+deb12u1") == ()
    # The pre-epoch entry is older than any epoch-1 version.
    assert cves_between(entries, "4.5-1", "1:4.13+dfsg1-1+deb12u1") == (
        "CVE-2023-29383", "CVE-2023-4641")
    # A version without the epoch is a different (older) version.
    assert cves_between(entries, "4.13+dfsg1-1", "1:4.13+dfsg1-1+deb12u1") == (
        "CVE-2023-29383", "CVE-2023-4641")
    assert cves_between(entries, "0:4.5-1", "1:4.13+dfsg1-1") == ("CVE-2023-29383",)


def test_range_edges():
    entries = [_entry("3.0-1", "CVE-2024-0003"), ChangelogEntry("", changes=("  CVE-2024-0025",)),
               _entry("2.0-1", "CVE-2024-0002"), _entry("1.0-1", "CVE-2024-0001")]
    # Entries without a version count by position.
    assert cves_between(entries, "2.0-1", "3.0-1") == ("CVE-2024-0003", "CVE-2024-0025")
    # A new version older than every entry: this changelog is not its history.
    assert cves_between(entries, "0.1-1", "0.5-1") == ()
    # Old newer than new: nothing.
    assert cves_between(entries, "3.0-1", "2.0-1") == ()
    assert cves_between([], "1.0", "2.0") == ()
    with pytest.raises(PackageFormatError, match="old version"):
        cves_between(entries, "", "3.0-1")
    with pytest.raises(PackageFormatError, match="new version"):
        cves_between(entries, "1.0", "3.0 1")


def test_source_version():
    assert source_version("gcc-defaults (1.203)", "4:12.2.0-3") == "1.203"
    assert source_version("openssl (3.0.15-1~deb12u1)", "3.0.15-1~deb12u1+b1") == "3.0.15-1~deb12u1"
    assert source_version("openssl", "3.0.15-1") == "3.0.15-1"
    assert source_version("", "1.0") == "1.0"
    assert source_version("foo ()", "1.0") == "1.0"


# --------------------------------------------------------------------------- dpkg as oracle

def _require_oracle() -> None:
    if shutil.which("perl") is None or subprocess.run(
            ["perl", "-MDpkg::Changelog::Debian", "-e", "1"], capture_output=True).returncode:
        pytest.skip("needs dpkg's perl modules (apt-get install libdpkg-perl)")


def _oracle(jobs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = subprocess.run(["perl", str(ORACLE)], input=json.dumps(jobs).encode(),
                         capture_output=True, check=True, timeout=300)
    return {d["path"]: d for d in map(json.loads, out.stdout.splitlines())}


def _summary(entries: list[ChangelogEntry]) -> list[dict[str, object]]:
    return [{"version": e.version, "changes": len(e.changes), "cves": list(e.cves),
             "date": e.date} for e in entries]


def _range_matches_dpkg(entries: list[ChangelogEntry], since: str, dpkg: list[str]) -> bool:
    """Whether our range is dpkg's, but for dpkg's quirk of answering everything when the
    start resolves to the newest entry (where we answer nothing)."""
    mine = [e.version for e in entries_between(entries, since, entries[0].version)]
    if mine == dpkg:
        return True
    return mine == [] and len(dpkg) == len(entries)


JUNK_LINES = [
    "Old Changelog:", "Mon Jan  1 12:00:00 1996  Ian Jackson  <ian@example.org>",
    "Tue Feb 12, 1996 Someone <x@y>", "Tue Feb 12 1996 Someone (x@y)", "foo (1.0)",
    "foo (1.0);", "foo (1.0) unstable", "foo (1.0) unstable ;", "foo-1.0 Debian 1",
    "foo 1.0 Debian 1", "foo 1.0 Debian", "Changes from version 0.1 to 0.2:",
    "Changes from version 0.1 to 0.2", "Changes for foo-1.0:", "Changes for foo:",
    "1.0:", "2:1.0", "2:1.0 x", "# comment", "#comment", "$Id: x $", "/* x */", "Heading",
    " -- x", " --", " -- A <a@b> Mon, 01 Jan 2024 00:00:00 +0000",
    " -- A <a@b>  01 Jan 2024 00:00:00 +0000", " -- <>  1 Jan 2024 1:00:00 -0100  ",
    " one blank", "\tone tab", "  ", "\t\t* tab change", "Local variables:", "vim:",
    "foo (1.0-1) unstable; urgency=low", "foo (a1) unstable; urgency=low", "  CVE-2000-0001",
    "Mon Jan 1 12:30:45 2023 ((((", "\u00e9 (1.0) unstable; urgency=low",
]


def test_parse_matches_dpkg_on_crafted_changelogs(tmp_path):
    _require_oracle()
    texts = {"openssl": OPENSSL, "junk": JUNK_TAIL, "rebuild": REBUILD, "epochs": EPOCHS}
    head = OPENSSL.split(b"\nopenssl (3.0.11")[0] + b"\n"
    for i, line in enumerate(JUNK_LINES):
        # A line after an entry, in the middle of one's changes, and before the first.
        texts[f"after{i}"] = head + line.encode() + b"\n\n" + REBUILD
        texts[f"inside{i}"] = head.replace(b"  * Import 3.0.15\n", line.encode() + b"\n") + REBUILD
        texts[f"first{i}"] = line.encode() + b"\n" + EPOCHS
    jobs: list[dict[str, Any]] = []
    for name, text in texts.items():
        path = tmp_path / name
        path.write_bytes(text)
        entries = parse_changelog(text)
        versions = [e.version for e in entries if e.version]
        since = [*versions[1:], "1.14.9-1", "0~"] if entries and entries[0].version else []
        jobs.append({"path": str(path), "since": since})
    dpkg = _oracle(jobs)
    for job in jobs:
        entries = parse_changelog(Path(str(job["path"])).read_bytes())
        expected = dpkg[str(job["path"])]
        assert _summary(entries) == expected["entries"], job["path"]
        for since, versions in expected["ranges"].items():
            assert _range_matches_dpkg(entries, since, versions), (job["path"], since)


def test_parse_matches_dpkg_on_the_hosts_changelogs():
    """Real changelogs on this host (about 120): the same entries, CVEs and ranges."""
    _require_oracle()
    files = sorted(Path("/usr/share/doc").glob("*/changelog.Debian.gz"))
    if not files:
        pytest.skip("no changelogs under /usr/share/doc on this host")
    files = files[:: max(1, len(files) // 120)]
    parsed = {str(f): parse_changelog(gzip.decompress(f.read_bytes())) for f in files}
    jobs: list[dict[str, Any]] = []
    for path, entries in parsed.items():
        versions = [e.version for e in entries if e.version]
        since = [*versions[1:4], *(v + "+b1" for v in versions[1:3]), "0~"]
        if len(versions) > 2:
            since += [versions[2] + "~deb12u1", versions[len(versions) // 2] + ".1"]
        jobs.append({"path": path, "since": since if entries and entries[0].version else []})
    dpkg = _oracle(jobs)
    for path, entries in parsed.items():
        assert _summary(entries) == dpkg[path]["entries"], path
        for since, versions in dpkg[path]["ranges"].items():
            assert _range_matches_dpkg(entries, since, versions), (path, since)


def _parsechangelog_cves(path: Path, since: str) -> tuple[str, ...]:
    """What ``dpkg-parsechangelog --since`` prints, reduced to its CVE identifiers."""
    out = subprocess.run(["dpkg-parsechangelog", "-l", str(path), "--since", since,
                          "-S", "Changes"], capture_output=True, check=True, text=True)
    return tuple(sorted({c.upper() for c in re.findall(r"CVE-\d{4}-\d{4,}", out.stdout, re.I)}))


@pytest.mark.parametrize(("text", "old"), [
    (OPENSSL, "3.0.11-1~deb12u2"), (OPENSSL, "3.0.11-1~deb12u2+b1"), (OPENSSL, "3.0.10-1"),
    (REBUILD, "1.14.8-2~deb12u1"), (EPOCHS, "1:4.13+dfsg1-1"),
])
def test_cves_match_dpkg_parsechangelog(tmp_path, text, old):
    if shutil.which("dpkg-parsechangelog") is None:
        pytest.skip("needs dpkg-parsechangelog (apt-get install dpkg-dev)")
    path = tmp_path / "changelog"
    path.write_bytes(text)
    entries = parse_changelog(text)
    assert cves_between(entries, old, entries[0].version) == _parsechangelog_cves(path, old)


# --------------------------------------------------------------------------- .debs

def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def test_read_changelog_from_a_deb(tmp_path):
    require_dpkg()
    deb = build_deb(tmp_path, "libfoo1", "3.0.15-1~deb12u2", files={
        "usr/lib/libfoo.so.1": File(b"\x7fELF" + b"\0" * 5000, 0o644),
        "usr/share/doc/libfoo1/changelog.Debian.gz": _gz(OPENSSL),
        "usr/share/doc/libfoo1/changelog.gz": _gz(b"upstream changes\n"),
        "usr/share/doc/libfoo1/copyright": b"(c)\n",
    })
    assert read_deb_changelog(deb, "libfoo1") == OPENSSL
    # A stream: read, not closed.
    stream = io.BytesIO(deb.read_bytes())
    assert read_deb_changelog(stream, "libfoo1") == OPENSSL
    assert not stream.closed
    # Another package's name: not this .deb's changelog.
    assert read_deb_changelog(deb, "libfoo-dev") is None
    assert cves_for_update(deb, "libfoo1", "3.0.15-1~deb12u1", "3.0.15-1~deb12u2") == (
        "CVE-2024-13176", "CVE-2024-4741", "CVE-2024-5535", "CVE-2024-9143")
    assert cves_for_update(deb, "libfoo1", None, "3.0.15-1~deb12u2") == ()
    assert cves_for_update(deb, "libfoo-dev", "3.0.15-1~deb12u1", "3.0.15-1~deb12u2") is None


def test_native_package_changelog(tmp_path):
    require_dpkg()
    deb = build_deb(tmp_path, "native", "1.0", files={
        "usr/share/doc/native/changelog.gz": _gz(EPOCHS)})
    assert read_deb_changelog(deb, "native") == EPOCHS
    plain = build_deb(tmp_path, "plain", "1.0", files={
        "usr/share/doc/plain/changelog.Debian": REBUILD,
        "usr/share/doc/plain/changelog": b"upstream\n"})
    assert read_deb_changelog(plain, "plain") == REBUILD


def test_doc_directory_linked_to_another_package(tmp_path):
    """libgnutlsxx30 -> libgnutls30, libpython3.11 -> libpython3.11-stdlib: not in this .deb."""
    require_dpkg()
    deb = build_deb(tmp_path, "libfoo-dev", "1.0-1", files={
        "usr/include/foo.h": b"int foo;\n",
        "usr/share/doc/libfoo-dev": Symlink("libfoo1"),
    })
    assert read_deb_changelog(deb, "libfoo-dev") is None
    assert cves_for_update(deb, "libfoo-dev", "0.9-1", "1.0-1") is None


def test_links_inside_the_same_deb_are_followed(tmp_path):
    require_dpkg()
    deb = build_deb(tmp_path, "multi", "1.0-1", files={
        "usr/share/doc/common/changelog.Debian.gz": _gz(OPENSSL),
        "usr/share/doc/multi": Symlink("/usr/share/doc/relay"),
        "usr/share/doc/relay": Symlink("common"),
        "usr/share/doc/other/changelog.Debian.gz": Symlink("../common/changelog.Debian.gz"),
        "usr/share/doc/hard/changelog.Debian.gz": Hardlink(
            "usr/share/doc/common/changelog.Debian.gz"),
        "usr/share/doc/escape/changelog.Debian.gz": Symlink("/etc/secret/changelog.Debian.gz"),
        "etc/secret/changelog.Debian.gz": _gz(EPOCHS),
        "usr/share/doc/loop": Symlink("loop2"),
        "usr/share/doc/loop2": Symlink("loop"),
    })
    assert read_deb_changelog(deb, "multi") == OPENSSL
    assert read_deb_changelog(deb, "other") == OPENSSL
    assert read_deb_changelog(deb, "hard") == OPENSSL
    assert read_deb_changelog(deb, "escape") is None
    assert read_deb_changelog(deb, "loop") is None


def test_bad_changelogs_raise_suture_errors(tmp_path):
    require_dpkg()
    deb = build_deb(tmp_path, "bad", "1.0-1", files={
        "usr/share/doc/bad/changelog.Debian.gz": b"\x1f\x8b\x08\x00garbage",
        "usr/share/doc/big/changelog.Debian.gz": _gz(b" " * (1 << 20)),
        "usr/share/doc/bigplain/changelog.Debian": b" " * 5000,
    })
    with pytest.raises(LayerError, match="cannot decompress"):
        read_deb_changelog(deb, "bad")
    with pytest.raises(SizeMismatch):
        read_deb_changelog(deb, "big", max_size=1 << 19)
    with pytest.raises(SizeMismatch):
        read_deb_changelog(deb, "bigplain", max_size=4096)
    with pytest.raises(PackageFormatError):
        read_deb_changelog(deb, "../bad")
    with pytest.raises(LayerError):
        read_deb_changelog(io.BytesIO(b"not a deb"), "bad")


# --------------------------------------------------------------------------- the real archive

HOST_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEBIAN = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"


def _security_sources(new: dict[str, Any], old: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """The source packages bookworm-security updates over the point release, each with
    its updated binaries (smallest first): openssl first, then by the smallest binary."""
    by_source: dict[str, list[str]] = {}
    for name, entry in new.items():
        if name in old and compare_versions(old[name].version, entry.version) < 0:
            source = entry.source.split()[0] if entry.source else name
            by_source.setdefault(source, []).append(name)
    for names in by_source.values():
        names.sort(key=lambda n: (new[n].size, n))
    return sorted(by_source.items(),
                  key=lambda item: (item[0] != "openssl", new[item[1][0]].size, item[0]))


@pytest.mark.network
def test_real_bookworm_security_update(tmp_path: Path) -> None:
    """A bookworm-security update's .debs against the bookworm point release, with
    ``dpkg-parsechangelog`` as the oracle: openssl's when there is one (both
    ``openssl`` and ``libssl3`` ship the changelog), otherwise the smallest updated
    source package whose changelog names CVEs. ``libgnutlsxx30``'s doc directory
    links to ``libgnutls30``, so it has no changelog of its own."""
    from suture.distro.dpkg.release import Keyring
    from suture.distro.dpkg.repo import AptFetcher

    if not HOST_KEYRING.exists():
        pytest.skip("needs debian-archive-keyring on the host")
    if shutil.which("dpkg-parsechangelog") is None:
        pytest.skip("needs dpkg-parsechangelog (apt-get install dpkg-dev)")
    keyring = Keyring.from_bytes(HOST_KEYRING.read_bytes())
    with AptFetcher(tmp_path / "cache", timeout=(10.0, 60.0)) as fetcher:
        security = fetcher.fetch_release(SECURITY, "bookworm-security", keyring)
        point = fetcher.fetch_release(DEBIAN, "bookworm", keyring)
        new = {e.package: e for e in security.packages("main", "amd64")}
        old = {e.package: e for e in point.packages("main", "amd64")}
        sources = _security_sources(new, old)
        assert sources, "bookworm-security updates nothing over the bookworm point release"
        chosen: tuple[str, dict[str, bytes], dict[str, Path], str, str] | None = None
        for source, names in sources[:8]:
            changelogs: dict[str, bytes] = {}
            debs: dict[str, Path] = {}
            if source == "openssl" and {"libssl3", "openssl"} <= set(names):
                names = ["libssl3", "openssl"]
            for name in names[:3]:  # checked against the signed SHA256 as downloaded
                deb = security.fetch_deb(new[name])
                data = read_deb_changelog(deb, name)
                if data is not None:
                    changelogs[name], debs[name] = data, deb
            if not changelogs:
                continue
            first = next(iter(changelogs))
            entry_old, entry_new = old[first], new[first]
            from_version = source_version(entry_old.source, entry_old.version)
            to_version = source_version(entry_new.source, entry_new.version)
            if cves_between(parse_changelog(changelogs[first]), from_version, to_version):
                chosen = (source, changelogs, debs, from_version, to_version)
                break
        if chosen is None:
            pytest.fail("no bookworm-security update among "
                        f"{[s for s, _ in sources[:8]]} names a CVE in its changelog")
        if "libgnutlsxx30" in new:
            assert read_deb_changelog(security.fetch_deb(new["libgnutlsxx30"]),
                                      "libgnutlsxx30") is None

    source, changelogs, debs, from_version, to_version = chosen
    if source == "openssl":
        assert set(changelogs) == {"libssl3", "openssl"}
    # Every binary of one source ships the same changelog.
    parsed = [parse_changelog(data) for data in changelogs.values()]
    assert all(p == parsed[0] for p in parsed)
    entries = parsed[0]
    assert entries[0].version == to_version
    cves = cves_between(entries, from_version, to_version)
    assert cves, "a security update names the CVEs it fixes"
    assert all(re.fullmatch(r"CVE-\d{4}-\d{4,}", c) for c in cves)
    name = next(iter(changelogs))
    path = tmp_path / "changelog"
    path.write_bytes(changelogs[name])
    assert cves == _parsechangelog_cves(path, from_version)
    for name, deb in debs.items():
        assert cves_for_update(deb, name, from_version, to_version) == cves
