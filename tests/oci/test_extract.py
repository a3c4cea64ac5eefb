from __future__ import annotations

import os
from pathlib import Path

import pytest

from suture.oci.extract import extract_image, resolve_in_root
from suture.oci.layer import DIR, HARDLINK, SYMLINK, Entry
from suture.transports import write_artifact
from tests.fixtures.images import make_image
from tests.fixtures.oci_tools import Runner


def _tree(root: Path) -> dict[str, tuple[str, str]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", oct(p.stat().st_mode & 0o7777))
            else:
                out[rel] = ("file", p.read_bytes().hex() + oct(p.stat().st_mode & 0o7777))
    return out


IMAGE_LAYERS = (
    [Entry("etc", DIR, 0o755), Entry.file("etc/a", b"old"), Entry.file("etc/b", b"b"),
     Entry.file("var/x/1", b"1"), Entry.file("var/x/sub/2", b"2"),
     Entry("lib", SYMLINK, 0o777, linkname="usr/lib"), Entry.file("usr/lib/libz.so", b"z"),
     Entry.file("bin/sh", b"#!", 0o755), Entry("bin/dash", HARDLINK, 0o755,
                                               linkname="bin/sh")],
    [Entry.file("etc/a", b"new", 0o600), Entry.whiteout("etc/b"), Entry.opaque("var/x"),
     Entry.file("var/x/3", b"3"), Entry.whiteout("usr/lib/libz.so")],
)


def test_extract_matches_umoci(tmp_path: Path, umoci_cli: Runner) -> None:
    image = make_image(*IMAGE_LAYERS)
    ours = tmp_path / "ours"
    extract_image(image, ours)
    write_artifact(image, f"oci:{tmp_path}/layout:t")
    umoci_cli("unpack", "--rootless", "--image", f"{tmp_path}/layout:t", str(tmp_path / "bundle"))
    theirs = _tree(tmp_path / "bundle" / "rootfs")
    assert _tree(ours) == theirs
    assert (ours / "etc/a").read_bytes() == b"new"
    assert not (ours / "etc/b").exists() and not (ours / "var/x/1").exists()
    assert (ours / "bin/dash").stat().st_ino == (ours / "bin/sh").stat().st_ino


def test_links_never_leave_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    os.symlink("/../../../tmp", root / "etc" / "up")
    assert resolve_in_root(root, "etc/up/x") == root / "tmp" / "x"
    image = make_image([Entry("evil", SYMLINK, 0o777, linkname="/")],
                       [Entry.file("evil/escaped", b"no")])
    out = tmp_path / "out"
    extract_image(image, out)
    assert (out / "escaped").read_bytes() == b"no"
    assert not (tmp_path / "escaped").exists() and not Path("/escaped").exists()


def test_refuses_non_empty_dest(tmp_path: Path) -> None:
    from suture.errors import LayerError

    (tmp_path / "f").write_text("x")
    with pytest.raises(LayerError):
        extract_image(make_image([Entry.file("a", b"1")]), tmp_path)
