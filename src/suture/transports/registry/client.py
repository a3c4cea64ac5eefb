"""A Distribution API client for one registry host, on ``requests``.

The client owns the things every request needs: which scheme reaches the
registry, which credentials and tokens to send, how to retry, and how to turn
an answer into one of suture's errors.

Contracts:

* **TLS** is verified, against ``RegistryOptions.ca_file`` when given (for the
  registry and its token service; redirects to other hosts use the system
  trust store). Registries named in ``insecure`` may use unverified TLS.
* **Plain HTTP** is used only for loopback hosts (``localhost``, ``127.0.0.0/8``,
  ``[::1]``) and hosts in ``insecure``: HTTPS is tried first and HTTP only when
  the TLS handshake fails for a reason other than an untrusted certificate
  (like skopeo and crane).
* **Credentials** (basic, bearer) are sent only to the registry's own origin and
  its token service, and never over plain HTTP to a host that is neither
  loopback nor insecure. Redirects to other hosts (blob storage) get no
  ``Authorization`` header.
* **Auth**: the ``/v2/`` ping learns the challenge. Bearer tokens are cached per
  scope set; on a 401 the scopes the registry named in its challenge are added
  and a fresh token is asked for once, then the 401 becomes an
  :class:`~suture.errors.AuthError`.
* **Retries**: 429 (honouring ``Retry-After``), 500/502/503/504 and broken
  connections are retried with exponential backoff (``backoff * 2**n``), at most
  ``1 + retries`` attempts in all; then one :class:`~suture.errors.RegistryError`.
* **Bounds**: every body read into memory has a ceiling.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import ipaddress
import json
import logging
import time
import warnings
from collections.abc import Callable, Collection, Mapping
from typing import Any, BinaryIO, Protocol
from urllib.parse import quote, urlencode, urljoin, urlsplit

import requests
import urllib3.exceptions

from suture.errors import AuthError, NotFound, RegistryError, SizeMismatch
from suture.transports import RegistryOptions
from suture.transports.reference import DEFAULT_REGISTRY, DOCKER_HUB_ENDPOINT
from suture.transports.registry.auth import (
    AuthConfig,
    Challenge,
    Scopes,
    TokenCache,
    find_credentials,
    format_scopes,
    parse_scopes,
    parse_www_authenticate,
    pick_challenge,
)

log = logging.getLogger("suture.transports.registry")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_MAX_ERROR_BODY = 64 << 10
_MAX_TOKEN_BODY = 1 << 20
_MAX_RETRY_AFTER = 60.0
_MAX_BACKOFF = 30.0
_MIN_TOKEN_LIFETIME = 60
_USER_AGENT = "suture/0.1"

#: Exceptions a response body read may raise when the connection breaks.
BODY_ERRORS: tuple[type[BaseException], ...] = (
    urllib3.exceptions.HTTPError,
    requests.RequestException,
    http.client.HTTPException,
    OSError,
)

_ERROR_BODY_FAILURES: tuple[type[BaseException], ...] = (SizeMismatch, *BODY_ERRORS)


class UploadBody(Protocol):
    """A request body streamed from a file-like object, with a known length."""

    def read(self, size: int = -1) -> bytes: ...

    def __len__(self) -> int: ...

    def close(self) -> None: ...


#: What a request may carry: nothing, bytes (replayable), or a factory of streams.
Body = bytes | Callable[[], UploadBody] | None


def _keep_headers(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """An auth hook that does nothing: stops ``requests`` from reading ``~/.netrc``."""
    return request


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``host`` without a port)."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def split_hostport(netloc: str) -> tuple[str, int | None]:
    """``host[:port]`` (IPv6 in brackets) into a lowercased host and the port, if any."""
    netloc = netloc.rsplit("@", 1)[-1].lower()
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = netloc.partition(":")
    return host, int(port) if port.isdigit() else None


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    host, port = split_hostport(parts.netloc)
    scheme = parts.scheme.lower()
    return scheme, host, port if port is not None else (443 if scheme == "https" else 80)


def describe(exc: BaseException) -> str:
    """A short, secret-free reason for a network failure."""
    text = str(exc)
    lowered = text.lower()
    for marker in ("certificate verify failed", "connection refused",
                   "connection reset by peer", "broken pipe", "remote end closed connection",
                   "incompleteread", "connection broken", "connection aborted", "timed out",
                   "name or service not known", "temporary failure in name resolution",
                   "wrong version number", "no route to host"):
        if marker in lowered:
            return marker
    return type(exc).__name__


def read_limited(resp: requests.Response, limit: int, what: str) -> bytes:
    """Read a whole response body, refusing more than ``limit`` bytes; then release ``resp``."""
    complete = False
    try:
        declared = resp.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise SizeMismatch(what, limit, int(declared), ceiling=True)
        out = bytearray()
        while len(out) <= limit:
            chunk = resp.raw.read(min(1 << 16, limit + 1 - len(out)), decode_content=True)
            if not chunk:
                complete = True
                break
            out += chunk
        if len(out) > limit:
            raise SizeMismatch(what, limit, len(out), ceiling=True)
        return bytes(out)
    finally:
        _finish(resp, complete)


def release(resp: requests.Response) -> None:
    """Done with ``resp``: a short rest of its body is drained so the connection is reused."""
    complete = False
    try:
        # Read even a HEAD answer: http.client marks a response done only once read.
        complete = not resp.raw.read(_MAX_ERROR_BODY, decode_content=False) or \
            not resp.raw.read(1, decode_content=False)
    except BODY_ERRORS:
        complete = False
    finally:
        _finish(resp, complete)


def _finish(resp: requests.Response, complete: bool) -> None:
    if complete:
        resp.raw.release_conn()  # back to the pool, kept alive
    else:
        resp.close()  # the connection is dropped with what is left of the body


def registry_errors(body: bytes) -> tuple[set[str], str]:
    """The error codes and a one-line message from a Distribution error document."""
    codes: set[str] = set()
    messages: list[str] = []
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("errors"), list):
        for err in doc["errors"]:
            if not isinstance(err, dict):
                continue
            code = str(err.get("code") or "")
            message = str(err.get("message") or code.lower().replace("_", " "))
            if code:
                codes.add(code)
            if message and message not in messages:
                messages.append(message)
    detail = "; ".join(messages)
    detail = " ".join(detail.split())
    return codes, detail[:300]


class RegistryClient:
    """A client for one registry, named as in references (``docker.io``, ``host:port``).

    ``sleep`` and ``clock`` are injectable for tests. The client is not thread-safe.
    """

    def __init__(
        self,
        registry: str,
        options: RegistryOptions,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.host = DOCKER_HUB_ENDPOINT if registry == DEFAULT_REGISTRY else registry
        self.options = options
        self.session = options.session if options.session is not None else requests.Session()
        self._sleep = sleep
        self._clock = clock
        self._base: str | None = None
        self._challenge: Challenge | None = None
        self._tokens = TokenCache()
        self._creds_loaded = False
        self._creds: AuthConfig | None = None
        self._realm_netlocs: set[str] = set()

    def __repr__(self) -> str:
        return f"RegistryClient({self.registry!r})"

    # -- policy -------------------------------------------------------------------
    def _is_insecure(self, netloc: str) -> bool:
        host, _ = split_hostport(netloc)
        insecure = {i.lower() for i in self.options.insecure}
        return netloc.lower() in insecure or host in insecure

    def allows_http(self, netloc: str) -> bool:
        """Whether plain HTTP (with credentials) may be used for ``netloc``."""
        return is_loopback(split_hostport(netloc)[0]) or self._is_insecure(netloc)

    def _verify(self, url: str) -> bool | str:
        netloc = urlsplit(url).netloc.lower()
        if self._is_insecure(netloc):
            return False
        own = netloc == self.host.lower() or netloc in self._realm_netlocs
        if own and self.options.ca_file is not None:
            return str(self.options.ca_file)
        return True

    def _may_authorize(self, url: str) -> bool:
        """Registry credentials go only to the registry's origin, and never downgraded."""
        if self._base is None:
            return False
        if _origin(url) != _origin(self._base):
            return False
        return url.lower().startswith("https://") or self.allows_http(self.host)

    @property
    def _timeout(self) -> tuple[float, float]:
        return (min(10.0, self.options.timeout), self.options.timeout)

    def credentials(self) -> AuthConfig | None:
        """The credentials for this registry, looked up once, when first needed."""
        if not self._creds_loaded:
            self._creds = find_credentials(self.registry, self.options)
            self._creds_loaded = True
            if self._creds is not None:
                log.debug("credentials for %s from %s", self.registry, self._creds.source)
        return self._creds

    # -- base URL -----------------------------------------------------------------
    def base_url(self) -> str:
        """``scheme://host`` of the registry, found by pinging ``/v2/`` once."""
        if self._base is None:
            self._base = self._probe()
        return self._base

    def url(self, path: str) -> str:
        return self.base_url() + path

    def _probe(self) -> str:
        schemes = ["https", "http"] if self.allows_http(self.host) else ["https"]
        attempts = 1 + max(0, self.options.retries)
        failure: BaseException | None = None
        for attempt in range(attempts):
            for scheme in schemes:
                url = f"{scheme}://{self.host}/v2/"
                try:
                    resp = self._send("GET", url, {}, None)
                except requests.exceptions.SSLError as exc:
                    if "certificate verify failed" in str(exc).lower():
                        raise RegistryError(
                            f"TLS certificate of {self.host} is not trusted",
                            hint="pass the registry's CA certificate, or mark the registry "
                                 "insecure if you trust the network",
                        ) from None
                    failure = failure or exc
                    continue
                except (requests.ConnectionError, requests.Timeout) as exc:
                    failure = exc if scheme == "https" or failure is None else failure
                    continue
                except requests.RequestException as exc:
                    raise RegistryError(f"cannot reach registry {self.host}: "
                                        f"{type(exc).__name__}") from None
                base = f"{scheme}://{self.host}"
                if resp.status_code == 401:
                    self._note_challenge(resp)
                log.debug("registry %s reached at %s (ping %s)", self.registry, base,
                          resp.status_code)
                release(resp)
                return base
            if attempt < attempts - 1:
                self.pause(self.backoff(attempt))
        reason = describe(failure) if failure else "no answer"
        raise RegistryError(f"cannot reach registry {self.host}: {reason} "
                            f"(after {attempts} tries)")

    # -- one HTTP exchange ----------------------------------------------------------
    def _send(self, method: str, url: str, headers: Mapping[str, str], data: Any) -> \
            requests.Response:
        hdrs = {"User-Agent": _USER_AGENT, **headers}
        verify = self._verify(url)
        # Unverified TLS was asked for this host: do not warn on every request.
        quiet = warnings.catch_warnings() if verify is False else contextlib.nullcontext()
        with quiet:
            if verify is False:
                warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
            resp = self.session.request(
                method, url, headers=hdrs, data=data, stream=True, allow_redirects=False,
                verify=verify, timeout=self._timeout, auth=_keep_headers,
            )
        log.debug("%s %s -> %s", method, url.split("?", 1)[0], resp.status_code)
        return resp

    def _send_following(self, method: str, url: str, headers: Mapping[str, str],
                        authorization: str | None, body: Body,
                        follow: bool) -> requests.Response:
        current = url
        for _ in range(_MAX_REDIRECTS + 1):
            hdrs = dict(headers)
            if authorization is not None and self._may_authorize(current):
                hdrs["Authorization"] = authorization
            stream = body() if callable(body) else None
            try:
                resp = self._send(method, current, hdrs, stream if stream is not None else body)
            finally:
                if stream is not None:
                    stream.close()
            if not (follow and method in ("GET", "HEAD") and resp.status_code in _REDIRECTS):
                return resp
            location = resp.headers.get("Location")
            if not location:
                return resp
            release(resp)
            current = urljoin(current, location)
        raise RegistryError(f"{method} {urlsplit(url).path}: more than {_MAX_REDIRECTS} "
                            f"redirects")

    # -- auth ---------------------------------------------------------------------
    def _note_challenge(self, resp: requests.Response) -> Challenge | None:
        challenge = pick_challenge(parse_www_authenticate(
            resp.headers.get("WWW-Authenticate", "")))
        if challenge is not None:
            params = {k: v for k, v in challenge.params.items()
                      if k not in ("scope", "error", "error_description")}
            self._challenge = Challenge(challenge.scheme, params)
        return challenge

    def _authorization(self, scopes: Scopes, *, fresh: bool = False) -> str | None:
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = self.credentials()
            return creds.basic_header() if creds is not None and creds.has_password else None
        if challenge.scheme == "bearer":
            now = self._clock()
            token = None if fresh else self._tokens.get(scopes, now)
            if token is None:
                token, lifetime = self._fetch_token(challenge, scopes)
                self._tokens.put(scopes, token, now + max(lifetime, _MIN_TOKEN_LIFETIME) - 10)
            return "Bearer " + token
        return None

    def _reauthorize(self, resp: requests.Response, scopes: Scopes,
                     sent: str | None) -> str | None:
        """A new ``Authorization`` after a 401, or ``None`` when asking again cannot help."""
        challenge = self._note_challenge(resp)
        if challenge is None:
            return None
        if challenge.scheme == "bearer":
            if sent is not None and sent.startswith("Bearer "):
                self._tokens.discard(sent[len("Bearer "):])
            wanted = scopes | parse_scopes([challenge.params.get("scope", "")])
            new = self._authorization(wanted, fresh=True)
        else:
            new = self._authorization(scopes)
        return None if new is None or new == sent else new

    def _fetch_token(self, challenge: Challenge, scopes: Scopes) -> tuple[str, int]:
        realm = challenge.params.get("realm", "")
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise AuthError(f"registry {self.registry} named an invalid token realm")
        self._realm_netlocs.add(parts.netloc.lower())
        where = f"{parts.scheme}://{parts.netloc}{parts.path}"
        creds = self.credentials()
        if creds is not None and creds.registry_token:
            return creds.registry_token, _MIN_TOKEN_LIFETIME
        if creds is not None and parts.scheme == "http" and not self.allows_http(parts.netloc):
            raise AuthError(
                f"refusing to send credentials to the token service {where} over plain HTTP",
                hint="mark the registry insecure if you trust the network")
        service = challenge.params.get("service")
        wire_scopes = format_scopes(scopes)
        what = f"token for {self.registry} from {where}"
        if creds is not None and creds.identity_token:
            form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                    "client_id": "suture", "scope": " ".join(wire_scopes)}
            if service:
                form["service"] = service
            resp = self.request("POST", realm, body=urlencode(form).encode(), what=what,
                                headers={"Content-Type": "application/x-www-form-urlencoded"},
                                ok=(200, 401, 403), authorize=False)
        else:
            query: list[tuple[str, str]] = []
            if service:
                query.append(("service", service))
            query += [("scope", s) for s in wire_scopes]
            headers: dict[str, str] = {}
            if creds is not None and creds.username:
                query.append(("account", creds.username))
            if creds is not None and creds.has_password:
                headers["Authorization"] = creds.basic_header()
            sep = "&" if parts.query else "?"
            url = realm + (sep + urlencode(query) if query else "")
            resp = self.request("GET", url, headers=headers, what=what, ok=(200, 401, 403),
                                authorize=False)
        if resp.status_code in (401, 403):
            release(resp)
            who = "the credentials" if creds is not None else "anonymous access"
            raise AuthError(f"unauthorized: the token service {where} refused {who} "
                            f"(check --creds or docker login)", status=resp.status_code)
        try:
            body = read_limited(resp, _MAX_TOKEN_BODY, what)
        except BODY_ERRORS as exc:
            raise self._network_error(exc, what, 1) from None
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            doc = None
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise AuthError(f"the token service {where} answered without a token")
        assert isinstance(doc, dict)
        lifetime = doc.get("expires_in")
        return token, lifetime if isinstance(lifetime, int) and lifetime > 0 else 0

    # -- requests with retries ------------------------------------------------------
    def backoff(self, attempt: int) -> float:
        """The pause before retry number ``attempt + 1``."""
        return float(min(self.options.backoff * (2 ** attempt), _MAX_BACKOFF))

    def pause(self, seconds: float) -> None:
        """Sleep (through the injected ``sleep``) before a retry."""
        if seconds > 0:
            self._sleep(seconds)

    def _retry_delay(self, resp: requests.Response, attempt: int) -> float:
        value = resp.headers.get("Retry-After", "").strip()
        if value:
            if value.isdigit():
                return min(float(value), _MAX_RETRY_AFTER)
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                when = None
            if when is not None:
                return max(0.0, min(when.timestamp() - time.time(), _MAX_RETRY_AFTER))
        return self.backoff(attempt)

    def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        scopes: Scopes = frozenset(),
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        ok: Collection[int] = (200,),
        retry: bool = True,
        follow: bool = False,
        authorize: bool = True,
    ) -> requests.Response:
        """Send a request and return a response whose status is in ``ok``, body unread.

        ``url`` is absolute (see :meth:`url`). ``what`` names the operation in
        errors. With ``retry``, retryable failures are retried (at most
        ``1 + retries`` attempts); without it they are raised at once (for bodies
        that cannot be sent twice). Any other status raises the error it maps
        to. The caller closes the response.
        """
        if authorize:
            self.base_url()
        attempts = 1 + max(0, self.options.retries) if retry else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                resp = self._exchange(method, url, scopes, headers or {}, body, follow,
                                      authorize)
            except requests.exceptions.SSLError as exc:
                if "certificate verify failed" in str(exc).lower():
                    host = urlsplit(url).netloc
                    raise RegistryError(f"{what}: TLS certificate of {host} is not trusted",
                                        hint="pass the registry's CA certificate") from None
                if last:
                    raise self._network_error(exc, what, attempt + 1) from None
                self.pause(self.backoff(attempt))
                continue
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                if last:
                    raise self._network_error(exc, what, attempt + 1) from None
                log.debug("%s: %s, retrying", what, describe(exc))
                self.pause(self.backoff(attempt))
                continue
            except requests.RequestException as exc:
                raise RegistryError(f"{what}: {type(exc).__name__}") from None
            if resp.status_code in ok:
                return resp
            if resp.status_code in RETRY_STATUSES and not last:
                delay = self._retry_delay(resp, attempt)
                log.debug("%s: HTTP %s, retrying in %.2fs", what, resp.status_code, delay)
                release(resp)
                self.pause(delay)
                continue
            raise self.error(resp, what, tries=attempt + 1)
        raise AssertionError("unreachable")

    def _exchange(self, method: str, url: str, scopes: Scopes, headers: Mapping[str, str],
                  body: Body, follow: bool, authorize: bool) -> requests.Response:
        if not authorize:
            return self._send_following(method, url, headers, None, body, follow)
        authorization = self._authorization(scopes)
        resp = self._send_following(method, url, headers, authorization, body, follow)
        if resp.status_code == 401:
            new = self._reauthorize(resp, scopes, authorization)
            if new is not None:
                release(resp)
                resp = self._send_following(method, url, headers, new, body, follow)
        return resp

    def _network_error(self, exc: BaseException, what: str, tries: int) -> RegistryError:
        return RegistryError(f"{what}: cannot reach {self.host}: {describe(exc)} "
                             f"(after {tries} {'try' if tries == 1 else 'tries'})")

    def error(self, resp: requests.Response, what: str, *, tries: int = 1) -> Exception:
        """The suture error for a response that is not what was asked for. Closes ``resp``."""
        status = resp.status_code
        try:
            body = read_limited(resp, _MAX_ERROR_BODY, what)
        except _ERROR_BODY_FAILURES:
            body = b""
        codes, detail = registry_errors(body)
        after = f" (after {tries} tries)" if tries > 1 else ""
        if status == 401:
            try:
                creds = self.credentials()
            except AuthError:
                creds = None
            hint = None if creds is not None else f"no credentials were found for {self.registry}"
            return AuthError(f"unauthorized: {what}: {detail or 'authentication required'} "
                             f"(check --creds or docker login)", status=401, hint=hint)
        if status == 403:
            return AuthError(f"denied: {what}: {detail or 'access denied'} "
                             f"(check --creds or docker login)", status=403)
        if status == 404 or codes & {"MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"}:
            return NotFound(f"{what}: not found{': ' + detail if detail else ''}",
                            hint="check the registry, repository and tag; a private "
                                 "repository also answers 'not found' without credentials")
        if status == 429:
            return RegistryError(f"{what}: too many requests (HTTP 429){after}", status=429)
        reason = f"HTTP {status}" + (f": {detail}" if detail else "")
        return RegistryError(f"{what}: registry answered {reason}{after}", status=status)

    # -- Distribution API -------------------------------------------------------------
    def name(self, repository: str) -> str:
        return f"{self.registry}/{repository}"

    def fetch_manifest(self, repository: str, reference: str, accept: Collection[str],
                       limit: int) -> tuple[bytes, str | None, str | None]:
        """GET a manifest: its exact bytes, Content-Type and ``Docker-Content-Digest``.

        The body is bounded by ``limit``; a body broken off is fetched again.
        """
        url = self.url(f"/v2/{repository}/manifests/{quote(reference, safe=':')}")
        sep = "@" if ":" in reference else ":"
        what = f"manifest {self.name(repository)}{sep}{reference}"
        scopes = frozenset({(f"repository:{repository}", "pull")})
        attempts = 1 + max(0, self.options.retries)
        for attempt in range(attempts):
            resp = self.request("GET", url, what=what, scopes=scopes, follow=True,
                                headers={"Accept": ", ".join(accept),
                                         "Accept-Encoding": "identity"})
            content_type = resp.headers.get("Content-Type")
            header_digest = resp.headers.get("Docker-Content-Digest")
            try:
                raw = read_limited(resp, limit, what)
            except BODY_ERRORS as exc:
                if attempt == attempts - 1:
                    raise self._network_error(exc, what, attempt + 1) from None
                self.pause(self.backoff(attempt))
                continue
            return raw, content_type, header_digest
        raise AssertionError("unreachable")

    def get_blob(self, repository: str, digest: str, start: int = 0) -> requests.Response:
        """GET a blob from byte ``start`` (a ``Range`` request when ``start > 0``).

        Returns a 200 or 206 response with its body unread; redirects are
        followed without credentials to other hosts.
        """
        headers = {"Accept-Encoding": "identity"}
        if start:
            headers["Range"] = f"bytes={start}-"
        return self.request("GET", self.url(f"/v2/{repository}/blobs/{digest}"),
                            what=f"blob {digest} of {self.name(repository)}",
                            scopes=frozenset({(f"repository:{repository}", "pull")}),
                            headers=headers, ok=(200, 206), follow=True)

    def list_tags(self, repository: str, *, page: int = 1000, limit: int = 100_000
                  ) -> list[str]:
        """Every tag of ``repository`` (``GET /v2/<name>/tags/list``), following the
        ``Link: <...>; rel="next"`` pages; at most ``limit`` tags, each page bounded."""
        url: str | None = self.url(f"/v2/{repository}/tags/list?n={page}")
        what = f"tags of {self.name(repository)}"
        scopes = frozenset({(f"repository:{repository}", "pull")})
        tags: list[str] = []
        while url is not None:
            resp = self.request("GET", url, what=what, scopes=scopes, follow=True,
                                headers={"Accept": "application/json"})
            link = resp.headers.get("Link", "")
            try:
                body = read_limited(resp, 8 << 20, what)
            except BODY_ERRORS as exc:
                raise self._network_error(exc, what, 1) from None
            try:
                doc = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError):
                doc = None
            found = doc.get("tags") if isinstance(doc, dict) else None
            if found is None and isinstance(doc, dict) and "tags" in doc:
                found = []  # a repository without tags answers "tags": null
            if not isinstance(found, list) or not all(isinstance(t, str) for t in found):
                raise RegistryError(f"{what}: the registry answered no tag list")
            tags += found
            if len(tags) > limit:
                raise RegistryError(f"{what}: more than {limit} tags")
            url = None
            for part in link.split(","):
                target, _, params = part.partition(";")
                if 'rel="next"' in params.replace(" ", "") and target.strip().startswith("<"):
                    url = urljoin(self.base_url() + "/", target.strip()[1:-1])
        return tags

    def has_blob(self, repository: str, digest: str, scopes: Scopes) -> bool:
        resp = self.request("HEAD", self.url(f"/v2/{repository}/blobs/{digest}"),
                            what=f"blob {digest} of {self.name(repository)}", scopes=scopes,
                            ok=(200, 404), follow=True)
        release(resp)
        return resp.status_code == 200


def stream_body(stream: BinaryIO, size: int,
                on_read: Callable[[int], None] | None = None) -> UploadBody:
    """``stream`` as a request body of exactly ``size`` bytes (checked as it is sent).
    ``on_read`` hears how many bytes each read took."""
    return _StreamBody(stream, size, on_read)


class _StreamBody:
    """A file-like body of known length: ``requests`` streams it instead of reading it whole."""

    def __init__(self, stream: BinaryIO, size: int,
                 on_read: Callable[[int], None] | None = None) -> None:
        self._stream = stream
        self._size = size
        self._sent = 0
        self._on_read = on_read

    def read(self, size: int = -1) -> bytes:
        want = (1 << 20) if size is None or size < 0 else size
        data = self._stream.read(want)
        self._sent += len(data)
        if self._sent > self._size:
            raise SizeMismatch("upload body", self._size, self._sent)
        if self._on_read is not None:
            self._on_read(len(data))
        return data

    def __len__(self) -> int:
        return self._size

    def close(self) -> None:
        self._stream.close()
