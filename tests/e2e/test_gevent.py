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


def test_gevent_preload_forked_while_the_master_encodes_its_first_event(
    event_endpoint: EventEndpoint,
) -> None:
    """The master's sender thread runs the encoder's one-time guard under a lock
    when gunicorn forks; the worker must not inherit that lock held (a native
    lock held forever blocks gevent's hub: the worker hung until its timeout).
    One worker: a second one could still be booting at the stop, before gunicorn
    has installed its signal handlers, and sit out the graceful timeout."""
    port = free_port()
    command = gunicorn_gevent(
        port, "--preload", "--workers", "1", "--config", "python:tests.apps.gunicorn_fork_in_guard"
    )
    command[-1] = "tests.apps.e2e_flask_fork_in_guard:app"
    server = every_event_arrives_once_at_stop(
        command,
        event_endpoint,
        port,
        ready="Booting worker",
        name="gunicorn gevent --preload, fork inside the guard",
        n=30,
        startup_events=1,
        OPTIMIZELY_TEST_STARTUP_EVENT="1",
    )
    assert "the fork is not inside it" not in server.log
