"""Build a container image of suture itself, without a container engine.

``python -m suture.devtools.suture_image DEST [--source DIR]`` makes a Debian root
with ``mmdebstrap`` (python3, ca-certificates, bubblewrap for maintainer scripts,
libseccomp2 for their filter), installs suture and its dependencies from the source
tree ``DIR`` (default: this checkout) into ``/opt/suture`` with pip (wheels for the
root's Python, which must be this Python's minor version, so the installed bytecode
matches), adds a non-root user ``suture`` (10001:10001) and writes an image to DEST:
three layers (the root, suture, the user), ``Entrypoint ["python3", "-m", "suture"]``,
``User 10001:10001``, ``WorkingDir /work``. ``docker run IMAGE patch -i ...`` runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from suture import __version__
from suture.devtools import command_parser, run_build
from suture.devtools.debian_image import ARCHES, DEFAULT_MIRROR, build_rootfs_tar
from suture.errors import SutureError, UsageError
from suture.oci.layer import Entry, layer_from_tar, write_layer
from suture.oci.model import Platform
from suture.oci.mutate import AddedLayer, new_image
from suture.transports import EngineOptions, Options, write_artifact

UID = GID = 10001
USER = "suture"
SITE = "opt/suture/site"
INCLUDE = ("python3", "ca-certificates", "bubblewrap", "libseccomp2")
# The root's Python for each suite this image can be built on.
SUITE_PYTHON = {"bookworm": (3, 11), "trixie": (3, 13)}
EPOCH = 1700000000


def _source_tree() -> Path:
    here = Path(__file__).resolve().parents[3]
    if not (here / "pyproject.toml").is_file():
        raise UsageError("not running from a source checkout", hint="give --source DIR")
    return here


def _pip(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check",
                           *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SutureError(f"pip {args[0]} failed: {last}")


def install_tree(source: Path, site: Path, work: Path) -> None:
    """suture (a wheel built from ``source``) and its dependencies into ``site``."""
    wheels = work / "wheels"
    _pip("wheel", "--quiet", "--no-deps", "-w", str(wheels), str(source))
    [wheel] = wheels.glob("suture-*.whl")
    _pip("install", "--quiet", "--target", str(site), "--only-binary=:all:", str(wheel))


def _read_member(tar_path: Path, name: str) -> bytes:
    with tarfile.open(tar_path) as tar:
        for candidate in (name, f"./{name}"):
            try:
                member = tar.getmember(candidate)
            except KeyError:
                continue
            f = tar.extractfile(member)
            if f is not None:
                return f.read()
    raise SutureError(f"the root has no /{name}")


def site_entries(site: Path) -> list[Entry]:
    """Everything under ``site`` as root-owned entries under /opt/suture/site."""
    entries = [Entry("opt", "dir", 0o755), Entry("opt/suture", "dir", 0o755),
               Entry(SITE, "dir", 0o755)]
    for dirpath, dirnames, filenames in os.walk(site):
        dirnames.sort()
        rel = Path(dirpath).relative_to(site)
        for d in dirnames:
            entries.append(Entry(f"{SITE}/{(rel / d).as_posix()}", "dir", 0o755))
        for f in sorted(filenames):
            path = Path(dirpath) / f
            target = f"{SITE}/{(rel / f).as_posix()}"
            if path.is_symlink():
                entries.append(Entry(target, "symlink", 0o777, linkname=os.readlink(path)))
                continue
            data = path.read_bytes()
            mode = 0o755 if os.access(path, os.X_OK) else 0o644
            entries.append(Entry(target, "file", mode, size=len(data), data=data))
    return entries


def user_entries(rootfs: Path) -> list[Entry]:
    """/etc/passwd and /etc/group with the ``suture`` user, its home and /work."""
    passwd = _read_member(rootfs, "etc/passwd").rstrip(b"\n") + (
        f"\n{USER}:x:{UID}:{GID}:suture:/home/{USER}:/usr/sbin/nologin\n").encode()
    group = _read_member(rootfs, "etc/group").rstrip(b"\n") + f"\n{USER}:x:{GID}:\n".encode()
    return [Entry("etc", "dir", 0o755), Entry.file("etc/passwd", passwd),
            Entry.file("etc/group", group), Entry("home", "dir", 0o755),
            Entry(f"home/{USER}", "dir", 0o750, UID, GID), Entry("work", "dir", 0o755, UID,
                                                                 GID)]


def build_suture_image(dest: str, *, source: Path | None = None, suite: str = "bookworm",
                       arch: str = "amd64", mirror: str = DEFAULT_MIRROR,
                       workdir: Path | None = None, options: Options | None = None) -> str:
    """Build the image and write it to ``dest``; return its manifest digest."""
    wanted = SUITE_PYTHON.get(suite)
    if wanted is None:
        raise UsageError(f"suite {suite!r}: one of {', '.join(SUITE_PYTHON)}")
    if sys.version_info[:2] != wanted:
        raise UsageError(f"{suite}'s Python is {wanted[0]}.{wanted[1]}; run this with that "
                         "Python so the installed packages match it")
    if arch not in ARCHES or arch != "amd64":
        raise UsageError("only amd64 is built (the wheels are this host's)")
    source = source or _source_tree()
    with tempfile.TemporaryDirectory(dir=workdir, prefix="suture-image-") as tmp:
        work = Path(tmp)
        rootfs = work / "rootfs.tar"
        build_rootfs_tar(suite, rootfs, arch=arch, mirror=mirror, include=INCLUDE,
                         epoch=EPOCH)
        site = work / "site"
        install_tree(source, site, work)
        layers: list[AddedLayer] = []
        created = "1970-01-01T00:00:00Z"
        for n, (what, entries) in enumerate((("root", None), ("suture", site_entries(site)),
                                             ("user", user_entries(rootfs)))):
            blob = work / f"layer-{n}.tar.gz"
            with blob.open("wb") as out:
                if entries is None:
                    with rootfs.open("rb") as src:
                        info = layer_from_tar(src, out)
                else:
                    info = write_layer(entries, out)
            layers.append(AddedLayer(info, _opener(blob), history={
                "created_by": f"suture.devtools.suture_image: {what}", "created": created}))
        image = new_image(layers, Platform.parse(ARCHES[arch]), config={
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                        f"PYTHONPATH=/{SITE}", "PYTHONDONTWRITEBYTECODE=1",
                        f"HOME=/home/{USER}"],
                "Entrypoint": ["python3", "-m", "suture"],
                "Cmd": ["--help"],
                "User": f"{UID}:{GID}",
                "WorkingDir": "/work",
                "Labels": {"org.opencontainers.image.title": "suture",
                           "org.opencontainers.image.version": __version__},
            },
            "created": created,
        })
        return write_artifact(image, dest, options)


def _opener(path: Path) -> Callable[[], BinaryIO]:
    def open_blob() -> BinaryIO:
        return path.open("rb")

    return open_blob


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser("suture_image", __doc__)
    parser.add_argument("dest", help="where to write the image, e.g. oci:/tmp/suture:latest "
                                     "or docker-daemon:suture:latest")
    parser.add_argument("--source", type=Path, help="suture's source tree (default: this "
                                                    "checkout)")
    parser.add_argument("--suite", default="bookworm", choices=sorted(SUITE_PYTHON))
    parser.add_argument("--mirror", default=DEFAULT_MIRROR)
    args = parser.parse_args(argv)
    engines = EngineOptions(docker_host=os.environ.get("DOCKER_HOST") or None,
                            podman_host=os.environ.get("CONTAINER_HOST") or None)
    return run_build("suture_image", args.dest, lambda: build_suture_image(
        args.dest, source=args.source, suite=args.suite, mirror=args.mirror,
        options=Options(engines=engines)))


if __name__ == "__main__":
    raise SystemExit(main())
