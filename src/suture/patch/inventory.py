"""The installed packages of a patched image, for its SBOM, without reading it again.

The first pass over the image's layers (:func:`suture.oci.fs.read_tree`) holds the
package database as the source has it; the patch layer's entries hold what the
patch wrote over it. :func:`patched_inventory` lays the second over the first and
parses the result (:func:`suture.sbom.parse_inventory`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from suture.distro.detect import PackageDB
from suture.inspect import detection_files
from suture.oci.fs import FileEntry
from suture.oci.layer import FILE, Entry
from suture.plan import Update
from suture.sbom import Package, parse_inventory, with_updates


def _data(entry: Entry) -> bytes | None:
    if isinstance(entry.data, bytes):
        return entry.data
    if callable(entry.data):
        with entry.data() as stream:
            return stream.read()
    return None


def _scanners_distro(tree: Mapping[str, FileEntry], namespace: str, distro: str,
                     purl_type: str) -> str:
    """The purl ``distro`` qualifier Syft and Trivy write: for Debian the point release of
    ``/etc/debian_version`` (``debian-12.8``) when it names one, else ``distro``."""
    if purl_type != "deb" or namespace != "debian":
        return distro
    entry = tree.get("etc/debian_version")
    text = (entry.data or b"").decode("ascii", "replace").strip() if entry else ""
    if re.fullmatch(r"\d+(\.\d+)*", text):
        return f"debian-{text}"
    return distro


def patched_inventory(db: PackageDB, tree: Mapping[str, FileEntry], entries: Sequence[Entry],
                      *, namespace: str, distro: str, purl_type: str,
                      updates: Sequence[Update]) -> list[Package]:
    """Every package of ``db`` once ``entries`` (the patch layer) are laid over ``tree``;
    the upgraded ones carry the hash and URI of the package file installed."""
    distro = _scanners_distro(tree, namespace, distro, purl_type)
    files = detection_files(tree)
    top = db.path.rstrip("/")
    written = {e.path: e for e in entries if e.kind == FILE}
    data: dict[str, bytes] = {}
    for asked, entry in files.items():
        if asked != top and entry.path != top and not asked.startswith(top + "/"):
            continue
        new = written.get(entry.path)
        raw = _data(new) if new is not None else entry.data
        if raw is not None:
            data[asked] = raw
    for path, added in written.items():  # new files of a status.d-style database
        if path.startswith(top + "/") and path not in data:
            raw = _data(added)
            if raw is not None:
                data[path] = raw
    packages = parse_inventory(db.family, db.kind, data, namespace=namespace, distro=distro,
                               purl_type=purl_type)
    return with_updates(packages, updates)
