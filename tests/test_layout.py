"""OCI image layout (``oci:``) read and write: round trips, tags, atomicity, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from suture.errors import (
    DigestMismatch,
    ManifestError,
    NotFound,
    SutureError,
    TransportError,
    UnsupportedMediaType,
    UsageError,
)
from suture.oci import mediatypes as mt
from suture.oci.image import Image, ImageIndex
from suture.oci.layer import Entry
from suture.oci.mutate import append_layers
from suture.transports import open_artifact, write_artifact
from suture.transports.layout import REF_NAME, blob_path
from tests.fixtures.images import layer_from, make_image, make_index, sample_image
from tests.fixtures.oci_tools import failing_image, tree


def layer_bytes(image: Image) -> list[bytes]:
    out = []
    for layer in image.layers:
        with layer.open_compressed() as stream:
            out.append(stream.read())
    return out


def index_doc(layout: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((layout / "index.json").read_bytes())  # type: ignore[no-any-return]


def tags_of(layout: Path) -> list[str]:
    return [e.get("annotations", {}).get(REF_NAME) for e in index_doc(layout)["manifests"]]


def blob_files(layout: Path) -> set[str]:
    return {p.name for p in (layout / "blobs" / "sha256").iterdir()}


@pytest.fixture
def two_platforms() -> ImageIndex:
    return make_index(sample_image("a", "linux/amd64"), sample_image("b", "linux/arm64"))


def test_image_round_trip(tmp_path: Path, image: Image) -> None:
    layout = tmp_path / "lay"
    assert write_artifact(image, f"oci:{layout}:one") == image.digest
    back = open_artifact(f"oci:{layout}:one")
    assert isinstance(back, Image)
    assert back.digest == image.digest
    assert back.raw_manifest == image.raw_manifest
    assert back.config_bytes == image.config_bytes
    assert layer_bytes(back) == layer_bytes(image)
    assert back.diff_ids == image.diff_ids
    # The ref.name annotation names the entry, it is not part of the image's descriptor.
    assert REF_NAME not in back.descriptor.annotations
    assert (layout / "oci-layout").read_bytes() == b'{"imageLayoutVersion":"1.0.0"}'
    assert blob_files(layout) == {d.split(":")[1] for d in
                                  [image.digest, image.manifest.config.digest,
                                   *(x.digest for x in image.manifest.layers)]}


def test_index_round_trip(tmp_path: Path, two_platforms: ImageIndex) -> None:
    layout = tmp_path / "lay"
    assert write_artifact(two_platforms, f"oci:{layout}:multi") == two_platforms.digest
    entry = index_doc(layout)["manifests"][0]
    assert entry["mediaType"] == mt.OCI_INDEX
    assert entry["digest"] == two_platforms.digest
    assert entry["annotations"] == {REF_NAME: "multi"}
    back = open_artifact(f"oci:{layout}:multi")
    assert isinstance(back, ImageIndex)
    assert back.digest == two_platforms.digest
    for desc in two_platforms.manifests:
        child, orig = back.child(desc), two_platforms.child(desc)
        assert isinstance(child, Image) and isinstance(orig, Image)
        assert child.digest == orig.digest
        assert layer_bytes(child) == layer_bytes(orig)
    # A child is also reachable by its digest (it is a blob, not an index.json entry).
    arm = two_platforms.manifests[1]
    child = open_artifact(f"oci:{layout}@{arm.digest}")
    assert isinstance(child, Image) and child.digest == arm.digest


def test_tags_share_blobs_and_replace_only_their_entry(tmp_path: Path) -> None:
    layout = tmp_path / "lay"
    one = sample_image("one")
    # An image built on top of ``one`` shares its two layers.
    two = append_layers(one, [layer_from([Entry.file("srv/two", b"2")])])
    write_artifact(one, f"oci:{layout}:one")
    count_one = len(blob_files(layout))
    write_artifact(two, f"oci:{layout}:two")
    assert len(blob_files(layout)) == count_one + 3  # one new layer, config and manifest
    write_artifact(one, f"oci:{layout}:also-one")
    assert len(blob_files(layout)) == count_one + 3
    assert tags_of(layout) == ["one", "two", "also-one"]
    # Replacing "two" with another image keeps its position and every other entry.
    three = sample_image("three")
    write_artifact(three, f"oci:{layout}:two")
    doc = index_doc(layout)
    assert tags_of(layout) == ["one", "two", "also-one"]
    assert [e["digest"] for e in doc["manifests"]] == [one.digest, three.digest, one.digest]
    assert open_artifact(f"oci:{layout}:one").digest == one.digest
    assert open_artifact(f"oci:{layout}:two").digest == three.digest
    assert open_artifact(f"oci:{layout}:also-one").digest == one.digest


def test_existing_blob_is_not_rewritten(tmp_path: Path, image: Image) -> None:
    layout = tmp_path / "lay"
    write_artifact(image, f"oci:{layout}:a")
    blob = layout / blob_path(image.manifest.layers[0].digest)
    before = blob.stat()
    write_artifact(image, f"oci:{layout}:b")
    after = blob.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_writes_are_deterministic(tmp_path: Path, image: Image,
                                  two_platforms: ImageIndex) -> None:
    for art, tag in ((image, "x"), (two_platforms, "y")):
        write_artifact(art, f"oci:{tmp_path / 'a'}:{tag}")
        write_artifact(art, f"oci:{tmp_path / 'b'}:{tag}")
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    before = (tmp_path / "a" / "index.json").read_bytes()
    write_artifact(image, f"oci:{tmp_path / 'a'}:x")
    assert (tmp_path / "a" / "index.json").read_bytes() == before


def test_selection_without_tag(tmp_path: Path) -> None:
    layout = tmp_path / "lay"
    one = sample_image("one")
    write_artifact(one, f"oci:{layout}")  # untagged entry
    assert tags_of(layout) == [None]
    assert open_artifact(f"oci:{layout}").digest == one.digest
    write_artifact(one, f"oci:{layout}")  # the same untagged image is not added twice
    assert len(index_doc(layout)["manifests"]) == 1
    write_artifact(sample_image("two"), f"oci:{layout}:two")
    with pytest.raises(UsageError, match=r"holds 2 images.*two"):
        open_artifact(f"oci:{layout}")
    assert open_artifact(f"oci:{layout}@{one.digest}").digest == one.digest
    with pytest.raises(NotFound, match=r"no image tagged 'two' with digest"):
        open_artifact(f"oci:{layout}:two@{one.digest}")


def test_write_to_another_digest_is_refused(tmp_path: Path, image: Image) -> None:
    with pytest.raises(UsageError):
        write_artifact(image, f"oci:{tmp_path / 'x'}@sha256:{'0' * 64}")
    assert not (tmp_path / "x").exists()


def test_new_layout_parents_are_created(tmp_path: Path, image: Image) -> None:
    layout = tmp_path / "deep" / "er" / "lay"
    write_artifact(image, f"oci:{layout}:t")
    assert open_artifact(f"oci:{layout}:t").digest == image.digest


def test_write_into_empty_existing_dir(tmp_path: Path, image: Image) -> None:
    layout = tmp_path / "lay"
    layout.mkdir()
    write_artifact(image, f"oci:{layout}:t")
    assert open_artifact(f"oci:{layout}:t").digest == image.digest
    assert not [p for p in tmp_path.iterdir() if p.name != "lay"]


# --- errors --------------------------------------------------------------------------


def test_missing_tag(tmp_path: Path, image: Image) -> None:
    write_artifact(image, f"oci:{tmp_path}/lay:one")
    with pytest.raises(NotFound, match=r"no image tagged 'nope' \(the layout has: one\)"):
        open_artifact(f"oci:{tmp_path}/lay:nope")


def test_missing_layout(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"no such directory"):
        open_artifact(f"oci:{tmp_path}/nothing:t")
    (tmp_path / "plain").mkdir()
    with pytest.raises(TransportError, match=r"not an OCI image layout"):
        open_artifact(f"oci:{tmp_path}/plain:t")


def test_missing_blobs(tmp_path: Path, image: Image) -> None:
    layout = tmp_path / "lay"
    write_artifact(image, f"oci:{layout}:one")
    (layout / blob_path(image.manifest.layers[1].digest)).unlink()
    back = open_artifact(f"oci:{layout}:one")  # lazy: only the manifest is read
    assert isinstance(back, Image)
    with pytest.raises(NotFound, match=r"no blobs/sha256/"):
        back.layers[1].open_compressed()
    (layout / blob_path(image.digest)).unlink()
    with pytest.raises(NotFound, match=r"is missing from blobs/"):
        open_artifact(f"oci:{layout}:one")


def test_corrupt_blob(tmp_path: Path, image: Image) -> None:
    layout = tmp_path / "lay"
    write_artifact(image, f"oci:{layout}:one")
    blob = layout / blob_path(image.manifest.layers[0].digest)
    data = bytearray(blob.read_bytes())
    data[-20] ^= 0xFF
    blob.write_bytes(bytes(data))
    back = open_artifact(f"oci:{layout}:one")
    assert isinstance(back, Image)
    with back.layers[0].open_compressed() as stream, pytest.raises(DigestMismatch) as exc:
        stream.read()
    assert exc.value.expected == image.manifest.layers[0].digest
    # Reading through it to another layout fails and writes nothing there.
    with pytest.raises(DigestMismatch):
        write_artifact(back, f"oci:{tmp_path}/copy:one")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lay"]


def test_index_json_not_json(tmp_path: Path, image: Image) -> None:
    layout = tmp_path / "lay"
    write_artifact(image, f"oci:{layout}:one")
    (layout / "index.json").write_bytes(b"{not json")
    with pytest.raises(ManifestError, match=r"index.json is not valid JSON"):
        open_artifact(f"oci:{layout}:one")
    # A write refuses to replace an index.json it cannot read (it may name other images).
    before = tree(layout)
    with pytest.raises(ManifestError):
        write_artifact(sample_image("two"), f"oci:{layout}:two")
    assert tree(layout) == before


def test_unknown_media_type(tmp_path: Path, image: Image) -> None:
    layout = tmp_path / "lay"
    write_artifact(image, f"oci:{layout}:one")
    doc = index_doc(layout)
    doc["manifests"][0]["mediaType"] = "application/vnd.example.thing+json"
    (layout / "index.json").write_text(json.dumps(doc))
    with pytest.raises(UnsupportedMediaType) as exc:
        open_artifact(f"oci:{layout}:one")
    assert exc.value.media_type == "application/vnd.example.thing+json"


def test_error_messages_are_one_line(tmp_path: Path, image: Image) -> None:
    write_artifact(image, f"oci:{tmp_path}/lay:one")
    for ref in (f"oci:{tmp_path}/lay:nope", f"oci:{tmp_path}/none:x"):
        with pytest.raises(SutureError) as exc:
            open_artifact(ref)
        assert "\n" not in str(exc.value)


def test_failed_write_leaves_no_new_layout(tmp_path: Path, image: Image) -> None:
    dest = tmp_path / "out" / "lay"
    with pytest.raises(TransportError, match=r"connection dropped"):
        write_artifact(failing_image(image), f"oci:{dest}:t")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DigestMismatch):
        write_artifact(failing_image(image, lying=True), f"oci:{dest}:t")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_existing_layout_unchanged(tmp_path: Path) -> None:
    layout = tmp_path / "lay"
    write_artifact(sample_image("one"), f"oci:{layout}:one")
    before = tree(layout)
    other = make_image([], [], platform="linux/arm64")  # new blobs, to be undone
    for bad in (failing_image(sample_image("two")), failing_image(other, lying=True)):
        with pytest.raises(SutureError):
            write_artifact(bad, f"oci:{layout}:one")
        assert tree(layout) == before
        assert open_artifact(f"oci:{layout}:one").digest == sample_image("one").digest


def test_refuses_non_layout_dir(tmp_path: Path, image: Image) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "file").write_text("mine")
    with pytest.raises(TransportError, match=r"not an OCI image layout"):
        write_artifact(image, f"oci:{tmp_path}/d:t")
    assert os.listdir(tmp_path / "d") == ["file"]
