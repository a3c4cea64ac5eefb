"""Reading .deb archives, checked against dpkg-deb on packages it built."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from suture.distro.dpkg.control import Conffile
from suture.distro.dpkg.deb import (
    SPOOL_MIN,
    DataEntry,
    DebControl,
    iter_deb_data,
    read_deb,
    read_deb_control,
)
from suture.errors import LayerError, PackageDBError, SizeMismatch
from suture.oci.layer import DIR, FIFO, FILE, HARDLINK, SYMLINK, write_tar

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")

EPOCH = 1700000000
LONG_NAME = "très-long-nom-de-fichier-ünïcödé-" * 5 + "終わり.txt"  # > 100 bytes of UTF-8
CONTROL = """\
Package: suture-test
Version: 1:1.2-3+deb12u1
Architecture: all
Maintainer: Suture Tests <tests@example.org>
Depends: libc6 (>= 2.34), foo | bar
Description: a package built by the tests
 It has a conffile, scripts, links,
 .
 and a file with a long name.
"""
POSTINST = b"#!/bin/sh\nset -e\necho configured\n"
PRERM = b"#!/bin/sh\nexit 0\n"
TRIGGERS = b"interest-noawait /usr/share/suture-test\n"


class Trickle(io.RawIOBase):
    """A forward-only stream that returns at most ``step`` bytes a read and cannot seek."""

    def __init__(self, data: bytes, step: int = 997) -> None:
        super().__init__()
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self._step, len(self._data) - self._pos)
        buffer[:n] = self._data[self._pos:self._pos + n]
        self._pos += n
        return n


def build_tree(root: Path) -> None:
    debian = root / "DEBIAN"
    debian.mkdir(parents=True)
    (debian / "control").write_text(CONTROL)
    (debian / "conffiles").write_text("/etc/suture/test.conf\n")
    for name, data, mode in (("postinst", POSTINST, 0o755), ("prerm", PRERM, 0o755),
                             ("triggers", TRIGGERS, 0o644)):
        (debian / name).write_bytes(data)
        (debian / name).chmod(mode)
    files = {
        "etc/suture/test.conf": b"key = value\n",
        "usr/bin/tool": b"#!/bin/sh\necho tool\n",
        "usr/bin/setuid-tool": b"\x7fELF pretend\n",
        "usr/share/suture-test/" + LONG_NAME: "contenu ünïcödé\n".encode(),
        "usr/share/suture-test/empty": b"",
        "usr/share/suture-test/big.bin": os.urandom(3 << 20),
        "usr/share/suture-test/shadow-group": b"group-owned\n",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        (root / name).chmod(0o644)
    (root / "usr/bin/tool").chmod(0o755)
    (root / "usr/bin/setuid-tool").chmod(0o4755)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-hardlink")
    (root / "usr/bin/tool-symlink").symlink_to("tool")
    (root / "usr/share/suture-test/abs-link").symlink_to("/etc/suture/test.conf")
    os.mkfifo(root / "usr/share/suture-test/fifo")
    if os.geteuid() == 0:
        os.chown(root / "usr/share/suture-test/shadow-group", 0, 42)
        (root / "usr/share/suture-test/shadow-group").chmod(0o2755)
    md5sums = subprocess.run(
        "find etc usr -type f -print0 | LC_ALL=C sort -z | xargs -0 md5sum", shell=True,
        cwd=root, capture_output=True, check=True).stdout
    (debian / "md5sums").write_bytes(md5sums)


COMPRESSORS = {"xz": ".xz", "gzip": ".gz", "zstd": ".zst", "none": ""}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree") / "root"
    build_tree(root)
    return root


@pytest.fixture(scope="module", params=list(COMPRESSORS))
def deb(request: pytest.FixtureRequest, tree: Path,
        tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("deb") / f"suture-test-{request.param}.deb"
    subprocess.run(["dpkg-deb", f"-Z{request.param}", "--build", str(tree), str(out)],
                   check=True, capture_output=True, env={**os.environ, "SOURCE_DATE_EPOCH":
                                                         str(EPOCH)})
    return out, request.param


def read_all(path: Path, **kw: int) -> list[DataEntry]:
    with path.open("rb") as f:
        return list(iter_deb_data(f, source=path.name, **kw))


# --- against dpkg-deb ----------------------------------------------------------------------

def test_members_are_what_dpkg_deb_built(deb: tuple[Path, str]) -> None:
    path, compressor = deb
    members = subprocess.run(["ar", "t", str(path)], capture_output=True, text=True,
                             check=True).stdout.split()
    suffix = COMPRESSORS[compressor]
    assert members == ["debian-binary", f"control.tar{suffix}", f"data.tar{suffix}"]
    with path.open("rb") as f:
        control, entries = read_deb(f, source=path.name)
        list(entries)
    kind = {"": "none", ".gz": "gzip", ".xz": "xz", ".zst": "zstd"}[suffix]
    assert (control.control_compression, control.data_compression) == (kind, kind)
    assert control.format_version == "2.0"


def test_control_matches_dpkg_deb(deb: tuple[Path, str], tree: Path, tmp_path: Path) -> None:
    path, _ = deb
    with path.open("rb") as f:
        control = read_deb_control(f, source=path.name)
    assert isinstance(control, DebControl)
    raw = subprocess.run(["dpkg-deb", "-I", str(path), "control"], capture_output=True,
                         check=True).stdout
    assert control.get("control") == raw
    for field in ("Package", "Version", "Architecture", "Depends", "Description"):
        value = subprocess.run(["dpkg-deb", "-f", str(path), field], capture_output=True,
                               text=True, check=True).stdout
        assert control.paragraph[field] == value.rstrip("\n"), field
    assert (control.name, control.version, control.architecture) == (
        "suture-test", "1:1.2-3+deb12u1", "all")
    # dpkg-deb -e extracts the control members: same names, bytes and modes.
    subprocess.run(["dpkg-deb", "-e", str(path), str(tmp_path / "ctrl")], check=True)
    on_disk = {p.name: p for p in (tmp_path / "ctrl").iterdir()}
    assert set(control.files) == set(on_disk)
    for name, member in control.files.items():
        assert member.data == on_disk[name].read_bytes(), name
        assert member.mode == stat.S_IMODE(on_disk[name].stat().st_mode), name
    assert control.conffiles == [Conffile("/etc/suture/test.conf")]
    assert set(control.scripts) == {"postinst", "prerm"}
    assert control.scripts["postinst"].data == POSTINST
    assert control.scripts["postinst"].mode == 0o755
    assert control.get("triggers") == TRIGGERS
    assert control.get("preinst") is None
    regular = {str(p.relative_to(tree)) for p in tree.rglob("*")
               if p.is_file() and not p.is_symlink() and "DEBIAN" not in p.parts}
    assert set(control.md5sums) == regular
    for name, md5 in control.md5sums.items():
        assert hashlib.md5((tree / name).read_bytes()).hexdigest() == md5


def assert_matches_fsys_tarfile(path: Path, ours: list[DataEntry]) -> None:
    """Every member, in order, as dpkg-deb decompresses it: names, kinds, modes, owners, bytes."""
    plain = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(path)], capture_output=True,
                           check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(plain), encoding="utf-8") as tar:
        theirs = [m for m in tar.getmembers() if m.name.strip("./")]
        assert [e.path for e in ours] == [m.name.removeprefix("./").rstrip("/")
                                          for m in theirs]
        kinds = {tarfile.REGTYPE: FILE, tarfile.DIRTYPE: DIR, tarfile.SYMTYPE: SYMLINK,
                 tarfile.LNKTYPE: HARDLINK, tarfile.FIFOTYPE: FIFO}
        for entry, member in zip(ours, theirs, strict=True):
            assert entry.kind == kinds[member.type], entry.path
            assert entry.mode == member.mode, entry.path
            assert (entry.uid, entry.gid, entry.uname, entry.gname) == (
                member.uid, member.gid, member.uname, member.gname)
            assert entry.mtime == member.mtime
            if entry.kind == FILE:
                handle = tar.extractfile(member)
                assert handle is not None
                assert entry.data == handle.read()
                assert entry.size == member.size == len(entry.data)
            elif entry.kind == HARDLINK:
                assert entry.linkname == member.linkname.removeprefix("./")
            elif entry.kind == SYMLINK:
                assert entry.linkname == member.linkname
            else:
                assert entry.data is None and entry.size == 0


def test_data_matches_dpkg_deb_fsys_tarfile(deb: tuple[Path, str]) -> None:
    path, _ = deb
    ours = read_all(path)
    assert {e.mtime for e in ours} == {EPOCH}
    assert_matches_fsys_tarfile(path, ours)


_CONTENTS = re.compile(r"(\S{10}) (\S+)/(\S+) +(\d+) \S+ \S+ (.*)")


def test_data_matches_dpkg_deb_contents(deb: tuple[Path, str]) -> None:
    path, _ = deb
    ours = read_all(path)
    lines = subprocess.run(["dpkg-deb", "--contents", str(path)], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    listing = []
    for line in lines:
        m = _CONTENTS.fullmatch(line)
        assert m is not None, line
        perms, owner, group, size, rest = m.groups()
        name, _, target = re.split(r" (-> |link to )", rest)[0], None, None
        if " -> " in rest:
            name, target = rest.split(" -> ", 1)
        elif " link to " in rest:
            name, target = rest.split(" link to ", 1)
            target = target.removeprefix("./")
        if name == "./":
            continue
        listing.append((perms, owner, group, int(size), name.removeprefix("./").rstrip("/"),
                        target))
    type_letter = {FILE: "-", DIR: "d", SYMLINK: "l", HARDLINK: "h", FIFO: "p"}
    mine = [(type_letter[e.kind] + stat.filemode(e.mode)[1:], e.uname, e.gname, e.size,
             e.path, e.linkname or None) for e in ours]
    assert mine == listing


def test_data_matches_dpkg_deb_extract(deb: tuple[Path, str], tmp_path: Path) -> None:
    path, _ = deb
    out = tmp_path / "x"
    subprocess.run(["dpkg-deb", "-x", str(path), str(out)], check=True)
    ours = read_all(path)
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*")}
    assert {e.path for e in ours} == on_disk
    for e in ours:
        target = out / e.path
        st = target.lstat()
        if e.kind == SYMLINK:
            assert os.readlink(target) == e.linkname
            continue
        if os.geteuid() == 0:
            assert stat.S_IMODE(st.st_mode) == e.mode, e.path
        if e.kind == FILE:
            assert target.read_bytes() == e.data
        elif e.kind == HARDLINK:
            assert st.st_ino == (out / e.linkname).lstat().st_ino
        elif e.kind == FIFO:
            assert stat.S_ISFIFO(st.st_mode)


def test_special_members_read_as_expected(deb: tuple[Path, str]) -> None:
    path, _ = deb
    by_path = {e.path: e for e in read_all(path)}
    assert "" not in by_path and "." not in by_path
    assert by_path["usr/bin/setuid-tool"].mode == 0o4755
    assert by_path["usr/bin/tool-hardlink"].kind == HARDLINK
    assert by_path["usr/bin/tool-hardlink"].linkname in ("usr/bin/tool",)
    assert by_path["usr/bin/tool-symlink"].linkname == "tool"
    assert by_path["usr/share/suture-test/abs-link"].linkname == "/etc/suture/test.conf"
    long = by_path["usr/share/suture-test/" + LONG_NAME]
    assert long.data == "contenu ünïcödé\n".encode()
    assert len(long.path.encode()) > 100
    assert by_path["usr/share/suture-test/empty"].data == b""
    assert by_path["usr/share/suture-test/fifo"].kind == FIFO
    assert by_path["usr/share/suture-test/big.bin"].size == 3 << 20
    if os.geteuid() == 0:
        shadow = by_path["usr/share/suture-test/shadow-group"]
        assert (shadow.gid, shadow.mode) == (42, 0o2755)


def test_one_pass_on_a_trickling_stream(deb: tuple[Path, str]) -> None:
    path, _ = deb
    data = path.read_bytes()
    control, entries = read_deb(Trickle(data), source=path.name)  # type: ignore[arg-type]
    assert control.name == "suture-test"
    streamed = list(entries)
    assert [(e.path, e.data) for e in streamed] == [(e.path, e.data) for e in read_all(path)]


def test_entries_make_a_layer(deb: tuple[Path, str]) -> None:
    path, _ = deb
    entries = read_all(path)
    out = io.BytesIO()
    write_tar([e.to_entry() for e in entries], out, mtime=0)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue()), encoding="utf-8") as tar:
        names = {m.name.rstrip("/"): m for m in tar.getmembers()}
        assert set(names) == {e.path for e in entries}
        tool = tar.extractfile(names["usr/bin/tool"])
        assert tool is not None and tool.read() == b"#!/bin/sh\necho tool\n"
        assert names["usr/bin/setuid-tool"].mode == 0o4755
        assert names["usr/bin/tool-hardlink"].linkname == "usr/bin/tool"
        assert names["usr/bin/tool-symlink"].issym()
        assert names["usr/share/suture-test/abs-link"].mtime == EPOCH
    assert entries[0].to_entry(uid=7, mtime=0).uid == 7


def test_gnu_ar_member_names(deb: tuple[Path, str], tmp_path: Path) -> None:
    # GNU ar ends member names with '/': dpkg reads such archives, so do we.
    path, compressor = deb
    subprocess.run(["ar", "x", str(path)], cwd=tmp_path, check=True)
    suffix = COMPRESSORS[compressor]
    rebuilt = tmp_path / "rebuilt.deb"
    subprocess.run(["ar", "rcD", str(rebuilt), "debian-binary", f"control.tar{suffix}",
                    f"data.tar{suffix}"], cwd=tmp_path, check=True)
    assert b"debian-binary/" in rebuilt.read_bytes()[:80]
    assert [e.path for e in read_all(rebuilt)] == [e.path for e in read_all(path)]


# --- real packages from the Debian archive ------------------------------------------------

REAL_PACKAGES = ["passwd", "tzdata", "libc6"]  # setuid/setgid, many symlinks, conffiles


@pytest.fixture(scope="module")
def real_debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("apt-get") is None:
        pytest.skip("needs apt-get")
    where = tmp_path_factory.mktemp("real")
    result = subprocess.run(["apt-get", "download", *REAL_PACKAGES], cwd=where,
                            capture_output=True, timeout=300)
    if result.returncode != 0:
        pytest.skip(f"apt-get download failed: {result.stderr[-200:]!r}")
    return {p.name.split("_")[0]: p for p in where.glob("*.deb")}


@pytest.mark.network
@pytest.mark.parametrize("name", REAL_PACKAGES)
def test_real_debian_packages(real_debs: dict[str, Path], name: str) -> None:
    path = real_debs[name]
    with path.open("rb") as f:
        control, entries = read_deb(f, source=path.name)
        ours = list(entries)
    assert control.name == name
    assert control.get("control") == subprocess.run(
        ["dpkg-deb", "-I", str(path), "control"], capture_output=True, check=True).stdout
    assert set(control.md5sums) <= {e.path for e in ours if e.kind in (FILE, HARDLINK)}
    for entry in ours:
        if entry.kind == FILE and entry.path in control.md5sums:
            assert isinstance(entry.data, bytes)
            assert hashlib.md5(entry.data).hexdigest() == control.md5sums[entry.path]
    assert_matches_fsys_tarfile(path, ours)


@pytest.mark.network
def test_large_files_are_spooled_to_disk(real_debs: dict[str, Path], tmp_path: Path) -> None:
    """With a spool directory, files of SPOOL_MIN bytes or more are read from a copy on
    disk (same bytes, MD5 computed on the way), the rest stay in memory."""
    path = real_debs["libc6"]  # libc.so.6 is about 2 MB
    with path.open("rb") as f:
        _, entries = read_deb(f, source=path.name)
        in_memory = {e.path: e for e in entries}
    with path.open("rb") as f:
        control, entries = read_deb(f, source=path.name, spool=tmp_path)
        spooled = list(entries)
    big = [e for e in spooled if e.kind == FILE and e.size >= SPOOL_MIN]
    assert big and all(callable(e.data) for e in big)
    assert len(list(tmp_path.iterdir())) == len(big)
    for entry in spooled:
        assert entry.read() == in_memory[entry.path].read()
        if entry.path in control.md5sums:
            assert entry.md5sum() == control.md5sums[entry.path]


# --- crafted archives ----------------------------------------------------------------------

def ar(members: list[tuple[str, bytes]]) -> bytes:
    out = [b"!<arch>\n"]
    for name, data in members:
        out.append(f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode())
        out.append(data + (b"\n" if len(data) % 2 else b""))
    return b"".join(out)


def tar_of(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "",
         mode: int = 0o644) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mode, ti.mtime = kind, linkname, mode, EPOCH
    return ti


CONTROL_TAR = tar_of([(info("./", tarfile.DIRTYPE, mode=0o755), None),
                      (info("./control"), b"Package: crafted\nVersion: 1\n"
                                          b"Architecture: all\n")])


def crafted(data_members: list[tuple[tarfile.TarInfo, bytes | None]],
            compress: str = "", extra: list[tuple[str, bytes]] | None = None) -> bytes:
    data = tar_of([(info("./", tarfile.DIRTYPE, mode=0o755), None), *data_members])
    packed = {"": data, ".gz": gzip.compress(data), ".xz": lzma.compress(data),
              ".bz2": bz2.compress(data),
              ".lzma": lzma.compress(data, format=lzma.FORMAT_ALONE)}[compress]
    return ar([("debian-binary", b"2.0\n"), ("control.tar.gz", gzip.compress(CONTROL_TAR)),
               *(extra or []), ("data.tar" + compress, packed)])


def entries_of(deb: bytes, **kw: int) -> list[DataEntry]:
    return list(iter_deb_data(io.BytesIO(deb), source="crafted.deb", **kw))


@pytest.mark.parametrize("compress", ["", ".gz", ".xz", ".bz2", ".lzma"])
def test_crafted_compressions_are_read(compress: str) -> None:
    deb = crafted([(info("./usr/", tarfile.DIRTYPE, mode=0o755), None),
                   (info("./usr/a"), b"hello")], compress,
                  extra=[("_gpgorigin", b"signature, ignored")])
    entries = entries_of(deb)
    assert [(e.path, e.kind, e.data) for e in entries] == [("usr", DIR, None),
                                                           ("usr/a", FILE, b"hello")]


def test_names_are_normalised() -> None:
    deb = crafted([(info("/etc/abs"), b"x"), (info("usr//./b"), b"y"),
                   (info("./usr/c/", tarfile.DIRTYPE), None)])
    assert [e.path for e in entries_of(deb)] == ["etc/abs", "usr/b", "usr/c"]


UNSAFE = [
    ("dotdot", [(info("./../etc/passwd"), b"x")], "'..'"),
    ("dotdot-inside", [(info("./usr/../../etc/passwd"), b"x")], "'..'"),
    ("hardlink-dotdot", [(info("./a"), b"x"),
                         (info("./b", tarfile.LNKTYPE, "../../etc/shadow"), None)], "'..'"),
    ("hardlink-outside", [(info("./b", tarfile.LNKTYPE, "/etc/shadow"), None)],
     "not an earlier file"),
    ("hardlink-forward", [(info("./b", tarfile.LNKTYPE, "./a"), None), (info("./a"), b"x")],
     "not an earlier file"),
    ("hardlink-to-dir", [(info("./d", tarfile.DIRTYPE), None),
                         (info("./b", tarfile.LNKTYPE, "./d"), None)], "not an earlier file"),
    ("char-device", [(info("./dev/null", tarfile.CHRTYPE), None)], "device node"),
    ("block-device", [(info("./dev/sda", tarfile.BLKTYPE), None)], "device node"),
    ("below-symlink", [(info("./lib", tarfile.SYMTYPE, "/etc"), None),
                       (info("./lib/passwd"), b"x")], "below the symlink"),
    ("duplicate", [(info("./a"), b"x"), (info("./a"), b"y")], "given twice"),
    ("newline", [(info("./a\nb"), b"x")], "newline"),
    ("empty-symlink", [(info("./s", tarfile.SYMTYPE, ""), None)], "no target"),
]


@pytest.mark.parametrize(("members", "message"), [(m, msg) for _, m, msg in UNSAFE],
                         ids=[name for name, _, _ in UNSAFE])
def test_unsafe_members_are_refused(members: list[tuple[tarfile.TarInfo, bytes | None]],
                                    message: str) -> None:
    with pytest.raises(LayerError) as exc:
        entries_of(crafted(members))
    assert message in str(exc.value)
    assert "crafted.deb: data.tar" in str(exc.value)
    assert exc.value.path


def test_entries_before_an_unsafe_one_are_yielded_first() -> None:
    deb = crafted([(info("./ok"), b"fine"), (info("./../escape"), b"x")])
    it = iter_deb_data(io.BytesIO(deb))
    assert next(it).path == "ok"
    with pytest.raises(LayerError, match="escape"):
        next(it)


def test_dpkg_deb_refuses_dotdot_too(tmp_path: Path) -> None:
    # The same crafted archive is not one dpkg would unpack either.
    deb = tmp_path / "evil.deb"
    deb.write_bytes(crafted([(info("./../escape"), b"x")]))
    result = subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path / "out")],
                            capture_output=True)
    assert result.returncode != 0
    assert b"contains '..'" in result.stderr
    assert not (tmp_path / "escape").exists()


def test_size_ceilings() -> None:
    zeros = b"\0" * (4 << 20)
    deb = crafted([(info("./big"), zeros)], ".xz")
    assert len(deb) < 10_000  # it is a compression bomb in miniature
    with pytest.raises(SizeMismatch) as exc:
        entries_of(deb, max_file_size=1 << 20)
    assert "big" in str(exc.value)
    with pytest.raises(SizeMismatch):
        entries_of(deb, max_size=1 << 20)
    assert entries_of(deb, max_size=8 << 20)[0].size == 4 << 20
    with pytest.raises(SizeMismatch):
        read_deb_control(io.BytesIO(deb), max_size=1000)


MALFORMED = [
    ("not-ar", b"PK\x03\x04 not an ar archive at all", "no ar archive header"),
    ("no-debian-binary", ar([("control.tar.gz", gzip.compress(CONTROL_TAR))]),
     "first member is not debian-binary"),
    ("format-3", ar([("debian-binary", b"3.0\n")]), "format version"),
    ("no-control", ar([("debian-binary", b"2.0\n")]), "no control.tar"),
    ("wrong-order", ar([("debian-binary", b"2.0\n"), ("data.tar.gz", b"")]),
     "unexpected member 'data.tar.gz'"),
    ("unknown-compression", ar([("debian-binary", b"2.0\n"), ("control.tar.lz4", b"")]),
     "unexpected member"),
    ("truncated", crafted([(info("./a"), b"x" * 5000)])[:-3000], "truncated"),
    ("corrupt-gzip", ar([("debian-binary", b"2.0\n"), ("control.tar.gz", b"\x1f\x8bnot gzip")]),
     "control.tar"),
]


@pytest.mark.parametrize(("data", "message"), [(d, m) for _, d, m in MALFORMED],
                         ids=[n for n, _, _ in MALFORMED])
def test_malformed_archives_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(LayerError) as exc:
        _, entries = read_deb(io.BytesIO(data), source="bad.deb")
        list(entries)
    assert message in str(exc.value)
    assert str(exc.value).startswith("bad.deb")


def test_control_tar_must_hold_plain_files() -> None:
    bad_control = tar_of([(info("./control"), b"Package: x\n"),
                          (info("./sub/file"), b"")])
    deb = ar([("debian-binary", b"2.0\n"), ("control.tar", bad_control)])
    with pytest.raises(LayerError, match="plain files"):
        read_deb_control(io.BytesIO(deb))
    two = tar_of([(info("./control"), b"Package: x\n\nPackage: y\n")])
    with pytest.raises(PackageDBError, match="expected one"):
        read_deb_control(io.BytesIO(ar([("debian-binary", b"2.0\n"), ("control.tar", two)])))
    none = tar_of([(info("./md5sums"), b"")])
    with pytest.raises(LayerError, match="no control file"):
        read_deb_control(io.BytesIO(ar([("debian-binary", b"2.0\n"), ("control.tar", none)])))
