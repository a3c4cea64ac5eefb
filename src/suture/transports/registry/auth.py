"""Registry credentials, authentication challenges and token scopes.

Credentials are looked up in this order (the first that names the registry wins):

1. ``RegistryOptions.credentials`` (``--creds``), for every registry;
2. ``RegistryOptions.auth_file`` when it is set (the CLI fills it from
   ``--authfile`` or ``$REGISTRY_AUTH_FILE``); it is then the only file read;
3. ``config.json`` in ``RegistryOptions.docker_config_dir``, else in ``~/.docker``.

In a ``config.json`` a ``credHelpers`` entry for the registry wins, then the
``credsStore`` helper, then the ``auths`` entry (base64 ``auth``, or
``username``/``password``, or ``identitytoken``, or ``registrytoken``). Helpers
are run as ``docker-credential-NAME get`` with the server on stdin, found on
``PATH``. Docker Hub is known by every key Docker writes for it
(``https://index.docker.io/v1/``, ``index.docker.io``, ``docker.io``,
``registry-1.docker.io``).

Nothing here performs HTTP; :mod:`suture.transports.registry.client` does. No
secret is ever placed in a message, a log record or a ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suture.errors import AuthError
from suture.transports import RegistryOptions

log = logging.getLogger(__name__)

DOCKER_HUB = "docker.io"
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
_DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_MAX_CONFIG = 4 << 20
_HELPER_TIMEOUT = 60.0


# --- credentials -----------------------------------------------------------------


@dataclass(frozen=True)
class AuthConfig:
    """Credentials for one registry. Secrets never appear in ``repr``.

    ``identity_token`` is an OAuth2 refresh token (``docker login`` against a
    registry that issues them); ``registry_token`` is a bearer token sent as is.
    ``source`` says where the credentials came from (never what they are).
    """

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    registry_token: str = field(default="", repr=False)
    source: str = ""

    @property
    def has_password(self) -> bool:
        return bool(self.username) and bool(self.password)

    def basic_header(self) -> str:
        """The ``Authorization`` value for HTTP basic authentication."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def normalize_registry(key: str) -> str:
    """The registry host a ``config.json`` key names: scheme and path dropped, lowercased.

    Every Docker Hub spelling becomes ``docker.io``.
    """
    host = key.strip()
    for prefix in ("https://", "http://"):
        if host.lower().startswith(prefix):
            host = host[len(prefix):]
            break
    host = host.split("/", 1)[0].lower()
    return DOCKER_HUB if host in _DOCKER_HUB_HOSTS else host


def default_server(registry: str) -> str:
    """The server name Docker uses for a registry in ``auths`` and with helpers."""
    return DOCKER_HUB_SERVER if normalize_registry(registry) == DOCKER_HUB else registry


def find_credentials(registry: str, options: RegistryOptions) -> AuthConfig | None:
    """Credentials for ``registry`` (a reference's registry, e.g. ``docker.io``), or ``None``.

    Raises :class:`~suture.errors.AuthError` for an unreadable or malformed
    credentials file or a failing credential helper; never includes a secret.
    """
    if options.credentials is not None:
        return AuthConfig(options.credentials.username, options.credentials.password,
                          source="--creds")
    if options.auth_file is not None:
        return read_config_credentials(Path(options.auth_file), registry)
    directory = options.docker_config_dir or Path.home() / ".docker"
    return read_config_credentials(Path(directory) / "config.json", registry)


def read_config_credentials(path: Path, registry: str) -> AuthConfig | None:
    """Credentials for ``registry`` from a Docker/containers ``config.json``.

    A missing file holds no credentials. See the module docstring for the order.
    """
    try:
        with path.open("rb") as fh:
            raw = fh.read(_MAX_CONFIG + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuthError(f"cannot read credentials file {path}: {exc.strerror}") from None
    if len(raw) > _MAX_CONFIG:
        raise AuthError(f"credentials file {path} is larger than {_MAX_CONFIG} bytes")
    try:
        doc = json.loads(raw) if raw.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AuthError(f"credentials file {path} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise AuthError(f"credentials file {path} is not a JSON object")
    wanted = normalize_registry(registry)

    helpers = doc.get("credHelpers")
    if isinstance(helpers, dict):
        for key, helper in helpers.items():
            if isinstance(key, str) and isinstance(helper, str) and helper \
                    and normalize_registry(key) == wanted:
                return run_credential_helper(helper, default_server(key) if
                                             normalize_registry(key) == DOCKER_HUB else key)

    auths = doc.get("auths")
    entry_key, entry = _find_auth_entry(auths if isinstance(auths, dict) else {}, registry)

    store = doc.get("credsStore")
    if isinstance(store, str) and store:
        found = run_credential_helper(store, entry_key or default_server(registry))
        if found is not None:
            return found
    if entry is None:
        return None
    return _parse_auth_entry(entry, f"{path} ({entry_key})")


def _find_auth_entry(auths: dict[str, Any], registry: str) -> tuple[str | None, Any]:
    # An exact key first (what `docker login` wrote), then any spelling of the same host.
    if registry in auths:
        return registry, auths[registry]
    wanted = normalize_registry(registry)
    for key in sorted(auths):
        if isinstance(key, str) and normalize_registry(key) == wanted:
            return key, auths[key]
    return None, None


def _parse_auth_entry(entry: Any, where: str) -> AuthConfig | None:
    if not isinstance(entry, dict):
        raise AuthError(f"malformed credentials entry in {where}")
    username = entry.get("username") or ""
    password = entry.get("password") or ""
    encoded = entry.get("auth") or ""
    if encoded:
        try:
            decoded = base64.b64decode(str(encoded), validate=False).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise AuthError(f"malformed base64 'auth' in {where}") from None
        user, sep, secret = decoded.partition(":")
        if not sep:
            raise AuthError(f"malformed 'auth' in {where}: expected USER:PASSWORD")
        username, password = user, secret
    identity = entry.get("identitytoken") or ""
    registry_token = entry.get("registrytoken") or ""
    if not (username or password or identity or registry_token):
        return None
    if not all(isinstance(v, str) for v in (username, password, identity, registry_token)):
        raise AuthError(f"malformed credentials entry in {where}")
    return AuthConfig(username, password, identity, registry_token, source=where)


def run_credential_helper(name: str, server: str) -> AuthConfig | None:
    """Ask ``docker-credential-NAME get`` for ``server``'s credentials; ``None`` if it has none."""
    program = f"docker-credential-{name}"
    exe = shutil.which(program)
    if exe is None:
        raise AuthError(f"credential helper {program} is not on PATH",
                        hint="install it, or remove it from the credentials file")
    try:
        proc = subprocess.run([exe, "get"], input=server.encode(), capture_output=True,
                              timeout=_HELPER_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise AuthError(f"credential helper {program} could not be run: "
                        f"{type(exc).__name__}") from None
    if proc.returncode != 0:
        said = (proc.stdout or proc.stderr).decode("utf-8", "replace").strip()
        if "credentials not found" in said.lower():
            return None
        first = said.splitlines()[0][:200] if said else f"exit status {proc.returncode}"
        raise AuthError(f"credential helper {program} failed for {server}: {first}")
    try:
        doc = json.loads(proc.stdout)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AuthError(f"credential helper {program} printed something that is not JSON") \
            from None
    if not isinstance(doc, dict):
        raise AuthError(f"credential helper {program} printed something that is not an object")
    username = doc.get("Username") or ""
    secret = doc.get("Secret") or ""
    if not isinstance(username, str) or not isinstance(secret, str):
        raise AuthError(f"credential helper {program} printed malformed credentials")
    if not username and not secret:
        return None
    where = f"{program} ({server})"
    if username == "<token>":
        return AuthConfig(identity_token=secret, source=where)
    return AuthConfig(username, secret, source=where)


# --- challenges ------------------------------------------------------------------

_TOKEN_CHARS = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_UNQUOTED = re.compile(r"[^,\s]+")


@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header: a lowercased scheme and its parameters.

    Parameter names are lowercased; values are unquoted.
    """

    scheme: str
    params: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")


def parse_www_authenticate(value: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value (RFC 7235) into its challenges.

    Malformed trailing text is ignored rather than raised: a registry's odd header
    should not hide the status it came with.
    """
    out: list[Challenge] = []
    pos, n = 0, len(value)

    def skip(chars: str) -> None:
        nonlocal pos
        while pos < n and value[pos] in chars:
            pos += 1

    while pos < n:
        skip(" \t,")
        m = _TOKEN_CHARS.match(value, pos)
        if not m:
            break
        scheme = m.group(0).lower()
        pos = m.end()
        params: dict[str, str] = {}
        skip(" \t")
        # A token68 (e.g. "Negotiate abc==") is not followed by "=" + value.
        t68 = _TOKEN68.match(value, pos)
        if t68 and not _looks_like_param(value, pos) and t68.end() > pos:
            pos = t68.end()
        else:
            while pos < n:
                skip(" \t")
                if not _looks_like_param(value, pos):
                    break
                pm = _TOKEN_CHARS.match(value, pos)
                assert pm is not None
                name = pm.group(0).lower()
                pos = pm.end()
                skip(" \t")
                pos += 1  # the "="
                skip(" \t")
                if pos < n and value[pos] == '"':
                    pos += 1
                    buf: list[str] = []
                    while pos < n and value[pos] != '"':
                        if value[pos] == "\\" and pos + 1 < n:
                            pos += 1
                        buf.append(value[pos])
                        pos += 1
                    pos += 1  # closing quote
                    params[name] = "".join(buf)
                else:
                    # Leniently, an unquoted value runs to the next comma or space
                    # (some servers leave URLs unquoted).
                    vm = _UNQUOTED.match(value, pos)
                    params[name] = vm.group(0) if vm else ""
                    pos = vm.end() if vm else pos
                skip(" \t")
                if pos < n and value[pos] == ",":
                    pos += 1
                    continue
                break
        out.append(Challenge(scheme, params))
    return out


def _looks_like_param(value: str, pos: int) -> bool:
    m = _TOKEN_CHARS.match(value, pos)
    if not m:
        return False
    rest = value[m.end():].lstrip(" \t")
    return rest.startswith("=") and not rest.startswith("==")


def pick_challenge(challenges: Iterable[Challenge]) -> Challenge | None:
    """The challenge to answer: bearer if offered, else basic, else ``None``."""
    found = {c.scheme: c for c in challenges}
    return found.get("bearer") or found.get("basic")


# --- scopes ----------------------------------------------------------------------

#: A set of (resource, action) pairs, e.g. ``("repository:library/nginx", "pull")``.
Scopes = frozenset[tuple[str, str]]


def repository_scopes(repository: str, *actions: str) -> Scopes:
    """The scopes to ``actions`` (``pull``, ``push``) on ``repository``."""
    return frozenset((f"repository:{repository}", a) for a in actions)


def parse_scopes(values: Iterable[str]) -> Scopes:
    """Scopes from their wire form (``type:name:a,b``; several may be space-separated)."""
    out: set[tuple[str, str]] = set()
    for value in values:
        for part in value.split():
            resource, sep, actions = part.rpartition(":")
            if not sep or not resource:
                continue
            for action in actions.split(","):
                if action:
                    out.add((resource, action))
    return frozenset(out)


def format_scopes(scopes: Scopes) -> list[str]:
    """The wire form of ``scopes``: one ``type:name:a,b`` per resource, sorted."""
    by_resource: dict[str, set[str]] = {}
    for resource, action in scopes:
        by_resource.setdefault(resource, set()).add(action)
    return [f"{r}:{','.join(sorted(a))}" for r, a in sorted(by_resource.items())]


@dataclass
class _Token:
    value: str = field(repr=False)
    scopes: Scopes
    expires: float


class TokenCache:
    """Bearer tokens kept per scope set until shortly before they expire.

    ``get`` returns a token granted for a superset of the scopes asked for. The
    cache knows only what it was told a token was requested for; a registry may
    still refuse it (the token server may grant less), and the client then asks
    again.
    """

    def __init__(self) -> None:
        self._tokens: dict[Scopes, _Token] = {}

    def get(self, scopes: Scopes, now: float) -> str | None:
        exact = self._tokens.get(scopes)
        if exact is not None and exact.expires > now:
            return exact.value
        for token in self._tokens.values():
            if token.expires > now and scopes <= token.scopes:
                return token.value
        return None

    def put(self, scopes: Scopes, value: str, expires: float) -> None:
        self._tokens[scopes] = _Token(value, scopes, expires)

    def discard(self, value: str) -> None:
        for key in [k for k, t in self._tokens.items() if t.value == value]:
            del self._tokens[key]

    def __repr__(self) -> str:
        return f"TokenCache({len(self._tokens)} tokens)"
