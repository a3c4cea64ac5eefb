"""container-manifest-1/2 (distroless Azure Linux and CBL-Mariner) against what the real
``rpm -qa`` prints with the distribution's query formats, on a root rpm populated."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from suture.distro.rpm.manifest import (
    MANIFEST2_FORMAT,
    entry_of,
    parse_manifest2,
    updated_manifest,
    write_manifests,
)
from suture.distro.rpm.rpmdb import read_sqlite
from suture.errors import PackageDBError
from tests.fixtures.rpmbuild import RPM_DB
from tests.fixtures.rpmrepo import RpmWorld


def _qa(root: Path, *fmt: str) -> bytes:
    return subprocess.run(["rpm", "--root", str(root), *RPM_DB, "-qa", *fmt], check=True,
                          capture_output=True, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
                          ).stdout


def test_manifests_as_rpm_prints_them(rpm_world: RpmWorld, tmp_path: Path) -> None:
    root = rpm_world.make_root(tmp_path / "root", "azurelinux")
    subprocess.run(["rpm", "--root", str(root), *RPM_DB, "-e", "--allmatches", "gpg-pubkey"],
                   check=True, capture_output=True)
    m2 = _qa(root, "--qf", MANIFEST2_FORMAT)
    entries = parse_manifest2(m2)
    assert sorted(e.name for e in entries) == ["libsut", "sut-release", "sut-sh", "sutprog"]
    one, two = write_manifests(entries)
    assert two == m2
    assert one == _qa(root)  # rpm -qa: %{nvr}%{archsuffix}, in the same order
    # a header gives the line rpm prints for it
    installed = read_sqlite(root / "var/lib/rpm/rpmdb.sqlite")
    for pkg, entry in zip(installed, entries, strict=True):
        assert entry_of(pkg.header, install_time=int(entry.install_time)) == entry
    # an upgrade: the old line goes, the new one is appended
    new = entries[1].__class__(**{**entries[1].__dict__, "version": "2.0"})
    after = updated_manifest(entries, [entries[1]], [new])
    assert after == [entries[0], *entries[2:], new]


@pytest.mark.parametrize(("line", "message"), [
    ("a\tb", "2 fields, not 10"),
    ("vim\t9.0\t1\t2\tV\t2\t3\tx86_64\t2\tvim.src.rpm", "not NAME VERSION-RELEASE"),
    ("vim\t9.0-1\t1\t2\tV\tx\t3\tx86_64\t2\tvim.src.rpm", "epoch 'x' is not a number"),
    ("vim\t9.0-1\t1\t2\tV\t2\t3\tx86_64\t1\tvim.src.rpm", "EPOCHNUM '1' does not match"),
])
def test_bad_manifest_lines(line: str, message: str) -> None:
    with pytest.raises(PackageDBError, match=f"line 2: {message}"):
        parse_manifest2(b"glibc\t2.35-2.cm2\t1653816591\t1653628955\tMicrosoft Corporation\t"
                        b"(none)\t10855265\tx86_64\t0\tglibc-2.35-2.cm2.src.rpm\n"
                        + line.encode() + b"\n")


def test_entry_header_round_trip() -> None:
    """An entry's header says what the line says: read back, it gives the same line."""
    (entry,) = parse_manifest2(b"vim\t9.0-1.cm2\t1653816591\t1653628955\tMicrosoft Corporation"
                               b"\t2\t45000\tx86_64\t2\tvim-9.0-1.cm2.src.rpm\n")
    header = entry.header()
    assert entry_of(header, install_time=1653816591) == entry
    assert entry.info.evr == "2:9.0-1.cm2"
