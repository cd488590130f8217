"""The shutdown warning under a real uvicorn: an endpoint that holds each POST
3 s and a 1 s lifespan flush. uvicorn re-raises SIGTERM after the shutdown,
so the events still in flight are really lost, and the warning must count
them (it once said "queue depth 0, dropped {}")."""

from __future__ import annotations

import re
import signal

import pytest

from tests.support.endpoint import EventEndpoint
from tests.support.load import run_load
from tests.support.servers import free_port, python_module, running

pytestmark = pytest.mark.slow


def test_a_flush_that_times_out_counts_the_events_in_flight(
    event_endpoint: EventEndpoint,
) -> None:
    port = free_port()
    command = python_module(
        "uvicorn", "tests.apps.e2e_starlette:app", "--host", "127.0.0.1", "--port", str(port)
    )
    event_endpoint.delay = 3.0
    with running(
        command,
        event_endpoint,
        port,
        ready="Application startup complete",
        OPTIMIZELY_TEST_SHUTDOWN_TIMEOUT="1",
    ) as server:
        run_load(port, 40)
        event_endpoint.wait_for_arrivals(1)  # a POST is held: events are in flight
        code = server.stop(signal.SIGTERM)
    match = re.search(
        r"shutdown_timeout=1\.0 s passed .*: (\d+) events not confirmed by the endpoint "
        r"\((\d+) in flight, (\d+) queued\)",
        server.log,
    )
    assert match, server.log
    unconfirmed, in_flight, queued = (int(g) for g in match.groups())
    assert in_flight > 0 and unconfirmed == in_flight + queued
    # What the endpoint confirmed plus what the warning counted is every event.
    assert unconfirmed + len(event_endpoint.all_visitors()) == 3 * 40, server.log
    assert code in (0, -signal.SIGTERM), server.log
    print(f"\nE2E uvicorn 1 s flush, 3 s POSTs: {unconfirmed} unconfirmed ({in_flight} in flight)")
