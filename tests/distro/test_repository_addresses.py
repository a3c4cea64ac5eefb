"""Which resolved addresses a repository the image names may not reach."""

from __future__ import annotations

import ipaddress

import pytest

from suture.distro.mirrors import RepositoryHosts, address_class


@pytest.mark.parametrize(("address", "why"), [
    ("127.0.0.1", "loopback"), ("::1", "loopback"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),  # cloud metadata, links
    ("10.1.2.3", "private"), ("172.20.0.1", "private"), ("192.168.1.1", "private"),
    ("fd00::1", "private"), ("::ffff:10.0.0.1", "private"), ("0.1.2.3", "private"),
    ("100.64.1.1", "shared (100.64.0.0/10)"), ("0.0.0.0", "unspecified"),
    ("224.0.0.1", "multicast"),
    # Public, and the ranges egress proxies and fake-IP resolvers answer public names
    # with (this machine resolves the Debian archive to 203.0.113.80): allowed.
    ("151.101.2.132", None), ("2a04:4e42::644", None), ("203.0.113.80", None),
    ("198.18.0.1", None), ("192.0.2.1", None),
])
def test_address_class(address: str, why: str | None) -> None:
    assert address_class(ipaddress.ip_address(address)) == why


@pytest.mark.parametrize("spec", ["deb.debian.org", "127.0.0.1:8080", "[::1]:80", "::1",
                                  "mirror.local:443", "all", "ALL"])
def test_allow_private_repos_takes_hosts(spec: str) -> None:
    RepositoryHosts.parse_rule(spec)


@pytest.mark.parametrize("spec", ["::bad::", "host:0", "host:70000", "a..b", "x y", "",
                                  "host:port", "[::1"])
def test_allow_private_repos_refuses_what_is_no_host(spec: str) -> None:
    with pytest.raises(ValueError, match="is not HOST"):
        RepositoryHosts.parse_rule(spec)


def test_each_host_is_resolved_once_per_run() -> None:
    """One lookup per (host, port) however many packages are fetched, from however many
    threads: a burst of lookups is what slow resolvers answer late. A failed lookup is
    not remembered."""
    import threading

    from suture.distro.mirrors import RepositoryHosts

    calls: list[tuple[str, int]] = []
    failing = {"flaky.example": 1}

    def resolve(host: str, port: int) -> list[str]:
        calls.append((host, port))
        if failing.get(host):
            failing[host] -= 1
            raise OSError("temporary failure in name resolution")
        return ["198.51.100.7"]

    hosts = RepositoryHosts(resolve=resolve)
    workers = [threading.Thread(target=hosts.check, args=(f"http://deb.example/pool/{n}.deb",))
               for n in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    hosts.check("https://deb.example/dists/x/InRelease")
    assert calls == [("deb.example", 80), ("deb.example", 443)]
    hosts.check("http://flaky.example/a")
    hosts.check("http://flaky.example/b")
    hosts.check("http://flaky.example/c")
    assert calls[2:] == [("flaky.example", 80)] * 2
