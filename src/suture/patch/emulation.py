"""Running programs of another architecture than the host's (for maintainer scripts).

:func:`emulator_for` says whether programs of an image's architecture can run
here. Today only the host's own architecture can: every other answer is None.
"""

from __future__ import annotations


def emulator_for(architecture: str, variant: str | None = None) -> str | None:
    """How programs of ``architecture`` run here, or None when they cannot."""
    del architecture, variant
    return None
