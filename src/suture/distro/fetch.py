"""Verified downloads every package family shares: a content-addressed cache and an
HTTP fetcher, plus the index decompression and URL redaction they use.

Downloads go to a content-addressed cache (``<cache_dir>/sha256/<hex>``, written
to a temporary file and renamed into place), so fetching the same file twice
downloads it once. Cached files are re-hashed when used, and found by the digest
the repository's index gives, never by URL. Files whose digest is not known in
advance (signed metadata) are kept by URL (``<cache_dir>/refs/``) and revalidated
with a conditional request; in ``offline`` mode only the cache is read and a
missing file raises :class:`~suture.distro.errors.OfflineCacheMiss`.

HTTP goes through an injectable :class:`requests.Session`, with ``verify=`` and
timeouts on every request. A dropped connection is resumed with ``Range``, a
bounded number of times. No ``requests`` exception escapes: failures are
:class:`~suture.distro.errors.RepositoryError` subclasses, and checksum failures
:class:`~suture.errors.DigestMismatch` / :class:`~suture.errors.SizeMismatch`.
A family wraps :class:`Fetcher` with what its repositories need (apt's signed
Release files, apk's signed indexes).
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import hashlib
import json
import logging
import lzma
import os
import socket
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Self
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
import requests.adapters

from suture.distro.errors import (
    CacheFull,
    OfflineCacheMiss,
    RepositoryError,
    RepositoryHTTPError,
    RepositoryNotFound,
)
from suture.distro.mirrors import RepositoryHosts
from suture.errors import DigestMismatch, SizeMismatch
from suture.progress import DOWNLOAD, Progress, Transfer

__all__ = [
    "CHUNK",
    "DEFAULT_TIMEOUT",
    "MAX_INDEX",
    "MAX_META",
    "STREAM_CHUNK",
    "BlobCache",
    "Fetcher",
    "decompress_index",
    "redact",
]

log = logging.getLogger(__name__)

CHUNK = 1 << 20
STREAM_CHUNK = 64 << 10
MAX_INDEX = 1 << 30  # decompressed index; bookworm main/amd64 Packages is ~45 MB
MAX_META = 32 << 20  # a signed metadata file (the biggest real InRelease is under 1 MB)
DEFAULT_TIMEOUT = (15.0, 60.0)  # connect, read (seconds)
MAX_REDIRECTS = 10
_REDIRECTS = (301, 302, 303, 307, 308)
_FULL = (errno.ENOSPC, errno.EDQUOT)


def redact(url: str) -> str:
    """``url`` without any user:password part, for messages and logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


# ---------------------------------------------------------------- indexes


def _new_decompressor(kind: str) -> Any:
    if kind == "xz":
        return lzma.LZMADecompressor()
    if kind == "gzip":
        return zlib.decompressobj(wbits=31)
    if kind == "bzip2":
        return bz2.BZ2Decompressor()
    raise ValueError(kind)


def decompress_index(stream: IO[bytes], kind: str, *, limit: int = MAX_INDEX,
                     what: str = "index") -> bytes:
    """Decompress ``stream`` (``xz``, ``gzip``, ``bzip2`` or ``none``), at most ``limit`` bytes.

    Concatenated streams are followed. Output over ``limit`` raises
    :class:`~suture.errors.SizeMismatch` (a ceiling); a corrupt or truncated
    stream raises :class:`~suture.distro.errors.RepositoryError`.
    The caller owns ``stream``.
    """
    out = bytearray()
    if kind == "none":
        while chunk := stream.read(CHUNK):
            out += chunk
            if len(out) > limit:
                raise SizeMismatch(what, limit, len(out), ceiling=True)
        return bytes(out)
    dec = _new_decompressor(kind)
    try:
        pending = b""
        while True:
            if not pending:
                pending = stream.read(CHUNK)
                if not pending:
                    break
            if dec.eof:
                rest, pending = pending, b""
                if rest.strip(b"\0"):
                    dec = _new_decompressor(kind)
                    pending = rest
                continue
            room = limit - len(out) + 1
            if kind == "gzip":
                data = dec.decompress(pending, room)
                pending = dec.unconsumed_tail or (dec.unused_data if dec.eof else b"")
            else:
                data = dec.decompress(pending, max_length=room)
                pending = dec.unused_data if dec.eof else b""
                while not dec.eof and not dec.needs_input and len(out) + len(data) <= limit:
                    data += dec.decompress(b"", max_length=limit - len(out) - len(data) + 1)
            out += data
            if len(out) > limit:
                raise SizeMismatch(what, limit, len(out), ceiling=True)
        if not dec.eof:
            raise RepositoryError(f"{what}: truncated {kind} stream")
    except (lzma.LZMAError, zlib.error, OSError, EOFError) as exc:
        raise RepositoryError(f"{what}: corrupt {kind} stream ({exc})") from None
    return bytes(out)


# ---------------------------------------------------------------- cache


class BlobCache:
    """A content-addressed directory: ``sha256/<hex>`` files and ``refs/`` by URL.

    Files are written to ``tmp/`` and renamed into place, so a reader never sees
    a partial file; a write that fails removes its temporary file. A full file
    system (or quota) raises :class:`~suture.distro.errors.CacheFull`
    naming the cache. Safe to share between processes (last writer wins, with
    equal content).
    """

    # A download left in tmp/ this long by a process that was killed is removed.
    STALE = 24 * 3600

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._swept = False

    def _sweep(self, tmpdir: Path) -> None:
        """Remove downloads a killed run left in ``tmp/`` (once per cache object)."""
        self._swept = True
        cutoff = time.time() - self.STALE
        with contextlib.suppress(OSError):
            for leftover in tmpdir.glob("dl-*"):
                with contextlib.suppress(OSError):
                    if leftover.stat().st_mtime < cutoff:
                        leftover.unlink()

    def path(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256

    def lookup(self, sha256: str, size: int | None = None) -> Path | None:
        """The cached file with this digest (re-hashed now), or ``None``.

        A cached file whose content no longer matches is deleted.
        """
        path = self.path(sha256)
        try:
            if size is not None and path.stat().st_size != size:
                raise ValueError
            h = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
            if h.hexdigest() != sha256:
                raise ValueError
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            log.warning("cache: dropping corrupt %s", path)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        return path

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Turns a full file system or quota under the cache into :class:`CacheFull`."""
        try:
            yield
        except OSError as exc:
            if exc.errno in _FULL:
                raise CacheFull(str(self.root), os.strerror(exc.errno or errno.ENOSPC)
                                .lower()) from None
            raise

    def temp(self) -> tuple[IO[bytes], Path]:
        tmpdir = self.root / "tmp"
        with self.writing():
            tmpdir.mkdir(parents=True, exist_ok=True)
            if not self._swept:
                self._sweep(tmpdir)
            fd, name = tempfile.mkstemp(dir=tmpdir, prefix="dl-")
        return os.fdopen(fd, "w+b"), Path(name)

    def commit(self, tmp: Path, sha256: str) -> Path:
        dest = self.path(sha256)
        with self.writing():
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
        return dest

    def _write(self, data: bytes, dest: Path) -> None:
        """``data`` written to a temporary file renamed to ``dest``; nothing left on failure."""
        f, tmp = self.temp()
        try:
            with self.writing():
                try:
                    f.write(data)
                finally:
                    f.close()  # flushes: may fail too
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                f.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def put(self, data: bytes) -> Path:
        dest = self.path(hashlib.sha256(data).hexdigest())
        self._write(data, dest)
        return dest

    def _ref_path(self, url: str) -> Path:
        return self.root / "refs" / (hashlib.sha256(url.encode()).hexdigest() + ".json")

    def ref(self, url: str) -> dict[str, str] | None:
        """What was last fetched from ``url``: ``{"sha256", "etag", "last_modified"}``."""
        try:
            data = json.loads(self._ref_path(url).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("url") != redact(url):
            return None
        return {k: str(v) for k, v in data.items() if isinstance(v, str)}

    def set_ref(self, url: str, sha256: str, *, etag: str | None,
                last_modified: str | None) -> None:
        path = self._ref_path(url)
        record = {"url": redact(url), "sha256": sha256}  # no credentials on disk
        if etag:
            record["etag"] = etag
        if last_modified:
            record["last_modified"] = last_modified
        self._write(json.dumps(record, sort_keys=True).encode(), path)

    def read_ref(self, url: str) -> bytes | None:
        """The content last fetched from ``url`` (verified against its digest), or ``None``."""
        ref = self.ref(url)
        if ref is None or "sha256" not in ref:
            return None
        path = self.lookup(ref["sha256"])
        return path.read_bytes() if path is not None else None


# ---------------------------------------------------------------- fetcher


@dataclass
class _Got:
    status: int
    path: Path | None = None
    sha256: str = ""
    etag: str | None = None
    last_modified: str | None = None


def _checked_adapter(hosts: RepositoryHosts) -> requests.adapters.HTTPAdapter:
    """An adapter whose connections check the address they reached with ``hosts``, so a
    name that resolved to a public address when the URL was checked and to a private
    one when connecting (DNS rebinding) is refused before anything is sent. Connections
    through a proxy are not checked (the proxy is what they reach)."""
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    def checked(sock: socket.socket, conn: HTTPConnection) -> socket.socket:
        if conn.proxy is None and getattr(conn, "_tunnel_host", None) is None:
            try:
                hosts.check_peer(conn.host, conn.port or 0, str(sock.getpeername()[0]))
            except BaseException:
                sock.close()
                raise
        return sock

    class _HTTP(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return checked(super()._new_conn(), self)

    class _HTTPS(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return checked(super()._new_conn(), self)

    class _HTTPPool(HTTPConnectionPool):
        ConnectionCls = _HTTP

    class _HTTPSPool(HTTPSConnectionPool):
        ConnectionCls = _HTTPS

    class _Adapter(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

    return _Adapter()


_RETRYABLE = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
              requests.exceptions.ContentDecodingError)


class Fetcher:
    """Fetches repository files into a content-addressed cache, verified.

    ``session`` defaults to a new :class:`requests.Session` (closed by
    :meth:`close`; a session passed in is the caller's). ``verify`` is passed
    on every request (a CA bundle path or a bool). ``retries`` bounds how many
    times one download is resumed or retried after a dropped connection or a
    5xx answer. ``now`` is the clock used for key expiry and Valid-Until.
    ``progress`` hears every download's bytes (cache hits are not downloads).
    ``hosts``, when given, is asked about every URL before it is requested and
    about every redirect before it is followed (see
    :class:`~suture.distro.mirrors.RepositoryHosts`): pass one whenever the URLs
    come from an image. With the fetcher's own session, each new connection's
    address is checked too (a name that resolves differently when connecting). A
    Release or other metadata file is fetched once per fetcher (repeated sources cost
    nothing).
    """

    def __init__(
        self,
        cache_dir: Path | str,
        *,
        session: requests.Session | None = None,
        offline: bool = False,
        verify: bool | str = True,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff: float = 0.5,
        max_index: int = MAX_INDEX,
        now: Callable[[], datetime] | None = None,
        progress: Progress | None = None,
        hosts: RepositoryHosts | None = None,
    ) -> None:
        self.cache = BlobCache(cache_dir)
        self.hosts = hosts
        self._meta: dict[tuple[str, int], bytes] = {}  # this run's metadata, by URL
        self.progress = progress
        self._own_session = session is None
        self.session = session if session is not None else requests.Session()
        if session is None and hosts is not None:
            adapter = _checked_adapter(hosts)
            self.session.mount("http://", adapter)
            self.session.mount("https://", adapter)
        self.offline = offline
        self.verify = verify
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_index = max_index
        self._now = now or (lambda: datetime.now(UTC))

    def close(self) -> None:
        if self._own_session:
            self.session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ HTTP

    def _check_url(self, url: str, first: str) -> None:
        scheme = urlsplit(url).scheme
        if scheme not in ("http", "https"):
            what = redact(url) if url == first else f"{redact(first)} (redirected to " \
                f"{redact(url)})"
            raise RepositoryError(f"{what}: unsupported URI scheme {scheme!r}",
                                  url=redact(first))
        if self.hosts is not None:
            shown = redact(url) if url == first else \
                f"{redact(first)} (redirected to {redact(url)})"
            self.hosts.check(url, shown=shown)

    def _request(self, url: str, headers: Mapping[str, str]) -> requests.Response:
        """GET ``url``, following redirects one by one: each is checked like ``url``."""
        hdrs = {"Accept-Encoding": "identity", **headers}
        target = url
        for _hop in range(MAX_REDIRECTS + 1):
            self._check_url(target, url)
            resp = self.session.get(target, headers=hdrs, stream=True, timeout=self.timeout,
                                    verify=self.verify, allow_redirects=False)
            location = resp.headers.get("Location")
            if resp.status_code not in _REDIRECTS or not location:
                return resp
            resp.close()
            target = urljoin(target, location)
        raise RepositoryHTTPError(f"{redact(url)}: more than {MAX_REDIRECTS} redirects",
                                  url=redact(url), status=None,
                                  hint="check the repository URL, or point --mirror at a "
                                       "copy that serves it directly")

    def _get(
        self,
        url: str,
        what: str,
        *,
        size: int | None,
        limit: int,
        sha256: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> _Got:
        """Download ``url`` into the cache, resuming with Range after a drop.

        Returns the stored file and its digest, or ``status=304`` when a
        conditional request was answered "not modified". Size (exact, or the
        ceiling ``limit``) and ``sha256`` (when given) are checked while the
        body streams; a file that fails a check is not kept.
        """
        out, tmp = self.cache.temp()
        transfer = Transfer(self.progress, DOWNLOAD, what, size)
        try:
            with self.cache.writing():
                return self._download(url, what, out, tmp, transfer, size=size, limit=limit,
                                      sha256=sha256, headers=headers)
        finally:
            # Whatever happened (a full disk fails the flush in close() too), the partial
            # file goes: left behind it would keep the cache's file system full.
            with contextlib.suppress(OSError):
                out.close()
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _download(self, url: str, what: str, out: IO[bytes], tmp: Path, transfer: Transfer,
                  *, size: int | None, limit: int, sha256: str | None,
                  headers: Mapping[str, str] | None) -> _Got:
        safe = redact(url)
        h = hashlib.sha256()
        got = 0
        failures = 0
        ceiling = size if size is not None else limit
        while True:
            hdrs = dict(headers or {})
            if got:
                hdrs = {"Range": f"bytes={got}-"}
            try:
                resp = self._request(url, hdrs)
                with resp:
                    status = resp.status_code
                    if status == 304 and not got:
                        return _Got(304)
                    if status == 416 and got and size is not None:
                        # Nothing left past what we have: the file is short.
                        raise SizeMismatch(what, size, got)
                    if status in (404, 410):
                        raise RepositoryNotFound(f"{what}: {safe}: HTTP {status}",
                                                 url=safe, status=status)
                    if status >= 500:
                        raise _Retry(f"HTTP {status}", status)
                    if status >= 400 or status not in (200, 206):
                        raise RepositoryHTTPError(f"{what}: {safe}: HTTP {status}",
                                                  url=safe, status=status)
                    if got and not (status == 206 and _range_start(resp) == got):
                        log.info("%s: server ignored Range, restarting", safe)
                        out.seek(0)
                        out.truncate()
                        h, got = hashlib.sha256(), 0
                        transfer.restart()
                    elif not got and status == 206:
                        raise RepositoryHTTPError(f"{what}: {safe}: unexpected HTTP 206",
                                                  url=safe, status=status)
                    etag = resp.headers.get("ETag")
                    last_modified = resp.headers.get("Last-Modified")
                    length = resp.headers.get("Content-Length")
                    received = 0
                    # Small reads: what was read before a drop is kept for the resume.
                    for chunk in resp.iter_content(STREAM_CHUNK):
                        got += len(chunk)
                        received += len(chunk)
                        if got > ceiling:
                            raise SizeMismatch(what, ceiling, got, ceiling=size is None)
                        h.update(chunk)
                        out.write(chunk)
                        transfer.advance(len(chunk))
                if size is not None and got < size:
                    if length is not None and length.isdigit() and int(length) == received:
                        raise SizeMismatch(what, size, got)  # complete, and short
                    raise _Retry(f"short body ({got} of {size} bytes)")
                break
            except requests.RequestException as exc:
                if isinstance(exc, _RETRYABLE):
                    failures += 1
                    if failures <= self.retries:
                        log.info("%s: %s, retry %d/%d from byte %d", safe,
                                 type(exc).__name__, failures, self.retries, got)
                        self._sleep(failures)
                        continue
                raise RepositoryHTTPError(
                    f"{what}: {safe}: {type(exc).__name__}"
                    + (f" after {failures} attempts" if failures else ""),
                    url=safe, status=None) from None
            except _Retry as exc:
                failures += 1
                if failures > self.retries:
                    raise RepositoryHTTPError(
                        f"{what}: {safe}: giving up after {failures} attempts ({exc.reason})",
                        url=safe, status=exc.status) from None
                log.info("%s: %s, retry %d/%d from byte %d", safe, exc.reason, failures,
                         self.retries, got)
                self._sleep(failures)
        digest = h.hexdigest()
        if sha256 is not None and digest != sha256:
            raise DigestMismatch(what, "sha256:" + sha256, "sha256:" + digest)
        out.close()
        transfer.finish()
        return _Got(200, self.cache.commit(tmp, digest), digest, etag, last_modified)

    def _sleep(self, failures: int) -> None:
        if self.backoff:
            time.sleep(min(self.backoff * 2 ** (failures - 1), 10.0))

    def fetch_verified(self, url: str, sha256: str, size: int | None, what: str) -> Path:
        """The cached file with ``sha256``; downloaded from ``url`` when not cached.

        Offline, a miss raises :class:`~suture.distro.errors.OfflineCacheMiss`.
        """
        cached = self.cache.lookup(sha256, size)
        if cached is not None:
            log.debug("cache hit %s (%s)", what, sha256[:12])
            return cached
        if self.offline:
            raise OfflineCacheMiss(f"{what} ({redact(url)}, sha256 {sha256})", url=redact(url))
        got = self._get(url, what, size=size, limit=size or MAX_INDEX, sha256=sha256)
        assert got.path is not None
        return got.path

    def download(self, url: str, what: str, *, size: int | None, limit: int) -> tuple[Path, str]:
        """``url`` downloaded into the cache, unconditionally: the stored file and its
        SHA256. Nothing is checked but the size (exact when given, else the ceiling
        ``limit``): the caller verifies the content and forgets a file that fails."""
        if self.offline:
            raise OfflineCacheMiss(f"{what} ({redact(url)})", url=redact(url))
        got = self._get(url, what, size=size, limit=size if size is not None else limit)
        assert got.path is not None
        return got.path, got.sha256

    def fetch_meta(self, url: str, what: str, *, limit: int = MAX_META) -> bytes:
        """A file whose digest is not known in advance (InRelease, Release, Release.gpg).

        Kept in the cache by URL and revalidated with If-None-Match /
        If-Modified-Since; offline, the last copy is used. The bytes returned
        are unverified: check their signature. Asked again, the same fetcher answers
        from memory without a request.
        """
        seen = self._meta.get((url, limit))
        if seen is not None:
            return seen
        data = self._fetch_meta(url, what, limit=limit)
        self._meta[(url, limit)] = data
        return data

    def _fetch_meta(self, url: str, what: str, *, limit: int) -> bytes:
        safe = redact(url)
        cached = self.cache.read_ref(url)
        if self.offline:
            if cached is None:
                raise OfflineCacheMiss(f"{what} ({safe})", url=safe)
            return cached
        headers: dict[str, str] = {}
        ref = self.cache.ref(url) if cached is not None else None
        if ref:
            if "etag" in ref:
                headers["If-None-Match"] = ref["etag"]
            if "last_modified" in ref:
                headers["If-Modified-Since"] = ref["last_modified"]
        got = self._get(url, what, size=None, limit=limit, headers=headers)
        if got.status == 304 and cached is not None:
            log.debug("%s: not modified", safe)
            return cached
        if got.path is None:  # a 304 we did not ask for
            raise RepositoryHTTPError(f"{what}: {safe}: unexpected HTTP 304", url=safe,
                                      status=304)
        self.cache.set_ref(url, got.sha256, etag=got.etag, last_modified=got.last_modified)
        return got.path.read_bytes()


class _Retry(Exception):
    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def _range_start(resp: requests.Response) -> int | None:
    value = resp.headers.get("Content-Range", "")
    if not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None
