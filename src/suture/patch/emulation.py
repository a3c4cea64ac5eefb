"""Running programs of another architecture than the host's (for maintainer scripts).

:func:`emulator_for` says whether programs of an image's architecture can run
here, and how: through a Linux ``binfmt_misc`` handler (Debian's
``qemu-user-static`` registers one per architecture) that

* is enabled (and ``binfmt_misc`` as a whole is),
* recognises that architecture's ELF programs by their header: its magic and
  mask match the ELF class, byte order and ``e_machine`` of the architecture,
  for both executables and position-independent ones (``ET_EXEC``,
  ``ET_DYN``), and
* has the ``F`` (fix-binary) flag: the kernel opened the interpreter when the
  handler was registered, so it also runs programs inside a chroot or a
  bubblewrap root that does not contain the interpreter.

Only the scripts are emulated: suture unpacks packages and writes the package
database natively, whatever the image's architecture.

:func:`parse_handler` (the text of one handler file) and :func:`find_handler`
are pure; :func:`read_handlers` reads ``/proc/sys/fs/binfmt_misc`` (or the
directory given) and adds no logic of its own. Variants of an architecture
(``arm/v6``, ``arm/v7``) share one ELF machine and one handler.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

BINFMT_MISC = Path("/proc/sys/fs/binfmt_misc")
_MAX_HANDLER = 4096  # one handler file: a few short lines

# OCI architecture -> (ELF class: 1 = 32-bit, 2 = 64-bit; data: 1 = little-endian,
# 2 = big-endian; e_machine).
ELF_IDENTITY: dict[str, tuple[int, int, int]] = {
    "amd64": (2, 1, 0x3E),
    "386": (1, 1, 0x03),
    "arm64": (2, 1, 0xB7),
    "arm": (1, 1, 0x28),
    "ppc64le": (2, 1, 0x15),
    "ppc64": (2, 2, 0x15),
    "s390x": (2, 2, 0x16),
    "riscv64": (2, 1, 0xF3),
    "mips64le": (2, 1, 0x08),
    "mips64": (2, 2, 0x08),
    "mipsle": (1, 1, 0x08),
    "mips": (1, 2, 0x08),
    "loong64": (2, 1, 0x102),
}
_ET_EXEC, _ET_DYN = 2, 3


@dataclass(frozen=True)
class Handler:
    """One ``binfmt_misc`` handler as the kernel shows it.

    ``magic`` and ``mask`` are None for a handler that recognises files by their
    name's extension; ``mask`` is None too for a magic handler without one (every
    bit counts). ``flags`` are the kernel's letters (``P``, ``O``, ``C``, ``F``).
    """

    name: str
    enabled: bool
    interpreter: str
    flags: str
    offset: int = 0
    magic: bytes | None = None
    mask: bytes | None = None

    def matches(self, header: bytes) -> bool:
        """Whether the kernel would hand a file starting with ``header`` to this
        handler (a magic reaching past ``header`` where its mask has bits: no)."""
        if self.magic is None:
            return False
        mask = self.mask if self.mask is not None else b"\xff" * len(self.magic)
        for i, (want, bits) in enumerate(zip(self.magic, mask, strict=False)):
            if not bits:
                continue
            at = self.offset + i
            if at >= len(header) or (header[at] ^ want) & bits:
                return False
        return True

    def describe(self) -> str:
        """What runs the programs, e.g. ``binfmt_misc qemu-aarch64:
        /usr/libexec/qemu-binfmt/aarch64-binfmt-P``."""
        return f"binfmt_misc {self.name}: {self.interpreter}"


def parse_handler(name: str, text: str) -> Handler | None:
    """A handler from the text of its file under ``binfmt_misc`` (``enabled``,
    ``interpreter PATH``, ``flags: LETTERS``, ``offset N``, ``magic HEX``, ``mask HEX``
    or ``extension .EXT``), or None when the text is not one (``register``,
    ``status`` or something unreadable)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] not in ("enabled", "disabled"):
        return None
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if line.startswith("flags:"):
            fields["flags"] = line[len("flags:"):].strip()
            continue
        key, _, value = line.partition(" ")
        fields[key] = value.strip()
    if "interpreter" not in fields:
        return None
    try:
        offset = int(fields.get("offset", "0"))
        magic = bytes.fromhex(fields["magic"]) if "magic" in fields else None
        mask = bytes.fromhex(fields["mask"]) if "mask" in fields else None
    except ValueError:
        return None
    if magic is None and "extension" not in fields:
        return None
    return Handler(name, lines[0] == "enabled", fields["interpreter"],
                   fields.get("flags", ""), offset, magic, mask)


def elf_headers(architecture: str) -> tuple[bytes, ...] | None:
    """The first 20 bytes of ``architecture``'s ELF programs (an executable and a
    position-independent one), or None for an architecture not known here."""
    identity = ELF_IDENTITY.get(architecture)
    if identity is None:
        return None
    elf_class, data, machine = identity
    order: Literal["little", "big"] = "little" if data == 1 else "big"
    ident = b"\x7fELF" + bytes([elf_class, data, 1]) + bytes(9)
    return tuple(ident + kind.to_bytes(2, order) + machine.to_bytes(2, order)
                 for kind in (_ET_EXEC, _ET_DYN))


def find_handler(architecture: str, handlers: Iterable[Handler]) -> Handler | None:
    """The first (by name) enabled handler with the ``F`` flag that takes every program
    of ``architecture``, or None."""
    headers = elf_headers(architecture)
    if headers is None:
        return None
    for handler in sorted(handlers, key=lambda h: h.name):
        if handler.enabled and "F" in handler.flags and all(
                handler.matches(h) for h in headers):
            return handler
    return None


def read_handlers(binfmt_dir: Path | None = None) -> list[Handler] | None:
    """The handlers registered under ``binfmt_dir`` (default :data:`BINFMT_MISC`), or
    None when ``binfmt_misc`` is not mounted there or is disabled as a whole."""
    where = BINFMT_MISC if binfmt_dir is None else binfmt_dir
    try:
        status = (where / "status").read_text()[:64].strip()
        names = sorted(p.name for p in where.iterdir())
    except OSError:
        return None
    if status != "enabled":
        return None
    handlers = []
    for name in names:
        if name in ("register", "status"):
            continue
        try:
            with (where / name).open() as fh:
                text = fh.read(_MAX_HANDLER)
        except (OSError, UnicodeDecodeError) as exc:
            log.debug("binfmt_misc handler %s not read: %s", name, exc)
            continue
        handler = parse_handler(name, text)
        if handler is not None:
            handlers.append(handler)
    return handlers


def emulator_for(architecture: str, variant: str | None = None, *,
                 binfmt_dir: Path | None = None) -> str | None:
    """How programs of ``architecture`` run here (the handler and its interpreter, e.g.
    ``binfmt_misc qemu-aarch64: /usr/libexec/qemu-binfmt/aarch64-binfmt-P``), or None when no
    ``binfmt_misc`` handler under ``binfmt_dir`` (default :data:`BINFMT_MISC`) runs
    them in a root without the interpreter. ``variant`` does not matter (one ELF
    machine per architecture)."""
    del variant
    handlers = read_handlers(binfmt_dir)
    found = find_handler(architecture, handlers or ())
    return found.describe() if found is not None else None


def no_emulator_reason(architecture: str, *, binfmt_dir: Path | None = None) -> str:
    """What is missing for :func:`emulator_for` to find a way to run ``architecture``'s
    programs here, as one phrase."""
    if architecture not in ELF_IDENTITY:
        return f"no emulation known for {architecture}"
    where = BINFMT_MISC if binfmt_dir is None else binfmt_dir
    handlers = read_handlers(binfmt_dir)
    if handlers is None:
        return (f"no binfmt_misc handler with the F flag for {architecture} (binfmt_misc "
                f"is not mounted or not enabled at {where}); install qemu-user-static")
    headers = elf_headers(architecture) or ()
    for handler in sorted(handlers, key=lambda h: h.name):
        if all(handler.matches(h) for h in headers):
            if not handler.enabled:
                return (f"the binfmt_misc handler {handler.name} for {architecture} is "
                        "disabled; enable it with the F flag (update-binfmts --enable)")
            if "F" not in handler.flags:
                return (f"the binfmt_misc handler {handler.name} for {architecture} lacks "
                        "the F flag; register it with F (install qemu-user-static)")
    return (f"no binfmt_misc handler with the F flag for {architecture}; "
            "install qemu-user-static")


def emulation_note(architecture: str, host: str, *, binfmt_dir: Path | None = None
                   ) -> str | None:
    """The result note for scripts of ``architecture`` run on a ``host`` of another
    architecture (None when they are the same, or when nothing emulates it)."""
    if architecture == host:
        return None
    how = emulator_for(architecture, binfmt_dir=binfmt_dir)
    return None if how is None else f"maintainer scripts ran under emulation ({how})"
