"""Every Python block in README.md and docs/*.md runs as shown (see docs_snippets.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest

from tests.project.docs_snippets import (
    CONFTESTS,
    DATAFILE,
    PRELUDES,
    ROOT,
    Block,
    all_blocks,
    excerpt_mismatch,
    markdown_files,
    numbered_source,
)

BLOCKS = all_blocks()


def _blocks(*kinds: str) -> list[object]:
    return [
        pytest.param(block, id=f"{block.where}-{block.kind}")
        for block in BLOCKS
        if block.kind in kinds
    ]


def _scratch(tmp_path: Path) -> Path:
    shutil.copy(DATAFILE, tmp_path / "datafile.json")
    return tmp_path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def test_blocks_are_found_in_the_readme_and_the_docs() -> None:
    paths = {block.path for block in BLOCKS}
    assert "README.md" in paths
    assert {"docs/getting-started.md", "docs/wiring.md", "docs/deployment.md"} <= paths
    assert len(BLOCKS) > 40


def test_every_marker_names_a_known_prelude_or_conftest() -> None:
    for block in BLOCKS:
        known = CONFTESTS if block.kind == "pytest" else PRELUDES
        if block.kind in ("run", "pytest"):
            for arg in block.args:
                name = arg.removeprefix("conftest=")
                assert name in known, f"{block.where}: no prelude or conftest {name!r}"


@pytest.mark.parametrize("block", _blocks("run"))
def test_block_runs_as_shown(block: Block, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.project.docs_snippets", block.path, str(block.line)],
        cwd=_scratch(tmp_path),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, f"{block.where} failed:\n{result.stderr[-4000:]}"


@pytest.mark.parametrize("block", _blocks("pytest"))
def test_block_passes_under_pytest(block: Block, tmp_path: Path) -> None:
    scratch = _scratch(tmp_path)
    for arg in block.args:
        (scratch / "conftest.py").write_text(CONFTESTS[arg.removeprefix("conftest=")])
    # Named after the page, with the page's line numbers, so a failure points at it.
    test_file = scratch / f"test_{Path(block.path).stem.replace('-', '_')}.py"
    test_file.write_text(numbered_source(block))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file.name],
        cwd=scratch,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0 and " passed" in summary and "skipped" not in summary, (
        f"{block.where} did not pass under pytest:\n{result.stdout[-4000:]}{result.stderr[-2000:]}"
    )


@pytest.mark.parametrize("block", _blocks("excerpt"))
def test_excerpt_is_copied_from_its_example(block: Block) -> None:
    mismatch = excerpt_mismatch(block)
    assert mismatch is None, mismatch


def test_every_fragment_compiles() -> None:
    for block in BLOCKS:
        if block.kind == "fragment":
            compile(numbered_source(block), block.path, "exec")


DOTTED_NAME = re.compile(r"\boptimizely_middleware(?:\.[A-Za-z_]\w*)+")


def _resolves(name: str) -> bool:
    """True when ``name`` is a module of the package or a name in one."""
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            value: object = import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        try:
            for attribute in parts[split:]:
                value = getattr(value, attribute)
        except AttributeError:
            return False
        return True
    return False


def test_every_dotted_name_of_the_package_in_the_docs_imports() -> None:
    """``optimizely_middleware.x.y`` in prose or code: a module, a name in one, or a logger."""
    source = "\n".join(path.read_text() for path in (ROOT / "optimizely_middleware").rglob("*.py"))
    missing = [
        f"{path.relative_to(ROOT)}:{number}: {name}"
        for path in markdown_files()
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        for name in DOTTED_NAME.findall(line)
        if not _resolves(name) and f'"{name}"' not in source  # a logger's name
    ]
    assert not missing, "names that do not import:\n" + "\n".join(missing)
