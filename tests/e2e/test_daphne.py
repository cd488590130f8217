"""Starlette under daphne, which sends no lifespan events: no false warning,
and the exit handler delivers every event when daphne stops on SIGTERM."""

from __future__ import annotations

import pytest

from tests.support.endpoint import EventEndpoint
from tests.support.load import every_event_arrives_once_at_stop
from tests.support.servers import free_port, python_module

pytestmark = pytest.mark.slow

N = 200


def test_daphne_delivers_every_event_at_exit_without_a_lifespan_warning(
    event_endpoint: EventEndpoint,
) -> None:
    port = free_port()
    command = python_module(
        "daphne", "-b", "127.0.0.1", "-p", str(port), "tests.apps.e2e_starlette:app"
    )
    server = every_event_arrives_once_at_stop(
        command, event_endpoint, port, ready="Listening on TCP address", name="daphne SIGTERM", n=N
    )
    assert "has not seen a lifespan" not in server.log
    assert "WiringWarning" not in server.log
    assert "sends no ASGI lifespan events" in server.log
