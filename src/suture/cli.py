"""The ``suture`` command: argument parsing, output and exit codes.

This is the only module that reads the environment, prints, or exits. Each
command calls one library function. Exit codes: 0 success, 1 failure, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from suture import __version__
from suture.errors import SutureError, UsageError
from suture.oci.model import Platform
from suture.transports import Credentials, Options, RegistryOptions

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


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
                              "docker-archive:FILE[:REF]")
    inspect.add_argument("--platform", metavar="OS/ARCH[/VARIANT][,...]",
                         help="only these platforms of an index")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    _add_registry_options(inspect)

    copy = sub.add_parser("copy", help="copy an image between registries, layouts and archives")
    copy.add_argument("source", metavar="SOURCE")
    copy.add_argument("destination", metavar="DESTINATION")
    copy.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                      help="copy only this platform's image out of an index")
    _add_registry_options(copy)
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
    ))


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
        patched = f"yes, over {r.patched.base_digest}" if r.patched else "no"
        out.append(f"  patched   {patched}")
        out.append(f"  layers    {len(r.layers)}")
        for d in r.layers:
            out.append(f"    {d.digest}  {_human_size(d.size):>9}  {d.media_type}")
    print("\n".join(out))


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
    print(f"{dest} {digest}")
    return EXIT_OK


COMMANDS = {"inspect": cmd_inspect, "copy": cmd_copy}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        _error(exc)
        return EXIT_USAGE
    except SutureError as exc:
        _error(exc)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("suture: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_FAILED


def _error(exc: SutureError) -> None:
    line = f"suture: error: {exc}"
    if exc.hint:
        line += f" (hint: {exc.hint})"
    print(line.replace("\n", " "), file=sys.stderr)
