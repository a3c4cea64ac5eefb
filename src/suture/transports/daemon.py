"""Images of a local engine: ``docker-daemon:NAME[:TAG]`` and ``podman:NAME[:TAG]``.

Both engines are reached through their HTTP API on a Unix socket (or plain
``tcp://``): Docker's at ``DOCKER_HOST`` (default ``unix:///var/run/docker.sock``),
Podman's Docker-compatible API at ``CONTAINER_HOST`` (default
``unix:///run/podman/podman.sock``); the CLI fills :class:`EngineOptions` from the
environment. No engine CLI is run and nothing is pulled.

Reading streams ``GET /images/{name}/get`` (the ``docker save`` format) once and
indexes its members: ``manifest.json``, the config and the other small files are
kept, and layers are kept in memory up to :attr:`EngineOptions.memory` bytes in
all. A layer beyond that is not copied anywhere: when it is read, the export is
streamed again and only that member is passed on (verified against its digest, so
an image that changed in between is an error, not a mix). The image is then read
exactly as :func:`~suture.transports.archive.open_docker_archive` reads an archive.

Writing streams a docker-archive tar (uncompressed layers checked against their
diff_ids, the config, ``manifest.json``) into ``POST /images/load`` through a pipe,
with no file on disk; a compressed layer whose uncompressed size is not known is
decompressed once to count it (and check its diff_id) before anything is sent.
Loading back into the Docker engine an image came from (``EngineOptions.present``)
leaves out the files of the layers Docker already has (its load uses a layer it
has and does not read that file); a failed load is retried with every layer.
The loaded image must then be in the engine under its config digest; only then is
it tagged (``POST /images/{id}/tag``), so a failed load leaves the old tag alone.
Podman tags through its own API, so a short name lands where ``podman tag`` puts
it (``app:1-patched`` is ``localhost/app:1-patched``, next to an imported
``localhost/app:1``).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import logging
import os
import socket
import tarfile
import threading
import urllib.parse
from collections.abc import Callable, Collection
from typing import IO, BinaryIO

from suture.errors import NotFound, SutureError, TransportError, UsageError
from suture.oci import mediatypes as mt
from suture.oci.digest import CHUNK, MAX_CONFIG, MAX_MANIFEST, HashingWriter
from suture.oci.image import Artifact, BlobRef, Image, ImageIndex, read_blob, walk_blobs
from suture.oci.model import Descriptor, canonical_json, loads_object
from suture.transports import EngineOptions
from suture.transports.archive import (
    DockerArchiveSource,
    TarArchive,
    _diff_ids,
    _docker_image,
    _layer_filler,
    _Member,
    _normalize,
    _parse_docker_manifest,
    _TarWriter,
    docker_manifest,
)
from suture.transports.layout import read_small_file
from suture.transports.reference import DOCKER_DAEMON, PODMAN, Reference

__all__ = ["EngineClient", "EngineOptions", "open_engine_image", "write_engine_image"]

log = logging.getLogger(__name__)

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
DEFAULT_PODMAN_HOST = "unix:///run/podman/podman.sock"
_SMALL = 1 << 20  # members up to this size are always kept (configs, manifest.json)


def _host_for(options: EngineOptions, transport: str) -> str:
    if transport == DOCKER_DAEMON:
        return options.docker_host or DEFAULT_DOCKER_HOST
    if transport == PODMAN:
        return options.podman_host or DEFAULT_PODMAN_HOST
    raise UsageError(f"{transport}: is not a local engine")


# --- the HTTP client -------------------------------------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout, blocksize=CHUNK)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class EngineClient:
    """The engine API at ``host``; ``where`` names it in messages (``docker-daemon``)."""

    def __init__(self, host: str, where: str, timeout: float = 600.0) -> None:
        self.host = host
        self.where = where
        self.timeout = timeout
        scheme, sep, rest = host.partition("://")
        if not sep or scheme not in ("unix", "tcp", "http") or not rest:
            raise UsageError(f"{where}: engine address {host!r} is not unix:///PATH or "
                             "tcp://HOST:PORT")
        self._scheme, self._rest = scheme, rest

    def _connection(self) -> http.client.HTTPConnection:
        if self._scheme == "unix":
            return _UnixConnection("/" + self._rest.lstrip("/"), self.timeout)
        hostport = self._rest.rstrip("/")
        return http.client.HTTPConnection(hostport, timeout=self.timeout, blocksize=CHUNK)

    def request(self, method: str, path: str, *, body: BinaryIO | bytes | None = None,
                headers: dict[str, str] | None = None, what: str = ""
                ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send one request; the connection and its response (status < 400). The caller
        closes the connection. A 404 is :class:`NotFound`, other failures
        :class:`TransportError`, each with the engine's own message."""
        conn = self._connection()
        try:
            # A broken pipe: the engine answered before reading everything; its
            # answer says why.
            with contextlib.suppress(BrokenPipeError):
                conn.request(method, path, body=body, headers=headers or {},
                             encode_chunked=isinstance(body, io.IOBase))
            response = conn.getresponse()
        except FileNotFoundError:
            conn.close()
            raise TransportError(f"{self.where}: no engine listening at {self.host}",
                                 hint="start it, or point DOCKER_HOST/CONTAINER_HOST at "
                                      "its socket") from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise TransportError(f"{self.where}: cannot reach the engine at {self.host}: "
                                 f"{exc}") from None
        if response.status >= 400:
            message = _engine_message(response.read(64 << 10))
            conn.close()
            cls = NotFound if response.status == 404 else TransportError
            raise cls(f"{self.where}: {what or path}: {message} (HTTP {response.status})")
        return conn, response

    def get_json(self, path: str, what: str) -> object:
        conn, response = self.request("GET", path, what=what)
        try:
            raw = response.read(MAX_MANIFEST)
        finally:
            conn.close()
        try:
            return json.loads(raw)
        except ValueError:
            raise TransportError(f"{self.where}: {what}: the engine's answer is not "
                                 "JSON") from None


def _engine_message(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").strip()
    with contextlib.suppress(ValueError):
        doc = json.loads(text)
        if isinstance(doc, dict):
            for key in ("message", "cause", "error"):
                if isinstance(doc.get(key), str):
                    return str(doc[key])
    return text[:300] or "no message"


def _client(ref: Reference, options: EngineOptions) -> EngineClient:
    return EngineClient(_host_for(options, ref.transport), ref.transport, options.timeout)


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe=":/@")


# --- reading --------------------------------------------------------------------------


class _ExportedImage(TarArchive):
    """The members of one ``GET /images/{name}/get`` export, indexed from the stream.

    Small members and layers within the memory budget are kept; any other member is
    read by streaming the export again up to it.
    """

    def __init__(self, client: EngineClient, name: str, memory: int) -> None:
        # Not TarArchive.__init__: there is no file. _resolve, resolved_name and
        # file_size work over ``members`` as for an archive on disk.
        self.where = f"{client.where}:{name}"
        self._client = client
        self._name = name
        self._kept: dict[str, bytes] = {}
        self.members = self._index(memory)

    def _export(self) -> tuple[http.client.HTTPConnection, tarfile.TarFile]:
        conn, response = self._client.request("GET", f"/images/{_quote(self._name)}/get",
                                              what=f"export of {self._name}")
        try:
            tar = tarfile.open(fileobj=response, mode="r|")  # noqa: SIM115 - caller closes
        except (tarfile.TarError, OSError, http.client.HTTPException) as exc:
            conn.close()
            raise TransportError(f"{self.where}: the export is not a tar: {exc}") from None
        return conn, tar

    def _index(self, memory: int) -> dict[str, _Member]:
        members: dict[str, _Member] = {}
        conn, tar = self._export()
        left = memory
        try:
            for info in tar:
                name = _normalize(info.name)
                members[name] = _Member(name, 0, info.size, info.type, info.linkname)
                if not info.isreg():
                    continue
                stream = tar.extractfile(info)
                assert stream is not None
                if info.size <= _SMALL or info.size <= left:
                    data = stream.read()
                    if len(data) != info.size:
                        raise TransportError(f"{self.where}: {name} is cut short")
                    self._kept[name] = data
                    if info.size > _SMALL:
                        left -= info.size
        except (tarfile.TarError, OSError, EOFError, http.client.HTTPException) as exc:
            raise TransportError(f"{self.where}: the export broke off: {exc}") from None
        finally:
            tar.close()
            conn.close()
        return members

    def pread(self, n: int, offset: int) -> bytes:  # pragma: no cover - never on disk
        raise AssertionError("an engine export is not read in place")

    def open_file(self, name: str) -> BinaryIO:
        member = self._resolve(name)
        if member is None:
            raise NotFound(f"{self.where}: no {name} in the export")
        kept = self._kept.get(member.name)
        if kept is not None:
            return io.BytesIO(kept)
        return self._stream_member(member)

    def _stream_member(self, member: _Member) -> BinaryIO:
        conn, tar = self._export()
        try:
            for info in tar:
                if _normalize(info.name) == member.name and info.isreg():
                    stream = tar.extractfile(info)
                    assert stream is not None
                    return _MemberStream(stream, info.size, tar, conn, self.where)
        except (tarfile.TarError, OSError, EOFError, http.client.HTTPException) as exc:
            tar.close()
            conn.close()
            raise TransportError(f"{self.where}: the export broke off: {exc}") from None
        tar.close()
        conn.close()
        raise TransportError(f"{self.where}: {member.name} is no longer in the export "
                             "(the image changed while it was read)")


class _MemberStream(io.RawIOBase, BinaryIO):
    """One member of a streamed export; closing it ends the engine's export."""

    def __init__(self, stream: IO[bytes], size: int, tar: tarfile.TarFile,
                 conn: http.client.HTTPConnection, where: str) -> None:
        super().__init__()
        self._stream, self._left, self._tar, self._conn = stream, size, tar, conn
        self._where = where

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        n = min(len(view), self._left)
        if n <= 0:
            return 0
        try:
            data = self._stream.read(n)
        except (tarfile.TarError, OSError, EOFError, http.client.HTTPException) as exc:
            raise TransportError(f"{self._where}: the export broke off: {exc}") from None
        if not data:
            raise TransportError(f"{self._where}: the export broke off")
        view[: len(data)] = data
        self._left -= len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._tar.close()
            self._conn.close()
        super().close()


def open_engine_image(ref: Reference, options: EngineOptions | None = None) -> Image:
    """The image ``ref`` (``docker-daemon:NAME[:TAG]``, ``podman:NAME[:TAG]``) names in
    its engine, read from one streamed export (see the module docstring)."""
    options = options or EngineOptions()
    client = _client(ref, options)
    name = ref.familiar_name()
    inspected = client.get_json(f"/images/{_quote(name)}/json", f"image {name}")
    image_id = inspected.get("Id") if isinstance(inspected, dict) else None
    archive = _ExportedImage(client, name, options.memory)
    entries = _parse_docker_manifest(read_small_file(archive, "manifest.json", MAX_MANIFEST),
                                     archive.where)
    if len(entries) != 1:
        raise TransportError(f"{archive.where}: the export holds {len(entries)} images, "
                             "not one")
    image = _docker_image(archive, entries[0], DockerArchiveSource(archive))
    config = image.manifest.config.digest
    if isinstance(image_id, str) and image_id.removeprefix("sha256:") != config.split(":")[1]:
        raise TransportError(f"{archive.where}: the engine exported {config} for image "
                             f"{image_id} (the tag moved while it was read)")
    if ref.digest and ref.digest not in (image.digest, config):
        raise NotFound(f"{archive.where}: the image has digest {image.digest}")
    return image


# --- writing --------------------------------------------------------------------------


def _stream_file(out: BinaryIO, name: str, size: int, fill: Callable[[BinaryIO], object]
                 ) -> None:
    """One tar member of a known ``size`` to a stream that cannot seek."""
    out.write(_TarWriter._header(name, tarfile.REGTYPE, size))
    counter = HashingWriter(out)
    fill(counter)  # type: ignore[arg-type]
    if counter.size != size:
        raise TransportError(f"{name}: wrote {counter.size} bytes, not {size}")
    out.write(b"\0" * (-size % 512))


def _uncompressed_size(blob: BlobRef, diff_id: str) -> int:
    desc = blob.descriptor
    if mt.layer_compression(desc.media_type) == "none":
        return desc.size
    counter = HashingWriter(None)
    _layer_filler(blob, diff_id)(counter)  # type: ignore[arg-type]
    return counter.size


def _image_diff_ids(artifact: Image) -> list[str]:
    blobs = {b.descriptor.digest: b for b in walk_blobs(artifact) if isinstance(b, BlobRef)}
    config_desc = artifact.manifest.config
    config = loads_object(read_blob(blobs[config_desc.digest].source, config_desc, MAX_CONFIG),
                          f"{artifact.digest}: image config", MAX_CONFIG)
    return _diff_ids(config, f"image {artifact.digest}")


def _layers_present(client: EngineClient, names: tuple[str, ...], diff_ids: list[str]
                    ) -> set[str]:
    """The diff_ids of ``diff_ids`` whose layer chain an engine image of ``names`` has
    (a common prefix of its layers), minus any needed again further up."""
    best = 0
    for name in names:
        try:
            doc = client.get_json(f"/images/{_quote(name)}/json", f"image {name}")
        except SutureError:
            continue
        rootfs = doc.get("RootFS") if isinstance(doc, dict) else None
        have = rootfs.get("Layers") if isinstance(rootfs, dict) else None
        if not isinstance(have, list):
            continue
        k = 0
        while k < min(len(have), len(diff_ids)) and have[k] == diff_ids[k]:
            k += 1
        best = max(best, k)
    return set(diff_ids[:best]) - set(diff_ids[best:])


def _archive_writer(artifact: Image, where: str, skip: Collection[str] = ()
                    ) -> tuple[Callable[[BinaryIO], None], str]:
    """A function writing ``artifact`` as an untagged docker-archive to a stream, and the
    digest of the manifest it reads back as. Sizes are settled (and compressed layers
    checked) here, before anything is written. The files of layers in ``skip`` are left
    out (``manifest.json`` still lists them)."""
    blobs = {b.descriptor.digest: b for b in walk_blobs(artifact) if isinstance(b, BlobRef)}
    config_desc = artifact.manifest.config
    config_bytes = read_blob(blobs[config_desc.digest].source, config_desc, MAX_CONFIG)
    config = loads_object(config_bytes, f"{artifact.digest}: image config", MAX_CONFIG)
    diff_ids = _diff_ids(config, f"image {artifact.digest}")
    layers = list(artifact.manifest.layers)
    if len(diff_ids) != len(layers):
        raise TransportError(f"image {artifact.digest}: {len(layers)} layers but "
                             f"{len(diff_ids)} diff_ids in its config")
    plan: dict[str, tuple[int, Callable[[BinaryIO], object]]] = {}
    for desc, diff_id in zip(layers, diff_ids, strict=True):
        if desc.digest not in blobs:
            raise UsageError(f"{where}: layer {desc.digest} is a foreign layer (not "
                             "distributable) and cannot be loaded")
        name = f"{diff_id.split(':', 1)[1]}.tar"
        if name not in plan:
            blob = blobs[desc.digest]
            plan[name] = (_uncompressed_size(blob, diff_id), _layer_filler(blob, diff_id))
    config_name = f"{config_desc.digest.split(':', 1)[1]}.json"
    manifest_json = canonical_json([{"Config": config_name, "RepoTags": [],
                                     "Layers": [f"{d.split(':', 1)[1]}.tar"
                                                for d in diff_ids]}])
    plan[config_name] = (len(config_bytes), lambda out: out.write(config_bytes))
    plan["manifest.json"] = (len(manifest_json), lambda out: out.write(manifest_json))

    skipped = {f"{d.split(':', 1)[1]}.tar" for d in skip}

    def write(out: BinaryIO) -> None:
        for name in sorted(plan):
            if name in skipped:
                continue
            size, fill = plan[name]
            _stream_file(out, name, size, fill)
        out.write(b"\0" * 1024)

    sizes = {d: plan[f"{d.split(':', 1)[1]}.tar"][0] for d in diff_ids}
    read_back = docker_manifest(config_bytes, [Descriptor(mt.DOCKER_LAYER_TAR, d, sizes[d])
                                               for d in diff_ids])
    return write, read_back.digest


def write_engine_image(artifact: Artifact, ref: Reference,
                       options: EngineOptions | None = None) -> str:
    """Load ``artifact`` into the engine ``ref`` names and tag it ``ref``'s name; return
    the digest of the manifest it reads back as (its image ID is the config digest)."""
    options = options or EngineOptions()
    where = str(ref)
    if isinstance(artifact, ImageIndex):
        raise UsageError(f"{where}: an engine holds single images, and {artifact.digest} "
                         "is a multi-platform index", hint="choose one image with --platform")
    if not artifact.is_container_image:
        raise UsageError(f"{where}: {artifact.digest} is not a container image")
    if not ref.tag:
        raise UsageError(f"{where}: loading into an engine needs a tag")
    client = _client(ref, options)
    skip: set[str] = set()
    if ref.transport == DOCKER_DAEMON and options.present:
        skip = _layers_present(client, options.present, _image_diff_ids(artifact))
    try:
        digest = _load(client, artifact, where, skip)
    except TransportError as exc:
        if not skip:
            raise
        log.info("%s: load without the engine's own layers failed (%s); sending them all",
                 where, exc)
        digest = _load(client, artifact, where, set())
    config = artifact.manifest.config.digest
    try:
        client.get_json(f"/images/{config}/json", "the loaded image")
    except NotFound:
        raise TransportError(f"{where}: the engine did not keep the loaded image "
                             f"{config}") from None
    assert ref.registry is not None and ref.repository is not None
    repo = Reference(ref.transport, ref.registry, ref.repository).familiar_name()
    query = urllib.parse.urlencode({"repo": repo, "tag": ref.tag})
    # Podman's own endpoint names a short name as `podman tag` does (localhost/NAME);
    # its Docker-compatible one would make it docker.io/library/NAME.
    api = "/v4.0.0/libpod" if ref.transport == PODMAN else ""
    conn, response = client.request("POST", f"{api}/images/{config}/tag?{query}",
                                    what=f"tag {ref.familiar_name()}")
    response.read()
    conn.close()
    return digest


def _load(client: EngineClient, artifact: Image, where: str, skip: set[str]) -> str:
    """One ``POST /images/load`` of ``artifact`` (without the layer files in ``skip``);
    the digest it reads back as. Raises :class:`TransportError` with the engine's error."""
    write, digest = _archive_writer(artifact, where, skip)
    failure: list[BaseException] = []
    read_fd, write_fd = os.pipe()

    sent = _Counting()

    def produce() -> None:
        try:
            with open(write_fd, "wb", buffering=CHUNK) as pipe:
                sent.out = pipe
                write(sent)  # type: ignore[arg-type]
        except BrokenPipeError:
            pass  # the engine stopped reading: its answer says why
        except BaseException as exc:
            failure.append(exc)

    producer = threading.Thread(target=produce, name="engine-load", daemon=True)
    producer.start()
    try:
        with open(read_fd, "rb", buffering=0) as body:
            conn, response = client.request(
                "POST", "/images/load?quiet=1", body=body,
                headers={"Content-Type": "application/x-tar"}, what="load")
            try:
                answer = response.read(MAX_MANIFEST)
            finally:
                conn.close()
    finally:
        producer.join()
    if failure:
        raise failure[0]
    for line in answer.splitlines():
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if isinstance(doc, dict) and (doc.get("error") or doc.get("errorDetail")):
                raise TransportError(f"{where}: load: {_engine_message(line)}")
    log.info("%s: loaded %d bytes, %d layer file(s) left out", where, sent.size, len(skip))
    return digest


class _Counting:
    """Writes to ``out``, counting the bytes."""

    def __init__(self) -> None:
        self.out: BinaryIO | None = None
        self.size = 0

    def write(self, data: bytes) -> int:
        assert self.out is not None
        self.size += len(data)
        return self.out.write(data)


def engine_available(transport: str, options: EngineOptions) -> bool:
    """Whether the engine for ``transport`` answers ``GET /_ping``."""
    try:
        client = EngineClient(_host_for(options, transport), transport, timeout=5)
        conn, response = client.request("GET", "/_ping", what="ping")
        response.read()
        conn.close()
    except SutureError:
        return False
    return True
