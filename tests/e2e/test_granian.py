"""Starlette under granian (ASGI interface, one and two workers)."""

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


@pytest.mark.parametrize("workers", [1, 2])
def test_granian_delivers_every_event_once_at_sigterm(
    workers: int, event_endpoint: EventEndpoint
) -> None:
    port = free_port()
    command = python_module(
        "granian",
        "--interface",
        "asgi",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "tests.apps.e2e_starlette:app",
    )
    with running(command, event_endpoint, port, ready=None) as server:
        load, code = load_then_stop(server, event_endpoint, n=N)
    arrived = assert_exactly_once(event_endpoint, load.users)
    assert code == 0, server.log
    assert "WiringWarning" not in server.log
    report(f"granian x{workers} SIGTERM", 3 * N, arrived, stop_s=f"{server.stop_seconds:.2f}")
