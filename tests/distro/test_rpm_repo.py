"""rpm repositories: .repo files and variables, and rpm-md metadata made by the real
createrepo_c (Debian's for gz/xz, the PyPI module's for zstd) over packages built by
rpmbuild, served on 127.0.0.1. What primary says is judged against the packages'
own headers (``rpm -qp --qf``); signatures are gpg's."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from suture.distro.errors import OfflineCacheMiss, RepositoryError, SignatureError
from suture.distro.fetch import Fetcher
from suture.distro.mirrors import RepositoryHosts
from suture.distro.rpm.model import (
    SENSE_EQUAL,
    SENSE_GREATER,
    SENSE_LESS,
    SENSE_PREREQ,
    Dep,
    PackageInfo,
    RepoPackage,
)
from suture.distro.rpm.repo import (
    RepoConfigError,
    RpmFetcher,
    RpmRepository,
    parse_metalink,
    parse_mirrorlist,
    parse_primary,
    parse_repo_files,
    parse_repomd,
    releasever_of,
    repo_variables,
)
from suture.distro.rpm.sign import Keyring
from suture.errors import DigestMismatch
from tests.fixtures._served import ServedDirectory
from tests.fixtures.rpmbuild import GpgKey, build_rpm, have_rpm_tools, make_gpg_key

VENV_CREATEREPO = Path(sys.executable).with_name("createrepo_c")
pytestmark = pytest.mark.skipif(
    not have_rpm_tools() or shutil.which("createrepo_c") is None,
    reason="needs rpm, rpmbuild, gpg and createrepo_c")

_HEAD = """Version: {version}
Release: {release}
Summary: test
License: MIT
BuildArch: noarch
"""

SPECS = {
    "sut-base": """Name: sut-base
""" + _HEAD.format(version="1.0", release="1") + """Provides: sut-cap = 2.0
%description
base
%install
mkdir -p %{buildroot}/usr/bin %{buildroot}/etc %{buildroot}/usr/share/sut
echo hi > %{buildroot}/usr/bin/sut-base
echo conf > %{buildroot}/etc/sut.conf
echo doc > %{buildroot}/usr/share/sut/README
%files
/usr/bin/sut-base
/etc/sut.conf
/usr/share/sut/README
""",
    "sut-app": """Name: sut-app
Epoch: 2
""" + _HEAD.format(version="1.0", release="3") + """Requires: sut-base >= 1.0-1
Requires(pre): sut-base
Requires: /usr/bin/sut-base
Obsoletes: sut-old < 2
Conflicts: sut-bad <= 1:0.5
Provides: sut-app-cap = 2:1.0
%description
app
%install
mkdir -p %{buildroot}/usr/bin
echo hi > %{buildroot}/usr/bin/sut-app
%files
/usr/bin/sut-app
""",
    "sut-lib": """Name: sut-lib
""" + _HEAD.format(version="0.9.1", release="2.el9") + """Requires: sut-cap > 1.5
Requires(post): sut-base
Conflicts: sut-app < 1.0
%description
lib
%install
mkdir -p %{buildroot}/usr/lib/sut
echo lib > %{buildroot}/usr/lib/sut/lib.so
%files
/usr/lib/sut/lib.so
""",
}


@dataclass
class Repos:
    root: Path  # served directory: gz/, xz/ (sha512), zstd/
    packages: list[Path]
    key: GpgKey
    served: ServedDirectory

    def url(self, sub: str) -> str:
        return f"{self.served.url}/{sub}"


def _sign(key: GpgKey, repomd: Path) -> None:
    subprocess.run(["gpg", "--batch", "--yes", "--armor", "--detach-sign", "-u", key.uid,
                    str(repomd)], env={"GNUPGHOME": str(key.home), "PATH": "/usr/bin:/bin"},
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repos]:
    work = tmp_path_factory.mktemp("rpmrepo")
    built: list[Path] = []
    for spec in SPECS.values():
        built += build_rpm(spec, work / "built")
    key = make_gpg_key(work / "gnupg", "repo@suture.invalid")
    root = work / "srv"
    kinds = {"gz": ("createrepo_c", ["--general-compress-type=gz"]),
             "xz": ("createrepo_c", ["--general-compress-type=xz", "--checksum=sha512"]),
             "bz2": ("createrepo_c", ["--general-compress-type=bz2", "--checksum=sha1"])}
    if VENV_CREATEREPO.exists():
        kinds["zstd"] = (str(VENV_CREATEREPO), ["--general-compress-type=zstd"])
    for sub, (tool, args) in kinds.items():
        (root / sub / "Packages").mkdir(parents=True)
        for p in built:
            shutil.copy(p, root / sub / "Packages" / p.name)
        subprocess.run([tool, "-q", *args, str(root / sub)], check=True, capture_output=True)
        _sign(key, root / sub / "repodata" / "repomd.xml")
    with ServedDirectory(root) as served:
        yield Repos(root, built, key, served)


def _repo(baseurls: tuple[str, ...] = (), **kw: object) -> RpmRepository:
    fields: dict[str, object] = {"id": "sut", "name": "sut", "baseurls": baseurls}
    fields.update(kw)
    return RpmRepository(**fields)  # type: ignore[arg-type]


def _fetcher(tmp_path: Path, **kw: object) -> Fetcher:
    return Fetcher(tmp_path / "cache", backoff=0,
                   hosts=RepositoryHosts(["127.0.0.1"]), **kw)  # type: ignore[arg-type]


def _keyring(repos: Repos) -> Keyring:
    return Keyring.load([("repo key", repos.key.armored)])


# ---------------------------------------------------------------- primary vs headers

_SENSE = SENSE_LESS | SENSE_GREATER | SENSE_EQUAL
_PRE_BITS = SENSE_PREREQ | (1 << 9) | (1 << 10)  # PREREQ, SCRIPT_PRE, SCRIPT_POST
_QF = ("%{NAME}\\t%{EPOCH}\\t%{VERSION}\\t%{RELEASE}\\t%{ARCH}\\t%{SOURCERPM}\\n"
       "[P\\t%{PROVIDENAME}\\t%{PROVIDEFLAGS}\\t%{PROVIDEVERSION}\\n]"
       "[R\\t%{REQUIRENAME}\\t%{REQUIREFLAGS}\\t%{REQUIREVERSION}\\n]"
       "[O\\t%{OBSOLETENAME}\\t%{OBSOLETEFLAGS}\\t%{OBSOLETEVERSION}\\n]"
       "[C\\t%{CONFLICTNAME}\\t%{CONFLICTFLAGS}\\t%{CONFLICTVERSION}\\n]"
       "[F\\t%{FILENAMES}\\n]")


def _header_view(path: Path) -> dict[str, object]:
    """What rpm says of the package, in the terms primary keeps."""
    out = subprocess.run(["rpm", "-qp", "--nosignature", "--qf", _QF, str(path)],
                         check=True, capture_output=True, text=True).stdout.splitlines()
    name, epoch, version, release, arch, srpm = out[0].split("\t")
    deps: dict[str, set[tuple[str, int, str]]] = {"P": set(), "R": set(), "O": set(),
                                                  "C": set()}
    files = []
    for line in out[1:]:
        kind, *rest = line.split("\t")
        if kind == "F":
            files.append(rest[0])
            continue
        dname, flags, ver = rest[0], int(rest[1]), rest[2]
        if dname.startswith("rpmlib("):
            continue  # createrepo_c leaves rpm's own features out
        bits = flags & _SENSE
        if kind == "R" and flags & _PRE_BITS:
            bits |= SENSE_PREREQ
        deps[kind].add((dname, bits, ver))
    # primary's file list: what dependencies may name (createrepo_c's rule)
    primary_files = sorted(f for f in files if f.startswith("/etc/") or "/bin/" in f)
    return {"nevra": (name, None if epoch == "(none)" else int(epoch), version, release,
                      arch), "sourcerpm": srpm, "deps": deps, "files": primary_files}


def _package_view(pkg: RepoPackage) -> dict[str, object]:
    def s(deps: tuple[Dep, ...]) -> set[tuple[str, int, str]]:
        return {(d.name, d.flags, d.version) for d in deps}
    return {"nevra": (pkg.name, pkg.epoch or None, pkg.version, pkg.release, pkg.arch),
            "sourcerpm": pkg.sourcerpm,
            "deps": {"P": s(pkg.provides), "R": s(pkg.requires), "O": s(pkg.obsoletes),
                     "C": s(pkg.conflicts)},
            "files": sorted(pkg.files)}


@pytest.mark.parametrize("kind", ["gz", "xz", "zstd", "bz2"])
def test_primary_is_what_the_headers_say(repos: Repos, tmp_path: Path, kind: str) -> None:
    if not (repos.root / kind).exists():
        pytest.skip("the createrepo_c module is not installed (zstd)")
    repo = _repo((repos.url(kind),), repo_gpgcheck=True, order=4, priority=7)
    rf = RpmFetcher(_fetcher(tmp_path))
    packages = rf.fetch_repository(repo, keys=_keyring(repos))
    assert sorted(p.name for p in packages) == sorted(SPECS)
    by_name = {p.name: p for p in packages}
    for built in repos.packages:
        header = _header_view(built)
        pkg = by_name[header["nevra"][0]]  # type: ignore[index]
        assert _package_view(pkg) == header
        data = built.read_bytes()
        assert pkg.checksum == hashlib.new(pkg.checksum_type, data).hexdigest()
        assert pkg.checksum_type == {"xz": "sha512", "bz2": "sha1"}.get(kind, "sha256")
        assert pkg.size == len(data)
        assert pkg.location == f"Packages/{built.name}"
        assert (pkg.repo_id, pkg.repo_order, pkg.priority) == ("sut", 4, 7)
        assert rf.fetch_package(pkg).read_bytes() == data
    # a Requires(pre) carries rpm's PREREQ bit, versioned deps their comparison
    app = by_name["sut-app"]
    assert Dep("sut-base", SENSE_PREREQ) in app.requires
    assert Dep("sut-base", SENSE_GREATER | SENSE_EQUAL, "1.0-1") in app.requires
    assert Dep("sut-app", SENSE_EQUAL, "2:1.0-3") in app.provides


# ---------------------------------------------------------------- tampering


def _copy(repos: Repos, kind: str, name: str) -> Path:
    dest = repos.root / name
    if not dest.exists():
        shutil.copytree(repos.root / kind, dest)
    return dest


def _gzip_of_size(data: bytes, size: int) -> bytes:
    """``data`` gzip-compressed to exactly ``size`` bytes (a comment field pads it)."""
    import struct
    import zlib
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = co.compress(data) + co.flush()
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    pad = size - (10 + len(body) + len(trailer)) - 1
    assert pad >= 0
    header = b"\x1f\x8b\x08\x10" + b"\0" * 4 + b"\x02\xff" + b"x" * pad + b"\0"
    return header + body + trailer


def test_tampered_primary_is_caught_by_its_checksum(repos: Repos, tmp_path: Path) -> None:
    bad = _copy(repos, "gz", "tampered-primary")
    primary = next((bad / "repodata").glob("*-primary.xml.gz"))
    text = gzip.decompress(primary.read_bytes())
    assert b'ver="0.9.1"' in text
    # same name and a well-formed, re-compressed document: only the checksum tells
    size = primary.stat().st_size
    primary.write_bytes(_gzip_of_size(text.replace(b'ver="0.9.1"', b'ver="9.9.9"'), size))
    assert b'ver="0.9.1"' not in gzip.decompress(primary.read_bytes())
    repo = _repo((repos.url("tampered-primary"),), id="evil")
    with pytest.raises(DigestMismatch, match="evil: primary"):
        RpmFetcher(_fetcher(tmp_path)).fetch_repository(repo)
    # with other mirrors failing too, the checksum failure is what is reported
    with pytest.raises(DigestMismatch, match="evil: primary"):
        RpmFetcher(_fetcher(tmp_path)).fetch_repository(
            _repo((repos.url("tampered-primary"), repos.url("gone")), id="evil"))


def test_repo_gpgcheck_refuses_a_changed_repomd(repos: Repos, tmp_path: Path) -> None:
    bad = _copy(repos, "gz", "tampered-repomd")
    repomd = bad / "repodata" / "repomd.xml"
    repomd.write_bytes(repomd.read_bytes().replace(b"<revision>", b"<revision>1"))
    repo = _repo((repos.url("tampered-repomd"),), repo_gpgcheck=True)
    with pytest.raises(SignatureError):
        RpmFetcher(_fetcher(tmp_path)).fetch_repository(repo, keys=_keyring(repos))
    # the same repository without repo_gpgcheck is read (repomd is not checked then)
    assert RpmFetcher(_fetcher(tmp_path)).fetch_repository(_repo(repo.baseurls))
    # a signature by a key that is not trusted
    other = make_gpg_key(tmp_path / "other", "other@suture.invalid")
    with pytest.raises(SignatureError):
        RpmFetcher(_fetcher(tmp_path)).fetch_repository(
            _repo((repos.url("gz"),), repo_gpgcheck=True),
            keys=Keyring.load([("other", other.armored)]))
    with pytest.raises(RepositoryError, match="no key"):
        RpmFetcher(_fetcher(tmp_path)).fetch_repository(
            _repo((repos.url("gz"),), repo_gpgcheck=True))


def test_tampered_package_is_refused_and_a_bad_cached_copy_refetched(
        repos: Repos, tmp_path: Path) -> None:
    rf = RpmFetcher(_fetcher(tmp_path))
    pkg = next(p for p in rf.fetch_repository(_repo((repos.url("xz"),)))
               if p.name == "sut-lib")
    path = rf.fetch_package(pkg)
    good = path.read_bytes()
    before = len(repos.served.requests_for("sut-lib"))
    assert rf.fetch_package(pkg).read_bytes() == good  # cached: no request
    assert len(repos.served.requests_for("sut-lib")) == before
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # the cached file damaged
    assert rf.fetch_package(pkg).read_bytes() == good
    assert len(repos.served.requests_for("sut-lib")) == before + 1
    rf.forget(pkg)
    assert rf.fetch_package(pkg).read_bytes() == good
    assert len(repos.served.requests_for("sut-lib")) == before + 2
    wrong = RepoPackage(**{**pkg.__dict__, "checksum": "0" * 128})
    with pytest.raises(DigestMismatch):
        rf.fetch_package(wrong)


# ---------------------------------------------------------------- mirrors


def _metalink(repomd: bytes, urls: list[str], *, stale: bool = False) -> bytes:
    """A metalink as Fedora's mirror manager writes it (``stale``: for another repomd)."""
    named = repomd + b" " if stale else repomd
    sha256 = hashlib.sha256(named).hexdigest()
    sha512 = hashlib.sha512(named).hexdigest()
    res = "".join(f'<url protocol="http" type="http" location="US" preference="{100 - i}">'
                  f"{u}/repodata/repomd.xml</url>\n" for i, u in enumerate(urls))
    return f"""<?xml version="1.0" encoding="utf-8"?>
<metalink version="3.0" xmlns="http://www.metalinker.org/" type="dynamic"
 pubdate="Fri, 04 Dec 2026 20:00:00 GMT" generator="mirrormanager"
 xmlns:mm0="http://fedorahosted.org/mirrormanager">
 <files>
  <file name="repomd.xml">
   <mm0:timestamp>1700000000</mm0:timestamp>
   <size>{len(repomd)}</size>
   <verification>
    <hash type="md5">{hashlib.md5(repomd).hexdigest()}</hash>
    <hash type="sha1">{hashlib.sha1(repomd).hexdigest()}</hash>
    <hash type="sha256">{sha256}</hash>
    <hash type="sha512">{sha512}</hash>
   </verification>
   <resources maxconnections="1">
{res}   </resources>
  </file>
 </files>
</metalink>
""".encode()


def test_metalink_checks_repomd_and_falls_back_to_the_next_mirror(
        repos: Repos, tmp_path: Path) -> None:
    repomd = (repos.root / "gz" / "repodata" / "repomd.xml").read_bytes()
    ml = repos.root / "metalink"
    ml.mkdir(exist_ok=True)
    (ml / "good.xml").write_bytes(_metalink(repomd, [repos.url("nowhere"), repos.url("gz")]))
    parsed = parse_metalink((ml / "good.xml").read_bytes(), what="m")
    assert parsed.bases == (repos.url("nowhere"), repos.url("gz"))
    assert parsed.size == len(repomd)
    packages = RpmFetcher(_fetcher(tmp_path)).fetch_repository(
        _repo(metalink=repos.url("metalink/good.xml")))
    assert sorted(p.name for p in packages) == sorted(SPECS)
    assert {p.base_url for p in packages} == {repos.url("gz")}
    assert repos.served.requests_for("nowhere/repodata/repomd.xml")[-1].status == 404
    # a repomd that is not the one the metalink names is refused on every mirror
    (ml / "stale.xml").write_bytes(_metalink(repomd, [repos.url("gz")], stale=True))
    with pytest.raises(DigestMismatch, match="metalink"):
        RpmFetcher(_fetcher(tmp_path)).fetch_repository(
            _repo(metalink=repos.url("metalink/stale.xml")))
    # offline, the cached copies are found behind the dead first mirror too
    offline = RpmFetcher(_fetcher(tmp_path, offline=True)).fetch_repository(
        _repo(metalink=repos.url("metalink/good.xml")))
    assert offline == packages


def test_mirrorlist_first_working_mirror(repos: Repos, tmp_path: Path) -> None:
    ml = repos.root / "mirrorlist"
    ml.mkdir(exist_ok=True)
    (ml / "list").write_text(f"# mirrors\n{repos.url('gone')}\n\n{repos.url('xz')}\n")
    assert parse_mirrorlist((ml / "list").read_bytes(), what="l") == (
        repos.url("gone"), repos.url("xz"))
    packages = RpmFetcher(_fetcher(tmp_path)).fetch_repository(
        _repo(mirrorlist=repos.url("mirrorlist/list")))
    assert {p.base_url for p in packages} == {repos.url("xz")}


def test_baseurls_first_working_and_xml_base(repos: Repos, tmp_path: Path) -> None:
    rf = RpmFetcher(_fetcher(tmp_path))
    packages = rf.fetch_repository(_repo((repos.url("dead"), repos.url("gz"))))
    assert {p.base_url for p in packages} == {repos.url("gz")}
    assert repos.served.requests_for("dead/repodata/repomd.xml")[-1].status == 404
    # a primary whose locations carry xml:base: packages come from there
    primary = next((repos.root / "gz" / "repodata").glob("*-primary.xml.gz"))
    text = gzip.decompress(primary.read_bytes()).replace(
        b'<location href="', f'<location xml:base="{repos.url("gz")}" href="'.encode())
    moved = parse_primary(text, repo=_repo(), base_url="http://elsewhere.invalid/x",
                          what="primary")
    assert {p.base_url for p in moved} == {repos.url("gz")}
    for pkg in moved:
        assert rf.fetch_package(pkg).stat().st_size == pkg.size
    # primary is read in pieces: packages across the piece boundaries are all there
    spaced = text.replace(b"</package>", b"</package>" + b" " * 700_000)
    assert parse_primary(spaced, repo=_repo(), base_url="x", what="p") == moved
    with pytest.raises(RepositoryError, match="malformed XML"):
        parse_primary(spaced[:-20], repo=_repo(), base_url="x", what="p")


def test_mirror_override_and_private_hosts(repos: Repos, tmp_path: Path) -> None:
    origin = "https://cdn-ubi.redhat.example/ubi9/9/x86_64/baseos/os"
    repo = _repo((origin,))
    # the user's --mirror maps the image's URL onto the served copy; the mirror target
    # is trusted even though it is loopback
    fetcher = Fetcher(tmp_path / "cache", backoff=0,
                      hosts=RepositoryHosts(trusted=[repos.url("gz")]))
    rf = RpmFetcher(fetcher, mirrors={origin: repos.url("gz")})
    packages = rf.fetch_repository(repo)
    assert sorted(p.name for p in packages) == sorted(SPECS)
    assert rf.fetch_package(packages[0]).stat().st_size == packages[0].size
    # without the mirror, a loopback baseurl is refused by the host rules
    from suture.distro.errors import PrivateRepository
    with pytest.raises(PrivateRepository):
        RpmFetcher(Fetcher(tmp_path / "c2", backoff=0, hosts=RepositoryHosts())
                   ).fetch_repository(_repo((repos.url("gz"),)))


def test_offline_uses_the_cache_and_misses_clearly(repos: Repos, tmp_path: Path) -> None:
    online = RpmFetcher(_fetcher(tmp_path))
    repo = _repo((repos.url("zstd" if (repos.root / "zstd").exists() else "gz"),))
    first = online.fetch_repository(repo)
    for pkg in first:
        online.fetch_package(pkg)
    count = len(repos.served.requests)
    # online again, repomd is revalidated (not modified), primary comes from the cache
    again = RpmFetcher(_fetcher(tmp_path))
    assert again.fetch_repository(repo) == first
    new = repos.served.requests[count:]
    assert [(r.path.rsplit("/", 1)[-1], r.status) for r in new] == [("repomd.xml", 304)]
    count = len(repos.served.requests)
    offline = RpmFetcher(_fetcher(tmp_path, offline=True))
    assert offline.fetch_repository(repo) == first
    for pkg in first:
        assert offline.fetch_package(pkg).stat().st_size == pkg.size
    assert len(repos.served.requests) == count
    with pytest.raises(OfflineCacheMiss):
        RpmFetcher(Fetcher(tmp_path / "empty", offline=True)).fetch_repository(repo)


# ---------------------------------------------------------------- hostile metadata


def test_hostile_xml_and_locations(repos: Repos, tmp_path: Path) -> None:
    bomb = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]>'
            b'<repomd xmlns="http://linux.duke.edu/metadata/repo">&b;</repomd>')
    with pytest.raises(RepositoryError, match="DTD"):
        parse_repomd(bomb, what="repomd")
    with pytest.raises(RepositoryError, match="DTD"):
        parse_primary(bomb, repo=_repo(), base_url="http://x", what="primary")
    with pytest.raises(RepositoryError, match="malformed XML"):
        parse_repomd(b"<repomd", what="repomd")
    repomd = (repos.root / "gz" / "repodata" / "repomd.xml").read_bytes()
    records = parse_repomd(repomd, what="repomd")
    assert records["primary"].href.startswith("repodata/")
    for name, href in (("dotdot", "../../etc/passwd"),
                       ("elsewhere", "http://169.254.169.254/latest/primary.xml.gz")):
        bad = _copy(repos, "gz", name)
        path = bad / "repodata" / "repomd.xml"
        path.write_bytes(path.read_bytes().replace(
            records["primary"].href.encode(), href.encode()))
        with pytest.raises(RepositoryError, match=r"leaves the repository|another host"):
            RpmFetcher(_fetcher(tmp_path)).fetch_repository(_repo((repos.url(name),)))


# ---------------------------------------------------------------- configuration


def test_repo_files_with_variables() -> None:
    files = {
        "etc/yum.repos.d/b.repo": b"""
[b-extra]
name=Extra $releasever
baseurl=https://b.example/${contentdir}/$releasever/$basearch/os/
 https://b2.example/$releasever_major/$basearch/
enabled=0
gpgkey=file:///etc/pki/rpm-gpg/K1 file:///etc/pki/rpm-gpg/K2-$releasever_major
""",
        "etc/yum.repos.d/a.repo": b"""# comment
[a-base]
name = Base for $basearch
metalink=https://m.example/metalink?repo=base-$releasever&arch=$basearch
gpgcheck=0
priority=10
exclude=kernel* foo,bar
module_hotfixes=true

[a-src]
mirrorlist=https://m.example/list?r=$undefined
repo_gpgcheck=1
""",
    }
    variables = repo_variables(
        {"etc/dnf/vars/contentdir": b"pub/rocky\n", "etc/yum/vars/contentdir": b"old\n",
         "etc/dnf/vars/bad name": b"x"}, basearch="x86_64", releasever="9.4")
    assert variables["releasever_major"] == "9" and variables["releasever_minor"] == "4"
    assert variables["contentdir"] == "pub/rocky"
    repos = parse_repo_files(files, variables, dnf_conf=b"[main]\ngpgcheck=1\n")
    assert [r.id for r in repos] == ["a-base", "a-src", "b-extra"]
    assert [r.order for r in repos] == [0, 1, 2]
    base, src, extra = repos
    assert base.name == "Base for x86_64" and base.priority == 10 and not base.gpgcheck
    assert base.metalink == "https://m.example/metalink?repo=base-9.4&arch=x86_64"
    assert base.excludepkgs == ("kernel*", "foo", "bar") and base.module_hotfixes
    assert src.gpgcheck and src.repo_gpgcheck and src.enabled and src.priority == 99
    assert src.mirrorlist == "https://m.example/list?r=$undefined"
    assert extra.baseurls == ("https://b.example/pub/rocky/9.4/x86_64/os/",
                              "https://b2.example/9/x86_64/")
    assert not extra.enabled and extra.source == "etc/yum.repos.d/b.repo"
    assert extra.gpgkeys == ("file:///etc/pki/rpm-gpg/K1", "file:///etc/pki/rpm-gpg/K2-9")
    # dnf.conf's own repository sections come first; ids dnf refuses are skipped
    more = parse_repo_files({"etc/yum.repos.d/z.repo": b"[bad/id]\nbaseurl=http://a/\n"
                             b"[ok]\nbaseurl=http://b/\n"}, variables,
                            dnf_conf=b"[main]\nrepo_gpgcheck=1\n[local]\nbaseurl=http://l/\n")
    assert [(r.id, r.source, r.repo_gpgcheck) for r in more] == [
        ("local", "etc/dnf/dnf.conf", True), ("ok", "etc/yum.repos.d/z.repo", True)]
    with pytest.raises(RepoConfigError, match=r"etc/yum.repos.d/x.repo:3: "):
        parse_repo_files({"etc/yum.repos.d/x.repo": b"[x]\nbaseurl=http://a/\nnonsense\n"},
                         variables)
    with pytest.raises(RepoConfigError, match=r"x.repo:2: not a boolean"):
        parse_repo_files({"etc/yum.repos.d/x.repo": b"[x]\nenabled=maybe\n"}, variables)


@pytest.mark.skipif(subprocess.run(["/usr/bin/python3", "-c", "import dnf"],
                                   capture_output=True).returncode != 0,
                    reason="needs python3-dnf")
def test_repo_files_as_dnf_reads_them(tmp_path: Path) -> None:
    """libdnf's own parser (python3-dnf) reads the same files to the same values."""
    reposdir = tmp_path / "repos"
    reposdir.mkdir()
    text = (b"[r1]\nname=R $releasever\nbaseurl=https://r.example/$releasever/$basearch/\n"
            b"  https://r2.example/${releasever}/\ngpgcheck=1\npriority=5\ncost=300\n"
            b"gpgkey=https://k.example/key-$basearch\nenabled=0\n\n"
            b"[r2]\nmirrorlist=https://m.example/?a=$basearch\nrepo_gpgcheck=yes\n")
    (reposdir / "t.repo").write_bytes(text)
    script = (
        "import dnf,json,sys\n"
        "b=dnf.Base(); c=b.conf\n"
        f"c.reposdir=['{reposdir}']\n"
        "c.substitutions['releasever']='9'; c.substitutions['basearch']='aarch64'\n"
        "b.read_all_repos()\n"
        "print(json.dumps({r.id: [r.name, list(r.baseurl), r.mirrorlist or '', r.enabled,"
        " bool(r.gpgcheck), bool(r.repo_gpgcheck), list(r.gpgkey), r.priority, r.cost]"
        " for r in b.repos.values()}))\n")
    import json
    got = json.loads(subprocess.run(["/usr/bin/python3", "-c", script], check=True,
                                    capture_output=True, text=True).stdout)
    variables = repo_variables({}, basearch="aarch64", releasever="9")
    mine = {r.id: [r.name, list(r.baseurls), r.mirrorlist, r.enabled, r.gpgcheck,
                   r.repo_gpgcheck, list(r.gpgkeys), r.priority, r.cost]
            for r in parse_repo_files({"etc/yum.repos.d/t.repo": text}, variables)}
    assert mine == got


def test_releasever_of() -> None:
    rocky = PackageInfo("rocky-release", 0, "9.4", "1.7.el9", "noarch", provides=(
        Dep("rocky-release", SENSE_EQUAL, "9.4-1.7.el9"),
        Dep("system-release(releasever)", SENSE_EQUAL, "9"),
        Dep("system-release", SENSE_EQUAL, "9.4-1.7.el9")))
    al = PackageInfo("system-release", 0, "2023.6.20241010", "0.amzn2023", "noarch",
                     provides=(Dep("system-release", SENSE_EQUAL, "2023.6.20241010-0"),))
    other = PackageInfo("bash", 0, "5.1", "1", "x86_64")
    assert releasever_of([other, rocky], "9.4") == "9"
    assert releasever_of([al, other], "2023") == "2023.6.20241010"
    assert releasever_of([other], "9.4") == "9.4"
