"""``suture generate``: ``docker build`` of the context gives the file tree ``suture patch``
gives, judged by the real dockerd (``docker export`` of a container of each image).

The image is a root that the real ``dpkg --root`` installed into: a static busybox as
``/bin/sh`` and ``greet`` 1.0-1, whose 2.0-1 (in the local archive's ``-security``)
drops ``usr/share/greet/old.txt``, adds ``new.txt`` and changes ``common``. With an
``rm`` in the image (``/bin/rm``, busybox by its name) the deletion is a ``RUN`` in
exec form; without one (distroless-like), generate refuses unless told to lose it.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.fixtures.aptrepo import AptRepo, GpgKeys
from tests.fixtures.debs import File, Symlink
from tests.fixtures.dockerd import Docker
from tests.fixtures.patchimages import Archive, debian_os_release, make_root

pytestmark = pytest.mark.tools

BUSYBOX = Path("/bin/busybox")


def _greet(version: str, extra: dict[str, bytes]) -> dict[str, File]:
    files = {"usr/bin/greet": File(f"#!/bin/sh\necho greet {version}\n".encode(), 0o755),
             "usr/share/greet/common": File(f"common {version}\n".encode())}
    files.update({k: File(v) for k, v in extra.items()})
    return files


def _root(apt_repo: AptRepo, gpg_keys: GpgKeys, tmp: Path, *, with_rm: bool
          ) -> tuple[Archive, Path]:
    if not BUSYBOX.exists():
        pytest.skip("needs a static /bin/busybox (busybox-static)")
    archive = Archive.create(apt_repo, gpg_keys.good, tmp, "bookworm")
    shell_files: dict[str, File | Symlink] = {"bin/sh": File(BUSYBOX.read_bytes(), 0o755)}
    if with_rm:
        shell_files["bin/rm"] = Symlink("sh")
    shell = archive.add("bookworm", "sutsh", "1.0-1", shell_files)
    greet = archive.add("bookworm", "greet", "1.0-1",
                        _greet("1.0-1", {"usr/share/greet/old.txt": b"old\n"}))
    archive.add("bookworm-security", "greet", "2.0-1",
                _greet("2.0-1", {"usr/share/greet/new.txt": b"new\n"}))
    archive.publish()
    root = make_root(tmp / "root", [shell, greet], debian_os_release(),
                     sources={"etc/apt/sources.list":
                              "deb http://deb.debian.org/debian bookworm main\n"},
                     keyring=archive.key_asc())
    return archive, root


def _suture(archive: Archive, tmp: Path, docker: Docker, *args: str
            ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "suture", *args, "--cache-dir",
                           str(tmp / "cache"), "--no-host-keyrings", *archive.mirror_args()],
                          capture_output=True, timeout=300,
                          env={**os.environ, "DOCKER_HOST": docker.host})


def _import(docker: Docker, root: Path, tmp: Path, name: str) -> None:
    tar = tmp / f"{name.replace(':', '_').replace('/', '_')}.tar"
    subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(tar), "."],
                   check=True)
    subprocess.run(["docker", "import", str(tar), name], env=docker.env, check=True,
                   capture_output=True)


def _build(docker: Docker, context: bytes, name: str) -> None:
    proc = subprocess.run(["docker", "build", "--network", "none", "-q", "-t", name, "-"],
                          input=context, capture_output=True, timeout=300,
                          env={**docker.env, "DOCKER_BUILDKIT": "0"})
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()


def tree(docker: Docker, image: str) -> dict[str, tuple[object, ...]]:
    """The image's file tree as ``docker export`` of a container of it shows it: path ->
    (kind, mode, uid, gid, link target, sha256 of the contents)."""
    cid = docker.cli("create", "--network", "none", image, "/bin/sh").stdout.strip()
    try:
        data = subprocess.run(["docker", "export", cid], env=docker.env, check=True,
                              capture_output=True, timeout=300).stdout
    finally:
        docker.cli("rm", "-f", cid, check=False)
    out: dict[str, tuple[object, ...]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            digest = ""
            if m.isfile():
                f = tar.extractfile(m)
                assert f is not None
                digest = hashlib.sha256(f.read()).hexdigest()
            kind = "file" if m.islnk() else m.type.decode()
            if m.islnk():  # a hard link is the file it links to
                target = tar.getmember(m.linkname)
                f = tar.extractfile(target)
                assert f is not None
                digest = hashlib.sha256(f.read()).hexdigest()
            out[m.name.rstrip("/")] = (kind, m.mode, m.uid, m.gid,
                                       m.linkname if m.issym() else "", digest)
    return out


def _context_files(context: bytes) -> dict[str, bytes | None]:
    with tarfile.open(fileobj=io.BytesIO(context)) as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else None)  # type: ignore[union-attr]
                for m in tar}


def test_docker_build_of_the_context_gives_the_patched_tree(
        apt_repo: AptRepo, gpg_keys: GpgKeys, tmp_path: Path, docker_engine: Docker) -> None:
    docker = docker_engine
    archive, root = _root(apt_repo, gpg_keys, tmp_path, with_rm=True)
    _import(docker, root, tmp_path, "gen-app:1")
    try:
        gen = _suture(archive, tmp_path, docker, "generate", "-i", "docker-daemon:gen-app:1")
        assert gen.returncode == 0, gen.stderr.decode()
        files = _context_files(gen.stdout)
        dockerfile = (files["Dockerfile"] or b"").decode()
        lines = dockerfile.splitlines()
        assert lines[0] == "FROM gen-app:1"
        assert lines[1] == 'RUN ["/bin/rm", "-rf", "--", "/usr/share/greet/old.txt"]'
        assert lines[2] == "COPY patch/ /"
        assert lines[3].startswith('LABEL sh.copa.image.patched="')
        assert files["patch/usr/share/greet/new.txt"] == b"new\n"
        assert files["patch/usr/share/greet/common"] == b"common 2.0-1\n"
        assert "patch/usr/share/greet/old.txt" not in files
        assert "patch/bin/sh" not in files  # unchanged: not in the context
        _build(docker, gen.stdout, "gen-app:built")

        patch = _suture(archive, tmp_path, docker, "patch", "-i", "docker-daemon:gen-app:1",
                        "-t", "patched")
        assert patch.returncode == 0, patch.stderr.decode()
        built, patched = tree(docker, "gen-app:built"), tree(docker, "gen-app:patched")
        assert built == patched
        assert "usr/share/greet/old.txt" in tree(docker, "gen-app:1")
        assert "usr/share/greet/old.txt" not in built
        assert docker.run("gen-app:built", "greet").stdout == "greet 2.0-1\n"
    finally:
        docker.remove_images("gen-app:1", "gen-app:built", "gen-app:patched")


def test_no_rm_refused_unless_deletions_may_be_lost(
        apt_repo: AptRepo, gpg_keys: GpgKeys, tmp_path: Path, docker_engine: Docker) -> None:
    """Without an rm in the image the deletion cannot be expressed: one error line and no
    file; --allow-lost-deletions writes copa's context, whose build keeps old.txt and
    differs from the patch in nothing else."""
    docker = docker_engine
    archive, root = _root(apt_repo, gpg_keys, tmp_path, with_rm=False)
    _import(docker, root, tmp_path, "gen-bare:1")
    out = tmp_path / "ctx" / "context.tar"
    try:
        proc = _suture(archive, tmp_path, docker, "generate", "-i", "docker-daemon:gen-bare:1",
                       "--output-context", str(out))
        assert proc.returncode == 1
        last = proc.stderr.decode().strip().splitlines()[-1]
        assert last.startswith("suture: error: the patch deletes 1 path(s) (first: "
                               "/usr/share/greet/old.txt) and the image has no rm"), last
        assert not out.exists()
        proc = _suture(archive, tmp_path, docker, "generate", "-i", "docker-daemon:gen-bare:1",
                       "--output-context", str(out), "--allow-lost-deletions")
        assert proc.returncode == 0, proc.stderr.decode()
        context = out.read_bytes()
        assert "RUN" not in (_context_files(context)["Dockerfile"] or b"").decode()
        _build(docker, context, "gen-bare:built")
        patch = _suture(archive, tmp_path, docker, "patch", "-i", "docker-daemon:gen-bare:1",
                        "-t", "patched")
        assert patch.returncode == 0, patch.stderr.decode()
        built, patched = tree(docker, "gen-bare:built"), tree(docker, "gen-bare:patched")
        assert set(built) - set(patched) == {"usr/share/greet/old.txt"}
        assert {k: v for k, v in built.items() if k in patched} == patched
    finally:
        docker.remove_images("gen-bare:1", "gen-bare:built", "gen-bare:patched")


def test_generate_refuses_a_terminal_and_needs_a_from_name(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "suture", "generate", "-i",
                           f"oci:{tmp_path}/nothing:v1", "--output-context",
                           str(tmp_path / "c.tar")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "no image name for FROM" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "c.tar").exists()


def test_file_capabilities_survive_the_context(tmp_path: Path, docker_engine: Docker) -> None:
    """A changed file with ``security.capability`` (as rpm's %caps or setcap leave it)
    keeps it through the context and ``docker build`` (checked in ``docker export``);
    a file owned by someone else is copied with ``--chown``."""
    from suture.devtools.debian_image import image_from_layers
    from suture.oci.layer import Entry
    from suture.oci.model import Platform
    from suture.patch.generate import build_context, write_context
    from suture.transports import EngineOptions, Options, write_artifact

    docker = docker_engine
    cap = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    base = [Entry("usr", "dir", 0o755), Entry("usr/bin", "dir", 0o755),
            Entry.file("usr/bin/ping", b"old ping\n", 0o755),
            Entry("home", "dir", 0o755), Entry("home/app", "dir", 0o755, 1000, 1000)]
    patch = [Entry("usr", "dir", 0o755), Entry("usr/bin", "dir", 0o755),
             Entry("usr/bin/ping", "file", 0o755, size=9, data=b"new ping\n",
                   xattrs={"security.capability": cap}),
             Entry("home", "dir", 0o755), Entry("home/app", "dir", 0o755, 1000, 1000),
             Entry.file("home/app/state", b"2\n", 0o600, uid=1000, gid=1000)]
    amd64 = Platform.parse("linux/amd64")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    source = image_from_layers([base], amd64, tmp_path / "a")
    patched = image_from_layers([base, patch], amd64, tmp_path / "b")
    write_artifact(source, "docker-daemon:gen-cap:1",
                   Options(engines=EngineOptions(docker_host=docker.host)))
    write_artifact(patched, "docker-daemon:gen-cap:patched",
                   Options(engines=EngineOptions(docker_host=docker.host)))
    try:
        context = build_context(source, patched, "gen-cap:1", created="2026-01-01T00:00:00Z")
        assert re.search(r"^COPY --chown=1000:1000 files/\d+ /home/app/state$",
                         context.dockerfile, re.MULTILINE), context.dockerfile
        out = io.BytesIO()
        write_context(context, out)
        _build(docker, out.getvalue(), "gen-cap:built")
        built, want = tree(docker, "gen-cap:built"), tree(docker, "gen-cap:patched")
        assert built == want
        assert built["home/app/state"][2:4] == (1000, 1000)
        # The capability is in the context (GNU tar restores it: getcap is the judge) and
        # in suture's own image; Docker 20.10's classic builder drops it on the way in
        # (its export of the built image has none), a limitation of that builder.
        unpacked = tmp_path / "unpacked"
        unpacked.mkdir()
        subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "-C", str(unpacked), "-xf",
                        "-"], input=out.getvalue(), check=True)
        getcap = subprocess.run(["getcap", str(unpacked / "patch/usr/bin/ping")],
                                capture_output=True, text=True, check=True)
        assert getcap.stdout.split()[-1] == "cap_net_raw=ep"
        assert "SCHILY.xattr.security.capability" in _exported(docker, "gen-cap:patched")
    finally:
        docker.remove_images("gen-cap:1", "gen-cap:patched", "gen-cap:built")


def _exported(docker: Docker, image: str) -> dict[str, str]:
    """The pax records of usr/bin/ping in ``docker export`` of a container of ``image``."""
    cid = docker.cli("create", image, "/x").stdout.strip()
    try:
        data = subprocess.run(["docker", "export", cid], env=docker.env, check=True,
                              capture_output=True).stdout
    finally:
        docker.cli("rm", "-f", cid, check=False)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return dict(tar.getmember("usr/bin/ping").pax_headers)


def test_generate_takes_every_option_the_patch_options_read(tmp_path: Path) -> None:
    """generate builds its PatchOptions from patch's reader: each flag it reads must be on
    generate's parser too (--no-result-cache was not, and every generate failed)."""
    from suture import cli

    args = cli.build_parser().parse_args(
        ["generate", "-i", f"oci:{tmp_path}/img:v1", "--no-result-cache",
         "--cache-dir", str(tmp_path / "cache")])
    options = cli._patch_options(args, None)
    assert options.result_cache is False
    assert options.cache_dir == tmp_path / "cache"
    args = cli.build_parser().parse_args(["generate", "-i", f"oci:{tmp_path}/img:v1"])
    assert cli._patch_options(args, None).result_cache is True
