"""oci-archive and docker-archive: round trips, determinism, formats, errors."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
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
from suture.oci.image import BlobSource, Image, ImageIndex
from suture.oci.layer import Entry
from suture.oci.model import canonical_json
from suture.transports import open_artifact, write_artifact
from tests.fixtures.images import layer_tars, make_image, make_index, sample_image
from tests.fixtures.oci_tools import failing_image


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()



def make_tar(path: Path, members: dict[str, bytes | tuple[str, str]]) -> None:
    """A tar with files (bytes) and links (("sym"|"hard", target)), in the order given."""
    with tarfile.open(path, "w") as tar:
        for name, value in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(value, tuple):
                info.type = tarfile.SYMTYPE if value[0] == "sym" else tarfile.LNKTYPE
                info.linkname = value[1]
                tar.addfile(info)
            else:
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))


def docker_members(image: Image, *, style: str, tags: list[str],
                   gzip_layers: bool = False) -> dict[str, bytes | tuple[str, str]]:
    """The members of a docker save archive of ``image`` in one of its historic shapes."""
    members: dict[str, bytes | tuple[str, str]] = {}
    layer_names = []
    for i, data in enumerate(layer_tars(image)):
        if gzip_layers:
            data = gzip.compress(data, mtime=0)
        if style == "legacy":  # docker < 25: <id>/layer.tar
            name = f"{i:064x}/layer.tar"
        else:  # docker 25+: an OCI layout's blobs
            name = f"blobs/sha256/{hashlib.sha256(data).hexdigest()}"
        members[name] = data
        layer_names.append(name)
    config_hex = image.manifest.config.digest.split(":")[1]
    config_name = f"{config_hex}.json" if style == "legacy" else f"blobs/sha256/{config_hex}"
    members[config_name] = image.config_bytes
    members["manifest.json"] = json.dumps(
        [{"Config": config_name, "RepoTags": tags, "Layers": layer_names}]).encode()
    return members


@pytest.fixture
def two_platforms() -> ImageIndex:
    return make_index(sample_image("a", "linux/amd64"), sample_image("b", "linux/arm64"))


# --- oci-archive ----------------------------------------------------------------------


def test_oci_archive_round_trip(tmp_path: Path, image: Image, two_platforms: ImageIndex) -> None:
    for art in (image, two_platforms):
        path = tmp_path / f"{art.digest[7:19]}.tar"
        assert write_artifact(art, f"oci-archive:{path}:t") == art.digest
        back = open_artifact(f"oci-archive:{path}:t")
        assert type(back) is type(art)
        assert back.digest == art.digest and back.raw_manifest == art.raw_manifest
        assert open_artifact(f"oci-archive:{path}").digest == art.digest
    back = open_artifact(f"oci-archive:{tmp_path / (image.digest[7:19] + '.tar')}:t")
    assert isinstance(back, Image)
    assert layer_tars(back) == layer_tars(image)
    assert back.config_bytes == image.config_bytes
    path = tmp_path / f"{two_platforms.digest[7:19]}.tar"
    index = open_artifact(f"oci-archive:{path}")
    assert isinstance(index, ImageIndex)
    for desc in two_platforms.manifests:
        child = index.child(desc)
        assert isinstance(child, Image)
        assert layer_tars(child) == layer_tars(two_platforms.child(desc))  # type: ignore[arg-type]


def test_oci_archive_layout_members(tmp_path: Path, image: Image) -> None:
    path = tmp_path / "a.tar"
    write_artifact(image, f"oci-archive:{path}:t")
    with tarfile.open(path) as tar:
        infos = tar.getmembers()
    names = [i.name for i in infos]
    assert names[:2] == ["blobs", "blobs/sha256"]
    assert names[-2:] == ["index.json", "oci-layout"]
    assert names == sorted(names)
    assert {(i.mtime, i.uid, i.gid, i.uname, i.gname) for i in infos} == {(0, 0, 0, "", "")}


def test_oci_archive_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "a.tar"
    write_artifact(sample_image("one"), f"oci-archive:{path}:one")
    write_artifact(sample_image("two"), f"oci-archive:{path}:two")
    with pytest.raises(NotFound, match=r"no image tagged 'one'"):
        open_artifact(f"oci-archive:{path}:one")


def test_archives_are_deterministic(tmp_path: Path, image: Image,
                                    two_platforms: ImageIndex) -> None:
    for name, art, ref in (("o", image, "oci-archive:{}:t"), ("i", two_platforms,
                           "oci-archive:{}:t"), ("d", image, "docker-archive:{}:foo/bar:t")):
        first, second = tmp_path / f"{name}1.tar", tmp_path / f"{name}2.tar"
        write_artifact(art, ref.format(first))
        write_artifact(art, ref.format(second))
        assert first.read_bytes() == second.read_bytes()
    # The written image does not depend on how its layers were compressed.
    write_artifact(sample_image(), f"docker-archive:{tmp_path / 'd3.tar'}:foo/bar:t")
    assert (tmp_path / "d3.tar").read_bytes() == (tmp_path / "d1.tar").read_bytes()


def test_oci_archive_read_while_rewritten(tmp_path: Path, image: Image) -> None:
    path = tmp_path / "a.tar"
    write_artifact(image, f"oci-archive:{path}:t")
    back = open_artifact(f"oci-archive:{path}:t")
    write_artifact(sample_image("other"), f"oci-archive:{path}:t")  # renamed over it
    assert isinstance(back, Image) and layer_tars(back) == layer_tars(image)


def test_compressed_archive_file(tmp_path: Path, image: Image) -> None:
    plain = tmp_path / "a.tar"
    write_artifact(image, f"docker-archive:{plain}:foo/bar:t")
    packed = tmp_path / "a.tar.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    back = open_artifact(f"docker-archive:{packed}")
    assert isinstance(back, Image) and layer_tars(back) == layer_tars(image)


# --- docker-archive -------------------------------------------------------------------


def test_docker_archive_round_trip(tmp_path: Path, image: Image) -> None:
    path = tmp_path / "d.tar"
    digest = write_artifact(image, f"docker-archive:{path}:foo/bar:t")
    back = open_artifact(f"docker-archive:{path}:foo/bar:t")
    assert isinstance(back, Image)
    assert back.digest == digest
    assert back.media_type == mt.DOCKER_MANIFEST
    assert back.config_bytes == image.config_bytes
    assert back.diff_ids == image.diff_ids
    assert layer_tars(back) == layer_tars(image)
    # Stored uncompressed: each layer blob is its diff_id.
    assert [d.digest for d in back.manifest.layers] == image.diff_ids
    assert {d.media_type for d in back.manifest.layers} == {mt.DOCKER_LAYER_TAR}
    with tarfile.open(path) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        repositories = json.load(tar.extractfile("repositories"))  # type: ignore[arg-type]
    assert manifest[0]["RepoTags"] == ["foo/bar:t"]
    top = manifest[0]["Layers"][-1]
    assert top == image.diff_ids[-1].split(":")[1] + ".tar"
    assert list(repositories) == ["foo/bar"] and list(repositories["foo/bar"]) == ["t"]


def test_docker_schema2_image_round_trips(tmp_path: Path) -> None:
    image = sample_image(docker=True)
    assert image.media_type == mt.DOCKER_MANIFEST
    write_artifact(image, f"oci-archive:{tmp_path / 'o.tar'}:t")
    oci = open_artifact(f"oci-archive:{tmp_path / 'o.tar'}")
    assert oci.raw_manifest == image.raw_manifest
    write_artifact(oci, f"docker-archive:{tmp_path / 'd.tar'}:a:b")
    back = open_artifact(f"docker-archive:{tmp_path / 'd.tar'}:a:b")
    assert isinstance(back, Image) and layer_tars(back) == layer_tars(image)
    assert isinstance(back.source, BlobSource) and isinstance(oci.source, BlobSource)


def test_docker_archive_selection(tmp_path: Path) -> None:
    path = tmp_path / "d.tar"
    write_artifact(sample_image("one"), f"docker-archive:{path}:nginx:1.25")
    with tarfile.open(path) as tar:
        assert json.load(tar.extractfile("manifest.json"))[0][  # type: ignore[arg-type]
            "RepoTags"] == ["nginx:1.25"]
    one = open_artifact(f"docker-archive:{path}")
    for ref in ("nginx:1.25", "docker.io/library/nginx:1.25", "library/nginx:1.25"):
        assert open_artifact(f"docker-archive:{path}:{ref}").digest == one.digest
    assert open_artifact(f"docker-archive:{path}@{one.digest}").digest == one.digest
    with pytest.raises(NotFound, match=r"no image named docker.io/library/nginx:1.24 \(the "
                                       r"archive has: nginx:1.25\)"):
        open_artifact(f"docker-archive:{path}:nginx:1.24")
    with pytest.raises(NotFound):
        open_artifact(f"docker-archive:{path}@sha256:{'1' * 64}")


def test_docker_archive_with_several_images(tmp_path: Path) -> None:
    one, two = sample_image("one"), sample_image("two")
    members = docker_members(one, style="legacy", tags=["foo/one:t"])
    other = docker_members(two, style="oci", tags=["docker.io/foo/two:t"])
    manifest = json.loads(members.pop("manifest.json"))  # type: ignore[arg-type]
    manifest += json.loads(other.pop("manifest.json"))  # type: ignore[arg-type]
    members.update(other)
    members["manifest.json"] = json.dumps(manifest).encode()
    path = tmp_path / "d.tar"
    make_tar(path, members)
    with pytest.raises(UsageError, match=r"holds 2 images.*foo/one:t, docker.io/foo/two:t"):
        open_artifact(f"docker-archive:{path}")
    a = open_artifact(f"docker-archive:{path}:foo/one:t")
    b = open_artifact(f"docker-archive:{path}:foo/two:t")
    assert isinstance(a, Image) and isinstance(b, Image)
    assert layer_tars(a) == layer_tars(one) and layer_tars(b) == layer_tars(two)
    assert a.diff_ids == one.diff_ids and b.diff_ids == two.diff_ids


@pytest.mark.parametrize("style", ["legacy", "oci"])
def test_docker_archive_compressed_layers(tmp_path: Path, image: Image, style: str) -> None:
    members = docker_members(image, style=style, tags=["x:y"], gzip_layers=True)
    path = tmp_path / "d.tar"
    make_tar(path, members)
    back = open_artifact(f"docker-archive:{path}")
    assert isinstance(back, Image)
    assert {d.media_type for d in back.manifest.layers} == {mt.DOCKER_LAYER_GZIP}
    stored = [v for k, v in members.items() if "layer" in k or (
        k.startswith("blobs/") and v != image.config_bytes)]
    assert [d.digest for d in back.manifest.layers] == [sha(v) for v in stored]  # type: ignore[arg-type]
    assert layer_tars(back) == layer_tars(image)
    # Written back out, the layers are stored uncompressed again.
    out = tmp_path / "again.tar"
    write_artifact(back, f"docker-archive:{out}:x:y")
    again = open_artifact(f"docker-archive:{out}")
    assert isinstance(again, Image)
    assert [d.digest for d in again.manifest.layers] == image.diff_ids


def test_docker_archive_zstd_image(tmp_path: Path) -> None:
    zimg = make_image([Entry.file("a", b"alpha")], [Entry.file("b", b"beta" * 1000)],
                      compression="zstd")
    assert {d.media_type for d in zimg.manifest.layers} == {mt.OCI_LAYER_ZSTD}
    path = tmp_path / "z.tar"
    write_artifact(zimg, f"docker-archive:{path}:z:t")
    back = open_artifact(f"docker-archive:{path}")
    assert isinstance(back, Image)
    assert back.diff_ids == zimg.diff_ids and layer_tars(back) == layer_tars(zimg)
    assert [d.digest for d in back.manifest.layers] == zimg.diff_ids


def test_docker_archive_refuses_an_index(tmp_path: Path, two_platforms: ImageIndex) -> None:
    with pytest.raises(UsageError, match=r"multi-platform index") as exc:
        write_artifact(two_platforms, f"docker-archive:{tmp_path}/d.tar:a:b")
    assert exc.value.hint is not None and "--platform" in exc.value.hint
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("link", ["sym", "hard"])
def test_docker_archive_links_followed(tmp_path: Path, image: Image, link: str) -> None:
    # skopeo's shape: manifest.json names <id>/layer.tar, a link to ../<diff_id>.tar
    members = docker_members(image, style="legacy", tags=["x:y"])
    linked: dict[str, bytes | tuple[str, str]] = {}
    for name, value in members.items():
        if name.endswith("/layer.tar"):
            real = f"{sha(value)[7:]}.tar"  # type: ignore[arg-type]
            linked[real] = value
            linked[name] = ("sym", f"../{real}") if link == "sym" else ("hard", real)
        else:
            linked[name] = value
    path = tmp_path / "d.tar"
    make_tar(path, linked)
    back = open_artifact(f"docker-archive:{path}")
    assert isinstance(back, Image) and layer_tars(back) == layer_tars(image)


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["oci-archive", "docker-archive"])
def test_truncated_archive(tmp_path: Path, image: Image, transport: str) -> None:
    path = tmp_path / "a.tar"
    ref = f"{transport}:{path}:" + ("t" if transport == "oci-archive" else "foo/bar:t")
    write_artifact(image, ref)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) // 2 + 700, len(data) - 10240):
        path.write_bytes(data[:cut])
        with pytest.raises(TransportError, match=r"truncated|not a readable tar") as exc:
            open_artifact(ref)
        assert "\n" not in str(exc.value)


def test_not_a_tar(tmp_path: Path) -> None:
    path = tmp_path / "a.tar"
    path.write_bytes(b"hello" * 200)
    with pytest.raises(TransportError):
        open_artifact(f"oci-archive:{path}")
    with pytest.raises(NotFound, match=r"no such file"):
        open_artifact(f"oci-archive:{tmp_path}/missing.tar")


def test_oci_archive_missing_and_corrupt_blob(tmp_path: Path, image: Image) -> None:
    path = tmp_path / "a.tar"
    write_artifact(image, f"oci-archive:{path}:t")
    with tarfile.open(path) as tar:
        members = {m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                   for m in tar.getmembers() if m.isfile()}
    layer = image.manifest.layers[0].digest
    name = f"blobs/sha256/{layer[7:]}"
    damaged = dict(members)
    damaged[name] = bytes(b ^ 1 for b in members[name])
    make_tar(path, damaged)
    back = open_artifact(f"oci-archive:{path}:t")
    assert isinstance(back, Image)
    with pytest.raises(DigestMismatch), back.layers[0].open_compressed() as stream:
        stream.read()
    out = tmp_path / "out.tar"
    with pytest.raises(DigestMismatch):
        write_artifact(back, f"docker-archive:{out}:a:b")
    assert not out.exists()
    del damaged[name]
    make_tar(path, damaged)
    back = open_artifact(f"oci-archive:{path}:t")
    assert isinstance(back, Image)
    with pytest.raises(NotFound):
        back.layers[0].open_compressed()
    with pytest.raises(NotFound, match=r"no image tagged 'nope'"):
        open_artifact(f"oci-archive:{path}:nope")


def test_oci_archive_bad_index_and_media_type(tmp_path: Path, image: Image) -> None:
    path = tmp_path / "a.tar"
    blob = {f"blobs/sha256/{image.digest[7:]}": image.raw_manifest,
            "oci-layout": b'{"imageLayoutVersion":"1.0.0"}'}
    make_tar(path, {**blob, "index.json": b"[[["})
    with pytest.raises(ManifestError, match=r"index.json is not valid JSON"):
        open_artifact(f"oci-archive:{path}")
    entry = {"mediaType": "application/x-nope", "digest": image.digest,
             "size": len(image.raw_manifest)}
    make_tar(path, {**blob, "index.json": canonical_json(
        {"schemaVersion": 2, "manifests": [entry]})})
    with pytest.raises(UnsupportedMediaType):
        open_artifact(f"oci-archive:{path}")


def test_docker_archive_errors(tmp_path: Path, image: Image) -> None:
    path = tmp_path / "d.tar"
    members = docker_members(image, style="legacy", tags=["x:y"])
    first = next(k for k in members if k.endswith("layer.tar"))
    make_tar(path, {k: v for k, v in members.items() if k != first})
    with pytest.raises(NotFound, match=r"layer .* is missing"):
        open_artifact(f"docker-archive:{path}")
    bad = dict(members)
    bad[first] = b"\0" * len(members[first])
    make_tar(path, bad)
    back = open_artifact(f"docker-archive:{path}")
    assert isinstance(back, Image)
    with pytest.raises(DigestMismatch), back.layers[0].open_tar() as stream:
        stream.read()
    make_tar(path, {**members, "manifest.json": b"{"})
    with pytest.raises(ManifestError, match=r"manifest.json is not valid JSON"):
        open_artifact(f"docker-archive:{path}")
    escape = dict(members)
    escape[first] = ("sym", "../../etc/passwd")
    make_tar(path, escape)
    with pytest.raises(TransportError, match=r"outside the archive"):
        open_artifact(f"docker-archive:{path}")


def test_docker_archive_write_checks_diff_ids(tmp_path: Path, image: Image) -> None:
    # A config whose diff_id does not match the layer: refused, nothing written.
    from suture.oci.mutate import with_config

    config = json.loads(image.config_bytes)
    config["rootfs"]["diff_ids"][1] = "sha256:" + "2" * 64
    liar = with_config(image, config)
    out = tmp_path / "d.tar"
    with pytest.raises(DigestMismatch, match=r"diff_id"):
        write_artifact(liar, f"docker-archive:{out}:a:b")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("transport", ["oci-archive", "docker-archive"])
def test_failed_write_leaves_destination_alone(tmp_path: Path, transport: str) -> None:
    tag = "t" if transport == "oci-archive" else "a:t"
    new = tmp_path / "sub" / "new.tar"
    with pytest.raises(SutureError):
        write_artifact(failing_image(sample_image()), f"{transport}:{new}:{tag}")
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old.tar"
    write_artifact(sample_image("old"), f"{transport}:{old}:{tag}")
    before = old.read_bytes()
    for bad in (failing_image(sample_image()), failing_image(sample_image(), lying=True)):
        with pytest.raises(SutureError):
            write_artifact(bad, f"{transport}:{old}:{tag}")
        assert old.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["old.tar"]
