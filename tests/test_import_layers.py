"""The package imports, read from the source: no circle in core/ or db/, core's packages stacked, no private
name used across modules.

Every import counts, those inside functions and under TYPE_CHECKING too: a lazy import is still an arrow,
and a circle through one is a circle. The order of core's packages is written in docs/CONVENTIONS.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from core.paths import REPO_ROOT

# core's packages from the bottom up: each may import only those before it (and itself). "" stands for
# the top-level modules (errors, labels, settings, paths, ...), which import only each other.
CORE_LEVELS = ("", "imaging", "data", "ood", "inference", "evaluation", "training", "bench", "cli")
MAX_TOP_LEVEL_MODULES = 12


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(package: str) -> dict[str, Path]:
    return {_module_name(path): path for path in sorted((REPO_ROOT / package).rglob("*.py"))}


def _imports(path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that `path` imports: `from a.b import c` is a.b.c when that is a module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def _graph(package: str) -> dict[str, set[str]]:
    modules = _modules(package)
    known = set(modules)
    # A package's __init__ is imported with any of its modules; it holds a docstring only (tested below),
    # so it is no arrow of its own.
    return {name: _imports(path, known) - {name} - {package} for name, path in modules.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("package", ["core", "db", "jobs", "webapp"])
def test_no_import_circle(package: str) -> None:
    assert _circles(_graph(package)) == []


def test_the_circle_finder_finds_a_circle() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _level(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in CORE_LEVELS) else ""


def test_core_packages_import_only_the_ones_below() -> None:
    upward = {}
    for module, targets in _graph("core").items():
        if module == "core.__main__":
            continue
        rank = CORE_LEVELS.index(_level(module))
        above = sorted(t for t in targets if CORE_LEVELS.index(_level(t)) > rank)
        if above:
            upward[module] = above
    assert upward == {}


def test_core_is_a_few_packages_and_a_few_modules() -> None:
    core = REPO_ROOT / "core"
    packages = sorted(p.name for p in core.iterdir() if (p / "__init__.py").is_file())
    assert packages == sorted(level for level in CORE_LEVELS if level)
    assert len(list(core.glob("*.py"))) <= MAX_TOP_LEVEL_MODULES


@pytest.mark.parametrize("level", [level for level in CORE_LEVELS if level and level != "training"])
def test_each_package_says_in_one_line_what_it_is_for(level: str) -> None:
    tree = ast.parse((REPO_ROOT / "core" / level / "__init__.py").read_text())
    docstring = ast.get_docstring(tree)
    assert docstring and "\n" not in docstring.strip() and len(tree.body) == 1


def test_the_conventions_write_the_order_down() -> None:
    text = " ".join((REPO_ROOT / "docs" / "CONVENTIONS.md").read_text().split())
    assert " < ".join(f"`{level}`" for level in CORE_LEVELS[1:]) in text


def _private_uses(path: Path) -> list[str]:
    """`from x import _name` and `module._name` (module imported from the project) in one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    project = ("core", "db", "jobs", "webapp")
    modules: set[str] = set()  # local names bound to project modules
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in project:
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{path.name}:{node.lineno} from {node.module} import {alias.name}")
                modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            modules.update(
                a.asname or a.name.split(".")[0] for a in node.names if a.name.split(".")[0] in project
            )
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
    return found


@pytest.mark.parametrize("package", ["core", "db", "jobs", "webapp", "scripts"])
def test_no_module_uses_another_ones_private_names(package: str) -> None:
    assert [use for path in sorted((REPO_ROOT / package).rglob("*.py")) for use in _private_uses(path)] == []


def test_the_private_use_finder_finds_one(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from core.evaluation.evaluate import _read_images\nfrom db import accounts\naccounts._hasher\n"
    )
    assert len(_private_uses(sample)) == 2
