"""Shared test configuration. Fixture modules live in tests/fixtures/ and are loaded here.

Under CI (the environment variable ``CI`` is ``true``, as CI runners set it) a test
that skips fails instead, unless its skip reason is one of :data:`CI_EXPECTED_SKIPS`:
a skip there means an oracle did not run, and a green run must not hide that.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator
from pathlib import Path

import pytest

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}"
    for p in (Path(__file__).parent / "fixtures").glob("*.py")
    if p.stem != "__init__"
)

# Skip reasons (regular expressions matching the whole reason) CI accepts, and why.
CI_EXPECTED_SKIPS: dict[str, str] = {
    r"no apk-tools [23] \(set SUTURE_TEST_APK[23] to an apk binary\)":
        "Debian 12, the CI host, packages no apk-tools; the apk oracle tests run where "
        "SUTURE_TEST_APK2/3 name real apk binaries (apk behaviour is otherwise checked "
        "against fixtures built to the published format)",
}


def skip_reason(report: pytest.TestReport) -> str:
    """The reason a skipped test gave (``pytest.skip(reason)`` or a ``skipif`` mark)."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def unexpected_skip(report: pytest.TestReport) -> str | None:
    """Why ``report`` must fail under CI: it skipped for a reason not in
    :data:`CI_EXPECTED_SKIPS` (an ``xfail`` is not a skip). None otherwise."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return None
    reason = skip_reason(report)
    if any(re.fullmatch(pattern, reason) for pattern in CI_EXPECTED_SKIPS):
        return None
    return (f"skipped under CI=true for a reason not in CI_EXPECTED_SKIPS "
            f"(tests/conftest.py): {reason}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if os.environ.get("CI") == "true" and (message := unexpected_skip(report)) is not None:
        report.outcome = "failed"
        report.longrepr = message
    return report
