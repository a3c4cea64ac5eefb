"""Maintainer scripts and triggers as dpkg runs them under apt, pinned on a local archive.

The image is a real bookworm root (the point release, which does not change from day
to day) with small packages of ours installed by the real dpkg; a local signed archive
holds their next versions and nothing else, so what the test sees does not depend on
what Debian publishes today. The oracle is the distribution's own ``apt-get upgrade``
in a chroot of the same image, pointed at the same archive: the patched tree must
equal it file by file (:mod:`tests.fixtures.fidelity`), and each behaviour is also
checked by its outcome:

* debconf: a ``preinst`` that asks debconf, a ``config`` script, ``db_set`` in the
  ``postinst``, apt's preconfiguration hook (the image has apt-utils): the
  questions' owners and values are apt's (no ``unknown`` owner);
* ``dpkg-trigger`` in a ``postinst`` (for the package itself, and an awaited trigger
  of a package the update does not touch): processed, ``triggers/Unincorp`` empty;
* a file trigger on a directory another upgraded package writes into (one of its
  files diverted into another watched directory, which dpkg does not activate);
* a conffile the administrator diverted: the new version goes to the diverted name;
* the scripts' environment (``DPKG_*``), their path (``$0``) and arguments.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from suture.distro.dpkg.control import parse_status
from tests.fixtures.aptrepo import AptRepo, GpgKeys
from tests.fixtures.debian import debian_rootfs
from tests.fixtures.debs import build_deb
from tests.fixtures.fidelity import (
    TreeDiff,
    apt_upgrade_in_chroot,
    chroot_sh,
    diff_trees,
    parse_debconf_db,
    run_suture,
    unpack,
)
from tests.fixtures.patchimages import DEBIAN_ARCHIVE, DEBIAN_SECURITY, write_image

pytestmark = [pytest.mark.network, pytest.mark.tools]

KEYRING = "etc/apt/trusted.gpg.d/suture-test.asc"

CONFMODULE = ". /usr/share/debconf/confmodule\n"

DC_TEMPLATES_1 = (b"Template: dc-demo/answer\nType: string\nDefault: one\n"
                  b"Description: the demo's answer\n")
DC_TEMPLATES_2 = DC_TEMPLATES_1 + (b"\nTemplate: dc-demo/second\nType: boolean\n"
                                   b"Default: true\nDescription: a question new in 2\n")
DC_CONFIG = "#!/bin/sh\nset -e\n" + CONFMODULE + "db_input low dc-demo/answer || true\n" \
    "db_go || true\n"
# As libpam-modules' does: a preinst that talks to debconf before anything is unpacked.
DC_PREINST = "#!/bin/sh\nset -e\n" + CONFMODULE + "db_version 2.0\n" \
    "db_get dc-demo/answer\necho \"preinst $* $RET\" >> /var/lib/dc-demo.log\n"
DC_POSTINST = "#!/bin/sh\nset -e\n" + CONFMODULE + (
    'if [ "$1" = configure ]; then\n'
    "  db_set dc-demo/answer two\n  db_get dc-demo/answer\n"
    '  echo "$RET" > /etc/dc-demo.answer\nfi\n')

DC_LIB_TEMPLATES = (b"Template: dc-lib/restart\nType: boolean\nDefault: false\n"
                    b"Description: restart services?\n")
DC_LIB_CONFIG = "#!/bin/sh\nset -e\n" + CONFMODULE + "db_input low dc-lib/restart || true\n" \
    "db_go || true\n"
DC_LIB_POSTINST = "#!/bin/sh\nset -e\n" + CONFMODULE + "db_get dc-lib/restart || true\n"

TRIG_SELF = ("#!/bin/sh\nset -e\ncase \"$1\" in\n"
             "configure) dpkg-trigger --no-await trig-self-t ;;\n"
             "triggered) echo \"triggered $2\" >> /var/lib/trig-self.log ;;\nesac\n")
TRIG_POKE = ("#!/bin/sh\nset -e\n"
             "if [ \"$1\" = configure ]; then dpkg-trigger trig-watch-t; fi\n")
TRIG_WATCH = ("#!/bin/sh\nset -e\n"
              "if [ \"$1\" = triggered ]; then echo \"$2\" >> /var/lib/trig-watch.log; fi\n")
FT_WATCH = ("#!/bin/sh\nset -e\n"
            "if [ \"$1\" = triggered ]; then\n"
            "  echo \"$2: $(ls /usr/share/ft-dir | tr '\\n' ' ')\" >> /var/lib/ft-watch.log\n"
            "fi\n")


def env_dump(script: str) -> str:
    """A script recording how it was called: ``$0``, its arguments, dpkg's variables."""
    return ("#!/bin/sh\n"
            f"out=/var/lib/env-dump/{script}.$DPKG_MAINTSCRIPT_NAME\n"
            "mkdir -p /var/lib/env-dump\n"
            "{ echo \"0=$0\"; echo \"args=$*\"; env | grep '^DPKG_' | sort; } >> \"$out\"\n")


ENV_SCRIPTS = {name: env_dump(name) for name in ("preinst", "postinst", "prerm", "postrm")}


@dataclass
class Packages:
    """The versions installed in the image (``old``) and published as updates (``new``)."""

    old: list[Path]
    new: list[Path]


def build_packages(debs: Path) -> Packages:
    old: list[Path] = []
    new: list[Path] = []
    for version, templates, preinst, out in (("1", DC_TEMPLATES_1, "", old),
                                             ("2", DC_TEMPLATES_2, DC_PREINST, new)):
        scripts = {"config": DC_CONFIG, "postinst": DC_POSTINST}
        if preinst:
            scripts["preinst"] = preinst
        out.append(build_deb(debs, "dc-demo", version,
                             {"usr/share/doc/dc-demo/v": version.encode()},
                             depends="debconf", scripts=scripts, arch="all",
                             control_files={"templates": templates}))
        out.append(build_deb(debs, "trig-self", version,
                             {"usr/share/doc/trig-self/v": version.encode()},
                             scripts={"postinst": TRIG_SELF},
                             triggers="interest-noawait trig-self-t\n", arch="all"))
        out.append(build_deb(debs, "trig-poke", version,
                             {"usr/share/doc/trig-poke/v": version.encode()},
                             scripts={"postinst": TRIG_POKE}, arch="all"))
        files = {"usr/share/ft-dir/a": f"a {version}\n".encode(),
                 "usr/share/ft-dir/c": f"c {version}\n".encode()}  # diverted to ft-other
        if version == "2":
            files["usr/share/ft-dir/b"] = b"b 2\n"
        out.append(build_deb(debs, "ft-writer", version, files, arch="all"))
        out.append(build_deb(debs, "dv-conf", version, {"etc/dv.conf": f"v{version}\n".encode()},
                             conffiles=["/etc/dv.conf"], arch="all"))
        out.append(build_deb(debs, "env-dump", version, {"usr/share/doc/env-dump/v":
                                                         version.encode()},
                             scripts=ENV_SCRIPTS, arch="all"))
        # Multi-Arch: same, with debconf questions: apt's preconfiguration names its
        # owner without the architecture, the postinst with it (as libpam0g's).
        out.append(build_deb(debs, "dc-lib", version,
                             {f"usr/share/doc/dc-lib/v{version}": version.encode()},
                             depends="debconf", scripts={"config": DC_LIB_CONFIG,
                                                         "postinst": DC_LIB_POSTINST},
                             fields={"Multi-Arch": "same"},
                             control_files={"templates": DC_LIB_TEMPLATES}))
    # Installed, never updated: they only listen.
    old.append(build_deb(debs, "trig-watch", "1", {"usr/share/doc/trig-watch/v": b"1"},
                         scripts={"postinst": TRIG_WATCH}, triggers="interest trig-watch-t\n",
                         arch="all"))
    old.append(build_deb(debs, "ft-watch", "1", {"usr/share/doc/ft-watch/v": b"1"},
                         scripts={"postinst": FT_WATCH},
                         triggers="interest-noawait /usr/share/ft-dir\n"
                                  "interest-noawait /usr/share/ft-other\n", arch="all"))
    return Packages(old, new)


def make_base_root(root: Path, rootfs: Path, debs: list[Path], key: bytes) -> None:
    """The bookworm root with ``debs`` installed by its own dpkg, ``/etc/dv.conf`` diverted
    by the administrator (``.distrib``) and replaced by a file of theirs, and
    ``/usr/share/ft-dir/c`` diverted into ``/usr/share/ft-other``."""
    root.mkdir()
    with tarfile.open(rootfs) as tar:
        tar.extractall(root, numeric_owner=True, filter="fully_trusted")
    staged = root / "tmp/debs"
    staged.mkdir()
    for deb in debs:
        (staged / deb.name).write_bytes(deb.read_bytes())
    chroot_sh(root, "dpkg -i /tmp/debs/*.deb >/dev/null && "
                    "dpkg-divert --local --rename --divert /etc/dv.conf.distrib "
                    "--add /etc/dv.conf >/dev/null && echo admin > /etc/dv.conf && "
                    "mkdir /usr/share/ft-other && dpkg-divert --local --rename --divert "
                    "/usr/share/ft-other/c --add /usr/share/ft-dir/c >/dev/null && "
                    "rm -rf /tmp/debs && rm -f /var/lib/dpkg/*-old /var/cache/debconf/*-old")
    (root / KEYRING).write_bytes(key)


@dataclass
class Outcome:
    result: dict[str, Any]
    original: Path
    ours: Path
    theirs: Path
    diff: TreeDiff


@pytest.fixture(scope="module")
def bookworm_apt_utils_rootfs() -> Path:
    """bookworm with apt-utils: apt preconfigures packages with debconf before dpkg."""
    return debian_rootfs("bookworm", include=("apt-utils",))


@pytest.fixture(scope="module")
def outcome(bookworm_apt_utils_rootfs: Path, gpg_keys: GpgKeys,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    bookworm_rootfs = bookworm_apt_utils_rootfs
    tmp = tmp_path_factory.mktemp("dpkg-scripts")
    packages = build_packages(tmp / "debs")
    with AptRepo(tmp / "repo") as repo:
        for deb in packages.old:
            repo.add_deb(deb, "bookworm")
        for deb in packages.new:
            repo.add_deb(deb, "bookworm-security")
        for suite in ("bookworm", "bookworm-security", "bookworm-updates"):
            repo.publish(suite, sign_with=gpg_keys.good, components=("main",))
        base = tmp / "base"
        make_base_root(base, bookworm_rootfs, packages.old, gpg_keys.good.public(armor=True))
        ref = write_image(base, tmp, "v1")
        result = tmp / "result.json"
        patched = f"oci:{tmp}/out:patched"
        proc = run_suture("patch", "-i", ref, "--dest", patched, "--result", str(result),
                          "--mirror", f"{DEBIAN_ARCHIVE}={repo.url}",
                          "--mirror", f"{DEBIAN_SECURITY}={repo.url}",
                          "--cache-dir", str(tmp / "cache"))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        original = unpack(ref, tmp / "original")
        theirs = unpack(ref, tmp / "apt")
        ours = unpack(patched, tmp / "ours")
        # apt reads the same archive through the image's own sources, pointed at it.
        sources = theirs / "etc/apt/sources.list"
        saved = sources.read_bytes()
        sources.write_text("".join(f"deb {repo.url} {suite} main\n" for suite in
                                   ("bookworm", "bookworm-security", "bookworm-updates")))
        try:
            apt_upgrade_in_chroot(theirs)
        finally:
            sources.write_bytes(saved)
        yield Outcome(json.loads(result.read_text()), original, ours, theirs,
                      diff_trees(ours, theirs))


def test_patched_tree_equals_apt_get_upgrade(outcome: Outcome) -> None:
    [platform] = outcome.result["platforms"]
    assert platform["status"] == "patched"
    assert {u["name"]: u["to"] for u in platform["updates"]} == {
        "dc-demo": "2", "trig-self": "2", "trig-poke": "2", "ft-writer": "2", "dv-conf": "2",
        "env-dump": "2", "dc-lib": "2"}
    assert platform["scripts"]["notRun"] == []
    assert platform["scripts"]["ran"][0] == "apt pre-install-pkgs"  # debconf's hook
    assert outcome.diff.empty, outcome.diff


def _status(root: Path) -> dict[str, str]:
    return {p.name: f"{p.paragraph.get('Status')} {p.paragraph.get('Triggers-Pending', '')}"
            f"{p.paragraph.get('Triggers-Awaited', '')}".strip()
            for p in parse_status((root / "var/lib/dpkg/status").read_bytes())}


def test_debconf_owners_and_values_are_apts(outcome: Outcome) -> None:
    ours = parse_debconf_db((outcome.ours / "var/cache/debconf/config.dat").read_bytes())
    apt = parse_debconf_db((outcome.theirs / "var/cache/debconf/config.dat").read_bytes())
    assert ours["dc-demo/answer"]["Owners"] == "dc-demo"
    assert ours["dc-demo/second"]["Owners"] == "dc-demo"  # registered by the new preinst
    assert ours["dc-demo/answer"]["Value"] == "two"  # db_set in the postinst
    assert {k: v for k, v in ours.items() if k.startswith("dc-demo/")} == \
        {k: v for k, v in apt.items() if k.startswith("dc-demo/")}
    assert not any("unknown" in q.get("Owners", "") for q in ours.values())
    # Preconfigured (apt's hook) under the bare name, configured under name:arch.
    assert ours["dc-lib/restart"]["Owners"] == apt["dc-lib/restart"]["Owners"] == \
        "dc-lib, dc-lib:amd64"
    assert (outcome.ours / "var/cache/debconf/tmp.ci").is_dir()  # left empty, as by apt
    assert not any((outcome.ours / "var/cache/debconf/tmp.ci").iterdir())
    assert not list((outcome.ours / "var/cache/apt/archives").glob("*.deb"))
    assert (outcome.ours / "etc/dc-demo.answer").read_text() == "two\n"
    # The new preinst ran, with debconf, as it did under apt (the old postinst set "two").
    assert (outcome.ours / "var/lib/dc-demo.log").read_text() == "preinst upgrade 1 2 two\n"
    assert (outcome.theirs / "var/lib/dc-demo.log").read_text() == "preinst upgrade 1 2 two\n"


def test_triggers_activated_by_scripts_are_processed(outcome: Outcome) -> None:
    for root in (outcome.ours, outcome.theirs):
        assert (root / "var/lib/dpkg/triggers/Unincorp").read_bytes() == b""
        status = _status(root)
        for name in ("trig-self", "trig-poke", "trig-watch"):
            assert status[name] == "install ok installed", (root, name, status[name])
    ours = (outcome.ours / "var/lib/trig-self.log").read_text()
    assert ours == (outcome.original / "var/lib/trig-self.log").read_text() + \
        "triggered trig-self-t\n"
    assert (outcome.ours / "var/lib/trig-watch.log").read_text().splitlines()[-1] == \
        "trig-watch-t"
    assert (outcome.ours / "var/lib/trig-watch.log").read_text() == \
        (outcome.theirs / "var/lib/trig-watch.log").read_text()


def test_file_trigger_on_a_directory_another_package_writes(outcome: Outcome) -> None:
    # Activated by the names the package gives its files, diversions or not: c lands
    # in ft-other, yet only ft-dir is activated (dpkg 1.21 does so).
    seen = (outcome.ours / "var/lib/ft-watch.log").read_text().splitlines()
    assert seen[-1] == "/usr/share/ft-dir: a b "
    assert (outcome.ours / "usr/share/ft-other/c").read_text() == "c 2\n"
    assert (outcome.ours / "var/lib/ft-watch.log").read_text() == \
        (outcome.theirs / "var/lib/ft-watch.log").read_text()


def test_diverted_conffile_is_upgraded_at_the_diverted_name(outcome: Outcome) -> None:
    assert (outcome.ours / "etc/dv.conf").read_text() == "admin\n"
    assert (outcome.ours / "etc/dv.conf.distrib").read_text() == "v2\n"
    assert not (outcome.ours / "etc/dv.conf.dpkg-dist").exists()
    assert not (outcome.ours / "etc/dv.conf.distrib.dpkg-dist").exists()


def test_scripts_get_dpkgs_path_arguments_and_environment(outcome: Outcome) -> None:
    dumps = sorted(p.name for p in (outcome.theirs / "var/lib/env-dump").iterdir())
    assert dumps == ["postinst.postinst", "postrm.postrm", "preinst.preinst", "prerm.prerm"]
    for name in dumps:
        ours = (outcome.ours / "var/lib/env-dump" / name).read_text()
        apt = (outcome.theirs / "var/lib/env-dump" / name).read_text()
        assert ours == apt, name
    preinst = (outcome.ours / "var/lib/env-dump/preinst.preinst").read_text().splitlines()
    assert "0=/var/lib/dpkg/tmp.ci/preinst" in preinst


def test_dpkg_is_clean_in_the_patched_root(outcome: Outcome) -> None:
    audit = subprocess.run(["dpkg", f"--root={outcome.ours}", "--audit"], capture_output=True,
                           text=True)
    assert audit.returncode == 0 and audit.stdout == "", audit.stdout + audit.stderr
