"""Flask under waitress: SIGINT exits normally (the exit handler delivers);
SIGTERM kills the process by its default action, so only the opt-in
install_sigterm_flush handler delivers (then the process still dies by SIGTERM)."""

from __future__ import annotations

import signal

import pytest

from tests.support.endpoint import EventEndpoint
from tests.support.load import (
    assert_exactly_once,
    every_event_arrives_once_at_stop,
    load_then_sigterm_flush,
    report,
)
from tests.support.servers import free_port, python_module, running

pytestmark = pytest.mark.slow

N = 200


def waitress(port: int) -> list[str]:
    return python_module(
        "waitress", f"--listen=127.0.0.1:{port}", "--threads=8", "tests.apps.e2e_flask:app"
    )


def test_waitress_stopped_by_sigint_delivers_every_event_once(
    event_endpoint: EventEndpoint,
) -> None:
    port = free_port()
    every_event_arrives_once_at_stop(
        waitress(port),
        event_endpoint,
        port,
        ready="Serving on",
        name="waitress SIGINT",
        n=N,
        sig=signal.SIGINT,
    )


def test_waitress_stopped_by_sigterm_delivers_with_install_sigterm_flush(
    event_endpoint: EventEndpoint,
) -> None:
    port = free_port()
    with running(
        waitress(port), event_endpoint, port, ready="Serving on", OPTIMIZELY_TEST_SIGTERM_FLUSH="1"
    ) as server:
        load, code = load_then_sigterm_flush(server, event_endpoint, n=N)
    arrived = assert_exactly_once(event_endpoint, load.users)
    assert code == -signal.SIGTERM, server.log  # still dies by the signal, as before
    assert "every Optimizely event was delivered" in server.log
    report("waitress SIGTERM + install_sigterm_flush", 3 * N, arrived)
