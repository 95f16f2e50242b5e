"""The code's shape, as the refactor left it: no import cycle between modules, small modules, short functions.

Imports count wherever they are written (module level, inside functions, under ``TYPE_CHECKING``): a cycle
hidden in a function is still two modules that cannot be understood one without the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "engine", "knowledge", "training", "evaluation", "hexcore", "rules_engine")
CHECKED = (*PACKAGES, "bench", "tests")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _files(roots: tuple[str, ...]) -> list[Path]:
    return sorted(p for root in roots for p in (ROOT / root).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]


def import_graph() -> nx.DiGraph:
    paths = {_module_name(p): p for p in _files(PACKAGES)}
    graph = nx.DiGraph()
    for module, path in paths.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for name in _imported(node, module, path.name == "__init__.py"):
                while name and name not in paths:  # a name imported from a module -> that module
                    name = name.rpartition(".")[0]
                if name and name != module:
                    graph.add_edge(module, name)
    return graph


def test_no_import_cycle_between_modules() -> None:
    cycles = [sorted(c) for c in nx.strongly_connected_components(import_graph()) if len(c) > 1]
    assert cycles == []


def test_the_checker_sees_a_cycle(tmp_path: Path) -> None:
    graph = nx.DiGraph([("a", "b"), ("b", "a")])
    assert [c for c in nx.strongly_connected_components(graph) if len(c) > 1] == [{"a", "b"}]
    assert import_graph().has_edge("engine.runner", "engine.runner_core")  # and it reads real imports


def test_no_module_over_500_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n for p in _files(CHECKED) if (n := len(p.read_text().splitlines())) > 500
    }
    assert long == {}


@pytest.mark.parametrize("root", CHECKED)
def test_no_function_over_80_lines(root: str) -> None:
    long = []
    for path in _files((root,)):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert long == []
