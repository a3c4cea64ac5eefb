"""rpm package files: the lead, the signature header, the main header and the
cpio payload, each checked before it is believed.

A package is a 96-byte lead (only its magic ``ed ab ee db`` matters), the signature
header at offset 96 (padded to 8 bytes), the main header, and the payload: a cpio
``newc`` archive (magic ``070701``), compressed as the main header's
PAYLOADCOMPRESSOR says (gzip, bzip2, xz, lzma, zstd; no tag means gzip, or an
uncompressed archive, which rpm reads through zlib's transparent mode).

:func:`read_rpm` checks what ties the parts together: the header digests of the
signature header (SHA256HEADER, SHA1HEADER) over the main header, the payload
digest (PAYLOADDIGEST) of the main header over the compressed payload, the legacy
MD5 over header and payload (SIGMD5) and the recorded size, the OpenPGP header
signature against a keyring, and the whole file's digest as a repository gives it.
:meth:`RpmArchive.members` then reads the payload and holds every member to the
signed header: each name must be a file the header lists (no ``..``, no absolute
escape), each size the header's, each regular file's content its FILEDIGESTS entry,
each symlink's target its FILELINKTOS entry, and every non-ghost file of the header
must appear. rpm's stripped large-file payloads (``07070X``) are refused.
"""

from __future__ import annotations

import hashlib
import io
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from suture.distro.rpm.header import MAGIC, Header, HeaderError, Tag, pad8, parse_header
from suture.distro.rpm.sign import (
    Keyring,
    RpmSignatureError,
    header_signature,
    signed_header_bytes,
)
from suture.distro.streams import Decoded, decompressing_reader
from suture.errors import SutureError

__all__ = ["RpmArchive", "RpmPackageError", "read_rpm"]

LEAD_SIZE = 96
LEAD_MAGIC = b"\xed\xab\xee\xdb"
# rpm's limits for a signature header (hdrblobRead with RPMTAG_HEADERSIGNATURES)
# and a main header (hdrchkTags / hdrchkData).
SIG_MAX_ENTRIES = 32
SIG_MAX_DATA = 64 << 20
MAIN_MAX_ENTRIES = 0x10000
MAIN_MAX_DATA = 256 << 20
MAX_NAME = 4096  # a cpio member name, NUL included (PATH_MAX)
CHUNK = 1 << 20

_CPIO_NEWC = b"070701"
_CPIO_CRC = b"070702"
_CPIO_LARGE = b"07070X"
_CPIO_HEADER = 110
_TRAILER = "TRAILER!!!"
_GHOST = 64

# OpenPGP hash algorithm ids, as rpm numbers FILEDIGESTALGO and PAYLOADDIGESTALGO.
_ALGOS = {1: "md5", 2: "sha1", 8: "sha256", 9: "sha384", 10: "sha512", 11: "sha224"}
_COMPRESSORS = ("gzip", "bzip2", "xz", "lzma", "zstd", "none")


class RpmPackageError(SutureError):
    """A package file that is not a well-formed rpm, or whose parts do not match
    each other (digests, sizes, file list). ``path``: the payload member at fault,
    when there is one."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


# --------------------------------------------------------------------------- file list

@dataclass(frozen=True)
class _File:
    index: int
    path: str  # relative, as members() names it
    mode: int
    size: int
    digest: str
    linkto: str
    flags: int
    data: bool  # the payload carries this file's content (the last link of a set does)


def _normalise(name: str, what: str) -> str:
    """``./usr/bin/x`` and ``/usr/bin/x`` -> ``usr/bin/x``; refuses ``..``, NUL, empty."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts or "\0" in name or not parts:
        raise RpmPackageError(f"{what}: unsafe file name {name!r}", path=name)
    return "/".join(parts)


def _array(header: Header, tag: int, count: int, what: str) -> tuple[Any, ...] | None:
    if tag not in header:
        return None
    try:
        values: tuple[Any, ...] = (header.strings(tag) if tag in (
            Tag.FILEDIGESTS, Tag.FILELINKTOS, Tag.BASENAMES, Tag.DIRNAMES,
            Tag.OLDFILENAMES) else header.ints(tag))
    except HeaderError as exc:
        raise RpmPackageError(f"{what}: {exc}") from None
    if len(values) != count:
        raise RpmPackageError(f"{what}: header tag {tag} has {len(values)} entries "
                              f"for {count} files")
    return values


def _header_files(header: Header, what: str) -> list[_File]:
    """The files the main header lists, in header order, with what the payload
    must hold for each."""
    if Tag.BASENAMES in header:
        try:
            bases = header.strings(Tag.BASENAMES)
            dirs = header.strings(Tag.DIRNAMES)
            indexes = header.ints(Tag.DIRINDEXES)
        except HeaderError as exc:
            raise RpmPackageError(f"{what}: {exc}") from None
        if len(indexes) != len(bases) or any(i >= len(dirs) for i in indexes):
            raise RpmPackageError(f"{what}: inconsistent file name arrays in the header")
        names = [dirs[i] + b for i, b in zip(indexes, bases, strict=True)]
    else:
        try:
            names = list(header.strings(Tag.OLDFILENAMES))  # before rpm 4.0
        except HeaderError as exc:
            raise RpmPackageError(f"{what}: {exc}") from None
    n = len(names)
    sizes = _array(header, Tag.LONGFILESIZES, n, what) or _array(header, Tag.FILESIZES, n, what)
    modes = _array(header, Tag.FILEMODES, n, what)
    digests = _array(header, Tag.FILEDIGESTS, n, what)
    links = _array(header, Tag.FILELINKTOS, n, what)
    flags = _array(header, Tag.FILEFLAGS, n, what)
    inodes = _array(header, Tag.FILEINODES, n, what)
    devices = _array(header, Tag.FILEDEVICES, n, what)
    if sizes is None or modes is None:
        if n:
            raise RpmPackageError(f"{what}: the header lists files without sizes or modes")
        return []
    # Hardlink sets (rpmfilesBuildNLink): regular, non-ghost files sharing device
    # and inode; the payload holds the content on the set's last file only.
    link_sets: dict[tuple[int, int], list[int]] = {}
    for i in range(n):
        if inodes and stat.S_ISREG(modes[i]) and not (flags[i] if flags else 0) & _GHOST \
                and inodes[i] > 0:
            link_sets.setdefault((devices[i] if devices else 0, inodes[i]), []).append(i)
    data_less: set[int] = set()
    for members in link_sets.values():
        last = members[-1]
        for i in members[:-1]:
            if sizes[i] != sizes[last] or (digests and digests[i].lower()
                                           != digests[last].lower()):
                raise RpmPackageError(f"{what}: hardlinked files {names[i]} and "
                                      f"{names[last]} differ in size or digest")
            data_less.add(i)
    files: list[_File] = []
    seen: set[str] = set()
    for i, name in enumerate(names):
        path = _normalise(name, what)
        if path in seen:
            raise RpmPackageError(f"{what}: the header lists {path} twice", path=path)
        seen.add(path)
        files.append(_File(i, path, modes[i], sizes[i],
                           (digests[i] if digests else "").lower(),
                           links[i] if links else "", flags[i] if flags else 0,
                           i not in data_less))
    return files


# --------------------------------------------------------------------------- streams

def _read_exact(stream: IO[bytes], n: int, what: str, part: str) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(min(left, CHUNK))
        if not chunk:
            raise RpmPackageError(f"{what}: truncated {part} ({n - left} of {n} bytes)")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class _Hashing(io.RawIOBase):
    """Reads ``inner`` through, hashing (and counting) every byte that passes."""

    def __init__(self, inner: IO[bytes], hashers: list[Any]) -> None:
        super().__init__()
        self._inner, self._hashers, self.count = inner, hashers, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._inner.read(len(view))
        for h in self._hashers:
            h.update(data)
        self.count += len(data)
        view[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def close(self) -> None:  # never closes the file it reads
        super().close()


def _decompressed(raw: IO[bytes], compressor: str, what: str) -> IO[bytes]:
    if compressor == "none":
        return raw
    inner = decompressing_reader(raw, compressor)
    def error(message: str) -> Exception:
        return RpmPackageError(f"{what}: cannot decompress the payload: {message}")

    return cast(IO[bytes], io.BufferedReader(Decoded(inner, error), CHUNK))


class _Member(io.RawIOBase):
    """Exactly ``size`` bytes of one cpio member from the shared payload stream. The
    read that returns its last bytes checks them first (content digest or link
    target) and raises instead of returning them when they do not match."""

    def __init__(self, stream: IO[bytes], size: int, check: _File | None, algo: str,
                 what: str) -> None:
        super().__init__()
        self._stream, self._left, self._what, self._check = stream, size, what, check
        if check and stat.S_ISREG(check.mode) and size and not check.digest:
            raise RpmPackageError(f"{what}: {check.path}: the header has no digest for "
                                  "this file", path=check.path)
        self._hash = (hashlib.new(algo) if check and stat.S_ISREG(check.mode) and check.digest
                      else None)
        self._link = bytearray() if check and stat.S_ISLNK(check.mode) else None
        if size == 0:
            self._verify()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._left)
        if want == 0:
            return 0
        data = _read_exact(self._stream, want, self._what, "payload")
        if self._hash is not None:
            self._hash.update(data)
        if self._link is not None:
            self._link += data
        self._left -= want
        if self._left == 0:
            self._verify()
        view[:want] = data
        return want

    def _verify(self) -> None:
        f = self._check
        if f is None:
            return
        if self._hash is not None and self._hash.hexdigest() != f.digest:
            raise RpmPackageError(f"{self._what}: {f.path}: content does not match the "
                                  "header's file digest", path=f.path)
        if self._link is not None:
            target = bytes(self._link).decode("utf-8", "surrogateescape")
            if target != f.linkto:
                raise RpmPackageError(f"{self._what}: {f.path}: symlink target {target!r} "
                                      f"is not the header's {f.linkto!r}", path=f.path)

    def drain(self) -> None:
        while self._left:
            self.read(min(self._left, CHUNK))

    def close(self) -> None:  # never closes the shared stream
        super().close()


def _hex(field: bytes, what: str) -> int:
    try:
        return int(field, 16)
    except ValueError:
        raise RpmPackageError(f"{what}: corrupt cpio header") from None


def _cpio(stream: IO[bytes], files: list[_File], algo: str, what: str
          ) -> Iterator[tuple[str, int, IO[bytes]]]:
    """The members of a cpio ``newc`` payload, held to the header's ``files``."""
    by_path = {f.path: f for f in files}
    found: set[str] = set()
    pos = 0
    while True:
        head = _read_exact(stream, _CPIO_HEADER, what, "payload")
        magic = head[:6]
        if magic == _CPIO_LARGE:
            raise RpmPackageError(f"{what}: stripped large-file payload (cpio 07070X) is "
                                  "not supported")
        if magic not in (_CPIO_NEWC, _CPIO_CRC):
            raise RpmPackageError(f"{what}: payload is not a cpio newc archive "
                                  f"(magic {magic!r} at {pos})")
        fields = [_hex(head[6 + 8 * i:14 + 8 * i], what) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        if not 1 < namesize <= MAX_NAME:
            raise RpmPackageError(f"{what}: cpio member name of {namesize} bytes")
        name_pad = (4 - (_CPIO_HEADER + namesize) % 4) % 4
        raw = _read_exact(stream, namesize + name_pad, what, "payload")
        if raw[namesize - 1] != 0 or 0 in raw[:namesize - 1]:
            raise RpmPackageError(f"{what}: corrupt cpio member name")
        name = raw[:namesize - 1].decode("utf-8", "surrogateescape")
        pos += _CPIO_HEADER + namesize + name_pad
        if name == _TRAILER:
            break
        path = _normalise(name, what)
        f = by_path.get(path)
        if f is None:
            raise RpmPackageError(f"{what}: payload member {path} is not in the header",
                                  path=path)
        if path in found:
            raise RpmPackageError(f"{what}: payload member {path} appears twice", path=path)
        found.add(path)
        if f.flags & _GHOST:  # rpm < 4.11 put ghosts in payloads; rpm skips them
            if size > f.size:
                raise RpmPackageError(f"{what}: ghost payload member {path} has {size} "
                                      f"bytes, the header says {f.size}", path=path)
            _Member(stream, size, None, algo, what).drain()
            _read_exact(stream, (4 - size % 4) % 4, what, "payload")
            pos += size + (4 - size % 4) % 4
            continue
        if stat.S_IFMT(mode) != stat.S_IFMT(f.mode):
            raise RpmPackageError(f"{what}: payload member {path} is of another file type "
                                  f"({mode:o}) than the header's ({f.mode:o})", path=path)
        expected = f.size if (stat.S_ISREG(f.mode) and f.data) or stat.S_ISLNK(f.mode) else 0
        if size != expected:
            raise RpmPackageError(f"{what}: payload member {path} has {size} bytes, the "
                                  f"header says {expected}", path=path)
        check = f if f.data or not stat.S_ISREG(f.mode) else None
        member = _Member(stream, size, check, algo, what)
        yield path, size, cast(IO[bytes], member)
        member.drain()
        data_pad = (4 - size % 4) % 4
        if data_pad:
            _read_exact(stream, data_pad, what, "payload")
        pos += size + data_pad
    missing = [f.path for f in files if f.path not in found and not f.flags & _GHOST]
    if missing:
        raise RpmPackageError(f"{what}: the payload lacks {len(missing)} file(s) the header "
                              f"lists, first {missing[0]}", path=missing[0])


# --------------------------------------------------------------------------- package

@dataclass(frozen=True)
class RpmArchive:
    """A package file whose headers and digests :func:`read_rpm` checked.

    ``header_offset``: where the main header (its magic) starts; ``payload_offset``:
    where the compressed payload starts; ``compressor``: gzip, bzip2, xz, lzma,
    zstd or none."""

    path: Path
    signature: Header
    header: Header
    header_offset: int
    payload_offset: int
    compressor: str
    what: str = "rpm package"

    def members(self) -> Iterator[tuple[str, int, IO[bytes]]]:
        """The payload's members in archive order, as ``(path, size, stream)``.

        ``path`` is relative (no leading ``./`` or ``/``) and one of the header's
        files; ``stream`` gives exactly ``size`` bytes and is valid until the next
        member is asked for (the caller need not read it to the end, and does not
        close it). Regular files yield their content, symlinks their target,
        directories and other files nothing. In a hardlink set (regular files of
        the header sharing FILEINODES and FILEDEVICES) rpm stores the content on
        the header's last link only: the other links come with size 0, and the
        header's FILESIZES give the set's size. Ghost files are not yielded.

        Everything is checked against the (verified) header as it is read: a
        mismatching content digest or symlink target raises
        :class:`RpmPackageError` from the read that would return the last bytes;
        a name the header does not list, a ``..``, a wrong size or type at once;
        a missing file, or compressed bytes that no longer match PAYLOADDIGEST,
        after the last member. Decompression is bounded by the header's sizes."""
        what = self.what
        files = _header_files(self.header, what)
        algo_id = _number(self.header, Tag.FILEDIGESTALGO, what) or 1
        if algo_id not in _ALGOS:
            raise RpmPackageError(f"{what}: unsupported file digest algorithm {algo_id}")
        algo = _ALGOS[algo_id]
        expected = _payload_digest(self.header, what)
        hashers = [hashlib.new(expected[0])] if expected else []
        with self.path.open("rb") as fh:
            fh.seek(self.payload_offset)
            raw = _Hashing(fh, hashers)
            raw_io = cast(IO[bytes], io.BufferedReader(raw, CHUNK))
            stream = _decompressed(raw_io, self.compressor, what)
            yield from _cpio(stream, files, algo, what)
            raw_io.read()  # the rest of the compressed payload, for its digest
            if expected and hashers[0].hexdigest() != expected[1]:
                raise RpmPackageError(f"{what}: payload changed since it was checked "
                                      "(PAYLOADDIGEST mismatch)")


def _payload_digest(header: Header, what: str) -> tuple[str, str] | None:
    """(hashlib name, hex) of PAYLOADDIGEST, or None when the header has none."""
    if Tag.PAYLOADDIGEST not in header:
        return None
    try:
        values = header.strings(Tag.PAYLOADDIGEST)
        algo_id = header.number(Tag.PAYLOADDIGESTALGO) or 8
    except HeaderError as exc:
        raise RpmPackageError(f"{what}: {exc}") from None
    if algo_id not in _ALGOS:
        raise RpmPackageError(f"{what}: unsupported payload digest algorithm {algo_id}")
    if not values:
        raise RpmPackageError(f"{what}: empty PAYLOADDIGEST")
    return _ALGOS[algo_id], values[0].lower()


def _read_header(fh: BinaryIO, offset: int, max_entries: int, max_data: int, what: str,
                 part: str) -> tuple[Header, int]:
    intro = _read_exact(fh, 16, what, part)
    if intro[:8] != MAGIC:
        raise RpmPackageError(f"{what}: bad {part} magic")
    il, dl = struct.unpack(">II", intro[8:])
    if not 0 < il <= max_entries or dl > max_data:
        raise RpmPackageError(f"{what}: implausible {part} ({il} entries, {dl} bytes)")
    data = intro + _read_exact(fh, 16 * il + dl, what, part)
    try:
        header, end = parse_header(data, 0, what=f"{what}: {part}")
    except HeaderError as exc:
        raise RpmPackageError(str(exc)) from None
    return header, offset + end


def _number(header: Header, tag: int, what: str) -> int | None:
    try:
        return header.number(tag)
    except HeaderError as exc:
        raise RpmPackageError(f"{what}: {exc}") from None


def _hex_tag(sig: Header, tag: int, what: str) -> str | None:
    try:
        value = sig.string(tag)
    except HeaderError as exc:
        raise RpmPackageError(f"{what}: {exc}") from None
    return value.lower() if value is not None else None


def read_rpm(path: Path, *, what: str, keys: Keyring | None = None,
             sha256: str | None = None) -> RpmArchive:
    """Read and check the package file at ``path``; ``what`` names it in errors.

    Checked, in one streaming pass over the file: the lead magic; both headers
    parse (within rpm's size limits); SHA256HEADER and SHA1HEADER, when present,
    over the main header; PAYLOADDIGEST, when present, over the compressed payload;
    the legacy SIGMD5 over header and payload and the recorded size
    (LONGSIGSIZE/SIZE), when present; ``sha256``, when given, over the whole file;
    the compressor is one this reads. Any failure raises :class:`RpmPackageError`.

    ``keys``: the main header's OpenPGP signature (RSAHEADER or DSAHEADER) must
    verify with one of them; an unsigned package, or a signature that does not
    verify, raises :class:`~suture.distro.rpm.sign.RpmSignatureError`. Without
    ``keys`` nothing is said about who made the package: pass ``sha256`` from a
    verified repository then. The payload's members are checked against the
    header as :meth:`RpmArchive.members` reads them."""
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise RpmPackageError(f"{what}: cannot open {path}: {exc.strerror}") from None
    with fh:
        whole = hashlib.sha256()
        lead = _read_exact(fh, LEAD_SIZE, what, "lead")
        if lead[:4] != LEAD_MAGIC:
            raise RpmPackageError(f"{what}: not an rpm package (bad lead magic)")
        sig, end = _read_header(fh, LEAD_SIZE, SIG_MAX_ENTRIES, SIG_MAX_DATA, what,
                                "signature header")
        pad = pad8(end)
        padding = _read_exact(fh, pad, what, "signature header")
        header_offset = end + pad
        header, payload_offset = _read_header(fh, header_offset, MAIN_MAX_ENTRIES,
                                              MAIN_MAX_DATA, what, "main header")
        whole.update(lead + MAGIC + sig.blob + padding)
        main_bytes = signed_header_bytes(header)
        whole.update(main_bytes)

        for tag, algo, label in ((Tag.SHA256HEADER, "sha256", "SHA256HEADER"),
                                 (Tag.SHA1HEADER, "sha1", "SHA1HEADER")):
            want = _hex_tag(sig, tag, what)
            if want is not None and hashlib.new(algo, main_bytes).hexdigest() != want:
                raise RpmPackageError(f"{what}: header digest mismatch ({label}): the "
                                      "main header was changed")
        if keys is not None:
            try:
                signature = header_signature(sig)
            except HeaderError as exc:
                raise RpmSignatureError(f"{what}: {exc}") from None
            if signature is None:
                raise RpmSignatureError(f"{what} is not signed",
                                        hint="a package must carry a header signature by "
                                             "a trusted key")
            keys.verify(main_bytes, signature, what=what)

        compressor = _compressor(header, fh, payload_offset, what)
        payload = _payload_digest(header, what)
        try:
            md5 = sig.binary(Tag.SIG_MD5)
        except HeaderError as exc:
            raise RpmPackageError(f"{what}: {exc}") from None
        hashers: list[Any] = [whole]
        payload_hash = hashlib.new(payload[0]) if payload else None
        if payload_hash is not None:
            hashers.append(payload_hash)
        md5_hash = hashlib.md5(main_bytes, usedforsecurity=False) if md5 else None
        if md5_hash is not None:
            hashers.append(md5_hash)
        fh.seek(payload_offset)
        size = 0
        while chunk := fh.read(CHUNK):
            size += len(chunk)
            for h in hashers:
                h.update(chunk)

    recorded = _number(sig, Tag.LONGSIGSIZE, what) or _number(sig, Tag.SIG_SIZE, what)
    if recorded is not None:
        actual = len(main_bytes) + size
        if actual < recorded:
            raise RpmPackageError(f"{what}: truncated package ({payload_offset + size} "
                                  f"bytes, header and payload {recorded - actual} short)")
        if actual > recorded:
            raise RpmPackageError(f"{what}: {actual - recorded} unexpected bytes after the "
                                  "payload")
    if payload is not None and payload_hash is not None \
            and payload_hash.hexdigest() != payload[1]:
        raise RpmPackageError(f"{what}: payload digest mismatch (PAYLOADDIGEST): the "
                              "payload was changed")
    if md5_hash is not None and md5_hash.digest() != md5:
        raise RpmPackageError(f"{what}: MD5 digest of header and payload does not match")
    if sha256 is not None and whole.hexdigest() != sha256.lower():
        raise RpmPackageError(f"{what}: sha256 of the package is {whole.hexdigest()}, the "
                              f"repository says {sha256.lower()}")
    return RpmArchive(path, sig, header, header_offset, payload_offset, compressor, what)


def _compressor(header: Header, fh: BinaryIO, payload_offset: int, what: str) -> str:
    try:
        fmt = header.string(Tag.PAYLOADFORMAT)
        name = header.string(Tag.PAYLOADCOMPRESSOR)
    except HeaderError as exc:
        raise RpmPackageError(f"{what}: {exc}") from None
    if fmt not in (None, "cpio"):
        raise RpmPackageError(f"{what}: payload format {fmt!r} is not supported")
    if name is None or name == "gzip":
        # rpm opens such payloads with zlib, which reads uncompressed data as is
        fh.seek(payload_offset)
        start = fh.read(6)
        if start[:4] == b"0707":
            return "none"
        name = "gzip"
    if name == "identity":
        name = "none"
    if name not in _COMPRESSORS:
        raise RpmPackageError(f"{what}: payload compressor {name!r} is not supported")
    return name
