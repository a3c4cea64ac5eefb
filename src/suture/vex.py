"""OpenVEX documents (v0.2.0) saying which vulnerabilities a patched image fixes.

Built from the plan's updates only: one statement per vulnerability with status
``fixed``, naming each patched image (per platform manifest, and the index when
there is one) as a product, with the upgraded packages as package-URL
subcomponents at their new versions, so ``trivy --vex`` can suppress the findings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from suture.plan import Update

CONTEXT = "https://openvex.dev/ns/v0.2.0"
# Distributions whose packages are apk packages (os-release ID).
APK_NAMESPACES = frozenset({"alpine", "wolfi", "chainguard", "postmarketos"})


@dataclass(frozen=True)
class VexProduct:
    """A patched image: its package URL and the updates in it.

    ``distro`` is the purl ``distro`` qualifier (``debian-12``); ``namespace`` the
    purl namespace of its packages (``debian``, ``ubuntu``, ``alpine``, ``wolfi``);
    ``package_type`` the purl type (``deb``, ``apk``, ``rpm``; by default ``apk`` for the apk
    distributions' namespaces and ``deb`` otherwise).
    """

    purl: str
    updates: tuple[Update, ...]
    namespace: str
    distro: str
    package_type: str = ""

    @property
    def purl_type(self) -> str:
        if self.package_type:
            return self.package_type
        return "apk" if self.namespace.lower() in APK_NAMESPACES else "deb"


def _enc(text: str) -> str:
    return quote(text, safe="~.-_")


def oci_purl(name: str, digest: str, *, repository_url: str | None = None,
             arch: str | None = None) -> str:
    """``pkg:oci/<name>@sha256%3A<hex>[?arch=..&repository_url=..]`` (purl spec encoding)."""
    qualifiers = []
    if arch:
        qualifiers.append(f"arch={_enc(arch)}")
    if repository_url:
        qualifiers.append(f"repository_url={quote(repository_url, safe='/.-_~:')}")
    tail = ("?" + "&".join(qualifiers)) if qualifiers else ""
    return f"pkg:oci/{_enc(name.lower())}@{_enc(digest)}{tail}"


def deb_purl(update: Update, namespace: str, distro: str) -> str:
    """``pkg:deb/<namespace>/<name>@<version>?arch=<arch>&distro=<distro>``."""
    return package_url("deb", update.name, update.to_version, update.architecture,
                       namespace, distro)


def apk_purl(update: Update, namespace: str, distro: str) -> str:
    """``pkg:apk/<namespace>/<name>@<version>?arch=<arch>&distro=<distro>``."""
    return package_url("apk", update.name, update.to_version, update.architecture,
                       namespace, distro)


# os-release ID -> the OS family Trivy (0.50 and later) names in an rpm purl's distro.
RPM_NAMESPACES = {"rhel": "redhat", "centos": "centos", "rocky": "rocky", "almalinux": "alma",
                  "ol": "oracle", "amzn": "amazon", "fedora": "fedora",
                  "azurelinux": "azurelinux", "mariner": "cbl-mariner",
                  "opensuse-leap": "opensuse-leap", "opensuse-tumbleweed": "opensuse-tumbleweed",
                  "sles": "sles", "sle-micro": "slem", "photon": "photon"}
# Trivy's OS family -> its rpm purl namespace where the two differ (SUSE's families).
_RPM_PURL_NAMESPACE = {"sles": "suse", "slem": "suse", "opensuse-leap": "opensuse",
                       "opensuse-tumbleweed": "opensuse"}


def rpm_purl(update: Update, namespace: str, distro: str) -> str:
    """``pkg:rpm/<family>/<name>@<version>-<release>?arch=<arch>&distro=<family>-<version>
    [&epoch=<n>]`` as Trivy writes it: the namespace is Trivy's OS family for the
    os-release ID ``namespace`` (``rhel`` -> ``redhat``, ``amzn`` -> ``amazon``; SUSE's
    namespaces are ``suse`` and ``opensuse``, their distros ``sles-15.6`` and
    ``opensuse-leap-15.6``), the epoch a qualifier (only when nonzero), never in the
    version; qualifiers sorted."""
    return package_url("rpm", update.name, update.to_version, update.architecture,
                       namespace, distro)


def package_url(purl_type: str, name: str, version: str, architecture: str, namespace: str,
                distro: str) -> str:
    """The purl of a package of a distribution as Trivy writes it (see :func:`deb_purl`,
    :func:`apk_purl`, :func:`rpm_purl`): ``purl_type`` ``deb``, ``apk`` or ``rpm``;
    ``namespace`` the os-release ID; ``distro`` ``<ID>-<VERSION_ID>``. The VEX and the
    SBOMs name packages with it, so a scanner matches them."""
    if purl_type == "rpm":
        family = RPM_NAMESPACES.get(namespace.lower(), namespace.lower())
        head, sep, tail = distro.partition("-")
        if sep and head.lower() == namespace.lower():
            distro = f"{family}-{tail}"
        epoch, sep, bare = version.partition(":")
        if not sep or not epoch.isdigit():
            epoch, bare = "", version
        qualifiers = [f"arch={_enc(architecture)}", f"distro={_enc(distro)}"]
        if epoch and int(epoch):
            qualifiers.append(f"epoch={int(epoch)}")
        return (f"pkg:rpm/{_enc(_RPM_PURL_NAMESPACE.get(family, family))}/{_enc(name)}"
                f"@{_enc(bare)}?" + "&".join(qualifiers))
    ns = namespace.lower() if purl_type == "apk" else namespace
    return (f"pkg:{purl_type}/{_enc(ns)}/{_enc(name)}@{_enc(version)}"
            f"?arch={_enc(architecture)}&distro={_enc(distro)}")


def package_purl(update: Update, product: VexProduct) -> str:
    """The purl of ``update`` as a package of ``product``'s distribution."""
    return package_url(product.purl_type, update.name, update.to_version, update.architecture,
                       product.namespace, product.distro)


def vex_subcomponents(update: Update, product: VexProduct) -> tuple[str, ...]:
    """The purls naming ``update`` as a subcomponent of ``product`` in a statement.

    A statement's purl matches a scanned package's only when every qualifier it has is
    there with the same value (go-vex's matching, which Trivy uses), and scanners
    disagree on ``distro`` for deb and apk packages (Trivy 0.74: ``debian-12.15`` from
    ``/etc/debian_version``, ``3.20.3`` for Alpine; Syft: ``debian-12``,
    ``alpine-3.20.3``), so deb and apk subcomponents carry only ``arch``: the product,
    an image digest, already scopes them. A deb epoch is written both ways scanners
    write it: in the version (Syft) and as an ``epoch`` qualifier with the version
    without it (Trivy). rpm purls are :func:`rpm_purl`'s, Trivy's own form, without
    ``distro`` too: Trivy names Amazon Linux's from ``/etc/system-release``
    (``amazon-2023.6.20241010``), which os-release's ``VERSION_ID`` does not give."""
    if product.purl_type == "rpm":
        head, _, query = package_purl(update, product).partition("?")
        kept = [q for q in query.split("&") if not q.startswith("distro=")]
        return (f"{head}?{'&'.join(kept)}",)
    ns = product.namespace.lower() if product.purl_type == "apk" else product.namespace
    head = f"pkg:{product.purl_type}/{_enc(ns)}/{_enc(update.name)}@"
    arch = f"arch={_enc(update.architecture)}"
    out = [f"{head}{_enc(update.to_version)}?{arch}"]
    epoch, sep, bare = update.to_version.partition(":")
    if product.purl_type == "deb" and sep and epoch.isdigit() and int(epoch):
        out.append(f"{head}{_enc(bare)}?{arch}&epoch={int(epoch)}")
    return tuple(out)


def build_openvex(products: Sequence[VexProduct], *, author: str, timestamp: str,
                  tooling: str) -> dict[str, object]:
    """The OpenVEX document for ``products``; deterministic for the same input.

    ``timestamp`` is RFC 3339 with a time zone (the caller's clock). Products
    without vulnerability identifiers in their updates produce no statements.
    """
    by_vuln: dict[str, dict[str, set[str]]] = {}
    for product in products:
        for update in product.updates:
            subs = vex_subcomponents(update, product)
            for vuln in update.vulnerabilities:
                by_vuln.setdefault(vuln, {}).setdefault(product.purl, set()).update(subs)
    statements = []
    for vuln in sorted(by_vuln):
        statements.append({
            "vulnerability": {"name": vuln},
            "timestamp": timestamp,
            "products": [
                {"@id": purl, "subcomponents": [{"@id": s} for s in sorted(subs)]}
                for purl, subs in sorted(by_vuln[vuln].items())
            ],
            "status": "fixed",
        })
    body = json.dumps(statements, sort_keys=True).encode()
    return {
        "@context": CONTEXT,
        "@id": "https://openvex.dev/docs/public/vex-" + hashlib.sha256(body).hexdigest(),
        "author": author,
        "timestamp": timestamp,
        "version": 1,
        "tooling": tooling,
        "statements": statements,
    }
