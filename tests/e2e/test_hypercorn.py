"""Starlette under hypercorn, with the asyncio and the trio worker: the
lifespan shutdown flushes (on a thread of its own; under trio through anyio)."""

from __future__ import annotations

import pytest

from tests.support.endpoint import EventEndpoint
from tests.support.servers import (
    assert_exactly_once,
    free_port,
    load_then_stop,
    python_module,
    report,
    running,
)

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
    with running(command, event_endpoint, port, ready="Running on") as server:
        load, code = load_then_stop(server, event_endpoint, n=N)
    arrived = assert_exactly_once(event_endpoint, load.users)
    assert code == 0, server.log
    assert "WiringWarning" not in server.log
    assert "Traceback" not in server.log, server.log
    report(f"hypercorn {worker} SIGTERM", 3 * N, arrived, stop_s=f"{server.stop_seconds:.2f}")
