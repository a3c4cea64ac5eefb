"""rpm headers: the tagged structure of a package's signature and main header and of
every rpmdb entry.

A header on disk is ``il`` and ``dl`` (big-endian u32), ``il`` index entries of 16
bytes (tag, type, offset, count) and ``dl`` bytes of data; inside a package file it
is preceded by the magic ``8e ad e8 01`` and four reserved bytes. An rpmdb entry's
blob is the same without the magic. :func:`parse_header` reads either and keeps the
exact bytes (:attr:`Header.blob`), which the rpmdb writer copies and signatures cover.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from suture.errors import SutureError

__all__ = [
    "MAGIC",
    "Header",
    "HeaderError",
    "Tag",
    "parse_header",
]

MAGIC = b"\x8e\xad\xe8\x01\x00\x00\x00\x00"
MAX_ENTRIES = 0x10000  # rpm's own limits (hdrchkTags / hdrchkData)
MAX_DATA = 256 << 20

# Types (rpmtag.h)
NULL, CHAR, INT8, INT16, INT32, INT64, STRING, BIN, STRING_ARRAY, I18NSTRING = range(10)
_INT_FORMATS = {CHAR: "B", INT8: "B", INT16: "H", INT32: "I", INT64: "Q"}
_ALIGN = {INT16: 2, INT32: 4, INT64: 8}


class Tag:
    """The tag numbers the engine reads (rpmtag.h)."""

    HEADERIMAGE = 61
    HEADERSIGNATURES = 62
    HEADERIMMUTABLE = 63
    HEADERI18NTABLE = 100
    # signature header
    SIG_SIZE = 1000
    SIG_PGP = 1002
    SIG_MD5 = 1004
    SIG_GPG = 1005
    SIG_PAYLOADSIZE = 1007
    SIG_RESERVEDSPACE = 1008
    DSAHEADER = 267
    RSAHEADER = 268
    SHA1HEADER = 269
    LONGSIGSIZE = 270
    LONGARCHIVESIZE = 271
    SHA256HEADER = 273
    # main header
    NAME = 1000
    VERSION = 1001
    RELEASE = 1002
    EPOCH = 1003
    SUMMARY = 1004
    DESCRIPTION = 1005
    BUILDTIME = 1006
    INSTALLTIME = 1008
    SIZE = 1009
    VENDOR = 1011
    LICENSE = 1014
    GROUP = 1016
    ARCH = 1022
    PREIN = 1023
    POSTIN = 1024
    PREUN = 1025
    POSTUN = 1026
    OLDFILENAMES = 1027
    FILESIZES = 1028
    FILESTATES = 1029
    FILEMODES = 1030
    FILERDEVS = 1033
    FILEMTIMES = 1034
    FILEDIGESTS = 1035
    FILELINKTOS = 1036
    FILEFLAGS = 1037
    FILEUSERNAME = 1039
    FILEGROUPNAME = 1040
    SOURCERPM = 1044
    ARCHIVESIZE = 1046
    PROVIDENAME = 1047
    REQUIREFLAGS = 1048
    REQUIRENAME = 1049
    REQUIREVERSION = 1050
    CONFLICTFLAGS = 1053
    CONFLICTNAME = 1054
    CONFLICTVERSION = 1055
    OS = 1021
    TRIGGERSCRIPTS = 1065
    TRIGGERNAME = 1066
    TRIGGERVERSION = 1067
    TRIGGERFLAGS = 1068
    TRIGGERINDEX = 1069
    PREINPROG = 1085
    POSTINPROG = 1086
    PREUNPROG = 1087
    POSTUNPROG = 1088
    OBSOLETENAME = 1090
    TRIGGERSCRIPTPROG = 1092
    FILEDEVICES = 1095
    FILEINODES = 1096
    FILELANGS = 1097
    PREFIXES = 1098
    INSTPREFIXES = 1099
    PROVIDEFLAGS = 1112
    PROVIDEVERSION = 1113
    OBSOLETEFLAGS = 1114
    OBSOLETEVERSION = 1115
    DIRINDEXES = 1116
    BASENAMES = 1117
    DIRNAMES = 1118
    ORIGBASENAMES = 1120
    PAYLOADFORMAT = 1124
    PAYLOADCOMPRESSOR = 1125
    PAYLOADFLAGS = 1126
    INSTALLCOLOR = 1127
    INSTALLTID = 1128
    FILECOLORS = 1140
    PRETRANS = 1151
    POSTTRANS = 1152
    PRETRANSPROG = 1153
    POSTTRANSPROG = 1154
    LONGFILESIZES = 5008
    LONGSIZE = 5009
    FILECAPS = 5010
    FILEDIGESTALGO = 5011
    FILETRIGGERSCRIPTS = 5066
    FILETRIGGERSCRIPTPROG = 5067
    FILETRIGGERSCRIPTFLAGS = 5068
    FILETRIGGERNAME = 5069
    FILETRIGGERINDEX = 5070
    FILETRIGGERVERSION = 5071
    FILETRIGGERFLAGS = 5072
    TRANSFILETRIGGERSCRIPTS = 5076
    TRANSFILETRIGGERSCRIPTPROG = 5077
    TRANSFILETRIGGERSCRIPTFLAGS = 5078
    TRANSFILETRIGGERNAME = 5079
    TRANSFILETRIGGERINDEX = 5080
    TRANSFILETRIGGERVERSION = 5081
    TRANSFILETRIGGERFLAGS = 5082
    FILETRIGGERPRIORITIES = 5084
    TRANSFILETRIGGERPRIORITIES = 5085
    PAYLOADDIGEST = 5092
    PAYLOADDIGESTALGO = 5093
    MODULARITYLABEL = 5096
    PAYLOADDIGESTALT = 5097
    PREUNTRANS = 5103
    POSTUNTRANS = 5104
    PREUNTRANSPROG = 5105
    POSTUNTRANSPROG = 5106
    RECOMMENDNAME = 5046
    SUGGESTNAME = 5049
    SUPPLEMENTNAME = 5052
    ENHANCENAME = 5055


class HeaderError(SutureError):
    """A header that is not one (truncated, out of bounds, or inconsistent)."""


@dataclass(frozen=True)
class IndexEntry:
    tag: int
    type: int
    offset: int
    count: int


Value = str | bytes | tuple[int, ...] | tuple[str, ...]


class Header:
    """A parsed header. ``blob`` is its bytes without the magic (``il``, ``dl``,
    index, data), exactly as read; values are decoded on demand."""

    def __init__(self, blob: bytes, index: list[IndexEntry], data_start: int) -> None:
        self.blob = blob
        self.index = index
        self._data_start = data_start
        self._by_tag = {e.tag: e for e in index}

    @property
    def tags(self) -> list[int]:
        return [e.tag for e in self.index]

    def __contains__(self, tag: int) -> bool:
        return tag in self._by_tag

    def entry(self, tag: int) -> IndexEntry | None:
        return self._by_tag.get(tag)

    @property
    def data(self) -> bytes:
        return self.blob[self._data_start:]

    def raw(self, tag: int) -> bytes | None:
        """The bytes of ``tag``'s value (strings with their terminating NULs)."""
        e = self._by_tag.get(tag)
        if e is None:
            return None
        start = self._data_start + e.offset
        return self.blob[start:start + _value_size(self.blob, start, e, self._data_end)]

    @property
    def _data_end(self) -> int:
        return len(self.blob)

    def get(self, tag: int) -> Value | None:
        e = self._by_tag.get(tag)
        if e is None:
            return None
        raw = self.raw(tag)
        assert raw is not None
        if e.type in _INT_FORMATS:
            fmt = _INT_FORMATS[e.type]
            return struct.unpack(f">{e.count}{fmt}", raw)
        if e.type == BIN:
            return raw
        parts = raw.split(b"\0")[:e.count]
        decoded = tuple(p.decode("utf-8", "surrogateescape") for p in parts)
        if e.type == STRING:
            return decoded[0]
        return decoded

    # Typed accessors: None (or empty) when the tag is absent; HeaderError when it
    # holds another type than the tag's.
    def string(self, tag: int) -> str | None:
        value = self.get(tag)
        if value is None:
            return None
        if isinstance(value, tuple) and value and isinstance(value[0], str):
            return value[0]  # an I18N string: the first (C locale) translation
        if not isinstance(value, str):
            raise HeaderError(f"header tag {tag} is not a string")
        return value

    def strings(self, tag: int) -> tuple[str, ...]:
        value = self.get(tag)
        if value is None:
            return ()
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, tuple) or (value and not isinstance(value[0], str)):
            raise HeaderError(f"header tag {tag} is not a string array")
        return value  # type: ignore[return-value]

    def ints(self, tag: int) -> tuple[int, ...]:
        value = self.get(tag)
        if value is None:
            return ()
        if not isinstance(value, tuple) or (value and not isinstance(value[0], int)):
            raise HeaderError(f"header tag {tag} is not an integer array")
        return value  # type: ignore[return-value]

    def number(self, tag: int) -> int | None:
        values = self.ints(tag)
        return values[0] if values else None

    def binary(self, tag: int) -> bytes | None:
        value = self.get(tag)
        if value is None:
            return None
        if not isinstance(value, bytes):
            raise HeaderError(f"header tag {tag} is not binary")
        return value


def _value_size(blob: bytes, start: int, e: IndexEntry, end: int) -> int:
    if e.type in _INT_FORMATS:
        return struct.calcsize(f">{_INT_FORMATS[e.type]}") * e.count
    if e.type == BIN:
        return e.count
    if e.type in (STRING, STRING_ARRAY, I18NSTRING):
        count = 1 if e.type == STRING else e.count
        pos = start
        for _ in range(count):
            nul = blob.find(b"\0", pos, end)
            if nul < 0:
                raise HeaderError(f"header tag {e.tag}: unterminated string")
            pos = nul + 1
        return pos - start
    return 0


def parse_header(data: bytes, offset: int = 0, *, magic: bool = True,
                 what: str = "rpm header") -> tuple[Header, int]:
    """The header at ``offset`` of ``data`` and the offset just past it. ``magic``: the
    header starts with :data:`MAGIC` (as in a package file), else with ``il`` (an rpmdb
    blob). Every entry is checked to lie inside the data; HeaderError otherwise."""
    pos = offset
    if magic:
        if data[pos:pos + 8] != MAGIC:
            raise HeaderError(f"{what}: bad header magic")
        pos += 8
    if len(data) < pos + 8:
        raise HeaderError(f"{what}: truncated header")
    il, dl = struct.unpack_from(">II", data, pos)
    if il > MAX_ENTRIES or dl > MAX_DATA or il == 0:
        raise HeaderError(f"{what}: implausible header size ({il} entries, {dl} bytes)")
    start = pos
    index_start = pos + 8
    data_start = index_start + 16 * il
    end = data_start + dl
    if len(data) < end:
        raise HeaderError(f"{what}: truncated header")
    blob = bytes(data[start:end])
    index: list[IndexEntry] = []
    for i in range(il):
        tag, typ, off, count = struct.unpack_from(">IIiI", data, index_start + 16 * i)
        region = i == 0 and typ == BIN and tag in (Tag.HEADERSIGNATURES, Tag.HEADERIMMUTABLE,
                                                   Tag.HEADERIMAGE)
        if (typ > I18NSTRING or off < 0 or off > dl or (count == 0 and typ != NULL)) \
                and not region:
            raise HeaderError(f"{what}: bad index entry for tag {tag}")
        align = _ALIGN.get(typ, 1)
        if off % align:
            raise HeaderError(f"{what}: misaligned data for tag {tag}")
        entry = IndexEntry(tag, typ, off, count)
        local = 16 * il + 8
        rel_start = local + off
        size = _value_size(blob, rel_start, entry, len(blob))
        if rel_start + size > len(blob):
            raise HeaderError(f"{what}: data of tag {tag} runs past the header")
        index.append(entry)
    return Header(blob, index, 8 + 16 * il), end


def pad8(offset: int) -> int:
    """Bytes of padding after a signature header ending at ``offset``."""
    return (8 - offset % 8) % 8
