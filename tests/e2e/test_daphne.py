"""Starlette under daphne, which sends no lifespan events: no false warning,
and the exit handler delivers every event when daphne stops on SIGTERM."""

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


def test_daphne_delivers_every_event_at_exit_without_a_lifespan_warning(
    event_endpoint: EventEndpoint,
) -> None:
    port = free_port()
    command = python_module(
        "daphne", "-b", "127.0.0.1", "-p", str(port), "tests.apps.e2e_starlette:app"
    )
    with running(command, event_endpoint, port, ready="Listening on TCP address") as server:
        load, code = load_then_stop(server, event_endpoint, n=N)
    arrived = assert_exactly_once(event_endpoint, load.users)
    assert code == 0, server.log
    assert "has not seen a lifespan" not in server.log
    assert "WiringWarning" not in server.log
    assert "sends no ASGI lifespan events" in server.log
    report("daphne SIGTERM", 3 * N, arrived, stop_s=f"{server.stop_seconds:.2f}")
