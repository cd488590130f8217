"""Starlette under hypercorn, with the asyncio and the trio worker: the
lifespan shutdown flushes (on a thread of its own; under trio through anyio)."""

from __future__ import annotations

import pytest

from tests.support.endpoint import EventEndpoint
from tests.support.load import every_event_arrives_once_at_stop
from tests.support.servers import free_port, python_module

pytestmark = pytest.mark.slow

N = 200


@pytest.mark.parametrize("worker", ["asyncio", "trio"])
def test_hypercorn_delivers_every_event_once_at_sigterm(
    worker: str, event_endpoint: EventEndpoint
) -> None:
    port = free_port()
    command = python_module(
        "hypercorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--worker-class",
        worker,
        "tests.apps.e2e_starlette:app",
    )
    server = every_event_arrives_once_at_stop(
        command, event_endpoint, port, ready="Running on", name=f"hypercorn {worker} SIGTERM", n=N
    )
    assert "WiringWarning" not in server.log
    assert "Traceback" not in server.log, server.log
