"""No class over 150 lines and no function over 60 in the package, measured with `ast` from the
first decorator to the last line, so a class that takes on a second job is split before it grows."""

from __future__ import annotations

import ast

from test_layers import PACKAGE, modules

MAX_CLASS_LINES = 150
MAX_FUNCTION_LINES = 60

#: Definitions allowed over the limits for now ("module:Name" or "module:Class.method"); empty
#: since the package was split by layer.
OVER_LIMIT: frozenset[str] = frozenset()


def sizes(source: str, module: str) -> dict[str, tuple[str, int]]:
    """Every class and function of `source` by its qualified name: its kind and its length in lines."""
    found: dict[str, tuple[str, int]] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([child.lineno, *(decorator.lineno for decorator in child.decorator_list)])
                name = f"{prefix}{child.name}"
                kind = "class" if isinstance(child, ast.ClassDef) else "function"
                found[f"{module}:{name}"] = (kind, (child.end_lineno or child.lineno) - first + 1)
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def test_no_class_or_function_is_over_its_limit() -> None:
    limits = {"class": MAX_CLASS_LINES, "function": MAX_FUNCTION_LINES}
    measured = {
        name: size for module, path in modules().items() for name, size in sizes(path.read_text(), module).items()
    }
    over = {name for name, (kind, length) in measured.items() if length > limits[kind]}
    assert not over - OVER_LIMIT, "\n".join(f"{name}: {measured[name]} (limits {limits})" for name in over - OVER_LIMIT)
    assert not OVER_LIMIT - over, f"back within the limits, to take off OVER_LIMIT: {sorted(OVER_LIMIT - over)}"


def test_the_measure_counts_decorators_and_nested_definitions() -> None:
    source = "@attrs.frozen\nclass A:\n    x: int\n\n    def f(self) -> None:\n        pass\n"
    assert sizes(source, "m") == {"m:A": ("class", 6), "m:A.f": ("function", 2)}
    assert PACKAGE.name == "scout_diff_cache"
