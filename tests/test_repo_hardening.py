"""Repositories named by a hostile image (issue 16, items 4 and 5).

An image chooses its apt sources and apk repositories, and suture fetches them from
this host's network position. These tests check that an image cannot aim those
requests at loopback or private services (a real listener on 127.0.0.1 must see
nothing), that the user's ``--mirror`` and ``--allow-private-repos`` still reach
them, that redirects are checked hop by hop, and that repeated or oversized
repository configuration costs one fetch or one clear error. The archives are the
real local signed repositories of ``tests/fixtures``.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from suture.distro.dpkg.repoerrors import SourcesError
from suture.patch import patch
from suture.patch.model import PatchOptions, PatchResult
from suture.transports.reference import parse_reference
from tests.fixtures.apkrepo import ApkKeys, ApkRepoServer, ApkSpec, apk_image, build_apk, write_oci
from tests.fixtures.aptrepo import AptRepo, GpgKeys
from tests.fixtures.patchimages import (
    DEBIAN_ARCHIVE,
    Archive,
    debian_os_release,
    error_line,
    make_root,
    open_image,
    suture,
    versions,
    write_image,
)

CODENAME = "bookworm"
SECURITY = f"{CODENAME}-security"
ALPINE_URL = "https://dl-cdn.alpinelinux.org/alpine/v3.20/main"


# ---------------------------------------------------------------- a listener


@dataclass
class Listener:
    """A TCP listener on 127.0.0.1 that records every connection it accepts."""

    sock: socket.socket
    seen: list[bytes] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    self.seen.append(conn.recv(4096))
                except OSError:
                    self.seen.append(b"")


@pytest.fixture
def listener() -> Iterator[Listener]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    found = Listener(sock)
    thread = threading.Thread(target=found.serve, daemon=True)
    thread.start()
    yield found
    sock.close()
    thread.join(5)


class _Redirect(BaseHTTPRequestHandler):
    target = ""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def redirector(listener: Listener) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 that redirects every GET to the listener."""
    handler = type("Handler", (_Redirect,), {"target": f"http://127.0.0.1:{listener.port}"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------- a Debian scene


@dataclass
class Scene:
    archive: Archive
    v1: list[Path]
    tmp: Path

    def image(self, tag: str, sources: str) -> str:
        root = make_root(self.tmp / f"root-{tag}", self.v1, debian_os_release(),
                         sources={"etc/apt/sources.list": sources},
                         keyring=self.archive.key_asc())
        return write_image(root, self.tmp, tag)

    def image_with(self, tag: str, files: dict[str, bytes]) -> str:
        root = make_root(self.tmp / f"root-{tag}", self.v1, debian_os_release(),
                         sources={"etc/apt/sources.list":
                                  f"deb {DEBIAN_ARCHIVE} {CODENAME} main\n"},
                         keyring=self.archive.key_asc(), files=files)
        return write_image(root, self.tmp, tag)

    def patch(self, ref: str, *args: str) -> Any:
        return suture("patch", "-i", ref, "--cache-dir", str(self.tmp / "cache"),
                      "--no-host-keyrings", *self.archive.mirror_args(), *args)


@pytest.fixture
def scene(apt_repo: AptRepo, gpg_keys: GpgKeys, tmp_path: Path) -> Scene:
    archive = Archive.create(apt_repo, gpg_keys.good, tmp_path, CODENAME)
    v1 = [archive.add(CODENAME, "a", "1.0-1")]
    archive.add(SECURITY, "a", "2.0-1")
    archive.publish()
    return Scene(archive, v1, tmp_path)


def _debian(*extra: str) -> str:
    return "".join([f"deb {DEBIAN_ARCHIVE} {CODENAME} main\n", *extra])


# ---------------------------------------------------------------- SSRF: apt


def test_image_sources_on_loopback_are_refused(scene: Scene, listener: Listener) -> None:
    """B8: a sources entry aimed at a loopback service: one error naming the URL (its
    password redacted), and the service never hears from suture."""
    evil = f"http://probe:s3cret@127.0.0.1:{listener.port}/ssrf-probe?token=abc"
    ref = scene.image("evil", _debian(f"deb {evil} {CODENAME} main\n"))
    proc = scene.patch(ref, "--dry-run")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = error_line(proc)
    assert f"http://127.0.0.1:{listener.port}/ssrf-probe?token=abc/dists/{CODENAME}/InRelease" \
        in line
    assert "loopback" in line and f"--allow-private-repos 127.0.0.1:{listener.port}" in line
    assert "s3cret" not in proc.stdout + proc.stderr
    assert listener.seen == []


def test_name_resolving_to_loopback_is_refused(scene: Scene, listener: Listener) -> None:
    """The check is on the addresses a name resolves to, not on how the URL is spelled."""
    ref = scene.image("local", _debian(f"deb http://localhost:{listener.port}/x {CODENAME} main\n"))
    proc = scene.patch(ref, "--dry-run")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = error_line(proc)
    assert f"http://localhost:{listener.port}/x/dists/{CODENAME}/InRelease" in line
    assert "localhost resolves to" in line
    assert listener.seen == []


def test_allow_private_repos_lets_the_user_reach_a_local_archive(scene: Scene) -> None:
    """The image's own sources on 127.0.0.1: refused without the flag, patched with it
    (for that host and port only)."""
    url = scene.archive.url
    port = url.rsplit(":", 1)[1]
    ref = scene.image("direct", "".join(f"deb {url} {s} main\n" for s in scene.archive.suites))
    refused = suture("patch", "-i", ref, "--cache-dir", str(scene.tmp / "cache"),
                     "--no-host-keyrings", "--dry-run")
    assert refused.returncode == 1 and "refused" in error_line(refused)
    assert scene.archive.fetched("/dists/") == []
    other_port = suture("patch", "-i", ref, "--cache-dir", str(scene.tmp / "cache"),
                        "--no-host-keyrings", "--dry-run",
                        "--allow-private-repos", f"127.0.0.1:{int(port) + 1}")
    assert other_port.returncode == 1 and "refused" in error_line(other_port)
    for allow in (f"127.0.0.1:{port}", "127.0.0.1", "all"):
        proc = suture("patch", "-i", ref, "--cache-dir", str(scene.tmp / "cache"),
                      "--no-host-keyrings", "-t", "p", "--allow-private-repos", allow)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert versions(open_image(ref.rsplit(":", 1)[0] + ":p"))["a"] == "2.0-1"


def test_redirect_to_a_private_service_is_refused(scene: Scene, redirector: str,
                                                  listener: Listener) -> None:
    """A repository the user allowed redirects to another loopback port: the redirect is
    checked before it is followed, and named in the error."""
    ref = scene.image("redir", _debian(f"deb {redirector}/debian {CODENAME} main\n"))
    proc = scene.patch(ref, "--dry-run", "--allow-private-repos",
                       redirector.removeprefix("http://"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = error_line(proc)
    assert f"{redirector}/debian/dists/{CODENAME}/InRelease (redirected to " \
           f"http://127.0.0.1:{listener.port}/debian/dists/{CODENAME}/InRelease)" in line
    assert listener.seen == []


@pytest.mark.parametrize(("address", "kind"), [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
    ("fd00::1", "private"), ("100.64.0.1", "shared"), ("0.0.0.0", "unspecified"),
])
def test_non_public_addresses_are_refused(address: str, kind: str) -> None:
    """Every non-public range, whatever a name resolves to (the resolver is stubbed);
    one private address among public ones is enough to refuse."""
    from suture.distro.dpkg.repoerrors import PrivateRepository
    from suture.distro.mirrors import RepositoryHosts

    hosts = RepositoryHosts(resolve=lambda host, port: ["151.101.2.132", address])
    with pytest.raises(PrivateRepository) as info:
        hosts.check("http://mirror.example/debian/dists/x/InRelease")
    assert kind in str(info.value) and address in str(info.value)
    # A public address passes; the user's allowance and mirrors pass without resolving.
    RepositoryHosts(resolve=lambda host, port: ["151.101.2.132"]).check("http://a.example/")
    RepositoryHosts(["mirror.example:80"], resolve=lambda h, p: [address]).check(
        "http://mirror.example/debian")
    trusted = RepositoryHosts(trusted=["http://mirror.example/debian"],
                              resolve=lambda h, p: [address])
    trusted.check("http://mirror.example/debian/dists/x/InRelease")
    with pytest.raises(PrivateRepository):  # beside the mirror, not under it
        trusted.check("http://mirror.example/debian-admin/x")
    with pytest.raises(PrivateRepository):
        trusted.check("http://mirror.example/debian/../admin")


def test_connection_that_reaches_a_private_address_is_refused(tmp_path: Path,
                                                            listener: Listener) -> None:
    """DNS rebinding: the name answered a public address when the URL was checked (the
    resolver is stubbed) but the connection reached 127.0.0.1. The connection's own
    address is checked before anything is sent: the listener gets no byte."""
    from suture.distro.dpkg.repo import AptFetcher
    from suture.distro.dpkg.repoerrors import PrivateRepository
    from suture.distro.mirrors import RepositoryHosts

    hosts = RepositoryHosts(resolve=lambda host, port: ["151.101.2.132"])
    with AptFetcher(tmp_path / "cache", hosts=hosts, retries=0, backoff=0) as fetcher, \
            pytest.raises(PrivateRepository) as info:
        fetcher.fetch_meta(f"http://127.0.0.1:{listener.port}/dists/x/InRelease", "InRelease")
    assert "reached 127.0.0.1, a loopback address" in str(info.value)
    assert all(data == b"" for data in listener.seen), listener.seen


# ---------------------------------------------------------------- SSRF: apk


def _apk_image(tmp: Path, keys: ApkKeys, repositories: list[str]) -> str:
    pkgs = [build_apk(ApkSpec("hello", "1.0-r0", files={"usr/bin/hello": b"1\n"}),
                      keys.good, tmp / "v1")]
    return write_oci(apk_image(pkgs, repositories, keys.good), tmp / "layout", "v1")


def _apk_patch(ref: str, tmp: Path, **kw: Any) -> PatchResult:
    options = PatchOptions(cache_dir=tmp / "cache", sandbox="none", **kw)
    return patch(parse_reference(ref), parse_reference(f"oci:{tmp}/layout:p"), options)


def _apk_error(result: PatchResult) -> str:
    """The one platform's error message (the library reports, it does not raise)."""
    [platform] = result.platforms
    assert platform.status == "error" and result.target_digest is None
    return platform.message


def _apk_updates(result: PatchResult) -> list[str]:
    [platform] = result.platforms
    assert platform.status == "patched", platform.message
    assert platform.plan is not None
    return [u.to_version for u in platform.plan.updates]


def test_apk_repository_on_loopback_is_refused(tmp_path: Path, apk_keys: ApkKeys,
                                               listener: Listener) -> None:
    ref = _apk_image(tmp_path, apk_keys, [f"http://127.0.0.1:{listener.port}/alpine/main"])
    message = _apk_error(_apk_patch(ref, tmp_path))
    assert f"http://127.0.0.1:{listener.port}/alpine/main/x86_64/APKINDEX.tar.gz: refused" \
        in message
    assert listener.seen == []


def test_apk_repository_reached_with_the_users_allowance(
        tmp_path: Path, apk_keys: ApkKeys, apk_repo_server: ApkRepoServer) -> None:
    hello2 = ApkSpec("hello", "1.1-r0", files={"usr/bin/hello": b"2\n"})
    apk_repo_server.publish([hello2], apk_keys.good, path="main")
    ref = _apk_image(tmp_path, apk_keys, [apk_repo_server.sub("main")])
    assert "loopback" in _apk_error(_apk_patch(ref, tmp_path))
    assert apk_repo_server.requests == []
    host = apk_repo_server.url.removeprefix("http://")
    assert _apk_updates(_apk_patch(ref, tmp_path, allow_private_repos=(host,))) == ["1.1-r0"]


# ---------------------------------------------------------------- repeated sources


def test_repeated_sources_fetch_each_release_once(scene: Scene) -> None:
    """B10: 300 copies of one line (and the suites repeated over other lines and
    components): every InRelease and index is asked for once."""
    many = f"deb {DEBIAN_ARCHIVE} {CODENAME} main\n" * 300 + \
        f"deb {DEBIAN_ARCHIVE}/ {SECURITY} main\n" * 3
    ref = scene.image("many", many)
    proc = scene.patch(ref, "-t", "p")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert versions(open_image(ref.rsplit(":", 1)[0] + ":p"))["a"] == "2.0-1"
    for suite in scene.archive.suites:
        asked = scene.archive.repo.requests_for(f"/dists/{suite}/InRelease")
        assert len(asked) == 1, (suite, asked)
        assert len(scene.archive.repo.requests_for(f"/dists/{suite}/main/binary-amd64/")) == 1


def test_oversized_sources_file_is_refused(scene: Scene) -> None:
    """A sources file over the size bound: one line naming it. Nothing was requested but
    what the prefetch started on from the image's valid sources.list, read before it
    (one suite's indexes: the pass meets sources.list first), and no package."""
    padding = ("# " + "x" * 1000 + "\n") * 1100
    ref = scene.image_with("big", {"etc/apt/sources.list.d/big.list":
                                   (padding + f"deb {DEBIAN_ARCHIVE} {CODENAME} main\n").encode()})
    proc = scene.patch(ref, "--dry-run")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = error_line(proc)
    assert "/etc/apt/sources.list.d/big.list" in line and "byte limit" in line
    _only_the_prefetch_of_sources_list(scene)


def test_too_many_distinct_sources_are_refused(scene: Scene) -> None:
    lines = "".join(f"deb {DEBIAN_ARCHIVE} suite{i} main\n" for i in range(300))
    ref = scene.image_with("wide", {"etc/apt/sources.list.d/wide.list": lines.encode()})
    proc = scene.patch(ref, "--dry-run")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = error_line(proc)
    assert "/etc/apt/sources.list.d/wide.list:" in line and "distinct apt sources" in line
    _only_the_prefetch_of_sources_list(scene)


def _only_the_prefetch_of_sources_list(scene: Scene) -> None:
    """What a refused image was allowed to cost: the prefetch of the suite its valid
    sources.list names (InRelease, Packages), nothing of the refused file's, no package."""
    asked = [r.path for r in scene.archive.repo.requests]
    assert all(p.startswith(f"/dists/{CODENAME}/") for p in asked), asked
    assert len(asked) <= 2, asked


def test_apk_repeated_repositories_fetch_the_index_once(
        tmp_path: Path, apk_keys: ApkKeys, apk_repo_server: ApkRepoServer) -> None:
    hello2 = ApkSpec("hello", "1.1-r0", files={"usr/bin/hello": b"2\n"})
    apk_repo_server.publish([hello2], apk_keys.good, path="main")
    ref = _apk_image(tmp_path, apk_keys, [ALPINE_URL] * 200 + [ALPINE_URL + "/"])
    result = _apk_patch(ref, tmp_path, mirrors={ALPINE_URL: apk_repo_server.sub("main")})
    assert _apk_updates(result) == ["1.1-r0"]
    assert len(apk_repo_server.requests_for("/APKINDEX.tar.gz")) == 1


def test_apk_oversized_repositories_file_is_refused(
        tmp_path: Path, apk_keys: ApkKeys, apk_repo_server: ApkRepoServer) -> None:
    ref = _apk_image(tmp_path, apk_keys, ["#" + "x" * 1000] * 1100 + [ALPINE_URL])
    message = _apk_error(_apk_patch(ref, tmp_path,
                                    mirrors={ALPINE_URL: apk_repo_server.sub("main")}))
    assert "/etc/apk/repositories" in message and "byte limit" in message
    assert apk_repo_server.requests == []


def test_sources_bound_names_the_file() -> None:
    from suture.distro.dpkg.sources import parse_sources_files, unique_sources

    files = {"etc/apt/sources.list.d/a.list": b"deb http://x/d s main\n" * 5000}
    entries = parse_sources_files(files)
    assert len(entries) == 5000 and len(unique_sources(entries)) == 1
    with pytest.raises(SourcesError) as info:
        parse_sources_files(files, max_bytes=1000)
    assert info.value.path == "/etc/apt/sources.list.d/a.list"
