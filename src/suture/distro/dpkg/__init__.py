"""The dpkg family: Debian versions, control data and the status database, ``.deb`` archives.

``repo`` (apt sources, Release files, Packages indexes) is imported on its own.

Everything here is pure: functions over bytes, strings and streams, with no
knowledge of where the data came from.
"""

from __future__ import annotations

from suture.distro.dpkg.control import (
    Conffile,
    InstalledPackage,
    PackageStatus,
    Paragraph,
    Relation,
    format_paragraph,
    format_paragraphs,
    format_relations,
    parse_conffiles,
    parse_md5sums,
    parse_package_status,
    parse_paragraphs,
    parse_relations,
    parse_status,
)
from suture.distro.dpkg.deb import (
    ControlFile,
    DataEntry,
    DebControl,
    iter_deb_data,
    read_deb,
    read_deb_control,
)
from suture.distro.dpkg.version import Version, compare_versions, parse_version, version_key

__all__ = [
    "Conffile",
    "ControlFile",
    "DataEntry",
    "DebControl",
    "InstalledPackage",
    "PackageStatus",
    "Paragraph",
    "Relation",
    "Version",
    "compare_versions",
    "format_paragraph",
    "format_paragraphs",
    "format_relations",
    "iter_deb_data",
    "parse_conffiles",
    "parse_md5sums",
    "parse_package_status",
    "parse_paragraphs",
    "parse_relations",
    "parse_status",
    "parse_version",
    "read_deb",
    "read_deb_control",
    "version_key",
]
