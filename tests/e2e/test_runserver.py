"""Django's runserver dies by SIGTERM (no exit handler runs): with
install_sigterm_flush() in settings, every event still arrives."""

from __future__ import annotations

import signal

import pytest

from tests.support.endpoint import EventEndpoint
from tests.support.load import assert_exactly_once, load_then_sigterm_flush, report
from tests.support.servers import free_port, python_module, running

pytestmark = pytest.mark.slow

N = 120


def test_runserver_stopped_by_sigterm_delivers_with_install_sigterm_flush(
    event_endpoint: EventEndpoint,
) -> None:
    port = free_port()
    command = python_module("django", "runserver", f"127.0.0.1:{port}", "--noreload")
    with running(
        command,
        event_endpoint,
        port,
        ready="Quit the server with",
        DJANGO_SETTINGS_MODULE="tests.apps.e2e_django_runserver",
        OPTIMIZELY_TEST_SIGTERM_FLUSH="1",
    ) as server:
        load, code = load_then_sigterm_flush(server, event_endpoint, n=N)
    arrived = assert_exactly_once(event_endpoint, load.users)
    assert code == -signal.SIGTERM, server.log
    report("django runserver SIGTERM + install_sigterm_flush", 3 * N, arrived)
