"""Source for the user test files that pytester writes: one preamble for every app.

Each generated file builds a real app with the real SDK, the datafile next to
it and the middleware, posting to ``EVENTS_URL`` (replaced by a local endpoint).
"""

from __future__ import annotations

import textwrap

import pytest

PLACEHOLDER = "EVENTS_URL"


def app_preamble(framework_imports: str, middleware: str) -> str:
    """The imports and ``DATAFILE`` every generated app starts with.

    Example::

        app_preamble("from flask import Flask", "OptimizelyWSGIMiddleware")
    """
    return (
        "from pathlib import Path\n"
        "\n"
        "import pytest\n"
        f"{textwrap.dedent(framework_imports).strip()}\n"
        "\n"
        "from optimizely_middleware import (\n"
        "    EventSender,\n"
        f"    {middleware},\n"
        "    RequestScopedEventDispatcher,\n"
        "    create_client,\n"
        ")\n"
        "\n"
        'DATAFILE = (Path(__file__).parent / "datafile.json").read_text()\n'
    )


def write_user_file(pytester: pytest.Pytester, name: str, events_url: str, *parts: str) -> None:
    """Write ``parts`` (each dedented on its own) as ``name``.py, ``EVENTS_URL`` filled in."""
    source = "".join(textwrap.dedent(part) for part in parts)
    pytester.makepyfile(**{name: source.replace(PLACEHOLDER, repr(events_url))})
