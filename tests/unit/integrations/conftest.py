"""The dispatcher the ASGI and lifespan tests drive: over a ShutdownSink that
records on which thread it was flushed and closed."""

from __future__ import annotations

import pytest

from optimizely_middleware import RequestScopedEventDispatcher
from tests.support.fakes import ShutdownSink


@pytest.fixture
def sink() -> ShutdownSink:
    return ShutdownSink()


@pytest.fixture
def dispatcher(sink: ShutdownSink) -> RequestScopedEventDispatcher:
    return RequestScopedEventDispatcher(sink)
