"""The kept merged views and patch layers (suture.patch.results): a second patch of the
same image to the same packages reuses the layer and gives the same image; a fix
published since is not hidden; a damaged entry is rebuilt; turning the cache off
changes no byte.

Images and the signed apk repository on 127.0.0.1 are test_patch_apk.py's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from suture.progress import Event
from tests.fixtures.aptrepo import AptRepo, GpgKeys
from tests.fixtures.patchimages import suture
from tests.test_patch_apk import HELLO3, V2, Scene, _image, _ok, _package_requests, _versions
from tests.test_patch_apk import alpine as alpine  # the fixture
from tests.test_patch_local import SECURITY, _scene, _updates
from tests.test_patch_local import _ok as _ok_cli

REUSED = "the patch layer for this plan was made before: reused"


def _patch(scene: Scene, ref: str, tag: str, **kw: Any) -> tuple[dict[str, Any], list[str]]:
    said: list[str] = []

    def progress(event: Event) -> None:
        if event.message:
            said.append(event.message)

    result = scene.patch(ref, tag, progress=progress, **kw)
    return _ok(result) | {"target": result.target_digest}, said


def _comparable(platform: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in platform.items() if k != "message"}


def test_the_same_image_and_packages_reuse_the_layer(alpine: Scene) -> None:
    ref = alpine.image("v1")
    first, said = _patch(alpine, ref, "a")
    assert REUSED not in said
    fetched = _package_requests(alpine)
    assert len(fetched) == 3
    second, said = _patch(alpine, ref, "b")
    assert REUSED in said
    assert not any(m.startswith("unpacking") for m in said)
    # Same image, same result document (updates, scripts, notes, layer digests).
    assert _comparable(second) == _comparable(first)
    assert second["target"] == first["target"]
    assert _package_requests(alpine) == fetched  # nothing downloaded again
    assert _versions(_image(alpine.layout, "b"))["hello"] == "1.1-r0"
    # With the cache off the layer is built again, to the same bytes.
    third, said = _patch(alpine, ref, "c", result_cache=False)
    assert REUSED not in said and any(m.startswith("unpacking") for m in said)
    assert third["target"] == first["target"]


def test_a_fix_published_since_is_not_hidden(alpine: Scene) -> None:
    ref = alpine.image("v1")
    first, _ = _patch(alpine, ref, "a")
    alpine.publish([*V2, HELLO3])
    second, said = _patch(alpine, ref, "b")
    assert REUSED not in said
    assert second["target"] != first["target"]
    assert _versions(_image(alpine.layout, "b"))["hello"] == "1.2-r0"
    # Each plan has its own entry.
    assert len(list((alpine.tmp / "cache" / "results").glob("[0-9a-f]*"))) == 2


def test_other_options_are_other_layers(alpine: Scene) -> None:
    ref = alpine.image("v1")
    gzip, _ = _patch(alpine, ref, "a")
    zstd, said = _patch(alpine, ref, "b", compression="zstd")
    assert REUSED not in said
    assert zstd["layer"]["digest"] != gzip["layer"]["digest"]
    assert zstd["layer"]["diffID"] == gzip["layer"]["diffID"]
    again, said = _patch(alpine, ref, "c", compression="zstd")
    assert REUSED in said and again["target"] == zstd["target"]


def test_damaged_entries_are_rebuilt(alpine: Scene) -> None:
    ref = alpine.image("v1")
    first, _ = _patch(alpine, ref, "a")
    cache = alpine.tmp / "cache"
    (kept,) = [p for p in (cache / "results").iterdir() if not p.name.startswith(".")]
    blob = kept / "layer"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.unlink()  # a hard link to the run's own file: write a new one
    blob.write_bytes(bytes(data))
    (tree,) = list((cache / "trees").iterdir())
    (tree / "index.json").write_text("{not json")
    second, said = _patch(alpine, ref, "b")
    assert REUSED not in said  # the damaged layer was not served
    assert second["target"] == first["target"]
    # Both entries were written again, whole.
    third, said = _patch(alpine, ref, "c")
    assert REUSED in said and third["target"] == first["target"]
    assert json.loads((tree / "index.json").read_text())["format"] == 1


def test_cli_no_result_cache(alpine: Scene) -> None:
    ref = alpine.image("v1")
    common = ["--cache-dir", str(alpine.tmp / "cache"), "--sandbox", "none",
              "--mirror", f"{alpine.upstream}={alpine.server.sub('main')}",
              "--allow-private-repos", "127.0.0.1", "--progress", "json"]
    runs = []
    for tag, extra in (("a", []), ("b", []), ("c", ["--no-result-cache"])):
        result = alpine.tmp / f"{tag}.json"
        proc = suture("patch", "-i", ref, "--dest", f"oci:{alpine.layout}:{tag}", "--result",
                      str(result), *common, *extra)
        assert proc.returncode == 0, proc.stderr
        runs.append((json.loads(result.read_text()), REUSED in proc.stderr))
    assert [reused for _, reused in runs] == [False, True, False]
    digests = {r["platforms"][0]["digest"] for r, _ in runs}
    assert len(digests) == 1


def test_no_half_written_entries_are_left(alpine: Scene) -> None:
    ref = alpine.image("v1")
    _patch(alpine, ref, "a")
    cache = alpine.tmp / "cache"
    leftovers = [p for top in ("results", "trees") for p in (cache / top).iterdir()
                 if p.name.startswith(".")]
    assert leftovers == []


# ------------------------------------------------------------------ dpkg index cuts

def test_the_kept_index_cut_follows_the_archive(apt_repo: AptRepo, gpg_keys: GpgKeys,
                                                tmp_path: Path) -> None:
    """The Packages stanzas an image's packages can reach are kept by the indexes'
    SHA-256 (from the verified Release) and the installed names: a second plan of the
    same image reads them from the cache, a newly published version changes the index
    and so the cut, and a damaged entry is only a miss."""
    scene = _scene(apt_repo, gpg_keys, tmp_path)
    ref = scene.image("v1")
    _doc, first = _ok_cli(*scene.patch(ref, "--dest", f"oci:{scene.layout}:p1"))
    derived = tmp_path / "cache" / "derived"
    [kept] = [p for p in derived.iterdir() if not p.name.startswith(".")]
    assert b"Package: c" in kept.read_bytes()
    _doc, again = _ok_cli(*scene.patch(ref, "--dest", f"oci:{scene.layout}:p2",
                                   "--no-result-cache"))
    assert again["digest"] == first["digest"]
    assert [p.name for p in derived.iterdir() if not p.name.startswith(".")] == [kept.name]
    scene.archive.add(SECURITY, "c", "3.0-1")
    scene.archive.publish()
    _doc, newer = _ok_cli(*scene.patch(ref, "--dest", f"oci:{scene.layout}:p3"))
    assert _updates(newer)["c"][1] == "3.0-1"
    assert len([p for p in derived.iterdir() if not p.name.startswith(".")]) == 2
    for entry in derived.iterdir():
        entry.write_bytes(entry.read_bytes()[:20])  # truncated
    _doc, damaged = _ok_cli(*scene.patch(ref, "--dest", f"oci:{scene.layout}:p4",
                                     "--no-result-cache"))
    assert damaged["digest"] == newer["digest"]


def test_eviction_drops_the_least_recently_used_entries_never_the_new_one(tmp_path: Path) -> None:
    """The kept trees and results are directories, the derived cuts files: one
    eviction drops the oldest of either until the limit holds, and never the entry
    just stored, even when it alone is over the limit."""
    from suture.patch.results import _evict

    top = tmp_path / "cache"
    top.mkdir()
    for age, name in enumerate(["old-dir", "mid-file", "new-dir"]):
        path = top / name
        if name.endswith("dir"):
            path.mkdir()
            (path / "blob").write_bytes(b"x" * 100)
        else:
            path.write_bytes(b"x" * 100)
        os.utime(path, (1000 + age, 1000 + age))
    (top / ".tmp-in-progress").write_bytes(b"x" * 1000)  # a store under way: not counted
    _evict(top, 200, keep=top / "new-dir")
    assert sorted(p.name for p in top.iterdir()) == [".tmp-in-progress", "mid-file", "new-dir"]
    _evict(top, 50, keep=top / "new-dir")
    assert sorted(p.name for p in top.iterdir()) == [".tmp-in-progress", "new-dir"]
