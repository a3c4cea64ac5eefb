"""Extraction in a helper process: the same tree as in the foreground, verified bytes,
and nothing left behind whether it is finished, stopped early, broken or orphaned."""

from __future__ import annotations

import gc
import hashlib
import io
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from suture.errors import DigestMismatch, LayerError
from suture.oci.extract import Extraction, RootWriter, extract_image, resolve_in_root
from suture.oci.image import Image
from suture.oci.layer import DIR, FIFO, HARDLINK, SYMLINK, Entry, write_layer
from suture.oci.model import Platform
from suture.oci.mutate import AddedLayer, new_image
from tests.fixtures.images import make_image
from tests.oci.test_extract import IMAGE_LAYERS, _tree


def _helpers() -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if "suture.oci.extract import _serve" in line
            and str(os.getpid()) not in line.split()[0]]


def _wait_gone(path: Path, seconds: float = 10) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not path.exists():
            return True
        time.sleep(0.05)
    return not path.exists()


def test_background_tree_equals_the_foreground_one(tmp_path: Path) -> None:
    image = make_image(*IMAGE_LAYERS)
    fore = tmp_path / "fore"
    extract_image(image, fore)
    work = tmp_path / "work"
    work.mkdir()
    extraction = Extraction(image, work / "root", cleanup=work)
    try:
        writer = extraction.wait()
        assert _tree(work / "root") == _tree(fore)
        # The mirror knows every file's contents and every link, as on disk.
        for rel in ("etc/a", "var/x/3", "bin/sh", "bin/dash", "lib"):
            path = work / "root" / rel
            if path.is_symlink():
                assert writer.readlink(rel) == os.readlink(path)
            else:
                assert writer.digest(rel) == hashlib.sha256(path.read_bytes()).hexdigest()
        assert writer.digest("etc/b") is None and writer.digest("etc") is None
    finally:
        extraction.close()
    assert not work.exists()
    assert _helpers() == []


def test_the_writer_resolves_links_as_the_file_system_does(tmp_path: Path) -> None:
    image = make_image([
        Entry("usr/lib", DIR, 0o755), Entry("lib", SYMLINK, 0o777, linkname="usr/lib"),
        Entry("etc/up", SYMLINK, 0o777, linkname="/../../../tmp"),
        Entry("a/b", SYMLINK, 0o777, linkname="../lib/c"), Entry("loop", SYMLINK,
                                                                 linkname="loop"),
        Entry("usr/lib/c/d", DIR, 0o755), Entry("abs", SYMLINK, 0o777, linkname="/usr/lib/c"),
        Entry("p", FIFO, 0o644)])
    root = tmp_path / "r"
    writer = extract_image(image, root)
    for rel in ("lib/x", "etc/up/x", "a/b/d/e", "abs/d", "lib", "a/b", "usr/lib/c/d", "p",
                "missing/x/y", "abs/../../etc/up", ""):
        for follow in (False, True):
            ours = writer.resolve(rel, follow_last=follow)
            assert (root.joinpath(*ours.split("/")) if ours else root) == resolve_in_root(
                root, rel, follow_last=follow), (rel, follow)
    with pytest.raises(LayerError, match="too many levels"):
        writer.resolve("loop/x")


def test_entries_written_over_the_tree_are_hashed_on_demand(tmp_path: Path) -> None:
    writer = extract_image(make_image([Entry.file("etc/a", b"old"), Entry.file("etc/b", b"b")]),
                           tmp_path / "r", hashing=True)
    assert writer.digest("etc/a") == hashlib.sha256(b"old").hexdigest()
    writer.apply_entries([
        Entry.file("etc/a", b"new"), Entry("etc/c", HARDLINK, 0o644, linkname="etc/a"),
        Entry.whiteout("etc/b"),
        Entry("etc/s", data=lambda: io.BytesIO(b"streamed"), size=8)])
    assert (tmp_path / "r/etc/c").read_bytes() == b"new"
    assert writer.digest("etc/a") == writer.digest("etc/c") == hashlib.sha256(b"new").hexdigest()
    assert writer.digest("etc/s") == hashlib.sha256(b"streamed").hexdigest()
    assert writer.digest("etc/b") is None and not (tmp_path / "r/etc/b").exists()


def _big_image(mib: int) -> Image:
    return make_image([Entry.file("big", os.urandom(1 << 20) * mib)])


def test_close_while_writing_stops_and_removes_everything(tmp_path: Path) -> None:
    image = _big_image(256)
    work = tmp_path / "work"
    work.mkdir()
    extraction = Extraction(image, work / "root", cleanup=work)
    time.sleep(0.2)
    extraction.close()
    assert not work.exists()
    assert _helpers() == []
    for thread in threading.enumerate():
        if thread.name == "suture-extract-feed":
            thread.join(5)
            assert not thread.is_alive()


def _corrupt(entries: list[Entry]) -> Image:
    buf = io.BytesIO()
    info = write_layer(entries, buf, compression="gzip")
    data = bytearray(buf.getvalue())
    data[len(data) // 2] ^= 0xFF
    bad = AddedLayer(info, lambda: io.BytesIO(bytes(data)))
    return new_image([bad], Platform.parse("linux/amd64"))


def test_a_corrupt_layer_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    image = _corrupt([Entry.file(f"f{i}", os.urandom(4096)) for i in range(200)])
    work = tmp_path / "work"
    work.mkdir()
    extraction = Extraction(image, work / "root", cleanup=work)
    with pytest.raises((DigestMismatch, LayerError)):
        extraction.wait()
    extraction.close()
    assert not work.exists()


def test_the_helper_removes_the_tree_when_its_caller_dies(tmp_path: Path) -> None:
    work = tmp_path / "work"
    code = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from suture.oci.extract import Extraction
        from tests.oci.test_extract import IMAGE_LAYERS
        from tests.fixtures.images import make_image
        work = Path({str(work)!r})
        work.mkdir()
        extraction = Extraction(make_image(*IMAGE_LAYERS), work / "root", cleanup=work)
        extraction.wait()
        assert (work / "root" / "etc" / "a").exists()
        os._exit(0)  # no clean-up of its own
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert _wait_gone(work)


def test_a_writer_over_a_non_empty_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(LayerError, match="not empty"):
        RootWriter(tmp_path)


def test_a_dropped_script_root_is_removed(tmp_path: Path) -> None:
    from suture.patch.scripts import ScriptRoot

    root = ScriptRoot(make_image(*IMAGE_LAYERS), tmp_path)
    root.wait()
    assert list(tmp_path.iterdir())
    del root
    gc.collect()
    assert list(tmp_path.iterdir()) == []
    assert _helpers() == []


def test_without_a_helper_the_tree_is_written_in_this_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import suture.oci.extract as extract

    def no_helper(dest: Path, cleanup: Path) -> list[str]:
        raise OSError("no interpreter to run the extraction helper")

    monkeypatch.setattr(extract, "_helper_command", no_helper)
    image = make_image(*IMAGE_LAYERS)
    fore = tmp_path / "fore"
    extract_image(image, fore)
    work = tmp_path / "work"
    work.mkdir()
    extraction = Extraction(image, work / "root", cleanup=work)
    writer = extraction.wait()
    assert _tree(work / "root") == _tree(fore)
    assert writer.digest("etc/a") == hashlib.sha256(b"new").hexdigest()
    extraction.close()
    assert not work.exists()
