from __future__ import annotations

import io

from suture.oci import mediatypes as mt
from suture.oci.fs import read_file
from suture.oci.image import walk_blobs
from suture.oci.layer import Entry, write_layer
from suture.oci.mutate import (
    AddedLayer,
    append_layers,
    drop_layers,
    replace_children,
    with_annotations,
    with_labels,
)
from tests.fixtures.images import make_image, make_index, sample_image


def _added(entries: list[Entry], compression: str = "gzip") -> AddedLayer:
    buf = io.BytesIO()
    info = write_layer(entries, buf, compression=compression)
    data = buf.getvalue()
    return AddedLayer(info, lambda: io.BytesIO(data), history={"created_by": "patch"})


def test_append_updates_config_and_keeps_base_bytes() -> None:
    base = sample_image()
    new = append_layers(base, [_added([Entry.file("etc/new", b"n")])],
                        created="2026-01-01T00:00:00Z")
    assert new.manifest.layers[:2] == base.manifest.layers
    assert new.diff_ids[:2] == base.diff_ids and len(new.diff_ids) == 3
    assert new.config["history"][-1] == {"created_by": "patch", "created": "2026-01-01T00:00:00Z"}
    assert new.config["created"] == "2026-01-01T00:00:00Z"
    assert read_file(new, "etc/new") == b"n" and read_file(new, "srv/upper") == b"upper one\n"
    # Base layer blobs are served from the base image's source, untouched.
    with base.layers[0].open_compressed() as a, new.layers[0].open_compressed() as b:
        assert a.read() == b.read()
    assert base.digest != new.digest


def test_docker_manifests_stay_docker() -> None:
    base = make_image([Entry.file("a", b"1")], docker=True)
    new = append_layers(base, [_added([Entry.file("b", b"2")])])
    assert new.media_type == mt.DOCKER_MANIFEST
    assert new.manifest.layers[-1].media_type == mt.DOCKER_LAYER_GZIP
    assert new.manifest.config.media_type == mt.DOCKER_CONFIG


def test_zstd_and_uncompressed_layers_read() -> None:
    image = make_image([Entry.file("a", b"zstd")], [Entry.file("b", b"plain")])
    image = append_layers(image, [_added([Entry.file("c", b"z")], "zstd"),
                                  _added([Entry.file("d", b"p")], "none")])
    assert [layer.compression for layer in image.layers] == ["gzip", "gzip", "zstd", "none"]
    assert read_file(image, "c") == b"z" and read_file(image, "d") == b"p"


def test_labels_annotations_and_drop() -> None:
    base = sample_image()
    new = append_layers(base, [_added([Entry.file("x", b"x")])])
    marked = with_annotations(with_labels(new, {"k": "v"}), {"a": "b"})
    assert marked.labels == {"k": "v"} and marked.manifest.annotations == {"a": "b"}
    assert with_labels(marked, {"k": None}).labels == {}
    dropped = drop_layers(marked, 2)
    assert dropped.manifest.layers == base.manifest.layers
    assert dropped.diff_ids == base.diff_ids
    assert len(dropped.config["history"]) == len(base.config["history"])


def test_same_change_same_digest() -> None:
    a = append_layers(sample_image(), [_added([Entry.file("x", b"x")])])
    b = append_layers(sample_image(), [_added([Entry.file("x", b"x")])])
    assert a.digest == b.digest


def test_replace_children_carries_others_over() -> None:
    amd, arm = sample_image("a"), sample_image("b", "linux/arm64")
    index = make_index(amd, arm)
    patched = append_layers(amd, [_added([Entry.file("p", b"p")])])
    new_index = replace_children(index, {amd.digest: patched})
    assert [d.digest for d in new_index.manifests] == [patched.digest, arm.digest]
    assert new_index.manifests[0].platform == index.manifests[0].platform
    written = {ref.descriptor.digest for ref in walk_blobs(new_index)}
    assert {patched.digest, arm.digest, new_index.digest} <= written
