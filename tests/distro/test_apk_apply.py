"""Applying apk updates as one layer: files, whiteouts, protected files, the database,
scripts.tar, triggers and script jobs."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from suture.distro.apk.apply import FileConflictError, Update, apply_updates
from suture.distro.apk.checksum import q1
from suture.distro.apk.index import parse_apkindex
from suture.distro.apk.installed import (
    InstalledPackage,
    format_installed,
    parse_installed,
    parse_protected_paths,
    parse_scripts_tar,
    parse_triggers,
)
from suture.distro.apk.package import read_apk
from suture.oci.fs import FileEntry
from suture.oci.layer import DIR, FILE, HARDLINK, SYMLINK, Entry
from tests.distro.test_apk_package import Pkg, build_apk, keys_for, make_key

RULES = parse_protected_paths([])


def _update(tmp: Path, pkg: Pkg, old: InstalledPackage | None) -> Update:
    built = build_apk(pkg, make_key())
    path = tmp / f"{pkg.name}-{pkg.version}.apk"
    path.write_bytes(built.blob)
    entry = parse_apkindex(built.index_record().encode(), repository="http://r")[0]
    archive = read_apk(path, identity=built.identity, keys=keys_for(make_key()),
                       what=path.name)
    return Update(old, entry, archive)


def tree_of(entries: list[Entry], base: dict[str, FileEntry] | None = None
            ) -> dict[str, FileEntry]:
    """The merged view after ``entries`` (one layer) over ``base``."""
    tree = dict(base or {})
    for e in sorted(entries, key=lambda e: e.path):
        parent, _, name = e.path.rpartition("/")
        if name.startswith(".wh."):
            gone = f"{parent}/{name[4:]}" if parent else name[4:]
            for p in [p for p in tree if p == gone or p.startswith(gone + "/")]:
                del tree[p]
            continue
        parts = e.path.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            tree.setdefault(d, FileEntry(d, DIR, 0o755, 0, 0, 0, 0, "", "l"))
        data = e.data if isinstance(e.data, bytes) else None
        tree[e.path] = FileEntry(e.path, e.kind, e.mode, e.uid, e.gid, e.size, e.mtime or 0,
                                 e.linkname, "l", data)
    return tree


def base_tree(**extra: FileEntry) -> dict[str, FileEntry]:
    tree: dict[str, FileEntry] = {}
    for d in ("etc", "lib", "lib/apk", "lib/apk/db", "usr", "usr/bin", "usr/share", "tmp"):
        tree[d] = FileEntry(d, DIR, 0o755, 0, 0, 0, 0, "", "l")
    tree.update(extra)
    return tree


def db_files(tree: dict[str, FileEntry]) -> dict[str, bytes]:
    return {p: e.data for p, e in tree.items() if e.data is not None and e.kind == FILE}


def install(tmp: Path, pkgs: list[Pkg], tree: dict[str, FileEntry]
            ) -> tuple[list[InstalledPackage], dict[str, FileEntry]]:
    """Install ``pkgs`` into an empty database, the way the image was built."""
    result = apply_updates([], [_update(tmp, p, None) for p in pkgs], tree=tree,
                           files=db_files(tree), protected=RULES)
    new_tree = tree_of(result.entries, tree)
    return parse_installed(new_tree["lib/apk/db/installed"].data or b""), new_tree


V1 = Pkg("hello", "1.0-r0", {
    "usr/bin/hello": b"hello 1\n",
    "usr/share/hello/old.txt": b"old\n",
    "usr/share/hello/gone/only.txt": b"gone\n",
    "etc/hello.conf": b"a=1\n",
    "etc/hello/user.conf": b"u=1\n",
    "etc/hello/dropped.conf": b"d=1\n",
    "etc/hello/edited-dropped.conf": b"e=1\n",
}, modes={"usr/bin/hello": 0o755}, scripts={"post-upgrade": b"#!/bin/sh\nexit 0\n"},
    triggers="/usr/share/fonts/*")
V2 = Pkg("hello", "2.0-r0", {
    "usr/bin/hello": b"hello 2\n",
    "usr/bin/hi": "->hello",
    "usr/share/hello/new.txt": b"new\n",
    "etc/hello.conf": b"a=2\n",
    "etc/hello/user.conf": b"u=2\n",
}, modes={"usr/bin/hello": 0o755},
    scripts={"pre-upgrade": b"#!/bin/sh\nexit 0\n", "post-upgrade": b"#!/bin/sh\necho 2\n",
             "trigger": b"#!/bin/sh\necho fired\n"},
    triggers="/usr/share/fonts* /usr/share/hello/*", owners={"usr/bin/hello": ("daemon", 1234)})
FONTS = Pkg("fontconfig", "2.14-r0", {"usr/share/fonts/readme": b"fonts\n"},
            scripts={"trigger": b"#!/bin/sh\nfc-cache\n"}, triggers="/usr/share/hello /nope/*")


def _edit(tree: dict[str, FileEntry], path: str, data: bytes) -> None:
    e = tree[path]
    tree[path] = FileEntry(path, FILE, e.mode, 0, 0, len(data), 0, "", "l", data)


def test_upgrade(tmp_path: Path) -> None:
    passwd = b"root:x:0:0:root:/root:/bin/sh\ndaemon:x:2:2:daemon:/sbin:/sbin/nologin\n"
    tree0 = base_tree(**{"etc/passwd": FileEntry("etc/passwd", FILE, 0o644, 0, 0, len(passwd),
                                                 0, "", "l", passwd)})
    packages, tree = install(tmp_path, [V1, FONTS], tree0)
    _edit(tree, "etc/hello/user.conf", b"u=mine\n")
    _edit(tree, "etc/hello/edited-dropped.conf", b"e=mine\n")
    old = {p.name: p for p in packages}
    result = apply_updates(packages, [_update(tmp_path, V2, old["hello"])], tree=tree,
                           files=db_files(tree), protected=RULES)
    by_path = {e.path: e for e in result.entries}
    # Files, with the owner mapped by name through etc/passwd.
    hello = by_path["usr/bin/hello"]
    assert (hello.data, hello.mode, hello.uid) == (b"hello 2\n", 0o755, 2)
    assert by_path["usr/bin/hi"].kind == SYMLINK and by_path["usr/bin/hi"].linkname == "hello"
    assert by_path["etc/hello.conf"].data == b"a=2\n"
    # The user's change is kept; the new file goes beside it.
    assert "etc/hello/user.conf" not in by_path
    assert by_path["etc/hello/user.conf.apk-new"].data == b"u=2\n"
    assert any("user.conf.apk-new" in n for n in result.notes)
    # Removed: a file, a directory left empty (one whiteout), an unchanged dropped
    # conffile; the dropped one the user edited stays.
    whiteouts = sorted(p for p in by_path if p.rpartition("/")[2].startswith(".wh."))
    assert whiteouts == ["etc/hello/.wh.dropped.conf", "usr/share/hello/.wh.gone",
                         "usr/share/hello/.wh.old.txt"]
    # Existing directories with the same permissions are not written again.
    assert "usr" not in by_path and "usr/bin" not in by_path
    # The database: hello rewritten, fontconfig byte for byte.
    db = parse_installed(by_path["lib/apk/db/installed"].data)  # type: ignore[arg-type]
    new = {p.name: p for p in db}
    assert new["fontconfig"].raw == old["fontconfig"].raw
    h = new["hello"]
    assert h.version == "2.0-r0"
    files = dict(h.files())
    assert set(files) == {"usr/bin/hello", "usr/bin/hi", "usr/share/hello/new.txt",
                          "etc/hello.conf", "etc/hello/user.conf"}
    assert files["usr/bin/hello"].checksum == q1(b"hello 2\n")
    assert files["usr/bin/hello"].acl.uid == 2 and files["usr/bin/hello"].acl.mode == 0o755
    assert files["usr/bin/hi"].checksum == q1(b"hello")
    assert files["usr/bin/hi"].acl.mode == 0o777
    # scripts.tar and triggers: the old version's entries replaced.
    scripts = parse_scripts_tar(by_path["lib/apk/db/scripts.tar"].data)  # type: ignore[arg-type]
    assert sorted(m.name.rsplit(".", 1)[1] for m in scripts if m.name.startswith("hello-")) \
        == ["post-upgrade", "pre-upgrade", "trigger"]
    assert all(m.identity != old["hello"].identity for m in scripts)
    assert any(m.name.startswith("fontconfig-2.14-r0.") for m in scripts)
    triggers = parse_triggers(by_path["lib/apk/db/triggers"].data)  # type: ignore[arg-type]
    assert triggers == [(old["fontconfig"].identity, ("/usr/share/hello", "/nope/*")),
                        (h.identity, ("/usr/share/fonts*", "/usr/share/hello/*"))]
    # Jobs: pre-upgrade, post-upgrade (new, old), then the triggers that fire.
    assert [(j.package, j.script, j.args) for j in result.jobs] == [
        ("hello", "pre-upgrade", ("2.0-r0", "1.0-r0")),
        ("hello", "post-upgrade", ("2.0-r0", "1.0-r0")),
        ("fontconfig", "trigger", ("/usr/share/hello",)),
        # an updated package's triggers match every directory in the database
        ("hello", "trigger", ("/usr/share/fonts",)),
    ]
    assert {j.path for j in result.jobs} == {s.path for s in result.scratch}
    assert all(s.path.startswith("lib/apk/exec/") and s.mode == 0o755 for s in result.scratch)
    # Applied over the image, the database matches what is on disk (apk audit).
    after = tree_of(result.entries, tree)
    for path, record in h.files():
        node = after[path]
        got = node.linkname.encode() if node.kind == SYMLINK else node.data
        if path == "etc/hello/user.conf":
            assert got == b"u=mine\n"
            continue
        assert record.checksum == q1(got or b""), path
    assert "usr/share/hello/gone" not in after and "usr/share/hello/old.txt" not in after


def test_merged_usr_writes_through_the_symlinks(tmp_path: Path) -> None:
    tree0 = base_tree()
    del tree0["lib"], tree0["lib/apk"], tree0["lib/apk/db"]
    tree0["lib"] = FileEntry("lib", SYMLINK, 0o777, 0, 0, 0, 0, "usr/lib", "l")
    for d in ("usr/lib", "usr/lib/apk", "usr/lib/apk/db"):
        tree0[d] = FileEntry(d, DIR, 0o755, 0, 0, 0, 0, "", "l")
    v1 = Pkg("libfoo", "1-r0", {"lib/libfoo.so.1": b"1", "lib/libfoo.so": "=>lib/libfoo.so.1"})
    v2 = Pkg("libfoo", "2-r0", {"lib/libfoo.so.2": b"2", "lib/libfoo.so": "=>lib/libfoo.so.2"})
    result = apply_updates([], [_update(tmp_path, v1, None)], tree=tree0, files={},
                           protected=RULES, db_dir="usr/lib/apk/db")
    tree = tree_of(result.entries, tree0)
    assert "usr/lib/libfoo.so.1" in tree and "lib/libfoo.so.1" not in tree
    assert "lib" not in {e.path for e in result.entries}  # the symlink is left alone
    (old,) = parse_installed(tree["usr/lib/apk/db/installed"].data or b"")
    assert [d.name for d in old.dirs] == ["lib"]  # the database keeps the package's paths
    result = apply_updates([old], [_update(tmp_path, v2, old)], tree=tree,
                           files=db_files(tree), protected=RULES, db_dir="usr/lib/apk/db")
    by_path = {e.path: e for e in result.entries}
    assert by_path["usr/lib/libfoo.so"].kind == HARDLINK
    assert by_path["usr/lib/libfoo.so"].linkname == "usr/lib/libfoo.so.2"
    assert "usr/lib/.wh.libfoo.so.1" in by_path
    (new,) = parse_installed(by_path["usr/lib/apk/db/installed"].data)  # type: ignore[arg-type]
    assert dict(new.files())["lib/libfoo.so"].checksum == q1(b"2")


def test_file_owned_by_another_package_is_refused(tmp_path: Path) -> None:
    packages, tree = install(tmp_path, [Pkg("a", "1-r0", {"usr/bin/tool": b"a"}),
                                        Pkg("b", "1-r0", {"usr/bin/b": b"b"})], base_tree())
    b = {p.name: p for p in packages}["b"]
    with pytest.raises(FileConflictError, match="trying to overwrite /usr/bin/tool"):
        apply_updates(packages, [_update(tmp_path, Pkg("b", "2-r0", {"usr/bin/tool": b"b"}),
                                         b)],
                      tree=tree, files=db_files(tree), protected=RULES)


def test_replaces_takes_the_file_over(tmp_path: Path) -> None:
    packages, tree = install(tmp_path, [Pkg("a", "1-r0", {"usr/bin/tool": b"a",
                                                          "usr/bin/a": b"a"}),
                                        Pkg("b", "1-r0", {"usr/bin/b": b"b"})], base_tree())
    b = {p.name: p for p in packages}["b"]
    v2 = Pkg("b", "2-r0", {"usr/bin/tool": b"b", "usr/bin/b": b"b"}, replaces="a")
    result = apply_updates(packages, [_update(tmp_path, v2, b)], tree=tree,
                           files=db_files(tree), protected=RULES)
    db = {p.name: p for p in parse_installed(
        next(e.data for e in result.entries if e.path == "lib/apk/db/installed"))}  # type: ignore[arg-type]
    assert set(dict(db["a"].files())) == {"usr/bin/a"}
    assert "usr/bin/tool" in dict(db["b"].files())
    assert db["b"].get("r") == "a"


def test_a_package_replacing_with_a_higher_priority_keeps_its_file(tmp_path: Path) -> None:
    packages, tree = install(tmp_path, [Pkg("a", "1-r0", {"usr/bin/tool": b"a"},
                                            replaces="b", replaces_priority=10),
                                        Pkg("b", "1-r0", {"usr/bin/b": b"b"})], base_tree())
    b = {p.name: p for p in packages}["b"]
    v2 = Pkg("b", "2-r0", {"usr/bin/tool": b"b", "usr/bin/b": b"b2"}, replaces="a",
             replaces_priority=1)
    result = apply_updates(packages, [_update(tmp_path, v2, b)], tree=tree,
                           files=db_files(tree), protected=RULES)
    by_path = {e.path: e for e in result.entries}
    assert "usr/bin/tool" not in by_path and by_path["usr/bin/b"].data == b"b2"
    db = {p.name: p for p in parse_installed(by_path["lib/apk/db/installed"].data)}  # type: ignore[arg-type]
    assert "usr/bin/tool" in dict(db["a"].files())
    assert set(dict(db["b"].files())) == {"usr/bin/b"}
    assert db["a"].raw == {p.name: p for p in packages}["a"].raw


def test_new_dependency_and_database_order(tmp_path: Path) -> None:
    packages, tree = install(tmp_path, [Pkg("zed", "1-r0", {"usr/bin/zed": b"z"}),
                                        Pkg("Alpha", "1-r0", {"usr/bin/alpha": b"a"})],
                             base_tree())
    assert [p.name for p in packages] == ["Alpha", "zed"]  # apk's order
    zed = packages[1]
    result = apply_updates(packages, [
        _update(tmp_path, Pkg("zed", "2-r0", {"usr/bin/zed": b"z2"}, depends="mid"), zed),
        _update(tmp_path, Pkg("mid", "1-r0", {"usr/lib/mid": b"m"},
                              scripts={"post-install": b"#!/bin/sh\n"}), None)],
        tree=tree, files=db_files(tree), protected=RULES)
    db = parse_installed(next(e.data for e in result.entries
                              if e.path == "lib/apk/db/installed"))  # type: ignore[arg-type]
    assert [p.name for p in db] == ["Alpha", "mid", "zed"]
    assert [(j.package, j.script, j.args) for j in result.jobs] == [
        ("mid", "post-install", ("1-r0",))]
    assert format_installed(db).startswith(packages[0].raw.encode())


def test_missing_directory_entry_is_refused(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("usr/bin/x")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    pkg = Pkg("x", "1-r0")
    built = build_apk(pkg, make_key(), data=raw.getvalue())
    path = tmp_path / "x.apk"
    path.write_bytes(built.blob)
    entry = parse_apkindex(built.index_record().encode())[0]
    archive = read_apk(path, identity=built.identity, keys=keys_for(make_key()), what="x")
    with pytest.raises(Exception, match="no directory entry"):
        apply_updates([], [Update(None, entry, archive)], tree=base_tree(), files={},
                      protected=RULES)
