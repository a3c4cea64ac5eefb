"""The oracle for maintainer scripts run under emulation: a real arm64 bookworm image,
patched by suture on this host (packages unpacked and the database written natively,
the scripts run by the image's own arm64 programs through binfmt_misc and
qemu-user-static), against the distribution's own ``apt-get upgrade`` run in an
emulated bubblewrap chroot of the same image: file by file, apart from
:data:`tests.fixtures.fidelity.ORACLE_IGNORED`.

The image is a bookworm minbase root with ca-certificates made by ``mmdebstrap
--architectures=arm64`` (its scripts run under qemu-user-static too; cached per day
like the amd64 roots): the point suite's packages, with real updates in -security and
-updates. The ca-certificates update is the one whose scripts visibly matter: its
postinst rebuilds the certificate bundle and the hash links with the image's arm64
openssl; without the scripts, suture's tree would differ from apt's there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from suture.devtools.debian_image import image_from_layers
from suture.oci.model import Platform
from suture.patch.emulation import emulation_note, emulator_for, no_emulator_reason
from suture.patch.sandbox import host_architecture
from suture.transports import write_artifact
from tests.fixtures.debian import debian_rootfs
from tests.fixtures.fidelity import compare_with_apt, tree
from tests.fixtures.multiarch import ELF_MACHINE, elf_machine

pytestmark = [pytest.mark.network, pytest.mark.tools]

ARM64 = Platform("linux", "arm64", "v8")


@pytest.fixture(scope="session")
def bookworm_arm64_rootfs() -> Path:
    for tool in ("mmdebstrap", "bwrap"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if host_architecture() != "arm64":
        if shutil.which("arch-test") is None:
            pytest.skip("arch-test is not installed (mmdebstrap needs it for arm64)")
        if emulator_for("arm64") is None:
            pytest.skip(f"arm64 programs cannot run here: {no_emulator_reason('arm64')} "
                        "(scripts/setup-binfmt registers it)")
    return debian_rootfs("bookworm", arch="arm64", include=("ca-certificates",))


def _elf_files(root: Path, paths: list[str]) -> dict[str, int]:
    out = {}
    for rel in paths:
        path = root / rel
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as fh:
                machine = elf_machine(fh.read(64))
            if machine is not None:
                out[rel] = machine
    return out


# Emulation is slow where scripts start many programs: update-ca-certificates starts a
# few per certificate, each a qemu-aarch64 start (minutes on a busy 2-CPU machine, on
# each side of the comparison), and the root is built under emulation once a day.
@pytest.mark.timeout(1800)
def test_arm64_scripts_emulated_match_apt_get_upgrade(tmp_path: Path,
                                                      bookworm_arm64_rootfs: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    ref = f"oci:{tmp_path}/layout:arm64"
    write_artifact(image_from_layers([bookworm_arm64_rootfs], ARM64, work), ref)

    fid = compare_with_apt(ref, tmp_path / "fidelity", emulated=True)

    assert fid.status == "patched", fid.platform
    apt_versions = fid.apt_versions
    assert fid.updates, "bookworm-security/-updates upgrade nothing in arm64 minbase"
    assert {name: apt_versions[name] for name in fid.updates} == fid.updates
    # suture ran every script it planned, under emulation, and says so.
    scripts = fid.platform["scripts"]
    assert scripts["ran"] and scripts["notRun"] == [], scripts
    note = emulation_note("arm64", host_architecture())
    if note is not None:
        assert note in fid.platform["notes"], fid.platform["notes"]
    # The upgrade changed arm64 programs and libraries (and only arm64 ones).
    ours, original = tree(fid.ours), tree(fid.original)
    changed = sorted(p for p in ours if ours[p] != original.get(p))
    assert len(changed) > len(fid.updates)
    assert "ca-certificates" in fid.updates
    assert "etc/ssl/certs/ca-certificates.crt" in changed  # rebuilt by its postinst
    machines = _elf_files(fid.ours, changed)
    assert machines and set(machines.values()) == {ELF_MACHINE["arm64"]}, machines
    # And the result is apt-get's, file by file.
    assert fid.diff.empty, str(fid.diff)
