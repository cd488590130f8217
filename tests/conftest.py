from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.endpoint import EventEndpoint

DATA = Path(__file__).parent / "data"


def pytest_configure(config: pytest.Config) -> None:
    # A shell's background job (``./scripts/test &``, nohup) starts with SIGINT
    # ignored, and the servers these tests start would inherit that and never
    # see their Ctrl+C. A handled signal is reset to the default in a child.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def datafile() -> str:
    """A small real v4 datafile: experiment ``headline_test``, flag
    ``new_checkout`` (rule ``new_checkout_test``), events ``purchase`` and
    ``add_to_cart``."""
    return (DATA / "datafile.json").read_text()


@pytest.fixture
def event_endpoint() -> Iterator[EventEndpoint]:
    """A real HTTP event endpoint on 127.0.0.1 that records every POST."""
    endpoint = EventEndpoint().start()
    yield endpoint
    endpoint.stop()
