"""What the user says about repositories, shared by every family: mirrors (archive URL
prefixes replaced, ``--mirror FROM=TO``) and which repository hosts may be private.

An image names its own repositories (apt sources, ``/etc/apk/repositories``), and
suture fetches them from this host's position on the network. So that an image
cannot aim those requests at services only this host reaches (a loopback admin
port, a cloud metadata endpoint, the office network), :class:`RepositoryHosts`
refuses URLs whose host resolves to a loopback, link-local, private, shared
(100.64/10) or otherwise non-global address, unless the user allowed that host
(``--allow-private-repos``) or the URL is under one of the user's mirrors.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from suture.distro.errors import PrivateRepository

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
# Networks of a site's own hosts: RFC 1918, "this network", IPv6 unique local (RFC 4193)
# and site-local (deprecated, still routed inside some sites).
_PRIVATE = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fec0::/10"))
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _norm(url: str) -> str:
    return url.rstrip("/") + "/"


def mirror_url(url: str, mirrors: Mapping[str, str]) -> str:
    """``url`` with its longest matching prefix replaced by that prefix's mirror.

    A prefix matches whole path segments (``.../debian`` does not match
    ``.../debian-security``); a URL no prefix matches is returned unchanged.
    """
    target = _norm(url)
    for prefix in sorted(mirrors, key=lambda p: len(_norm(p)), reverse=True):
        if target.startswith(_norm(prefix)):
            return (_norm(mirrors[prefix]) + target[len(_norm(prefix)):]).rstrip("/")
    return url


def address_class(address: IPAddress) -> str | None:
    """Why ``address`` is not a public one (``"loopback"``, ``"link-local"``,
    ``"private"``...), or ``None`` when it is a global unicast address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if address in _SHARED:
        return "shared (100.64.0.0/10)"
    if any(address in network for network in _PRIVATE):
        return "private"
    # Documentation, benchmarking and other reserved ranges are not refused: they
    # reach no host's own or internal services, and DNS behind egress proxies and
    # fake-IP resolvers answers with them for public names.
    return None


def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _valid_host(host: str) -> bool:
    """An IP address, or a DNS name (letters, digits, ``-``, ``_``, dot-separated)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        labels = host.rstrip(".").split(".")
        return all(label and label.replace("-", "").replace("_", "").isalnum()
                   and label.isascii() for label in labels)


@dataclass(frozen=True)
class _HostRule:
    host: str
    port: int | None

    @classmethod
    def parse(cls, spec: str) -> _HostRule:
        spec = spec.strip().lower()
        if spec.startswith("["):  # [v6] or [v6]:port
            host, bracket, rest = spec[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ValueError(f"{spec!r} is not HOST[:PORT]")
            port = rest[1:]
        elif spec.count(":") == 1:
            host, _, port = spec.partition(":")
        else:  # a name, an IPv4 address, or a bare IPv6 address
            host, port = spec, ""
        if not _valid_host(host) or (port and not (port.isdigit() and 0 < int(port) < 65536)):
            raise ValueError(f"{spec!r} is not HOST[:PORT]")
        return cls(host, int(port) if port else None)

    def matches(self, host: str, port: int) -> bool:
        return self.host == host and self.port in (None, port)


class RepositoryHosts:
    """Decides whether a repository URL may be fetched from this host.

    ``allow``: ``HOST``, ``HOST:PORT`` (``[v6]:PORT``) or ``all``, hosts whose
    private addresses the user accepts. ``trusted``: URL prefixes (the targets of
    the user's mirrors) that are fetched whatever they resolve to. ``resolve``
    maps (host, port) to addresses (default: :func:`socket.getaddrinfo`); each
    (host, port) is resolved once per instance (one run), as apt resolves a host once:
    a burst of lookups for the same name (one per package download) is what slow or
    rate-limiting resolvers answer late (5 s timeouts were measured here), and a
    name that changes address mid-run is still checked where the connection lands
    (:meth:`check_peer`).
    """

    def __init__(self, allow: Iterable[str] = (), trusted: Iterable[str] = (), *,
                 resolve: Resolver | None = None) -> None:
        specs = [a for a in allow if a.strip()]
        self.allow_all = any(a.strip().lower() == "all" for a in specs)
        self.rules = tuple(_HostRule.parse(a) for a in specs if a.strip().lower() != "all")
        self.trusted = tuple(_norm(t) for t in trusted)
        self._resolver = resolve or _getaddrinfo
        self._resolved: dict[tuple[str, int], list[str]] = {}
        self._resolving = threading.Lock()
        # (host, port) pairs a checked URL was allowed to reach on a private address.
        self._private_ok: set[tuple[str, int]] = set()

    def _resolve(self, host: str, port: int) -> list[str]:
        """``host``'s addresses, looked up once; concurrent callers wait for the one
        lookup. A failed lookup is not kept (the next URL tries again)."""
        with self._resolving:
            found = self._resolved.get((host, port))
            if found is None:
                found = self._resolved[(host, port)] = self._resolver(host, port)
            return found

    @classmethod
    def parse_rule(cls, spec: str) -> None:
        """Raise :class:`ValueError` when ``spec`` is not ``all`` or ``HOST[:PORT]``."""
        if spec.strip().lower() != "all":
            _HostRule.parse(spec)

    def _trusted(self, url: str) -> bool:
        target = _norm(url.split("?", 1)[0].split("#", 1)[0])
        if any(seg in (".", "..") for seg in urlsplit(target).path.split("/")):
            return False
        return any(target.startswith(prefix) for prefix in self.trusted)

    def check(self, url: str, *, shown: str | None = None) -> None:
        """Raise :class:`PrivateRepository` when ``url`` may not be fetched.

        ``shown`` is the URL as messages may name it (credentials redacted). A
        name that does not resolve passes: the request itself will fail.
        """
        if self.allow_all:
            return
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        try:
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 80)
        except ValueError:
            port = _DEFAULT_PORTS.get(parts.scheme, 80)
        if any(rule.matches(host, port) for rule in self.rules) or self._trusted(url):
            self._private_ok.add((host, port))
            return
        try:
            addresses = self._resolve(host, port)
        except (OSError, UnicodeError):
            return
        for text in addresses:
            try:
                address = ipaddress.ip_address(text.split("%", 1)[0])
            except ValueError:
                continue
            kind = address_class(address)
            if kind is not None:
                where = f"{host}:{port}" if parts.port else host
                what = f"{host} is" if text == host else f"{host} resolves to {text}, which is"
                raise _refused(f"{shown or url}: refused: {what} a {kind} address",
                               shown or url, where)

    def check_peer(self, host: str, port: int, address: str) -> None:
        """Raise :class:`PrivateRepository` when a connection to ``host``:``port`` reached
        ``address`` and that is private, unless a URL check allowed this host privately."""
        host = host.strip("[]").lower()
        if self.allow_all or (host, port) in self._private_ok:
            return
        try:
            kind = address_class(ipaddress.ip_address(address.split("%", 1)[0]))
        except ValueError:
            return
        if kind is not None:
            raise _refused(f"{host}:{port}: refused: the connection reached {address}, a "
                           f"{kind} address", f"{host}:{port}", f"{host}:{port}")


def _refused(message: str, url: str, where: str) -> PrivateRepository:
    return PrivateRepository(
        message, url=url,
        hint=f"a repository the image names may not reach this host's or its network's "
             f"private services; if this one is yours, pass --allow-private-repos {where}, "
             f"or map it with --mirror")
