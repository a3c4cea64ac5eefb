"""The package manifests of distroless CBL-Mariner and Azure Linux images.

Such images keep no rpm database, only ``/var/lib/rpmmanifest/container-manifest-1``
(``rpm -qa``: ``%{NVR}%{ARCHSUFFIX}`` a line) and ``container-manifest-2``, ten
tab-separated fields a line, as the distribution's image tooling writes them with
``rpm -qa --qf`` (:data:`MANIFEST2_FORMAT`)::

    glibc  2.35-2.cm2  1653816591  1653628955  Microsoft Corporation  (none)  10855265
    x86_64  0  glibc-2.35-2.cm2.src.rpm    (one line, tab-separated)

Both list the packages in rpm's order (install order: an upgraded package goes to the
end, as its new rpmdb entry would). Parsing is strict: a line of another shape is an
error naming the file and the line.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from suture.distro.rpm.header import INT32, STRING, Header, Tag, parse_header
from suture.distro.rpm.model import PackageInfo
from suture.errors import PackageDBError

MANIFEST_DIR = "var/lib/rpmmanifest"
MANIFEST1 = f"{MANIFEST_DIR}/container-manifest-1"
MANIFEST2 = f"{MANIFEST_DIR}/container-manifest-2"
#: The query format of container-manifest-2 (Azure Linux's and copa's tooling).
MANIFEST2_FORMAT = ("%{NAME}\\t%{VERSION}-%{RELEASE}\\t%{INSTALLTIME}\\t%{BUILDTIME}\\t"
                    "%{VENDOR}\\t%{EPOCH}\\t%{SIZE}\\t%{ARCH}\\t%{EPOCHNUM}\\t%{SOURCERPM}\\n")
MAX_MANIFEST = 16 << 20


@dataclass(frozen=True)
class ManifestEntry:
    """One line of container-manifest-2."""

    name: str
    version: str
    release: str
    install_time: str
    build_time: str
    vendor: str
    epoch: int | None
    size: str
    arch: str
    sourcerpm: str

    @property
    def info(self) -> PackageInfo:
        """What the resolver knows of the package from the manifest alone."""
        return PackageInfo(self.name, self.epoch, self.version, self.release, self.arch,
                           sourcerpm="" if self.sourcerpm == "(none)" else self.sourcerpm)

    def line2(self) -> str:
        epoch = "(none)" if self.epoch is None else str(self.epoch)
        return "\t".join((self.name, f"{self.version}-{self.release}", self.install_time,
                          self.build_time, self.vendor, epoch, self.size, self.arch,
                          str(self.epoch or 0), self.sourcerpm)) + "\n"

    def line1(self) -> str:
        return f"{self.name}-{self.version}-{self.release}.{self.arch}\n"

    def header(self) -> Header:
        """A header holding what the line says (no files, dependencies or scripts):
        how a package the image lists but whose real header is unknown is installed."""
        strings = [(Tag.NAME, self.name), (Tag.VERSION, self.version),
                   (Tag.RELEASE, self.release), (Tag.ARCH, self.arch)]
        if self.vendor != "(none)":
            strings.append((Tag.VENDOR, self.vendor))
        if self.sourcerpm != "(none)":
            strings.append((Tag.SOURCERPM, self.sourcerpm))
        numbers = [(tag, int(text)) for tag, text in ((Tag.BUILDTIME, self.build_time),
                                                      (Tag.INSTALLTIME, self.install_time),
                                                      (Tag.SIZE, self.size)) if text.isdigit()]
        if self.epoch is not None:
            numbers.append((Tag.EPOCH, self.epoch))
        index, data = [], b""
        for tag, number in sorted(numbers):
            index.append(struct.pack(">IIiI", tag, INT32, len(data), 1))
            data += struct.pack(">I", number)
        for tag, text in sorted(strings):
            index.append(struct.pack(">IIiI", tag, STRING, len(data), 1))
            data += text.encode() + b"\0"
        blob = struct.pack(">II", len(index), len(data)) + b"".join(index) + data
        return parse_header(blob, magic=False, what=f"manifest entry {self.name}")[0]


def parse_manifest2(data: bytes, *, path: str = "/" + MANIFEST2) -> list[ManifestEntry]:
    """The entries of a container-manifest-2, in order."""
    if len(data) > MAX_MANIFEST:
        raise PackageDBError(f"larger than {MAX_MANIFEST} bytes", path=path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PackageDBError("not UTF-8 text", path=path) from None
    out: list[ManifestEntry] = []
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 10:
            raise PackageDBError(f"line {no}: {len(fields)} fields, not 10", path=path)
        name, vr, itime, btime, vendor, epoch, size, arch, epochnum, source = fields
        version, dash, release = vr.rpartition("-")
        if not name or not dash or not version or not release or not arch:
            raise PackageDBError(f"line {no}: not NAME VERSION-RELEASE ... ARCH", path=path)
        if epoch != "(none)" and not epoch.isdigit():
            raise PackageDBError(f"line {no}: epoch {epoch!r} is not a number", path=path)
        if not epochnum.isdigit() or (epoch.isdigit() and int(epoch) != int(epochnum)):
            raise PackageDBError(f"line {no}: EPOCHNUM {epochnum!r} does not match",
                                 path=path)
        out.append(ManifestEntry(name, version, release, itime, btime, vendor,
                                 None if epoch == "(none)" else int(epoch), size, arch, source))
    return out


def entry_of(header: Header, *, install_time: int) -> ManifestEntry:
    """The manifest line rpm would print for a package installed from ``header``."""
    epoch = header.number(Tag.EPOCH) if Tag.EPOCH in header else None
    size = header.number(Tag.LONGSIZE) if Tag.LONGSIZE in header else header.number(Tag.SIZE)
    return ManifestEntry(
        header.string(Tag.NAME) or "", header.string(Tag.VERSION) or "",
        header.string(Tag.RELEASE) or "", str(install_time),
        str(header.number(Tag.BUILDTIME) or 0), header.string(Tag.VENDOR) or "(none)",
        epoch, str(size or 0), header.string(Tag.ARCH) or "(none)",
        header.string(Tag.SOURCERPM) or "(none)")


def write_manifests(entries: Sequence[ManifestEntry]) -> tuple[bytes, bytes]:
    """``(container-manifest-1, container-manifest-2)`` for ``entries`` in order."""
    return ("".join(e.line1() for e in entries).encode(),
            "".join(e.line2() for e in entries).encode())


def updated_manifest(entries: Sequence[ManifestEntry], removed: Sequence[ManifestEntry],
                     added: Sequence[ManifestEntry]) -> list[ManifestEntry]:
    """``entries`` without ``removed``, then ``added`` at the end (rpm's order after a
    transaction: the new entries get the highest header numbers)."""
    gone = set(removed)
    return [e for e in entries if e not in gone] + list(added)
