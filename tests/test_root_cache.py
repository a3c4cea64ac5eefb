"""Extracted image roots kept in the cache by layer chain (suture.oci.rootcache).

A later run over the same layers (the same image again, or another image made of the
same layers) links the kept root instead of extracting it, and gives the same patch
layer as a run with an empty cache; scripts that rewrite files leave every file of
the kept tree as it was stored; a damaged entry is ignored and stored again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from suture.devtools.debian_image import image_from_layers
from suture.devtools.rootfs import diff_entries
from suture.distro.scripts import ScriptJob
from suture.oci.image import Image
from suture.oci.layer import DIR, HARDLINK, Entry
from suture.oci.model import Platform
from suture.oci.mutate import with_labels
from suture.oci.rootcache import CacheMismatch, RootCache
from suture.patch.scripts import ScriptRoot, run_scripts, start_root
from suture.transports import open_artifact, write_artifact
from tests.fixtures.images import make_image
from tests.oci.test_extract import IMAGE_LAYERS, _tree

AMD64 = Platform.parse("linux/amd64")


def _entries(cache: Path) -> list[Path]:
    roots = cache / "roots" if (cache / "roots").is_dir() else cache
    return sorted(p for p in roots.iterdir() if len(p.name) == 64)


def _check_entry(where: Path) -> int:
    """Every path of a stored tree is what its entry.json says: kind, mode, size and
    mtime, and each regular file its SHA-256. The number of files checked."""
    entry = json.loads((where / "entry.json").read_text())
    tree = where / "tree"
    checked = 0
    for rel, (kind, mode, _uid, _gid, size, mtime) in entry["paths"].items():
        st = os.lstat(tree / rel)
        assert (stat.S_ISDIR(st.st_mode), stat.S_ISLNK(st.st_mode)) == (
            kind == "d", kind == "l"), rel
        assert st.st_mode & 0o7777 == mode, rel
        if kind != "f":
            continue
        node: Any = entry["tree"]
        for part in rel.split("/"):
            node = node[part]
        assert (st.st_size, st.st_mtime_ns) == (size, mtime), rel
        assert hashlib.sha256((tree / rel).read_bytes()).hexdigest() == node[0], rel
        checked += 1
    return checked


# --------------------------------------------------------------------------- the cache itself

def _stored(tmp_path: Path) -> tuple[RootCache, Image, str, Path]:
    image = make_image(*IMAGE_LAYERS)
    cache = RootCache(tmp_path / "roots")
    root = ScriptRoot(image, None, cache)
    root.wait()
    assert root.shared and not root.from_cache
    key = root.key
    assert key is not None
    root.close()
    [where] = _entries(tmp_path / "roots")
    assert where.name == key
    return cache, image, key, where


def test_a_second_root_is_linked_and_removing_it_leaves_the_cache(tmp_path: Path) -> None:
    cache, image, _key, where = _stored(tmp_path)
    (tmp_path / "plain").mkdir()
    fresh = ScriptRoot(image, tmp_path / "plain")  # no cache: extracted
    writer = fresh.wait()
    root = ScriptRoot(image, None, cache)
    linked = root.wait()
    assert root.from_cache and root.shared
    assert _tree(root.path) == _tree(fresh.path)
    assert linked.export() == writer.export()
    sample = where / "tree" / "etc" / "a"
    assert os.path.samefile(sample, root.path / "etc" / "a")
    # Writing over the run's root the way the patch entries are written (rename aside,
    # create anew) leaves the cached file alone.
    linked.apply_entries([Entry.file("etc/a", b"patched", mode=0o600)])
    assert (root.path / "etc" / "a").read_bytes() == b"patched"
    root.release()
    root.close()
    fresh.close()
    assert not root.tmp.exists()
    assert os.lstat(sample).st_nlink == 1
    assert _check_entry(where) >= 1


# Another image on the same base: its own layer replaces, removes, hard-links, empties.
APP_LAYER = [Entry.file("etc/a", b"app", 0o644), Entry.whiteout("bin/dash"),
             Entry("bin/sh2", HARDLINK, 0o755, linkname="bin/sh"), Entry.opaque("var/x"),
             Entry.file("var/x/4", b"4"), Entry("etc", DIR, 0o700),
             Entry.file("srv/app/run", b"#!/bin/sh\n", 0o755)]


def test_another_image_on_the_same_base_starts_from_the_kept_root(tmp_path: Path) -> None:
    cache, _image, base_key, base = _stored(tmp_path)
    app = make_image(*IMAGE_LAYERS, APP_LAYER)
    (tmp_path / "plain").mkdir()
    fresh = ScriptRoot(app, tmp_path / "plain")
    expected = fresh.wait()
    root = ScriptRoot(app, None, cache)
    writer = root.wait()
    assert not root.from_cache and root.shared
    assert _tree(root.path) == _tree(fresh.path)
    assert writer.export() == expected.export()
    # The base's files that the app layer left are the kept ones, not copies.
    assert os.path.samefile(root.path / "bin" / "sh", base / "tree" / "bin" / "sh")
    assert (base / "tree" / "etc" / "a").read_bytes() == b"new"
    root.close()
    fresh.close()
    assert {p.name for p in _entries(tmp_path / "roots")} == {base_key, str(root.key)}
    for where in _entries(tmp_path / "roots"):
        _check_entry(where)
    again = ScriptRoot(app, None, cache)
    again.wait()
    assert again.from_cache
    again.close()


def test_a_damaged_entry_is_ignored_removed_and_stored_again(tmp_path: Path) -> None:
    cache, image, key, where = _stored(tmp_path)
    victim = next(p for p in (where / "tree").rglob("*") if p.is_file() and p.stat().st_size)
    with victim.open("r+b") as fh:  # truncated in place: same inode, other size
        fh.truncate(0)
    entry = cache.load(key)
    assert entry is not None
    with pytest.raises(CacheMismatch):
        cache.link(key, entry, tmp_path / "farm")
    assert not where.exists()
    # The next root is extracted and kept again, whole.
    root = ScriptRoot(image, None, cache)
    root.wait()
    assert not root.from_cache and root.shared
    root.close()
    assert _check_entry(where) >= 1
    # A truncated entry.json: no entry; the next root is extracted and kept again.
    data = (where / "entry.json").read_bytes()
    (where / "entry.json").write_bytes(data[:len(data) // 2])
    assert cache.load(key) is None and not where.exists()
    root = ScriptRoot(image, None, cache)
    root.wait()
    assert not root.from_cache
    root.close()
    assert cache.load(key) is not None
    # A half-stored copy left by a process that died is no entry and does not disturb.
    (where.parent / ".new-dead").mkdir()
    (where.parent / ".new-dead" / "entry.json").write_text("{")
    root = ScriptRoot(image, None, cache)
    root.wait()
    assert root.from_cache
    root.close()


def test_a_linked_root_is_copied_before_writing_in_place(tmp_path: Path) -> None:
    """What rpm's <lua> scriptlets need (they write the root from suture's process)."""
    from suture.patch.scripts import _unshare

    cache, image, _key, where = _stored(tmp_path)
    root = ScriptRoot(image, None, cache)
    root.wait()
    before = _tree(root.path)
    _unshare(root.path)
    assert _tree(root.path) == before  # contents, modes, symlinks as they were
    sh, dash = root.path / "bin" / "sh", root.path / "bin" / "dash"
    assert os.path.samefile(sh, dash) and sh.stat().st_nlink == 2  # still one file
    kept = where / "tree" / "bin" / "sh"
    assert not os.path.samefile(sh, kept)
    assert sh.stat().st_mtime_ns == kept.stat().st_mtime_ns
    with sh.open("ab") as fh:  # in place, as io.open(path, "a") does
        fh.write(b"lua was here")
    os.chmod(root.path / "etc" / "a", 0o640)
    root.close()
    assert (where / "tree" / "bin" / "sh").read_bytes() == b"#!"
    _check_entry(where)


def test_racing_stores_keep_one_entry(tmp_path: Path) -> None:
    cache, image, key, where = _stored(tmp_path)
    (tmp_path / "x").mkdir()
    root = ScriptRoot(image, tmp_path / "x")
    writer = root.wait()
    before = (where / "entry.json").read_bytes()
    assert cache.store(key, root.path, writer.export()) is False
    # A store that loses the rename to another process discards its copy.
    os.rename(where, tmp_path / "aside")
    real_rename = os.rename

    def other_process_first(src: Any, dst: Any) -> None:
        if Path(dst) == where:
            real_rename(tmp_path / "aside", where)
        real_rename(src, dst)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "rename", other_process_first)
        assert cache.store(key, root.path, writer.export()) is False
    root.close()
    assert (where / "entry.json").read_bytes() == before
    assert [p.name for p in where.parent.iterdir() if p.name.startswith(".")] == []


def test_least_recently_used_entries_go_first(tmp_path: Path) -> None:
    cache = RootCache(tmp_path / "roots")
    images = [make_image([Entry.file(f"f{n}", os.urandom(100_000 * (n + 1)))])
              for n in range(3)]
    keys: list[str] = []
    for image in images:
        root = ScriptRoot(image, None, cache)
        root.wait()
        assert root.key is not None
        keys.append(root.key)
        root.close()
    assert {p.name for p in _entries(tmp_path / "roots")} == set(keys)
    sizes = {key: size for _used, size, key in cache.entries()}
    # The first is used again: the second is now the least recently used.
    for n, key in enumerate(keys):
        os.utime(tmp_path / "roots" / str(key) / "used", (1000 + n, 1000 + n))
    root = ScriptRoot(images[0], None, cache)
    root.wait()
    assert root.from_cache
    root.close()
    small = RootCache(tmp_path / "roots", max_bytes=sizes[keys[0]] + sizes[keys[2]])
    small.evict()
    assert {p.name for p in _entries(tmp_path / "roots")} == {keys[0], keys[2]}


def test_runs_left_by_dead_processes_are_swept(tmp_path: Path) -> None:
    cache = RootCache(tmp_path / "roots")
    alive, fd = cache.new_run()
    code = ("import sys; from pathlib import Path; from suture.oci.rootcache import RootCache; "
            f"p, fd = RootCache(Path({str(tmp_path / 'roots')!r})).new_run(); print(p)")
    dead = Path(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True).stdout.strip())
    old = time.time() - 2 * 3600
    for path in (alive, dead):
        (path / "root").mkdir()
        os.utime(path, (old, old))
    cache.evict()
    assert alive.exists() and not dead.exists()
    os.close(fd)


# ------------------------------------------------------------------- scripts over a kept root

@pytest.mark.network
def test_scripts_writing_in_place_leave_the_kept_root_alone(tmp_path: Path,
                                                            bookworm_rootfs: Path) -> None:
    (tmp_path / "work").mkdir()
    image = image_from_layers([bookworm_rootfs], AMD64, tmp_path / "work")
    body = (b"#!/bin/sh\nset -e\n"
            b"echo appended >> /etc/hostname\n"  # written in place
            b"chmod 0600 /etc/debian_version\n"  # metadata in place
            b": > /etc/host.conf\n"  # truncated in place
            b"echo new > /etc/fresh\n")
    script = Entry.file("var/lib/dpkg/info/inplace.postinst", body, mode=0o755)
    job = ScriptJob("inplace", "postinst", "var/lib/dpkg/info/inplace.postinst", ("configure",))
    cache_dir = tmp_path / "cache"
    outcomes = []
    for _ in range(2):
        root = start_root(image, workdir=tmp_path, sandbox="bwrap", cache_dir=cache_dir)
        assert root is not None
        outcome = run_scripts(image, [script], [job], workdir=tmp_path, sandbox="bwrap",
                              root=root)
        outcomes.append((root.from_cache, outcome))
        root.close()
    (first_cached, first), (second_cached, second) = outcomes
    assert (first_cached, second_cached) == (False, True)
    assert first.entries == second.entries
    changed = {e.path: e for e in second.entries}
    assert changed["etc/hostname"].data is not None
    assert bytes(changed["etc/hostname"].data).endswith(b"appended\n")  # type: ignore[arg-type]
    assert changed["etc/debian_version"].mode == 0o600
    assert changed["etc/host.conf"].size == 0
    [where] = _entries(cache_dir)
    assert _check_entry(where) > 1000
    tree = where / "tree"
    assert not (tree / "etc" / "fresh").exists()
    assert not (tree / "etc" / "hostname").read_bytes().endswith(b"appended\n")
    assert (tree / "etc" / "debian_version").stat().st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------- suture patch

def _suture(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "suture", "-v", *args], capture_output=True,
                          text=True, timeout=900)


def _patch(ref: str, dest: str, cache: Path) -> tuple[str, dict[str, Any], str]:
    """Patch ``ref`` into ``dest`` with ``cache``: the patch layer's digest, the
    platform's result, and the log."""
    result = cache.parent / f"result-{time.monotonic_ns()}.json"
    proc = _suture("patch", "-i", ref, "--dest", dest, "--cache-dir", str(cache),
                   "--no-result-cache", "--result", str(result))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [platform] = json.loads(result.read_text())["platforms"]
    assert platform["status"] == "patched", platform
    patched = open_artifact(dest)
    assert isinstance(patched, Image)
    return patched.layers[-1].digest, platform, proc.stderr


LINKED = "root for maintainer scripts linked from the cache"


@pytest.mark.network
@pytest.mark.tools
def test_patches_over_a_kept_root_give_the_same_layer(
        tmp_path: Path, bookworm_rootfs: Path, bookworm_openssl_rootfs: Path) -> None:
    upper = diff_entries(bookworm_rootfs, bookworm_openssl_rootfs)
    (tmp_path / "work").mkdir()
    image = image_from_layers([bookworm_rootfs, upper], AMD64, tmp_path / "work")
    one = f"oci:{tmp_path}/layout:one"
    other = f"oci:{tmp_path}/layout:other"  # the same layers, another image
    app = f"oci:{tmp_path}/layout:app"  # the same base and a layer of its own
    write_artifact(image, one)
    write_artifact(with_labels(image, {"org.example.app": "other"}), other)
    write_artifact(image_from_layers([bookworm_rootfs, upper, [
        Entry.file("srv/app/run", b"#!/bin/sh\necho app\n", 0o755),
        Entry.file("etc/hostname", b"app\n")]], AMD64, tmp_path / "work"), app)
    cache = tmp_path / "cache"

    first, platform, log = _patch(one, f"oci:{tmp_path}/out:1", cache)
    assert LINKED not in log
    updated = {u["name"] for u in platform["updates"]}
    assert {"ca-certificates", "tzdata"} <= updated, updated  # scripts that rewrite files
    ran = " ".join(platform["scripts"]["ran"])
    assert "ca-certificates postinst" in ran and "tzdata postinst" in ran, ran
    [where] = _entries(cache)
    stamp = (where / "used").stat().st_mtime_ns
    files = _check_entry(where)

    again, _platform, log = _patch(one, f"oci:{tmp_path}/out:2", cache)
    assert LINKED in log
    assert again == first
    assert (where / "used").stat().st_mtime_ns > stamp

    linked, _platform, log = _patch(other, f"oci:{tmp_path}/out:3", cache)
    assert LINKED in log
    fresh, _platform, log = _patch(other, f"oci:{tmp_path}/out:4", tmp_path / "fresh")
    assert LINKED not in log
    assert linked == fresh == first

    over, _platform, log = _patch(app, f"oci:{tmp_path}/out:app1", cache)
    assert "2 of its 3 layers linked from the cache" in log
    fresh, _platform, log = _patch(app, f"oci:{tmp_path}/out:app2", tmp_path / "fresh2")
    assert "linked from the cache" not in log
    assert over == fresh
    [app_entry] = [p for p in _entries(cache) if p != where]
    _check_entry(app_entry)
    shutil.rmtree(app_entry)
    # ca-certificates' and tzdata's scripts rewrote files of the kept root in their runs.
    assert _entries(cache) == [where]
    assert _check_entry(where) == files

    # A file of the kept tree changed in place: the entry is removed, the root extracted
    # and kept again, and the layer is the same.
    bundle = where / "tree" / "etc" / "ssl" / "certs" / "ca-certificates.crt"
    with bundle.open("r+b") as fh:
        fh.truncate(100)
    damaged, _platform, log = _patch(one, f"oci:{tmp_path}/out:5", cache)
    assert LINKED not in log and "root cache entry" in log
    assert damaged == first
    assert _check_entry(where) == files
    # A truncated entry.json: the same.
    data = (where / "entry.json").read_bytes()
    (where / "entry.json").write_bytes(data[:len(data) // 3])
    truncated, _platform, log = _patch(one, f"oci:{tmp_path}/out:6", cache)
    assert LINKED not in log
    assert truncated == first
    assert _check_entry(where) == files
