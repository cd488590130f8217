"""Flask under gunicorn with gevent workers, with and without --preload.

With --preload the app (and its dispatcher and sender) is created in the
master, before gevent patches the worker; an event sent at import starts the
sender there. Every worker must still serve and deliver, each event once.
"""

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
    with running(gunicorn_gevent(port), event_endpoint, port, ready="Booting worker") as server:
        load, code = load_then_stop(server, event_endpoint, n=N)
    arrived = assert_exactly_once(event_endpoint, load.users, log=server.log)
    assert code == 0, server.log
    report("gunicorn gevent", 3 * N, arrived, stop_s=f"{server.stop_seconds:.2f}")


def test_gevent_with_preload_and_an_event_sent_in_the_master(
    event_endpoint: EventEndpoint,
) -> None:
    port = free_port()
    with running(
        gunicorn_gevent(port, "--preload"),
        event_endpoint,
        port,
        ready="Booting worker",
        OPTIMIZELY_TEST_STARTUP_EVENT="1",
    ) as server:
        load, code = load_then_stop(server, event_endpoint, n=N)
    # The master's own event arrives once (from the master), not once per worker.
    arrived = assert_exactly_once(event_endpoint, load.users, extra={"startup": 1}, log=server.log)
    assert code == 0, server.log
    report("gunicorn gevent --preload", 3 * N + 1, arrived, stop_s=f"{server.stop_seconds:.2f}")


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
    with running(
        command, event_endpoint, port, ready="Booting worker", OPTIMIZELY_TEST_STARTUP_EVENT="1"
    ) as server:
        load, code = load_then_stop(server, event_endpoint, n=30)
    assert "the fork is not inside it" not in server.log
    arrived = assert_exactly_once(event_endpoint, load.users, extra={"startup": 1}, log=server.log)
    assert code == 0, server.log
    report(
        "gunicorn gevent --preload, fork inside the guard",
        3 * 30 + 1,
        arrived,
        stop_s=f"{server.stop_seconds:.2f}",
    )
