"""Flask under gunicorn with gevent workers, with and without --preload.

With --preload the app (and its dispatcher and sender) is created in the
master, before gevent patches the worker; an event sent at import starts the
sender there. Every worker must still serve and deliver, each event once.
"""

from __future__ import annotations

import pytest

from tests.support.endpoint import EventEndpoint
from tests.support.load import every_event_arrives_once_at_stop
from tests.support.servers import free_port, python_module

pytestmark = pytest.mark.slow

N = 300


def gunicorn_gevent(port: int, *args: str) -> list[str]:
    return python_module(
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--worker-class",
        "gevent",
        "--workers",
        "2",
        "--graceful-timeout",
        "30",
        *args,
        "tests.apps.e2e_flask:app",
    )


def test_gevent_workers_deliver_every_event_once(event_endpoint: EventEndpoint) -> None:
    port = free_port()
    every_event_arrives_once_at_stop(
        gunicorn_gevent(port),
        event_endpoint,
        port,
        ready="Booting worker",
        name="gunicorn gevent",
        n=N,
    )


def test_gevent_with_preload_and_an_event_sent_in_the_master(
    event_endpoint: EventEndpoint,
) -> None:
    port = free_port()
    # The master's own event arrives once (from the master), not once per worker.
    every_event_arrives_once_at_stop(
        gunicorn_gevent(port, "--preload"),
        event_endpoint,
        port,
        ready="Booting worker",
        name="gunicorn gevent --preload",
        n=N,
        startup_events=1,
        OPTIMIZELY_TEST_STARTUP_EVENT="1",
    )
