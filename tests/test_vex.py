"""OpenVEX output: valid against the official schema (vendored in tests/data), date-times
checked, one statement per vulnerability, products and subcomponents as package URLs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from suture.plan import Update
from suture.vex import VexProduct, build_openvex, deb_purl, oci_purl, vex_subcomponents

SCHEMA = json.loads((Path(__file__).parent / "data" / "openvex_json_schema.json").read_text())


def validate_openvex(doc: Any) -> None:
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    assert "date-time" in checker.checkers  # rfc3339-validator is installed
    jsonschema.validate(doc, SCHEMA, format_checker=checker)


def _update(name: str, version: str, *vulns: str) -> Update:
    return Update(name, "amd64", "1.0", version, name, "report", tuple(vulns))


def test_document_is_valid_and_grouped_by_vulnerability() -> None:
    amd = VexProduct(oci_purl("app", "sha256:" + "a" * 64,
                              repository_url="registry.example/team/app", arch="amd64"),
                     (_update("openssl", "3.0.13-1~deb12u1", "CVE-2024-1", "CVE-2024-2"),
                      _update("libssl3", "3.0.13-1~deb12u1", "CVE-2024-1"),
                      _update("tzdata", "2026f-0+deb12u1")),
                     "debian", "debian-12")
    doc = build_openvex([amd], author="ci@example", timestamp="2026-11-25T10:00:00Z",
                        tooling="suture test")
    validate_openvex(doc)
    assert doc["@context"] == "https://openvex.dev/ns/v0.2.0"
    statements: list[dict[str, Any]] = doc["statements"]  # type: ignore[assignment]
    assert [s["vulnerability"]["name"] for s in statements] == ["CVE-2024-1", "CVE-2024-2"]
    assert all(s["status"] == "fixed" for s in statements)
    first = statements[0]["products"][0]
    assert first["@id"] == ("pkg:oci/app@sha256%3A" + "a" * 64 +
                            "?arch=amd64&repository_url=registry.example/team/app")
    assert [s["@id"] for s in first["subcomponents"]] == [
        "pkg:deb/debian/libssl3@3.0.13-1~deb12u1?arch=amd64",
        "pkg:deb/debian/openssl@3.0.13-1~deb12u1?arch=amd64"]
    again = build_openvex([amd], author="ci@example", timestamp="2026-11-25T10:00:00Z",
                          tooling="suture test")
    assert again == doc


def test_purl_encoding() -> None:
    update = Update("libfoo+bar", "amd64", None, "1:2.0+dfsg-1", "foo", "dependency")
    assert deb_purl(update, "debian", "debian-12") == (
        "pkg:deb/debian/libfoo%2Bbar@1%3A2.0%2Bdfsg-1?arch=amd64&distro=debian-12")


def test_subcomponents_match_trivys_and_syfts_package_purls() -> None:
    """No ``distro`` qualifier on deb and apk subcomponents (Trivy writes ``debian-12.15``,
    Syft ``debian-12``; a statement's qualifiers must all be in the scanned purl), and a
    deb epoch both in the version (Syft) and as Trivy's ``epoch`` qualifier."""
    zlib = Update("zlib1g", "amd64", "1:1.2.13.dfsg-1", "1:1.2.13.dfsg-1+deb12u1", "zlib",
                  "report", ("CVE-2026-1",))
    deb = VexProduct("pkg:oci/x", (zlib,), "debian", "debian-12")
    assert vex_subcomponents(zlib, deb) == (
        "pkg:deb/debian/zlib1g@1%3A1.2.13.dfsg-1%2Bdeb12u1?arch=amd64",
        "pkg:deb/debian/zlib1g@1.2.13.dfsg-1%2Bdeb12u1?arch=amd64&epoch=1")
    musl = Update("musl", "x86_64", "1.2.5-r0", "1.2.5-r1", "musl", "report", ("CVE-2026-2",))
    apk = VexProduct("pkg:oci/x", (musl,), "Alpine", "alpine-3.20.3")
    assert vex_subcomponents(musl, apk) == ("pkg:apk/alpine/musl@1.2.5-r1?arch=x86_64",)


def test_schema_rejects_a_timestamp_without_zone() -> None:
    doc = build_openvex([], author="a", timestamp="2026-11-25T10:00:00", tooling="t")
    with pytest.raises(jsonschema.ValidationError):
        validate_openvex(doc)


def test_each_platform_lists_only_its_own_packages() -> None:
    """Two platforms fixing the same CVE and one fixing another: every product's
    subcomponents are exactly the purls of that platform's own updates naming the
    vulnerability (an arm64 image never lists amd64 packages)."""

    def updates(arch: str) -> tuple[Update, ...]:
        return (Update("openssl", arch, "3.0.11-1", "3.0.13-1", "openssl", "report",
                       ("CVE-2024-1",)),
                Update("libssl3", arch, "3.0.11-1", "3.0.13-1", "openssl", "report",
                       ("CVE-2024-1",)),
                Update("tzdata", arch, "2024a-0", "2026f-0", "tzdata", "update-all"))

    amd = VexProduct(oci_purl("app", "sha256:" + "a" * 64, arch="amd64"),
                     (*updates("amd64"),
                      Update("zlib1g", "amd64", "1.2", "1.3", "zlib", "report", ("CVE-2024-9",))),
                     "debian", "debian-12")
    arm = VexProduct(oci_purl("app", "sha256:" + "b" * 64, arch="arm64"), updates("arm64"),
                     "debian", "debian-12")
    doc = build_openvex([amd, arm], author="a", timestamp="2026-11-25T10:00:00Z",
                        tooling="t")
    validate_openvex(doc)
    statements: list[dict[str, Any]] = doc["statements"]  # type: ignore[assignment]
    found = {(s["vulnerability"]["name"], p["@id"]): [c["@id"] for c in p["subcomponents"]]
             for s in statements for p in s["products"]}

    def own(product: VexProduct, vuln: str) -> list[str]:
        return sorted(s for u in product.updates if vuln in u.vulnerabilities
                      for s in vex_subcomponents(u, product))

    assert found == {
        ("CVE-2024-1", amd.purl): own(amd, "CVE-2024-1"),
        ("CVE-2024-1", arm.purl): own(arm, "CVE-2024-1"),
        ("CVE-2024-9", amd.purl): own(amd, "CVE-2024-9"),
    }
    assert found[("CVE-2024-1", arm.purl)] == [
        "pkg:deb/debian/libssl3@3.0.13-1?arch=arm64",
        "pkg:deb/debian/openssl@3.0.13-1?arch=arm64"]
    assert found[("CVE-2024-9", amd.purl)] == [
        "pkg:deb/debian/zlib1g@1.3?arch=amd64"]
