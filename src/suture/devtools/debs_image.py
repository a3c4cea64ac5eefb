"""Build a small Debian image of any architecture from real .debs, running nothing.

``python -m suture.devtools.debs_image SUITE ARCH DEST`` resolves the packages
named (default :data:`DEFAULT_PACKAGES`) and what they depend on in the suite's
Packages index for ARCH, downloads the ``.deb`` files, unpacks them with
``dpkg-deb`` and writes one layer and an image to DEST (``oci:DIR:TAG`` or any
other writable reference). No maintainer script runs, so an arm64 or armhf
image is built on an amd64 host without emulation (``mmdebstrap`` cannot do
that: it runs the scripts).

Trust: the suite's Release is verified with this host's Debian archive keyring
(as ``mmdebstrap`` does), the Packages index against the Release and every
``.deb`` against its size and SHA256 (:mod:`suture.distro.dpkg.repo`; downloads
are kept in a content-addressed cache). Only the suite named is used, so a
patch has real newer packages to apply from ``-security`` and ``-updates``.

What the root holds:

* the packages' files as ``dpkg-deb --fsys-tarfile`` gives them (modes, owners
  and mtimes of the package), with merged ``/usr``: ``bin``, ``sbin``, ``lib``
  and any other top-level ``lib*`` a package ships are symlinks into ``usr/``,
  as debootstrap and mmdebstrap make them for bookworm;
* the dpkg database as dpkg leaves it after installing them: ``status``
  (``Status: install ok installed``, dpkg's field order, ``Conffiles`` with
  their MD5, stanzas sorted by name), ``info/<pkg>.list`` (``/.`` and every
  member in archive order), every control member but ``control``
  (``md5sums``, ``conffiles``, scripts, ``shlibs``...) under
  ``info/<pkg>.<member>`` (``<pkg>:<arch>`` for ``Multi-Arch: same``), trigger
  interests under ``triggers/``, ``info/format`` and ``arch``;
* ``etc/apt/sources.list`` naming the suite.

Since no script ran, what scripts make is missing (``/etc/passwd``, the
``/bin/sh`` diversion, alternatives, ``ld.so.cache``). Dependencies are
followed through ``Pre-Depends`` and ``Depends`` taking the first alternative
that exists; version constraints are not checked (one suite holds one version
of each package). Every mtime the packages do not give is ``epoch``, so the
same archive state gives the same image digest.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import logging
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from suture.devtools import comma_list, command_parser, run_build
from suture.devtools.debian_image import ARCHES, DEFAULT_MIRROR
from suture.distro.dpkg.control import parse_relations
from suture.distro.dpkg.release import Keyring
from suture.distro.dpkg.relevant import relevant_stanzas
from suture.distro.dpkg.repo import AptFetcher, PackageEntry, parse_packages_index
from suture.errors import SutureError, UsageError
from suture.oci.fs import member_entry, normalize
from suture.oci.image import Image
from suture.oci.layer import DIR, FILE, HARDLINK, SYMLINK, Entry, sort_key, write_layer
from suture.oci.model import Platform
from suture.oci.mutate import AddedLayer, new_image
from suture.transports import write_artifact

log = logging.getLogger(__name__)

# A shell (so scripts can run where the architecture allows), and openssl: an ELF
# program and libraries that bookworm-security upgrades.
DEFAULT_PACKAGES = ("base-files", "debian-archive-keyring", "dash", "openssl")
HOST_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEFAULT_CACHE = Path.home() / ".cache" / "suture" / "apt"
DEFAULT_EPOCH = 1700000000
ADMIN = "var/lib/dpkg"
_ALIASED = ("bin", "sbin", "lib")
# dpkg's order of the fields it knows when it writes the status file; others follow
# in the package's order.
_STATUS_ORDER = ("Package", "Essential", "Protected", "Status", "Priority", "Section",
                 "Installed-Size", "Origin", "Maintainer", "Bugs", "Architecture",
                 "Multi-Arch", "Source", "Version", "Config-Version", "Replaces", "Provides",
                 "Depends", "Pre-Depends", "Recommends", "Suggests", "Breaks", "Conflicts",
                 "Enhances", "Conffiles", "Description", "Triggers-Pending",
                 "Triggers-Awaited")
_MAX_MEMBER = 256 << 20


# ------------------------------------------------------------------ resolution

_PRIORITIES = ("required", "important", "standard", "optional", "extra")


def _preference(entry: PackageEntry) -> tuple[int, str]:
    """Which provider of a virtual package to take: the highest priority, then the name
    (``awk`` is ``mawk``, as debootstrap installs it)."""
    priority = (entry.paragraph.get("Priority") or "extra").lower()
    rank = _PRIORITIES.index(priority) if priority in _PRIORITIES else len(_PRIORITIES)
    return rank, entry.package


def resolve_packages(candidates: Iterable[PackageEntry], names: Iterable[str]
                     ) -> list[PackageEntry]:
    """``names`` and everything they need through ``Pre-Depends``/``Depends``, sorted by
    name. Each relation takes its first alternative that a candidate has (by name, or
    through ``Provides`` preferring the highest ``Priority``) unless one already chosen
    satisfies it; versions are not compared. Raises :class:`SutureError` for a name
    nothing provides."""
    by_name: dict[str, PackageEntry] = {}
    provided: dict[str, list[PackageEntry]] = {}
    for entry in candidates:
        by_name.setdefault(entry.package, entry)
        for group in parse_relations(entry.provides):
            for rel in group:
                provided.setdefault(rel.name, []).append(entry)
    chosen: dict[str, PackageEntry] = {}
    satisfied: set[str] = set()

    def have(name: str) -> bool:
        return name in by_name or name in provided

    todo = list(names)
    while todo:
        name = todo.pop(0)
        if name in satisfied:
            continue
        found = by_name.get(name) or min(provided.get(name, ()), default=None,
                                         key=_preference)
        if found is None:
            raise SutureError(f"no package {name!r} in the index")
        chosen[found.package] = found
        satisfied.add(found.package)
        satisfied.update(r.name for g in parse_relations(found.provides) for r in g)
        for field in (found.pre_depends, found.depends):
            for group in parse_relations(field):
                if any(r.name in satisfied for r in group):
                    continue
                pick = next((r.name for r in group if have(r.name)), None)
                if pick is None:
                    raise SutureError(f"{found.package}: nothing satisfies "
                                      + " | ".join(str(r) for r in group))
                todo.append(pick)
    return sorted(chosen.values(), key=lambda e: e.package)


def fetch_debs(suite: str, arch: str, packages: Sequence[str], *,
               mirror: str = DEFAULT_MIRROR, cache_dir: Path = DEFAULT_CACHE,
               keyring: Path = HOST_KEYRING, component: str = "main"
               ) -> list[tuple[PackageEntry, Path]]:
    """The verified ``.deb`` files of ``packages`` and their dependencies in ``suite``
    for ``arch`` (``Architecture: all`` ones included), from the cache or the mirror."""
    if not keyring.is_file():
        raise UsageError(f"no archive keyring at {keyring}",
                         hint="apt-get install debian-archive-keyring, or pass --keyring")
    trusted = Keyring.from_bytes(keyring.read_bytes(), names=[str(keyring)])
    with AptFetcher(cache_dir) as fetcher:
        repo = fetcher.fetch_release(mirror, suite, trusted)
        index = repo.fetch_packages(component, arch)
        [relevant] = relevant_stanzas([index], packages)
        candidates = [e for e in parse_packages_index(relevant, base_uri=repo.uri,
                                                      source=f"{suite} {component}/{arch}")
                      if e.architecture in (arch, "all")]
        chosen = resolve_packages(candidates, packages)
        log.info("%s/%s: %d packages: %s", suite, arch, len(chosen),
                 " ".join(e.package for e in chosen))
        return [(entry, repo.fetch_deb(entry)) for entry in chosen]


# ------------------------------------------------------------------ unpacking

def _dpkg_deb(option: str, deb: Path) -> bytes:
    tool = shutil.which("dpkg-deb")
    if tool is None:
        raise UsageError("dpkg-deb is not installed (apt-get install dpkg)")
    proc = subprocess.run([tool, option, str(deb)], capture_output=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise SutureError(f"dpkg-deb {option} {deb.name} failed: {last}")
    return proc.stdout


def _control_fields(text: str) -> list[tuple[str, str]]:
    """The fields of a control file as (name, value as written, continuation lines
    included, no trailing newline)."""
    fields: list[tuple[str, str]] = []
    for line in text.rstrip("\n").split("\n"):
        if line[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + "\n" + line)
        elif line.strip():
            name, _, value = line.partition(":")
            fields.append((name.strip(), value.strip()))
    return fields


@dataclass
class _Package:
    entry: PackageEntry
    fields: list[tuple[str, str]]
    control: dict[str, tuple[bytes, int, int]]  # member -> (data, mode, mtime)
    listed: list[str]  # "/." and every data member, as dpkg's .list has them
    files: dict[str, bytes]  # regular files as shipped (root-relative) -> contents

    @property
    def name(self) -> str:
        return self.entry.package

    def field(self, name: str) -> str:
        return next((v for n, v in self.fields if n.lower() == name.lower()), "")

    @property
    def infoname(self) -> str:
        if self.field("Multi-Arch") == "same":
            return f"{self.name}:{self.field('Architecture')}"
        return self.name


def _alias(path: str, aliased: Sequence[str]) -> str:
    return f"usr/{path}" if path.split("/", 1)[0] in aliased else path


def _unpack(entry: PackageEntry, deb: Path) -> tuple[_Package, list[Entry]]:
    what = f"{entry.package}_{entry.version}_{entry.architecture}.deb"
    control: dict[str, tuple[bytes, int, int]] = {}
    with tarfile.open(fileobj=io.BytesIO(_dpkg_deb("--ctrl-tarfile", deb)), mode="r:") as tar:
        for member in tar:
            name = normalize(member.name)
            if member.isfile() and name and "/" not in name:
                stream = tar.extractfile(member)
                data = stream.read(_MAX_MEMBER) if stream is not None else b""
                control[name] = (data, member.mode, int(member.mtime))
    if "control" not in control:
        raise SutureError(f"{what}: no control file")
    fields = _control_fields(control["control"][0].decode())
    listed: list[str] = []
    files: dict[str, bytes] = {}
    entries: list[Entry] = []
    with tarfile.open(fileobj=io.BytesIO(_dpkg_deb("--fsys-tarfile", deb)), mode="r:") as tar:
        for member in tar:
            path = normalize(member.name)
            listed.append("/" + path if path else "/.")
            item = member_entry(tar, member, layer=what)
            if item is None:
                continue
            if item.kind == FILE and isinstance(item.data, bytes):
                files[path] = item.data
            entries.append(item)
    return _Package(entry, fields, control, listed, files), entries


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _conffiles(pkg: _Package) -> list[str]:
    """``Conffiles`` lines of the status: `` /path md5`` (plus flags, as dpkg writes)."""
    text = pkg.control.get("conffiles", (b"", 0, 0))[0].decode()
    out = []
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        path, flags = words[-1], words[:-1]
        data = pkg.files.get(path.lstrip("/"))
        digest = _md5(data) if data is not None else "newconffile"
        out.append(" ".join(["", path, digest, *flags]))
    return out


def status_stanza(pkg: _Package) -> str:
    """The package's paragraph of ``var/lib/dpkg/status`` after a clean install."""
    values = {n.lower(): (n, v) for n, v in pkg.fields}
    lines = []
    for name in _STATUS_ORDER:
        if name == "Status":
            lines.append("Status: install ok installed")
        elif name == "Conffiles":
            conffiles = _conffiles(pkg)
            if conffiles:
                lines.append("Conffiles:\n" + "\n".join(conffiles))
        elif name.lower() in values:
            lines.append(f"{name}: {values[name.lower()][1]}")
    known = {n.lower() for n in _STATUS_ORDER}
    lines += [f"{n}: {v}" for n, v in pkg.fields if n.lower() not in known]
    return "\n".join(lines) + "\n"


def _interests(packages: Sequence[_Package]) -> tuple[list[str], dict[str, list[str]]]:
    """Trigger interests as dpkg records them: ``triggers/File`` lines and, per
    explicit trigger name, the lines of ``triggers/<name>``."""
    file_lines: list[str] = []
    named: dict[str, list[str]] = {}
    for pkg in packages:
        text = pkg.control.get("triggers", (b"", 0, 0))[0].decode()
        for line in text.splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) != 2 or not words[0].startswith("interest"):
                continue
            owner = pkg.infoname + ("/noawait" if words[0] == "interest-noawait" else "")
            if words[1].startswith("/"):
                file_lines.append(f"{words[1]} {owner}")
            else:
                named.setdefault(words[1], []).append(owner)
    return file_lines, named


def root_entries(debs: Sequence[tuple[PackageEntry, Path]], *, arch: str, suite: str,
                 mirror: str = DEFAULT_MIRROR, epoch: int = DEFAULT_EPOCH,
                 merged_usr: bool = True) -> list[Entry]:
    """The entries of a root filesystem with ``debs`` installed, sorted by path."""
    unpacked = [_unpack(entry, path) for entry, path in debs]
    aliased: tuple[str, ...] = ()
    if merged_usr:
        tops = {e.path.split("/", 1)[0] for _, items in unpacked for e in items}
        aliased = tuple(sorted({*_ALIASED, *(t for t in tops if t.startswith("lib")
                                             and t != "lib")}))
    out: dict[str, Entry] = {}
    owner: dict[str, str] = {}

    def put(item: Entry, who: str) -> None:
        old = out.get(item.path)
        if old is not None:
            if old.kind == DIR and item.kind == DIR:
                return  # dpkg leaves an existing directory alone
            raise SutureError(f"{item.path} is shipped by both {owner[item.path]} and {who}")
        out[item.path] = item
        owner[item.path] = who

    for top in aliased:
        put(Entry(top, SYMLINK, 0o777, mtime=epoch, linkname=f"usr/{top}"), "merged /usr")
    for pkg, items in unpacked:
        for item in items:
            path = _alias(item.path, aliased)
            linkname = _alias(item.linkname, aliased) if item.kind == HARDLINK else \
                item.linkname
            if (path, linkname) != (item.path, item.linkname):
                item = Entry(path, item.kind, item.mode, item.uid, item.gid, item.mtime,
                             item.size, linkname, item.data, item.xattrs, item.devmajor,
                             item.devminor)
            put(item, pkg.name)

    def db(path: str, data: bytes, mode: int = 0o644, mtime: int = epoch) -> None:
        put(Entry.file(path, data, mode, mtime=min(mtime, epoch)), "dpkg")

    packages = sorted((p for p, _ in unpacked), key=lambda p: (p.name, p.field("Architecture")))
    db(f"{ADMIN}/status", "\n".join(status_stanza(p) for p in packages).encode() + b"\n")
    db(f"{ADMIN}/arch", f"{arch}\n".encode())
    db(f"{ADMIN}/info/format", b"1\n")  # the multiarch layout: info/<pkg>:<arch>.*
    for pkg in packages:
        base = f"{ADMIN}/info/{pkg.infoname}"
        db(f"{base}.list", ("\n".join(pkg.listed) + "\n").encode())
        if "md5sums" not in pkg.control:  # dpkg computes them: every file
            sums = "".join(f"{_md5(data)}  {path}\n" for path, data in pkg.files.items())
            db(f"{base}.md5sums", sums.encode())
        for member, (data, mode, mtime) in sorted(pkg.control.items()):
            if member != "control":
                db(f"{base}.{member}", data, mode & 0o7777, mtime)
    file_lines, named = _interests(packages)
    db(f"{ADMIN}/triggers/Unincorp", b"")
    if file_lines:
        db(f"{ADMIN}/triggers/File", ("\n".join(file_lines) + "\n").encode())
    for trigger, owners in sorted(named.items()):
        db(f"{ADMIN}/triggers/{trigger}", ("\n".join(owners) + "\n").encode())
    for directory in ("updates", "alternatives"):
        put(Entry(f"{ADMIN}/{directory}", DIR, 0o755, mtime=epoch), "dpkg")
    db("etc/apt/sources.list", f"deb {mirror} {suite} main\n".encode())
    for path in list(out):
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in out:
                put(Entry(parent, DIR, 0o755, mtime=epoch), "parents")
    return sorted(out.values(), key=lambda e: sort_key(e.path))


# ------------------------------------------------------------------ images

def _opener(path: Path) -> Callable[[], BinaryIO]:
    def open_blob() -> BinaryIO:
        return path.open("rb")

    return open_blob


def debs_image(suite: str, arch: str, workdir: Path, *,
               packages: Sequence[str] = DEFAULT_PACKAGES, mirror: str = DEFAULT_MIRROR,
               cache_dir: Path = DEFAULT_CACHE, keyring: Path = HOST_KEYRING,
               epoch: int = DEFAULT_EPOCH) -> Image:
    """A one-layer image of ``packages`` (and dependencies) of ``suite`` for ``arch``
    (a Debian architecture name, see :data:`ARCHES`). The layer blob is written in
    ``workdir``: keep it for the life of the image."""
    if arch not in ARCHES:
        raise UsageError(f"unknown architecture {arch!r} (one of {', '.join(ARCHES)})")
    debs = fetch_debs(suite, arch, packages, mirror=mirror, cache_dir=cache_dir,
                      keyring=keyring)
    entries = root_entries(debs, arch=arch, suite=suite, mirror=mirror, epoch=epoch)
    blob = workdir / f"debs-{suite}-{arch}.tar.gz"
    with blob.open("wb") as out:
        info = write_layer(entries, out, mtime=epoch)
    created = datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    names = " ".join(e.package for e, _ in debs)
    layer = AddedLayer(info, _opener(blob), history={
        "created": created, "created_by": f"suture debs_image {suite} {arch}: {names}"[:4000]})
    return new_image([layer], Platform.parse(ARCHES[arch]), config={
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                           "/sbin:/bin"], "Cmd": ["/bin/sh"]},
        "created": created,
    })


def build_debs_image(suite: str, arch: str, dest: str, *,
                     packages: Sequence[str] = DEFAULT_PACKAGES,
                     mirror: str = DEFAULT_MIRROR, cache_dir: Path = DEFAULT_CACHE,
                     keyring: Path = HOST_KEYRING, epoch: int = DEFAULT_EPOCH,
                     workdir: Path | None = None) -> str:
    """Build the image of :func:`debs_image` and write it to ``dest``; return its digest."""
    with tempfile.TemporaryDirectory(dir=workdir, prefix="suture-debs-") as tmp:
        image = debs_image(suite, arch, Path(tmp), packages=packages, mirror=mirror,
                           cache_dir=cache_dir, keyring=keyring, epoch=epoch)
        return write_artifact(image, dest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser("debs_image", __doc__)
    parser.add_argument("suite", help="e.g. bookworm")
    parser.add_argument("arch", help=f"a Debian architecture ({', '.join(ARCHES)})")
    parser.add_argument("dest", help="where to write the image, e.g. oci:/tmp/demo:arm64")
    parser.add_argument("--packages", default=",".join(DEFAULT_PACKAGES),
                        help="comma-separated packages (dependencies are added)")
    parser.add_argument("--mirror", default=DEFAULT_MIRROR)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--keyring", type=Path, default=HOST_KEYRING,
                        help="keys to verify the suite's Release with")
    parser.add_argument("--epoch", type=int, default=DEFAULT_EPOCH,
                        help="mtime of what the packages do not date, and the image date")
    args = parser.parse_args(argv)
    return run_build("debs_image", args.dest, lambda: build_debs_image(
        args.suite, args.arch, args.dest, packages=comma_list(args.packages),
        mirror=args.mirror, cache_dir=args.cache_dir, keyring=args.keyring, epoch=args.epoch))


if __name__ == "__main__":
    raise SystemExit(main())
