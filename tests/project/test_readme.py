"""The README as a package index shows it: a snippet per framework, links that work there.

Every Python block of the README also runs (or is checked against the example it is
copied from) in test_docs_snippets.py.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.project.docs_snippets import python_blocks

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BLOB = "https://github.com/optimizely-middleware/optimizely-middleware/blob/main/"
RAW = "https://raw.githubusercontent.com/optimizely-middleware/optimizely-middleware/main/"


def test_readme_has_a_snippet_for_flask_starlette_fastapi_and_django() -> None:
    blocks = python_blocks(ROOT / "README.md")
    assert [block.args[0] for block in blocks if block.kind == "excerpt"] == [
        "examples/starlette_app.py",
        "examples/fastapi_app.py",
        "examples/django_project/mysite/settings.py",
        "examples/django_project/mysite/views.py",
    ]
    flask_apps = [b for b in blocks if b.kind == "run" and "OptimizelyFlask()" in b.code]
    assert len(flask_apps) == 1


def test_readme_links_and_image_are_absolute_and_name_files_of_the_repository() -> None:
    """A package index renders the README away from the repository: relative links break."""
    targets = re.findall(r"\]\(([^)\s]+)\)", README)
    assert targets
    for target in targets:
        assert target.startswith(("https://", "#")), f"relative link in README.md: {target}"
        for base in (BLOB, RAW):
            if target.startswith(base):
                path = target.removeprefix(base).split("#")[0]
                assert (ROOT / path).exists(), f"README.md links to a missing file: {path}"
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", README)
    assert images
    assert all(image.startswith(RAW) for image in images)
