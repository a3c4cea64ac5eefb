"""The ``suture`` command: argument parsing, output and exit codes.

This is the only module that reads the environment, prints, or exits. Each
command calls one library function. Exit codes: 0 success, 1 failure, 2 bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn, TextIO

from suture import __version__
from suture.errors import SutureError, UsageError
from suture.oci.model import Platform
from suture.progress import DOWNLOAD, STAGE, UPLOAD, Event, Progress
from suture.transports import Credentials, EngineOptions, Options, RegistryOptions

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def printable(text: str) -> str:
    """``text`` made safe for a terminal: one line, no control sequences.

    Every character Python does not call printable (C0 and C1 controls, ``DEL``,
    line breaks, Unicode format characters such as bidirectional overrides and
    zero-width spaces, unassigned and private-use code points) is shown escaped:
    ``\\xNN`` (bytes that were not UTF-8, kept as surrogates, show as the byte they
    were), ``\\uNNNN`` or ``\\UNNNNNNNN``. Everything the CLI prints that may hold
    text from an image, a report, a plugin or the network goes through this.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(c: str) -> str:
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        code -= 0xDC00
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _print_lines(lines: Iterable[str], *, file: TextIO | None = None) -> None:
    """Print each line through :func:`printable` (a line break inside one is escaped)."""
    print("\n".join(printable(line) for line in lines), file=file or sys.stdout)


class _PrintableFormatter(logging.Formatter):
    """Log records through :func:`printable`: the message on one line, tracebacks line
    by line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return "\n".join(printable(line) for line in super().formatException(ei).split("\n"))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"suture: error: {message} (see '{self.prog} --help')\n")


def _add_registry_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("registry access")
    group.add_argument("--creds", metavar="USER:PASSWORD",
                       help="credentials for every registry (default: $SUTURE_CREDS, then "
                            "$REGISTRY_AUTH_FILE or ~/.docker/config.json)")
    group.add_argument("--authfile", type=Path, metavar="FILE",
                       help="a docker config.json to take credentials from")
    group.add_argument("--insecure-registry", action="append", default=[], metavar="HOST[:PORT]",
                       help="allow plain HTTP and unverified TLS for this registry (repeatable)")
    group.add_argument("--ca-file", type=Path, metavar="FILE",
                       help="PEM CA bundle to verify registries' TLS certificates")


def _add_copa_options(patch: argparse.ArgumentParser) -> None:
    """copa patch's flags that have no suture flag of their own (docs/copa-flags.md)."""
    group = patch.add_argument_group("copa compatibility (see docs/copa-flags.md)")
    group.add_argument("--oci-dir", metavar="DIR",
                       help="without --push: write the patched image (or index) to this "
                            "OCI layout, tagged as -t/--tag-suffix say")
    group.add_argument("-w", "--working-folder", type=Path, metavar="DIR",
                       help="scratch directory (default: the system's temporary directory)")
    group.add_argument("--debug", action="store_true", help="log debug detail (as -vv)")
    group.add_argument("-a", "--addr", metavar="ADDR",
                       help="ignored: suture needs no BuildKit")
    for flag in ("--cacert", "--cert", "--key"):
        group.add_argument(flag, metavar="FILE", help="ignored: BuildKit TLS, no BuildKit")
    group.add_argument("--force-compression", action="store_true",
                       help="ignored: suture never re-encodes base layers; engines get "
                            "them uncompressed")
    group.add_argument("--pkg-types", default="os", metavar="TYPES",
                       help="package types to patch: os (library is not supported)")
    group.add_argument("--library-patch-level", default="patch",
                       choices=["patch", "minor", "major"],
                       help="copa's language-package bound; only with --pkg-types library")
    group.add_argument("--exit-on-eol", action="store_true",
                       help="fail, writing nothing, when the image's OS release is past its "
                            "end of life")
    group.add_argument("--eol-api-url", metavar="URL",
                       help="ask this endoflife.date-compatible API (…/api/v1/products) "
                            "about end of life instead of suture's built-in table")


# patch's options that mean the same for generate (copa generate's flags and the
# repository and sandbox options the patch itself needs).
_GENERATE_OPTIONS = (
    "report", "scanner", "tag", "tag_suffix", "platform", "output", "format", "vex_author",
    "ignore_errors", "timeout", "cache_dir", "offline", "no_result_cache", "mirror",
    "allow_private_repos", "keyring", "no_host_keyrings", "sandbox", "scripts_required", "progress",
    "working_folder", "debug", "addr", "cacert", "cert", "key", "pkg_types",
    "library_patch_level", "exit_on_eol", "eol_api_url", "loader", "creds", "authfile",
    "insecure_registry", "ca_file")


def _add_generate_parser(sub: Any, patch: argparse.ArgumentParser) -> None:
    """``suture generate``: patch's options (those in :data:`_GENERATE_OPTIONS`) plus
    the context's own."""
    generate = sub.add_parser(
        "generate", help="write the patch as a Docker build context (copa generate)",
        description="Compute the patch and write a Docker build context (Dockerfile and "
                    "the patch's files) as a tar, to stdout or --output-context.")
    generate.add_argument("-i", "--image", required=True, metavar="IMAGE",
                          help="the image to patch (any reference form)")
    generate.add_argument("--output-context", metavar="FILE",
                          help="write the context tar here (default: stdout, not a "
                               "terminal)")
    generate.add_argument("--from", dest="from_ref", metavar="NAME",
                          help="the FROM image name (default: -i's name; needed for "
                               "oci:/archive sources)")
    generate.add_argument("--allow-lost-deletions", action="store_true",
                          help="when the image has no rm, write the context anyway: paths "
                               "the patch deletes stay (as copa's context does)")
    for action in patch._actions:
        if action.dest in _GENERATE_OPTIONS:
            generate._add_action(action)
    generate.set_defaults(dry_run=False, compression="gzip", force_compression=False,
                          result=None)


def cmd_generate(args: argparse.Namespace) -> int:
    import datetime

    from suture.patch.generate import check_from, generate_context, write_context
    from suture.transports import as_reference

    _copa_checks(args)
    output = Path(args.output_context) if args.output_context else None
    if output is None and sys.stdout.isatty():
        raise UsageError("refusing to write a tar to a terminal",
                         hint="use --output-context FILE or redirect stdout")
    if args.working_folder is not None:
        args.working_folder.mkdir(parents=True, exist_ok=True)
    renderer = _renderer(args.progress)
    options = _patch_options(args, renderer)
    source = as_reference(args.image)
    default_from = None
    if source.name:
        default_from = source.image_name() if source.is_registry else source.familiar_name()
    from_ref = check_from(args.from_ref, default_from)
    if args.exit_on_eol:
        _exit_on_eol(source, args, options)
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    now = (datetime.datetime.fromtimestamp(int(epoch), datetime.UTC) if epoch.isdigit()
           else datetime.datetime.now(datetime.UTC))
    try:
        with _run_timer(options.cancel, parse_duration(args.timeout), options.deadline):
            result, context = generate_context(
                source, options, from_ref, created=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                allow_lost_deletions=args.allow_lost_deletions)
    finally:
        if renderer is not None:
            renderer.close()
    _eol_statuses(result, args, renderer)
    if result.failed:
        first = next(o for o in result.platforms if o.status == "error")
        _print_lines([f"suture: error: {first.platform or 'image'}: {first.message}"],
                     file=sys.stderr)
        return EXIT_FAILED
    if context is None:
        _print_lines(["suture: the image is up to date: no context written"], file=sys.stderr)
        return EXIT_OK
    if output is None:
        write_context(context, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        import tempfile

        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.")
        try:
            with os.fdopen(fd, "wb") as out:
                write_context(context, out)
            os.replace(tmp, output)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    if args.output:
        author = args.vex_author or os.environ.get("COPA_VEX_AUTHOR") or "suture"
        result.target_reference = result.target_reference or str(source)
        _write_json_atomic(Path(args.output), _vex(result, author))
    _print_lines([f"suture: context: {context.copied} path(s) copied, "
                  f"{len(context.deletions)} deleted"], file=sys.stderr)
    return EXIT_OK


def _copa_checks(args: argparse.Namespace) -> None:
    """Refuse or warn about copa flags as docs/copa-flags.md says."""
    log = logging.getLogger("suture.cli")
    types = {t.strip() for t in args.pkg_types.split(",") if t.strip()}
    if not types or types - {"os", "library"}:
        raise UsageError(f"--pkg-types {args.pkg_types!r}: expected os and/or library")
    if "library" in types:
        raise UsageError("--pkg-types library: suture patches OS packages only",
                         hint="use --pkg-types os")
    if args.library_patch_level != "patch":
        raise UsageError("--library-patch-level needs --pkg-types library")
    if args.compression == "estargz":
        raise UsageError("--compression estargz is not supported", hint="use gzip or zstd")
    if args.addr or args.cacert or args.cert or args.key:
        log.warning("--addr/--cacert/--cert/--key ignored: suture needs no BuildKit")
    if args.force_compression:
        log.warning("--force-compression ignored: base layers are never re-encoded")


def _add_supply_chain_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("supply chain (README: attach and sign)")
    group.add_argument("--sbom", metavar="cyclonedx|spdx[=FILE]",
                       help="an SBOM of each patched image (CycloneDX 1.6 or SPDX 2.3 JSON): "
                            "attached with --attach, written to FILE when given")
    group.add_argument("--source-sbom", type=Path, metavar="FILE",
                       help="the source image's SBOM: updated (upgraded components' versions, "
                            "purls and hashes) instead of a new one")
    group.add_argument("--provenance", type=Path, metavar="FILE",
                       help="write the run's provenance (in-toto, SLSA v1) to FILE")
    group.add_argument("--attach", action="store_true",
                       help="attach the VEX, SBOM and provenance to the patched image as "
                            "OCI referrers (registry or oci: layout)")
    group.add_argument("--copy-source-referrers", action="store_true",
                       help="copy the source image's referrers and cosign signatures into "
                            "the target repository (still about the source digest)")
    group.add_argument("--sign-key", type=Path, metavar="cosign.key",
                       help="sign the patched image and attachments, and attest the "
                            "documents, in cosign's format (password: $COSIGN_PASSWORD)")


def _supply_chain(args: argparse.Namespace, result: Any, source: Any, destination: Any,
                  options: Any, vex: dict[str, object] | None) -> dict[str, Any]:
    """The SBOM, provenance, attachments and signatures of a written patch result; what
    was attached and signed, for the result JSON. ``vex`` is the document -o writes, so
    the attached one is the same bytes."""
    import hashlib

    from suture.attach import SupplyChainOptions, supply_chain

    fmt, _, sbom_file = (args.sbom or "").partition("=")
    now = _utc_now()
    reports = {}
    if args.report:
        where = Path(args.report)
        for file in sorted(where.iterdir()) if where.is_dir() else [where]:
            if file.is_file() and not file.name.startswith("."):
                reports[file.name] = "sha256:" + hashlib.sha256(file.read_bytes()).hexdigest()
    spec = SupplyChainOptions(
        sbom=fmt or None,
        source_sbom=args.source_sbom.read_bytes() if args.source_sbom else None,
        attach=args.attach, copy_source_referrers=args.copy_source_referrers,
        sign_key=args.signing_key, vex=vex if args.attach else None,
        options={"platforms": args.platform or "", "ignoreErrors": args.ignore_errors,
                 "mirrors": sorted(args.mirror), "compression": args.compression,
                 "updateAll": not args.report},
        report_digests=reports, timestamp=now, started=args.started,
        tool_version=__version__)
    done = supply_chain(result, source, destination, spec, options.transport)
    if sbom_file:
        docs = list(done.sboms.values())
        _write_json_atomic(Path(sbom_file), docs[0] if len(docs) == 1 else docs)
    if args.provenance is not None and done.provenance is not None:
        _write_json_atomic(args.provenance, done.provenance)
    _print_lines(done.lines())
    return done.to_json()


def _utc_now() -> str:
    """RFC 3339 UTC now, or $SOURCE_DATE_EPOCH when set (reproducible documents)."""
    import datetime

    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    now = (datetime.datetime.fromtimestamp(int(epoch), datetime.UTC) if epoch.isdigit()
           else datetime.datetime.now(datetime.UTC))
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def _platforms(text: str | None) -> list[Platform] | None:
    if not text:
        return None
    return [Platform.parse(p) for p in text.split(",") if p.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="suture", description="Patch container images without a container "
                     "engine.")
    parser.add_argument("--version", action="version", version=f"suture {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log what happens (-vv for HTTP detail)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    inspect = sub.add_parser("inspect", help="show platforms, layers, OS and package database")
    inspect.add_argument("image", metavar="IMAGE",
                         help="docker://REF, REF, oci:DIR[:TAG], oci-archive:FILE[:TAG], "
                              "docker-archive:FILE[:REF], docker-daemon:NAME[:TAG], "
                              "podman:NAME[:TAG]")
    inspect.add_argument("--platform", metavar="OS/ARCH[/VARIANT][,...]",
                         help="only these platforms of an index")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    _add_registry_options(inspect)

    patch = sub.add_parser("patch", help="patch the OS packages of an image")
    patch.add_argument("-i", "--image", metavar="IMAGE",
                       help="the image to patch (any reference form)")
    patch.add_argument("--config", metavar="FILE",
                       help="patch every image of copa's bulk PatchConfig YAML instead "
                            "(see 'suture fleet'; -r DIR: reports matched by ArtifactName)")
    patch.add_argument("-r", "--report", metavar="FILE|DIR",
                       help="scanner report: patch only what it names (default: update "
                            "all); a directory holds one report per platform")
    patch.add_argument("-s", "--scanner", metavar="NAME",
                       help="the report's format: trivy, grype, native (copa v1alpha1/2), "
                            "or a plugin run as copa-NAME REPORT (default: detected)")
    patch.add_argument("-t", "--tag", metavar="TAG|REF",
                       help="tag (or full reference) of the patched image")
    patch.add_argument("--tag-suffix", default="patched", metavar="SUFFIX",
                       help="without -t: tag the result <source tag>-SUFFIX (default: patched)")
    patch.add_argument("--dest", metavar="REF", help="write the patched image here")
    patch.add_argument("-p", "--push", action="store_true",
                       help="push a registry source's result to its repository")
    patch.add_argument("-l", "--loader", choices=["docker", "podman"],
                       help="load the result into this local engine (default: the engine a "
                            "docker-daemon:/podman: source came from)")
    patch.add_argument("--platform", metavar="OS/ARCH[/VARIANT][,...]",
                       help="patch only these platforms of an index (others carried over)")
    patch.add_argument("--result", metavar="FILE", help="write the JSON result here")
    patch.add_argument("-o", "--output", metavar="FILE",
                       help="write an OpenVEX document of the fixed vulnerabilities here")
    patch.add_argument("-f", "--format", default="openvex", choices=["openvex"],
                       help="format of --output (default: openvex)")
    patch.add_argument("--vex-author", metavar="NAME",
                       help="author of the VEX document (default: $COPA_VEX_AUTHOR or suture)")
    patch.add_argument("--dry-run", action="store_true",
                       help="print the plan; download and write nothing")
    patch.add_argument("--ignore-errors", action="store_true",
                       help="patch what can be patched when some packages or platforms fail")
    patch.add_argument("--timeout", default="30m", metavar="DURATION",
                       help="bound the whole run, e.g. 90s, 10m, 1h30m (default: 30m)")
    patch.add_argument("--cache-dir", type=Path, metavar="DIR",
                       help="verified index and package cache (default: "
                            "$XDG_CACHE_HOME/suture or ~/.cache/suture)")
    patch.add_argument("--offline", action="store_true",
                       help="use only the cache; say what is missing")
    patch.add_argument("--no-result-cache", action="store_true",
                       help="build the patch layer again even when the cache holds one for "
                            "this image and the same packages")
    patch.add_argument("--mirror", action="append", default=[], metavar="FROM=TO",
                       help="replace an archive URI prefix with a mirror (repeatable)")
    patch.add_argument("--allow-private-repos", action="append", default=[],
                       metavar="HOST[:PORT]",
                       help="let the image's repositories be on this loopback or private "
                            "host, or on any with 'all' (repeatable)")
    patch.add_argument("--keyring", action="append", default=[], type=Path, metavar="FILE",
                       help="also trust the keys in FILE: OpenPGP (.gpg/.asc) for apt "
                            "repositories, PEM RSA public keys for apk ones (repeatable)")
    patch.add_argument("--no-host-keyrings", action="store_true",
                       help="never fall back to this host's distribution keyrings")
    patch.add_argument("--sandbox", default="auto", choices=["auto", "bwrap", "chroot", "none"],
                       help="how to run maintainer scripts (default: auto: bubblewrap, or "
                            "report them as not run; chroot confines nothing and is used "
                            "only when named)")
    patch.add_argument("--scripts-required", action="store_true",
                       help="fail, writing nothing, when a maintainer script cannot run "
                            "(default: patch and report it as not run)")
    patch.add_argument("--progress", default="auto",
                       choices=["auto", "plain", "quiet", "json", "tty", "rawjson"],
                       help="progress on stderr: auto (bars on a terminal, else plain "
                            "lines), plain, json (one event per line), quiet; copa's tty "
                            "and rawjson are bars and json")
    patch.add_argument("--compression", default="gzip",
                       choices=["gzip", "zstd", "uncompressed", "estargz"],
                       help="patch layer compression (default: gzip)")
    _add_supply_chain_options(patch)
    _add_copa_options(patch)
    _add_registry_options(patch)
    _add_generate_parser(sub, patch)

    copy = sub.add_parser("copy", help="copy an image between registries, layouts and archives")
    copy.add_argument("source", metavar="SOURCE")
    copy.add_argument("destination", metavar="DESTINATION")
    copy.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                      help="copy only this platform's image out of an index")
    _add_registry_options(copy)
    from suture.fleet.command import add_parser as add_fleet_parser

    add_fleet_parser(sub, patch, _add_registry_options)
    return parser


def _options(args: argparse.Namespace) -> Options:
    env = os.environ
    creds_text = args.creds or env.get("SUTURE_CREDS")
    auth_file = args.authfile or (Path(env["REGISTRY_AUTH_FILE"])
                                  if env.get("REGISTRY_AUTH_FILE") else None)
    docker_config = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else None
    if args.ca_file is not None and not args.ca_file.is_file():
        raise UsageError(f"--ca-file {args.ca_file}: no such file")
    if auth_file is not None and not auth_file.is_file():
        raise UsageError(f"auth file {auth_file}: no such file")
    return Options(registry=RegistryOptions(
        insecure=frozenset(args.insecure_registry),
        ca_file=args.ca_file,
        credentials=Credentials.parse(creds_text) if creds_text else None,
        auth_file=auth_file,
        docker_config_dir=docker_config,
    ), engines=_engine_options(env))


def _engine_options(env: Any) -> EngineOptions:
    """Docker at ``$DOCKER_HOST``; Podman at ``$CONTAINER_HOST``, else its rootless socket
    under ``$XDG_RUNTIME_DIR`` when not root, else ``/run/podman/podman.sock``."""
    podman = env.get("CONTAINER_HOST") or None
    if podman is None and os.geteuid() != 0 and env.get("XDG_RUNTIME_DIR"):
        podman = f"unix://{env['XDG_RUNTIME_DIR']}/podman/podman.sock"
    return EngineOptions(docker_host=env.get("DOCKER_HOST") or None, podman_host=podman)


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def _print_inspection(ref: str, results: Sequence[Any], top_digest: str) -> None:
    out = [f"image     {ref}", f"digest    {top_digest}"]
    for r in results:
        out.append("")
        out.append(f"platform  {r.platform or 'unknown'}   {r.digest}")
        if r.os:
            name = f"{r.os.id} {r.os.version_id}".strip()
            out.append(f"  os        {name}" + (f" ({r.os.codename})" if r.os.codename else ""))
        else:
            out.append("  os        unknown (no os-release)")
        db = r.package_db
        if db:
            count = "unknown count" if db.count is None else f"{db.count} installed"
            out.append(f"  packages  {db.family} {db.kind} /{db.path}: {count}")
        else:
            out.append("  packages  none found")
        patched = "no" if not r.patched else "yes, over " + (
            f"{r.patched.base_name}@{r.patched.base_digest}" if r.patched.base_name
            else r.patched.base_digest)
        out.append(f"  patched   {patched}")
        out.append(f"  layers    {len(r.layers)}")
        for d in r.layers:
            out.append(f"    {d.digest}  {_human_size(d.size):>9}  {d.media_type}")
    _print_lines(out)


def cmd_inspect(args: argparse.Namespace) -> int:
    from suture.inspect import inspect_artifact
    from suture.transports import as_reference, open_artifact

    ref = as_reference(args.image)
    artifact = open_artifact(ref, _options(args))
    results = inspect_artifact(artifact, _platforms(args.platform))
    if args.json:
        doc = {"reference": str(ref), "digest": artifact.digest,
               "mediaType": artifact.media_type,
               "platforms": [r.to_json() for r in results]}
        print(json.dumps(doc, indent=2))
    else:
        _print_inspection(str(ref), results, artifact.digest)
    return EXIT_OK


def cmd_copy(args: argparse.Namespace) -> int:
    from suture.inspect import select_images
    from suture.transports import as_reference, open_artifact, write_artifact

    options = _options(args)
    source, dest = as_reference(args.source), as_reference(args.destination)
    artifact = open_artifact(source, options)
    platforms = _platforms(args.platform)
    if platforms:
        if len(platforms) != 1:
            raise UsageError("copy --platform takes one platform")
        artifact = select_images(artifact, platforms)[0]
    digest = write_artifact(artifact, dest, options)
    _print_lines([f"{dest} {digest}"])
    return EXIT_OK


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``1h`` and Go's forms (copa's ``--timeout``: ``1h30m``,
    ``2m30s``, ``500ms``) -> seconds."""
    import re

    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    value = text.strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", value)
    try:
        if parts and "".join(n + u for n, u in parts) == value:
            seconds = sum(float(n) * units[u] for n, u in parts)
        else:
            seconds = float(value)
    except ValueError:
        raise UsageError(f"--timeout {text!r}: expected a duration like 90s, 10m or "
                         "1h30m") from None
    if seconds <= 0:
        raise UsageError(f"--timeout {text!r} must be positive")
    return seconds


def _read_one_report(file: Path, scanner: str | None, deadline: float | None = None) -> Any:
    """Parse one report; a plugin (``--scanner NAME``) gets the time left before the
    run's ``deadline`` (a ``time.monotonic()`` value)."""
    import time

    from suture.patch import PatchTimeout
    from suture.reports import BUILTIN_SCANNERS, ReportError, parse_report, run_plugin

    try:
        if scanner is None or scanner in BUILTIN_SCANNERS:
            return parse_report(file.read_bytes(), scanner)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        data = run_plugin(scanner, file, search_path=os.environ.get("PATH"), timeout=left)
        return parse_report(data, "native")
    except ReportError as exc:
        if deadline is not None and time.monotonic() >= deadline:
            raise PatchTimeout(f"report {file}: {exc}", hint="raise --timeout") from None
        raise ReportError(f"report {file}: {exc}", hint=exc.hint) from None


def _read_reports(path: str, scanner: str | None, deadline: float | None = None
                  ) -> dict[str, Any]:
    """``-r FILE``: one report for every platform (``"*"``); ``-r DIR``: the JSON files
    in DIR, one per platform, keyed by the platform their report names."""
    from suture.reports import ReportError

    where = Path(path)
    if where.is_file():
        return {"*": _read_one_report(where, scanner, deadline)}
    if not where.is_dir():
        raise UsageError(f"report {path}: no such file or directory")
    reports: dict[str, Any] = {}
    for file in sorted(where.iterdir()):
        if not file.is_file() or file.name.startswith("."):
            continue
        report = _read_one_report(file, scanner, deadline)
        if not report.architecture:
            raise ReportError(f"report {file}: names no architecture, so it cannot be "
                              "matched to a platform of the image")
        key = str(Platform("linux", report.architecture, report.variant).normalized())
        for other_key, other in reports.items():
            if other.matches_platform(report.architecture, report.variant):
                raise ReportError(f"report {file}: a second report for {other_key}")
        reports[key] = report
    if not reports:
        raise UsageError(f"report directory {path} holds no report")
    return reports


def _patch_options(args: argparse.Namespace, renderer: Progress | None) -> Any:
    import threading
    import time

    from suture.patch.model import PatchOptions

    env = os.environ
    cache = args.cache_dir or Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "suture"
    mirrors = {}
    for item in args.mirror:
        src, sep, dst = item.partition("=")
        if not sep or not src or not dst:
            raise UsageError(f"--mirror {item!r}: expected FROM=TO")
        mirrors[src] = dst
    from suture.distro.mirrors import RepositoryHosts

    for item in args.allow_private_repos:
        try:
            RepositoryHosts.parse_rule(item)
        except ValueError:
            raise UsageError(f"--allow-private-repos {item!r}: expected HOST[:PORT] or "
                             "all") from None
    keyrings = []
    for path in args.keyring:
        if not path.is_file():
            raise UsageError(f"--keyring {path}: no such file")
        keyrings.append(path.read_bytes())
    if args.scanner and not args.report:
        raise UsageError("--scanner needs a report (-r)")
    # The run's clock starts here: a scanner plugin gets only what is left of --timeout.
    seconds = parse_duration(args.timeout)
    deadline = time.monotonic() + seconds
    cancel = threading.Event()
    with _run_timer(cancel, seconds, deadline):
        reports = _read_reports(args.report, args.scanner, deadline) if args.report else {}
    epoch = env.get("SOURCE_DATE_EPOCH", "")
    created = None
    if epoch.isdigit():
        import datetime

        created = datetime.datetime.fromtimestamp(int(epoch), datetime.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
    transport = _options(args)
    return PatchOptions(
        reports=reports,
        platforms=tuple(_platforms(args.platform) or ()),
        cache_dir=cache,
        offline=args.offline,
        result_cache=not args.no_result_cache,
        mirrors=mirrors,
        allow_private_repos=tuple(args.allow_private_repos),
        keyrings=tuple(keyrings),
        host_keyrings=not args.no_host_keyrings,
        sandbox=args.sandbox,
        scripts_required=args.scripts_required,
        ignore_errors=args.ignore_errors,
        dry_run=args.dry_run,
        transport=replace(transport, registry=replace(transport.registry,
                                                      progress=renderer)),
        compression="none" if args.compression == "uncompressed" else args.compression,
        workdir=args.working_folder,
        created=created,
        deadline=deadline,
        cancel=cancel,
        progress=renderer,
    )


class _Renderer:
    """Draws progress events on stderr: ``bars`` (a terminal: stage lines, and one
    line of transfer totals redrawn in place), ``plain`` (stage lines and one line
    per finished transfer) or ``json`` (one JSON object per event)."""

    def __init__(self, mode: str, stream: TextIO) -> None:
        import threading

        self.mode = mode
        self.stream = stream
        self.lock = threading.Lock()
        self.active: dict[tuple[str, str], tuple[int, int | None]] = {}
        self.finished: dict[str, tuple[int, int]] = {}  # kind -> (count, bytes)
        self.bar_shown = False
        self.start = time.monotonic()

    def __call__(self, event: Event) -> None:
        with self.lock:
            if self.mode == "json":  # elapsed: seconds since the run began (stage timings)
                doc = {**event.to_json(), "elapsed": round(time.monotonic() - self.start, 3)}
                self._write(json.dumps(doc, sort_keys=True) + "\n")
            elif event.kind == STAGE:
                self._clear()
                where = f"{event.scope}: " if event.scope else ""
                self._write(printable(f"suture: {where}{event.message}") + "\n")
                self._draw()
            else:
                self._transfer(event)

    def _transfer(self, event: Event) -> None:
        key = (event.kind, event.name)
        if event.finished:
            self.active.pop(key, None)
            count, total = self.finished.get(event.kind, (0, 0))
            self.finished[event.kind] = (count + 1, total + event.done)
            if self.mode == "plain":
                verb = "downloaded" if event.kind == DOWNLOAD else "uploaded"
                where = f"{event.scope}: " if event.scope else ""
                self._write(printable(f"suture: {where}{verb} {event.name} "
                                      f"({_human_size(event.done)})") + "\n")
        else:
            self.active[key] = (event.done, event.total)
        if self.mode == "bars":
            self._draw()

    def _draw(self) -> None:
        if self.mode != "bars" or not (self.active or self.finished):
            return
        parts = []
        for kind, verb in ((DOWNLOAD, "downloading"), (UPLOAD, "uploading")):
            live = [v for (k, _), v in self.active.items() if k == kind]
            count, finished_bytes = self.finished.get(kind, (0, 0))
            if not live and not count:
                continue
            done = finished_bytes + sum(d for d, _ in live)
            known = all(t is not None for _, t in live)
            total = finished_bytes + sum(t or 0 for _, t in live)
            text = f"{verb} {count}/{count + len(live)} {_human_size(done)}"
            if known and total:
                filled = int(20 * done / total)
                text += f" / {_human_size(total)} [{'#' * filled}{'.' * (20 - filled)}]"
            parts.append(text)
        self._write("\r\x1b[K" + "   ".join(parts))
        self.bar_shown = True

    def _clear(self) -> None:
        if self.bar_shown:
            self._write("\r\x1b[K")
            self.bar_shown = False

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stderr must not stop the work

    def close(self) -> None:
        with self.lock:
            if self.bar_shown:
                self._write("\n")
                self.bar_shown = False


def _renderer(mode: str) -> _Renderer | None:
    if mode == "quiet":
        return None
    if mode == "auto":
        mode = "bars" if sys.stderr.isatty() else "plain"
    mode = {"tty": "bars", "rawjson": "json"}.get(mode, mode)  # copa's names
    return _Renderer(mode, sys.stderr)


def _print_plan(result: Any) -> None:
    for outcome in result.platforms:
        lines = [f"platform {outcome.platform or '-'}: {outcome.status} {outcome.message}"]
        plan = outcome.plan
        if plan is not None:
            for u in plan.updates:
                why = u.reason + (f" ({', '.join(u.vulnerabilities)})" if u.vulnerabilities
                                  else "")
                lines.append(f"  {u.name:28} {u.from_version or '(new)':>24} -> "
                             f"{u.to_version:24} {why}")
            lines += [f"  {s.name:28} skipped: {s.reason} {s.detail}".rstrip()
                      for s in plan.skipped]
            lines += [f"  {f.name:28} FAILED: {f.message}" for f in plan.failures]
            lines += [f"  note: {note}" for note in plan.notes]
        _print_lines(lines)


def cmd_patch(args: argparse.Namespace) -> int:
    from suture.patch import destination_for, patch, summary_lines
    from suture.transports import as_reference

    _copa_checks(args)
    if args.config:
        from suture.fleet.command import cmd_patch_config

        return cmd_patch_config(args, sys.modules[__name__])
    if not args.image:
        raise UsageError("patch needs -i IMAGE (or --config FILE)")
    if args.working_folder is not None:
        args.working_folder.mkdir(parents=True, exist_ok=True)
    renderer = _renderer(args.progress)
    options = _patch_options(args, renderer)
    chain = args.sbom or args.source_sbom or args.provenance or args.attach or \
        args.copy_source_referrers or args.sign_key
    if args.sbom and args.sbom.partition("=")[0] not in ("cyclonedx", "spdx"):
        raise UsageError(f"--sbom {args.sbom!r}: expected cyclonedx or spdx[=FILE]")
    if chain:
        options = replace(options, inventory=True)
        args.started = _utc_now()
        args.signing_key = None  # read before patching: a bad key or password writes nothing
        if args.source_sbom is not None:
            from suture.sbom import parse_sbom

            parse_sbom(args.source_sbom.read_bytes(), f"--source-sbom {args.source_sbom}")
        if args.sign_key is not None:
            from suture.sign import load_signing_key

            password = os.environ.get("COSIGN_PASSWORD")
            args.signing_key = load_signing_key(
                args.sign_key.read_bytes(), password.encode() if password is not None else None)
    source = as_reference(args.image)
    dest = as_reference(args.dest) if args.dest else None
    tag = args.tag
    loader = {"docker": "docker-daemon", "podman": "podman", None: None}[args.loader]
    if loader and source.is_registry and not args.image.startswith("docker://"):
        source = _prefer_local(source, loader, options)
    if tag and ("/" in tag or ":" in tag or "@" in tag):
        if dest is not None:
            raise UsageError("give either --dest or a full reference in -t, not both")
        dest, tag = as_reference(tag), None
        engine = loader or (source.transport if source.is_engine else None)
        if engine and dest.is_registry and not args.push:  # copa loads it under that name
            dest = replace(dest, transport=engine)
    if args.push and dest is not None and not dest.is_registry:
        raise UsageError("--push needs a registry destination")
    if args.oci_dir and not args.push and dest is None:  # copa: the OCI layout instead
        new_tag = tag or (f"{source.tag}-{args.tag_suffix}" if source.tag else args.tag_suffix)
        dest = as_reference(f"oci:{args.oci_dir}:{new_tag}")
    destination = destination_for(source, tag=tag, suffix=args.tag_suffix, dest=dest,
                                  push=args.push, loader=loader)
    if (args.attach or args.sign_key or args.copy_source_referrers) and not (
            destination.is_registry or destination.transport == "oci"):
        raise UsageError(f"--attach, --sign-key and --copy-source-referrers write beside the "
                         f"image: the destination {destination} must be a registry or an "
                         f"oci: layout")
    if args.exit_on_eol:
        _exit_on_eol(source, args, options)
    try:
        with _run_timer(options.cancel, parse_duration(args.timeout), options.deadline):
            result = patch(source, destination, options)
    finally:
        if renderer is not None:
            renderer.close()
    if args.dry_run:
        _print_plan(result)
    else:
        _print_lines(summary_lines(result))
        if result.target_reference:
            _print_lines([f"wrote {result.target_reference} {result.target_digest}"])
        for outcome in result.platforms:
            for script, reason in outcome.scripts_not_run:
                _print_lines([f"warning: {outcome.platform}: not run: {script}: {reason}"],
                             file=sys.stderr)
    eol = _eol_statuses(result, args, renderer)
    author = args.vex_author or os.environ.get("COPA_VEX_AUTHOR") or "suture"
    vex = _vex(result, author) if result.target_reference and (
        args.output or args.attach) else None  # one document (one timestamp) for both
    supply = None
    if chain and result.target_reference and not result.failed:
        supply = _supply_chain(args, result, source, destination, options, vex)
    if args.result:
        doc = result.to_json()
        for entry, status in zip(doc["platforms"], eol, strict=True):
            entry["eol"] = status.to_json() if status else None
        if supply is not None:
            doc["supplyChain"] = supply
        _write_json_atomic(Path(args.result), doc)
    if args.output and vex is not None:
        _write_json_atomic(Path(args.output), vex)
    if result.failed:
        first = next(o for o in result.platforms if o.status == "error")
        _print_lines([f"suture: error: {first.platform or 'image'}: {first.message}"],
                     file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _prefer_local(source: Any, engine: str, options: Any) -> Any:
    """copa's prefer-local: with --loader, a plain reference the engine has is read from
    the engine (``docker://REF`` always means the registry)."""
    from suture.errors import NotFound
    from suture.transports.daemon import EngineClient, _host_for

    local = replace(source, transport=engine)
    client = EngineClient(_host_for(options.transport.engines, engine), engine, timeout=10)
    try:
        client.get_json(f"/images/{local.familiar_name()}/json", "image")
    except NotFound:
        return source
    except SutureError as exc:
        logging.getLogger("suture.cli").info("%s: not asked (%s)", engine, exc)
        return source
    return local


def _exit_on_eol(source: Any, args: argparse.Namespace, options: Any) -> None:
    """--exit-on-eol: refuse, before anything is fetched or written, an image whose OS
    release is past its end of life (copa's check, in report mode too)."""
    from suture.eol import check_eol
    from suture.inspect import inspect_artifact
    from suture.transports import open_artifact

    artifact = open_artifact(source, options.transport)
    for r in inspect_artifact(artifact, _platforms(args.platform)):
        if r.os is None:
            continue
        status = check_eol(r.os.id, r.os.version_id, api_url=args.eol_api_url)
        if status is not None and status.is_eol:
            raise SutureError(f"{status.warning()} (--exit-on-eol)",
                              hint="patch it without --exit-on-eol, or move to a "
                                   "supported release")


def _eol_statuses(result: Any, args: argparse.Namespace, renderer: Any) -> list[Any]:
    """Each platform's end-of-life status (for the result JSON); for a release past its
    end of life, a warning through the progress renderer (a stage line, or a JSON
    event; nothing with --progress quiet)."""
    from suture.eol import check_eol

    out = []
    for o in result.platforms:
        status = check_eol(o.os_family, o.os_version, api_url=args.eol_api_url)
        if status is not None and status.is_eol and renderer is not None:
            renderer(Event(STAGE, message=f"warning: {status.warning()}",
                           scope=str(o.platform or "")))
            renderer.close()
        out.append(status)
    return out


@contextlib.contextmanager
def _run_timer(cancel: Any, seconds: float, deadline: float) -> Iterator[None]:
    """Bound the whole run of ``seconds`` (``--timeout``): at ``deadline`` (a
    ``time.monotonic()`` value) ``cancel`` is set, so every platform is told to stop,
    and the main thread is interrupted (a blocking download or upload, or a scanner
    plugin, included). Only the main thread can take signals; elsewhere the per-step
    deadline checks remain."""
    import signal
    import threading
    import time

    from suture.patch import PatchTimeout

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum: int, frame: object) -> None:
        cancel.set()
        raise PatchTimeout(f"timed out after {seconds:g} s", hint="raise --timeout")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, max(deadline - time.monotonic(), 1e-3))
    try:
        yield
    except KeyboardInterrupt:
        cancel.set()
        raise
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _vex(result: Any, author: str) -> dict[str, object]:
    import datetime

    from suture.transports import as_reference
    from suture.vex import VexProduct, build_openvex, oci_purl

    target = as_reference(result.target_reference)
    if target.is_registry:
        name = (target.repository or "image").rsplit("/", 1)[-1]
        repository_url: str | None = target.name
    else:
        name = Path(target.path or "image").name.split(".")[0] or "image"
        repository_url = None
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    now = (datetime.datetime.fromtimestamp(int(epoch), datetime.UTC) if epoch.isdigit()
           else datetime.datetime.now(datetime.UTC))
    products = []
    all_updates = []
    for o in result.platforms:
        if o.status != "patched" or o.image is None or o.plan is None:
            continue
        arch = o.platform.architecture if o.platform else None
        purl = oci_purl(name, o.image.digest, repository_url=repository_url, arch=arch)
        distro = f"{o.os_family}-{o.os_version}" if o.os_version else o.os_family
        kind = o.package_type
        products.append(VexProduct(purl, o.plan.updates, o.os_family, distro, kind))
        all_updates.append((o.plan.updates, o.os_family, distro, kind))
    if result.target_digest and len(result.platforms) > 1:
        index_purl = oci_purl(name, result.target_digest, repository_url=repository_url)
        for updates, family, distro, kind in all_updates:
            products.append(VexProduct(index_purl, updates, family, distro, kind))
    from suture import __version__

    return build_openvex(products, author=author,
                         timestamp=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                         tooling=f"suture {__version__}")


def _write_json_atomic(path: Path, doc: Any) -> None:
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(doc, out, indent=2)
            out.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cmd_fleet(args: argparse.Namespace) -> int:
    from suture.fleet.command import cmd_fleet as run_fleet

    return run_fleet(args, sys.modules[__name__], os.environ)


COMMANDS = {"inspect": cmd_inspect, "copy": cmd_copy, "patch": cmd_patch, "fleet": cmd_fleet,
            "generate": cmd_generate}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    level = logging.WARNING - 10 * min(args.verbose + 2 * getattr(args, "debug", False), 2)
    handler = logging.StreamHandler()
    handler.setFormatter(_PrintableFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    try:
        with _terminate_on_signals():
            return COMMANDS[args.command](args)
    except UsageError as exc:
        _error(exc)
        return EXIT_USAGE
    except SutureError as exc:
        _error(exc)
        return EXIT_FAILED
    except Terminated as exc:
        print("suture: terminated", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("suture: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # Disk full, permission denied, a path that is a directory: one line, no traceback.
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        _print_lines([f"suture: error: {exc.strerror or exc}{where}"], file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        return EXIT_FAILED


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP reached suture: the run stops as for Ctrl-C (work cancelled, a
    scanner plugin's process group and maintainer scripts ended, temporary files
    removed), then exits with 128 + ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _terminate_on_signals() -> Iterator[None]:
    """While in this block (main thread only), SIGTERM and SIGHUP raise
    :class:`Terminated` in the main thread; a second one kills at once."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGTERM, signal.SIGHUP)

    def terminate(signum: int, frame: object) -> None:
        for s in previous:  # the next one is not caught: a stuck cleanup can be ended
            signal.signal(s, signal.SIG_DFL)
        raise Terminated(signum)

    # A signal ignored when suture started (nohup ignores SIGHUP) stays ignored.
    previous = {s: signal.signal(s, terminate) for s in signals
                if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run() -> NoReturn:
    """The console entry point: :func:`main`, then exit. A run stopped by a timeout or
    Ctrl-C may leave a worker thread blocked in a network read; once the main thread
    has cleaned up, such threads are not waited for."""
    import threading

    code = main()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate()
           if t is not threading.main_thread()):
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _error(exc: SutureError) -> None:
    line = f"suture: error: {exc}"
    if exc.hint:
        line += f" (hint: {exc.hint})"
    _print_lines([line.replace("\n", " ")], file=sys.stderr)
