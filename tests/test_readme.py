"""The README's snippets: copied from tested examples, and its pytest snippet passes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SNIPPET = re.compile(r"[Ff]rom \[`(examples/[\w./]+)`\]\([^)]*\):\s*```python\n(.*?)```", re.S)

pytest_plugins = ["pytester"]


def _snippets() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in SNIPPET.finditer(README)]


def test_readme_has_a_snippet_for_flask_starlette_fastapi_and_django() -> None:
    sources = [source for source, _ in _snippets()]
    assert sources == [
        "examples/flask_app.py",
        "examples/starlette_app.py",
        "examples/fastapi_app.py",
        "examples/django_project/mysite/settings.py",
        "examples/django_project/mysite/views.py",
    ]


@pytest.mark.parametrize(("source", "snippet"), _snippets(), ids=lambda v: Path(v).stem)
def test_readme_snippet_is_copied_from_its_example(source: str, snippet: str) -> None:
    """Every line of the snippet appears in the example, in the same order and indent."""
    example = (ROOT / source).read_text().splitlines()
    position = 0
    for line in filter(None, snippet.splitlines()):
        try:
            position = example.index(line, position) + 1
        except ValueError:
            pytest.fail(f"{source} has no line {line!r} after line {position}")


def test_readme_pytest_snippet_passes_against_the_flask_example(
    pytester: pytest.Pytester,
) -> None:
    match = re.search(
        r"```python\n(def test_\w+\(client, optimizely_events\):.*?)```", README, re.S
    )
    assert match, "the README's pytest snippet is missing"
    pytester.makeconftest(
        f"""
import sys

import pytest

sys.path.insert(0, {str(ROOT / "examples")!r})
from flask_app import create_app


@pytest.fixture
def client():
    return create_app().test_client()
"""
    )
    pytester.makepyfile(test_snippet=match.group(1))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
