"""A real os.fork() after the Django integration was built (gunicorn --preload):
a client with an SDK key gets its datafile polling back in the child, from a
local datafile server; a client with a datafile is kept as it is."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from django.test import override_settings

from optimizely_middleware.django import get_client, get_state
from tests.support.child import wait_child
from tests.support.django import DATAFILE_PATH, DatafileServer, configure_django
from tests.support.endpoint import EventEndpoint

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


@pytest.fixture
def datafile_server() -> Iterator[DatafileServer]:
    server = DatafileServer()
    yield server
    server.stop()


def in_child(body: Callable[[], bool], timeout: float = 60.0) -> int:
    """Fork; the child exits 0 when ``body()`` returns True. The child's exit code."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            code = 0 if body() else 2
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    return wait_child(pid, timeout)


def test_an_sdk_key_client_polls_again_in_a_forked_child(
    datafile_server: DatafileServer, event_endpoint: EventEndpoint
) -> None:
    configure_django()
    config = {
        "SDK_KEY": "sdk-key-1",
        "EVENT_ENDPOINT": event_endpoint.url,
        "CLIENT_OPTIONS": {"url_template": datafile_server.url + "/{sdk_key}.json"},
    }
    with override_settings(OPTIMIZELY=config):
        parent_client = get_client()
        assert parent_client.config_manager.get_config() is not None  # fetched once
        assert datafile_server.fetches == 1

        def child() -> bool:
            client = get_client()
            assert client is not parent_client
            assert getattr(client.config_manager, "is_running", False)  # its own poller
            assert get_state().dispatcher is not None
            # The new client started from the parent's datafile: usable at once.
            assert client.config_manager.get_config() is not None
            deadline = time.monotonic() + 30
            while datafile_server.count() < 2:  # the child's own first poll
                assert time.monotonic() < deadline
                time.sleep(0.02)  # the server is in the parent process
            return get_client() is client  # built once

        assert in_child(child) == 0
        assert get_client() is parent_client  # the parent keeps its client


def test_a_fork_right_after_the_build_gives_the_child_the_first_datafile(
    datafile_server: DatafileServer, event_endpoint: EventEndpoint
) -> None:
    # The build waits for the first fetch: a fork that follows at once (gunicorn
    # --preload) never happens while that fetch runs on the polling thread.
    configure_django()
    datafile_server.delay = 0.5
    config = {
        "SDK_KEY": "sdk-key-1",
        "EVENT_ENDPOINT": event_endpoint.url,
        "CLIENT_OPTIONS": {"url_template": datafile_server.url + "/{sdk_key}.json"},
    }
    with override_settings(OPTIMIZELY=config):
        get_client()

        def child() -> bool:
            # The parent's datafile, without waiting for a fetch of the child's own.
            return get_client().config_manager.optimizely_config is not None

        assert in_child(child) == 0


def test_a_datafile_client_is_kept_in_a_forked_child(event_endpoint: EventEndpoint) -> None:
    configure_django()
    config = {"DATAFILE_PATH": str(DATAFILE_PATH), "EVENT_ENDPOINT": event_endpoint.url}
    with override_settings(OPTIMIZELY=config):
        parent_client = get_client()
        assert in_child(lambda: get_client() is parent_client) == 0
