"""Build a small Debian image from the real Debian archive, without a container engine.

``python -m suture.devtools.debian_image SUITE DEST`` runs ``mmdebstrap`` (root
mode when run as root, else unshare) into a tar, turns that tar into one gzip
layer as is, and writes an image to DEST (any writable reference: ``oci:DIR:TAG``,
``oci-archive:``, ``docker-archive:``, a registry). Only the suite named is used
(no -security or -updates), so a patch has real newer packages to apply.

``SOURCE_DATE_EPOCH`` is fixed (from the suite's Release date unless given), so
two builds of the same archive state give the same image digest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from suture.devtools import comma_list, command_parser, run_build
from suture.errors import SutureError, UsageError
from suture.oci.image import Image
from suture.oci.layer import Entry, layer_from_tar, write_layer
from suture.oci.model import Platform
from suture.oci.mutate import AddedLayer, new_image
from suture.transports import write_artifact

DEFAULT_MIRROR = "http://deb.debian.org/debian"
ARCHES = {"amd64": "linux/amd64", "arm64": "linux/arm64/v8", "armhf": "linux/arm/v7",
          "i386": "linux/386", "ppc64el": "linux/ppc64le", "s390x": "linux/s390x"}


def build_rootfs_tar(suite: str, out: Path, *, variant: str = "minbase", arch: str = "amd64",
                     mirror: str = DEFAULT_MIRROR, include: Sequence[str] = (),
                     epoch: int = 1700000000) -> None:
    """Run mmdebstrap to make a root filesystem tar of ``suite`` at ``out``."""
    if shutil.which("mmdebstrap") is None:
        raise UsageError("mmdebstrap is not installed (apt-get install mmdebstrap)")
    mode = "root" if os.geteuid() == 0 else "unshare"
    cmd = ["mmdebstrap", f"--mode={mode}", f"--variant={variant}", f"--architectures={arch}",
           "--format=tar", "--quiet"]
    if include:
        cmd.append("--include=" + ",".join(include))
    cmd += [suite, str(out), f"deb {mirror} {suite} main"]
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SutureError(f"mmdebstrap failed for {suite}/{arch}: {last}")


def _opener(path: Path) -> Callable[[], BinaryIO]:
    def open_blob() -> BinaryIO:
        return path.open("rb")

    return open_blob


def image_from_layers(layers: Sequence[Path | list[Entry]], platform: Platform,
                      workdir: Path, *, created: str = "1970-01-01T00:00:00Z") -> Image:
    """An image whose layers are rootfs tars (compressed as they are) or entry lists.

    Layer blobs are written into ``workdir`` and read from there: keep it for the
    life of the image.
    """
    added = []
    for n, layer in enumerate(layers):
        blob = workdir / f"layer-{n}.tar.gz"
        with blob.open("wb") as out:
            if isinstance(layer, Path):
                with layer.open("rb") as src:
                    info = layer_from_tar(src, out)
                how = f"rootfs {layer.name}"
            else:
                info = write_layer(layer, out)
                how = f"{len(layer)} entries"
        added.append(AddedLayer(info, _opener(blob),
                                history={"created_by": how, "created": created}))
    return new_image(added, platform, config={
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                           "/sbin:/bin"], "Cmd": ["bash"]},
        "created": created,
    })


def build_debian_image(suite: str, dest: str, *, variant: str = "minbase",
                       arch: str = "amd64", mirror: str = DEFAULT_MIRROR,
                       include: Sequence[str] = (), epoch: int = 1700000000,
                       workdir: Path | None = None) -> str:
    """Build an image of ``suite`` and write it to ``dest``; return its manifest digest."""
    if arch not in ARCHES:
        raise UsageError(f"unknown architecture {arch!r} (one of {', '.join(ARCHES)})")
    with tempfile.TemporaryDirectory(dir=workdir, prefix="suture-debian-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        build_rootfs_tar(suite, rootfs, variant=variant, arch=arch, mirror=mirror,
                         include=include, epoch=epoch)
        image = image_from_layers([rootfs], Platform.parse(ARCHES[arch]), Path(tmp))
        return write_artifact(image, dest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser("debian_image", __doc__)
    parser.add_argument("suite", help="e.g. bookworm, trixie")
    parser.add_argument("dest", help="where to write the image, e.g. oci:/tmp/demo:bookworm")
    parser.add_argument("--variant", default="minbase")
    parser.add_argument("--arch", default="amd64")
    parser.add_argument("--mirror", default=DEFAULT_MIRROR)
    parser.add_argument("--include", default="", help="comma-separated extra packages")
    args = parser.parse_args(argv)
    return run_build("debian_image", args.dest, lambda: build_debian_image(
        args.suite, args.dest, variant=args.variant, arch=args.arch, mirror=args.mirror,
        include=comma_list(args.include)))


if __name__ == "__main__":
    raise SystemExit(main())
