from __future__ import annotations

import pytest

from suture.errors import ReferenceError, UsageError
from suture.transports.reference import Reference, parse_reference

CASES = [
    ("nginx", Reference("docker", "docker.io", "library/nginx", "latest")),
    ("docker://nginx:1.25", Reference("docker", "docker.io", "library/nginx", "1.25")),
    ("user/app", Reference("docker", "docker.io", "user/app", "latest")),
    ("index.docker.io/user/app:v1", Reference("docker", "docker.io", "user/app", "v1")),
    ("localhost:5000/a/b:t", Reference("docker", "localhost:5000", "a/b", "t")),
    ("127.0.0.1:5000/a", Reference("docker", "127.0.0.1:5000", "a", "latest")),
    ("ghcr.io/o/r@sha256:" + "a" * 64,
     Reference("docker", "ghcr.io", "o/r", None, "sha256:" + "a" * 64)),
    ("ghcr.io/o/r:t@sha256:" + "b" * 64,
     Reference("docker", "ghcr.io", "o/r", "t", "sha256:" + "b" * 64)),
    ("oci:/tmp/layout", Reference("oci", path="/tmp/layout")),
    ("oci:/tmp/layout:v1", Reference("oci", tag="v1", path="/tmp/layout")),
    ("oci:rel/dir@sha256:" + "c" * 64, Reference("oci", digest="sha256:" + "c" * 64,
                                                  path="rel/dir")),
    ("oci-archive:/tmp/x.tar:t", Reference("oci-archive", tag="t", path="/tmp/x.tar")),
    ("docker-archive:/tmp/x.tar", Reference("docker-archive", path="/tmp/x.tar")),
    ("docker-archive:/tmp/x.tar:foo/bar:t",
     Reference("docker-archive", "docker.io", "foo/bar", "t", path="/tmp/x.tar")),
    ("[::1]:5000/a:b", Reference("docker", "[::1]:5000", "a", "b")),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_parse_and_round_trip(text: str, expected: Reference) -> None:
    ref = parse_reference(text)
    assert ref == expected
    assert parse_reference(str(ref)) == ref


def test_docker_hub_endpoint_and_name() -> None:
    ref = parse_reference("nginx")
    assert str(ref) == "docker.io/library/nginx:latest"
    assert ref.endpoint == "registry-1.docker.io"
    assert parse_reference("quay.io/a/b").endpoint == "quay.io"


def test_with_tag_keeps_place() -> None:
    ref = parse_reference("oci:/tmp/l:v1").with_tag("v1-patched")
    assert str(ref) == "oci:/tmp/l:v1-patched"
    reg = parse_reference("r.example/a@sha256:" + "a" * 64).with_tag("x")
    assert str(reg) == "r.example/a:x"


@pytest.mark.parametrize("text", [
    "", "UPPER/case", "nginx:", "nginx:bad tag", "a/b:-x", "nginx@sha256:short",
    "docker://", "oci:", "containers-storage:nginx", "docker-daemon:", "a//b",
    "a/b:t@md5:" + "a" * 10,
    "oci:/x:bad!tag", " nginx",
])
def test_bad_references_raise_one_line(text: str) -> None:
    with pytest.raises(ReferenceError) as info:
        parse_reference(text)
    message = str(info.value)
    assert "\n" not in message and "invalid image reference" in message
    assert isinstance(info.value, UsageError)
