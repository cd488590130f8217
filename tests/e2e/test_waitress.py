"""Flask under waitress: SIGINT exits normally (the exit handler delivers);
SIGTERM kills the process by its default action, so only the opt-in
install_sigterm_flush handler delivers (then the process still dies by SIGTERM)."""

from __future__ import annotations

import signal

import pytest

from tests.support.endpoint import EventEndpoint
from tests.support.servers import (
    assert_exactly_once,
    free_port,
    load_then_stop,
    python_module,
    report,
    run_load,
    running,
)

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
    with running(waitress(port), event_endpoint, port, ready="Serving on") as server:
        load, code = load_then_stop(server, event_endpoint, n=N, sig=signal.SIGINT)
    arrived = assert_exactly_once(event_endpoint, load.users)
    assert code == 0, server.log
    report("waitress SIGINT", 3 * N, arrived, stop_s=f"{server.stop_seconds:.2f}")


def test_waitress_stopped_by_sigterm_delivers_with_install_sigterm_flush(
    event_endpoint: EventEndpoint,
) -> None:
    port = free_port()
    with running(
        waitress(port), event_endpoint, port, ready="Serving on", OPTIMIZELY_TEST_SIGTERM_FLUSH="1"
    ) as server:
        event_endpoint.hold()
        load = run_load(port, N)
        server.process.send_signal(signal.SIGTERM)
        # The handler runs while every POST is still held: what arrives from
        # here is delivered by the handler alone.
        server.wait_for_line("SIGTERM: flushing Optimizely events")
        event_endpoint.release()
        code = server.wait()
    arrived = assert_exactly_once(event_endpoint, load.users)
    assert code == -signal.SIGTERM, server.log  # still dies by the signal, as before
    assert "every Optimizely event was delivered" in server.log
    report("waitress SIGTERM + install_sigterm_flush", 3 * N, arrived)
