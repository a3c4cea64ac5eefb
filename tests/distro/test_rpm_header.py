"""rpm headers read by :mod:`suture.distro.rpm.header`, judged by the real rpm: packages
built by rpmbuild are queried with ``rpm -qp --qf`` and must give the same values, the
real CBL-Mariner 2.0 database's 129 headers parse whole, and broken headers are
refused with one error."""

from __future__ import annotations

import sqlite3
import struct
import subprocess
from pathlib import Path

import pytest

from suture.distro.rpm.header import MAGIC, Header, HeaderError, Tag, pad8, parse_header
from tests.fixtures.rpmbuild import build_rpm, have_rpm_tools

pytestmark = pytest.mark.skipif(not have_rpm_tools(), reason="needs rpm and rpmbuild")

MARINER = Path(__file__).parents[2].parent / "shared/testdata/rpmdb/cbl-mariner-2.0/rpmdb.sqlite"

SPEC = """Name: hdrtest
Epoch: 3
Version: 1.2~rc1
Release: 4.sut9
Summary: header test package
License: MIT
BuildArch: noarch
Provides: hdrtest-virtual = 7
Requires(pre): /bin/sh
Requires: libfoo >= 1.0, (libbar or libbaz)
Obsoletes: oldtest < 2
%description
A package whose header the tests read.
%install
mkdir -p %{buildroot}/etc %{buildroot}/usr/share/hdrtest
echo conf > %{buildroot}/etc/hdrtest.conf
printf 'x%.0s' $(seq 1 100) > %{buildroot}/usr/share/hdrtest/data
ln -s data %{buildroot}/usr/share/hdrtest/link
%post
echo "post $1"
%files
%config(noreplace) /etc/hdrtest.conf
/usr/share/hdrtest
"""


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_rpm(SPEC, tmp_path_factory.mktemp("hdr"), payload="xz")[0]


def _read(path: Path) -> tuple[Header, Header]:
    data = path.read_bytes()
    sig, end = parse_header(data, 96, what=path.name)
    main, _ = parse_header(data, end + pad8(end), what=path.name)
    return sig, main


def _rpm_q(path: Path, fmt: str) -> str:
    return subprocess.run(["rpm", "-qp", "--nosignature", "--nodigest", "--qf", fmt, str(path)],
                          check=True, capture_output=True, text=True).stdout


def test_values_agree_with_rpm(package: Path) -> None:
    _sig, main = _read(package)
    assert main.string(Tag.NAME) == _rpm_q(package, "%{NAME}") == "hdrtest"
    assert main.number(Tag.EPOCH) == int(_rpm_q(package, "%{EPOCH}")) == 3
    assert main.string(Tag.VERSION) == _rpm_q(package, "%{VERSION}")
    assert main.string(Tag.RELEASE) == _rpm_q(package, "%{RELEASE}")
    assert main.string(Tag.SUMMARY) == _rpm_q(package, "%{SUMMARY}")
    assert main.string(Tag.PAYLOADCOMPRESSOR) == "xz"
    assert list(main.strings(Tag.REQUIRENAME)) == \
        _rpm_q(package, "[%{REQUIRENAME}\n]").splitlines()
    assert list(main.ints(Tag.REQUIREFLAGS)) == \
        [int(x) for x in _rpm_q(package, "[%{REQUIREFLAGS}\n]").split()]
    assert list(main.strings(Tag.PROVIDENAME)) == \
        _rpm_q(package, "[%{PROVIDENAME}\n]").splitlines()
    assert list(main.ints(Tag.FILESIZES)) == \
        [int(x) for x in _rpm_q(package, "[%{FILESIZES}\n]").split()]
    assert list(main.ints(Tag.FILEMODES)) == \
        [int(x) for x in _rpm_q(package, "[%{FILEMODES}\n]").split()]
    assert list(main.strings(Tag.BASENAMES)) == \
        _rpm_q(package, "[%{BASENAMES}\n]").splitlines()
    assert main.string(Tag.POSTIN) == _rpm_q(package, "%{POSTIN}")
    assert "(libbar or libbaz)" in main.strings(Tag.REQUIRENAME)


def test_signature_header_and_layout(package: Path) -> None:
    data = package.read_bytes()
    sig, end = parse_header(data, 96)
    assert sig.tags[0] == Tag.HEADERSIGNATURES
    assert end + pad8(end) < len(data)
    main, main_end = parse_header(data, end + pad8(end))
    assert main.tags[0] == Tag.HEADERIMMUTABLE
    # SHA256HEADER covers the main header with its magic: the bytes parse_header kept.
    import hashlib

    assert sig.string(Tag.SHA256HEADER) == hashlib.sha256(MAGIC + main.blob).hexdigest()
    assert main_end < len(data)  # the payload follows


def test_mariner_database_headers_parse_whole() -> None:
    if not MARINER.is_file():
        pytest.skip("shared test data not beside the checkout")
    db = sqlite3.connect(f"file:{MARINER}?mode=ro&immutable=1", uri=True)
    names = []
    for _hnum, blob in db.execute("SELECT hnum, blob FROM Packages"):
        header, end = parse_header(blob, magic=False)
        assert end == len(blob)
        names.append(header.string(Tag.NAME))
    assert len(names) == 129
    assert "glibc" in names and "openssl" in names


@pytest.mark.parametrize("damage", ["magic", "truncate", "count", "offset", "string"])
def test_broken_headers_refused(package: Path, damage: str) -> None:
    data = bytearray(package.read_bytes())
    _sig, end = parse_header(bytes(data), 96)
    start = end + pad8(end)
    il, dl = struct.unpack_from(">II", data, start + 8)
    entry = start + 16 + 16 * 2  # the third index entry (NAME or near it)
    if damage == "magic":
        data[start] ^= 0xFF
    elif damage == "truncate":
        del data[start + 16 + 16 * il + dl // 2:]
    elif damage == "count":
        struct.pack_into(">I", data, start + 8, 0x7FFFFFFF)
    elif damage == "offset":
        struct.pack_into(">i", data, entry + 8, dl + 4)
    else:  # a string whose terminating NUL is gone: every NUL of the data replaced
        base = start + 16 + 16 * il
        data[base:base + dl] = bytes(b or 0x41 for b in data[base:base + dl])
    with pytest.raises(HeaderError):
        parse_header(bytes(data), start, what="damaged")
