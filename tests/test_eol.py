"""End of life: suture's offline table, an endoflife.date-compatible API served here on
127.0.0.1, and the CLI's warning, result-JSON field and ``--exit-on-eol``."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from suture.eol import check_eol, load_table, release_of
from tests.fixtures.aptrepo import AptRepo, GpgKeys
from tests.fixtures.eolapi import EolApi
from tests.fixtures.patchimages import (
    Archive,
    debian_os_release,
    error_line,
    layout_state,
    make_root,
    suture,
    write_image,
)

# Every family suture patches, as its os-release ID and a release of it.
FAMILIES = [("debian", "12"), ("ubuntu", "24.04"), ("alpine", "3.20.3"),
            ("wolfi", "20230201"), ("rhel", "9.4"), ("rocky", "9.3"), ("almalinux", "9.4"),
            ("ol", "9.3"), ("amzn", "2023"), ("fedora", "40"), ("azurelinux", "3.0")]


def test_the_table_names_its_source_and_date() -> None:
    table = load_table()
    assert "endoflife.date" in table["source"]
    datetime.date.fromisoformat(table["retrieved"])
    for product, releases in table["products"].items():
        for release, entry in releases.items():
            assert entry["eol"] is None or datetime.date.fromisoformat(entry["eol"]), (
                product, release)


@pytest.mark.parametrize(("family", "version"), FAMILIES)
def test_every_family_suture_patches_is_in_the_table(family: str, version: str) -> None:
    status = check_eol(family, version, today=datetime.date(2026, 1, 1))
    assert status is not None, family
    assert status.source == "table"
    if family == "wolfi":
        assert (status.release, status.eol, status.is_eol) == ("rolling", None, False)
    else:
        assert status.eol is not None


def test_release_names_as_endoflife_date_has_them() -> None:
    assert release_of("debian", "11.8") == ("debian", "11")
    assert release_of("debian", "bookworm") == ("debian", "12")
    assert release_of("ubuntu", "22.04") == ("ubuntu", "22.04")
    assert release_of("alpine", "3.18.4") == ("alpine-linux", "3.18")
    assert release_of("redhat", "8.10") == ("rhel", "8")
    assert release_of("amazon", "2") == ("amazon-linux", "2")
    assert release_of("cbl-mariner", "2.0.20240123") == ("cbl-mariner", "2")
    assert release_of("sles", "15.5") == ("sles", "15.5")  # service packs are releases
    assert release_of("opensuse.leap", "15.6") == ("opensuse", "15.6")
    assert release_of("opensuse-tumbleweed", "20241201") == ("opensuse-tumbleweed", "rolling")
    assert release_of("photon", "5.0") is None
    assert check_eol("photon", "5.0") is None
    assert check_eol("debian", "99") is None


def test_the_date_decides() -> None:
    """Debian 11's regular security support ended 2024-08-14 (endoflife.date)."""
    before = check_eol("debian", "11", today=datetime.date(2024, 8, 13))
    on = check_eol("debian", "11", today=datetime.date(2024, 8, 14))
    assert before is not None and on is not None
    assert (before.is_eol, on.is_eol) == (False, True)
    assert on.eol == datetime.date(2024, 8, 14)
    assert on.extended == datetime.date(2026, 8, 31)
    assert "debian 11 reached its end of life on 2024-08-14" in on.warning()


# --- an endoflife.date-compatible API on 127.0.0.1 --------------------------------------


def _answer(is_eol: bool, eol: str, maintained: bool = True) -> dict[str, Any]:
    return {"schema_version": "1.2.0", "result": {"name": "x", "isEol": is_eol,
                                                  "eolFrom": eol, "isMaintained": maintained}}


def test_the_api_answers_over_the_table(eol_api: EolApi) -> None:
    eol_api.answers["/api/v1/products/debian/releases/12"] = (200, _answer(False, "2030-01-01"))
    eol_api.answers["/api/v1/products/alpine-linux/releases/3.21"] = (
        200, _answer(False, "2026-11-01", maintained=False))
    status = check_eol("debian", "12.8", api_url=eol_api.url + "/",
                       today=datetime.date(2027, 1, 1))
    assert status is not None
    assert (status.is_eol, status.eol, status.source) == (
        False, datetime.date(2030, 1, 1), eol_api.url)
    assert eol_api.requests[-1] == ("/api/v1/products/debian/releases/12", "suture")
    # Not maintained counts as end of life, as copa reads the API.
    alpine = check_eol("alpine", "3.21.2", api_url=eol_api.url, today=datetime.date(2026, 1, 1))
    assert alpine is not None and alpine.is_eol
    # A release the API does not know is not reported (404), whatever the table says.
    assert check_eol("debian", "11", api_url=eol_api.url) is None


def test_an_api_that_fails_falls_back_to_the_table(eol_api: EolApi,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    eol_api.answers["/api/v1/products/debian/releases/11"] = (500, {"message": "down"})
    eol_api.answers["/api/v1/products/debian/releases/12"] = (200, b"<html>not json")
    for version in ("11", "12"):
        status = check_eol("debian", version, api_url=eol_api.url,
                           today=datetime.date(2027, 1, 1))
        assert status is not None and status.source == "table" and status.is_eol
    assert sum("using suture's table" in r.getMessage() for r in caplog.records) == 2
    unreachable = check_eol("debian", "12", api_url="http://127.0.0.1:9/api/v1/products",
                            today=datetime.date(2027, 1, 1), timeout=2)
    assert unreachable is not None and unreachable.source == "table"


def test_update_eol_rewrites_the_table_from_the_api(eol_api: EolApi, tmp_path: Path) -> None:
    """scripts/update-eol asks the API for every product of the table and writes the
    table it answers, dated; a product the API lacks leaves the file unwritten."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "update-eol"
    products = sorted(load_table()["products"])
    out = tmp_path / "eol.json"
    proc = subprocess.run([sys.executable, str(script), eol_api.url, str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "HTTP Error 404" in proc.stderr
    assert not out.exists()
    for product in products:
        eol_api.answers[f"/api/v1/products/{product}"] = (200, {"result": {"releases": [
            {"name": "1", "eolFrom": "2020-01-01", "eoesFrom": "2022-01-01"},
            {"name": "2", "eolFrom": None}]}})
    proc = subprocess.run([sys.executable, str(script), eol_api.url, str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    table = json.loads(out.read_text())
    assert table["retrieved"] == datetime.datetime.now(datetime.UTC).date().isoformat()
    assert sorted(table["products"]) == products
    assert table["products"]["debian"] == {"1": {"eol": "2020-01-01", "extended": "2022-01-01"},
                                           "2": {"eol": None}}
    assert {p for p, _ in eol_api.requests} == {f"/api/v1/products/{p}" for p in products}


# --- the CLI ------------------------------------------------------------------------------


def _image(apt_repo: AptRepo, gpg_keys: GpgKeys, tmp: Path, codename: str,
           version: str) -> tuple[Archive, str]:
    archive = Archive.create(apt_repo, gpg_keys.good, tmp, codename)
    v1 = archive.add(codename, "a", "1.0-1")
    archive.add(f"{codename}-security", "a", "2.0-1")
    archive.publish()
    root = make_root(tmp / "root", [v1], debian_os_release(codename, version),
                     sources={"etc/apt/sources.list":
                              f"deb http://deb.debian.org/debian {codename} main\n"},
                     keyring=archive.key_asc())
    return archive, write_image(root, tmp, "v1")


def _patch(archive: Archive, tmp: Path, ref: str, *args: str) -> tuple[Any, Any]:
    result = tmp / "result.json"
    result.unlink(missing_ok=True)
    proc = suture("patch", "-i", ref, "--cache-dir", str(tmp / "cache"), "--no-host-keyrings",
                  *archive.mirror_args(), "--result", str(result), *args)
    return proc, (json.loads(result.read_text()) if result.exists() else None)


@pytest.mark.tools
def test_cli_warns_records_and_exits_on_eol(apt_repo: AptRepo, gpg_keys: GpgKeys,
                                            tmp_path: Path, eol_api: EolApi) -> None:
    """Debian 11 (past its end of life on any date this test runs): a warning and the
    result's ``eol``; with --exit-on-eol one error line and nothing written; an API
    that says the release is maintained lets --exit-on-eol pass."""
    archive, ref = _image(apt_repo, gpg_keys, tmp_path, "bullseye", "11")
    layout = tmp_path / "layout"
    before = layout_state(layout)
    proc, doc = _patch(archive, tmp_path, ref, "--exit-on-eol")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = error_line(proc)
    assert "debian 11 reached its end of life on 2024-08-14" in line
    assert "--exit-on-eol" in line
    assert doc is None and layout_state(layout) == before

    proc, doc = _patch(archive, tmp_path, ref, "-t", "warned")
    assert proc.returncode == 0, proc.stderr
    assert ("suture: linux/amd64: warning: debian 11 reached its end of life on 2024-08-14"
            in proc.stderr)
    [platform] = doc["platforms"]
    assert platform["status"] == "patched"
    assert platform["eol"] == {"product": "debian", "release": "11", "eol": "2024-08-14",
                               "isEol": True, "extendedSupport": "2026-08-31",
                               "source": "table"}

    eol_api.answers["/api/v1/products/debian/releases/11"] = (200, _answer(False, "2099-01-01"))
    proc, doc = _patch(archive, tmp_path, ref, "-t", "api", "--exit-on-eol",
                       "--eol-api-url", eol_api.url)
    assert proc.returncode == 0, proc.stderr
    assert "end of life" not in proc.stderr
    assert doc["platforms"][0]["eol"]["source"] == eol_api.url
    assert doc["platforms"][0]["eol"]["isEol"] is False
