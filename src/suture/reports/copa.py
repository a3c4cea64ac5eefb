"""copa's own update-manifest formats, ``v1alpha1`` and ``v1alpha2``.

These are what ``copa patch --scanner native`` reads from a file and what copa
scanner plugins (``copa-NAME REPORT``) print on standard output:

* ``v1alpha1``: ``apiVersion``, ``metadata.os.type``/``version``,
  ``metadata.config.arch``, and ``updates[]`` (OS packages only), each with
  ``name``, ``installedVersion``, ``fixedVersion`` and ``vulnerabilityID``;
* ``v1alpha2``: the same metadata plus ``metadata.config.variant``, and
  ``osupdates[]`` and ``langupdates[]`` whose entries also carry ``type`` and
  ``class``.
"""

from __future__ import annotations

from typing import Any

from suture.reports.document import (
    COPA_API_VERSIONS,
    as_document,
    as_object,
    build_report,
    get_list,
    get_object,
    get_text,
    load_json,
    split_versions,
    wrong_kind,
)
from suture.reports.model import LANG_PKGS, OS_PKGS, Finding, Report, ReportError

__all__ = ["parse_copa"]

WHAT = "copa report"

# apiVersion -> [(list key, package class)]
_LISTS: dict[str, tuple[tuple[str, str], ...]] = {
    "v1alpha1": (("updates", OS_PKGS),),
    "v1alpha2": (("osupdates", OS_PKGS), ("langupdates", LANG_PKGS)),
}


def parse_copa(data: bytes) -> Report:
    """Parse a copa ``v1alpha1`` or ``v1alpha2`` document.

    ``metadata.os.type`` is required (copa cannot pick a package manager without
    it) and normalised like every scanner's OS name; ``fixedVersion`` may list
    several versions, comma-separated; ``name`` and ``vulnerabilityID`` are
    required of every entry. The package class is the list's (``updates`` and
    ``osupdates``: ``os-pkgs``; ``langupdates``: ``lang-pkgs``), as copa uses them.
    A ``v1alpha1`` document's ``metadata.config.variant`` is ignored, as copa
    ignores it.

    Raises :class:`ReportError` for invalid JSON, a document that is not a copa
    document (naming what it looks like), another ``apiVersion``, a document whose
    update lists are the other version's, or one without an OS type.
    """
    return from_document(load_json(data, WHAT))


def from_document(doc: Any) -> Report:
    """:func:`parse_copa` over an already parsed JSON document."""
    doc = as_document(doc, WHAT)
    if "apiVersion" not in doc:
        raise wrong_kind(doc, "a copa v1alpha1/v1alpha2 document")
    version = doc.get("apiVersion")
    if version not in COPA_API_VERSIONS:
        raise ReportError(f"{WHAT}: unsupported apiVersion {version!r} (suture reads "
                          f"{' and '.join(COPA_API_VERSIONS)})")
    assert isinstance(version, str)
    what = f"copa {version} document"
    lists = _LISTS[version]
    ours = {key for key, _ in lists}
    theirs = {key for v, pairs in _LISTS.items() if v != version for key, _ in pairs} - ours
    if not any(key in doc for key in ours) and any(key in doc for key in theirs):
        other = ", ".join(sorted(k for k in theirs if k in doc))
        raise ReportError(f"{what} has no {' or '.join(sorted(ours))}: it carries {other}, "
                          f"which {version} does not have (is its apiVersion wrong?)")
    metadata = get_object(doc, "metadata", "metadata", what)
    os_info = get_object(metadata, "os", "metadata.os", what)
    family = get_text(os_info, "type", "metadata.os", what)
    if not family:
        raise ReportError(f"{what} has no metadata.os.type: it does not say which OS the "
                          "image runs")
    config = get_object(metadata, "config", "metadata.config", what)
    arch = get_text(config, "arch", "metadata.config", what)
    variant = get_text(config, "variant", "metadata.config", what) if version != "v1alpha1" \
        else ""
    findings: list[Finding] = []
    for key, package_class in lists:
        for n, entry in enumerate(get_list(doc, key, key, what)):
            where = f"{key}[{n}]"
            entry = as_object(entry, where, what)
            findings.append(Finding(
                vulnerability_id=get_text(entry, "vulnerabilityID", where, what, required=True),
                package=get_text(entry, "name", where, what, required=True),
                installed_version=get_text(entry, "installedVersion", where, what),
                fixed_versions=split_versions(get_text(entry, "fixedVersion", where, what)),
                package_class=package_class,
                package_type=get_text(entry, "type", where, what),
            ))
    return build_report("native", family, get_text(os_info, "version", "metadata.os", what),
                        arch, variant, findings, api_version=version)
