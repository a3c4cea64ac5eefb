"""Helpers shared by the benchmark scripts (imported as a sibling module when a script runs)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def measured_suture() -> str:
    """Which suture is measured: its source directory, and the git commit when that is a
    checkout (``+dirty`` with uncommitted changes under src/)."""
    import importlib.util

    spec = importlib.util.find_spec("suture")
    where = Path(spec.origin).parent if spec is not None and spec.origin else Path("?")
    git = ["git", "-C", str(where)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False)
    if head.returncode != 0:
        return f"suture from {where} (not a git checkout)"
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "."], capture_output=True,
                           text=True, check=False).stdout.strip()
    return f"suture from {where} at {head.stdout.strip()}{'+dirty' if dirty else ''}"
