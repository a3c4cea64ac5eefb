"""Provenance of a patched image: an in-toto Statement v1 with a SLSA provenance v1
predicate.

The subjects are the patched manifests (the index and each platform's image);
``buildDefinition`` names the source image by reference and digest, the report
by its digest, the options that change the result, and every package installed
with the URI and hash of its file; suture is the builder. Pure: values in, a
JSON-ready dict out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from suture.plan import Update

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://suture.invalid/patch/v1"
BUILDER_ID = "https://suture.invalid/builder/suture"
MEDIA_TYPE = "application/vnd.in-toto+json"


@dataclass(frozen=True)
class ProvenanceSubject:
    """A patched manifest: a name (``registry/repo`` or the layout's name) and its digest."""

    name: str
    digest: str


@dataclass(frozen=True)
class PlatformBuild:
    """One platform of the run: what it was patched from and what was installed."""

    platform: str
    source_digest: str
    updates: tuple[Update, ...]


def _digest_set(digest: str) -> dict[str, str]:
    algorithm, _, value = digest.partition(":")
    return {algorithm: value}


def build_provenance(subjects: Sequence[ProvenanceSubject], *, source: str,
                     source_digest: str, platforms: Sequence[PlatformBuild],
                     report_digests: Mapping[str, str], options: Mapping[str, Any],
                     tool_version: str, started: str, finished: str,
                     invocation: str = "") -> dict[str, Any]:
    """The Statement for ``subjects``. ``report_digests``: by report file name, its
    ``sha256:...`` digest; ``options``: the flags that change the result (JSON
    values); ``started``/``finished``: RFC 3339 UTC times of the run."""
    dependencies: list[dict[str, Any]] = [
        {"uri": f"oci://{source}", "digest": _digest_set(source_digest), "name": "source"}]
    for build in platforms:
        if build.source_digest != source_digest:
            dependencies.append({"uri": f"oci://{source}@{build.source_digest}",
                                 "digest": _digest_set(build.source_digest),
                                 "name": f"source {build.platform}"})
        for u in build.updates:
            dep: dict[str, Any] = {"name": f"{u.name} {u.to_version} {u.architecture}",
                                   "annotations": {"platform": build.platform,
                                                   "from": u.from_version or "",
                                                   "reason": u.reason}}
            if u.filename:
                dep["uri"] = u.base_uri.rstrip("/") + "/" + u.filename
            if u.sha256:
                dep["digest"] = {"sha256": u.sha256}
            if "uri" not in dep and "digest" not in dep:
                dep["uri"] = f"pkg:{u.name}@{u.to_version}"
            dependencies.append(dep)
    external: dict[str, Any] = {"source": source, "options": dict(options)}
    if report_digests:
        external["reports"] = [{"name": name, "digest": _digest_set(digest)}
                               for name, digest in sorted(report_digests.items())]
    metadata: dict[str, Any] = {"startedOn": started, "finishedOn": finished}
    if invocation:
        metadata["invocationId"] = invocation
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": s.name, "digest": _digest_set(s.digest)} for s in subjects],
        "predicateType": SLSA_PROVENANCE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": {"platforms": [b.platform for b in platforms]},
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {"suture": tool_version}},
                "metadata": metadata,
            },
        },
    }
