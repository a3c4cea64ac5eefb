"""The one place an OCI platform becomes a Debian architecture name."""

from __future__ import annotations

__all__ = ["deb_architecture"]

_DEB_ARCH = {"amd64": "amd64", "arm64": "arm64", "arm": "armhf", "386": "i386",
             "ppc64le": "ppc64el", "s390x": "s390x", "riscv64": "riscv64",
             "mips64le": "mips64el", "loong64": "loong64"}


def deb_architecture(architecture: str, variant: str | None = None) -> str:
    """Debian's name for an OCI ``architecture``/``variant`` (``arm``/``v7`` is
    ``armhf``, ``arm``/``v5`` or ``v6`` is ``armel``); unknown names pass through."""
    if architecture == "arm" and variant in ("v5", "v6"):
        return "armel"
    return _DEB_ARCH.get(architecture, architecture)
