"""Scanner plugins: a real executable ``copa-NAME`` on a search path of the test's own."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from suture.reports import ReportError, parse_report, plugin_executable, run_plugin

DATA = Path(__file__).resolve().parents[1] / "data" / "reports"


def plugin(bin_dir: Path, body: str, name: str = "fake") -> Path:
    """Write an executable shell script ``copa-NAME`` into ``bin_dir``."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / f"copa-{name}"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


@pytest.fixture
def report_file(tmp_path: Path) -> Path:
    """The scanner's own report the plugin is handed (any file; plugins parse it)."""
    path = tmp_path / "scan.json"
    path.write_bytes((DATA / "grype-debian.json").read_bytes())
    return path


def run(bin_dir: Path, report: Path, name: str = "fake", timeout: float | None = 30,
        **kw: int) -> bytes:
    return run_plugin(name, report, search_path=str(bin_dir), timeout=timeout, **kw)


def error(bin_dir: Path, report: Path, name: str = "fake", timeout: float | None = 30,
          **kw: int) -> ReportError:
    with pytest.raises(ReportError) as info:
        run(bin_dir, report, name, timeout, **kw)
    assert "\n" not in str(info.value)
    return info.value


@pytest.mark.parametrize("document", ["v1alpha1-debian.json", "v1alpha2-alpine.json"])
def test_plugin_output_is_read_as_native(tmp_path: Path, report_file: Path,
                                         document: str) -> None:
    # The plugin checks it was handed the report, writes chatter to stderr (which copa
    # would mix into the document) and prints its converted document on stdout.
    bin_dir = tmp_path / "bin"
    plugin(bin_dir, f"""
test "$#" -eq 1 || exit 64
grep -q '"matches"' "$1" || exit 65
echo "converting $1" >&2
cat '{DATA / document}'
""")
    data = run(bin_dir, report_file)
    assert data == (DATA / document).read_bytes()
    report = parse_report(data, "native")
    assert report == parse_report((DATA / document).read_bytes())
    assert report.scanner == "native" and report.os_findings()


def test_plugin_is_looked_up_on_the_search_path_only(tmp_path: Path,
                                                     report_file: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    plugin(second, f"cat '{DATA / 'v1alpha1-alpine.json'}'\n")
    plugin(first, f"cat '{DATA / 'v1alpha1-debian.json'}'\n")
    search = os.pathsep.join([str(first), str(second)])
    assert plugin_executable("fake", search) == first / "copa-fake"
    data = run_plugin("fake", report_file, search_path=search, timeout=30)
    assert parse_report(data).os_family == "debian"


def test_missing_plugin(tmp_path: Path, report_file: Path) -> None:
    (tmp_path / "bin").mkdir()
    exc = error(tmp_path / "bin", report_file, "nothere")
    assert str(exc) == "scanner plugin copa-nothere not found on PATH"
    assert exc.hint is not None and "copa-nothere" in exc.hint


def test_plugin_that_is_not_executable_is_missing(tmp_path: Path, report_file: Path) -> None:
    path = plugin(tmp_path / "bin", "exit 0\n")
    path.chmod(0o644)
    assert str(error(tmp_path / "bin", report_file)) == (
        "scanner plugin copa-fake not found on PATH")


@pytest.mark.parametrize("name", ["../fake", "-x", "a b", "", "fake/x"])
def test_invalid_plugin_name(tmp_path: Path, report_file: Path, name: str) -> None:
    plugin(tmp_path / "bin", "exit 0\n")
    assert str(error(tmp_path / "bin", report_file, name)).startswith(
        f"invalid scanner name {name!r}")


def test_plugin_exit_status_and_last_stderr_line(tmp_path: Path, report_file: Path) -> None:
    plugin(tmp_path / "bin", """
echo '{"apiVersion": "v1alpha1"'
echo "reading $1" >&2
echo "error: unsupported report format" >&2
printf '\\n  \\n' >&2
exit 3
""")
    assert str(error(tmp_path / "bin", report_file)) == (
        "scanner plugin copa-fake failed with exit status 3: error: unsupported report format")


def test_plugin_exit_without_stderr(tmp_path: Path, report_file: Path) -> None:
    plugin(tmp_path / "bin", "exit 1\n")
    assert str(error(tmp_path / "bin", report_file)) == (
        "scanner plugin copa-fake failed with exit status 1")


def test_plugin_killed_by_a_signal(tmp_path: Path, report_file: Path) -> None:
    plugin(tmp_path / "bin", "echo 'about to crash' >&2\nkill -SEGV $$\n")
    assert str(error(tmp_path / "bin", report_file)) == (
        "scanner plugin copa-fake was killed by signal 11: about to crash")


@pytest.mark.parametrize(("output", "says"), [
    ("", "scanner plugin copa-fake output is empty"),
    ("Usage: copa-fake REPORT", "scanner plugin copa-fake output is not valid JSON: "
                                "Expecting value at line 1 column 1"),
    ('{"apiVersion": "v1alpha1", "metadata": {', "scanner plugin copa-fake output is not "
                                                "valid JSON: it ends early"),
    (None, "scanner plugin copa-fake: not a copa v1alpha1/v1alpha2 document: it looks like a "
           "Trivy JSON report (SchemaVersion 2)"),
    ('{"apiVersion": "v1beta1", "metadata": {}}', "scanner plugin copa-fake: unsupported "
                                                  "apiVersion 'v1beta1'"),
    ('{"apiVersion": "v1alpha1", "metadata": {"os": {}}, "updates": []}',
     "scanner plugin copa-fake: copa v1alpha1 document has no metadata.os.type"),
])
def test_plugin_output_that_is_not_a_copa_document(tmp_path: Path, report_file: Path,
                                                   output: str | None, says: str) -> None:
    if output is None:
        body = f"cat '{DATA / 'trivy-debian.json'}'\n"
    else:
        body = f"printf '%s' '{output}'\n"
    plugin(tmp_path / "bin", body)
    assert str(error(tmp_path / "bin", report_file)).startswith(says)


def test_plugin_timeout_ends_it_and_its_children(tmp_path: Path, report_file: Path) -> None:
    marker = tmp_path / "child-survived"
    plugin(tmp_path / "bin", f"""
echo started >&2
(sleep 3; touch '{marker}') &
sleep 60
""")
    started = time.monotonic()
    assert str(error(tmp_path / "bin", report_file, timeout=0.5)) == (
        "scanner plugin copa-fake timed out after 0.5 s")
    assert time.monotonic() - started < 10
    time.sleep(3.5)
    assert not marker.exists()  # the background child was ended with the plugin


def test_plugin_output_is_bounded(tmp_path: Path, report_file: Path) -> None:
    plugin(tmp_path / "bin", "while :; do echo xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; done\n")
    started = time.monotonic()
    assert str(error(tmp_path / "bin", report_file, timeout=60, max_output=100_000)) == (
        "scanner plugin copa-fake printed more than 100000 bytes")
    assert time.monotonic() - started < 10


def test_plugin_stderr_flood_does_not_block(tmp_path: Path, report_file: Path) -> None:
    plugin(tmp_path / "bin", f"""
i=0
while [ $i -lt 20000 ]; do echo "noise line $i" >&2; i=$((i+1)); done
cat '{DATA / 'v1alpha2-debian.json'}'
""")
    assert parse_report(run(tmp_path / "bin", report_file), "native").os_family == "debian"


def test_report_file_must_exist(tmp_path: Path) -> None:
    plugin(tmp_path / "bin", "exit 0\n")
    exc = error(tmp_path / "bin", tmp_path / "missing.json")
    assert str(exc) == f"report {tmp_path / 'missing.json'}: no such file"


def test_no_search_path_means_the_default_path(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="copa-suture-test-none not found"):
        plugin_executable("suture-test-none", None)
