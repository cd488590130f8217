"""The package's own import graph: no cycles, and imports point down the layers only.

The layers are the folders of docs/architecture.md, bottom first. A module may
import its own layer and the layers below it, never one above; and no set of
modules may import each other in a circle, whether the import runs at module
level or inside a function.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import optimizely_middleware

PACKAGE = "optimizely_middleware"
ROOT = Path(optimizely_middleware.__file__).parent

# Bottom first. A module belongs to the first entry that prefixes its dotted name.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "process", "sdk_logging", "wire"),
    ("delivery",),
    (
        "scope",
        "request_listeners",
        "processor",
        "wiring_hints",
        "dispatcher",
        "client",
        "settings",
    ),
    ("integrations",),
    ("flask", "starlette", "starlette_extension", "fastapi", "django"),
    ("testing", "devserver"),
]


def _module_names() -> list[str]:
    names = [PACKAGE]
    for info in pkgutil.walk_packages([str(ROOT)], prefix=f"{PACKAGE}."):
        names.append(info.name)
    return sorted(names)


def _path_of(name: str) -> Path:
    parts = name.split(".")[1:]
    package_init = ROOT.joinpath(*parts, "__init__.py")
    return package_init if package_init.exists() else ROOT.joinpath(*parts).with_suffix(".py")


def _imports_of(name: str, known: set[str]) -> set[str]:
    path = _path_of(name)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" for alias in node.names] + [module]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        for target in targets:
            if target in known and target != name:
                found.add(target)
                break
    return found


def _graph() -> dict[str, set[str]]:
    known = set(_module_names())
    return {name: _imports_of(name, known) for name in known}


def _layer_of(name: str) -> int | None:
    relative = name.removeprefix(f"{PACKAGE}.")
    for rank, prefixes in enumerate(LAYERS):
        if any(relative == p or relative.startswith(f"{p}.") for p in prefixes):
            return rank
    return None


def test_every_module_imports() -> None:
    for name in _module_names():
        if name.endswith("__main__"):
            continue
        importlib.import_module(name)


def test_every_module_has_a_layer() -> None:
    homeless = [n for n in _module_names() if n != PACKAGE and _layer_of(n) is None]
    assert homeless == [], f"modules outside every layer of docs/architecture.md: {homeless}"


def test_imports_point_down_the_layers_only() -> None:
    upward = []
    for name, deps in _graph().items():
        here = _layer_of(name)
        if here is None:
            continue
        for dep in deps:
            there = _layer_of(dep)
            if there is not None and there > here:
                upward.append(f"{name} -> {dep}")
    assert upward == [], "imports that run back up a layer:\n" + "\n".join(sorted(upward))


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk meets, each as ``[a, b, ..., a]``."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_the_import_graph_has_no_cycle() -> None:
    cycles = find_cycles(_graph())
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
