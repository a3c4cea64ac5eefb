"""What suture writes, skopeo and umoci read; what they write, suture reads, same digests."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from suture.oci import mediatypes as mt
from suture.oci.image import Image, ImageIndex
from suture.transports import open_artifact, write_artifact
from tests.fixtures.images import layer_tars, make_index, sample_image
from tests.fixtures.oci_tools import Runner, sha256_of, skopeo_inspect, tree

pytestmark = pytest.mark.tools

ROOTFS_ONE = {
    "etc/os-release": b'ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n',
    "var/lib/dpkg/status": b"Package: base-files\nStatus: install ok installed\n"
                           b"Version: 12.4\nArchitecture: amd64\n",
    "srv/upper": b"upper one\n",
}



def check_rootfs(rootfs: Path, expected: dict[str, bytes]) -> None:
    files = {k: v for k, v in tree(rootfs).items() if v is not None}
    assert files == expected
    assert not (rootfs / "srv" / "marker").exists()  # the upper layer's whiteout applied
    assert not any(".wh." in p for p in tree(rootfs))


def test_skopeo_and_umoci_read_our_layout(tmp_path: Path, skopeo_cli: Runner,
                                          umoci_cli: Runner, image: Image) -> None:
    layout = tmp_path / "lay"
    write_artifact(image, f"oci:{layout}:one")
    write_artifact(sample_image("two"), f"oci:{layout}:two")
    info = skopeo_inspect(skopeo_cli, f"oci:{layout}:one")
    assert info["Digest"] == image.digest
    assert info["Layers"] == [d.digest for d in image.manifest.layers]
    assert sha256_of(skopeo_inspect(skopeo_cli, f"oci:{layout}:one", raw=True)) == image.digest
    skopeo_cli("copy", "-q", f"oci:{layout}:one", f"oci:{tmp_path / 'other'}:one")
    copied = open_artifact(f"oci:{tmp_path / 'other'}:one")
    assert copied.digest == image.digest
    umoci_cli("unpack", "--rootless", "--image", f"{layout}:one", tmp_path / "bundle")
    check_rootfs(tmp_path / "bundle" / "rootfs", ROOTFS_ONE)


def test_skopeo_reads_our_index(tmp_path: Path, skopeo_cli: Runner) -> None:
    index = make_index(sample_image("a", "linux/amd64"), sample_image("b", "linux/arm64"))
    layout = tmp_path / "lay"
    write_artifact(index, f"oci:{layout}:multi")
    raw = skopeo_inspect(skopeo_cli, f"oci:{layout}:multi", raw=True)
    assert raw == index.raw_manifest
    # skopeo copies every platform and writes the same index.
    skopeo_cli("copy", "-q", "--all", f"oci:{layout}:multi", f"oci:{tmp_path / 'b'}:m")
    back = open_artifact(f"oci:{tmp_path / 'b'}:m")
    assert isinstance(back, ImageIndex) and back.digest == index.digest
    arm = back.child(index.manifests[1])
    assert isinstance(arm, Image) and arm.platform is not None
    assert arm.platform.architecture == "arm64"
    info = json.loads(skopeo_cli("--override-arch", "arm64", "inspect",
                                 f"oci:{layout}:multi").stdout)
    # skopeo reports the index's digest and the chosen platform's layers.
    assert info["Digest"] == index.digest and info["Architecture"] == "arm64"
    assert info["Layers"] == [d.digest for d in arm.manifest.layers]
    # And from an oci-archive.
    write_artifact(index, f"oci-archive:{tmp_path / 'm.tar'}:multi")
    assert skopeo_inspect(skopeo_cli, f"oci-archive:{tmp_path / 'm.tar'}:multi",
                          raw=True) == index.raw_manifest


def test_skopeo_reads_our_oci_archive(tmp_path: Path, skopeo_cli: Runner, image: Image) -> None:
    path = tmp_path / "a.tar"
    write_artifact(image, f"oci-archive:{path}:one")
    assert skopeo_inspect(skopeo_cli, f"oci-archive:{path}:one")["Digest"] == image.digest
    skopeo_cli("copy", "-q", f"oci-archive:{path}:one", f"oci:{tmp_path / 'lay'}:x")
    assert open_artifact(f"oci:{tmp_path / 'lay'}:x").digest == image.digest


def test_skopeo_and_umoci_read_our_docker_archive(tmp_path: Path, skopeo_cli: Runner,
                                                  umoci_cli: Runner, image: Image) -> None:
    path = tmp_path / "d.tar"
    digest = write_artifact(image, f"docker-archive:{path}:foo/bar:t")
    raw = skopeo_inspect(skopeo_cli, f"docker-archive:{path}", raw=True)
    theirs = json.loads(raw)
    ours = open_artifact(f"docker-archive:{path}")
    assert ours.digest == digest
    assert isinstance(ours, Image)
    # The same config and layer blobs (digests and sizes); skopeo labels them tar.gzip.
    assert theirs["config"]["digest"] == image.manifest.config.digest
    assert [(x["digest"], x["size"]) for x in theirs["layers"]] == [
        (d.digest, d.size) for d in ours.manifest.layers]
    assert [x["digest"] for x in theirs["layers"]] == image.diff_ids
    assert {x["mediaType"] for x in theirs["layers"]} == {mt.DOCKER_LAYER_GZIP}
    info = skopeo_inspect(skopeo_cli, f"docker-archive:{path}:foo/bar:t")
    assert info["Layers"] == image.diff_ids
    skopeo_cli("copy", "-q", f"docker-archive:{path}:foo/bar:t", f"oci:{tmp_path / 'lay'}:x")
    umoci_cli("unpack", "--rootless", "--image", f"{tmp_path / 'lay'}:x", tmp_path / "bundle")
    check_rootfs(tmp_path / "bundle" / "rootfs", ROOTFS_ONE)


def test_we_read_skopeo_docker_archive(tmp_path: Path, skopeo_cli: Runner,
                                       image: Image) -> None:
    layout = tmp_path / "lay"
    write_artifact(image, f"oci:{layout}:t")
    path = tmp_path / "d.tar"
    skopeo_cli("copy", "-q", f"oci:{layout}:t", f"docker-archive:{path}:foo/bar:t")
    theirs = json.loads(skopeo_inspect(skopeo_cli, f"docker-archive:{path}", raw=True))
    for ref in (f"docker-archive:{path}", f"docker-archive:{path}:foo/bar:t",
                f"docker-archive:{path}:docker.io/foo/bar:t"):
        ours = open_artifact(ref)
        assert isinstance(ours, Image)
        assert ours.manifest.config.digest == theirs["config"]["digest"]
        assert [(d.digest, d.size) for d in ours.manifest.layers] == [
            (x["digest"], x["size"]) for x in theirs["layers"]]
        assert ours.diff_ids == image.diff_ids
        assert layer_tars(ours) == layer_tars(image)


def test_we_read_skopeo_oci_archive(tmp_path: Path, skopeo_cli: Runner, image: Image) -> None:
    layout = tmp_path / "lay"
    write_artifact(image, f"oci:{layout}:t")
    path = tmp_path / "a.tar"
    skopeo_cli("copy", "-q", f"oci:{layout}:t", f"oci-archive:{path}:t")
    expected = skopeo_inspect(skopeo_cli, f"oci-archive:{path}:t")["Digest"]
    back = open_artifact(f"oci-archive:{path}:t")
    assert back.digest == expected == image.digest
    assert isinstance(back, Image) and layer_tars(back) == layer_tars(image)


def test_we_read_umoci_layout(tmp_path: Path, skopeo_cli: Runner, umoci_cli: Runner) -> None:
    layout = tmp_path / "lay"
    umoci_cli("init", "--layout", layout)
    umoci_cli("new", "--image", f"{layout}:t")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "hello").write_bytes(b"hello from umoci\n")
    umoci_cli("insert", "--rootless", "--image", f"{layout}:t", src / "sub", "/opt/sub")
    expected = skopeo_inspect(skopeo_cli, f"oci:{layout}:t")
    back = open_artifact(f"oci:{layout}:t")
    assert isinstance(back, Image)
    assert back.digest == expected["Digest"]
    assert [d.digest for d in back.manifest.layers] == expected["Layers"]
    (data,) = layer_tars(back)  # verified against the diff_id umoci recorded
    files = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
        try:
            for member in tar:
                stream = tar.extractfile(member) if member.isfile() else None
                if stream is not None:
                    files[member.name] = stream.read()
        except tarfile.ReadError:
            pass  # umoci 0.4.7 ends layer tars right after the last file: no padding, no trailer
    assert files == {"opt/sub/hello": b"hello from umoci\n"}
    # Adding our tag to umoci's layout keeps umoci's and umoci still reads both.
    write_artifact(sample_image(), f"oci:{layout}:ours")
    umoci_cli("unpack", "--rootless", "--image", f"{layout}:ours", tmp_path / "bundle")
    check_rootfs(tmp_path / "bundle" / "rootfs", ROOTFS_ONE)
    assert open_artifact(f"oci:{layout}:t").digest == back.digest
    listed = umoci_cli("ls", "--layout", layout).stdout.decode().split()
    assert sorted(listed) == ["ours", "t"]
