"""Software bills of materials of a patched image: CycloneDX 1.6 and SPDX 2.3 JSON.

:func:`parse_inventory` turns the bytes of an image's package database (dpkg,
apk or rpm sqlite, after the patch) into :class:`Package` values; the builders
:func:`build_cyclonedx` and :func:`build_spdx` turn those into documents whose
described component is the image (an ``oci`` purl with its digest), with every
package named by the purl Trivy and Syft write (:func:`suture.vex.package_url`).
:func:`update_sbom` edits an SBOM the source image came with instead: the
upgraded components get their new version, purl and hash; the rest is kept.

Everything here is pure: bytes and values in, JSON-ready dicts out, the same
input giving the same document (the timestamp is the caller's).
"""

from __future__ import annotations

import copy
import json
import re
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suture.errors import PackageDBError, SutureError
from suture.plan import Update
from suture.vex import package_url

CYCLONEDX = "cyclonedx"
SPDX = "spdx"
FORMATS = (CYCLONEDX, SPDX)
# The media types the documents are attached with (OCI artifactType).
MEDIA_TYPES = {CYCLONEDX: "application/vnd.cyclonedx+json", SPDX: "application/spdx+json"}
# Namespace for the documents' UUIDs (serialNumber, documentNamespace): derived from
# what they describe, so the same image gives the same document.
_NAMESPACE = uuid.UUID("3f4b7c1e-2a59-5d0e-9c61-5e7d0a6b8f21")


class SbomError(SutureError):
    """An SBOM cannot be built or the one given cannot be updated."""


@dataclass(frozen=True)
class Package:
    """One installed package: what both formats say of it.

    ``version`` is the package manager's full version (``[epoch:]version``);
    ``sha256`` the hash of the package file suture installed (upgraded packages only).
    """

    name: str
    version: str
    architecture: str
    purl: str
    source_name: str = ""
    source_version: str = ""
    license: str = ""
    sha256: str = ""
    download: str = ""


@dataclass(frozen=True)
class Subject:
    """The image an SBOM describes: a name, its manifest digest and its oci purl."""

    name: str
    digest: str
    purl: str
    os_id: str = ""
    os_version: str = ""


# ---------------------------------------------------------------- package databases


def parse_inventory(family: str, kind: str, data: Mapping[str, bytes], *, namespace: str,
                    distro: str, purl_type: str) -> list[Package]:
    """The installed packages of one package database, sorted by name and architecture.

    ``family``/``kind`` as :class:`suture.distro.detect.PackageDB` names them;
    ``data``: the database file(s) by root-relative path (``var/lib/dpkg/status``,
    ``var/lib/dpkg/status.d/<name>``, ``lib/apk/db/installed``, an rpm sqlite file).
    """

    def purl(name: str, version: str, arch: str) -> str:
        return package_url(purl_type, name, version, arch, namespace, distro)

    out: list[Package] = []
    if family == "dpkg":
        from suture.distro.dpkg.control import parse_status

        for path, raw in sorted(data.items()):
            if path.endswith((".md5sums", ".list")):
                continue
            for p in parse_status(raw, source="/" + path):
                if not p.is_installed or not p.version:
                    continue
                out.append(Package(p.name, p.version, p.architecture,
                                   purl(p.name, p.version, p.architecture),
                                   p.source_name, p.source_version))
    elif family == "apk":
        from suture.distro.apk.installed import parse_installed

        for path, raw in sorted(data.items()):
            for a in parse_installed(raw, source="/" + path):
                name, version, arch = a.get("P"), a.get("V"), a.get("A")
                out.append(Package(name, version, arch, purl(name, version, arch),
                                   a.get("o") or name, version if a.get("o") else "",
                                   a.get("L")))
    elif family == "rpm" and kind == "rpm-sqlite":
        out.extend(_rpm_sqlite(data, purl))
    else:
        raise SbomError(f"cannot list the packages of a {kind} database for an SBOM",
                        hint="suture reads dpkg, apk and rpm sqlite databases")
    return sorted(out, key=lambda p: (p.name, p.architecture, p.version))


def _rpm_sqlite(data: Mapping[str, bytes], purl: Any) -> list[Package]:
    from suture.distro.rpm.header import Tag
    from suture.distro.rpm.rpmdb import read_sqlite

    out = []
    for path, raw in sorted(data.items()):
        if raw[:16] == b"SQLite format 3\0" and raw[18:20] == b"\x02\x02":
            raw = raw[:18] + b"\x01\x01" + raw[20:]  # WAL mode header: read it as a file
        with tempfile.TemporaryDirectory(prefix="suture-sbom-") as tmp:
            copy_path = Path(tmp) / "rpmdb.sqlite"
            copy_path.write_bytes(raw)
            try:
                rows = read_sqlite(copy_path)
            except sqlite3.Error as exc:
                raise PackageDBError(f"unreadable rpm database: {exc}", path="/" + path) \
                    from None
        for row in rows:
            info = row.info
            if info.name.startswith("gpg-pubkey"):
                continue  # imported keys, not software
            source = info.sourcerpm
            m = re.fullmatch(r"(.+)-([^-]+)-([^-]+)\.(?:no)?src\.rpm", source)
            out.append(Package(info.name, info.evr, info.arch,
                               purl(info.name, info.evr, info.arch),
                               m.group(1) if m else "",
                               f"{m.group(2)}-{m.group(3)}" if m else "",
                               row.header.string(Tag.LICENSE) or ""))
    return out


def with_updates(packages: Sequence[Package], updates: Sequence[Update]) -> list[Package]:
    """``packages`` with the hash and download URI of the package files the patch installed."""
    by_key = {(u.name, u.to_version): u for u in updates}
    out = []
    for p in packages:
        u = by_key.get((p.name, p.version))
        if u is not None:
            download = (u.base_uri.rstrip("/") + "/" + u.filename) if u.filename else ""
            p = Package(p.name, p.version, p.architecture, p.purl, p.source_name,
                        p.source_version, p.license, u.sha256, download)
        out.append(p)
    return out


# ---------------------------------------------------------------- CycloneDX 1.6


def _tool(version: str) -> dict[str, Any]:
    return {"type": "application", "name": "suture", "version": version}


def build_cyclonedx(subject: Subject, packages: Sequence[Package], *, timestamp: str,
                    tool_version: str) -> dict[str, Any]:
    """A CycloneDX 1.6 document of ``packages`` installed in ``subject``."""
    components: list[dict[str, Any]] = []
    refs: list[str] = []
    seen: set[str] = set()
    if subject.os_id:
        os_ref = f"os:{subject.os_id}@{subject.os_version}"
        components.append({"bom-ref": os_ref, "type": "operating-system",
                           "name": subject.os_id, "version": subject.os_version})
        refs.append(os_ref)
    for p in packages:
        if p.purl in seen:
            continue
        seen.add(p.purl)
        components.append(_cdx_component(p))
        refs.append(p.purl)
    return {
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": "urn:uuid:" + str(uuid.uuid5(_NAMESPACE, "cyclonedx:" + subject.purl)),
        "version": 1,
        "metadata": {
            "timestamp": timestamp,
            "tools": {"components": [_tool(tool_version)]},
            "component": {"bom-ref": subject.purl, "type": "container", "name": subject.name,
                          "version": subject.digest, "purl": subject.purl},
        },
        "components": components,
        "dependencies": [{"ref": subject.purl, "dependsOn": refs}],
    }


def _cdx_component(p: Package) -> dict[str, Any]:
    out: dict[str, Any] = {"bom-ref": p.purl, "type": "library", "name": p.name,
                           "version": p.version, "purl": p.purl}
    if p.sha256:
        out["hashes"] = [{"alg": "SHA-256", "content": p.sha256}]
    if p.license:
        out["licenses"] = [{"license": {"name": p.license}}]
    if p.download:
        out["externalReferences"] = [{"type": "distribution", "url": p.download}]
    props = []
    if p.source_name:
        props.append({"name": "suture:package:source", "value": p.source_name})
    if p.source_version:
        props.append({"name": "suture:package:source-version", "value": p.source_version})
    if props:
        out["properties"] = props
    return out


# ---------------------------------------------------------------- SPDX 2.3


def _spdx_id(index: int, name: str) -> str:
    return f"SPDXRef-Package-{index}-" + re.sub(r"[^A-Za-z0-9.-]", "-", name)


def build_spdx(subject: Subject, packages: Sequence[Package], *, timestamp: str,
               tool_version: str) -> dict[str, Any]:
    """An SPDX 2.3 document of ``packages`` installed in ``subject``."""
    image_id = "SPDXRef-Image"
    spdx_packages: list[dict[str, Any]] = [{
        "SPDXID": image_id, "name": subject.name, "versionInfo": subject.digest,
        "downloadLocation": "NOASSERTION", "filesAnalyzed": False,
        "primaryPackagePurpose": "CONTAINER",
        "checksums": [{"algorithm": "SHA256",
                       "checksumValue": subject.digest.removeprefix("sha256:")}],
        "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                          "referenceLocator": subject.purl}],
    }]
    relationships = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                      "relatedSpdxElement": image_id}]
    for i, p in enumerate(packages, 1):
        spdx_packages.append(_spdx_package(_spdx_id(i, p.name), p))
        relationships.append({"spdxElementId": image_id, "relationshipType": "CONTAINS",
                              "relatedSpdxElement": _spdx_id(i, p.name)})
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{subject.name}@{subject.digest}",
        "documentNamespace": "https://suture.invalid/spdx/"
                             + str(uuid.uuid5(_NAMESPACE, "spdx:" + subject.purl)),
        "creationInfo": {"created": timestamp, "creators": [f"Tool: suture-{tool_version}"]},
        "packages": spdx_packages,
        "relationships": relationships,
    }


def _spdx_package(spdx_id: str, p: Package) -> dict[str, Any]:
    out: dict[str, Any] = {
        "SPDXID": spdx_id, "name": p.name, "versionInfo": p.version,
        "downloadLocation": p.download or "NOASSERTION", "filesAnalyzed": False,
        "licenseConcluded": "NOASSERTION", "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION", "primaryPackagePurpose": "LIBRARY",
        "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                          "referenceLocator": p.purl}],
    }
    if p.sha256:
        out["checksums"] = [{"algorithm": "SHA256", "checksumValue": p.sha256}]
    if p.source_name:
        out["sourceInfo"] = f"built package from: {p.source_name} {p.source_version}".strip()
    if p.license:
        out["comment"] = f"license as the package database records it: {p.license}"
    return out


def build_sbom(fmt: str, subject: Subject, packages: Sequence[Package], *, timestamp: str,
               tool_version: str) -> dict[str, Any]:
    if fmt == CYCLONEDX:
        return build_cyclonedx(subject, packages, timestamp=timestamp,
                               tool_version=tool_version)
    if fmt == SPDX:
        return build_spdx(subject, packages, timestamp=timestamp, tool_version=tool_version)
    raise SbomError(f"unknown SBOM format {fmt!r} (cyclonedx or spdx)")


# ---------------------------------------------------------------- updating a source SBOM


def sbom_format(doc: Mapping[str, Any]) -> str:
    """``cyclonedx`` or ``spdx`` for a parsed SBOM; SbomError for anything else."""
    if doc.get("bomFormat") == "CycloneDX":
        return CYCLONEDX
    if str(doc.get("spdxVersion", "")).startswith("SPDX-2"):
        return SPDX
    raise SbomError("the source SBOM is neither CycloneDX nor SPDX 2 JSON")


def parse_sbom(data: bytes, what: str) -> dict[str, Any]:
    """A source SBOM: a JSON object in a format :func:`sbom_format` knows."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise SbomError(f"{what}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise SbomError(f"{what}: not a JSON object")
    try:
        sbom_format(doc)
    except SbomError as exc:
        raise SbomError(f"{what}: {exc}") from None
    return doc


def _replace_version(purl: str, old: str, new: str) -> str:
    """``purl`` with its version ``old`` (as written: encoded or not) changed to ``new``."""
    from urllib.parse import quote

    for written in (old, quote(old, safe="~.-_"), quote(old, safe="~.-_+")):
        for o, n in ((f"@{written}?", f"@{quote(new, safe='~.-_')}?"),
                     (f"@{written}#", f"@{quote(new, safe='~.-_')}#")):
            if o in purl:
                return purl.replace(o, n, 1)
        if purl.endswith(f"@{written}"):
            return purl[: -len(written)] + quote(new, safe="~.-_")
    return purl


def _bare(version: str) -> str:
    """An rpm or deb version without its epoch (purls carry the epoch apart)."""
    head, sep, tail = version.partition(":")
    return tail if sep and head.isdigit() else version


def update_sbom(source: Mapping[str, Any], subject: Subject, packages: Sequence[Package],
                updates: Sequence[Update], *, timestamp: str,
                tool_version: str) -> dict[str, Any]:
    """``source`` (the source image's SBOM) describing the patched image instead.

    For each update, the components named ``update.name`` at the old version get the
    new version, purl and hash; packages the patch newly installed are added; the
    described component becomes ``subject``; everything else is kept as it was.
    """
    doc = copy.deepcopy(dict(source))
    fmt = sbom_format(doc)
    new_by_name = {p.name: p for p in packages}
    if fmt == CYCLONEDX:
        _update_cyclonedx(doc, subject, new_by_name, updates, timestamp, tool_version)
    else:
        _update_spdx(doc, subject, new_by_name, updates, timestamp, tool_version)
    return doc


def _matches(name: str, version: str, update: Update) -> bool:
    old = update.from_version or ""
    return name == update.name and version in (old, _bare(old))


def _matched(entries: list[Any], version_key: str, update: Update
             ) -> Iterator[tuple[dict[str, Any], str, str]]:
    """The entries of a source SBOM (CycloneDX components, SPDX packages, their version
    under ``version_key``) that are ``update``'s old package, each with its version and
    the one to write (the update's, without its epoch when the SBOM wrote none)."""
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        old = str(entry.get(version_key))
        if _matches(str(entry.get("name")), old, update):
            yield entry, old, (update.to_version if old == (update.from_version or "")
                               else _bare(update.to_version))


def _update_cyclonedx(doc: dict[str, Any], subject: Subject, new: Mapping[str, Package],
                      updates: Sequence[Update], timestamp: str, tool_version: str) -> None:
    components = doc.setdefault("components", [])
    for update in updates:
        found = False
        for c, old_version, new_version in _matched(components, "version", update):
            found = True
            c["version"] = new_version
            if isinstance(c.get("purl"), str):
                c["purl"] = _replace_version(c["purl"], old_version, new_version)
            if update.sha256:
                c["hashes"] = [{"alg": "SHA-256", "content": update.sha256}]
            else:
                c.pop("hashes", None)
        if not found and update.from_version is None and update.name in new:
            components.append(_cdx_component(new[update.name]))
    meta = doc.setdefault("metadata", {})
    old_ref = (meta.get("component") or {}).get("bom-ref") if isinstance(
        meta.get("component"), dict) else None
    component = dict(meta.get("component") or {})
    component.update({"bom-ref": subject.purl, "type": "container", "name": subject.name,
                      "version": subject.digest, "purl": subject.purl})
    component.pop("hashes", None)
    meta["component"] = component
    meta["timestamp"] = timestamp
    tools = meta.get("tools")
    if isinstance(tools, dict):
        tools.setdefault("components", []).append(_tool(tool_version))
    elif isinstance(tools, list):
        tools.append({"vendor": "suture", "name": "suture", "version": tool_version})
    else:
        meta["tools"] = {"components": [_tool(tool_version)]}
    if old_ref:
        for dep in doc.get("dependencies") or []:
            if isinstance(dep, dict) and dep.get("ref") == old_ref:
                dep["ref"] = subject.purl
    doc["version"] = int(doc.get("version") or 1) + 1 if isinstance(doc.get("version"),
                                                                    int) else 1
    doc["serialNumber"] = "urn:uuid:" + str(uuid.uuid5(_NAMESPACE,
                                                       "cyclonedx:" + subject.purl))


def _update_spdx(doc: dict[str, Any], subject: Subject, new: Mapping[str, Package],
                 updates: Sequence[Update], timestamp: str, tool_version: str) -> None:
    packages = doc.setdefault("packages", [])
    described = {r.get("relatedSpdxElement") for r in doc.get("relationships") or []
                 if isinstance(r, dict) and r.get("relationshipType") == "DESCRIBES"}
    described |= set(doc.get("documentDescribes") or [])
    for update in updates:
        found = False
        for p, old_version, new_version in _matched(packages, "versionInfo", update):
            found = True
            p["versionInfo"] = new_version
            for ref in p.get("externalRefs") or []:
                if isinstance(ref, dict) and ref.get("referenceType") == "purl":
                    ref["referenceLocator"] = _replace_version(
                        str(ref.get("referenceLocator")), old_version, new_version)
            if update.sha256:
                p["checksums"] = [{"algorithm": "SHA256", "checksumValue": update.sha256}]
            else:
                p.pop("checksums", None)
        if not found and update.from_version is None and update.name in new:
            spdx_id = _spdx_id(len(packages) + 1, update.name)
            packages.append(_spdx_package(spdx_id, new[update.name]))
            for top in sorted(str(d) for d in described):
                doc.setdefault("relationships", []).append(
                    {"spdxElementId": top, "relationshipType": "CONTAINS",
                     "relatedSpdxElement": spdx_id})
    for p in packages:
        if isinstance(p, dict) and p.get("SPDXID") in described:
            p["versionInfo"] = subject.digest
            p["checksums"] = [{"algorithm": "SHA256",
                               "checksumValue": subject.digest.removeprefix("sha256:")}]
            refs = [r for r in p.get("externalRefs") or []
                    if not (isinstance(r, dict) and r.get("referenceType") == "purl")]
            p["externalRefs"] = [*refs, {"referenceCategory": "PACKAGE-MANAGER",
                                         "referenceType": "purl",
                                         "referenceLocator": subject.purl}]
    info = doc.setdefault("creationInfo", {})
    info["created"] = timestamp
    creators = list(info.get("creators") or [])
    creators.append(f"Tool: suture-{tool_version}")
    info["creators"] = creators
    doc["documentNamespace"] = "https://suture.invalid/spdx/" + str(
        uuid.uuid5(_NAMESPACE, "spdx:" + subject.purl))
