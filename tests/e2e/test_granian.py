"""Starlette under granian (ASGI interface, one and two workers)."""

from __future__ import annotations

import pytest

from tests.support.endpoint import EventEndpoint
from tests.support.load import every_event_arrives_once_at_stop
from tests.support.servers import free_port, python_module

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
    server = every_event_arrives_once_at_stop(
        command, event_endpoint, port, ready=None, name=f"granian x{workers} SIGTERM", n=N
    )
    assert "WiringWarning" not in server.log
