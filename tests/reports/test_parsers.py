"""Report parsers on files written to each format's real schema, and on broken ones."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from suture.reports import (
    Finding,
    Report,
    ReportError,
    parse_copa,
    parse_grype,
    parse_report,
    parse_trivy,
)
from suture.reports import document as report_document

DATA = Path(__file__).resolve().parents[1] / "data" / "reports"


def raw(name: str) -> bytes:
    return (DATA / name).read_bytes()


def doc(name: str) -> dict[str, Any]:
    value = json.loads(raw(name))
    assert isinstance(value, dict)
    return value


def dump(value: object) -> bytes:
    return json.dumps(value).encode()


def by_key(report: Report) -> dict[tuple[str, str], Finding]:
    return {(f.vulnerability_id, f.package): f for f in report.findings}


def error(call: Any, *args: Any) -> ReportError:
    with pytest.raises(ReportError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return info.value


# ---------------------------------------------------------------- the Debian image

DEBIAN_OS = [
    ("CVE-2024-5535", "libssl3", "3.0.13-1~deb12u1", ("3.0.14-1~deb12u1",)),
    ("CVE-2024-5535", "openssl", "3.0.13-1~deb12u1", ("3.0.14-1~deb12u1",)),
    ("CVE-2024-2961", "libc6", "2.36-9+deb12u4", ("2.36-9+deb12u7",)),
    ("CVE-2024-28182", "libnghttp2-14", "1.52.0-1", ("1.52.0-1+deb12u1", "1.52.0-1+deb12u2")),
    ("CVE-2011-3374", "apt", "2.6.1", ()),
    ("CVE-2023-4039", "libgcc-s1", "12.2.0-14", ()),
    ("CVE-2023-4641", "login", "1:4.13+dfsg1-1", ()),
]


def os_tuples(report: Report) -> list[tuple[str, str, str, tuple[str, ...]]]:
    return [(f.vulnerability_id, f.package, f.installed_version, f.fixed_versions)
            for f in report.os_findings()]


def test_trivy_debian() -> None:
    report = parse_trivy(raw("trivy-debian.json"))
    assert (report.scanner, report.os_family, report.os_version) == ("trivy", "debian", "12.7")
    assert (report.architecture, report.variant) == ("amd64", None)
    assert report.artifact == "debian:bookworm-20240904"
    assert os_tuples(report) == DEBIAN_OS
    found = by_key(report)
    assert found["CVE-2011-3374", "apt"].status == "affected"
    assert not found["CVE-2011-3374", "apt"].fixable
    assert found["CVE-2023-4039", "libgcc-s1"].status == "will_not_fix"
    libc = found["CVE-2024-2961", "libc6"]
    assert (libc.status, libc.severity, libc.package_class, libc.package_type) == (
        "fixed", "HIGH", "os-pkgs", "debian")
    assert libc.purl.startswith("pkg:deb/debian/libc6@2.36-9+deb12u4?arch=amd64")
    [lang] = [f for f in report.findings if f.package_class == "lang-pkgs"]
    assert (lang.vulnerability_id, lang.package, lang.fixed_versions, lang.package_type) == (
        "CVE-2023-32681", "requests", ("2.31.0",), "python-pkg")


def test_grype_debian() -> None:
    report = parse_grype(raw("grype-debian.json"))
    assert (report.scanner, report.os_family, report.os_version) == ("grype", "debian", "12")
    assert (report.architecture, report.variant) == ("amd64", None)
    assert report.artifact == "debian:bookworm-20240904"
    assert os_tuples(report) == DEBIAN_OS
    found = by_key(report)
    apt = found["CVE-2011-3374", "apt"]
    assert (apt.status, apt.severity, apt.fixable) == ("not-fixed", "NEGLIGIBLE", False)
    assert found["CVE-2023-4039", "libgcc-s1"].status == "wont-fix"
    nghttp2 = found["CVE-2024-28182", "libnghttp2-14"]
    assert (nghttp2.status, nghttp2.package_class, nghttp2.package_type) == (
        "fixed", "os-pkgs", "deb")
    assert nghttp2.purl == ("pkg:deb/debian/libnghttp2-14@1.52.0-1?arch=amd64&upstream=nghttp2"
                            "&distro=debian-12")
    [lang] = [f for f in report.findings if f.package_class == "lang-pkgs"]
    assert (lang.vulnerability_id, lang.package, lang.package_type, lang.fixed_versions) == (
        "GHSA-j8r2-6x86-q33q", "requests", "python", ("2.31.0",))


def test_v1alpha1_debian() -> None:
    report = parse_copa(raw("v1alpha1-debian.json"))
    assert (report.scanner, report.api_version) == ("native", "v1alpha1")
    assert (report.os_family, report.os_version) == ("debian", "12.7")
    assert (report.architecture, report.variant) == ("amd64", None)
    assert os_tuples(report) == DEBIAN_OS
    assert len(report.findings) == len(DEBIAN_OS)  # v1alpha1 has OS updates only
    assert {f.status for f in report.findings} == {""}


def test_v1alpha2_debian() -> None:
    report = parse_copa(raw("v1alpha2-debian.json"))
    assert (report.scanner, report.api_version) == ("native", "v1alpha2")
    assert (report.os_family, report.os_version, report.architecture) == (
        "debian", "12.7", "amd64")
    assert os_tuples(report) == DEBIAN_OS
    assert {f.package_type for f in report.os_findings()} == {"debian"}
    [lang] = [f for f in report.findings if f.package_class == "lang-pkgs"]
    assert (lang.vulnerability_id, lang.package, lang.installed_version, lang.fixed_versions,
            lang.package_type) == ("CVE-2023-32681", "requests", "2.25.1", ("2.31.0",),
                                   "python-pkg")


# ---------------------------------------------------------------- the Alpine image (arm64)

ALPINE_OS = [
    ("CVE-2024-9143", "libcrypto3", "3.3.2-r0", ("3.3.2-r1",)),
    ("CVE-2024-9143", "libssl3", "3.3.2-r0", ("3.3.2-r1",)),
    ("CVE-2024-13176", "libcrypto3", "3.3.2-r0", ("3.3.2-r2", "3.3.3-r0")),
    ("CVE-2025-26519", "musl", "1.2.5-r0", ()),
]


@pytest.mark.parametrize(("name", "parse", "scanner", "variant"), [
    ("trivy-alpine.json", parse_trivy, "trivy", "v8"),
    ("grype-alpine.json", parse_grype, "grype", "v8"),
    ("v1alpha1-alpine.json", parse_copa, "native", None),  # v1alpha1 has no variant
    ("v1alpha2-alpine.json", parse_copa, "native", "v8"),
])
def test_alpine(name: str, parse: Any, scanner: str, variant: str | None) -> None:
    report = parse(raw(name))
    assert (report.scanner, report.os_family, report.os_version) == (scanner, "alpine", "3.20.3")
    assert (report.architecture, report.variant) == ("arm64", variant)
    assert os_tuples(report) == ALPINE_OS
    assert [f.package_class for f in report.findings] == ["os-pkgs"] * 4
    assert [f.fixable for f in report.findings] == [True, True, True, False]


@pytest.mark.parametrize("family", ["wolfi", "chainguard", "Alpine"])
def test_trivy_alpine_families(family: str) -> None:
    document = doc("trivy-alpine.json")
    document["Metadata"]["OS"] = {"Family": family, "Name": "20230201"}
    document["Results"][0]["Type"] = family
    report = parse_trivy(dump(document))
    assert (report.os_family, report.os_version) == (family.lower(), "20230201")
    assert os_tuples(report) == ALPINE_OS


# ---------------------------------------------------------------- detection


@pytest.mark.parametrize(("name", "scanner", "api"), [
    ("trivy-debian.json", "trivy", ""), ("trivy-alpine.json", "trivy", ""),
    ("grype-debian.json", "grype", ""), ("grype-alpine.json", "grype", ""),
    ("v1alpha1-debian.json", "native", "v1alpha1"), ("v1alpha1-alpine.json", "native", "v1alpha1"),
    ("v1alpha2-debian.json", "native", "v1alpha2"), ("v1alpha2-alpine.json", "native", "v1alpha2"),
])
def test_detection_reads_every_format(name: str, scanner: str, api: str) -> None:
    detected = parse_report(raw(name))
    assert (detected.scanner, detected.api_version) == (scanner, api)
    assert parse_report(raw(name), scanner) == detected
    family = name.split("-")[1].removesuffix(".json")
    assert detected.os_family == family


@pytest.mark.parametrize(("name", "scanner", "says", "hint"), [
    ("grype-debian.json", "trivy", "not a Trivy JSON report with SchemaVersion 2: it looks like "
                                   "a Grype JSON report", "--scanner grype"),
    ("v1alpha1-debian.json", "trivy", "not a Trivy JSON report with SchemaVersion 2: it looks "
                                      "like a copa document (apiVersion 'v1alpha1')",
     "--scanner native"),
    ("trivy-debian.json", "grype", "not a Grype JSON report: it looks like a Trivy JSON report "
                                   "(SchemaVersion 2)", "--scanner trivy"),
    ("v1alpha2-alpine.json", "grype", "not a Grype JSON report: it looks like a copa document",
     "--scanner native"),
    ("trivy-alpine.json", "native", "not a copa v1alpha1/v1alpha2 document: it looks like a "
                                    "Trivy JSON report", "--scanner trivy"),
    ("grype-alpine.json", "native", "not a copa v1alpha1/v1alpha2 document: it looks like a "
                                    "Grype JSON report", "--scanner grype"),
])
def test_report_of_another_kind_names_what_it_is(name: str, scanner: str, says: str,
                                                 hint: str) -> None:
    exc = error(parse_report, raw(name), scanner)
    assert str(exc).startswith(says), str(exc)
    assert exc.hint is not None and hint in exc.hint


@pytest.mark.parametrize(("document", "says"), [
    ({"bomFormat": "CycloneDX", "specVersion": "1.5", "components": []}, "a CycloneDX SBOM"),
    ({"spdxVersion": "SPDX-2.3", "packages": []}, "an SPDX SBOM"),
    ({"artifacts": [], "descriptor": {"name": "syft"}, "source": {}}, "a Syft SBOM"),
    ({"@context": "https://openvex.dev/ns/v0.2.0", "statements": []}, "an OpenVEX document"),
    ({"$schema": "https://json.schemastore.org/sarif-2.1.0.json", "version": "2.1.0",
      "runs": []}, "a SARIF log"),
    ([{"Target": "debian:12 (debian 12.7)", "Vulnerabilities": []}],
     "a Trivy report from before SchemaVersion 2"),
    ({"name": "x", "version": 1}, "a JSON object with keys name, version"),
    ({}, "an empty JSON object"),
    ("just a string", "a JSON string"),
    (None, "a JSON null"),
])
def test_detection_refuses_what_is_no_report(document: object, says: str) -> None:
    exc = error(parse_report, dump(document))
    assert str(exc).startswith(
        "not a Trivy, Grype or copa v1alpha1/v1alpha2 report: it looks like " + says), str(exc)


def test_unknown_scanner_name() -> None:
    exc = error(parse_report, raw("trivy-debian.json"), "snyk")
    assert str(exc) == ("unknown scanner 'snyk': suture reads trivy, grype, native; other "
                        "scanners run as plugins")


# ---------------------------------------------------------------- broken documents


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.json")))
def test_truncated_report_says_it_ends_early(name: str) -> None:
    data = raw(name)
    for cut in (len(data) // 2, len(data) - 3, 1):
        for scanner in (None, "trivy", "grype", "native"):
            exc = error(parse_report, data[:cut], scanner)
            assert "is not valid JSON: it ends early" in str(exc), str(exc)
            assert "(truncated?)" in str(exc)


@pytest.mark.parametrize(("scanner", "prefix"), [
    (None, "report"), ("trivy", "trivy report"), ("grype", "grype report"),
    ("native", "copa report"),
])
def test_not_json(scanner: str | None, prefix: str) -> None:
    exc = error(parse_report, b"<html>502 Bad Gateway</html>", scanner)
    assert str(exc) == (f"{prefix} is not valid JSON: Expecting value at line 1 column 1")
    assert str(error(parse_report, b"  \n", scanner)) == f"{prefix} is empty"
    assert "not UTF-8" in str(error(parse_report, b"\xff\xfe\xfd{}", scanner))


def test_deeply_nested_json() -> None:
    exc = error(parse_report, b"[" * 100_000 + b"]" * 100_000)
    assert str(exc) == "report is not a report: JSON nested too deeply"


def test_size_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_document, "MAX_REPORT", 1000)
    assert str(error(parse_trivy, raw("trivy-debian.json"))) == (
        "trivy report is larger than 1000 bytes")
    assert parse_copa(raw("v1alpha1-alpine.json")).os_family == "alpine"  # 795 bytes


def test_trivy_wrong_schema_version() -> None:
    document = doc("trivy-debian.json")
    document["SchemaVersion"] = 1
    exc = error(parse_report, dump(document))
    assert str(exc) == "not a Trivy JSON report with SchemaVersion 2 (got 1)"


def test_copa_unsupported_api_version() -> None:
    document = doc("v1alpha2-debian.json")
    document["apiVersion"] = "v1beta1"
    assert str(error(parse_report, dump(document))) == (
        "copa report: unsupported apiVersion 'v1beta1' (suture reads v1alpha1 and v1alpha2)")


def test_copa_lists_of_the_other_version() -> None:
    document = doc("v1alpha2-debian.json")
    document["apiVersion"] = "v1alpha1"
    assert str(error(parse_copa, dump(document))) == (
        "copa v1alpha1 document has no updates: it carries langupdates, osupdates, which "
        "v1alpha1 does not have (is its apiVersion wrong?)")
    document = doc("v1alpha1-debian.json")
    document["apiVersion"] = "v1alpha2"
    assert "copa v1alpha2 document has no langupdates or osupdates: it carries updates" in str(
        error(parse_copa, dump(document)))


@pytest.mark.parametrize(("name", "change", "says"), [
    ("trivy-debian.json", lambda d: d["Metadata"].pop("OS"),
     "trivy report has no Metadata.OS: the scanner found no OS in the image"),
    ("trivy-alpine.json", lambda d: d["Metadata"]["OS"].update(Family=""),
     "trivy report has no Metadata.OS: the scanner found no OS in the image"),
    ("grype-debian.json", lambda d: d.update(distro={"name": "", "version": "", "idLike": []}),
     "grype report has no distro: the scanner found no OS in the image"),
    ("grype-alpine.json", lambda d: d.pop("distro"),
     "grype report has no distro: the scanner found no OS in the image"),
    ("v1alpha1-debian.json", lambda d: d["metadata"].pop("os"),
     "copa v1alpha1 document has no metadata.os.type: it does not say which OS the image runs"),
    ("v1alpha2-alpine.json", lambda d: d["metadata"]["os"].update(type=""),
     "copa v1alpha2 document has no metadata.os.type: it does not say which OS the image runs"),
])
def test_missing_os_metadata(name: str, change: Any, says: str) -> None:
    document = doc(name)
    change(document)
    assert str(error(parse_report, dump(document))) == says


@pytest.mark.parametrize(("name", "change", "says"), [
    ("trivy-debian.json", lambda d: d["Results"][0]["Vulnerabilities"][2].pop("PkgName"),
     "trivy report: Results[0].Vulnerabilities[2] has no PkgName"),
    ("trivy-debian.json", lambda d: d["Results"][0]["Vulnerabilities"][0].pop("VulnerabilityID"),
     "trivy report: Results[0].Vulnerabilities[0] has no VulnerabilityID"),
    ("trivy-debian.json", lambda d: d.update(Results={"a": 1}), "trivy report: Results is not "
                                                                "a list"),
    ("trivy-debian.json", lambda d: d["Results"].append("x"),
     "trivy report: Results[2] is not an object"),
    ("trivy-debian.json", lambda d: d["Results"][0]["Vulnerabilities"][1].update(
        FixedVersion=["3.0.14-1~deb12u1"]),
     "trivy report: Results[0].Vulnerabilities[1].FixedVersion is not a string"),
    ("trivy-debian.json", lambda d: d["Metadata"].update(ImageConfig=[]),
     "trivy report: Metadata.ImageConfig is not an object"),
    ("grype-debian.json", lambda d: d["matches"][1]["artifact"].pop("name"),
     "grype report: matches[1].artifact has no name"),
    ("grype-debian.json", lambda d: d["matches"][0].pop("vulnerability"),
     "grype report: matches[0].vulnerability is not an object"),
    ("grype-debian.json", lambda d: d["matches"][3]["vulnerability"]["fix"].update(
        versions=[1]), "grype report: matches[3].vulnerability.fix.versions[0] is not a string"),
    ("grype-alpine.json", lambda d: d.update(matches={}), "grype report: matches is not a list"),
    ("v1alpha1-debian.json", lambda d: d["updates"][0].pop("vulnerabilityID"),
     "copa v1alpha1 document: updates[0] has no vulnerabilityID"),
    ("v1alpha2-debian.json", lambda d: d["langupdates"][0].pop("name"),
     "copa v1alpha2 document: langupdates[0] has no name"),
    ("v1alpha2-debian.json", lambda d: d["metadata"].update(config="amd64"),
     "copa v1alpha2 document: metadata.config is not an object"),
    ("v1alpha2-alpine.json", lambda d: d.update(osupdates=[["musl"]]),
     "copa v1alpha2 document: osupdates[0] is not an object"),
])
def test_malformed_fields(name: str, change: Any, says: str) -> None:
    document = doc(name)
    change(document)
    assert str(error(parse_report, dump(document))) == says


def test_not_an_object_for_each_parser() -> None:
    for parse, what in ((parse_trivy, "trivy report"), (parse_grype, "grype report"),
                        (parse_copa, "copa report")):
        assert str(error(parse, b"[1, 2]")) == (
            f"{what}: the document is not an object (it looks like a JSON list)")


# ---------------------------------------------------------------- normalised fields


def test_grype_os_names_are_os_release_ids() -> None:
    for grype_name, version, family in [("redhat", "9.4", "rhel"), ("amazonlinux", "2023", "amzn"),
                                        ("oraclelinux", "9", "ol"), ("rockylinux", "9", "rocky"),
                                        ("opensuseleap", "15.6", "opensuse-leap"),
                                        ("mariner", "2.0", "mariner"), ("wolfi", "", "wolfi"),
                                        ("chainguard", "", "chainguard"),
                                        ("ubuntu", "22.04", "ubuntu")]:
        document = doc("grype-debian.json")
        document["distro"] = {"name": grype_name, "version": version, "idLike": []}
        report = parse_grype(dump(document))
        assert (report.os_family, report.os_version) == (family, version)


def test_trivy_and_copa_os_names_are_os_release_ids() -> None:
    for trivy_name, family in [("redhat", "rhel"), ("amazon", "amzn"), ("oracle", "ol"),
                               ("alma", "almalinux"), ("cbl-mariner", "mariner"),
                               ("azurelinux", "azurelinux"), ("opensuse.leap", "opensuse-leap"),
                               ("suse linux enterprise server", "sles"), ("ubuntu", "ubuntu")]:
        trivy = doc("trivy-debian.json")
        trivy["Metadata"]["OS"]["Family"] = trivy_name
        assert parse_trivy(dump(trivy)).os_family == family
        copa = doc("v1alpha1-debian.json")
        copa["metadata"]["os"]["type"] = trivy_name.upper()
        assert parse_copa(dump(copa)).os_family == family


@pytest.mark.parametrize(("arch", "variant", "expect"), [
    ("x86_64", None, ("amd64", None)), ("aarch64", None, ("arm64", None)),
    ("arm64", "v8", ("arm64", "v8")), ("armhf", None, ("arm", "v7")),
    ("armv7", None, ("arm", "v7")), ("arm", "7", ("arm", "v7")), ("armv6", None, ("arm", "v6")),
    ("i686", None, ("386", None)), ("ppc64el", None, ("ppc64le", None)),
    ("s390x", None, ("s390x", None)), ("arm/v7", None, ("arm", "v7")),
])
def test_architecture_normalised_in_every_format(arch: str, variant: str | None,
                                                 expect: tuple[str, str | None]) -> None:
    trivy = doc("trivy-alpine.json")
    trivy["Metadata"]["ImageConfig"]["architecture"] = arch
    trivy["Metadata"]["ImageConfig"].pop("variant")
    if variant:
        trivy["Metadata"]["ImageConfig"]["variant"] = variant
    report = parse_trivy(dump(trivy))
    assert (report.architecture, report.variant) == expect

    grype = doc("grype-alpine.json")
    grype["source"]["target"]["architecture"] = arch
    grype["source"]["target"].pop("architectureVariant")
    if variant:
        grype["source"]["target"]["architectureVariant"] = variant
    report = parse_grype(dump(grype))
    assert (report.architecture, report.variant) == expect

    copa = doc("v1alpha2-alpine.json")
    copa["metadata"]["config"] = {"arch": arch, **({"variant": variant} if variant else {})}
    report = parse_copa(dump(copa))
    assert (report.architecture, report.variant) == expect


def test_grype_architecture_from_the_embedded_config() -> None:
    grype = doc("grype-alpine.json")
    target = grype["source"]["target"]
    target["architecture"] = ""
    target.pop("architectureVariant")
    target["config"] = base64.b64encode(json.dumps(
        {"architecture": "arm", "variant": "v7", "os": "linux"}).encode()).decode()
    report = parse_grype(dump(grype))
    assert (report.architecture, report.variant) == ("arm", "v7")
    target["config"] = "not base64!"
    assert parse_grype(dump(grype)).architecture is None


def test_no_architecture_recorded() -> None:
    trivy = doc("trivy-debian.json")
    trivy["Metadata"].pop("ImageConfig")
    assert parse_trivy(dump(trivy)).architecture is None
    grype = doc("grype-debian.json")
    grype["source"] = {"type": "sbom-file", "target": "/tmp/sbom.json"}
    report = parse_grype(dump(grype))
    assert (report.architecture, report.artifact) == (None, "/tmp/sbom.json")
    copa = doc("v1alpha1-debian.json")
    copa["metadata"].pop("config")
    assert parse_copa(dump(copa)).architecture is None


def test_v1alpha1_ignores_a_variant_as_copa_does() -> None:
    copa = doc("v1alpha1-alpine.json")
    copa["metadata"]["config"]["variant"] = "v9"
    assert parse_copa(dump(copa)).variant is None


def test_grype_ignored_matches_are_left_out_and_repeats_merged() -> None:
    grype = doc("grype-debian.json")
    grype["ignoredMatches"] = [dict(grype["matches"][0], appliedIgnoreRules=[{"vulnerability":
                                                                             "CVE-2024-5535"}])]
    grype["matches"].append(grype["matches"][0])
    report = parse_grype(dump(grype))
    assert os_tuples(report) == DEBIAN_OS


def test_numbers_are_read_as_text() -> None:
    copa = doc("v1alpha1-debian.json")
    copa["metadata"]["os"]["version"] = 12
    assert parse_copa(dump(copa)).os_version == "12"


@pytest.mark.parametrize(("report_platform", "image", "fits"), [
    (("amd64", None), ("amd64", None), True),
    (("amd64", None), ("x86_64", None), True),
    (("amd64", None), ("arm64", "v8"), False),
    (("arm64", None), ("arm64", "v8"), True),
    (("arm64", "v8"), ("aarch64", None), True),
    (("arm", "v7"), ("arm", "v6"), False),
    (("arm", "v7"), ("armhf", None), True),
    ((None, None), ("s390x", None), True),
])
def test_matches_platform(report_platform: tuple[str | None, str | None],
                          image: tuple[str, str | None], fits: bool) -> None:
    report = Report("trivy", "debian", "12", *report_platform)
    assert report.matches_platform(*image) is fits


def test_hints_for_old_trivy_reports() -> None:
    old = dump([{"Target": "debian:12 (debian 12.7)", "Vulnerabilities": []}])
    for scanner in (None, "trivy"):
        exc = error(parse_report, old, scanner)
        assert exc.hint == "use Trivy 0.20 or later with --format json", scanner
    exc = error(parse_report, dump({"bomFormat": "CycloneDX"}))
    assert exc.hint == "for another scanner's format, name its plugin with --scanner"


def test_trivy_results_without_class() -> None:
    trivy = doc("trivy-debian.json")
    for result in trivy["Results"]:
        result.pop("Class")
    report = parse_trivy(dump(trivy))
    assert os_tuples(report) == DEBIAN_OS
    assert [f.package for f in report.findings if f.package_class == "lang-pkgs"] == ["requests"]
