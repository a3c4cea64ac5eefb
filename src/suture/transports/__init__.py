"""Sources and sinks of images: registries, OCI layouts and archives.

``open_artifact(ref)`` returns a lazy :class:`~suture.oci.image.Image` or
:class:`~suture.oci.image.ImageIndex`; ``write_artifact(artifact, ref)`` writes
one. Every sink writes to a temporary place and moves the result into place
only when it is complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from suture.transports.reference import (
    DOCKER,
    DOCKER_ARCHIVE,
    ENGINE_TRANSPORTS,
    OCI,
    OCI_ARCHIVE,
    Reference,
    parse_reference,
)

if TYPE_CHECKING:
    import requests

    from suture.oci.image import Artifact
    from suture.progress import Progress


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> Credentials:
        """``user:password`` (the form of ``--creds`` and ``skopeo --creds``)."""
        user, sep, password = text.partition(":")
        if not sep or not user:
            from suture.errors import UsageError

            raise UsageError("credentials must be given as USER:PASSWORD")
        return cls(user, password)


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach registries. All fields have safe defaults.

    ``insecure``: registries (``host[:port]``) that may be reached over plain HTTP
    or with unverified TLS; ``localhost`` and ``127.0.0.1`` always may use HTTP.
    ``auth_file``: a ``config.json`` to read instead of ``~/.docker/config.json``
    and ``$REGISTRY_AUTH_FILE`` (the CLI fills it from the environment).
    ``credentials``: used for every registry, ahead of any file.
    """

    insecure: frozenset[str] = frozenset()
    ca_file: Path | None = None
    credentials: Credentials | None = None
    auth_file: Path | None = None
    docker_config_dir: Path | None = None
    retries: int = 5
    backoff: float = 0.5
    timeout: float = 60.0
    chunk_size: int = 0  # 0: monolithic uploads; else chunked PATCH uploads of this size
    session: requests.Session | None = None
    progress: Progress | None = None  # hears every blob upload's bytes


@dataclass(frozen=True)
class EngineOptions:
    """Where local engines listen (``docker-daemon:``, ``podman:``) and how much of an
    exported image may be held in memory (see :mod:`suture.transports.daemon`).

    ``docker_host``/``podman_host``: ``unix:///PATH`` or ``tcp://HOST:PORT`` (plain
    HTTP), ``None`` for the default socket. ``memory``: bytes of layers kept from the
    first export; layers past it are streamed again from the engine when read.
    ``present``: images of the destination engine whose layers a load into Docker may
    leave out (Docker keeps a layer it has; it is sent again if the load fails).
    """

    docker_host: str | None = None
    podman_host: str | None = None
    timeout: float = 600.0
    memory: int = 512 << 20
    present: tuple[str, ...] = ()


@dataclass(frozen=True)
class Options:
    registry: RegistryOptions = field(default_factory=RegistryOptions)
    engines: EngineOptions = field(default_factory=EngineOptions)


def as_reference(ref: Reference | str) -> Reference:
    return ref if isinstance(ref, Reference) else parse_reference(ref)


def open_artifact(ref: Reference | str, options: Options | None = None) -> Artifact:
    """Open the image or index that ``ref`` names. Nothing but its manifest is read."""
    ref = as_reference(ref)
    options = options or Options()
    if ref.transport == DOCKER:
        from suture.transports.registry import open_registry_image

        return open_registry_image(ref, options.registry)
    if ref.transport == OCI:
        from suture.transports.layout import open_layout_image

        return open_layout_image(ref)
    if ref.transport == OCI_ARCHIVE:
        from suture.transports.archive import open_oci_archive

        return open_oci_archive(ref)
    if ref.transport == DOCKER_ARCHIVE:
        from suture.transports.archive import open_docker_archive

        return open_docker_archive(ref)
    if ref.transport in ENGINE_TRANSPORTS:
        from suture.transports.daemon import open_engine_image

        return open_engine_image(ref, options.engines)
    raise AssertionError(ref.transport)


def write_artifact(artifact: Artifact, ref: Reference | str,
                   options: Options | None = None) -> str:
    """Write ``artifact`` to ``ref``; return the digest of the manifest written.

    Nothing is visible at ``ref`` until everything is written.
    """
    ref = as_reference(ref)
    options = options or Options()
    if ref.transport == DOCKER:
        from suture.transports.registry import push_image

        return push_image(artifact, ref, options.registry)
    if ref.transport == OCI:
        from suture.transports.layout import write_layout_image

        return write_layout_image(artifact, ref)
    if ref.transport == OCI_ARCHIVE:
        from suture.transports.archive import write_oci_archive

        return write_oci_archive(artifact, ref)
    if ref.transport == DOCKER_ARCHIVE:
        from suture.transports.archive import write_docker_archive

        return write_docker_archive(artifact, ref)
    if ref.transport in ENGINE_TRANSPORTS:
        from suture.transports.daemon import write_engine_image

        return write_engine_image(artifact, ref, options.engines)
    raise AssertionError(ref.transport)
