"""The local event endpoint the devserver's tests send to: on a free port,
printing to a buffer, stopped at the end."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from optimizely_middleware.devserver import DevServer


@pytest.fixture
def devserver() -> Iterator[DevServer]:
    server = DevServer(port=0, output=io.StringIO()).start()
    try:
        yield server
    finally:
        server.stop()
