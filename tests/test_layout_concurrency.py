"""Several processes writing into one OCI layout lose none of each other's updates
(the probe's D3), and a failing writer's undo never removes a blob another writer
names.

Each writer is a real ``python`` process calling suture's layout writer. The
interleavings that lose updates are forced, not hoped for: a writer's layer blob
comes from a stream that, when opened, waits at a rendezvous (files in a directory)
until the other writers have reached theirs too, or until the test says go. A
writer reads ``index.json`` before it writes blobs, so every writer has read it
before any of them replaces it. The waits are bounded only as a safety net.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from suture.oci.image import Image
from suture.transports import open_artifact, write_artifact
from tests.fixtures.images import layer_tars, sample_image

# argv: sync dir, writer name, destination ref, then layers as "CONTENT:WAIT_FOR:ANNOUNCE"
# (WAIT_FOR: files in the sync dir to wait for before the blob is served, "+"-separated;
# "*N" waits for N "arrived-*" files; ANNOUNCE: a file made when the blob is asked for;
# CONTENT "bad" serves bytes that do not match the layer's digest).
WRITER = r'''
import io, sys, time
from pathlib import Path
from suture.oci.layer import Entry, write_layer
from suture.oci.model import Platform
from suture.oci.mutate import AddedLayer, new_image
from suture.transports import write_artifact

sync, name, dest = Path(sys.argv[1]), sys.argv[2], sys.argv[3]

def ready(wait):
    if wait.startswith("*"):
        return len(list(sync.glob("arrived-*"))) >= int(wait[1:])
    return all((sync / w).exists() for w in wait.split("+") if w)

def layer(spec):
    content, wait, announce = spec.split(":")
    buf = io.BytesIO()
    info = write_layer([Entry.file("srv/content", content.encode())], buf)
    data = buf.getvalue()
    def opener():
        if announce:
            (sync / announce).touch()
        for _ in range(6000):  # a safety bound (60 s), not a timing assumption
            if ready(wait):
                break
            time.sleep(0.01)
        else:
            sys.exit(f"{name}: gave up waiting for {wait}")
        return io.BytesIO(b"x" * len(data) if content == "bad" else data)
    return AddedLayer(info, opener, history={"created_by": name})

image = new_image([layer(s) for s in sys.argv[4:]], Platform.parse("linux/amd64"))
print(write_artifact(image, dest))
'''


def _writer(sync: Path, name: str, dest: str, *layers: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(sync), name, dest, *layers],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    for _ in range(6000):
        if path.exists():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError(f"{path.name} never appeared")


def _tags(layout: Path) -> dict[str, str]:
    index = json.loads((layout / "index.json").read_text())
    return {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
            for m in index["manifests"]}


def _read_whole(ref: str) -> list[bytes]:
    """Every layer of the image ``ref`` names, each verified against its digest."""
    image = open_artifact(ref)
    assert isinstance(image, Image)
    return layer_tars(image)


def _layout(tmp_path: Path) -> Path:
    layout = tmp_path / "layout"
    write_artifact(sample_image("base"), f"oci:{layout}:base")
    return layout


def test_concurrent_writers_keep_every_tag(tmp_path: Path) -> None:
    layout, sync = _layout(tmp_path), tmp_path / "sync"
    sync.mkdir()
    n = 6
    procs = [_writer(sync, f"w{i}", f"oci:{layout}:t{i}", f"writer {i}:*{n}:arrived-{i}")
             for i in range(n)]
    results = [_finish(p) for p in procs]
    for r in results:
        assert r.returncode == 0, r.stderr
    tags = _tags(layout)
    assert set(tags) == {"base", *(f"t{i}" for i in range(n))}
    for i, r in enumerate(results):
        assert tags[f"t{i}"] == r.stdout.strip()
        [tar] = _read_whole(f"oci:{layout}:t{i}")
        assert f"writer {i}".encode() in tar
    assert len(_read_whole(f"oci:{layout}:base")) == 2


def test_concurrent_writers_creating_one_layout_keep_every_tag(tmp_path: Path) -> None:
    layout, sync = tmp_path / "new-layout", tmp_path / "sync"
    sync.mkdir()
    n = 4
    procs = [_writer(sync, f"w{i}", f"oci:{layout}:t{i}", f"writer {i}:*{n}:arrived-{i}")
             for i in range(n)]
    results = [_finish(p) for p in procs]
    for r in results:
        assert r.returncode == 0, r.stderr
    assert set(_tags(layout)) == {f"t{i}" for i in range(n)}
    for i in range(n):
        assert f"writer {i}".encode() in _read_whole(f"oci:{layout}:t{i}")[0]


def test_a_failing_writer_keeps_a_blob_another_writer_named(tmp_path: Path) -> None:
    """A writes blob X, then fails on its next blob after B, finding X there, has
    named X in index.json: A's undo must leave X."""
    layout, sync = _layout(tmp_path), tmp_path / "sync"
    sync.mkdir()
    a = _writer(sync, "a", f"oci:{layout}:a", "shared::", "bad:b-done:a-at-bad")
    _wait_for(sync / "a-at-bad", a)  # X is in blobs/, A waits
    b = _finish(_writer(sync, "b", f"oci:{layout}:b", "shared::"))
    assert b.returncode == 0, b.stderr
    (sync / "b-done").touch()
    a_result = _finish(a)
    assert a_result.returncode != 0 and "DigestMismatch" in a_result.stderr, a_result.stderr
    assert set(_tags(layout)) == {"base", "b"}
    [tar] = _read_whole(f"oci:{layout}:b")
    assert b"shared" in tar


def test_a_blob_removed_by_a_failing_writer_is_written_again(tmp_path: Path) -> None:
    """B finds A's blob X there and skips it; A then fails and removes X before B
    names it: B must write X again before naming it in index.json."""
    layout, sync = _layout(tmp_path), tmp_path / "sync"
    sync.mkdir()
    a = _writer(sync, "a", f"oci:{layout}:a", "shared::", "bad:b-at-z:a-at-bad")
    _wait_for(sync / "a-at-bad", a)  # X is in blobs/
    b = _writer(sync, "b", f"oci:{layout}:b", "shared::", "own:a-gone:b-at-z")
    a_result = _finish(a)  # A fails once B has passed X, and undoes its blobs
    assert a_result.returncode != 0 and "DigestMismatch" in a_result.stderr, a_result.stderr
    (sync / "a-gone").touch()
    b_result = _finish(b)
    assert b_result.returncode == 0, b_result.stderr
    assert set(_tags(layout)) == {"base", "b"}
    tars = _read_whole(f"oci:{layout}:b")
    assert b"shared" in tars[0] and b"own" in tars[1]
