"""Reading rpm package files, against packages built, signed and unpacked by the real
tools (rpmbuild, rpmsign with gpg and gpg1, rpm2archive, rpmkeys).

Every package is built once per module. Tampered copies are judged by ``rpmkeys
--checksig`` too (it must refuse what we refuse); payloads whose digests were
recomputed after the change (as a hostile repository would serve them) are refused
by the file checks of :meth:`RpmArchive.members`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import random
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from suture.distro.rpm.header import Header, Tag, pad8, parse_header
from suture.distro.rpm.package import RpmArchive, RpmPackageError, read_rpm
from suture.distro.rpm.sign import Keyring, RpmSignatureError
from tests.fixtures.rpmbuild import GpgKey, build_rpm, have_rpm_tools, make_gpg_key, sign_rpms

pytestmark = pytest.mark.skipif(
    not have_rpm_tools() or not all(shutil.which(t) for t in ("rpm2archive", "rpmkeys")),
    reason="rpm tools missing")

PAYLOADS = ("zstd", "xz", "gzip", "none", "bzip2", "lzma")
OLD_PAYLOADS = {"bzip2": "w9.bzdio", "lzma": "w6.lzdio"}  # not in rpmbuild.PAYLOADS

SPEC = """\
Name: sutpayload
Version: 1.0
Release: 1
Summary: payload test
License: MIT
BuildArch: noarch

%description
A package whose payload holds one file of each kind.

%install
mkdir -p %{buildroot}/usr/share/sut/dir %{buildroot}/usr/bin %{buildroot}/etc
printf 'hello\\n' > %{buildroot}/usr/share/sut/a
ln %{buildroot}/usr/share/sut/a %{buildroot}/usr/share/sut/b
ln -s ../share/sut/a %{buildroot}/usr/bin/sut-link
: > %{buildroot}/usr/share/sut/empty
seq 1 400000 | head -c 2097152 > %{buildroot}/usr/share/sut/big
printf 'x=1\\n' > %{buildroot}/etc/sut.conf

%files
/usr/share/sut
/usr/bin/sut-link
%config(noreplace) /etc/sut.conf
%ghost /var/log/sut.log
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("rpms")
    out = {}
    for p in PAYLOADS:
        if p in OLD_PAYLOADS:  # a later --define wins over the fixture's own
            out[p] = build_rpm(SPEC, base / p, payload="none",
                               defines={"_binary_payload": OLD_PAYLOADS[p]})[0]
        else:
            out[p] = build_rpm(SPEC, base / p, payload=p)[0]
    return out


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, GpgKey]:
    if not all(shutil.which(t) for t in ("gpg", "gpg1")):
        pytest.skip("gpg or gpg1 missing")
    base = tmp_path_factory.mktemp("keys")
    return {"v4": make_gpg_key(base / "v4", "v4@suture.test"),
            "v3": make_gpg_key(base / "v3", "v3@suture.test", gpg1=True),
            "other": make_gpg_key(base / "other", "other@suture.test")}


@pytest.fixture(scope="module")
def signed(built: dict[str, Path], keys: dict[str, GpgKey],
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("signed")
    out = {}
    for name, payload in (("v4", "zstd"), ("v3", "xz")):
        path = base / name / built[payload].name
        path.parent.mkdir()
        shutil.copy(built[payload], path)
        sign_rpms([path], keys[name], v3=name == "v3")
        out[name] = path
    return out


def _ring(key: GpgKey) -> Keyring:
    return Keyring.load([(key.uid, key.armored)])


def _rpmkeys_ok(tmp: Path, path: Path, key: GpgKey | None = None) -> bool:
    """``rpmkeys --checksig`` accepts the package (digests, and with ``key`` imported,
    its signature)."""
    db = tmp / "db"
    db.mkdir(parents=True, exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "LC_ALL": "C"}
    if key is not None:
        (tmp / "key.asc").write_bytes(key.armored)
        subprocess.run(["rpmkeys", "--dbpath", str(db), "--import", str(tmp / "key.asc")],
                       env=env, check=True, capture_output=True)
    args = ["rpmkeys", "--dbpath", str(db), "--checksig", "-v", str(path)]
    if key is None:
        args.insert(3, "--nosignature")
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    return done.returncode == 0 and "NOKEY" not in done.stdout


def _members(archive: RpmArchive) -> dict[str, bytes]:
    out = {}
    for path, size, stream in archive.members():
        data = stream.read()
        assert len(data) == size
        out[path] = data
    return out


def _rpm2archive(path: Path) -> dict[str, tarfile.TarInfo | bytes]:
    """What rpm2archive unpacks: regular files' contents, and the TarInfo of the rest."""
    tar_bytes = subprocess.run(["rpm2archive", "-n", "-"], stdin=path.open("rb"),
                               check=True, capture_output=True).stdout
    out: dict[str, tarfile.TarInfo | bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for info in tar:
            name = info.name.removeprefix("./").rstrip("/")
            if info.isfile():
                f = tar.extractfile(info)
                assert f is not None
                out[name] = f.read()
            else:
                out[name] = info
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- good packages

@pytest.mark.parametrize("payload", PAYLOADS)
def test_members_are_what_rpm2archive_unpacks(payload: str, built: dict[str, Path]) -> None:
    path = built[payload]
    archive = read_rpm(path, what=path.name, sha256=_sha256(path))
    assert archive.compressor == payload
    assert archive.header.string(Tag.NAME) == "sutpayload"
    ours = _members(archive)
    theirs = _rpm2archive(path)
    assert set(ours) == set(theirs)
    assert "var/log/sut.log" not in ours  # a ghost: not in the payload
    # hardlink sets: rpm2archive writes the data with the first link, the payload
    # (and so members()) with the last one, the others empty
    sets: dict[str, list[str]] = {}
    for name, entry in theirs.items():
        if isinstance(entry, tarfile.TarInfo) and entry.islnk():
            sets.setdefault(entry.linkname.removeprefix("./"), []).append(name)
    assert sets == {"usr/share/sut/a": ["usr/share/sut/b"]}
    for target, links in sets.items():
        contents = sorted(ours[n] for n in [target, *links])
        assert contents == [b""] * len(links) + [theirs[target]]
        assert ours[links[-1]] == theirs[target]
    linked = {n for target, links in sets.items() for n in [target, *links]}
    for name, entry in theirs.items():
        if name in linked:
            continue
        if isinstance(entry, bytes):
            assert ours[name] == entry, name
        elif entry.issym():
            assert ours[name] == entry.linkname.encode(), name
        else:
            assert entry.isdir() and ours[name] == b"", name
    assert len(ours["usr/share/sut/big"]) == 2 << 20
    assert ours["usr/share/sut/empty"] == b""


def test_offsets_and_headers(built: dict[str, Path]) -> None:
    path = built["zstd"]
    data = path.read_bytes()
    archive = read_rpm(path, what="p")
    sig, end = parse_header(data, 96)
    assert archive.header_offset == end + pad8(end)
    main, payload_offset = parse_header(data, archive.header_offset)
    assert archive.payload_offset == payload_offset
    assert archive.signature.blob == sig.blob and archive.header.blob == main.blob
    assert data[payload_offset:payload_offset + 4] == b"\x28\xb5\x2f\xfd"  # zstd frame


def test_streams_read_in_pieces(built: dict[str, Path]) -> None:
    archive = read_rpm(built["gzip"], what="p")
    whole = _members(archive)
    for path, _size, stream in archive.members():
        if path == "usr/share/sut/big":
            pieces = []
            while piece := stream.read(4093):
                pieces.append(piece)
            assert b"".join(pieces) == whole[path]
        # members not read at all are skipped (and still checked)


@pytest.mark.parametrize("name", ["v4", "v3"])
def test_signed_package(name: str, signed: dict[str, Path], keys: dict[str, GpgKey],
                        tmp_path: Path) -> None:
    path = signed[name]
    assert _rpmkeys_ok(tmp_path / "good", path, keys[name])
    archive = read_rpm(path, what=path.name, keys=_ring(keys[name]), sha256=_sha256(path))
    assert _members(archive)["usr/share/sut/b"] == b"hello\n"

    with pytest.raises(RpmSignatureError, match=f"{path.name}: signed by unknown key"):
        read_rpm(path, what=path.name, keys=_ring(keys["other"]))
    assert not _rpmkeys_ok(tmp_path / "other", path, keys["other"])


def test_unsigned_package_with_keys(built: dict[str, Path], keys: dict[str, GpgKey]) -> None:
    with pytest.raises(RpmSignatureError, match="unsigned-pkg is not signed"):
        read_rpm(built["zstd"], what="unsigned-pkg", keys=_ring(keys["v4"]))


# --------------------------------------------------------------------------- damage

def _copy(tmp: Path, data: bytes | bytearray, name: str = "p.rpm") -> Path:
    path = tmp / name
    path.write_bytes(bytes(data))
    return path


def _offsets(data: bytes) -> tuple[Header, Header, int, int]:
    sig, end = parse_header(data, 96)
    start = end + pad8(end)
    main, payload = parse_header(data, start)
    return sig, main, start, payload


def test_payload_byte_changed(signed: dict[str, Path], keys: dict[str, GpgKey],
                              tmp_path: Path) -> None:
    data = bytearray(signed["v4"].read_bytes())
    *_, payload = _offsets(bytes(data))
    data[payload + 1000] ^= 0x01
    path = _copy(tmp_path, data)
    assert not _rpmkeys_ok(tmp_path, path, keys["v4"])
    with pytest.raises(RpmPackageError, match=r"p: payload digest mismatch \(PAYLOADDIGEST\)"):
        read_rpm(path, what="p", keys=_ring(keys["v4"]))


def test_main_header_byte_changed(signed: dict[str, Path], keys: dict[str, GpgKey],
                                  tmp_path: Path) -> None:
    data = bytearray(signed["v4"].read_bytes())
    _, _, start, _ = _offsets(bytes(data))
    at = data.index(b"one file of each kind", start)
    data[at] ^= 0x20
    path = _copy(tmp_path, data)
    assert not _rpmkeys_ok(tmp_path, path)
    with pytest.raises(RpmPackageError, match=r"header digest mismatch \(SHA256HEADER\)"):
        read_rpm(path, what="p", keys=_ring(keys["v4"]))


def test_bad_lead_and_sha256(built: dict[str, Path], tmp_path: Path) -> None:
    data = bytearray(built["xz"].read_bytes())
    data[0] = 0
    with pytest.raises(RpmPackageError, match="p: not an rpm package"):
        read_rpm(_copy(tmp_path, data), what="p")
    with pytest.raises(RpmPackageError, match="p: sha256 of the package is"):
        read_rpm(built["xz"], what="p", sha256="00" * 32)
    with pytest.raises(RpmPackageError, match="p: cannot open"):
        read_rpm(tmp_path / "absent.rpm", what="p")


def test_truncated(built: dict[str, Path], tmp_path: Path) -> None:
    data = built["gzip"].read_bytes()
    _, _, start, payload = _offsets(data)
    for cut in (0, 50, 100, start - 3, start + 20, payload - 1, payload + 10, len(data) - 1):
        path = _copy(tmp_path, data[:cut], f"cut{cut}.rpm")
        with pytest.raises(RpmPackageError, match=f"cut{cut}: truncated"):
            read_rpm(path, what=f"cut{cut}")
    with pytest.raises(RpmPackageError, match="p: 3 unexpected bytes after the payload"):
        read_rpm(_copy(tmp_path, data + b"abc"), what="p")


def test_file_changed_after_reading(built: dict[str, Path], tmp_path: Path) -> None:
    """members() holds the payload to the header it read, not to the file's state then."""
    data = bytearray(built["none"].read_bytes())
    path = _copy(tmp_path, data)
    archive = read_rpm(path, what="p")
    at = data.index(b"\n99999\n", archive.payload_offset)
    data[at + 1] = ord("8")
    path.write_bytes(bytes(data))
    seen = []
    with pytest.raises(RpmPackageError, match="p: usr/share/sut/big: content does not match"):
        for name, _size, stream in archive.members():
            seen.append(name)
            stream.read()
    assert seen[-1] == "usr/share/sut/big"

    # a change that leaves every member as it was (an ignored field of the trailer)
    data = bytearray(built["none"].read_bytes())
    path.write_bytes(bytes(data))
    archive = read_rpm(path, what="p")
    at = data.index(b"TRAILER!!!", archive.payload_offset) - 110 + 6  # its inode
    data[at] = ord("1")
    path.write_bytes(bytes(data))
    with pytest.raises(RpmPackageError, match=r"p: payload changed since it was checked"):
        for _name, _size, stream in archive.members():
            stream.read()


# --------------------------------------------------------------------------- hostile payloads

def _rehash(data: bytearray) -> None:
    """Recompute, in place, every digest that ties an uncompressed package's payload to
    its header: PAYLOADDIGEST(ALT) in the main header, then SHA256HEADER, SHA1HEADER and
    SIGMD5 in the signature header (what a hostile repository could serve unsigned)."""
    sig, main, start, payload = _offsets(bytes(data))

    def put(header: Header, base: int, tag: int, value: bytes) -> None:
        entry = header.entry(tag)
        assert entry is not None
        at = base + 16 + 16 * len(header.index) + entry.offset
        old = header.raw(tag)
        assert old is not None and len(old.rstrip(b"\0")) == len(value)
        data[at:at + len(value)] = value

    digest = hashlib.sha256(data[payload:]).hexdigest().encode()
    put(main, start, Tag.PAYLOADDIGEST, digest)
    put(main, start, Tag.PAYLOADDIGESTALT, digest)
    main_bytes = bytes(data[start:payload])
    put(sig, 96, Tag.SHA256HEADER, hashlib.sha256(main_bytes).hexdigest().encode())
    put(sig, 96, Tag.SHA1HEADER, hashlib.sha1(main_bytes).hexdigest().encode())
    put(sig, 96, Tag.SIG_MD5, hashlib.md5(bytes(data[start:])).digest())


def _hostile(built: dict[str, Path], tmp: Path, old: bytes, new: bytes) -> Path:
    data = bytearray(built["none"].read_bytes())
    *_, payload = _offsets(bytes(data))
    at = data.index(old, payload)
    assert len(old) == len(new)
    data[at:at + len(old)] = new
    _rehash(data)
    path = _copy(tmp, data)
    assert _rpmkeys_ok(tmp, path)  # rpm's own digests all agree
    return path


def _read_all(path: Path) -> None:
    for _name, _size, stream in read_rpm(path, what="p").members():
        stream.read()


def test_rehash_is_faithful(built: dict[str, Path], tmp_path: Path) -> None:
    """The tool of the tests below changes nothing when nothing was changed."""
    path = _hostile(built, tmp_path, b"TRAILER!!!", b"TRAILER!!!")
    assert path.read_bytes() == built["none"].read_bytes()


@pytest.mark.parametrize(("old", "new", "error"), [
    (b"./usr/share/sut/a\0", b"../../../../etc/x\0", r"unsafe file name '../../../../etc/x'"),
    (b"./usr/share/sut/a\0", b"./usr/share/sut/z\0", r"member usr/share/sut/z is not in the"),
    (b"./usr/share/sut/a\0", b"./usr/share/sut/b\0", r"usr/share/sut/b has 0 bytes, the header"),
    (b"hello\n", b"jello\n", r"usr/share/sut/b: content does not match the header's file"),
    (b"../share/sut/a", b"../share/sut/b", r"usr/bin/sut-link: symlink target"),
    (b"TRAILER!!!", b"TRAILER!!?", r"member TRAILER!!\? is not in the header"),
])
def test_payload_not_matching_its_header(old: bytes, new: bytes, error: str,
                                         built: dict[str, Path], tmp_path: Path) -> None:
    path = _hostile(built, tmp_path, old, new)
    with pytest.raises(RpmPackageError, match=error):
        _read_all(path)


def test_cpio_sizes_types_and_large_files(built: dict[str, Path], tmp_path: Path) -> None:
    data = built["none"].read_bytes()
    *_, payload = _offsets(data)
    conf = data.index(b"./etc/sut.conf\0", payload) - 110
    assert data[conf:conf + 6] == b"070701"

    def field(i: int) -> int:
        return conf + 6 + 8 * i

    # a member whose type is not the header's (a directory instead of a file)
    (tmp_path / "type").mkdir()
    bad = _hostile(built, tmp_path / "type", data[conf:conf + 22], data[conf:field(1)] +
                   b"000041a4")
    with pytest.raises(RpmPackageError, match=r"etc/sut.conf is of another file type"):
        _read_all(bad)
    # rpm's large-file variant is refused clearly
    (tmp_path / "large").mkdir()
    bad = _hostile(built, tmp_path / "large", data[conf:conf + 14], b"07070X" + data[
        conf + 6:conf + 14])
    with pytest.raises(RpmPackageError, match="07070X"):
        _read_all(bad)
    # a size that is not the header's
    (tmp_path / "size").mkdir()
    old = data[conf:field(7)]
    bad = _hostile(built, tmp_path / "size", old, old[:-8] + b"00000003")
    with pytest.raises(RpmPackageError, match=r"etc/sut.conf has 3 bytes, the header says 4"):
        _read_all(bad)


def test_missing_file(built: dict[str, Path], tmp_path: Path) -> None:
    """A payload that ends (its trailer) before the header's files are all there."""
    data = built["none"].read_bytes()
    *_, payload = _offsets(data)
    first = data[payload:payload + 110 + 15]
    namesize = int(first[94:102], 16)
    assert namesize == len(b"./etc/sut.conf\0")
    trailer = b"070701" + b"0" * 8 * 11 + b"0000000b" + b"0" * 8 + b"TRAILER!!!\0"
    bad = _hostile(built, tmp_path, first, trailer + b"\0" * (len(first) - len(trailer)))
    with pytest.raises(RpmPackageError, match="the payload lacks 8 file"):
        _read_all(bad)


def test_ghost_in_payload_is_skipped(built: dict[str, Path], tmp_path: Path) -> None:
    """rpm < 4.11 put %ghost files in payloads; rpm skips them, and so does members()."""
    data = bytearray(built["none"].read_bytes())
    _, main, start, _ = _offsets(bytes(data))
    entry = main.entry(Tag.FILEFLAGS)
    assert entry is not None and main.ints(Tag.FILEFLAGS)[0] == 17  # etc/sut.conf, cn
    at = start + 16 + 16 * len(main.index) + entry.offset
    data[at:at + 4] = struct.pack(">I", 17 | 64)
    _rehash(data)
    path = _copy(tmp_path, data)
    assert _rpmkeys_ok(tmp_path, path)
    names = [name for name, _size, _stream in read_rpm(path, what="p").members()]
    assert "etc/sut.conf" not in names and "usr/share/sut/big" in names


def test_random_damage_ends_in_a_verdict(built: dict[str, Path], tmp_path: Path) -> None:
    """Random bytes changed in the main header or the payload's first members, the
    digests re-computed when the headers still parse: the package reads, or one
    SutureError says why not; nothing else escapes."""
    from suture.errors import SutureError

    original = built["none"].read_bytes()
    _, _, start, payload = _offsets(original)
    rng = random.Random(1234)
    verdicts: dict[str, int] = {}
    for i in range(120):
        data = bytearray(original)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(start + 16, payload + 1024)
            data[at] = rng.randrange(256)
        with contextlib.suppress(SutureError, AssertionError):  # headers that no longer parse
            _rehash(data)
        path = _copy(tmp_path, data, f"m{i}.rpm")
        try:
            _read_all(path)
            verdicts["read"] = verdicts.get("read", 0) + 1
        except SutureError as exc:
            verdicts[type(exc).__name__] = verdicts.get(type(exc).__name__, 0) + 1
        path.unlink()
    assert verdicts.get("RpmPackageError", 0) > 0
