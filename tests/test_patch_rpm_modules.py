"""EL8 module streams: an update never leaves the image's stream, and a repository with
``module_hotfixes`` is exempt, as dnf has it.

The world: ``nodejs`` built with rpmbuild as 1:14.1 (installed), 1:14.2 (an artifact
of stream 14), 1:16.1 (stream 16) and 1:18.0 (no module's: what a stream filter must
hide, its name being stream 14's), plus 1:14.3 in a hotfix repository; ``plain`` 1.0
installed and 1.1 offered (no module touches it). ``modules.yaml`` (added to the
repository's repomd with ``modifyrepo_c``) lists both streams, two builds of 14, and
14 as the default stream. The oracle is dnf's own choice: ``dnf --installroot upgrade``
on a copy of the same root. Each image goes through ``suture patch`` end to end and
the versions it wrote to the rpmdb are read back with ``rpm -qa``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from suture.distro.rpm.modules import ModularFilter, parse_module_states, parse_modules_yaml
from tests.fixtures._served import ServedDirectory
from tests.fixtures.patchimages import open_image, suture, write_image
from tests.fixtures.rpmbuild import build_rpm, have_rpm_tools, rpm_root
from tests.test_patch_rpm import _qa, _rpmdb

UPSTREAM = "https://mod.sut.example"
EL8 = ('NAME="Red Hat Enterprise Linux"\nID="rhel"\nVERSION_ID="8.10"\n'
       'ID_LIKE="fedora"\nPLATFORM_ID="platform:el8"\n')
ENV = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LC_ALL": "C"}


def _spec(name: str, epoch: int | None, version: str, release: str) -> str:
    head = f"Epoch: {epoch}\n" if epoch is not None else ""
    return (f"Name: {name}\n{head}Version: {version}\nRelease: {release}\nSummary: t\n"
            f"License: MIT\nAutoReqProv: no\n%description\nt\n%install\n"
            f"mkdir -p %{{buildroot}}/usr/share/{name}\n"
            f"echo {version} > %{{buildroot}}/usr/share/{name}/version\n"
            f"%files\n/usr/share/{name}/version\n")


NODE = {"14.1": "1.module_el8.1", "14.2": "1.module_el8.2", "16.1": "1.module_el8.3",
        "18.0": "1.el8", "14.3": "1.el8.hotfix"}


def _artifact(version: str) -> str:
    return f"nodejs-1:{version}-{NODE[version]}.x86_64"


def _modulemd(stream: str, version: int, artifacts: list[str]) -> str:
    rpms = "".join(f"    - {a}\n" for a in artifacts)
    return (f"---\ndocument: modulemd\nversion: 2\ndata:\n  name: nodejs\n"
            f"  stream: \"{stream}\"\n  version: {version}\n  context: 9edba152\n"
            f"  arch: x86_64\n  summary: t\n  description: t\n  license:\n    module: [MIT]\n"
            f"  dependencies:\n  - buildrequires:\n      platform: [el8]\n"
            f"    requires:\n      platform: [el8]\n"
            f"  artifacts:\n    rpms:\n{rpms}...\n")


MODULES_YAML = (
    _modulemd("14", 8010020200101000000, [_artifact("14.1")])
    + _modulemd("14", 8020020210101000000, [_artifact("14.2")])
    + _modulemd("16", 8030020220101000000, [_artifact("16.1")])
    + "---\ndocument: modulemd-defaults\nversion: 1\ndata:\n  module: nodejs\n"
      "  stream: \"14\"\n...\n")


@dataclass
class ModWorld:
    top: Path
    server: ServedDirectory
    rpms: dict[str, Path]


@pytest.fixture(scope="module")
def mod_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModWorld]:
    if not have_rpm_tools() or shutil.which("createrepo_c") is None or not shutil.which("dnf"):
        pytest.skip("needs rpmbuild, createrepo_c and dnf")
    top = tmp_path_factory.mktemp("modules")
    rpms: dict[str, Path] = {}
    for version, release in NODE.items():
        (rpms[f"nodejs-{version}"],) = build_rpm(_spec("nodejs", 1, version, release),
                                                 top / "build", arch="x86_64")
    for version in ("1.0", "1.1"):
        (rpms[f"plain-{version}"],) = build_rpm(_spec("plain", None, version, "1"),
                                                top / "build", arch="x86_64")
    served = top / "served"
    layout = {"appstream": ["nodejs-14.1", "nodejs-14.2", "nodejs-16.1", "nodejs-18.0",
                            "plain-1.0", "plain-1.1"],
              "hotfix": ["nodejs-14.3"]}
    for repo, names in layout.items():
        (served / repo).mkdir(parents=True)
        for name in names:
            shutil.copy(rpms[name], served / repo)
        subprocess.run(["createrepo_c", "-q", "--general-compress-type", "gz",
                        str(served / repo)], check=True)
    (top / "modules.yaml").write_text(MODULES_YAML)
    subprocess.run(["modifyrepo_c", "--mdtype=modules", "--compress-type=gz",
                    str(top / "modules.yaml"), str(served / "appstream/repodata")], check=True,
                   capture_output=True)
    with ServedDirectory(served) as server:
        yield ModWorld(top, server, rpms)


def _root(world: ModWorld, path: Path, *, stream: str | None, hotfix: bool) -> Path:
    path.mkdir(parents=True)
    (path / "etc").mkdir()
    (path / "etc/os-release").write_text(EL8)
    rpm_root(path, "--initdb")
    rpm_root(path, "-i", "--nodeps", str(world.rpms["nodejs-14.1"]), str(world.rpms["plain-1.0"]))
    repos = path / "etc/yum.repos.d"
    repos.mkdir(parents=True)
    text = f"[appstream]\nname=a\nbaseurl={UPSTREAM}/appstream/\ngpgcheck=0\nenabled=1\n"
    if hotfix:
        text += (f"\n[hotfix]\nname=h\nbaseurl={UPSTREAM}/hotfix/\ngpgcheck=0\nenabled=1\n"
                 "module_hotfixes=1\n")
    (repos / "mod.repo").write_text(text)
    if stream is not None:
        (path / "etc/dnf/modules.d").mkdir(parents=True)
        (path / "etc/dnf/modules.d/nodejs.module").write_text(
            f"[nodejs]\nname=nodejs\nstream={stream}\nprofiles=\nstate=enabled\n")
    return path


def _dnf_upgrade(world: ModWorld, root: Path, tmp: Path) -> str:
    """The nodejs version dnf upgrades a copy of ``root`` to."""
    copy = tmp / "dnf-root"
    shutil.copytree(root, copy, symlinks=True)
    repos = tmp / "dnf-repos"
    repos.mkdir()
    text = (root / "etc/yum.repos.d/mod.repo").read_text()
    (repos / "mod.repo").write_text(text.replace(UPSTREAM, world.server.url))
    home = tmp / "home"
    home.mkdir()
    (home / ".rpmmacros").write_text("%_dbpath /var/lib/rpm\n")
    subprocess.run(["dnf", "-y", "-q", f"--installroot={copy}", "--releasever=8",
                    f"--setopt=reposdir={repos}", f"--setopt=cachedir={tmp}/dnf-cache",
                    "--setopt=module_platform_id=platform:el8", "upgrade"],
                   env={**ENV, "HOME": str(home)}, check=True, capture_output=True)
    out = rpm_root(copy, "-q", "--qf", "%{VERSION}", "nodejs").stdout
    return out.strip()


def _suture_upgrade(world: ModWorld, root: Path, tmp: Path) -> tuple[str, dict[str, Any]]:
    """The nodejs version ``suture patch`` writes into the image of ``root``; its result."""
    ref = write_image(root, tmp, "v1")
    result = tmp / "result.json"
    proc = suture("patch", "-i", ref, "-t", "v1-patched", "--result", str(result),
                  "--cache-dir", str(tmp / "cache"),
                  "--mirror", f"{UPSTREAM}={world.server.url}",
                  "--allow-private-repos", "127.0.0.1", "--sandbox", "none",
                  "--progress", "quiet")
    assert proc.returncode == 0, proc.stderr
    image = open_image(ref.rsplit(":", 1)[0] + ":v1-patched")
    db = _rpmdb(image, "rhel", tmp / "db")
    qa = {n.rsplit("-", 2)[0]: n for n in _qa(db)}
    evr = qa["nodejs"].removeprefix("nodejs-")  # E:V-R.arch
    return evr.split(":")[-1].split("-")[0], json.loads(result.read_text())


@pytest.mark.parametrize(("stream", "hotfix", "want"), [
    ("14", False, "14.2"),   # stream 14 enabled: 16.1 and the non-modular 18.0 are hidden
    (None, False, "14.2"),   # no modules.d (a microdnf image): the default stream, as dnf
    ("14", True, "14.3"),    # a module_hotfixes repository is not filtered
    ("16", False, "16.1"),   # stream 16 enabled: 14.2 hidden, the non-modular 18.0 too
], ids=["enabled-stream", "default-stream", "hotfix", "other-stream"])
def test_stream_kept_as_dnf(mod_world: ModWorld, tmp_path: Path, stream: str | None,
                            hotfix: bool, want: str) -> None:
    root = _root(mod_world, tmp_path / "root", stream=stream, hotfix=hotfix)
    assert _dnf_upgrade(mod_world, root, tmp_path) == want
    got, result = _suture_upgrade(mod_world, root, tmp_path)
    assert got == want
    (platform,) = result["platforms"]
    updates = {u["name"]: u["to"] for u in platform["updates"]}
    assert updates["plain"] == "1.1-1"  # no module names it: updated as ever


def test_filter_without_modules_d_or_defaults() -> None:
    """Pure filter cases: a module with no default and nothing enabled hides all its
    streams' artifacts but not other names; a disabled module hides its default too."""
    md = parse_modules_yaml(MODULES_YAML.encode(), what="t")
    assert {(s.stream, s.version) for s in md.streams} == {
        ("14", 8010020200101000000), ("14", 8020020210101000000), ("16", 8030020220101000000)}
    assert md.defaults == {"nodejs": "14"}
    bare = parse_modules_yaml(MODULES_YAML.split("---\ndocument: modulemd-defaults")[0]
                              .encode(), what="t")
    f = ModularFilter([bare], {}, "el8")
    assert f.active == {}
    assert _artifact("14.2") in f.excluded and _artifact("16.1") in f.excluded
    assert not f.names  # a non-modular nodejs stays visible: nothing is active
    disabled = parse_module_states(
        {"etc/dnf/modules.d/nodejs.module": b"[nodejs]\nname=nodejs\nstream=\nstate=disabled\n"})
    assert ModularFilter([md], disabled, "el8").active == {}
    # a stream built for another platform is not considered
    assert ModularFilter([md], {}, "el9").included == set()
