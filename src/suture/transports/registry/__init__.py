"""The registry transport: pull and push images over the Distribution API.

``open_registry_image(ref, options)`` returns a lazy image or index (only its
manifest read); ``push_image(artifact, ref, options)`` writes one and returns
the top manifest's digest. Both are called by
:func:`suture.transports.open_artifact` and :func:`suture.transports.write_artifact`.
See :mod:`~suture.transports.registry.client` for the TLS, credential, auth and
retry contracts.
"""

from __future__ import annotations

from suture.transports.registry.auth import (
    AuthConfig,
    Challenge,
    find_credentials,
    parse_www_authenticate,
    read_config_credentials,
)
from suture.transports.registry.client import RegistryClient
from suture.transports.registry.pull import RegistrySource, open_registry_image
from suture.transports.registry.push import PushResult, push_artifact, push_image

__all__ = [
    "AuthConfig",
    "Challenge",
    "PushResult",
    "RegistryClient",
    "RegistrySource",
    "find_credentials",
    "open_registry_image",
    "parse_www_authenticate",
    "push_artifact",
    "push_image",
    "read_config_credentials",
]
