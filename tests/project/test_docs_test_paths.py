"""Every test the docs name (``tests/<path>.py::test_name``, as in the table of
servers in docs/deployment.md) exists, so a moved or renamed test cannot leave
a page pointing at nothing."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAMED = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?")


def named_tests() -> Iterator[tuple[str, str, str | None]]:
    """(page, test file, test function or None) for each test a page names."""
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for match in NAMED.finditer(page.read_text()):
            yield page.name, match.group(1), match.group(2)


def test_the_deployment_table_names_its_tests() -> None:
    pages = [page for page, _, name in named_tests() if name]
    assert pages.count("deployment.md") >= 15


def test_every_test_the_docs_name_exists() -> None:
    missing = []
    for page, path, name in named_tests():
        file = ROOT / path
        if not file.is_file():
            missing.append(f"{page}: {path}")
        elif name and not re.search(rf"^(async )?def {name}\(", file.read_text(), re.M):
            missing.append(f"{page}: {path}::{name}")
    assert missing == []
