"""rpm.apply against the real rpm: two roots get the same 1.0 packages with
``rpm -i``; R1 is upgraded with ``rpm -U`` of the 1.1 set, R2 with the entries and
scriptlet jobs of :func:`apply_updates` (entries written by a small helper, jobs run in
a chroot in order). The file trees, the scriptlet log and the rpmdb must agree."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from suture.distro.apply import FileConflictError
from suture.distro.rpm.apply import ApplyResult, RpmUpdate, apply_updates, capability_xattr
from suture.distro.rpm.header import Tag
from suture.distro.rpm.model import SENSE_EQUAL, Dep
from suture.distro.rpm.package import read_rpm
from suture.distro.rpm.rpmdb import InstalledPackage, package_info, read_sqlite
from suture.distro.rpm.version import dep_matches
from suture.distro.scripts import ScriptJob
from suture.oci.layer import DIR, FILE, HARDLINK, SYMLINK, WHITEOUT_PREFIX, Entry
from tests.fixtures.rpmbuild import build_rpm, have_rpm_tools, rpm_root

pytestmark = [
    pytest.mark.skipif(not have_rpm_tools() or not Path("/bin/busybox").exists(),
                       reason="rpm tools or busybox missing"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chroot, chown)"),
]

DB = "var/lib/rpm/rpmdb.sqlite"
LOG = "var/log/sut.log"

SH_SPEC = """\
Name: sh
Version: 1
Release: 1
Summary: busybox shell
License: GPL
%description
sh
%install
mkdir -p %{buildroot}/bin %{buildroot}/etc %{buildroot}/var/log %{buildroot}/var/tmp
cp /bin/busybox %{buildroot}/bin/busybox
for t in sh echo cat env sort true; do ln -s busybox %{buildroot}/bin/$t; done
printf 'root:x:0:0:root:/root:/bin/sh\\nsut:x:1234:1234::/:/bin/sh\\n' > %{buildroot}/etc/passwd
printf 'root:x:0:\\nsut:x:1234:\\n' > %{buildroot}/etc/group
printf '#!/bin/sh\\necho "sutlog $*" >> /var/log/sut.log\\n' > %{buildroot}/bin/sutlog
chmod 755 %{buildroot}/bin/sutlog
%files
/bin
/etc/passwd
/etc/group
%dir /var/log
%dir /var/tmp
"""


def _log(phase: str) -> str:
    return 'echo "%{{name}}-%{{version}} ' + phase + ' $1 $2" >> /var/log/sut.log'


LIB_SPEC = """\
Name: libsut
Version: {v}
Release: 1
Summary: a library
License: MIT
BuildArch: noarch
%description
lib
%install
mkdir -p %{{buildroot}}/usr/lib/sut %{{buildroot}}/usr/share/sut
echo lib{v} > %{{buildroot}}/usr/lib/sut/libsut.txt
{moved}
%pre
""" + _log("pre") + """
%post
""" + _log("post") + """
%preun
""" + _log("preun") + """
%postun -p /bin/sutlog
%posttrans
""" + _log("posttrans") + """
%files
/usr/lib/sut
{movedfile}
"""

HELLO_SPEC = """\
Name: hello
Version: {v}
Release: 1
Summary: a program
License: MIT
BuildArch: noarch
Requires: libsut
%description
hello
%install
mkdir -p %{{buildroot}}/usr/bin %{{buildroot}}/etc %{{buildroot}}/usr/share/hello
mkdir -p %{{buildroot}}/var/lib/hello %{{buildroot}}/var/log %{{buildroot}}/usr/share/sut
echo 'echo hello {v}' > %{{buildroot}}/usr/bin/hello
ln -s hello %{{buildroot}}/usr/bin/hi
echo data{v} > %{{buildroot}}/usr/share/hello/a
ln %{{buildroot}}/usr/share/hello/a %{{buildroot}}/usr/share/hello/b
echo conf {v} > %{{buildroot}}/etc/hello.conf
echo plain {v} > %{{buildroot}}/etc/hello-plain.conf
echo same > %{{buildroot}}/etc/hello-same.conf
echo {v} > %{{buildroot}}/usr/share/hello/only-{v}
echo owned > %{{buildroot}}/usr/share/hello/owned
head -c 1500000 /dev/zero | tr '\\0' '{v}' > %{{buildroot}}/usr/share/hello/big
touch %{{buildroot}}/var/log/hello.log
{moved}
%pretrans
""" + _log("pretrans") + """
%pre
""" + _log("pre") + """
env | sort > /var/log/env-%{{version}}.txt
%post
""" + _log("post") + """
%preun
""" + _log("preun") + """
%postun
""" + _log("postun") + """
%posttrans
""" + _log("posttrans") + """
%triggerin -- libsut
""" + _log("triggerin-libsut") + """
%triggerun -- libsut
""" + _log("triggerun-libsut") + """
%triggerpostun -- libsut
""" + _log("triggerpostun-libsut") + """
%files
%caps(cap_net_raw=ep) %attr(0755,root,root) /usr/bin/hello
/usr/bin/hi
%config(noreplace) /etc/hello.conf
%config /etc/hello-plain.conf
%config(noreplace) /etc/hello-same.conf
%dir %attr(0750,sut,sut) /var/lib/hello
%ghost /var/log/hello.log
%attr(0640,sut,sut) /usr/share/hello/owned
/usr/share/hello/a
/usr/share/hello/b
/usr/share/hello/big
/usr/share/hello/only-{v}
{movedfile}
"""

def _fed(what: str) -> str:
    return 'echo "watch ' + what + ' $1 $2 $#" >> /var/log/sut.log; cat >> /var/log/sut.log'


WATCH_SPEC = """\
Name: watch
Version: 1
Release: 1
Summary: file triggers
License: MIT
BuildArch: noarch
%description
w
%filetriggerin -- /usr/lib/sut
""" + _fed("filetriggerin") + """
%filetriggerun -- /usr/share/hello
""" + _fed("filetriggerun") + """
%filetriggerpostun -- /usr/share/hello
""" + _fed("filetriggerpostun") + """
%transfiletriggerin -- /usr/share/hello /usr/lib/sut
""" + _fed("transfiletriggerin") + """
%transfiletriggerun -- /usr/share/hello
""" + _fed("transfiletriggerun") + """
%transfiletriggerpostun -- /usr/share/hello
""" + _fed("transfiletriggerpostun") + """
%filetriggerpostun -p /bin/sutlog -- /usr/share/hello/only
%files
"""

OTHER_SPEC = """\
Name: other
Version: 1
Release: 1
Summary: owns a file hello 1.1 ships
License: MIT
BuildArch: noarch
%description
other
%install
mkdir -p %{buildroot}/usr/share/hello
echo not-data > %{buildroot}/usr/share/hello/only-1.1
%files
/usr/share/hello/only-1.1
"""


def _spec(template: str, v: str, moved_in: str) -> str:
    moved = v == moved_in
    return template.format(
        v=v, moved=f"echo moved{v} > %{{buildroot}}/usr/share/sut/moved" if moved else "",
        movedfile="/usr/share/sut/moved" if moved else "")


@dataclass(frozen=True)
class Node:
    kind: str
    mode: int
    uid: int
    gid: int
    linkname: str
    size: int
    mtime: int


def scan(root: Path) -> dict[str, Node]:
    out: dict[str, Node] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            full = Path(dirpath) / name
            st = full.lstat()
            kind = DIR if stat.S_ISDIR(st.st_mode) else SYMLINK if stat.S_ISLNK(st.st_mode) \
                else FILE
            out[str(full.relative_to(root))] = Node(
                kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                os.readlink(full) if kind == SYMLINK else "", st.st_size, int(st.st_mtime))
    return out


def write_entries(root: Path, entries: list[Entry]) -> None:
    """Apply layer entries to a directory: whiteouts first, then the rest in order
    (hard links last)."""
    def clear(p: Path) -> None:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()

    for e in entries:
        parent, _, name = e.path.rpartition("/")
        if name.startswith(WHITEOUT_PREFIX):
            clear(root / parent / name[len(WHITEOUT_PREFIX):])
    for e in sorted((e for e in entries if not e.path.rpartition("/")[2].startswith(
            WHITEOUT_PREFIX)), key=lambda e: e.kind == HARDLINK):
        p = root / e.path
        if e.kind == DIR:
            p.mkdir(exist_ok=True)
        else:
            clear(p)
        if e.kind == FILE:
            data = e.data
            if callable(data):
                opener: Callable[[], IO[bytes]] = data
                with opener() as src, p.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                p.write_bytes(data or b"")
        elif e.kind == SYMLINK:
            os.symlink(e.linkname, p)
        elif e.kind == HARDLINK:
            os.link(root / e.linkname, p)
            continue
        os.chown(p, e.uid, e.gid, follow_symlinks=False)
        if e.kind != SYMLINK:
            os.chmod(p, e.mode)
        for k, v in e.xattrs.items():
            os.setxattr(p, k, v)
        if e.mtime is not None:
            os.utime(p, (e.mtime, e.mtime), follow_symlinks=False)


def run_jobs(root: Path, jobs: list[ScriptJob]) -> None:
    for job in jobs:
        for s in job.staged:
            assert s.data is not None
            (root / s.path).write_bytes(s.data)
            os.chmod(root / s.path, s.mode)
        env = {"HOME": str(root.parent), "LC_ALL": "C", **dict(job.env)}
        argv = [*job.interpreter, "/" + job.path, *job.args]
        subprocess.run(["chroot", str(root), *argv], env=env, check=True)
        for s in job.staged:
            (root / s.path).unlink()


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe(root: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for path, n in scan(root).items():
        if path.startswith("var/lib/rpm/") or path.startswith("var/tmp/"):
            continue
        full = root / path
        content = digest(full) if n.kind == FILE and path != LOG else n.linkname  # log: above
        try:
            caps = os.getxattr(full, "security.capability", follow_symlinks=False)
        except OSError:
            caps = b""
        # directories change as files come and go; the scripts' logs are written now
        mtime = n.mtime if n.kind != DIR and not path.startswith("var/log/") else None
        out[path] = (n.kind, n.mode, n.uid, n.gid, content, caps.hex(), mtime)
    return out


def qa(root: Path) -> list[str]:
    out = rpm_root(root, "-qa", "--qf", "%{NEVRA} [%{FILESTATES} ]\n").stdout
    return sorted(out.splitlines())


def _install_10(root: Path, sh: list[Path], old: list[Path]) -> None:
    root.mkdir()
    rpm_root(root, "-i", "--nodeps", *map(str, sh))
    rpm_root(root, "-i", *map(str, old))
    for name in ("hello.conf", "hello-plain.conf", "hello-same.conf"):
        (root / "etc" / name).write_text("mine\n")
        os.utime(root / "etc" / name, (1750000000, 1750000000))
    with (root / LOG).open("a") as fh:
        fh.write("--\n")


@dataclass
class Built:
    tmp: Path
    sh: list[Path]
    old: list[Path]
    new: list[Path]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    tmp = tmp_path_factory.mktemp("rpmapply")
    sh = build_rpm(SH_SPEC, tmp / "sh") + build_rpm(WATCH_SPEC, tmp / "sh")
    old = build_rpm(_spec(LIB_SPEC, "1.0", "1.0"), tmp / "p0") + \
        build_rpm(_spec(HELLO_SPEC, "1.0", "1.1"), tmp / "p0")
    new = build_rpm(_spec(LIB_SPEC, "1.1", "1.0"), tmp / "p1") + \
        build_rpm(_spec(HELLO_SPEC, "1.1", "1.1"), tmp / "p1")
    return Built(tmp, sh, old, new)


def _updates(root: Path, installed: list[InstalledPackage], new: list[Path]
             ) -> list[RpmUpdate]:
    by_name = {p.info.name: p for p in installed}
    out = []
    for path in new:
        archive = read_rpm(path, what=path.name)
        info = package_info(archive.header)
        obsoleted = tuple(p for p in installed for o in info.obsoletes
                          if dep_matches(o, Dep(p.info.name, SENSE_EQUAL, p.info.evr)))
        out.append(RpmUpdate(by_name.get(info.name), archive, obsoleted))
    return out


def _apply(root: Path, new: list[Path], work: Path, install_time: int = 1,
           tid: int = 1) -> tuple[list[InstalledPackage], ApplyResult]:
    installed = read_sqlite(root / DB)
    tree = scan(root)

    def read(path: str) -> bytes | None:
        p = root / path
        return p.read_bytes() if p.is_file() and not p.is_symlink() else None

    db_copy = work / "db-in.sqlite"
    work.mkdir(exist_ok=True)
    shutil.copyfile(root / DB, db_copy)
    result = apply_updates(installed, _updates(root, installed, new), tree=tree, read=read,
                           db_path=DB, db_file=db_copy, install_time=install_time, tid=tid,
                           workdir=work)
    return installed, result


def compare_upgrade(r1: Path, r2: Path, new: list[Path], work: Path) -> ApplyResult:
    """``rpm -U new`` on r1, apply_updates on r2; everything must agree."""
    proc = rpm_root(r1, "-U", *map(str, new))
    warnings = sorted(line for line in proc.stderr.splitlines() if line.startswith("warning:"))
    after = read_sqlite(r1 / DB)
    newest = max(after, key=lambda p: p.hnum).header
    install_time = newest.number(Tag.INSTALLTIME) or 0
    tid = newest.number(Tag.INSTALLTID) or 0
    _installed, res = _apply(r2, new, work, install_time, tid)
    write_entries(r2, res.entries)
    run_jobs(r2, res.jobs)
    if res.cleanup:
        res.cleanup()

    assert sorted(res.notes) == warnings
    def log(root: Path) -> list[str]:  # temporary script names are random
        return re.sub(r"/var/tmp/rpm-tmp\.[\w.()-]+", "TMP", (root / LOG).read_text()).splitlines()

    assert log(r2) == log(r1)
    t1, t2 = describe(r1), describe(r2)
    assert sorted(t2) == sorted(t1)
    assert {k: (t1[k], v) for k, v in t2.items() if t1[k] != v} == {}
    assert qa(r2) == qa(r1)
    blobs1 = {p.info.nevra: p.header for p in after}
    blobs2 = {p.info.nevra: p.header for p in read_sqlite(r2 / DB)}
    assert sorted(blobs1) == sorted(blobs2)
    exact = 0
    for nevra, h1 in blobs1.items():
        h2 = blobs2[nevra]
        assert h2.tags == h1.tags, nevra
        for tag in h1.tags:
            if tag not in (Tag.INSTALLTIME, Tag.INSTALLTID):
                assert h2.raw(tag) == h1.raw(tag), (nevra, tag)
        if all(h1.raw(t) == h2.raw(t) for t in (Tag.INSTALLTIME, Tag.INSTALLTID)):
            assert h2.blob == h1.blob, nevra
            exact += 1
        else:
            assert len(h2.blob) == len(h1.blob), nevra
    assert exact >= 1  # at least the last package the transaction added
    return res


def test_upgrade_matches_rpm(built: Built) -> None:
    r1, r2 = built.tmp / "r1", built.tmp / "r2"
    for r in (r1, r2):
        _install_10(r, built.sh, built.old)
    res = compare_upgrade(r1, r2, built.new, built.tmp / "work")
    assert len(res.notes) == 2  # the .rpmnew and the .rpmsave
    assert any(e.path == "usr/share/hello/.wh.only-1.0" for e in res.entries)
    assert any(callable(e.data) for e in res.entries if e.path == "usr/share/hello/big")


def _erase_spec(name: str, v: str, extra: str = "", owner: str = "root") -> str:
    return f"""\
Name: {name}
Version: {v}
Release: 1
Summary: {name}
License: MIT
BuildArch: noarch
{extra}
%description
{name}
%install
mkdir -p %{{buildroot}}/etc %{{buildroot}}/usr/share/{name}/sub
echo {name} {v} > %{{buildroot}}/etc/{name}.conf
echo {name} {v} > %{{buildroot}}/etc/{name}-kept.conf
echo {v} > %{{buildroot}}/usr/share/{name}/sub/f
echo {v} > %{{buildroot}}/usr/share/{name}/owned
mkdir -p %{{buildroot}}/usr/lib/{name}-x/deep
echo {v} > %{{buildroot}}/usr/lib/{name}-x/deep/f
%pre
{_log("pre").replace("{{", "{").replace("}}", "}")}
%preun
{_log("preun").replace("{{", "{").replace("}}", "}")}
%postun
{_log("postun").replace("{{", "{").replace("}}", "}")}
%files
%config /etc/{name}.conf
%config(noreplace) /etc/{name}-kept.conf
%attr(0600,{owner},{owner}) /usr/share/{name}/owned
%dir /usr/share/{name}
/usr/share/{name}/sub
/usr/lib/{name}-x/deep/f
"""


def test_obsoletes_and_independent_upgrades(built: Built) -> None:
    """An obsoleting rename (its modified %config saved as .rpmsave on erase, its
    directories removed) and an unrelated upgrade in one transaction."""
    tmp = built.tmp / "obs"
    old = build_rpm(_erase_spec("oldname", "1.0"), tmp / "p0") + \
        build_rpm(_erase_spec("solo", "1.0"), tmp / "p0")
    new = build_rpm(_erase_spec("newname", "1.1", "Obsoletes: oldname < 1.1"), tmp / "p1") + \
        build_rpm(_erase_spec("solo", "1.1", owner="nosuchuser"), tmp / "p1")
    r1, r2 = tmp / "r1", tmp / "r2"
    for r in (r1, r2):
        r.mkdir(parents=True)
        rpm_root(r, "-i", "--nodeps", *map(str, built.sh))
        rpm_root(r, "-i", *map(str, old))
        for name in ("oldname.conf", "solo-kept.conf"):
            (r / "etc" / name).write_text("mine\n")
            os.utime(r / "etc" / name, (1750000000, 1750000000))
    res = compare_upgrade(r1, r2, new, tmp / "work")
    assert any(n.endswith("oldname.conf.rpmsave") for n in res.notes)
    assert "warning: user nosuchuser does not exist - using root" in res.notes


@pytest.mark.parametrize("content", ["not-data", "1.1"])
def test_file_of_a_staying_package(built: Built, content: str) -> None:
    """Another package's file with other contents is refused, as rpm refuses it; with
    the same contents it is shared."""
    root = built.tmp / f"r3-{content}"
    _install_10(root, built.sh, built.old)
    other = build_rpm(OTHER_SPEC.replace("not-data", content), built.tmp / f"other-{content}")
    rpm_root(root, "-i", *map(str, other))
    refused = rpm_root(root, "-U", "--test", *map(str, built.new), check=False).returncode != 0
    work = built.tmp / f"work3-{content}"
    if refused:
        with pytest.raises(FileConflictError):
            _apply(root, built.new, work)
    else:
        _installed, res = _apply(root, built.new, work)
        assert any(e.path == "usr/share/hello/only-1.1" for e in res.entries)
    assert refused == (content != "1.1")


@pytest.mark.parametrize("text", ["cap_net_raw=ep", "cap_net_admin,cap_sys_time+ip",
                                  "cap_chown,cap_kill=eip", "cap_chown+p cap_kill+p",
                                  "cap_setfcap,cap_bpf=p"])
def test_caps_as_setcap_writes(tmp_path: Path, text: str) -> None:
    setcap = shutil.which("setcap")
    if setcap is None:
        pytest.skip("setcap missing")
    f = tmp_path / "f"
    f.write_bytes(b"")
    subprocess.run([setcap, text, str(f)], check=True)
    assert capability_xattr(text) == os.getxattr(f, "security.capability")


def test_wal_emptied_and_spool_cleaned(built: Built) -> None:
    """A non-empty ``-wal`` in the image gets an empty one in the layer (the written
    database is checkpointed); ``-shm`` is left alone; cleanup removes the spool."""
    root = built.tmp / "r4"
    _install_10(root, built.sh, built.old)
    installed = read_sqlite(root / DB)
    tree = scan(root)
    tree[DB + "-wal"] = Node(FILE, 0o644, 0, 0, "", 4096, 0)
    tree[DB + "-shm"] = Node(FILE, 0o644, 0, 0, "", 32768, 0)
    work = built.tmp / "work4"
    work.mkdir()
    db_copy = work / "in.sqlite"
    shutil.copyfile(root / DB, db_copy)

    def read(path: str) -> bytes | None:
        p = root / path
        return p.read_bytes() if p.is_file() and not p.is_symlink() else None

    res = apply_updates(installed, _updates(root, installed, built.new), tree=tree, read=read,
                        db_path=DB, db_file=db_copy, install_time=5, tid=6, workdir=work)
    by_path = {e.path: e for e in res.entries}
    assert by_path[DB + "-wal"].data == b""
    assert DB + "-shm" not in by_path
    assert callable(by_path[DB].data)
    spooled = [e for e in res.entries if callable(e.data) and e.path != DB]
    assert spooled
    assert res.cleanup is not None
    res.cleanup()
    assert [p for p in work.rglob("*") if p.is_file() and p != db_copy] == []


LUA_SPEC = """\
Name: luapkg
Version: 1
Release: 1
Summary: a Lua scriptlet
License: MIT
BuildArch: noarch
%description
lua
%post -p <lua>
print("hi")
%postun -p /bin/sutlog
%files
"""


def test_lua_and_program_scriptlets(built: Built) -> None:
    """``-p <lua>``: the body staged, interpreter ``<lua>``; ``-p prog`` without a body:
    the program itself, no arguments, nothing staged."""
    root = built.tmp / "r5"
    _install_10(root, built.sh, built.old)
    pkgs = build_rpm(LUA_SPEC, built.tmp / "lua")
    _installed, res = _apply(root, pkgs, built.tmp / "work5")
    post = next(j for j in res.jobs if j.script == "%post")
    assert post.interpreter == ("<lua>",)
    assert post.args == ("1",)
    assert [s.data for s in post.staged] == [b'print("hi")']
    assert post.staged[0].path == post.path
    assert not [j for j in res.jobs if j.script == "%postun"]  # nothing is erased


def test_unrelated_packages_in_rpms_order(built: Built) -> None:
    """Packages without dependencies between them: rpm's order, whatever it is."""
    tmp = built.tmp / "unrelated"
    names = ["delta", "alpha", "charlie"]
    old = [p for n in names for p in build_rpm(_erase_spec(n, "1.0"), tmp / "p0")]
    new = {n: build_rpm(_erase_spec(n, "1.1"), tmp / "p1") for n in names}
    r1, r2 = tmp / "r1", tmp / "r2"
    for r in (r1, r2):
        r.mkdir(parents=True)
        rpm_root(r, "-i", "--nodeps", *map(str, built.sh))
        rpm_root(r, "-i", *map(str, old))
    compare_upgrade(r1, r2, [p for n in ("charlie", "alpha", "delta")
                             for p in new[n]], tmp / "work")
