"""The package's layers (README, "Layout"): a lower layer hands plain values up and never imports
from a higher one. Read from the source with `ast`, so an upward import fails the build."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "scout_diff_cache"

#: Each layer and the layers it may import from (itself included). Top-level modules are either
#: the foundation every layer uses or the application on top, which may import anything.
FOUNDATION = {
    "config",
    "errors",
    "logs",
    "patterns",
    "encoding",
    "shared",
    "systemd",
    "runtime",
    "passthrough",
    "metrics",
    "accounting",
    "usage",
    "diagnosis",
}
ALLOWED = {
    "foundation": {"foundation"},
    "git": {"foundation", "git"},
    "apis": {"foundation", "apis"},
    "context": {"foundation", "git", "apis", "context"},
    "upstream": {"foundation", "git", "apis", "upstream"},
}


def layer_of(module: str) -> str:
    """`module` is dotted below the package: `git.diff`, `config`, `app`."""
    first = module.split(".")[0]
    if first in ALLOWED:
        return first
    return "foundation" if first in FOUNDATION else "application"


def imports(source: str, module: str) -> set[str]:
    """The package's modules that `source`, standing at `module` (dotted below the package), imports."""
    parts = module.split(".")
    package = parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package[: len(package) - (node.level - 1)]
            target = [*base, *(node.module.split(".") if node.module else [])]
            names = [".".join([*target, alias.name]) for alias in node.names] if node.module is None else []
            found.update(names or [".".join(target)])
        elif (node.module or "").startswith("scout_diff_cache."):
            found.add(str(node.module).removeprefix("scout_diff_cache."))
    return {name for name in found if name}


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name below it (a package by its own name)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(parts)] = path
    return found


def test_no_layer_imports_from_a_layer_above_it() -> None:
    upward = []
    for module, path in modules().items():
        layer = layer_of(module)
        if layer == "application":
            continue
        for target in sorted(imports(path.read_text(), module)):
            if layer_of(target) not in ALLOWED[layer]:
                upward.append(f"{module} ({layer}) imports {target} ({layer_of(target)})")
    assert not upward, "\n".join(upward)


def test_the_check_reads_relative_imports_at_any_depth() -> None:
    source = "from ..apis.dialects import CHAT\nfrom . import content\nfrom ..config import Config\n"
    assert imports(source, "git.sample") == {"apis.dialects", "git.content", "config"}
    assert imports("from .errors import ProxyError\n", "routes") == {"errors"}
    assert imports("from scout_diff_cache.git.diff import WorkingDiff\n", "app") == {"git.diff"}
    assert [layer_of(name) for name in ("git.diff", "apis.dialects", "routes", "config")] == [
        "git",
        "apis",
        "application",
        "foundation",
    ]
