"""Inspection: what an image is, read from its manifest, config and a few files.

Only the files detection needs are read out of the layers (one streaming pass,
more only to follow symlinks); an image is never extracted.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from suture.distro.detect import OSRelease, PackageDB, detect_os, detect_package_db, wanted_paths
from suture.errors import PlatformError
from suture.oci.fs import FileEntry, read_files, resolve
from suture.oci.image import Artifact, Image, ImageIndex
from suture.oci.model import Descriptor, Platform

# Written into patched images (config labels and manifest annotations).
BASE_DIGEST_KEY = "dev.suture.base.digest"  # the original image's manifest digest
BASE_LAYERS_KEY = "dev.suture.base.layers"  # how many layers the original image had
PATCHED_KEY = "dev.suture.patched"  # "true"
# The OCI image spec's lineage annotations (pre-defined annotation keys), in patched manifests.
OCI_BASE_DIGEST = "org.opencontainers.image.base.digest"
OCI_BASE_NAME = "org.opencontainers.image.base.name"


@dataclass(frozen=True)
class PatchMark:
    base_digest: str
    base_layers: int
    base_name: str = ""  # the source's registry name, when it came from a registry

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"baseDigest": self.base_digest, "baseLayers": self.base_layers}
        if self.base_name:
            out["baseName"] = self.base_name
        return out


@dataclass(frozen=True)
class Inspection:
    platform: Platform | None
    digest: str
    media_type: str
    layers: tuple[Descriptor, ...]
    os: OSRelease | None
    package_db: PackageDB | None
    patched: PatchMark | None
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "platform": str(self.platform) if self.platform else None,
            "digest": self.digest,
            "mediaType": self.media_type,
            "layers": [{"digest": d.digest, "size": d.size, "mediaType": d.media_type}
                       for d in self.layers],
            "os": self.os.to_json() if self.os else None,
            "packageDB": self.package_db.to_json() if self.package_db else None,
            "patched": self.patched.to_json() if self.patched else None,
        }


def read_patch_mark(image: Image) -> PatchMark | None:
    """The mark a suture patch left on ``image``, if any (labels, else annotations)."""
    for source in (image.labels, image.manifest.annotations):
        base = source.get(BASE_DIGEST_KEY)
        layers = source.get(BASE_LAYERS_KEY, "")
        if base and layers.isdigit():
            return PatchMark(base, int(layers),
                             image.manifest.annotations.get(OCI_BASE_NAME, ""))
    return None


def detection_files(tree: Mapping[str, FileEntry]) -> dict[str, FileEntry]:
    """From a whole-tree read (:func:`suture.oci.fs.read_tree`), the entries detection
    reads, keyed as asked, with symlinks resolved inside the image."""
    paths, prefixes = wanted_paths()
    links = {p: e.linkname for p, e in tree.items() if e.kind == "symlink"}
    out: dict[str, FileEntry] = {}
    for path in paths:
        entry = tree.get(resolve(path, links))
        if entry is not None and entry.kind == "file":
            out[path] = entry
    for prefix in prefixes:
        real = resolve(prefix.rstrip("/"), links) + "/"
        for path, entry in tree.items():
            if path.startswith(real) and entry.kind == "file":
                out[prefix + path[len(real):]] = entry
    return out


@functools.cache
def _detection_paths() -> tuple[frozenset[str], tuple[str, ...]]:
    paths, prefixes = wanted_paths()
    return frozenset(paths), tuple(prefixes)


def wants_detection_data(path: str) -> bool:
    """Whether detection needs the contents of ``path`` (for :func:`read_tree`)."""
    paths, prefixes = _detection_paths()
    return path in paths or path.startswith(prefixes)


def inspect_image(image: Image, tree: Mapping[str, FileEntry] | None = None) -> Inspection:
    """Inspect ``image``; with ``tree`` (a whole-tree read that holds the contents
    :func:`wants_detection_data` names) the layers are not read again."""
    if tree is not None:
        files = detection_files(tree)
    else:
        paths, prefixes = wanted_paths()
        files = read_files(image, paths, prefixes=prefixes)
    return Inspection(
        platform=image.platform,
        digest=image.digest,
        media_type=image.media_type,
        layers=image.manifest.layers,
        os=detect_os(files),
        package_db=detect_package_db(files),
        patched=read_patch_mark(image),
    )


def select_images(artifact: Artifact, platforms: list[Platform] | None = None) -> list[Image]:
    """The images of ``artifact`` to work on: all runnable ones, or those for ``platforms``.

    A single image with a platform filter that it does not match is an error.
    """
    if isinstance(artifact, Image):
        if platforms and artifact.platform is not None and not any(
            p.matches(artifact.platform) for p in platforms
        ):
            wanted = ", ".join(str(p) for p in platforms)
            raise PlatformError(f"the image is {artifact.platform}, not {wanted}")
        return [artifact]
    assert isinstance(artifact, ImageIndex)
    if platforms:
        return [artifact.select(p) for p in platforms]
    images = []
    for desc in artifact.image_descriptors():
        child = artifact.child(desc)
        if isinstance(child, Image):
            images.append(child)
    return images


def inspect_artifact(artifact: Artifact,
                     platforms: list[Platform] | None = None) -> list[Inspection]:
    return [inspect_image(image) for image in select_images(artifact, platforms)]
