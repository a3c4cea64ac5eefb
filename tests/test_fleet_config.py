"""copa's bulk PatchConfig as suture reads it: the schema, one-line errors naming the line,
tag discovery (list, pattern, latest) and copa's -N re-patch tags; copa's own bulk configs
run unchanged against a real registry with tags discovered from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from suture.fleet.config import FleetConfigError, parse_config, render_tag
from suture.fleet.discover import (
    existing_patch_tags,
    next_patch_tag,
    parse_semver,
    select_tags,
)
from suture.fleet.plan import PlanOptions, make_plan
from suture.oci.model import Platform
from tests.fixtures.fleet import FleetScene
from tests.fixtures.patchimages import suture

# The schema example of copa's website/docs/bulk-image-patching.md (its Chisel
# release keys included), as written there.
COPA_DOCS_EXAMPLE = r"""
# copa-bulk-config.yaml
apiVersion: copa.sh/v1alpha1
kind: PatchConfig

# Optional: default Chisel release for native Chisel images. If omitted, Copa
# infers ubuntu-<VERSION_ID> from each target image.
chiselRelease: ubuntu-24.04

# Optional: global default target for all images
target:
  registry: "ghcr.io/myorg"           # Target registry for patched images
  tag: "{{ .SourceTag }}-patched"     # Tag template (default if omitted)

images:
  - name: "nginx"
    image: "docker.io/library/nginx"  # Source registry
    tags:
      strategy: "pattern"              # pattern | latest | list
      pattern: "^1\\.2[0-9]\\.[0-9]+$"
      maxTags: 3                        # optional cap
      exclude: ["1.20.0", "1.20.1"]   # optional skip list
    # Inherits global target (or override per-image)

  - name: "python"
    image: "docker.io/library/python"
    # Optional per-image override of the top-level Chisel release. HTTPS Git URLs
    # must include a pinned commit or tag fragment.
    chiselRelease: https://example.com/releases.git#abc123
    tags:
      strategy: "list"
      list: ["3.9.18", "3.10.13", "3.11.7"]
    # Optional per-image platform filter for multi-arch
    platforms: ["linux/amd64", "linux/arm64"]
    # Optional: override global target for this image
    target:
      registry: "quay.io/special/python"
      tag: "{{ .SourceTag }}-fixed"

  - name: "alpine"
    image: "docker.io/library/alpine"
    tags:
      strategy: "latest"
"""

# copa's integration/bulk/config-test.yaml; the placeholders are filled with local
# repositories, as copa's own test fills them.
COPA_CONFIG_TEST = r"""apiVersion: copa.sh/v1alpha1
kind: PatchConfig
images:
  - name: "nginx-pattern-test"
    image: "__NGINX_REPO__"
    tags:
      strategy: "pattern"
      pattern: "^1\\.25\\.[0-9]+$"
      maxTags: 2
      exclude: ["1.25.1"]
    target:
      tag: "{{ .SourceTag }}-patched-e2e"
  - name: "alpine-latest-test"
    image: "__ALPINE_REPO__"
    tags:
      strategy: "latest"
    target:
      tag: "{{ .SourceTag }}-patched-e2e"
  - name: "ubuntu-list-test"
    image: "__UBUNTU_REPO__"
    tags:
      strategy: "list"
      list: ["20.04"]
    target:
      tag: "{{ .SourceTag }}-patched-e2e"
""" + "      \n"  # copa's file ends with this blank line of spaces

# The cross-registry example of the same page.
COPA_REDIS_EXAMPLE = """apiVersion: copa.sh/v1alpha1
kind: PatchConfig

# Global target: all patched images go to ghcr.io/myorg
target:
  registry: "ghcr.io/myorg"

images:
  - name: "redis"
    image: "quay.io/opstree/redis"  # Source: quay.io/opstree/redis
    tags:
      strategy: "list"
      list: ["v8.2.1"]
    # Result: patched image pushed to ghcr.io/myorg/redis:v8.2.1-patched
"""


def test_copa_docs_example_reads_as_copa_reads_it() -> None:
    config = parse_config(COPA_DOCS_EXAMPLE, "copa-bulk-config.yaml")
    nginx, python, alpine = config.images
    assert (nginx.name, nginx.tags.strategy, nginx.tags.max_tags, nginx.tags.exclude) == (
        "nginx", "pattern", 3, ("1.20.0", "1.20.1"))
    assert nginx.target_repository() == "ghcr.io/myorg/nginx"
    assert nginx.target_tag("1.25.3") == "1.25.3-patched"
    assert python.tags.tags == ("3.9.18", "3.10.13", "3.11.7")
    assert python.platforms == (Platform.parse("linux/amd64"), Platform.parse("linux/arm64"))
    # A per-image target replaces the global one field by field.
    assert python.target_repository() == "quay.io/special/python/python"
    assert python.target_tag("3.11.7") == "3.11.7-fixed"
    assert alpine.tags.strategy == "latest" and alpine.target_tag("3.20") == "3.20-patched"
    redis = parse_config(COPA_REDIS_EXAMPLE).images[0]
    assert f"{redis.target_repository()}:{redis.target_tag('v8.2.1')}" == \
        "ghcr.io/myorg/redis:v8.2.1-patched"
    # Without a target registry the patched tags go to the source repository.
    (nginx_test, _, _) = parse_config(
        COPA_CONFIG_TEST.replace("__NGINX_REPO__", "docker.io/library/nginx")
        .replace("__ALPINE_REPO__", "alpine").replace("__UBUNTU_REPO__", "ubuntu")).images
    assert nginx_test.target_repository() == "docker.io/library/nginx"
    assert nginx_test.target_tag("1.25.3") == "1.25.3-patched-e2e"


@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("apiVersion: copa.sh/v1alpha2\nkind: PatchConfig\nimages: []\n", 1,
     "unsupported apiVersion 'copa.sh/v1alpha2', expected 'copa.sh/v1alpha1'"),
    ("apiVersion: copa.sh/v1alpha1\nkind: PatchConfg\nimages: []\n", 2,
     "unsupported kind 'PatchConfg', expected 'PatchConfig'"),
    ("apiVersion: copa.sh/v1alpha1\nkind: PatchConfig\nimages:\n  - name: a\n"
     "    image: r/a\n    tags:\n      strategy: pattern\n      pattern: x\n"
     "      maxtags: 2\n", 9, "unknown key 'maxtags' in images[0].tags"),
    ("apiVersion: copa.sh/v1alpha1\nkind: PatchConfig\ntargets:\n  registry: x\n", 3,
     "unknown key 'targets' in the config"),
    ("apiVersion: copa.sh/v1alpha1\nkind: PatchConfig\nimages:\n  - image: r/a\n"
     "    tags: {strategy: newest}\n", 5, "unknown tag strategy 'newest'"),
    ("apiVersion: copa.sh/v1alpha1\nkind: PatchConfig\nimages:\n  - image: r/a\n"
     "    tags: {strategy: list, list: []}\n", 5, "requires a non-empty 'list'"),
    ("apiVersion: copa.sh/v1alpha1\nkind: PatchConfig\nimages:\n  - image: r/a\n"
     "    tags: {strategy: pattern, pattern: '(unclosed'}\n", 5, "invalid regex"),
    ("apiVersion: copa.sh/v1alpha1\nkind: PatchConfig\nimages:\n  - image: r/a:1.0\n"
     "    tags: {strategy: latest}\n", 4, "without a tag or digest"),
    ("apiVersion: copa.sh/v1alpha1\nkind: PatchConfig\ntarget:\n"
     "  tag: '{{ .Tag }}-p'\nimages: []\n", 4, "only {{ .SourceTag }} is available"),
    ("apiVersion: copa.sh/v1alpha1\nkind: PatchConfig\nimages:\n  - image: r/a\n"
     "    tags: {strategy: latest}\n    skip: always\n", 6, "skip must be one of"),
    ("apiVersion: copa.sh/v1alpha1\nkind: PatchConfig\nimages: [\n", 4, "not YAML"),
])
def test_bad_configs_are_one_line_errors_naming_the_line(text: str, line: int,
                                                         fragment: str) -> None:
    with pytest.raises(FleetConfigError) as caught:
        parse_config(text, "fleet.yaml")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"fleet.yaml:{line}: "), message
    assert fragment in message, message


def test_cli_refuses_a_bad_config_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "fleet.yaml"
    config.write_text("apiVersion: copa.sh/v1alpha1\nkind: PatchConfig\nimages:\n"
                      "  - image: r/a\n    tag: {strategy: latest}\n")
    for args in (["fleet", "plan", "-c", str(config), "-o", str(tmp_path / "plan.json")],
                 ["patch", "--config", str(config), "--push"]):
        proc = suture(*args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"suture: error: {config}:5: unknown key 'tag' in images[0] (known: name, image, "
            "chiselRelease, tags, target, platforms, report, reports, skip)"]
        assert not (tmp_path / "plan.json").exists()


def test_tag_template() -> None:
    assert render_tag("{{ .SourceTag }}-patched", "1.2") == "1.2-patched"
    assert render_tag("fixed-{{.SourceTag}}", "1.2") == "fixed-1.2"
    assert render_tag("{{- .SourceTag -}}", "v1") == "v1"


def test_discovery_follows_copa() -> None:
    tags = ["1.25.0", "1.25.1", "1.25.10", "1.25.2", "1.25.3-alpine", "1.24.9", "latest",
            "1.25", "v1.25.4", "mainline"]
    config = parse_config(COPA_CONFIG_TEST.replace("__NGINX_REPO__", "r/nginx")
                          .replace("__ALPINE_REPO__", "r/alpine")
                          .replace("__UBUNTU_REPO__", "r/ubuntu"))
    nginx, alpine, ubuntu = config.images
    # ^1\.25\.[0-9]+$ keeps 1.25.0 1.25.1 1.25.10 1.25.2; exclude 1.25.1; newest 2.
    assert select_tags(nginx.tags, tags, "nginx")[0] == ["1.25.2", "1.25.10"]
    # latest: the highest semantic version of all tags (a pre-release sorts below).
    picked, warnings = select_tags(alpine.tags, ["3.19.1", "3.20.3", "3.21.0-rc1", "3.9.9",
                                                 "edge", "latest"], "alpine")
    assert picked == ["3.21.0-rc1"]  # copa: Masterminds NewVersion keeps pre-releases
    assert any("'edge'" in w for w in warnings)
    assert select_tags(alpine.tags, ["3.19.1", "3.20.3", "3.20.3-r1"], "a")[0] == ["3.20.3"]
    assert select_tags(ubuntu.tags, None, "ubuntu")[0] == ["20.04"]
    assert parse_semver("v1.2") is not None and parse_semver("1.2.3.4") is None


def test_repatch_tags_follow_copa() -> None:
    base = "1.25.3-patched"
    tags = ["1.25.3", base, f"{base}-1", f"{base}-3", f"{base}-amd64", f"{base}-arm-v7",
            f"{base}-x", "1.25.3-patched-e2e"]
    assert existing_patch_tags(tags, base) == [base, f"{base}-1", f"{base}-3"]
    assert next_patch_tag(base, existing_patch_tags(tags, base)) == f"{base}-4"
    assert next_patch_tag(base, []) == base


def _fill(text: str, scene: FleetScene) -> str:
    return (text.replace("__NGINX_REPO__", f"{scene.host}/src/nginx")
            .replace("__ALPINE_REPO__", f"{scene.host}/src/alpine")
            .replace("__UBUNTU_REPO__", f"{scene.host}/src/ubuntu"))


def test_copa_bulk_configs_discover_tags_from_the_registry(fleet_scene: FleetScene,
                                                           tmp_path: Path) -> None:
    scene = fleet_scene
    scene.publish(["n", "a", "u"])
    for tag in ("1.24.9", "1.25.0", "1.25.1", "1.25.2", "1.25.3", "mainline"):
        scene.push("nginx", tag, "n")
    for tag in ("3.19.1", "3.20.3", "edge", "latest"):
        scene.push("alpine", tag, "a")
    for tag in ("20.04", "22.04"):
        scene.push("ubuntu", tag, "u")
    config = tmp_path / "config-test.yaml"
    config.write_text(_fill(COPA_CONFIG_TEST, scene))
    proc = suture("fleet", "plan", "-c", str(config), "-o", str(tmp_path / "plan.json"))
    assert proc.returncode == 0, proc.stderr
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert [(j["source"].rsplit("/", 1)[1], j["target"].rsplit("/", 1)[1])
            for j in plan["jobs"]] == [
        ("alpine:3.20.3", "alpine:3.20.3-patched-e2e"),
        ("nginx:1.25.2", "nginx:1.25.2-patched-e2e"),
        ("nginx:1.25.3", "nginx:1.25.3-patched-e2e"),
        ("ubuntu:20.04", "ubuntu:20.04-patched-e2e")]
    # Digests resolved from the registry; the two nginx tags share their base.
    groups = {j["id"]: j["group"] for j in plan["jobs"]}
    assert groups["nginx-pattern-test:1.25.2"] == groups["nginx-pattern-test:1.25.3"]
    assert len(set(groups.values())) == 3
    assert all(j["sourceDigest"].startswith("sha256:") for j in plan["jobs"])
    # Deterministic: planning again gives the same bytes.
    again = suture("fleet", "plan", "-c", str(config), "-o", str(tmp_path / "again.json"))
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "plan.json").read_bytes()


def test_copa_skip_config_runs_unchanged_and_skips_by_digest(fleet_scene: FleetScene,
                                                               tmp_path: Path) -> None:
    """copa's config-skip-test.yaml: the first run patches, the second finds the patched tag
    made from the same source digest with nothing new to apply: skipped, no new tag. A
    report directory whose report of the patched tag lists nothing fixable skips as copa's
    -r DIR does."""
    scene = fleet_scene
    scene.publish(["a"])
    scene.push("alpine", "3.19.1", "a")
    config = tmp_path / "config-skip-test.yaml"
    config.write_text(_fill('apiVersion: copa.sh/v1alpha1\nkind: PatchConfig\nimages:\n'
                            '  - name: "alpine-skip-test"\n    image: "__ALPINE_REPO__"\n'
                            '    tags:\n      strategy: "list"\n      list: ["3.19.1"]\n'
                            '    target:\n      tag: "{{ .SourceTag }}-skip-test"\n', scene))
    dry = suture("patch", "--config", str(config), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"{scene.host}/src/alpine:3.19.1-skip-test pending" in dry.stdout
    assert scene.tag_files("src/alpine") == {"3.19.1"}
    refused = suture("patch", "--config", str(config))
    assert refused.returncode == 2 and "add --push" in refused.stderr
    first = suture("patch", "--config", str(config), "--push", *scene.run_args())
    assert first.returncode == 0, first.stderr
    assert "patched" in first.stdout and "3.19.1-skip-test" in first.stdout
    assert scene.tag_files("src/alpine") == {"3.19.1", "3.19.1-skip-test"}
    second = suture("patch", "--config", str(config), "--push", *scene.run_args())
    assert second.returncode == 0, second.stderr
    row = next(line for line in second.stdout.splitlines() if "alpine-skip-test" in line)
    assert row.split()[1] == "skipped" and "3.19.1-skip-test" in row
    assert scene.tag_files("src/alpine") == {"3.19.1", "3.19.1-skip-test"}
    # skip: never re-patches from the source to the next -N tag, as copa does.
    config.write_text(config.read_text() + "skip: never\n")
    third = suture("patch", "--config", str(config), "--push", *scene.run_args())
    assert third.returncode == 0, third.stderr
    assert scene.tag_files("src/alpine") == {"3.19.1", "3.19.1-skip-test",
                                             "3.19.1-skip-test-1"}
    # copa's -r DIR: a clean report of the latest patched tag skips it.
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "anything.json").write_text(json.dumps({
        "SchemaVersion": 2, "ArtifactName": f"{scene.host}/src/alpine:3.19.1-skip-test-1",
        "ArtifactType": "container_image",
        "Metadata": {"OS": {"Family": "alpine", "Name": "3.20.3"},
                     "ImageConfig": {"architecture": "amd64", "os": "linux"}},
        "Results": [{"Target": "x (alpine 3.20.3)", "Class": "os-pkgs", "Type": "alpine",
                     "Vulnerabilities": []}]}))
    fourth = suture("patch", "--config", str(config), "--push", "-r", str(reports),
                    *scene.run_args())
    assert fourth.returncode == 0, fourth.stderr
    row = next(line for line in fourth.stdout.splitlines() if "alpine-skip-test" in line)
    assert row.split()[1] == "skipped" and "no fixable vulnerabilities" in row
    assert "3.19.1-skip-test-1" in row
    assert scene.tag_files("src/alpine") == {"3.19.1", "3.19.1-skip-test",
                                             "3.19.1-skip-test-1"}


def test_plan_lists_tags_through_an_injected_lister(fleet_scene: FleetScene) -> None:
    """The library plans with any tag lister (here: the registry's, counted)."""
    scene = fleet_scene
    scene.publish(["a"])
    scene.push("alpine", "3.20.3", "a")
    config = parse_config(_fill(COPA_CONFIG_TEST, scene).split("  - name: \"ubuntu")[0]
                          .replace("  - name: \"nginx-pattern-test\"", "  - name: \"skip\"")
                          .replace(f"{scene.host}/src/nginx", f"{scene.host}/src/none"))
    asked: list[str] = []

    def lister(repo: object) -> list[str]:
        from suture.fleet.plan import list_registry_tags

        asked.append(str(repo))
        return list_registry_tags(repo, scene.options)  # type: ignore[arg-type]

    plan = make_plan(config, PlanOptions(transport=scene.options, list_tags=lister))
    assert [j.id for j in plan.jobs] == ["alpine-latest-test:3.20.3"]
    assert any("no semantic-version tag" in w for w in plan.warnings)
    assert f"{scene.host}/src/none:latest" in asked
