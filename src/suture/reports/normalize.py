"""Names scanners disagree on: OS families and CPU architectures.

Trivy, Grype and copa documents name the same distribution differently (Trivy
``redhat``, Grype ``redhat``, os-release ``rhel``; Trivy ``amazon``, Grype
``amazonlinux``, os-release ``amzn``) and may write an architecture as the
kernel or the distribution calls it (``x86_64``, ``aarch64``, ``armhf``).
These functions map both to one spelling: the ``ID`` of ``/etc/os-release``
(what image inspection reads) and the OCI platform names.
"""

from __future__ import annotations

__all__ = ["normalize_architecture", "normalize_os_family"]

# scanner or human name -> os-release ID. Keys are lower case. Names that already are
# the os-release ID (debian, ubuntu, alpine, wolfi, chainguard, centos, fedora, photon,
# azurelinux, sles, minimos, echo, bottlerocket, ...) map to themselves.
_OS_ALIASES: dict[str, str] = {
    # Debian family
    "debian gnu/linux": "debian",
    # Alpine family (Trivy: alpine/wolfi/chainguard; Grype the same)
    "alpine linux": "alpine",
    "wolfi linux": "wolfi",
    # Red Hat family
    "redhat": "rhel",  # Trivy, Grype and copa
    "red hat enterprise linux": "rhel",
    "red hat enterprise linux server": "rhel",
    "centos-stream": "centos",  # Trivy; CentOS Stream's os-release ID is centos
    "centos stream": "centos",
    "alma": "almalinux",  # Trivy and copa
    "rockylinux": "rocky",  # Grype
    "rocky linux": "rocky",
    "oracle": "ol",  # Trivy and copa
    "oraclelinux": "ol",  # Grype
    "oracle linux server": "ol",
    "amazon": "amzn",  # Trivy and copa
    "amazonlinux": "amzn",  # Grype
    "amazon linux": "amzn",
    "cbl-mariner": "mariner",  # Trivy and copa
    "common base linux mariner": "mariner",
    "azure linux": "azurelinux",
    # SUSE family
    "suse linux enterprise server": "sles",  # older Trivy
    "slem": "sle-micro",  # Trivy
    "suse linux enterprise micro": "sle-micro",
    "opensuse.leap": "opensuse-leap",  # older Trivy
    "opensuseleap": "opensuse-leap",  # Grype
    "opensuse leap": "opensuse-leap",
    "opensuse.tumbleweed": "opensuse-tumbleweed",  # older Trivy
    "opensuse tumbleweed": "opensuse-tumbleweed",
    # others
    "archlinux": "arch",  # Grype and copa
    "arch linux": "arch",
}

# name -> (OCI architecture, the variant the name implies)
_ARCH_ALIASES: dict[str, tuple[str, str | None]] = {
    "amd64": ("amd64", None),
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "x64": ("amd64", None),
    "arm64": ("arm64", None),
    "aarch64": ("arm64", None),
    "armv8": ("arm64", None),
    "386": ("386", None),
    "i386": ("386", None),
    "i486": ("386", None),
    "i586": ("386", None),
    "i686": ("386", None),
    "x86": ("386", None),
    "arm": ("arm", None),
    "armhf": ("arm", "v7"),  # Debian
    "armv7": ("arm", "v7"),  # Alpine
    "armv7l": ("arm", "v7"),  # uname
    "armv7hl": ("arm", "v7"),  # rpm
    "armel": ("arm", "v6"),  # as containerd and suture.oci normalise it
    "armv6": ("arm", "v6"),
    "armv6l": ("arm", "v6"),
    "armhfp": ("arm", "v7"),
    "armv5": ("arm", "v5"),
    "armv5l": ("arm", "v5"),
    "armv5tel": ("arm", "v5"),
    "ppc64le": ("ppc64le", None),
    "ppc64el": ("ppc64le", None),  # Debian
    "powerpc64le": ("ppc64le", None),
    "ppc64": ("ppc64", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
    "mips64el": ("mips64le", None),  # Debian
    "mips64le": ("mips64le", None),
    "mipsel": ("mipsle", None),
    "mipsle": ("mipsle", None),
    "loongarch64": ("loong64", None),
    "loong64": ("loong64", None),
}

_OS_NAMES = {"linux", "windows", "freebsd", "darwin"}


def normalize_os_family(name: str) -> str:
    """The os-release ``ID`` for a distribution name as a scanner writes it.

    Lower-cased and trimmed; known aliases mapped (``redhat`` -> ``rhel``,
    ``amazonlinux`` -> ``amzn``, ``opensuse.leap`` -> ``opensuse-leap``, ...); any
    other name is returned lower-cased. Idempotent.
    """
    key = " ".join(name.strip().lower().split())
    return _OS_ALIASES.get(key, key)


def _variant(text: str | None) -> str | None:
    if text is None:
        return None
    value = text.strip().lower()
    if not value:
        return None
    if value.isdigit():
        value = "v" + value
    return value


def normalize_architecture(architecture: str,
                           variant: str | None = None) -> tuple[str, str | None]:
    """The OCI ``(architecture, variant)`` for an architecture as a scanner writes it.

    Accepts kernel, Debian, Alpine and rpm names (``x86_64``, ``aarch64``,
    ``armhf``, ``armv7``, ``i686``, ``ppc64el``, ...) and ``ARCH/VARIANT`` or
    ``OS/ARCH/VARIANT`` strings. A variant given explicitly wins over one the name
    implies (``armhf`` implies ``v7``); ``amd64``'s baseline ``v1`` is dropped, as
    OCI does. Unknown names are returned lower-cased.
    """
    text = architecture.strip().lower()
    parts = [p for p in text.split("/") if p]
    if len(parts) >= 2 and parts[0] in _OS_NAMES:
        parts = parts[1:]
    if len(parts) >= 2:
        text, variant = parts[0], variant or parts[1]
    elif parts:
        text = parts[0]
    arch, implied = _ARCH_ALIASES.get(text, (text, None))
    var = _variant(variant) or implied
    if arch == "amd64" and var == "v1":
        var = None
    return arch, var
