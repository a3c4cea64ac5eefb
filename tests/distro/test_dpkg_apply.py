"""Applying package updates as one layer, checked against the real dpkg.

Each scenario builds tiny packages with ``dpkg-deb``, installs the old versions
into a root with the real ``dpkg --root``, copies that root, and then:

* upgrades the first copy with ``dpkg --force-confold -i`` (the oracle);
* applies :func:`apply_updates` to the second copy: reads its database and
  tree, writes the layer's entries onto it (whiteouts delete), and runs the
  jobs in order as its script sequence gives them (old scripts and the control
  area staged while each job runs, as suture's runner stages them).

The two trees must then be the same, file by file (kind, mode, owner, content,
link target, and package files' mtimes), the dpkg database byte for byte, and
the maintainer scripts' log line for line. Left out of the comparison, because
they are dpkg's run-time state and not the database: ``status-old``,
``lock``, ``lock-frontend``, ``updates/``, ``triggers/Lock`` and
``triggers/Unincorp``; and directory mtimes (dpkg touches them as it works).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from suture.distro.dpkg.apply import (
    DpkgApplyResult,
    FileConflictError,
    Node,
    apply_updates,
    conffile_paths,
    database_paths,
)
from suture.distro.dpkg.control import InstalledPackage, parse_md5sums, parse_status
from suture.distro.dpkg.triggers import parse_triggers
from suture.distro.dpkg.version import compare_versions
from suture.distro.scripts import ScriptJob
from suture.errors import PackageDBError, UsageError
from suture.oci.layer import DIR, FILE, HARDLINK, OPAQUE, SYMLINK, WHITEOUT_PREFIX, Entry
from suture.patch.scripts import drive
from tests.fixtures.debs import (
    Dir,
    DpkgRoot,
    File,
    Hardlink,
    Symlink,
    build_deb,
    logging_script,
    require_dpkg,
)

IGNORED = {"var/lib/dpkg/status-old", "var/lib/dpkg/lock", "var/lib/dpkg/lock-frontend",
           "var/lib/dpkg/triggers/Lock", "var/lib/dpkg/triggers/Unincorp"}
IGNORED_PREFIXES = ("var/lib/dpkg/updates/",)
ADMIN = "var/lib/dpkg/"


@pytest.fixture(autouse=True)
def _dpkg() -> None:
    require_dpkg()


# --------------------------------------------------------------------------- the image side


def tree_of(root: Path) -> dict[str, Node]:
    """Every path under ``root`` (root-relative) with its kind and symlink target."""
    tree: dict[str, Node] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                kind, link = SYMLINK, os.readlink(full)
            elif stat.S_ISDIR(st.st_mode):
                kind, link = DIR, ""
            elif stat.S_ISREG(st.st_mode):
                kind, link = FILE, ""
            else:
                kind, link = "char" if stat.S_ISCHR(st.st_mode) else "fifo", ""
            tree[rel] = Node(kind, link, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid,
                             gid=st.st_gid, mtime=int(st.st_mtime))
    return tree


def read_inside(root: Path, rel: str) -> bytes | None:
    """A file of the root, following symlinks inside it (as the merged view would)."""
    path = root / rel
    try:
        real = path.resolve()
        real.relative_to(root.resolve())
    except (OSError, ValueError):
        return None
    return real.read_bytes() if real.is_file() else None


def read_database(root: Path) -> dict[str, bytes]:
    paths, prefixes = database_paths()
    files: dict[str, bytes] = {}
    for rel in paths:
        data = read_inside(root, rel)
        if data is not None:
            files[rel] = data
    for prefix in prefixes:
        base = root / prefix
        if base.is_dir():
            for child in sorted(base.iterdir()):
                if child.is_file():
                    files[prefix + child.name] = child.read_bytes()
    return files


def installed(root: Path, name: str, arch: str | None = None) -> InstalledPackage:
    for pkg in parse_status((root / "var/lib/dpkg/status").read_bytes()):
        if pkg.name == name and (arch is None or pkg.architecture == arch):
            return pkg
    raise KeyError(name)


def apply_to(root: Path, updates: Sequence[tuple[str | None, Path]]) -> DpkgApplyResult:
    """Run :func:`apply_updates` against ``root`` (``None``: a new package)."""
    files = read_database(root)
    pairs = [(installed(root, name) if name else None, deb) for name, deb in updates]
    wanted = conffile_paths(files, pairs)
    conffiles = {p: read_inside(root, p) for p in wanted}
    return apply_updates(files, pairs, conffiles=conffiles, tree=tree_of(root))


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def write_entry(root: Path, entry: Entry) -> None:
    path = root / entry.path
    if path.is_symlink() or (path.exists() and (entry.kind != DIR) != (not path.is_dir())):
        remove(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if entry.kind == DIR:
        path.mkdir(exist_ok=True)
    elif entry.kind == SYMLINK:
        remove(path)
        os.symlink(entry.linkname, path)
    elif entry.kind == HARDLINK:
        remove(path)
        os.link(root / entry.linkname, path)
    elif entry.kind == FILE:
        data = entry.data if isinstance(entry.data, bytes) else b""
        if path.exists():
            path.unlink()
        path.write_bytes(data)
    else:
        raise AssertionError(entry.kind)
    if entry.kind != SYMLINK:
        os.chown(path, entry.uid, entry.gid)
        path.chmod(entry.mode)
        if entry.mtime is not None:
            os.utime(path, (entry.mtime, entry.mtime))
    else:
        os.lchown(path, entry.uid, entry.gid)


def write_layer(root: Path, entries: Sequence[Entry]) -> None:
    """Put a layer's entries onto a directory, as a container runtime's apply would."""
    for entry in entries:
        name = entry.path.rpartition("/")[2]
        if name == OPAQUE:
            raise AssertionError("no opaque directories expected")
        if name.startswith(WHITEOUT_PREFIX):
            parent = entry.path.rpartition("/")[0]
            remove(root / parent / name[len(WHITEOUT_PREFIX):])
    for entry in sorted(entries, key=lambda e: (e.kind == HARDLINK, e.path.split("/"))):
        if not entry.path.rpartition("/")[2].startswith(WHITEOUT_PREFIX):
            write_entry(root, entry)


def replay(root: Path, result: DpkgApplyResult, run: Callable[[ScriptJob], None]) -> list[str]:
    """Drive ``result``'s script sequence over ``root`` with suture's own driver (each
    job's files staged while ``run`` runs it); the jobs' descriptions."""
    ran: list[str] = []
    sequence = result.sequence
    if sequence is None:
        assert result.jobs == []
        return ran

    def logged(job: ScriptJob) -> None:
        run(job)
        ran.append(job.describe())

    drive(sequence, root, root.parent / f"{root.name}-staged", logged)
    return ran


def run_jobs(root: Path, result: DpkgApplyResult) -> None:
    """Run the jobs in order on the host (the scripts only log)."""
    def run(job: ScriptJob) -> None:
        env = {**os.environ, **dict(job.env), "DPKG_ROOT": str(root)}
        subprocess.run(["/bin/sh", str(root / job.path), *job.args], env=env, check=True)

    assert replay(root, result, run) == [job.describe() for job in result.jobs]


# --------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Seen:
    kind: str
    mode: int
    uid: int
    gid: int
    content: bytes | str | None
    mtime: int | None


def snapshot(root: Path) -> dict[str, Seen]:
    out: dict[str, Seen] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if rel in IGNORED or rel.startswith(IGNORED_PREFIXES):
                continue
            st = full.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = Seen("symlink", 0, st.st_uid, st.st_gid, os.readlink(full), None)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = Seen("dir", mode, st.st_uid, st.st_gid, None, None)
            elif not stat.S_ISREG(st.st_mode):  # device nodes, fifos: never read them
                out[rel] = Seen(f"special {stat.S_IFMT(st.st_mode):o} {st.st_rdev}", mode,
                                st.st_uid, st.st_gid, None, None)
            else:
                mtime = None if rel.startswith(ADMIN) else int(st.st_mtime)
                data = full.read_bytes()
                if len(data) > 1 << 16:  # big files by digest (real images are large)
                    data = hashlib.sha256(data).hexdigest().encode()
                out[rel] = Seen("file", mode, st.st_uid, st.st_gid, data, mtime)
    return out


def assert_same_tree(expected: Path, actual: Path, *, mtimes: Callable[[str], bool] = bool,
                     contents: Callable[[str], bool] = bool) -> None:
    """The trees hold the same paths, alike in all but what ``mtimes``/``contents`` exclude.

    ``mtimes(path)``/``contents(path)`` say whether to compare that path's mtime
    and content (default: every path).
    """
    want, got = snapshot(expected), snapshot(actual)
    assert sorted(set(want) - set(got)) == [], "missing from ours"
    assert sorted(set(got) - set(want)) == [], "extra in ours"
    for path in sorted(want):
        w, g = want[path], got[path]
        if not mtimes(path):
            w, g = replace(w, mtime=None), replace(g, mtime=None)
        if not contents(path):
            w, g = replace(w, content=None), replace(g, content=None)
        if w != g:
            detail = ""
            if isinstance(w.content, bytes) and isinstance(g.content, bytes):
                detail = f"\n--- dpkg\n{w.content.decode(errors='replace')}\n--- ours\n" \
                         f"{g.content.decode(errors='replace')}"
            raise AssertionError(f"{path}: dpkg {w!r:.300}\n ours {g!r:.300}{detail}")


@dataclass
class Oracle:
    """An installed root and its copy, the log both runs write to, and the packages."""

    tmp: Path
    real: DpkgRoot
    ours: DpkgRoot
    log_real: Path
    log_ours: Path

    def upgrade(self, debs: Sequence[Path], *extra: str) -> str:
        self.log_real.write_text("")
        proc = self.real.dpkg("--force-confold", *extra, "-i", *debs)
        return proc.stdout.decode()

    def apply(self, updates: Sequence[tuple[str | None, Path]]) -> DpkgApplyResult:
        result = apply_to(self.ours.path, updates)
        write_layer(self.ours.path, result.entries)
        # The scripts log to the real root's log path: point them at ours.
        self.log_real.rename(self.log_real.with_suffix(".keep"))
        try:
            run_jobs(self.ours.path, result)
            if self.log_real.exists():
                self.log_real.rename(self.log_ours)
            else:
                self.log_ours.write_text("")
        finally:
            self.log_real.with_suffix(".keep").rename(self.log_real)
        return result

    def compare(self) -> None:
        assert_same_tree(self.real.path, self.ours.path)
        assert self.log_ours.read_text().splitlines() == self.log_real.read_text().splitlines()


def make_oracle(tmp: Path, base: Sequence[Path], prepare: object = None) -> Oracle:
    real = DpkgRoot.create(tmp / "real")
    if base:
        real.dpkg("-i", *base)
    if callable(prepare):
        prepare(real.path)
    ours = real.copy(tmp / "ours")
    return Oracle(tmp, real, ours, tmp / "scripts.log", tmp / "scripts-ours.log")


# --------------------------------------------------------------------------- the main scenario


def conf(text: str) -> bytes:
    return text.encode() + b"\n"


def scripts(log: Path, label: str, names: Sequence[str]) -> dict[str, str]:
    return {n: logging_script(log, f"{label} {n}") for n in names}


@dataclass
class Main:
    oracle: Oracle
    foo2: Path
    libx2: Path
    intr2: Path
    qux: Path


def build_main(tmp: Path) -> Main:
    pkgs = tmp / "debs"
    log = tmp / "scripts.log"
    all_scripts = ("preinst", "postinst", "prerm", "postrm")
    foo_common: dict[str, bytes | File | Symlink | Dir] = {
        "usr/share/foo/keep.txt": b"keep\n",
        "usr/share/foo/link": Symlink("keep.txt"),
        "usr/share/doc/foo/copyright": b"(c)\n",
        "etc/foo/a.conf": conf("a1"),
        "etc/foo/same.conf": conf("same"),
    }
    foo1 = build_deb(pkgs, "foo", "1.0-1", files={
        **foo_common,
        "usr/bin/foo": File(b"bin1\n", 0o755),
        "usr/share/foo/old.txt": b"old\n",
        "usr/share/foo/olddir/f": b"in olddir\n",
        "usr/share/shared/foo1.txt": b"foo1\n",
        "usr/lib/foo/x.so": b"so1\n",
        "etc/foo/b.conf": conf("b1"),
        "etc/foo/upd.conf": conf("upd1"),
        "etc/foo/gone.conf": conf("gone"),
        "etc/foo/gone2.conf": conf("gone2"),
        "etc/foo/del.conf": conf("del1"),
        "etc/foo/delsame.conf": conf("delsame"),
        "etc/foo/rou.conf": conf("rou"),
        "etc/foo/roum.conf": conf("roum"),
    }, conffiles=["/etc/foo/a.conf", "/etc/foo/gone2.conf", "/etc/foo/b.conf",
                  "/etc/foo/same.conf", "/etc/foo/upd.conf", "/etc/foo/gone.conf",
                  "/etc/foo/del.conf", "/etc/foo/delsame.conf", "/etc/foo/rou.conf",
                  "/etc/foo/roum.conf"],
        depends="bar", scripts=scripts(log, "foo1", all_scripts),
        fields={"Essential": "no", "Homepage": "https://foo.test", "Multi-Arch": "no"},
        control_files={"shlibs": b"libfoo 1 foo\n"})
    foo2 = build_deb(pkgs, "foo", "2.0-1", files={
        **foo_common,
        "etc/foo/same.conf": File(conf("same"), mtime=1710000000),
        "usr/bin/foo": File(b"bin2\n", 0o755),
        "usr/share/foo/new.txt": b"new\n",
        "usr/share/foo/newdir": Dir(),
        "usr/lib/foo/x.so": b"so2\n",
        "etc/foo/b.conf": conf("b2"),
        "etc/foo/upd.conf": conf("upd2"),
        "etc/foo/c.conf": conf("c2"),
        "etc/foo/pre.conf": conf("pre2"),
        "etc/foo/del.conf": conf("del2"),
        "etc/foo/delsame.conf": conf("delsame"),
    }, conffiles=["/etc/foo/c.conf", "/etc/foo/a.conf", "/etc/foo/b.conf",
                  "/etc/foo/same.conf", "/etc/foo/upd.conf", "/etc/foo/pre.conf",
                  "/etc/foo/del.conf", "/etc/foo/delsame.conf",
                  "remove-on-upgrade /etc/foo/rou.conf", "remove-on-upgrade /etc/foo/roum.conf"],
        depends="bar, libx (>= 2)", scripts=scripts(log, "foo2", ("postinst", "prerm", "postrm")),
        triggers="activate-noawait ldconfig\n",
        fields={"Essential": "no", "Homepage": "https://foo.test", "Multi-Arch": "no",
                "Pre-Depends": "libc-bin"},
        control_files={"symbols": b"libfoo.so.1 foo #MINVER#\n"})
    bar = build_deb(pkgs, "bar", "1", arch="all", files={
        "usr/share/shared/bar.txt": b"bar\n"},
        scripts=scripts(log, "bar", ("postinst",)), triggers="interest /usr/lib/foo\n",
        md5sums=False)
    libc_bin = build_deb(pkgs, "libc-bin", "2.36-9", files={"usr/sbin/ldconfig": File(b"x", 0o755)},
                         scripts=scripts(log, "libc-bin", ("postinst",)),
                         triggers="interest-noawait ldconfig\n")
    watcher = build_deb(pkgs, "watcher", "1", files={"usr/share/watcher/w": b"w\n"},
                        scripts=scripts(log, "watcher", ("postinst",)),
                        triggers="# watched\ninterest /usr/share/foo/newdir\n"
                                 "interest-noawait /etc/foo\ninterest /usr/share/foo/olddir\n"
                                 "interest-await /usr/bin\n")
    libdir = "usr/lib/x86_64-linux-gnu"
    libx1 = build_deb(pkgs, "libx", "1", files={f"{libdir}/libx.so.1": b"l1\n"},
                      scripts=scripts(log, "libx1", ("postinst", "prerm")),
                      triggers="activate-noawait ldconfig\n", fields={"Multi-Arch": "same"})
    libx2 = build_deb(pkgs, "libx", "2", files={f"{libdir}/libx.so.1": b"l2\n",
                                                 f"{libdir}/libx.so.2": b"l2\n"},
                      scripts=scripts(log, "libx2", ("postinst", "preinst")),
                      triggers="activate-noawait ldconfig\n", fields={"Multi-Arch": "same"})
    intr1 = build_deb(pkgs, "intr", "1", files={"usr/share/intr/i": b"1\n"},
                      scripts=scripts(log, "intr1", ("postinst",)),
                      triggers="interest /usr/lib/foo\ninterest intr-trigger\n")
    intr2 = build_deb(pkgs, "intr", "2", files={"usr/share/intr/i": b"2\n"},
                      scripts=scripts(log, "intr2", ("postinst",)),
                      triggers="interest-noawait /usr/lib/foo\ninterest-noawait intr-other\n")
    qux = build_deb(pkgs, "qux", "0:1.5", files={"etc/qux.conf": conf("qux"),
                                                 "usr/share/qux/q": b"q\n"},
                    conffiles=["/etc/qux.conf"], md5sums=False,
                    scripts=scripts(log, "qux", ("preinst", "postinst")),
                    triggers="activate intr-other\n")

    def prepare(root: Path) -> None:
        (root / "etc/foo/a.conf").write_bytes(b"user a\n")
        (root / "etc/foo/b.conf").write_bytes(b"user b\n")
        (root / "etc/foo/pre.conf").write_bytes(b"user pre\n")
        (root / "etc/foo/roum.conf").write_bytes(b"user roum\n")
        (root / "etc/foo/del.conf").unlink()
        (root / "etc/foo/delsame.conf").unlink()

    oracle = make_oracle(tmp, [libc_bin, bar, watcher, libx1, intr1, foo1], prepare)
    return Main(oracle, foo2, libx2, intr2, qux)


def test_upgrade_matches_dpkg(tmp_path: Path) -> None:
    main = build_main(tmp_path)
    main.oracle.upgrade([main.foo2, main.intr2, main.libx2, main.qux])
    result = main.oracle.apply([("foo", main.foo2), ("intr", main.intr2), ("libx", main.libx2),
                                (None, main.qux)])
    main.oracle.compare()
    assert "/etc/foo/b.conf" in result.kept_conffiles
    assert [p.version for p in result.packages] == ["2.0-1", "2", "2", "1.5"]
    log = main.oracle.log_real.read_text()
    assert "foo1 prerm upgrade 2.0-1" in log and "libc-bin postinst triggered ldconfig" in log
    ours = main.oracle.ours.path
    assert not (ours / "usr/share/foo/olddir").exists()
    assert (ours / "usr/share/shared/bar.txt").exists()
    assert not (ours / "usr/share/shared/foo1.txt").exists()
    assert (ours / "etc/foo/b.conf").read_bytes() == b"user b\n"
    assert (ours / "etc/foo/b.conf.dpkg-dist").read_bytes() == conf("b2")
    assert not (ours / "var/lib/dpkg/info/foo.preinst").exists()


def test_jobs_are_in_dpkgs_order(tmp_path: Path) -> None:
    main = build_main(tmp_path)
    result = apply_to(main.oracle.ours.path, [("foo", main.foo2), ("intr", main.intr2),
                                               ("libx", main.libx2), (None, main.qux)])
    assert [job.describe() for job in result.jobs] == [
        "foo prerm upgrade 2.0-1",
        "foo postrm upgrade 2.0-1",
        "libx:amd64 prerm upgrade 2",
        "libx:amd64 preinst upgrade 1 2",
        "qux preinst install",
        "intr postinst configure 1",
        "libx:amd64 postinst configure 1",
        "qux postinst configure",
        "foo postinst configure 1.0-1",  # deferred: it depends on libx (>= 2)
        "libc-bin triggered ldconfig",
        "watcher triggered /usr/share/foo/olddir /usr/share/foo/newdir /usr/bin /etc/foo",
        "intr triggered intr-other",
        "bar triggered /usr/lib/foo",
    ]
    # The old prerm runs from info/ as dpkg has it before unpacking: the old scripts
    # there, none of the new version's files; the new preinst from the control area.
    prerm = result.jobs[0]
    staged = {s.path: s.data for s in prerm.staged}
    assert prerm.path == "var/lib/dpkg/info/foo.prerm"
    old_prerm = (main.oracle.ours.path / prerm.path).read_bytes()
    assert staged[prerm.path] == old_prerm
    preinst = result.jobs[3]
    assert preinst.path == "var/lib/dpkg/tmp.ci/preinst"
    staged = {s.path: s.data for s in preinst.staged}
    assert staged["var/lib/dpkg/tmp.ci/control"] is not None
    assert b"Version: 2" in staged["var/lib/dpkg/tmp.ci/control"]
    assert staged["var/lib/dpkg/tmp.ci/preinst"] is not None
    paths = {e.path for e in result.entries}
    for job in result.jobs:
        assert job.path in paths or job.path in {s.path for s in job.staged} or \
            (main.oracle.ours.path / job.path).exists()
    assert dict(result.jobs[3].env)["DPKG_MAINTSCRIPT_NAME"] == "preinst"
    assert dict(result.jobs[3].env)["DPKG_MAINTSCRIPT_ARCH"] == "amd64"


# --------------------------------------------------------------------------- other scenarios


def test_merged_usr_symlinked_directories(tmp_path: Path) -> None:
    pkgs = tmp_path / "debs"
    mu1 = build_deb(pkgs, "mu", "1", files={
        "lib/aliased/x.so": b"x1\n", "lib/aliased/y.so": b"y1\n", "usr/lib/z": b"z\n",
        "lib/gone/g": b"g\n", "bin/tool": File(b"t1\n", 0o755)})
    mu2 = build_deb(pkgs, "mu", "2", files={
        "usr/lib/aliased/x.so": b"x2\n", "lib/aliased/y.so": b"y2\n", "usr/lib/z": b"z\n",
        "usr/bin/tool": File(b"t2\n", 0o755), "lib/new/n": b"n\n"})

    def merged_usr(root: Path) -> None:
        pass

    real = DpkgRoot.create(tmp_path / "real")
    for d in ("lib", "bin"):
        (real.path / "usr" / d).mkdir(parents=True)
        os.symlink(f"usr/{d}", real.path / d)
    real.dpkg("-i", mu1)
    ours = real.copy(tmp_path / "ours")
    oracle = Oracle(tmp_path, real, ours, tmp_path / "scripts.log", tmp_path / "s-ours.log")
    oracle.upgrade([mu2])
    result = oracle.apply([("mu", mu2)])
    oracle.compare()
    paths = {e.path for e in result.entries}
    # Written through the symlinks, never over them.
    assert "usr/lib/aliased/y.so" in paths and "lib" not in paths and "lib/aliased" not in paths
    assert "usr/lib/new" in paths and "usr/lib/new/n" in paths
    assert "usr/lib/gone/.wh.g" not in paths and "usr/lib/.wh.gone" in paths
    assert (ours.path / "lib").is_symlink()
    # dpkg unlinks /bin (a symlink) once no package lists it: so do we.
    assert ".wh.bin" in paths and not (ours.path / "bin").exists()
    assert (ours.path / "usr/lib/aliased/x.so").read_bytes() == b"x2\n"


def test_diversions_and_statoverrides(tmp_path: Path) -> None:
    pkgs = tmp_path / "debs"
    tool1 = build_deb(pkgs, "tool", "1", files={
        "usr/bin/tool": File(b"tool1\n", 0o755), "usr/bin/other": File(b"o1\n", 0o755),
        "usr/bin/gone": b"g\n", "usr/sbin/suid": File(b"s1\n", 0o755)})
    tool2 = build_deb(pkgs, "tool", "2", files={
        "usr/bin/tool": File(b"tool2\n", 0o755), "usr/bin/other": File(b"o2\n", 0o755),
        "usr/sbin/suid": File(b"s2\n", 0o755)})
    div = build_deb(pkgs, "div", "1", files={"usr/bin/tool": File(b"div wrapper\n", 0o755)})

    def divert(root: Path) -> None:
        for args in (["--package", "div", "--divert", "/usr/bin/tool.real", "--rename",
                      "/usr/bin/tool"],
                     ["--local", "--divert", "/usr/bin/other.local", "--rename",
                      "/usr/bin/other"],
                     ["--local", "--divert", "/usr/bin/gone.local", "--rename", "/usr/bin/gone"]):
            subprocess.run(["dpkg-divert", f"--root={root}", "--quiet", "--add", *args],
                           check=True)
        subprocess.run(["dpkg-statoverride", f"--root={root}", "--add", "#1234", "#2345",
                        "4750", "/usr/sbin/suid"], check=True)

    oracle = make_oracle(tmp_path, [tool1], divert)
    # The diverter is installed after the diversion, as its preinst would have made it.
    oracle.real.dpkg("-i", div)
    oracle.ours.dpkg("-i", div)
    oracle.upgrade([tool2])
    result = oracle.apply([("tool", tool2)])
    oracle.compare()
    ours = oracle.ours.path
    assert (ours / "usr/bin/tool.real").read_bytes() == b"tool2\n"
    assert (ours / "usr/bin/other.local").read_bytes() == b"o2\n"
    st = (ours / "usr/sbin/suid").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 2345, 0o4750)
    assert "usr/bin/.wh.gone.local" in {e.path for e in result.entries}


def test_replaces_takes_files_over(tmp_path: Path) -> None:
    pkgs = tmp_path / "debs"
    base = build_deb(pkgs, "base-a", "1", files={"usr/share/move/f": b"from base\n",
                                                 "usr/share/move/stay": b"stay\n"})
    mover1 = build_deb(pkgs, "mover", "1", files={"usr/share/mover/m": b"1\n"})
    mover2 = build_deb(pkgs, "mover", "2", files={"usr/share/mover/m": b"2\n",
                                                  "usr/share/move/f": b"from mover\n"},
                       fields={"Replaces": "base-a (<< 2)"})
    oracle = make_oracle(tmp_path, [base, mover1])
    oracle.upgrade([mover2])
    oracle.apply([("mover", mover2)])
    oracle.compare()


def test_file_of_another_package_without_replaces_is_refused(tmp_path: Path) -> None:
    pkgs = tmp_path / "debs"
    base = build_deb(pkgs, "base-a", "1", files={"usr/share/move/f": b"from base\n"})
    mover1 = build_deb(pkgs, "mover", "1", files={"usr/share/mover/m": b"1\n"})
    mover2 = build_deb(pkgs, "mover", "2", files={"usr/share/move/f": b"from mover\n"})
    oracle = make_oracle(tmp_path, [base, mover1])
    proc = oracle.real.dpkg("-i", mover2, check=False)
    assert proc.returncode != 0 and b"trying to overwrite" in proc.stderr
    with pytest.raises(FileConflictError) as info:
        apply_to(oracle.ours.path, [("mover", mover2)])
    assert info.value.path == "usr/share/move/f" and info.value.owner == "base-a"


def test_layout_switch_config_files_and_kept_directories(tmp_path: Path) -> None:
    pkgs = tmp_path / "debs"
    log = tmp_path / "scripts.log"
    libm1 = build_deb(pkgs, "libm", "1", files={"usr/lib/libm.so.1": b"1\n"},
                      scripts=scripts(log, "libm1", ("postinst", "postrm")),
                      fields={"Multi-Arch": "same"})
    libm2 = build_deb(pkgs, "libm", "2", files={"usr/lib/libm.so.1": b"2\n"},
                      scripts=scripts(log, "libm2", ("postinst",)))
    cfg1 = build_deb(pkgs, "cfg", "1", files={"etc/cfg.conf": conf("c1"), "usr/share/cfg/x": b"x"},
                     conffiles=["/etc/cfg.conf"], scripts=scripts(log, "cfg1", ("postrm",)))
    cfg2 = build_deb(pkgs, "cfg", "2", files={"etc/cfg.conf": conf("c2"), "usr/share/cfg/x": b"x"},
                     conffiles=["/etc/cfg.conf"],
                     scripts=scripts(log, "cfg2", ("preinst", "postinst")))
    ud1 = build_deb(pkgs, "ud", "1", files={"usr/share/ud/file": b"1\n",
                                            "usr/share/ud2/sub/file": b"1\n"})
    ud2 = build_deb(pkgs, "ud", "2", files={"usr/share/other": b"2\n"})

    def prepare(root: Path) -> None:
        (root / "usr/share/ud/mine").write_bytes(b"the user's\n")

    oracle = make_oracle(tmp_path, [libm1, cfg1, ud1], prepare)
    for root in (oracle.real, oracle.ours):
        root.dpkg("-r", "cfg")  # leaves cfg in config-files state
    oracle.upgrade([libm2, cfg2, ud2])
    oracle.apply([("libm", libm2), (None, cfg2), ("ud", ud2)])
    oracle.compare()
    assert (oracle.ours.path / "usr/share/ud/mine").exists()
    assert not (oracle.ours.path / "usr/share/ud2").exists()


def test_hard_links_modes_and_existing_directories(tmp_path: Path) -> None:
    pkgs = tmp_path / "debs"
    hl1 = build_deb(pkgs, "hl", "1", files={
        "usr/share/hl/a": b"a1\n", "usr/share/hl/b": Hardlink("usr/share/hl/a"),
        "usr/share/hl/fifo-less": File(b"x", 0o600), "usr/share/other/o": b"o\n"})
    hl2 = build_deb(pkgs, "hl", "2", files={
        "usr/share/hl": Dir(0o700), "usr/share/hl/a": File(b"a2\n", 0o640),
        "usr/share/hl/b": Hardlink("usr/share/hl/a"), "usr/share/hl/c": Hardlink("usr/share/hl/a"),
        "usr/share/hl/fifo-less": File(b"y", 0o4755), "usr/share/other": Dir(0o750),
        "usr/share/other/o": b"o\n", "usr/share/brand/new": b"n\n",
        "usr/share/brand": Dir(0o711)}, md5sums=False)
    oracle = make_oracle(tmp_path, [hl1])
    oracle.upgrade([hl2])
    result = oracle.apply([("hl", hl2)])
    oracle.compare()
    kinds = {e.path: e.kind for e in result.entries}
    assert kinds["usr/share/hl/b"] == HARDLINK and kinds["usr/share/brand"] == DIR
    assert "usr/share/hl" not in kinds  # dpkg leaves an existing directory as it is


# --------------------------------------------------------------------------- distroless


def distroless_root(root: Path, debs: Sequence[Path]) -> None:
    """A status.d image: every package's files, its control as status.d/<name>, its md5sums."""
    (root / "var/lib/dpkg/status.d").mkdir(parents=True)
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
        name = subprocess.run(["dpkg-deb", "-f", deb, "Package"], check=True,
                              capture_output=True).stdout.decode().strip()
        control = subprocess.run(["dpkg-deb", "-f", deb], check=True,
                                 capture_output=True).stdout
        (root / "var/lib/dpkg/status.d" / name).write_bytes(control)
        md5sums = subprocess.run(["dpkg-deb", "--ctrl-tarfile", deb], check=True,
                                 capture_output=True).stdout
        import io
        import tarfile
        with tarfile.open(fileobj=io.BytesIO(md5sums)) as tar:
            member = tar.extractfile("./md5sums")
            assert member is not None
            (root / "var/lib/dpkg/status.d" / f"{name}.md5sums").write_bytes(member.read())


def test_distroless_status_d(tmp_path: Path) -> None:
    pkgs = tmp_path / "debs"
    libssl1 = build_deb(pkgs, "libssl3", "3.0.1-1", files={
        "usr/lib/x86_64-linux-gnu/libssl.so.3": b"ssl1\n",
        "usr/lib/x86_64-linux-gnu/engines-3/old.so": b"old\n",
        "usr/share/doc/libssl3/copyright": b"(c)\n"},
        fields={"Multi-Arch": "same", "Source": "openssl"},
        scripts={"postinst": "#!/bin/sh\nexit 0\n"}, triggers="activate-noawait ldconfig\n")
    libssl2 = build_deb(pkgs, "libssl3", "3.0.2-1", files={
        "usr/lib/x86_64-linux-gnu/libssl.so.3": b"ssl2\n",
        "usr/share/doc/libssl3/copyright": b"(c)\n",
        "etc/ssl/openssl.cnf": conf("cnf")},
        conffiles=["/etc/ssl/openssl.cnf"],
        fields={"Multi-Arch": "same", "Source": "openssl"},
        scripts={"postinst": "#!/bin/sh\nexit 0\n"}, triggers="activate-noawait ldconfig\n")
    tzdata = build_deb(pkgs, "tzdata", "2024a-1", arch="all",
                       files={"usr/share/zoneinfo/UTC": b"utc\n"})
    newdep = build_deb(pkgs, "libnew1", "1", files={"usr/lib/libnew.so.1": b"n\n"})
    root = tmp_path / "root"
    distroless_root(root, [libssl1, tzdata])
    files = read_database(root)
    old = parse_status(files["var/lib/dpkg/status.d/libssl3"])[0]
    updates: list[tuple[InstalledPackage | None, Path]] = [(old, libssl2), (None, newdep)]
    wanted = conffile_paths(files, updates)
    assert wanted == ["etc/ssl/openssl.cnf"]
    result = apply_updates(files, updates, conffiles={p: read_inside(root, p) for p in wanted},
                           tree=tree_of(root))
    by_path = {e.path: e for e in result.entries}
    status_d = "var/lib/dpkg/status.d/"
    stanza = by_path[status_d + "libssl3"].data
    assert isinstance(stanza, bytes)
    control2 = subprocess.run(["dpkg-deb", "-f", libssl2], check=True,
                              capture_output=True).stdout
    assert stanza == control2  # the control paragraph, as the image's builder wrote it
    (pkg,) = parse_status(stanza)
    assert (pkg.name, pkg.version, pkg.status) == ("libssl3", "3.0.2-1", None)
    md5sums = by_path[status_d + "libssl3.md5sums"].data
    assert isinstance(md5sums, bytes)
    assert set(parse_md5sums(md5sums)) == {"usr/lib/x86_64-linux-gnu/libssl.so.3",
                                           "usr/share/doc/libssl3/copyright"}
    new_stanza = by_path[status_d + "libnew1"].data
    assert isinstance(new_stanza, bytes)
    assert parse_status(new_stanza)[0].version == "1"
    assert status_d + "libnew1.md5sums" in by_path
    assert "usr/lib/x86_64-linux-gnu/engines-3/.wh.old.so" in by_path
    assert by_path["usr/lib/x86_64-linux-gnu/libssl.so.3"].data == b"ssl2\n"
    assert by_path["etc/ssl/openssl.cnf"].data == conf("cnf")
    assert not any(p.startswith("var/lib/dpkg/info") for p in by_path)
    assert result.jobs == [] and result.sequence is None
    assert "var/lib/dpkg/status" not in by_path
    assert [p.version for p in result.packages] == ["3.0.2-1", "1"]
    write_layer(root, result.entries)
    assert [p.version for p in parse_status((root / status_d / "libssl3").read_bytes())] == [
        "3.0.2-1"]


# --------------------------------------------------------------------------- refusals


@pytest.fixture()
def small(tmp_path: Path) -> tuple[Path, Path]:
    pkgs = tmp_path / "debs"
    v1 = build_deb(pkgs, "small", "1", files={"usr/share/small/f": b"1\n"},
                   triggers="interest /usr/share/x\n")
    v2 = build_deb(pkgs, "small", "2", files={"usr/share/small/f": b"2\n"})
    root = DpkgRoot.create(tmp_path / "root")
    root.dpkg("-i", v1)
    return root.path, v2


@pytest.mark.parametrize(("path", "data", "named"), [
    ("var/lib/dpkg/status", b"Package: small\nthis is not a field\n", "/var/lib/dpkg/status"),
    ("var/lib/dpkg/status", b"Package: small\nStatus: install ok bogus\n",
     "/var/lib/dpkg/status"),
    ("var/lib/dpkg/status", b"Package: small\nVersion: 1 2\n", "/var/lib/dpkg/status"),
    ("var/lib/dpkg/info/small.list", b"/.\nusr/share\n", "/var/lib/dpkg/info/small.list"),
    ("var/lib/dpkg/info/small.triggers", b"interest\n", "/var/lib/dpkg/info/small.triggers"),
    ("var/lib/dpkg/info/small.triggers", b"frobnicate /x\n",
     "/var/lib/dpkg/info/small.triggers"),
    ("var/lib/dpkg/diversions", b"/usr/bin/a\n/usr/bin/b\n", "/var/lib/dpkg/diversions"),
    ("var/lib/dpkg/statoverride", b"root root 0755\n", "/var/lib/dpkg/statoverride"),
    ("var/lib/dpkg/triggers/File", b"no-slash small\n", "/var/lib/dpkg/triggers/File"),
])
def test_unparseable_database_is_refused(small: tuple[Path, Path], path: str, data: bytes,
                                         named: str) -> None:
    root, v2 = small
    files = read_database(root)
    pkg = parse_status(files["var/lib/dpkg/status"])[0]
    files[path] = data
    with pytest.raises(PackageDBError) as info:
        apply_updates(files, [(pkg, v2)], conffiles={}, tree=tree_of(root))
    assert info.value.path == named


def test_no_database_is_refused(small: tuple[Path, Path]) -> None:
    root, v2 = small
    with pytest.raises(PackageDBError) as info:
        apply_updates({}, [(None, v2)], conffiles={}, tree=tree_of(root))
    assert info.value.path == "/var/lib/dpkg/status"


def test_conffile_contents_must_be_given(tmp_path: Path) -> None:
    deb = build_deb(tmp_path, "c", "1", files={"etc/c.conf": b"c\n"}, conffiles=["/etc/c.conf"])
    files = {"var/lib/dpkg/status": b""}
    with pytest.raises(UsageError, match=r"conffile /etc/c\.conf"):
        apply_updates(files, [(None, deb)], conffiles={}, tree={})
    result = apply_updates(files, [(None, deb)], conffiles={"etc/c.conf": None}, tree={})
    assert {e.path for e in result.entries} >= {"etc", "etc/c.conf", "var/lib/dpkg/status",
                                                "var/lib/dpkg/info/c.list"}


def test_installed_package_must_be_named(small: tuple[Path, Path]) -> None:
    root, v2 = small
    files = read_database(root)
    with pytest.raises(UsageError, match="is installed"):
        apply_updates(files, [(None, v2)], conffiles={}, tree=tree_of(root))


def test_parse_triggers() -> None:
    directives = parse_triggers(b"# c\ninterest /usr/lib/foo\n\nactivate-noawait ldconfig # x\n"
                                b"interest-noawait bar\nactivate-await baz\n")
    assert directives.interests == (("/usr/lib/foo", False), ("bar", True))
    assert directives.activates == (("ldconfig", True), ("baz", False))
    with pytest.raises(PackageDBError):
        parse_triggers(b"interest a b\n", source="t")


def test_deterministic(tmp_path: Path) -> None:
    main = build_main(tmp_path)
    updates: list[tuple[str | None, Path]] = [("foo", main.foo2), ("libx", main.libx2)]
    first = apply_to(main.oracle.ours.path, updates)
    second = apply_to(main.oracle.ours.path, updates)
    assert first == second
    mapping: Mapping[str, Entry] = {e.path: e for e in first.entries}
    assert len(mapping) == len(first.entries)
    assert all(e.mtime is None for p, e in mapping.items() if p.startswith(ADMIN))


# --------------------------------------------------------------------------- a real image


# Where a bookworm image's updates come from, as its own apt sources name them.
UPDATE_SUITES = (("http://deb.debian.org/debian-security", "bookworm-security"),
                 ("http://deb.debian.org/debian", "bookworm-updates"))


def archive_updates(root: Path, arch: str = "amd64") -> list[Path]:
    """The newest ``.deb`` in bookworm-security or bookworm-updates of every package
    installed in ``root`` that they upgrade, downloaded from the Debian archive (its
    Release verified with the host's Debian archive keyring) into the test cache."""
    from suture.devtools.debs_image import HOST_KEYRING
    from suture.distro.dpkg.release import Keyring
    from suture.distro.dpkg.repo import AptFetcher, AptRepository, PackageEntry
    from tests.fixtures.debian import CACHE

    if not HOST_KEYRING.is_file():
        pytest.fail(f"no Debian archive keyring at {HOST_KEYRING} (debian-archive-keyring)")
    installed = {(p.name, p.architecture): p.version
                 for p in parse_status((root / "var/lib/dpkg/status").read_bytes())
                 if p.is_installed}
    trusted = Keyring.from_bytes(HOST_KEYRING.read_bytes(), names=[str(HOST_KEYRING)])
    with AptFetcher(CACHE / "apt") as fetcher:
        best: dict[tuple[str, str], tuple[PackageEntry, AptRepository]] = {}
        for uri, suite in UPDATE_SUITES:
            repo = fetcher.fetch_release(uri, suite, trusted)
            for entry in repo.packages("main", arch):
                key = (entry.package, entry.architecture)
                if key not in installed or compare_versions(entry.version,
                                                            installed[key]) <= 0:
                    continue
                if key not in best or compare_versions(entry.version,
                                                       best[key][0].version) > 0:
                    best[key] = (entry, repo)
        return sorted((repo.fetch_deb(entry) for entry, repo in best.values()), key=str)


def pre_depends_rounds(debs: Sequence[Path]) -> list[list[Path]]:
    """``debs`` in rounds for ``dpkg -i`` (as apt splits its calls): a package that
    pre-depends on another of the set comes a round after it, since dpkg wants a
    pre-dependency configured before it unpacks."""
    from suture.distro.dpkg.control import parse_relations

    def field(deb: Path, name: str) -> str:
        return subprocess.run(["dpkg-deb", "-f", deb, name], capture_output=True,
                              check=True).stdout.decode().strip()

    names = {deb: field(deb, "Package") for deb in debs}
    needs = {deb: {r.name for group in parse_relations(field(deb, "Pre-Depends"))
                   for r in group} & set(names.values()) for deb in debs}
    rounds: list[list[Path]] = []
    done: set[str] = set()
    left = list(debs)
    while left:
        ready = [deb for deb in left if needs[deb] - {names[deb]} <= done]
        assert ready, f"pre-dependency cycle among {[names[d] for d in left]}"
        rounds.append(ready)
        done |= {names[deb] for deb in ready}
        left = [deb for deb in left if deb not in ready]
    return rounds


@pytest.mark.network
@pytest.mark.tools
def test_real_debian_image_matches_dpkg(tmp_path: Path, bookworm_rootfs: Path) -> None:
    """Real packages over a real bookworm root, maintainer scripts run in a chroot.

    The upgrades are every update bookworm-security and bookworm-updates hold today
    for the image's packages, downloaded from the Debian archive (the bookworm
    image is built from the point release only, so they have some). After dpkg's
    run and ours, only what the scripts make differently may differ: the mtimes
    of files they write, and ldconfig's ``aux-cache`` (inode numbers and times).
    """
    if os.geteuid() != 0 or shutil.which("chroot") is None:
        pytest.skip("needs root and chroot to run real maintainer scripts")
    real = tmp_path / "real"
    real.mkdir()
    subprocess.run(["tar", "-xf", bookworm_rootfs, "-C", real, "--numeric-owner"], check=True)
    debs = archive_updates(real)
    assert debs, "bookworm-security and bookworm-updates update none of the image's packages"
    ours = tmp_path / "ours"
    subprocess.run(["cp", "-a", real, ours], check=True)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
           "LC_ALL": "C"}
    for batch in pre_depends_rounds(debs):
        subprocess.run(["dpkg", f"--root={real}", "--force-confold", "--log=/dev/null", "-i",
                        *batch], env=env, check=True, capture_output=True)

    names = [subprocess.run(["dpkg-deb", "-f", deb, "Package"], capture_output=True,
                            check=True).stdout.decode().strip() for deb in debs]
    result = apply_to(ours, list(zip(names, debs, strict=True)))
    write_layer(ours, result.entries)

    def run(job: ScriptJob) -> None:
        subprocess.run(["chroot", ours, "/" + job.path, *job.args],
                       env={**env, **dict(job.env)}, check=True, capture_output=True)

    replay(ours, result, run)

    shipped = {e.path for e in result.entries}
    assert_same_tree(real, ours, mtimes=lambda p: p in shipped,
                     contents=lambda p: p != "var/cache/ldconfig/aux-cache")


@pytest.mark.parametrize("activates", [False, True])
def test_triggers_left_pending_in_the_image(tmp_path: Path, activates: bool) -> None:
    pkgs = tmp_path / "debs"
    log = tmp_path / "scripts.log"
    libc_bin = build_deb(pkgs, "libc-bin", "1", files={"usr/sbin/ldconfig": b"x"},
                         scripts=scripts(log, "libc-bin", ("postinst",)),
                         triggers="interest-noawait ldconfig\n")
    watcher = build_deb(pkgs, "watcher", "1", files={"usr/share/w": b"w"},
                        scripts=scripts(log, "watcher", ("postinst",)),
                        triggers="interest /usr/share/lib\n")
    lib1 = build_deb(pkgs, "lib", "1", files={"usr/share/lib/l": b"1"},
                     triggers="activate-noawait ldconfig\n")
    other1 = build_deb(pkgs, "other", "1", files={"usr/share/other/o": b"1"})
    other2 = build_deb(pkgs, "other", "2", files={
        "usr/share/other/o": b"2", **({"usr/share/lib/o": b"2"} if activates else {})},
        scripts=scripts(log, "other2", ("postinst",)))

    def leave_pending(root: Path) -> None:
        DpkgRoot(root).dpkg("--no-triggers", "-i", lib1)

    oracle = make_oracle(tmp_path, [libc_bin, watcher, other1], leave_pending)
    status = (oracle.ours.path / "var/lib/dpkg/status").read_text()
    assert "Triggers-Pending: ldconfig" in status and "triggers-awaited" in status
    oracle.upgrade([other2])
    result = oracle.apply([("other", other2)])
    oracle.compare()
    # dpkg leaves triggers pending unless the run activates the package again.
    expected = ["other postinst configure 1"]
    if activates:
        expected.append("watcher triggered /usr/share/lib")
    assert [j.describe() for j in result.jobs] == expected


def test_owner_names_are_mapped_through_the_image(tmp_path: Path) -> None:
    root = tmp_path / "build"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text("Package: owned\nVersion: 1\nArchitecture: all\n"
                                         "Maintainer: t <t@t>\nDescription: d\n")
    (root / "usr/games").mkdir(parents=True)
    (root / "usr/games/score").write_bytes(b"0\n")
    os.chown(root / "usr/games/score", 0, 0)
    deb = tmp_path / "owned.deb"
    # dpkg-deb records the names of the owners; map "root" to unusual ids in the image.
    subprocess.run(["dpkg-deb", "--build", root, deb], check=True, capture_output=True)
    files = {"var/lib/dpkg/status": b"", "etc/passwd": b"root:x:7:7::/root:/bin/sh\n",
             "etc/group": b"root:x:9:\n"}
    result = apply_updates(files, [(None, deb)], conffiles={}, tree={})
    entry = next(e for e in result.entries if e.path == "usr/games/score")
    assert (entry.uid, entry.gid) == (7, 9)


def test_conffiles_activate_file_triggers_as_they_are_unpacked(tmp_path: Path) -> None:
    pkgs = tmp_path / "debs"
    log = tmp_path / "scripts.log"
    conf_watcher = build_deb(pkgs, "cw", "1", files={"usr/share/cw/c": b"c"},
                             scripts=scripts(log, "cw", ("postinst",)),
                             triggers="interest /etc/cw/x.conf\n")
    usr_watcher = build_deb(pkgs, "uw", "1", files={"usr/share/uw/c": b"c"},
                            scripts=scripts(log, "uw", ("postinst",)),
                            triggers="interest /usr/share/cf\n")
    both = build_deb(pkgs, "mw", "1", files={"usr/share/mw/c": b"c"},
                     scripts=scripts(log, "mw", ("postinst",)),
                     triggers="interest /usr/share/cf\ninterest /etc/cw/x.conf\n")
    cf1 = build_deb(pkgs, "cf", "1", files={"etc/cw/x.conf": b"1\n", "usr/share/cf/y": b"1"},
                    conffiles=["/etc/cw/x.conf"])
    cf2 = build_deb(pkgs, "cf", "2", files={"etc/cw/x.conf": b"2\n", "usr/share/cf/y": b"2"},
                    conffiles=["/etc/cw/x.conf"])
    oracle = make_oracle(tmp_path, [conf_watcher, usr_watcher, both, cf1])
    oracle.upgrade([cf2])
    result = oracle.apply([("cf", cf2)])
    oracle.compare()
    assert [j.describe() for j in result.jobs] == [
        "mw triggered /usr/share/cf /etc/cw/x.conf", "cw triggered /etc/cw/x.conf",
        "uw triggered /usr/share/cf"]


def test_conffile_reached_through_a_symlink(tmp_path: Path) -> None:
    pkgs = tmp_path / "debs"
    v1 = build_deb(pkgs, "lc", "1", files={"etc/lc.conf": conf("1")}, conffiles=["/etc/lc.conf"])
    v2 = build_deb(pkgs, "lc", "2", files={"etc/lc.conf": conf("2")}, conffiles=["/etc/lc.conf"])

    def link_it(root: Path) -> None:
        (root / "etc/real").mkdir()
        (root / "etc/lc.conf").rename(root / "etc/real/lc.conf")
        (root / "etc/lc.conf").symlink_to("real/lc.conf")

    oracle = make_oracle(tmp_path, [v1], link_it)
    oracle.upgrade([v2])
    oracle.apply([("lc", v2)])
    oracle.compare()
    # What dpkg 1.21 does (in a chroot too): the new file stays as .dpkg-new by the link.
    assert (oracle.ours.path / "etc/lc.conf").is_symlink()
    assert (oracle.ours.path / "etc/real/lc.conf").read_bytes() == conf("1")
    assert (oracle.ours.path / "etc/lc.conf.dpkg-new").read_bytes() == conf("2")


def test_two_packages_of_one_update_shipping_a_file(tmp_path: Path) -> None:
    """dpkg refuses the second unless it Replaces the first (at its new version); with
    Replaces the file is the second's, and the first's list no longer has it."""
    pkgs = tmp_path / "debs"
    one1 = build_deb(pkgs, "one", "1", files={"usr/share/one/x": b"one 1\n"})
    two1 = build_deb(pkgs, "two", "1", files={"usr/share/two/x": b"two 1\n"})
    one2 = build_deb(pkgs, "one", "2", files={"usr/share/shared/f": b"from one\n",
                                              "usr/share/one/x": b"one 2\n"})
    two2 = build_deb(pkgs, "two", "2", files={"usr/share/shared/f": b"from two\n"})
    oracle = make_oracle(tmp_path, [one1, two1])
    proc = oracle.real.dpkg("-i", one2, two2, check=False)
    assert proc.returncode != 0 and b"trying to overwrite" in proc.stderr
    with pytest.raises(FileConflictError) as info:
        apply_to(oracle.ours.path, [("one", one2), ("two", two2)])
    assert (info.value.path, info.value.package, info.value.owner) == (
        "usr/share/shared/f", "two", "one")

    replacing = build_deb(pkgs, "two", "3", files={"usr/share/shared/f": b"from two\n"},
                          fields={"Replaces": "one (<< 3)"})
    oracle = make_oracle(tmp_path / "replaces", [one1, two1])
    oracle.upgrade([one2, replacing])
    oracle.apply([("one", one2), ("two", replacing)])
    oracle.compare()
    assert (oracle.ours.path / "usr/share/shared/f").read_bytes() == b"from two\n"


def _without_root_member(deb: Path) -> Path:
    """``deb`` rebuilt with a data.tar that lacks the ``./`` member (as some non-dpkg-deb
    tools write them); dpkg installs it all the same."""
    work = deb.parent / f"{deb.stem}-noroot"
    work.mkdir()
    subprocess.run(["ar", "x", str(deb)], cwd=work, check=True)
    [data] = work.glob("data.tar*")
    tree = work / "tree"
    tree.mkdir()
    subprocess.run(["tar", "-xf", str(data), "-C", str(tree)], check=True)
    data.unlink()
    members = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    subprocess.run(["tar", "--owner=0", "--group=0", "--numeric-owner", "--no-recursion",
                    "-cJf", str(work / "data.tar.xz"), "-C", str(tree), *members], check=True)
    out = deb.with_name(f"{deb.stem}-noroot.deb")
    control = next(work.glob("control.tar*")).name
    subprocess.run(["ar", "rc", str(out), "debian-binary", control, "data.tar.xz"], cwd=work,
                   check=True)
    return out


def test_list_has_root_only_when_the_archive_has_it(tmp_path: Path) -> None:
    pkgs = tmp_path / "debs"
    one1 = build_deb(pkgs, "one", "1", files={"usr/share/one/x": b"1\n"})
    one2 = _without_root_member(build_deb(pkgs, "one", "2", files={"usr/share/one/x": b"2\n"}))
    listing = subprocess.run(["tar", "-tf", "-"], input=subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(one2)], capture_output=True, check=True).stdout,
        capture_output=True, check=True).stdout.decode().split()
    assert "./" not in listing and "usr/share/one/x" in listing
    oracle = make_oracle(tmp_path, [one1])
    oracle.upgrade([one2])
    oracle.apply([("one", one2)])
    oracle.compare()
    assert not (oracle.ours.path / "var/lib/dpkg/info/one.list").read_text().startswith("/.\n")
