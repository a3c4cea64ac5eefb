"""Module streams (EL8 modularity), as dnf applies them to what repositories offer.

A repository may carry ``modules.yaml`` (repomd record ``modules``): ``modulemd`` v2
documents, each one build of a module stream listing its rpm artifacts as
``name-epoch:version-release.arch``, and ``modulemd-defaults`` documents naming each
module's default stream. The image says which streams it uses in
``/etc/dnf/modules.d/<module>.module`` (``state=enabled`` with ``stream=``, or
``state=disabled``); a module it does not name uses its default stream, as dnf (and
microdnf, which writes no ``modules.d`` for defaults) does.

dnf's filter, which :class:`ModularFilter` applies:

* an *active* stream is an enabled one, else the module's default unless the module is
  disabled; a stream build whose ``platform`` requirement excludes the image's
  ``PLATFORM_ID`` is not considered;
* a package that is an artifact of an active stream is kept; one that is an artifact of
  any other stream is hidden;
* a package that is no module's artifact is hidden when an active stream ships a package
  of its name (so an update never leaves the stream);
* packages of a repository with ``module_hotfixes=1`` are never filtered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import yaml

from suture.distro.errors import RepositoryError
from suture.distro.rpm.model import RepoPackage
from suture.distro.rpm.repo import RepoConfigError, parse_ini

MODULES_D = "etc/dnf/modules.d/"
MAX_DOCUMENTS = 200_000


@dataclass(frozen=True)
class ModuleStream:
    """One build (``version``, ``context``) of a module stream, for one architecture."""

    name: str
    stream: str
    version: int
    context: str
    arch: str
    artifacts: frozenset[str]  # name-epoch:version-release.arch
    platforms: tuple[tuple[str, ...], ...] = ()  # requires.platform of each dependency set


@dataclass(frozen=True)
class ModuleMetadata:
    """What one repository's ``modules.yaml`` holds that the filter needs."""

    streams: tuple[ModuleStream, ...] = ()
    defaults: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModuleState:
    """A module's line in ``/etc/dnf/modules.d``: ``state`` is ``enabled``,
    ``disabled`` or ``""`` (reset: the default stream applies)."""

    name: str
    stream: str
    state: str


def _text(value: object) -> str:
    # streams such as 8.0 or 10 are YAML numbers when the producer did not quote them
    return "" if value is None else str(value)


def _platforms(deps: object, what: str) -> tuple[tuple[str, ...], ...]:
    if deps is None:
        return ()
    if not isinstance(deps, list):
        raise RepositoryError(f"{what}: dependencies is not a list")
    out: list[tuple[str, ...]] = []
    for dep in deps:
        requires = dep.get("requires") if isinstance(dep, dict) else None
        platform = requires.get("platform") if isinstance(requires, dict) else None
        if platform is None:
            out.append(())
        elif isinstance(platform, list):
            out.append(tuple(_text(p) for p in platform))
        else:
            raise RepositoryError(f"{what}: requires.platform is not a list")
    return tuple(out)


def parse_modules_yaml(data: bytes, *, what: str) -> ModuleMetadata:
    """The ``modulemd`` (v2) and ``modulemd-defaults`` (v1) documents of ``data``; other
    documents (translations, obsoletes, v3 packager files) are skipped. Raises
    :class:`~suture.distro.errors.RepositoryError` naming ``what`` for YAML that does not
    parse or a document missing the fields the filter needs."""
    try:
        documents = list(yaml.safe_load_all(data))
    except yaml.YAMLError as exc:
        raise RepositoryError(f"{what}: not YAML: {str(exc).splitlines()[0]}") from None
    if len(documents) > MAX_DOCUMENTS:
        raise RepositoryError(f"{what}: more than {MAX_DOCUMENTS} documents")
    streams: list[ModuleStream] = []
    defaults: dict[str, str] = {}
    for n, doc in enumerate(documents, 1):
        if doc is None:
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
            raise RepositoryError(f"{what}: document {n} is not a modulemd document")
        kind, body = doc.get("document"), doc["data"]
        if kind == "modulemd-defaults":
            module, stream = _text(body.get("module")), _text(body.get("stream"))
            if not module:
                raise RepositoryError(f"{what}: document {n}: defaults name no module")
            if stream:
                defaults[module] = stream
            continue
        if kind != "modulemd" or doc.get("version") != 2:
            continue
        name, stream = _text(body.get("name")), _text(body.get("stream"))
        if not name or not stream:
            raise RepositoryError(f"{what}: document {n}: a module without name or stream")
        try:
            version = int(body.get("version") or 0)
        except (TypeError, ValueError):
            raise RepositoryError(f"{what}: document {n}: version is not a number") from None
        rpms = (body.get("artifacts") or {}).get("rpms") or []
        if not isinstance(rpms, list):
            raise RepositoryError(f"{what}: document {n}: artifacts.rpms is not a list")
        streams.append(ModuleStream(
            name, stream, version, _text(body.get("context")), _text(body.get("arch")),
            frozenset(_text(r) for r in rpms),
            _platforms(body.get("dependencies"), f"{what}: document {n}")))
    return ModuleMetadata(tuple(streams), defaults)


def parse_module_states(files: Mapping[str, bytes]) -> dict[str, ModuleState]:
    """The modules ``etc/dnf/modules.d/*.module`` names, by module name. A file that is
    not INI is an error naming it; a section without ``stream`` and ``state`` is reset."""
    out: dict[str, ModuleState] = {}
    for path in sorted(files):
        if not (path.startswith(MODULES_D) and path.endswith(".module")):
            continue
        for section, line, entries in parse_ini(files[path], path):
            name = entries.get("name", (section, line))[0] or section
            stream = entries.get("stream", ("", 0))[0]
            state = entries.get("state", ("", 0))[0].lower()
            if not state and entries.get("enabled", ("", 0))[0] in ("1", "true"):
                state = "enabled"  # dnf before 4.0's key
            if state not in ("enabled", "disabled", ""):
                state = ""  # "available", "installed"...: nothing enabled or disabled
            if state == "enabled" and not stream:
                raise RepoConfigError(f"module {name} is enabled with no stream", path=path,
                                      line=line)
            out[name] = ModuleState(name, stream, state)
    return out


def artifact(pkg: RepoPackage) -> str:
    """``pkg`` as module artifacts name it (the epoch always written)."""
    return f"{pkg.name}-{pkg.epoch or 0}:{pkg.version}-{pkg.release}.{pkg.arch}"


def _rpm_name(nevra: str) -> str:
    # name-epoch:version-release.arch: the name ends at the dash before the epoch
    head = nevra.rsplit(":", 1)[0]
    return head.rsplit("-", 1)[0]


class ModularFilter:
    """dnf's modular filter over all the repositories' module metadata (see the module
    docstring). ``platform`` is the image's ``PLATFORM_ID`` stream (``el8``), or None."""

    def __init__(self, metadata: Iterable[ModuleMetadata], states: Mapping[str, ModuleState],
                 platform: str | None) -> None:
        streams: list[ModuleStream] = []
        defaults: dict[str, str] = {}
        for md in metadata:
            streams += md.streams
            defaults.update(md.defaults)
        self.active: dict[str, str] = {}
        for name in sorted({s.name for s in streams}):
            state = states.get(name)
            if state is not None and state.state == "enabled":
                self.active[name] = state.stream
            elif (state is None or state.state == "") and name in defaults:
                self.active[name] = defaults[name]
        self.included: set[str] = set()
        self.excluded: set[str] = set()
        for s in streams:
            if self.active.get(s.name) == s.stream and self._fits(s, platform):
                self.included |= s.artifacts
            else:
                self.excluded |= s.artifacts
        self.excluded -= self.included
        self.names = {_rpm_name(a) for a in self.included}

    @staticmethod
    def _fits(stream: ModuleStream, platform: str | None) -> bool:
        if platform is None or not stream.platforms:
            return True
        for allowed in stream.platforms:
            wanted = [p for p in allowed if not p.startswith("-")]
            if f"-{platform}" in allowed:
                continue
            if not wanted or platform in wanted:
                return True
        return False

    def __bool__(self) -> bool:
        return bool(self.included or self.excluded)

    def keep(self, pkg: RepoPackage, *, hotfix: bool) -> bool:
        """Whether dnf offers ``pkg`` (from a ``module_hotfixes`` repository: always)."""
        if hotfix:
            return True
        nevra = artifact(pkg)
        if nevra in self.included:
            return True
        if nevra in self.excluded:
            return False
        return pkg.name not in self.names
