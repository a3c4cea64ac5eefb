"""A layer blob that changes under suture while it runs (issue 16 item 12, probe D11):
the error names the blob's digest and the layout it is read from."""

from __future__ import annotations

from pathlib import Path

import pytest

from suture.errors import SutureError
from suture.oci.fs import read_files
from suture.oci.image import Image
from suture.transports import open_artifact, write_artifact
from tests.fixtures.images import sample_image
from tests.fixtures.patchimages import error_line, suture


def _overwrite_middle(blob: Path) -> None:
    """Same size, other bytes from the middle on: the gzip stream no longer decodes."""
    data = bytearray(blob.read_bytes())
    half = len(data) // 2
    data[half:] = bytes((i * 37 + 11) % 256 for i in range(len(data) - half))
    blob.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["library", "cli"])
def test_blob_overwritten_mid_run_is_named(tmp_path: Path, where: str) -> None:
    layout = tmp_path / "layout"
    write_artifact(sample_image(), f"oci:{layout}:v1")
    image = open_artifact(f"oci:{layout}:v1")  # the run has read the manifest...
    assert isinstance(image, Image)
    digest = image.layers[0].digest
    _overwrite_middle(layout / "blobs" / "sha256" / digest.removeprefix("sha256:"))  # ...then
    if where == "library":
        with pytest.raises(SutureError) as info:
            read_files(image, ["etc/os-release", "var/lib/dpkg/status"])
        message = str(info.value)
    else:
        proc = suture("inspect", f"oci:{layout}:v1")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        message = error_line(proc)
    assert digest in message, message  # the whole digest, not a prefix
    assert str(layout) in message, message
    assert "gzip" in message, message
