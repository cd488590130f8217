from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import trove_classifiers
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import optimizely_middleware


def test_every_public_name_resolves() -> None:
    for name in optimizely_middleware.__all__:
        assert getattr(optimizely_middleware, name) is not None
    assert optimizely_middleware.__version__ == "0.1.0"


def test_importing_the_package_does_not_import_the_sdk_or_a_framework() -> None:
    code = (
        "import sys, optimizely_middleware, optimizely_middleware.testing.pytest_plugin;"
        "print(sorted(m for m in ('optimizely', 'flask', 'starlette', 'requests')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- the published metadata (what an index page and `pip install` see) ---------------

DIST = "optimizely-middleware"
REPOSITORY = "https://github.com/optimizely-middleware/optimizely-middleware"
FACES = {
    "flask": ["optimizely_middleware/flask.py"],
    "starlette": [
        "optimizely_middleware/starlette.py",
        "optimizely_middleware/starlette_extension.py",
    ],
    "fastapi": [
        "optimizely_middleware/starlette.py",
        "optimizely_middleware/starlette_extension.py",
        "optimizely_middleware/fastapi.py",
    ],
    "django": ["optimizely_middleware/django"],
    "testing": ["optimizely_middleware/testing/pytest_plugin.py"],
}
# Imports an extra need not cover, and why.
NOT_COVERED = {
    "_typeshed": "exists for type checkers only, imported under TYPE_CHECKING",
    # lifespan.py imports anyio only when the ASGI loop is not asyncio (trio); the
    # servers and frameworks that run trio apps bring it.
    "anyio": "imported lazily, under trio only",
}
ROOT = Path(__file__).resolve().parents[2]


def _requirements(extra: str | None = None) -> list[Requirement]:
    """The distribution's requirements that `pip install name[extra]` installs."""
    found = []
    for text in importlib.metadata.requires(DIST) or []:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is None or marker.evaluate({"extra": extra or ""}):
            found.append(requirement)
    return found


def _closure(names: set[str]) -> set[str]:
    """canonical names of these distributions and everything they require (no extras)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def _third_party_imports(path: Path) -> set[str]:
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    modules: set[str] = set()
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m != "optimizely_middleware"}


def test_the_core_installs_neither_a_framework_nor_werkzeug_nor_development_tools() -> None:
    core = {canonicalize_name(r.name) for r in _requirements()}
    assert core == {"optimizely-sdk", "orjson", "requests"}
    extras = set(importlib.metadata.metadata(DIST).get_all("Provides-Extra") or [])
    assert extras == set(FACES)
    flask = {canonicalize_name(r.name) for r in _requirements("flask")}
    assert "werkzeug" in flask
    for extra in FACES.keys() - {"flask"}:
        assert "werkzeug" not in {canonicalize_name(r.name) for r in _requirements(extra)}


def test_every_module_imports_only_what_the_core_or_its_extra_installs() -> None:
    distributions = importlib.metadata.packages_distributions()
    core = {r.name for r in _requirements()}
    face_of = {ROOT / module: extra for extra, modules in FACES.items() for module in modules}
    for module in sorted((ROOT / "optimizely_middleware").rglob("*.py")):
        extras = [extra for path, extra in face_of.items() if module.is_relative_to(path)]
        for extra in extras or [None]:
            allowed = _closure(core | {r.name for r in _requirements(extra)})
            for name in _third_party_imports(module) - NOT_COVERED.keys():
                providers = {canonicalize_name(d) for d in distributions.get(name, [])}
                assert providers & allowed, (
                    f"{module.relative_to(ROOT)} imports {name}, which "
                    f"`pip install {DIST}{f'[{extra}]' if extra else ''}` does not install"
                )


def test_classifiers_are_known_to_the_index_and_name_python_3_10_to_3_13() -> None:
    classifiers = importlib.metadata.metadata(DIST).get_all("Classifier") or []
    unknown = [c for c in classifiers if c not in trove_classifiers.classifiers]
    assert unknown == []
    for minor in (10, 11, 12, 13):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
    assert any(c.startswith("Development Status :: ") for c in classifiers)


def test_licence_and_project_urls() -> None:
    metadata = importlib.metadata.metadata(DIST)
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]
    urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL") or [])
    assert set(urls) == {"Homepage", "Documentation", "Source", "Issues", "Changelog"}
    assert all(url.startswith(REPOSITORY) for url in urls.values())
