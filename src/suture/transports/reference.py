"""Image references: one grammar for every command.

=================================  ==========================================
``docker://REF`` or ``REF``         a registry image; ``nginx`` is
                                    ``docker.io/library/nginx:latest``
``oci:DIR[:TAG|@DIGEST]``           an OCI image layout directory
``oci-archive:FILE[:TAG|@DIGEST]``  a tar of an OCI image layout
``docker-archive:FILE[:REF]``       the ``docker save`` format
``docker-daemon:NAME[:TAG]``        an image of a local Docker engine
``podman:NAME[:TAG]``               an image of a local Podman service
=================================  ==========================================

A digest (``@sha256:...``) may stand wherever a tag may. :func:`parse_reference`
returns a :class:`Reference` whose ``str()`` parses back to an equal value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from suture.errors import ReferenceError

DEFAULT_REGISTRY = "docker.io"
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
DEFAULT_TAG = "latest"

_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_DOMAIN = re.compile(
    r"^(?:localhost|(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)"
    r"(?:\.(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?))*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$"
)
_SHA256 = re.compile(r"^sha256:[a-f0-9]{64}$")

DOCKER, OCI, OCI_ARCHIVE, DOCKER_ARCHIVE = "docker", "oci", "oci-archive", "docker-archive"
FILE_TRANSPORTS = (OCI, OCI_ARCHIVE, DOCKER_ARCHIVE)
DOCKER_DAEMON, PODMAN = "docker-daemon", "podman"
ENGINE_TRANSPORTS = (DOCKER_DAEMON, PODMAN)  # images of a local engine, by name
_UNSUPPORTED = ("containers-storage", "dir", "ostree", "sif")


@dataclass(frozen=True)
class Reference:
    """A parsed image reference.

    ``transport`` is one of ``docker``, ``oci``, ``oci-archive``, ``docker-archive``.
    Registry references fill ``registry``/``repository``; file references fill
    ``path``. ``tag`` and ``digest`` may be set on either (a ``docker-archive``
    reference names an image inside the archive by ``registry/repository:tag``).
    """

    transport: str
    registry: str | None = None
    repository: str | None = None
    tag: str | None = None
    digest: str | None = None
    path: str | None = None

    # -- forms -------------------------------------------------------------------
    @property
    def is_registry(self) -> bool:
        return self.transport == DOCKER

    @property
    def is_engine(self) -> bool:
        """An image of a local Docker or Podman engine (``docker-daemon:``, ``podman:``)."""
        return self.transport in ENGINE_TRANSPORTS

    @property
    def name(self) -> str:
        """``registry/repository`` (without tag or digest), or ``""`` when there is none."""
        if self.registry and self.repository:
            return f"{self.registry}/{self.repository}"
        return ""

    @property
    def endpoint(self) -> str:
        """The host[:port] to talk to for this registry (Docker Hub's is special)."""
        assert self.registry is not None
        return DOCKER_HUB_ENDPOINT if self.registry == DEFAULT_REGISTRY else self.registry

    def image_name(self) -> str:
        """``registry/repository[:tag][@digest]``: the docker form, without transport."""
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    def familiar_name(self) -> str:
        """The name as ``docker images`` shows it: ``app:1``, ``foo/bar:t``, ``host/x:t``."""
        assert self.registry is not None and self.repository is not None
        name = (self.repository.removeprefix("library/") if self.registry == DEFAULT_REGISTRY
                else f"{self.registry}/{self.repository}")
        if self.tag:
            name += f":{self.tag}"
        if self.digest:
            name += f"@{self.digest}"
        return name

    def __str__(self) -> str:
        if self.transport == DOCKER:
            return self.image_name()
        if self.transport in ENGINE_TRANSPORTS:
            return f"{self.transport}:{self.familiar_name()}"
        assert self.path is not None
        out = f"{self.transport}:{self.path}"
        if self.transport == DOCKER_ARCHIVE:
            if self.name:
                out += f":{self.image_name()}"
            elif self.digest:
                out += f"@{self.digest}"
            return out
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    def with_tag(self, tag: str) -> Reference:
        """The same place with ``tag`` and no digest."""
        check_tag(tag)
        if self.transport == DOCKER_ARCHIVE and not self.name:
            raise ReferenceError(str(self), "a docker-archive tag needs an image name")
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> Reference:
        return replace(self, digest=digest)


def check_tag(tag: str) -> str:
    if not _TAG.match(tag):
        raise ReferenceError(tag, "a tag is 1-128 of [A-Za-z0-9_.-], not starting with . or -")
    return tag


def parse_reference(text: str) -> Reference:
    """Parse any reference form; raise :class:`ReferenceError` with the reason."""
    if not isinstance(text, str) or not text.strip():
        raise ReferenceError(str(text), "empty reference")
    if text != text.strip() or any(c.isspace() for c in text):
        raise ReferenceError(text, "whitespace is not allowed")
    if text.startswith("docker://"):
        return parse_docker(text[len("docker://"):], original=text)
    scheme, sep, rest = text.partition(":")
    if sep and scheme in FILE_TRANSPORTS:
        return _parse_file(scheme, rest, text)
    if sep and scheme in ENGINE_TRANSPORTS:
        if not rest:
            raise ReferenceError(text, f"{scheme}: needs an image name")
        named = parse_docker(rest, original=text)
        return replace(named, transport=scheme)
    if sep and scheme in _UNSUPPORTED:
        raise ReferenceError(text, f"the {scheme}: transport is not supported")
    return parse_docker(text, original=text)


def _parse_file(transport: str, rest: str, original: str) -> Reference:
    if not rest:
        raise ReferenceError(original, f"{transport}: needs a path")
    path, digest = rest, None
    if "@" in rest:
        path, _, digest = rest.rpartition("@")
        if not _SHA256.match(digest) and not _DIGEST.match(digest):
            raise ReferenceError(original, f"bad digest {digest!r}")
    if transport == DOCKER_ARCHIVE:
        # docker-archive:FILE[:REF] - REF is a docker reference (it may hold colons).
        if digest is not None:
            if not path:
                raise ReferenceError(original, "docker-archive: needs a path")
            return Reference(DOCKER_ARCHIVE, path=path, digest=digest)
        file_part, sep, ref_part = rest.partition(":")
        if not file_part:
            raise ReferenceError(original, "docker-archive: needs a path")
        if not sep:
            return Reference(DOCKER_ARCHIVE, path=file_part)
        named = parse_docker(ref_part, original=original)
        return Reference(DOCKER_ARCHIVE, named.registry, named.repository, named.tag,
                         named.digest, path=file_part)
    tag = None
    head, sep, tail = path.rpartition(":")
    if sep and head and "/" not in tail:
        path, tag = head, check_tag_in(tail, original)
    if not path:
        raise ReferenceError(original, f"{transport}: needs a path")
    return Reference(transport, tag=tag, digest=digest, path=path)


def check_tag_in(tag: str, original: str) -> str:
    if not _TAG.match(tag):
        raise ReferenceError(original, f"bad tag {tag!r}")
    return tag


def parse_docker(text: str, *, original: str | None = None) -> Reference:
    """Parse ``[registry/]repository[:tag][@digest]`` with Docker's normalisation."""
    original = original or text
    if not text:
        raise ReferenceError(original, "empty image name")
    name, digest = text, None
    if "@" in text:
        name, _, digest = text.partition("@")
        if not _DIGEST.match(digest) or (digest.startswith("sha256:") and not
                                         _SHA256.match(digest)):
            raise ReferenceError(original, f"bad digest {digest!r}")
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = name.rpartition(":")
        if not _TAG.match(tag):
            raise ReferenceError(original, f"bad tag {tag!r}")
    if not name:
        raise ReferenceError(original, "empty image name")
    first, sep, remainder = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        registry, repository = first, remainder
        if not _DOMAIN.match(registry):
            raise ReferenceError(original, f"bad registry host {registry!r}")
    else:
        registry, repository = DEFAULT_REGISTRY, name
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = f"library/{repository}"
    if len(f"{registry}/{repository}") > 255:
        raise ReferenceError(original, "name longer than 255 characters")
    for component in repository.split("/"):
        if not _PATH_COMPONENT.match(component):
            why = "uppercase letters" if component.lower() != component else "characters"
            raise ReferenceError(original, f"repository path {component!r} has invalid {why}")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(DOCKER, registry, repository, tag, digest)
