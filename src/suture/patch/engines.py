"""The package-family engines, registered in one tuple (as :mod:`suture.distro.detect`
registers families for detection). A new family is one engine class and one line
here; the core never branches on the family. The seam itself is
:mod:`suture.patch.engine`."""

from __future__ import annotations

from collections.abc import Iterable

from suture.errors import SutureError
from suture.patch.apk import ApkEngine
from suture.patch.dpkg import DpkgEngine
from suture.patch.engine import (
    Build,
    Engine,
    Prefetch,
    Prepared,
    fetch_parallel,
    package_fetcher,
)
from suture.patch.rpm import RpmEngine

__all__ = ["ENGINES", "Build", "Engine", "Prefetch", "Prepared", "all_engines", "engine_for",
           "fetch_parallel", "package_fetcher", "wants_data"]

ENGINES: tuple[type[Engine], ...] = (DpkgEngine, ApkEngine, RpmEngine)


def wants_data(path: str) -> bool:
    """Whether any engine needs the contents of ``path`` from the tree read."""
    return any(path.startswith(engine.data_prefixes) for engine in ENGINES)


def all_engines() -> list[Engine]:
    """One new instance of every engine."""
    return [engine() for engine in ENGINES]


def engine_for(family: str, engines: Iterable[Engine] = ()) -> Engine:
    """The engine of ``family``: the one among ``engines`` (instances made earlier, to
    keep what their ``prefetch`` started), else a new one."""
    for made in engines:
        if made.family == family:
            return made
    for engine in ENGINES:
        if engine.family == family:
            return engine()
    known = ", ".join(engine.family for engine in ENGINES)
    raise SutureError(f"patching {family} images is not supported yet",
                      hint=f"suture patches images of these package families today: {known}")

