"""Every Python block in README.md and docs/*.md runs as shown (see docs_snippets.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
    numbered_source,
)

# Blocks known not to run as shown, in pages whose owners rewrite them. Keyed by the
# block's first line and file, so an edit to the block retires the entry; strict, so a
# block that starts to pass says so.
KNOWN_BROKEN: dict[tuple[str, str], str] = {
    ("docs/configuration.md", "from optimizely_middleware import ("): "uses an undefined app",
    (
        "docs/delivery.md",
        "from optimizely_middleware import EventSender, RequestScopedEventDispatcher",
    ): ("report_lost_events is not defined"),
    ("docs/devserver.md", "import requests"): (
        "RequestScopedEventDispatcher/EventSender not imported; waits for visitors nothing sends"
    ),
    (
        "docs/devserver.md",
        "from optimizely_middleware.wire.payloads import conversions_in, impressions_in",
    ): ("post is not defined"),
    ("docs/django.md", "MIDDLEWARE = ["): "not a copy of the example's settings.py",
    ("docs/django.md", "from optimizely_middleware.django import visitor_id"): (
        "needs Django settings (mark it as an excerpt of the example's views.py)"
    ),
    ("docs/django.md", "from optimizely_middleware.django import get_client, get_dispatcher"): (
        "needs Django settings and an order"
    ),
    ("docs/django.md", "# mysite/asgi.py"): "needs the mysite project",
    (
        "docs/django.md",
        "def test_checkout(client, optimizely_events):          # pytest-django's client",
    ): ("needs a Django project under pytest-django"),
    ("docs/flask.md", "from flask import Flask, request"): "not a copy of examples/flask_app.py",
    (
        "docs/flask.md",
        "from optimizely_middleware import RequestScopedEventDispatcher, create_client",
    ): ("datafile and app are not defined"),
    (
        "docs/flask.md",
        "from optimizely_middleware import OptimizelyWSGIMiddleware, RequestScopedEventDispatcher, "
        "create_client",
    ): "application is not defined",
    ("docs/starlette.md", "from optimizely_middleware import ("): (
        "not a copy of examples/starlette_app.py"
    ),
    ("docs/starlette.md", "from typing import Annotated"): "not a copy of examples/fastapi_app.py",
    ("docs/starlette.md", "from optimizely_middleware.starlette import defer_events"): (
        "dispatcher, client and the Starlette names are not defined"
    ),
    (
        "docs/starlette.md",
        "# Quart",
    ): "app, dispatcher and OptimizelyASGIMiddleware are not defined",
    ("docs/testing.md", "def test_checkout(client, optimizely_events):"): "no client fixture",
    (
        "docs/testing.md",
        "def test_checkout(client, optimizely_events):          # pytest-django's client",
    ): ("needs a Django project under pytest-django"),
    (
        "docs/testing.md",
        "from optimizely_middleware.wire.validation import payload_errors, validate_payload",
    ): ("event is not defined"),
    ("docs/testing.md", "from optimizely_middleware.testing import EventCapture"): (
        "client is not defined"
    ),
}

BLOCKS = all_blocks()


def _param(block: Block) -> object:
    first = next(line for line in block.code.splitlines() if line.strip())
    reason = KNOWN_BROKEN.get((block.path, first))
    marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
    return pytest.param(block, id=f"{block.where}-{block.kind}", marks=marks)


def _blocks(*kinds: str) -> list[object]:
    return [_param(block) for block in BLOCKS if block.kind in kinds]


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


@pytest.mark.parametrize("block", _blocks("fragment"))
def test_fragment_compiles(block: Block) -> None:
    compile(numbered_source(block), block.path, "exec")
