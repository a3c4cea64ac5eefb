"""The import rules between suture's layers (docs/architecture.md) hold for every module."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "suture"

# package -> the suture packages it may import (besides itself and suture.errors).
ALLOWED: dict[str, set[str]] = {
    "oci": set(),
    "transports": {"oci"},
    "distro": {"oci"},
    "reports": set(),
    "plan": {"distro"},
    "vex": {"plan", "distro"},
    "result": {"plan", "distro", "oci"},
    "inspect": {"oci", "distro"},
    # Supply-chain documents: built from the plan and values read from the package DB.
    "sbom": {"plan", "distro", "vex"},
    "provenance": {"plan"},
    # cosign-compatible signatures: bytes in, bytes and manifests out.
    "sign": {"oci"},
    # Attaching documents and signatures as OCI referrers: orchestration over the sinks.
    "attach": {"oci", "transports", "plan", "vex", "sbom", "provenance", "sign", "inspect"},
    "patch": {"*"},
    # Fleet patching (plan, shards, merge, render) drives patch for many images.
    "fleet": {"*"},
    "cli": {"*"},
    # debs_image resolves and downloads .debs with the verified apt client of distro.dpkg.
    "devtools": {"oci", "transports", "distro"},
    "__main__": {"cli"},
    "__init__": set(),
    "errors": set(),
    "progress": set(),
    "eol": set(),  # end-of-life table and API client: stdlib only
}


def _package_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "suture" and len(parts) > 1:
                found.add(parts[1])
            elif parts[0] == "suture":
                found.add("__init__")
    return found


def test_every_module_has_a_rule() -> None:
    packages = {_package_of(p) for p in SRC.rglob("*.py")}
    assert packages - set(ALLOWED) == set(), "add the new package to ALLOWED and the docs"


def test_imports_follow_the_layering() -> None:
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        pkg = _package_of(path)
        allowed = ALLOWED[pkg] | {pkg, "errors", "progress", "__init__"}
        if "*" in allowed:
            continue
        for imported in _imports(path) - allowed:
            bad.append(f"{path.relative_to(SRC)} imports suture.{imported}")
    assert bad == []


def test_rule_checker_sees_a_violation(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from suture.transports import open_artifact\nimport suture.cli\n")
    assert _imports(probe) == {"transports", "cli"}


THIRD_PARTY_ALLOWED: dict[str, set[str]] = {
    # The one exception to "oci is stdlib only": fast layer (de)compression.
    "oci": {"isal", "zstandard"},
    "reports": set(),
    "plan": set(),
}


def _third_party(path: Path) -> set[str]:
    import sys

    tree = ast.parse(path.read_text(), str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return {r for r in roots if r not in sys.stdlib_module_names and r != "suture"}


def test_core_packages_stay_light() -> None:
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        pkg = _package_of(path)
        if pkg not in THIRD_PARTY_ALLOWED:
            continue
        for name in _third_party(path) - THIRD_PARTY_ALLOWED[pkg]:
            bad.append(f"{path.relative_to(SRC)} imports {name}")
    assert bad == []


def _modules(path: Path) -> set[str]:
    """Every ``suture.*`` module ``path`` imports (full dotted names)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("suture.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and \
                node.module.startswith("suture."):
            found.add(node.module)
    return found


# The maintainer-script runner and its sandbox know no package family: a family hands
# them jobs (with their environment) and, if it needs one, a script sequence.
FAMILY_NEUTRAL = ("patch/scripts.py", "patch/sandbox.py", "patch/emulation.py",
                  "distro/scripts.py")


def test_the_script_runner_knows_no_family() -> None:
    families = {p.name for p in (SRC / "distro").iterdir() if p.is_dir() and
                (p / "__init__.py").exists()}
    bad = [f"{rel} imports {module}" for rel in FAMILY_NEUTRAL
           for module in sorted(_modules(SRC / rel))
           if module.split(".")[1:3][0] == "distro" and len(module.split(".")) > 2
           and module.split(".")[2] in families]
    assert families >= {"dpkg", "apk"} and bad == []


def test_no_family_imports_another() -> None:
    """What families share lives on the neutral floor under ``distro/`` (``fetch``,
    ``errors``, ``scripts``, ``mirrors``); a family imports no other family."""
    distro = SRC / "distro"
    families = {p.name for p in distro.iterdir() if (p / "__init__.py").exists()}
    bad = []
    for family in sorted(families):
        for path in sorted((distro / family).rglob("*.py")):
            for module in sorted(_modules(path)):
                parts = module.split(".")
                if parts[1:2] == ["distro"] and len(parts) > 2 and parts[2] in families \
                        and parts[2] != family:
                    bad.append(f"{path.relative_to(SRC)} imports {module}")
    assert families >= {"dpkg", "apk"} and bad == []


def test_the_engine_seam_imports_no_family() -> None:
    bad = [module for module in sorted(_modules(SRC / "patch" / "engine.py"))
           if module.startswith(("suture.distro.dpkg", "suture.distro.apk", "suture.patch.dpkg",
                                 "suture.patch.apk"))]
    assert bad == []
