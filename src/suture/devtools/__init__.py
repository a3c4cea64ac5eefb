"""Building test and demo images without a container engine; and what its
``python -m suture.devtools.<name>`` commands share: how they take arguments and
how they answer."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from suture.errors import SutureError


def command_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The argument parser of ``python -m suture.devtools.<name>``, described by the
    first paragraph of ``doc`` (the module's docstring)."""
    return argparse.ArgumentParser(prog=f"python -m suture.devtools.{name}",
                                   description=doc.split("\n\n")[0] if doc else None)


def comma_list(text: str) -> list[str]:
    """The names of a comma-separated option, empty ones left out."""
    return [p for p in text.split(",") if p]


def run_build(name: str, dest: str, build: Callable[[], str]) -> int:
    """Run ``build`` (it writes an image to ``dest`` and returns its digest) as a
    command: ``DEST DIGEST`` on stdout and 0, or ``NAME: error: ...`` on stderr and 1
    when it raises :class:`SutureError`."""
    try:
        digest = build()
    except SutureError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    print(f"{dest} {digest}")
    return 0
