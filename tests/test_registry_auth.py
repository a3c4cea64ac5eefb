"""Registry auth pieces that need no registry: challenges, scopes, credentials files, policy."""

from __future__ import annotations

import base64
import email.utils
import json
import os
import time
from pathlib import Path

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from suture.errors import AuthError, UsageError
from suture.transports import Credentials, RegistryOptions
from suture.transports.reference import parse_reference
from suture.transports.registry import push_artifact
from suture.transports.registry.auth import (
    AuthConfig,
    Challenge,
    TokenCache,
    find_credentials,
    format_scopes,
    normalize_registry,
    parse_scopes,
    parse_www_authenticate,
    pick_challenge,
    read_config_credentials,
    repository_scopes,
)
from suture.transports.registry.client import RegistryClient, registry_errors
from tests.fixtures.images import sample_image

SECRET = "hunter2-do-not-print"


# --- challenges ---------------------------------------------------------------------------


def test_bearer_challenge_with_a_comma_inside_a_quoted_scope() -> None:
    header = ('Bearer realm="https://auth.example.com/token",service="registry.example.com",'
              'scope="repository:team/app:pull,push",error="insufficient_scope"')
    (challenge,) = parse_www_authenticate(header)
    assert challenge.scheme == "bearer"
    assert challenge.params == {"realm": "https://auth.example.com/token",
                                "service": "registry.example.com",
                                "scope": "repository:team/app:pull,push",
                                "error": "insufficient_scope"}


def test_several_challenges_escapes_and_token68() -> None:
    header = ('Negotiate abc123==, BASIC realm="say \\"hi\\"", '
              'Bearer realm=https://a/t , service = svc')
    challenges = parse_www_authenticate(header)
    assert [c.scheme for c in challenges] == ["negotiate", "basic", "bearer"]
    assert challenges[1].params == {"realm": 'say "hi"'}
    assert challenges[2].params == {"realm": "https://a/t", "service": "svc"}
    assert pick_challenge(challenges) == challenges[2]
    assert pick_challenge(challenges[:2]) == challenges[1]
    assert pick_challenge(parse_www_authenticate("Negotiate x")) is None
    assert parse_www_authenticate("") == []


def test_scopes_merge_and_format() -> None:
    scopes = parse_scopes(["repository:a/b:pull", "repository:a/b:push repository:c:pull"])
    assert scopes == repository_scopes("a/b", "pull", "push") | repository_scopes("c", "pull")
    assert format_scopes(scopes) == ["repository:a/b:pull,push", "repository:c:pull"]
    assert parse_scopes(["", "nonsense"]) == frozenset()


def test_token_cache_reuses_a_superset_until_expiry() -> None:
    cache = TokenCache()
    push = repository_scopes("x", "pull", "push")
    cache.put(push, "T1", expires=100.0)
    assert cache.get(repository_scopes("x", "pull"), now=50.0) == "T1"
    assert cache.get(repository_scopes("y", "pull"), now=50.0) is None
    assert cache.get(push, now=100.0) is None  # expired
    cache.discard("T1")
    assert cache.get(push, now=0.0) is None
    assert "T1" not in repr(cache)


# --- credentials files ------------------------------------------------------------------


def _config(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    return path


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize("key", ["https://index.docker.io/v1/", "index.docker.io", "docker.io",
                                 "registry-1.docker.io", "https://index.docker.io/v1"])
def test_docker_hub_is_found_under_every_key(tmp_path: Path, key: str) -> None:
    path = _config(tmp_path, {"auths": {key: {"auth": _b64(f"bob:{SECRET}")}}})
    creds = read_config_credentials(path, "docker.io")
    assert creds is not None and (creds.username, creds.password) == ("bob", SECRET)
    assert normalize_registry(key) == "docker.io"


def test_exact_key_wins_and_other_hosts_do_not_match(tmp_path: Path) -> None:
    path = _config(tmp_path, {"auths": {
        "https://reg.example.com": {"auth": _b64("other:x")},
        "reg.example.com": {"username": "exact", "password": SECRET},
        "reg.example.com:5000": {"auth": _b64("port:x")},
    }})
    creds = read_config_credentials(path, "reg.example.com")
    assert creds is not None and creds.username == "exact"
    port = read_config_credentials(path, "reg.example.com:5000")
    assert port is not None and port.username == "port"
    assert read_config_credentials(path, "elsewhere.example.com") is None
    assert read_config_credentials(tmp_path / "missing.json", "reg.example.com") is None


def test_identity_and_registry_tokens(tmp_path: Path) -> None:
    path = _config(tmp_path, {"auths": {"a.example": {"identitytoken": SECRET},
                                        "b.example": {"registrytoken": SECRET},
                                        "c.example": {}}})
    a = read_config_credentials(path, "a.example")
    b = read_config_credentials(path, "b.example")
    assert a is not None and a.identity_token == SECRET
    assert b is not None and b.registry_token == SECRET
    assert read_config_credentials(path, "c.example") is None
    assert SECRET not in repr(a) and SECRET not in repr(b)


@pytest.mark.parametrize("content", [
    json.dumps({"auths": {"r.example": {"auth": _b64(f"u:{SECRET}")}}})[:-1],  # truncated
    json.dumps({"auths": {"r.example": {"auth": "!!" + SECRET}}}),  # not base64
    json.dumps({"auths": {"r.example": {"auth": _b64(SECRET)}}}),  # no colon
    json.dumps(["not", "an", "object", SECRET]),
])
def test_malformed_files_raise_without_their_content(tmp_path: Path, content: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(AuthError) as info:
        read_config_credentials(path, "r.example")
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    assert str(path) in str(info.value)


def _helper(bin_dir: Path, name: str, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / f"docker-credential-{name}"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)


def test_credential_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    asked = tmp_path / "asked"
    _helper(bin_dir, "good", f'read server; echo "$server" >> {asked}\n'
            f'printf \'{{"ServerURL":"%s","Username":"hub","Secret":"{SECRET}"}}\' "$server"\n')
    _helper(bin_dir, "token", f'printf \'{{"Username":"<token>","Secret":"{SECRET}"}}\'\n')
    _helper(bin_dir, "empty", 'echo "credentials not found in native keychain"; exit 1\n')
    _helper(bin_dir, "broken", "echo 'keychain locked' >&2; exit 2\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    path = _config(tmp_path, {"credHelpers": {"docker.io": "good", "t.example": "token",
                                              "e.example": "empty", "b.example": "broken",
                                              "m.example": "missing"},
                              "auths": {"e.example": {"auth": _b64("fallback:x")}}})
    hub = read_config_credentials(path, "docker.io")
    assert hub is not None and (hub.username, hub.password) == ("hub", SECRET)
    assert asked.read_text().split() == ["https://index.docker.io/v1/"]
    token = read_config_credentials(path, "t.example")
    assert token is not None and token.identity_token == SECRET and not token.password
    # A helper named for a registry is authoritative: "not found" is no credentials.
    assert read_config_credentials(path, "e.example") is None
    with pytest.raises(AuthError, match="keychain locked"):
        read_config_credentials(path, "b.example")
    with pytest.raises(AuthError, match="not on PATH"):
        read_config_credentials(path, "m.example")

    store = _config(tmp_path, {"credsStore": "empty",
                               "auths": {"s.example": {"auth": _b64(f"file:{SECRET}")}}})
    from_file = read_config_credentials(store, "s.example")
    assert from_file is not None and from_file.username == "file"


def test_lookup_order(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    auth_file = _config(tmp_path / "a", {"auths": {"r.example": {"auth": _b64("from-authfile:x")}}})
    (tmp_path / "d").mkdir()
    _config(tmp_path / "d", {"auths": {"r.example": {"auth": _b64("from-docker:x")},
                                       "o.example": {"auth": _b64("docker-only:x")}}})
    given = Credentials("from-flag", SECRET)

    def user(options: RegistryOptions, registry: str = "r.example") -> str | None:
        found = find_credentials(registry, options)
        return found.username if found else None

    assert user(RegistryOptions(credentials=given, auth_file=auth_file)) == "from-flag"
    assert user(RegistryOptions(auth_file=auth_file, docker_config_dir=tmp_path / "d")) \
        == "from-authfile"
    # An auth file given is the only file read.
    assert user(RegistryOptions(auth_file=auth_file, docker_config_dir=tmp_path / "d"),
                "o.example") is None
    assert user(RegistryOptions(docker_config_dir=tmp_path / "d")) == "from-docker"
    assert SECRET not in repr(given) and SECRET not in repr(RegistryOptions(credentials=given))
    assert SECRET not in repr(AuthConfig("u", SECRET, SECRET, SECRET))


# --- client policy -------------------------------------------------------------------------


def test_plain_http_and_credentials_policy(tmp_path: Path) -> None:
    options = RegistryOptions(insecure=frozenset({"lab.example:5000"}),
                              ca_file=tmp_path / "ca.pem")
    client = RegistryClient("reg.example.com", options)
    for host in ("localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000",
                 "lab.example:5000"):
        assert client.allows_http(host), host
    for host in ("reg.example.com", "lab.example:5001", "10.0.0.1:5000", "localhost.evil.com"):
        assert not client.allows_http(host), host
    assert client._verify("https://reg.example.com/v2/") == str(tmp_path / "ca.pem")
    assert client._verify("https://storage.example.net/blob") is True
    assert client._verify("https://lab.example:5000/v2/") is False

    client._base = "https://reg.example.com"
    assert client._may_authorize("https://reg.example.com/v2/x/blobs/uploads/1")
    assert client._may_authorize("https://reg.example.com:443/v2/")
    assert not client._may_authorize("http://reg.example.com/v2/")  # downgrade
    assert not client._may_authorize("https://storage.example.net/blob")
    assert not client._may_authorize("https://reg.example.com:8443/v2/")


def test_retry_after_forms() -> None:
    client = RegistryClient("r.example", RegistryOptions(backoff=0.25))
    resp = requests.Response()
    resp.headers["Retry-After"] = "3"
    assert client._retry_delay(resp, 0) == 3.0
    resp.headers["Retry-After"] = "86400"
    assert client._retry_delay(resp, 0) == 60.0  # capped
    resp.headers["Retry-After"] = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3.0 <= client._retry_delay(resp, 0) <= 5.0
    resp.headers["Retry-After"] = "soon"
    assert client._retry_delay(resp, 2) == 1.0  # backoff * 2**2


def test_registry_error_documents() -> None:
    body = json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown",
                                   "detail": {"Tag": "x"}},
                                  {"code": "DENIED", "message": "no\nway"}]}).encode()
    assert registry_errors(body) == ({"MANIFEST_UNKNOWN", "DENIED"},
                                     "manifest unknown; no way")
    assert registry_errors(b"<html>") == (set(), "")


def test_push_refuses_a_digest_that_is_not_the_artifact() -> None:
    ref = parse_reference("registry.example.com/x@sha256:" + "0" * 64)
    with pytest.raises(UsageError):
        push_artifact(sample_image(), ref, RegistryOptions())


def test_challenge_value_is_immutable_data() -> None:
    assert Challenge("basic", {"realm": "r"}).realm == "r"


@given(st.text(max_size=200))
def test_challenge_parser_never_raises(value: str) -> None:
    for challenge in parse_www_authenticate(value):
        assert challenge.scheme == challenge.scheme.lower()
