"""The registry transport against a real distribution registry (and skopeo, umoci)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from suture.errors import AuthError, NotFound, RegistryError
from suture.oci.image import Image, ImageIndex
from suture.oci.layer import Entry
from suture.oci.model import Platform
from suture.oci.mutate import append_layers
from suture.transports import Credentials, Options, open_artifact, write_artifact
from suture.transports.reference import parse_reference
from suture.transports.registry import (
    RegistryClient,
    open_registry_image,
    push_artifact,
)
from suture.transports.registry.auth import repository_scopes
from tests.fixtures.images import layer_from, make_image, make_index, sample_image
from tests.fixtures.registry import (
    PASSWORD,
    USER,
    Call,
    Fault,
    RegistryServer,
    recording_session,
)

pytestmark = pytest.mark.registry

CREDS = Credentials(USER, PASSWORD)


def blob(source_image: Image, digest: str) -> bytes:
    desc = next(d for d in (*source_image.manifest.layers, source_image.manifest.config)
                if d.digest == digest)
    with source_image.source.open_blob(desc) as stream:
        return stream.read()


def assert_same_image(pulled: Image, original: Image) -> None:
    """Manifest bytes, config bytes and every layer's bytes are those pushed."""
    assert pulled.digest == original.digest
    assert pulled.raw_manifest == original.raw_manifest
    assert pulled.config_bytes == original.config_bytes
    assert hashlib.sha256(pulled.config_bytes).hexdigest() == \
        original.manifest.config.digest.split(":")[1]
    assert len(pulled.layers) == len(original.layers)
    for got, want in zip(pulled.layers, original.layers, strict=True):
        with got.open_compressed() as stream:
            data = stream.read()
        assert data == blob(original, want.digest)
        assert "sha256:" + hashlib.sha256(data).hexdigest() == want.digest
        with got.open_tar() as tar:  # decompressed and checked against the diff_id
            assert tar.read()


def uploads(calls: list[Call]) -> list[Call]:
    """Blob uploads that completed: the PUT that closes an upload session."""
    return [c for c in calls if c.method == "PUT" and "/blobs/uploads/" in c.path
            and c.status == 201]


def mounts(calls: list[Call]) -> list[Call]:
    return [c for c in calls if c.method == "POST" and "mount" in c.query]


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("docker", [False, True], ids=["oci", "docker"])
def test_image_round_trip_anonymous(registry: RegistryServer, docker: bool) -> None:
    image = sample_image(docker=docker)
    ref = f"{registry.host}/round/trip:one"
    options = Options(registry.options())
    digest = write_artifact(image, ref, options)
    assert digest == image.digest

    pulled = open_artifact(ref, options)
    assert isinstance(pulled, Image)
    assert pulled.media_type == image.media_type
    assert_same_image(pulled, image)
    by_digest = open_artifact(f"{registry.host}/round/trip@{digest}", options)
    assert isinstance(by_digest, Image)
    assert by_digest.raw_manifest == image.raw_manifest
    # An untagged pull by digest that the registry does not have is NotFound, with a hint.
    with pytest.raises(NotFound) as info:
        open_artifact(f"{registry.host}/round/trip:missing", options)
    assert info.value.hint


def test_index_round_trip(registry: RegistryServer) -> None:
    amd = sample_image("amd", "linux/amd64")
    arm = sample_image("arm", "linux/arm64")
    index = make_index(amd, arm)
    ref = f"{registry.host}/multi:both"
    options = Options(registry.options())
    assert write_artifact(index, ref, options) == index.digest

    pulled = open_artifact(ref, options)
    assert isinstance(pulled, ImageIndex)
    assert pulled.raw_manifest == index.raw_manifest
    assert sorted(str(p) for p in pulled.platforms()) == ["linux/amd64", "linux/arm64/v8"]
    assert_same_image(pulled.select(Platform.parse("linux/amd64")), amd)
    assert_same_image(pulled.select(Platform.parse("linux/arm64")), arm)
    # Children are addressable by digest, as pushed.
    child = open_artifact(f"{registry.host}/multi@{arm.digest}", options)
    assert isinstance(child, Image)
    assert child.digest == arm.digest


@pytest.mark.parametrize("kind", ["token_registry", "basic_registry"])
def test_round_trip_with_auth(request: pytest.FixtureRequest, kind: str) -> None:
    server: RegistryServer = request.getfixturevalue(kind)
    image = sample_image("auth")
    ref = f"{server.host}/private/image:v1"
    options = Options(server.options(credentials=CREDS))
    assert write_artifact(image, ref, options) == image.digest
    pulled = open_artifact(ref, options)
    assert isinstance(pulled, Image)
    assert_same_image(pulled, image)


# --- what a push sends ---------------------------------------------------------------

BASE_LAYER = [Entry("etc", "dir", 0o755), Entry.file("etc/os-release", b"ID=debian\n")]


def test_second_push_uploads_only_new_blobs(registry: RegistryServer) -> None:
    first = make_image(BASE_LAYER, [Entry.file("srv/one", b"one")])
    second = make_image(BASE_LAYER, [Entry.file("srv/two", b"two")])
    assert first.manifest.layers[0].digest == second.manifest.layers[0].digest
    ref = parse_reference(f"{registry.host}/shared:v1")
    push_artifact(first, ref, registry.options())

    session, calls = recording_session()
    result = push_artifact(second, ref.with_tag("v2"), registry.options(session=session))
    new = {second.manifest.layers[1].digest, second.manifest.config.digest}
    assert len(uploads(calls)) == 2
    assert set(result.uploaded) == new
    assert result.existing == [second.manifest.layers[0].digest]
    assert [c.path for c in calls if c.method == "PUT" and "/manifests/" in c.path] == \
        ["/v2/shared/manifests/v2"]
    # The same push again uploads nothing: every blob is found by HEAD.
    calls.clear()
    again = push_artifact(second, ref.with_tag("v2"), registry.options(session=session))
    assert uploads(calls) == [] and again.uploaded == []
    assert sorted(again.existing) == sorted({d.digest for d in second.manifest.layers}
                                            | {second.manifest.config.digest})


def test_push_to_another_repository_mounts_base_layers(token_registry: RegistryServer) -> None:
    """A patched image pushed elsewhere on the same registry: base layers mounted, not sent."""
    server = token_registry
    options = server.options(credentials=CREDS)
    base = sample_image("base")
    push_artifact(base, parse_reference(f"{server.host}/team/base:1"), options)
    pulled = open_artifact(f"{server.host}/team/base:1", Options(options))
    assert isinstance(pulled, Image)
    patched = append_layers(pulled, [layer_from([Entry.file("srv/patch", b"fixed\n")])])

    session, calls = recording_session()
    assert server.token_server is not None
    server.token_server.requests.clear()
    result = push_artifact(patched, parse_reference(f"{server.host}/team/patched:1"),
                           server.options(credentials=CREDS, session=session))

    base_layers = [d.digest for d in base.manifest.layers]
    assert sorted(result.mounted) == sorted(base_layers)
    mounted = [c for c in mounts(calls) if c.status == 201]
    assert sorted(c.query["mount"][0] for c in mounted) == sorted(base_layers)
    assert all(c.query["from"] == ["team/base"] for c in mounted)
    # Only the new layer and the new config are uploaded; no mount is tried for them.
    assert sorted(result.uploaded) == sorted([patched.manifest.layers[-1].digest,
                                              patched.manifest.config.digest])
    assert len(uploads(calls)) == 2
    assert len(mounts(calls)) == 2
    # The token for the mount covered both repositories.
    asked = {frozenset(r.scopes) for r in server.token_server.requests}
    assert frozenset({"repository:team/base:pull", "repository:team/patched:pull,push"}) in asked

    again = open_artifact(f"{server.host}/team/patched:1", Options(options))
    assert isinstance(again, Image)
    assert_same_image(again, patched)


def test_a_refused_mount_falls_back_to_uploading(token_registry: RegistryServer) -> None:
    """No pull access to the source repository at push time: blobs are uploaded instead."""
    server = token_registry
    assert server.token_server is not None
    options = server.options(credentials=CREDS)
    base = sample_image("guarded")
    push_artifact(base, parse_reference(f"{server.host}/guarded/base:1"), options)
    pulled = open_artifact(f"{server.host}/guarded/base:1", Options(options))
    assert isinstance(pulled, Image)
    pulled.config_bytes  # noqa: B018 - read now, with the pull token of this client
    server.token_server.deny.add("repository:guarded/base:pull")

    session, calls = recording_session()
    result = push_artifact(pulled, parse_reference(f"{server.host}/guarded/copy:1"),
                           server.options(credentials=CREDS, session=session))
    assert result.mounted == []
    assert sorted(result.uploaded) == sorted(
        [d.digest for d in base.manifest.layers] + [base.manifest.config.digest])
    # One mount is tried (and re-authenticated once); none again from that repository.
    assert [c.status for c in mounts(calls)] == [401, 401]
    copy = open_artifact(f"{server.host}/guarded/copy:1", Options(options))
    assert isinstance(copy, Image)
    assert_same_image(copy, base)


def test_copying_an_index_between_repositories_mounts_everything(
        registry: RegistryServer) -> None:
    index = make_index(sample_image("x", "linux/amd64"), sample_image("y", "linux/arm64"))
    options = registry.options()
    push_artifact(index, parse_reference(f"{registry.host}/copy/src:1"), options)
    pulled = open_artifact(f"{registry.host}/copy/src:1", Options(options))
    assert isinstance(pulled, ImageIndex)

    session, calls = recording_session()
    result = push_artifact(pulled, parse_reference(f"{registry.host}/copy/dst:1"),
                           registry.options(session=session))
    assert result.digest == index.digest
    assert result.uploaded == [] and result.existing == []
    assert len(result.mounted) == 6  # two layers and a config per image
    assert uploads(calls) == []
    # Children by digest, then the index by tag.
    assert [c.path.rsplit("/", 1)[1] for c in calls
            if c.method == "PUT" and "/manifests/" in c.path] == [
        d.digest for d in index.manifests] + ["1"]
    copy = open_artifact(f"{registry.host}/copy/dst:1", Options(options))
    assert isinstance(copy, ImageIndex)
    for desc in index.manifests:
        child = index.child(desc)
        assert isinstance(child, Image)
        got = copy.child(desc)
        assert isinstance(got, Image)
        assert_same_image(got, child)


# --- auth ---------------------------------------------------------------------------


def test_reauthenticates_with_the_scope_the_registry_asks_for(
        token_registry: RegistryServer) -> None:
    server = token_registry
    assert server.token_server is not None
    client = RegistryClient(server.host, server.options(credentials=CREDS))
    # Ask with pull scope only for something that needs push: 401 insufficient_scope.
    resp = client.request("POST", client.url("/v2/scoped/blobs/uploads/"), what="upload",
                          scopes=repository_scopes("scoped", "pull"), ok=(202,))
    resp.close()
    assert resp.status_code == 202
    assert [r.scopes for r in server.token_server.requests] == [
        ("repository:scoped:pull",), ("repository:scoped:pull,push",)]
    # A token for a superset is reused: pulling needs no new token.
    image = sample_image()
    push_artifact(image, parse_reference(f"{server.host}/scoped:t"), client.options,
                  client=client)
    count = len(server.token_server.requests)
    pulled = open_registry_image(parse_reference(f"{server.host}/scoped:t"), client.options,
                                 client=client)
    assert isinstance(pulled, Image)
    assert pulled.config_bytes == image.config_bytes
    assert len(server.token_server.requests) == count


def _assert_secret_free(exc: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    encoded = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    for text in (str(exc), repr(exc), getattr(exc, "hint", None) or "", caplog.text):
        assert PASSWORD not in text
        assert encoded not in text
    assert "\n" not in str(exc)


@pytest.mark.parametrize("kind", ["token_registry", "basic_registry"])
def test_wrong_password_is_an_auth_error_without_the_password(
        request: pytest.FixtureRequest, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server: RegistryServer = request.getfixturevalue(kind)
    wrong = Credentials(USER, PASSWORD + "-wrong")
    options = Options(server.options(credentials=wrong))
    with pytest.raises(AuthError) as info:
        write_artifact(sample_image(), f"{server.host}/denied:t", options)
    assert "unauthorized" in str(info.value)
    assert "check --creds or docker login" in str(info.value)
    assert info.value.status == 401
    assert wrong.password not in str(info.value) and wrong.password not in caplog.text
    _assert_secret_free(info.value, caplog)
    assert PASSWORD not in repr(wrong)


def test_token_server_refusing_is_an_auth_error(token_registry: RegistryServer,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert token_registry.token_server is not None
    token_registry.token_server.refuse = True
    with pytest.raises(AuthError) as info:
        open_artifact(f"{token_registry.host}/any:t",
                      Options(token_registry.options(credentials=CREDS)))
    assert "token service" in str(info.value) and "refused" in str(info.value)
    _assert_secret_free(info.value, caplog)


def test_no_credentials_is_an_auth_error_with_a_hint(basic_registry: RegistryServer) -> None:
    with pytest.raises(AuthError) as info:
        open_artifact(f"{basic_registry.host}/any:t", Options(basic_registry.options()))
    assert info.value.status == 401
    assert info.value.hint and "no credentials" in info.value.hint


def test_anonymous_token_without_access_is_an_auth_error(
        token_registry: RegistryServer) -> None:
    with pytest.raises(AuthError) as info:
        open_artifact(f"{token_registry.host}/any:t", Options(token_registry.options()))
    assert info.value.status == 401


def test_untrusted_certificate_is_refused_without_falling_back_to_http(
        basic_registry: RegistryServer) -> None:
    options = basic_registry.options(credentials=CREDS, ca_file=None)
    with pytest.raises(RegistryError) as info:
        open_artifact(f"{basic_registry.host}/any:t", Options(options))
    assert "not trusted" in str(info.value)


def test_insecure_registry_skips_verification(basic_registry: RegistryServer) -> None:
    options = basic_registry.options(credentials=CREDS, ca_file=None,
                                     insecure=frozenset({basic_registry.host}))
    image = sample_image()
    assert write_artifact(image, f"{basic_registry.host}/insecure:t", Options(options)) \
        == image.digest


# --- credentials from files ---------------------------------------------------------------


def _write_config(directory: Path, doc: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("key_form", ["{host}", "https://{host}", "https://{host}/v2/"])
def test_credentials_from_docker_config_auths(basic_registry: RegistryServer,
                                              tmp_path: Path, key_form: str) -> None:
    key = key_form.format(host=basic_registry.host)
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    config_dir = tmp_path / "dockercfg"
    _write_config(config_dir, {"auths": {key: {"auth": auth}}})
    options = Options(basic_registry.options(docker_config_dir=config_dir))
    image = sample_image()
    assert write_artifact(image, f"{basic_registry.host}/fromcfg:t", options) == image.digest


def test_auth_file_wins_over_docker_config(basic_registry: RegistryServer,
                                           tmp_path: Path) -> None:
    host = basic_registry.host
    good = _write_config(tmp_path / "authfile",
                         {"auths": {host: {"username": USER, "password": PASSWORD}}})
    _write_config(tmp_path / "dockercfg", {"auths": {host: {"username": USER,
                                                           "password": "wrong"}}})
    options = basic_registry.options(auth_file=good, docker_config_dir=tmp_path / "dockercfg")
    image = sample_image()
    assert write_artifact(image, f"{host}/authfile:t", Options(options)) == image.digest


def _helper_script(bin_dir: Path, name: str, log: Path, answer: dict[str, str]) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / f"docker-credential-{name}"
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = get ] || exit 3\n'
        f"cat >> {log}\necho >> {log}\n"
        f"printf '%s' '{json.dumps(answer)}'\n")
    script.chmod(0o755)


@pytest.mark.parametrize("field", ["credHelpers", "credsStore"])
def test_credentials_from_a_credential_helper(token_registry: RegistryServer, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              field: str) -> None:
    host = token_registry.host
    asked = tmp_path / "asked.log"
    _helper_script(tmp_path / "bin", "test", asked,
                   {"ServerURL": host, "Username": USER, "Secret": PASSWORD})
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    doc: dict[str, Any] = ({"credHelpers": {host: "test"}} if field == "credHelpers"
                           else {"credsStore": "test", "auths": {host: {}}})
    _write_config(tmp_path / "dockercfg", doc)
    options = Options(token_registry.options(docker_config_dir=tmp_path / "dockercfg"))
    image = sample_image()
    assert write_artifact(image, f"{host}/helped:t", options) == image.digest
    assert asked.read_text().split() == [host]
    assert token_registry.token_server is not None
    assert {r.user for r in token_registry.token_server.requests} == {USER}


def test_identity_token_is_exchanged_at_the_token_service(token_registry: RegistryServer,
                                                          tmp_path: Path) -> None:
    assert token_registry.token_server is not None
    token_registry.token_server.refresh_tokens["refresh-abc"] = USER
    _write_config(tmp_path / "dockercfg",
                  {"auths": {token_registry.host: {"identitytoken": "refresh-abc"}}})
    options = Options(token_registry.options(docker_config_dir=tmp_path / "dockercfg"))
    image = sample_image()
    assert write_artifact(image, f"{token_registry.host}/oauth:t", options) == image.digest
    methods = {r.method for r in token_registry.token_server.requests}
    assert methods == {"POST"}


# --- plain HTTP and redirects -------------------------------------------------------------


def test_no_credentials_to_a_plain_http_token_service(registry: RegistryServer,
                                                      fault_proxy: Any) -> None:
    """A bearer realm on plain HTTP at a non-loopback host never receives credentials."""
    proxy = fault_proxy(registry)
    challenge = 'Bearer realm="http://auth.example.invalid/token",service="x"'
    proxy.add(Fault("GET", r"^/v2/$", times=10, status=401,
                    headers={"WWW-Authenticate": challenge}))
    with pytest.raises(AuthError) as info:
        open_artifact(f"{proxy.host}/x:t", Options(registry.options(credentials=CREDS)))
    assert "plain HTTP" in str(info.value)
    assert PASSWORD not in str(info.value)


def test_redirect_to_another_host_gets_no_authorization(basic_registry: RegistryServer,
                                                        fault_proxy: Any,
                                                        side_server: Any) -> None:
    image = sample_image("redirect")
    options = basic_registry.options(credentials=CREDS)
    push_artifact(image, parse_reference(f"{basic_registry.host}/moved:t"), options)
    proxy = fault_proxy(basic_registry)
    side = side_server(basic_registry)
    proxy.add(Fault("GET", r"/blobs/sha256:", times=100, redirect=side.url))

    pulled = open_artifact(f"{proxy.host}/moved:t", Options(options))
    assert isinstance(pulled, Image)
    assert_same_image(pulled, image)
    assert len(side.seen) == 1 + 2 * len(image.layers)  # config, then each layer twice
    assert all("Authorization" not in headers for headers in side.seen)
    # The registry itself did get the credentials.
    manifest_gets = [r for r in proxy.records if "/manifests/" in r.path]
    assert manifest_gets and all("Authorization" in r.headers for r in manifest_gets)


# --- interoperability with skopeo and umoci ----------------------------------------------


def _skopeo(*args: str) -> str:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed")
    proc = subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def _layout_manifest(layout: Path) -> tuple[str, bytes]:
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    return digest, (layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


def test_skopeo_reads_what_suture_pushed(token_registry: RegistryServer,
                                         tmp_path: Path) -> None:
    server = token_registry
    image = sample_image("interop")
    ref = f"{server.host}/interop/out:v1"
    write_artifact(image, ref, Options(server.options(credentials=CREDS)))
    tls = [f"--cert-dir={server.cert_dir}", f"--creds={USER}:{PASSWORD}"]

    raw = _skopeo("inspect", "--raw", *tls, f"docker://{ref}")
    assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == image.digest

    layout = tmp_path / "layout"
    src_tls = [f"--src-cert-dir={server.cert_dir}", f"--src-creds={USER}:{PASSWORD}"]
    _skopeo("copy", "-q", *src_tls, f"docker://{ref}", f"oci:{layout}:v1")
    digest, manifest = _layout_manifest(layout)
    assert digest == image.digest and manifest == image.raw_manifest
    for desc in (*image.manifest.layers, image.manifest.config):
        data = (layout / "blobs" / "sha256" / desc.digest.split(":")[1]).read_bytes()
        assert data == blob(image, desc.digest)


def test_skopeo_reads_a_docker_image_and_an_index(registry: RegistryServer) -> None:
    docker_image = sample_image("docker", docker=True)
    write_artifact(docker_image, f"{registry.host}/fmt:docker", Options(registry.options()))
    raw = _skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/fmt:docker")
    assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == docker_image.digest

    index = make_index(sample_image("a", "linux/amd64"), sample_image("b", "linux/arm64"))
    write_artifact(index, f"{registry.host}/fmt:index", Options(registry.options()))
    raw = _skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/fmt:index")
    assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == index.digest
    arm = _skopeo("inspect", "--tls-verify=false", "--override-arch=arm64",
                  f"docker://{registry.host}/fmt:index")
    assert json.loads(arm)["Architecture"] == "arm64"


def test_suture_reads_what_skopeo_pushed(registry: RegistryServer, tmp_path: Path) -> None:
    if shutil.which("umoci") is None:
        pytest.skip("umoci is not installed")
    layout = tmp_path / "umoci"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:t"], check=True)
    payload = tmp_path / "hello.txt"
    payload.write_bytes(b"hello from umoci\n" * 100)
    subprocess.run(["umoci", "insert", "--image", f"{layout}:t", str(payload), "/hello.txt"],
                   check=True)
    digest, manifest = _layout_manifest(layout)
    ref = f"{registry.host}/from/skopeo:t"
    _skopeo("copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:t", f"docker://{ref}")
    remote = _skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}")

    pulled = open_artifact(ref, Options(registry.options()))
    assert isinstance(pulled, Image)
    assert pulled.digest == "sha256:" + hashlib.sha256(remote.encode()).hexdigest()
    assert pulled.digest == digest and pulled.raw_manifest == manifest
    assert len(pulled.layers) == 1
    for desc in (*pulled.manifest.layers, pulled.manifest.config):
        with pulled.source.open_blob(desc) as stream:
            data = stream.read()
        assert data == (layout / "blobs" / "sha256" / desc.digest.split(":")[1]).read_bytes()
    with pulled.layers[0].open_tar() as tar:
        assert b"hello from umoci" in tar.read()
