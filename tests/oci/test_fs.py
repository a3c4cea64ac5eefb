from __future__ import annotations

import gzip
import io
import os
import tarfile

import pytest

from suture.errors import DigestMismatch, LayerError, NotFound
from suture.oci.digest import sha256
from suture.oci.fs import read_file, read_files, resolve
from suture.oci.image import Image
from suture.oci.layer import DIR, HARDLINK, SYMLINK, Entry, LayerInfo
from suture.oci.model import Platform
from suture.oci.mutate import AddedLayer, new_image
from tests.fixtures.images import make_image


def test_upper_layer_deletes_and_rewrites() -> None:
    image = make_image(
        [Entry.file("etc/a", b"old"), Entry.file("etc/b", b"b"), Entry.file("var/x/1", b"1"),
         Entry.file("var/x/2", b"2"), Entry.file("keep", b"k")],
        [Entry.file("etc/a", b"new"), Entry.whiteout("etc/b"), Entry.opaque("var/x"),
         Entry.file("var/x/3", b"3")],
    )
    files = read_files(image, ["etc/a", "etc/b", "keep"], prefixes=["var/x"])
    assert files["etc/a"].data == b"new"
    assert "etc/b" not in files
    assert files["keep"].data == b"k"
    assert sorted(p for p in files if p.startswith("var/x/")) == ["var/x/3"]
    with pytest.raises(NotFound):
        read_file(image, "etc/b")


def test_whiteout_of_a_directory_hides_its_contents() -> None:
    image = make_image([Entry("d", DIR, 0o755), Entry.file("d/f", b"f")], [Entry.whiteout("d")],
                       [Entry.file("d/g", b"g")])
    files = read_files(image, ["d/f", "d/g"])
    assert set(files) == {"d/g"}


def test_symlinks_resolve_inside_the_root() -> None:
    image = make_image([
        Entry.file("usr/lib/os-release", b"ID=debian\n"),
        Entry("etc/os-release", SYMLINK, 0o777, linkname="../usr/lib/os-release"),
        Entry("lib", SYMLINK, 0o777, linkname="usr/lib"),
        Entry("etc/escape", SYMLINK, 0o777, linkname="../../../../usr/lib/os-release"),
        Entry("etc/abs", SYMLINK, 0o777, linkname="/usr/lib/os-release"),
    ])
    for path in ("etc/os-release", "lib/os-release", "etc/escape", "etc/abs"):
        assert read_file(image, path) == b"ID=debian\n", path


def test_resolve_clamps_at_root() -> None:
    assert resolve("a/b", {"a": "/../../x"}) == "x/b"
    with pytest.raises(LayerError, match="too many"):
        resolve("loop", {"loop": "loop"})


def test_hardlink_gives_target_data() -> None:
    image = make_image([Entry.file("bin/a", b"AAA"),
                        Entry("bin/b", HARDLINK, 0o755, linkname="bin/a")])
    assert read_file(image, "bin/b") == b"AAA"


def _raw_layer_image(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Image:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    plain = raw.getvalue()
    blob = gzip.compress(plain, mtime=0)
    info = LayerInfo(sha256(blob), sha256(plain), len(blob),
                     "application/vnd.oci.image.layer.v1.tar+gzip", "gzip")
    return new_image([AddedLayer(info, lambda: io.BytesIO(blob))], Platform.parse("linux/amd64"))


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


@pytest.mark.parametrize("members", [
    [_file("../etc/passwd")],
    [_file("a/../../etc/passwd")],
    [_link("evil", "/etc"), _file("evil/passwd")],
    [_link("evil", "../../../../"), _file("evil/etc/shadow")],
    [_link("h", "../../etc/passwd", tarfile.LNKTYPE)],
])
def test_escaping_layers_are_refused(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    image = _raw_layer_image(members)
    with pytest.raises(LayerError) as info:
        read_files(image, ["etc/os-release"])
    assert "\n" not in str(info.value)


def test_leading_slash_and_dot_names_are_normalised() -> None:
    image = _raw_layer_image([_file("./etc/a", b"1"), _file("/etc/b", b"2")])
    assert read_file(image, "etc/a") == b"1" and read_file(image, "/etc/b") == b"2"


def test_corrupt_layer_blob_is_a_digest_error() -> None:
    good = make_image([Entry.file("a", b"1")])
    layer = good.layers[0]
    tampered_blob = gzip.compress(b"not the same tar" * 100, mtime=0)
    info = LayerInfo(layer.digest, layer.diff_id or "", len(tampered_blob),
                     layer.descriptor.media_type, "gzip")
    bad = new_image([AddedLayer(info, lambda: io.BytesIO(tampered_blob))],
                    Platform.parse("linux/amd64"))
    with pytest.raises(DigestMismatch):
        read_files(bad, ["a"])


def test_truncated_layer_is_a_layer_error() -> None:
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as tar:
        info, data = _file("a", os.urandom(100_000))
        tar.addfile(info, io.BytesIO(data))
    blob = gzip.compress(plain.getvalue(), mtime=0)[:2000]
    info2 = LayerInfo(sha256(blob), sha256(plain.getvalue()), len(blob),
                      "application/vnd.oci.image.layer.v1.tar+gzip", "gzip")
    image = new_image([AddedLayer(info2, lambda: io.BytesIO(blob))],
                      Platform.parse("linux/amd64"))
    with pytest.raises(LayerError):
        read_files(image, ["a"])


def test_symlinked_directory_without_its_own_entry() -> None:
    # "usr/lib" has no tar entry of its own; "lib -> usr/lib" still resolves under it.
    image = _raw_layer_image([_link("lib", "usr/lib"), _file("usr/lib/apk/db/installed", b"P:x")])
    files = read_files(image, ["lib/apk/db/installed"], prefixes=["lib/apk"])
    assert files["lib/apk/db/installed"].data == b"P:x"
    assert files["lib/apk/db/installed"].path == "usr/lib/apk/db/installed"
    assert read_files(image, ["lib/missing"], prefixes=["lib/nothing"]) == {}
