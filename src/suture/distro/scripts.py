"""What a package family asks to have run after its files are unpacked.

Families do not run anything: they describe maintainer-script work as
:class:`ScriptJob` values, in order, and the patch stage runs them in a sandbox
over the image root when it can, or reports each one it could not run.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScriptJob:
    """One script invocation, as the package manager would make it.

    ``path`` is where the script lives in the patched root (for dpkg,
    ``var/lib/dpkg/info/<pkg>.postinst``), ``args`` its arguments (for example
    ``("configure", "<old version>")`` or ``("triggered", "ldconfig")``).
    ``interpreter`` is what runs it (``/bin/sh`` unless its ``#!`` says otherwise).
    """

    package: str
    script: str  # preinst | postinst | prerm | postrm | triggered
    path: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        args = self.args[1:] if self.args[:1] == (self.script,) else self.args
        return f"{self.package} {self.script} {' '.join(args)}".strip()
