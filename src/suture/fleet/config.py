"""copa's bulk ``PatchConfig`` (``copa.sh/v1alpha1``), read as copa reads it, plus
suture's documented superset.

copa's keys::

    apiVersion: copa.sh/v1alpha1          # exact
    kind: PatchConfig                     # exact
    target: {registry: R, tag: "{{ .SourceTag }}-patched"}
    images:
      - name: N
        image: REPOSITORY                 # without tag
        tags: {strategy: list|pattern|latest, list: [...], pattern: RE, maxTags: K,
               exclude: [...]}
        platforms: [linux/amd64, ...]
        target: {registry: R, tag: T}     # per image, field by field over the global one

suture's superset (all optional)::

    reports: DIR        # reports matched to images by their ArtifactName (top level)
    skip: digest|never  # top level or per image; default digest
    images:
      - report: FILE    # one report for every tag of this image
        reports: {TAG: FILE, ...}

:func:`parse_config` is pure: bytes in, a :class:`FleetConfig` out, or a
:class:`FleetConfigError` naming the file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

from suture.errors import ReferenceError, UsageError
from suture.oci.model import Platform
from suture.transports.reference import Reference, parse_docker

API_VERSION = "copa.sh/v1alpha1"
KIND = "PatchConfig"
DEFAULT_TAG_TEMPLATE = "{{ .SourceTag }}-patched"
STRATEGIES = ("list", "pattern", "latest")
SKIP_MODES = ("digest", "never")

_TOP_KEYS = ("apiVersion", "kind", "chiselRelease", "target", "images", "charts",
             "chartTarget", "overrides", "reports", "skip")
_IMAGE_KEYS = ("name", "image", "chiselRelease", "tags", "target", "platforms", "report",
               "reports", "skip")
_TARGET_KEYS = ("registry", "tag")
_TAGS_KEYS = ("strategy", "pattern", "maxTags", "list", "exclude")
_TEMPLATE = re.compile(r"{{-?\s*(.*?)\s*-?}}")


class FleetConfigError(UsageError):
    """A PatchConfig that cannot be used: the message names the file and the line."""


@dataclass(frozen=True)
class TargetSpec:
    registry: str | None = None
    tag: str | None = None


@dataclass(frozen=True)
class TagStrategy:
    strategy: str
    pattern: str | None = None
    max_tags: int = 0
    tags: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def matches(self, tag: str) -> bool:
        return self.pattern is not None and re.search(self.pattern, tag) is not None


@dataclass(frozen=True)
class ImageSpec:
    name: str
    image: str  # the repository, as written
    repository: Reference  # parsed (its tag, "latest" by default, is not used)
    tags: TagStrategy
    target: TargetSpec
    platforms: tuple[Platform, ...] = ()
    report: str | None = None
    reports: dict[str, str] = field(default_factory=dict)
    skip: str = "digest"
    line: int = 0

    def target_repository(self) -> str:
        """``registry/repository`` the patched images go to: the target registry plus
        the last path segment of the source repository (as copa names it), or the
        source repository itself."""
        if self.target.registry:
            last = (self.repository.repository or "").rsplit("/", 1)[-1]
            return f"{self.target.registry.rstrip('/')}/{last}"
        return self.repository.name

    def target_tag(self, source_tag: str) -> str:
        return render_tag(self.target.tag or DEFAULT_TAG_TEMPLATE, source_tag)


@dataclass(frozen=True)
class FleetConfig:
    images: tuple[ImageSpec, ...]
    target: TargetSpec = TargetSpec()
    reports: str | None = None
    source: str = "config"


def render_tag(template: str, source_tag: str) -> str:
    """copa's tag template: Go ``text/template`` with ``.SourceTag`` as its only field."""
    def field_of(match: re.Match[str]) -> str:
        if match.group(1) != ".SourceTag":
            raise UsageError(f"tag template {template!r}: only {{{{ .SourceTag }}}} is "
                             f"available, not {{{{ {match.group(1)} }}}}")
        return source_tag
    return _TEMPLATE.sub(field_of, template)


# ------------------------------------------------------------------------- parsing


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, node: yaml.Node | None, message: str) -> FleetConfigError:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        return FleetConfigError(f"{self.source}{line}: {message}")

    def mapping(self, node: yaml.Node, where: str, known: tuple[str, ...]
                ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{where} must be a mapping")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                raise self.fail(key, f"{where}: keys must be strings")
            if key.value not in known:
                raise self.fail(key, f"unknown key {key.value!r} in {where} (known: "
                                     f"{', '.join(known)})")
            if key.value in out:
                raise self.fail(key, f"{where}: {key.value!r} given twice")
            out[key.value] = (key, value)
        return out

    def string(self, node: yaml.Node, where: str, *, empty: bool = False) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag.endswith((":map", ":seq")):
            raise self.fail(node, f"{where} must be a string")
        if node.tag.endswith(":null") and not node.value.strip("~").replace("null", ""):
            if empty:
                return ""
            raise self.fail(node, f"{where} must not be empty")
        if not node.value and not empty:
            raise self.fail(node, f"{where} must not be empty")
        return str(node.value)

    def strings(self, node: yaml.Node, where: str) -> tuple[str, ...]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f"{where} must be a list of strings")
        return tuple(self.string(item, f"{where}[{i}]") for i, item in enumerate(node.value))

    def integer(self, node: yaml.Node, where: str) -> int:
        if not isinstance(node, yaml.ScalarNode) or not re.fullmatch(r"[0-9]+", node.value):
            raise self.fail(node, f"{where} must be a whole number")
        return int(node.value)

    def target(self, node: yaml.Node, where: str) -> TargetSpec:
        keys = self.mapping(node, where, _TARGET_KEYS)
        registry = tag = None
        if "registry" in keys:
            registry = self.string(keys["registry"][1], f"{where}.registry", empty=True) or None
        if "tag" in keys:
            value = keys["tag"][1]
            tag = self.string(value, f"{where}.tag", empty=True) or None
            if tag is not None:
                try:
                    render_tag(tag, "1.0")
                except UsageError as exc:
                    raise self.fail(value, str(exc)) from None
        if registry is not None:
            try:
                parse_docker(registry.rstrip("/") + "/x")
            except ReferenceError as exc:
                raise self.fail(keys["registry"][1], f"{where}.registry: {exc}") from None
        return TargetSpec(registry, tag)

    def tags(self, node: yaml.Node, where: str) -> TagStrategy:
        keys = self.mapping(node, where, _TAGS_KEYS)
        if "strategy" not in keys:
            raise self.fail(node, f"{where}.strategy is required (one of: "
                                  f"{', '.join(STRATEGIES)})")
        strategy_node = keys["strategy"][1]
        strategy = self.string(strategy_node, f"{where}.strategy", empty=True)
        if strategy not in STRATEGIES:
            raise self.fail(strategy_node, f"unknown tag strategy {strategy!r}, must be one "
                                           f"of: {', '.join(STRATEGIES)}")
        pattern = None
        listed: tuple[str, ...] = ()
        if "list" in keys:
            listed = self.strings(keys["list"][1], f"{where}.list")
        if "pattern" in keys:
            pattern = self.string(keys["pattern"][1], f"{where}.pattern", empty=True) or None
        if strategy == "list" and not listed:
            raise self.fail(keys.get("list", (None, node))[1],
                            "strategy 'list' requires a non-empty 'list' of tags")
        if strategy == "pattern":
            if pattern is None:
                raise self.fail(node, "strategy 'pattern' requires a 'pattern' field")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise self.fail(keys["pattern"][1],
                                f"invalid regex for pattern {pattern!r}: {exc}") from None
        max_tags = self.integer(keys["maxTags"][1], f"{where}.maxTags") \
            if "maxTags" in keys else 0
        exclude = self.strings(keys["exclude"][1], f"{where}.exclude") \
            if "exclude" in keys else ()
        return TagStrategy(strategy, pattern, max_tags, listed, exclude)

    def skip(self, node: yaml.Node, where: str) -> str:
        value = self.string(node, where)
        if value not in SKIP_MODES:
            raise self.fail(node, f"{where} must be one of: {', '.join(SKIP_MODES)}")
        return value

    def image(self, node: yaml.Node, index: int, default_target: TargetSpec,
              default_skip: str) -> ImageSpec:
        where = f"images[{index}]"
        keys = self.mapping(node, where, _IMAGE_KEYS)
        for required in ("image", "tags"):
            if required not in keys:
                raise self.fail(node, f"{where}.{required} is required")
        image_node = keys["image"][1]
        image = self.string(image_node, f"{where}.image")
        try:
            repository = parse_docker(image)
        except ReferenceError as exc:
            raise self.fail(image_node, f"{where}.image: {exc}") from None
        if repository.digest or image.rsplit("/", 1)[-1].count(":"):
            raise self.fail(image_node, f"{where}.image names a repository, without a tag "
                                        f"or digest (tags come from 'tags')")
        name = self.string(keys["name"][1], f"{where}.name") if "name" in keys else image
        tags = self.tags(keys["tags"][1], f"{where}.tags")
        target = default_target
        if "target" in keys:
            own = self.target(keys["target"][1], f"{where}.target")
            target = TargetSpec(own.registry or default_target.registry,
                                own.tag or default_target.tag)
        platforms: tuple[Platform, ...] = ()
        if "platforms" in keys:
            texts = self.strings(keys["platforms"][1], f"{where}.platforms")
            try:
                platforms = tuple(Platform.parse(p) for p in texts)
            except (ValueError, UsageError) as exc:
                raise self.fail(keys["platforms"][1], f"{where}.platforms: {exc}") from None
        report = self.string(keys["report"][1], f"{where}.report") if "report" in keys \
            else None
        reports: dict[str, str] = {}
        if "reports" in keys:
            value = keys["reports"][1]
            for tag_key, file_node in self.mapping(value, f"{where}.reports",
                                                   tuple(_keys(value))).values():
                reports[tag_key.value] = self.string(file_node,
                                                     f"{where}.reports.{tag_key.value}")
        skip = self.skip(keys["skip"][1], f"{where}.skip") if "skip" in keys else default_skip
        return ImageSpec(name, image, repository, tags, target, platforms, report, reports,
                         skip, node.start_mark.line + 1)


def _keys(node: yaml.Node) -> list[str]:
    if not isinstance(node, yaml.MappingNode):
        return []
    return [k.value for k, _v in node.value if isinstance(k, yaml.ScalarNode)]


def parse_config(data: bytes | str, source: str = "config") -> FleetConfig:
    """Read a PatchConfig. ``source`` names the file in errors (``fleet.yaml:12: ...``)."""
    r = _Reader(source)
    try:
        root = yaml.compose(data, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).split("\n")[0]
        raise FleetConfigError(f"{source}{line}: not YAML: {problem}") from None
    if root is None:
        raise FleetConfigError(f"{source}: empty file (expected apiVersion: {API_VERSION}, "
                               f"kind: {KIND})")
    keys = r.mapping(root, "the config", _TOP_KEYS)
    for key, expected in (("apiVersion", API_VERSION), ("kind", KIND)):
        if key not in keys:
            raise r.fail(root, f"{key} is required ({key}: {expected})")
        value = keys[key][1]
        got = value.value if isinstance(value, yaml.ScalarNode) else "?"
        if got != expected:
            raise r.fail(value, f"unsupported {key} {got!r}, expected {expected!r}")
    for copa_only in ("charts", "chartTarget", "overrides"):
        if copa_only in keys:
            raise r.fail(keys[copa_only][0], f"{copa_only!r}: Helm chart patching is not "
                                             f"supported by suture")
    target = r.target(keys["target"][1], "target") if "target" in keys else TargetSpec()
    skip = r.skip(keys["skip"][1], "skip") if "skip" in keys else "digest"
    reports = r.string(keys["reports"][1], "reports") if "reports" in keys else None
    if "images" not in keys:
        raise r.fail(root, "images is required (a list of images to patch)")
    images_node = keys["images"][1]
    if not isinstance(images_node, yaml.SequenceNode):
        raise r.fail(images_node, "images must be a list")
    images = tuple(r.image(n, i, target, skip) for i, n in enumerate(images_node.value))
    return FleetConfig(images, target, reports, source)

