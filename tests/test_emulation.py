"""binfmt_misc handlers read as the kernel shows them, matched against ELF headers.

The handler texts are what Linux prints under /proc/sys/fs/binfmt_misc for the
handlers Debian's qemu-user-static registers (magic and mask from
/usr/lib/binfmt.d/qemu-*.conf); the ELF headers are checked against the host's own
programs. The sandbox's preflight is checked over a handler directory of our making.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from suture.oci.model import Platform
from suture.patch import emulation
from suture.patch.emulation import (
    Handler,
    elf_headers,
    emulation_note,
    emulator_for,
    find_handler,
    no_emulator_reason,
    parse_handler,
    read_handlers,
)
from suture.patch.sandbox import choose_sandbox, host_architecture, preflight
from tests.fixtures.images import make_image


def _text(interpreter: str, flags: str, magic: str, mask: str, *, enabled: bool = True) -> str:
    return (f"{'enabled' if enabled else 'disabled'}\ninterpreter {interpreter}\n"
            f"flags: {flags}\noffset 0\nmagic {magic}\nmask {mask}\n")


# As the kernel shows them once Debian's qemu-user-static registered them.
AARCH64 = _text("/usr/libexec/qemu-binfmt/aarch64-binfmt-P", "PF",
                "7f454c460201010000000000000000000200b700",
                "ffffffffffffff00fffffffffffffffffeffffff")
ARM = _text("/usr/libexec/qemu-binfmt/arm-binfmt-P", "OCF",
            "7f454c4601010100000000000000000002002800",
            "ffffffffffffff00fffffffffffffffffeffffff")
S390X = _text("/usr/libexec/qemu-binfmt/s390x-binfmt-P", "POF",
              "7f454c4602020100000000000000000000020016",
              "fffffffffffffffcfffffffffffffffffffeffff")
PPC64LE = _text("/usr/libexec/qemu-binfmt/ppc64le-binfmt-P", "PF",
                "7f454c4602010100000000000000000002001500",
                "fffffffffffffffcfffffffffffffffffeffff00")
RISCV64 = _text("/usr/libexec/qemu-binfmt/riscv64-binfmt-P", "PF",
                "7f454c460201010000000000000000000200f300",
                "ffffffffffffff00fffffffffffffffffeffffff")
JAR = "enabled\ninterpreter /usr/bin/jexec\nflags: \nextension .jar\n"


def _handlers(**texts: str) -> list[Handler]:
    out = []
    for name, text in texts.items():
        handler = parse_handler(name.replace("_", "-"), text)
        assert handler is not None, name
        out.append(handler)
    return out


def test_parse_handler_reads_what_the_kernel_shows() -> None:
    handler = parse_handler("qemu-aarch64", AARCH64)
    assert handler == Handler(
        "qemu-aarch64", True, "/usr/libexec/qemu-binfmt/aarch64-binfmt-P", "PF", 0,
        bytes.fromhex("7f454c460201010000000000000000000200b700"),
        bytes.fromhex("ffffffffffffff00fffffffffffffffffeffffff"))
    assert handler.describe() == \
        "binfmt_misc qemu-aarch64: /usr/libexec/qemu-binfmt/aarch64-binfmt-P"
    jar = parse_handler("jar", JAR)
    assert jar is not None and jar.magic is None and jar.flags == ""
    disabled = parse_handler("qemu-arm", ARM.replace("enabled", "disabled", 1))
    assert disabled is not None and not disabled.enabled
    no_mask = parse_handler("x", "enabled\ninterpreter /x\nflags: F\noffset 0\nmagic 7f454c46\n")
    assert no_mask is not None and no_mask.mask is None
    for text in ("", "enabled\n", "enabled\nflags: F\nmagic 7f\n",  # no interpreter
                 "1\n", "garbage\ninterpreter /x\n",
                 "enabled\ninterpreter /x\nflags: F\nmagic 7g\n",  # not hex
                 "enabled\ninterpreter /x\nflags: F\noffset x\nmagic 7f\n",
                 "enabled\ninterpreter /x\nflags: F\n"):  # neither magic nor extension
        assert parse_handler("x", text) is None, text


@pytest.mark.parametrize(("architecture", "name"), [
    ("arm64", "qemu-aarch64"), ("arm", "qemu-arm"), ("s390x", "qemu-s390x"),
    ("ppc64le", "qemu-ppc64le"), ("riscv64", "qemu-riscv64")])
def test_each_architecture_finds_its_own_handler(architecture: str, name: str) -> None:
    handlers = _handlers(qemu_aarch64=AARCH64, qemu_arm=ARM, qemu_s390x=S390X,
                         qemu_ppc64le=PPC64LE, qemu_riscv64=RISCV64, jar=JAR)
    found = find_handler(architecture, handlers)
    assert found is not None and found.name == name
    # No other handler takes that architecture's programs.
    assert [h.name for h in handlers if find_handler(architecture, [h])] == [name]


def test_no_handler_for_the_host_or_unknown_architectures() -> None:
    handlers = _handlers(qemu_aarch64=AARCH64, qemu_arm=ARM, qemu_s390x=S390X,
                         qemu_ppc64le=PPC64LE, qemu_riscv64=RISCV64)
    for architecture in ("amd64", "386", "ppc64", "mips64le", "loong64", "sparc", "wasm"):
        assert find_handler(architecture, handlers) is None, architecture


def test_handler_must_be_enabled_and_have_the_f_flag() -> None:
    assert find_handler("arm64", _handlers(a=AARCH64.replace("flags: PF", "flags: P"))) is None
    assert find_handler("arm64", _handlers(a=AARCH64.replace("flags: PF", "flags: "))) is None
    assert find_handler("arm64", _handlers(a=AARCH64.replace("enabled", "disabled", 1))) is None
    # Of two handlers for arm64, the one that can run in a root without it is chosen.
    found = find_handler("arm64", _handlers(a_old=AARCH64.replace("flags: PF", "flags: P"),
                                            b_new=AARCH64))
    assert found is not None and found.name == "b-new"


def test_handler_must_take_executables_and_pie_programs() -> None:
    # Without a mask, the magic must match byte for byte: e_type 2 (ET_EXEC) only.
    exec_only = ("enabled\ninterpreter /q\nflags: F\noffset 0\n"
                 "magic 7f454c460201010000000000000000000200b700\n")
    handler = parse_handler("exec-only", exec_only)
    assert handler is not None
    ex, dyn = elf_headers("arm64") or ()
    assert handler.matches(ex) and not handler.matches(dyn)
    assert find_handler("arm64", [handler]) is None
    # A magic reaching past the ELF header we know (e_flags) cannot be vouched for.
    longer = AARCH64.replace("b700\n", "b70001000000\n").replace("ffffff\n", "ffffffffffffff\n")
    assert find_handler("arm64", _handlers(longer=longer)) is None
    # ...unless its mask ignores those bytes.
    ignored = AARCH64.replace("b700\n", "b70001000000\n").replace("ffffff\n", "ffffff00000000\n")
    assert find_handler("arm64", _handlers(ignored=ignored)) is not None
    # An offset moves the magic.
    shifted = parse_handler("s", "enabled\ninterpreter /q\nflags: F\noffset 18\nmagic b700\n")
    assert shifted is not None and all(shifted.matches(h) for h in (ex, dyn))


def test_elf_headers_are_those_of_real_programs() -> None:
    host = host_architecture()
    headers = elf_headers(host)
    if headers is None:
        pytest.skip(f"no ELF identity known for this host ({host})")
    programs = [Path(sys.executable).resolve(), Path("/bin/sh").resolve()]
    for program in programs:
        start = program.read_bytes()[:20]
        assert start[:8] == headers[0][:8] and start[16:] in {h[16:] for h in headers}, program


def _binfmt_dir(tmp_path: Path, status: str = "enabled", **texts: str) -> Path:
    where = tmp_path / "binfmt_misc"
    where.mkdir(parents=True)
    (where / "status").write_text(status + "\n")
    (where / "register").write_text("")
    for name, text in texts.items():
        (where / name.replace("_", "-")).write_text(text)
    return where


def test_reader_and_reasons_over_a_handler_directory(tmp_path: Path) -> None:
    where = _binfmt_dir(tmp_path, qemu_aarch64=AARCH64, qemu_arm=ARM, jar=JAR)
    handlers = read_handlers(where)
    assert handlers is not None and sorted(h.name for h in handlers) == [
        "jar", "qemu-aarch64", "qemu-arm"]
    assert emulator_for("arm64", "v8", binfmt_dir=where) == \
        "binfmt_misc qemu-aarch64: /usr/libexec/qemu-binfmt/aarch64-binfmt-P"
    assert emulator_for("arm", "v7", binfmt_dir=where) == \
        "binfmt_misc qemu-arm: /usr/libexec/qemu-binfmt/arm-binfmt-P"
    assert emulator_for("s390x", binfmt_dir=where) is None
    assert no_emulator_reason("s390x", binfmt_dir=where) == \
        "no binfmt_misc handler with the F flag for s390x; install qemu-user-static"
    assert emulation_note("arm64", "amd64", binfmt_dir=where) == (
        "maintainer scripts ran under emulation "
        "(binfmt_misc qemu-aarch64: /usr/libexec/qemu-binfmt/aarch64-binfmt-P)")
    assert emulation_note("amd64", "amd64", binfmt_dir=where) is None
    assert emulation_note("s390x", "amd64", binfmt_dir=where) is None

    no_f = _binfmt_dir(tmp_path / "a", qemu_aarch64=AARCH64.replace("flags: PF", "flags: P"))
    assert emulator_for("arm64", binfmt_dir=no_f) is None
    assert no_emulator_reason("arm64", binfmt_dir=no_f) == (
        "the binfmt_misc handler qemu-aarch64 for arm64 lacks the F flag; register it with "
        "F (install qemu-user-static)")
    off = _binfmt_dir(tmp_path / "b", qemu_aarch64=AARCH64.replace("enabled", "disabled", 1))
    assert "qemu-aarch64 for arm64 is disabled" in no_emulator_reason("arm64", binfmt_dir=off)

    # binfmt_misc off as a whole, or not mounted: nothing runs.
    all_off = _binfmt_dir(tmp_path / "c", status="disabled", qemu_aarch64=AARCH64)
    assert read_handlers(all_off) is None and emulator_for("arm64", binfmt_dir=all_off) is None
    missing = tmp_path / "not-mounted"
    assert read_handlers(missing) is None
    assert no_emulator_reason("arm64", binfmt_dir=missing) == (
        f"no binfmt_misc handler with the F flag for arm64 (binfmt_misc is not mounted or "
        f"not enabled at {missing}); install qemu-user-static")
    assert no_emulator_reason("sparc") == "no emulation known for sparc"


def _foreign() -> str:
    return "s390x" if host_architecture() != "s390x" else "arm64"


def test_preflight_runs_a_foreign_image_only_with_a_handler(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arch = _foreign()
    image = make_image([], platform=f"linux/{arch}")
    assert image.platform == Platform("linux", arch)
    empty = _binfmt_dir(tmp_path / "empty")
    monkeypatch.setattr(emulation, "BINFMT_MISC", empty)
    assert preflight(image, "auto") == (None, (
        f"image architecture {arch} differs from host {host_architecture()}: no binfmt_misc "
        f"handler with the F flag for {arch}; install qemu-user-static"))
    assert preflight(image, "none") == (None, "scripts disabled")
    texts = {"qemu-s390x": S390X, "qemu-aarch64": AARCH64}
    monkeypatch.setattr(emulation, "BINFMT_MISC", _binfmt_dir(tmp_path / "full", **texts))
    assert preflight(image, "auto") == choose_sandbox("auto", quiet=True)
