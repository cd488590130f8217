"""examples/wsgi_app.py: served by werkzeug, with the real SDK and a real event endpoint."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
import requests

from optimizely_middleware import EventSender, RequestScopedEventDispatcher
from optimizely_middleware.devserver import DevServer
from optimizely_middleware.dispatcher import add_request_end_listener, remove_request_end_listener
from tests.support.endpoint import EventEndpoint
from tests.support.examples import EXAMPLES, load_example
from tests.support.servers import werkzeug_in_a_thread

WAIT = 20.0


@pytest.fixture
def wsgi_app() -> ModuleType:
    return load_example("wsgi_app")


@pytest.fixture
def dispatcher(event_endpoint: EventEndpoint) -> Iterator[RequestScopedEventDispatcher]:
    dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=event_endpoint.url))
    try:
        yield dispatcher
    finally:
        dispatcher.close(WAIT)


@pytest.fixture
def port(
    wsgi_app: ModuleType, dispatcher: RequestScopedEventDispatcher, datafile: str
) -> Iterator[int]:
    """The example app, served by werkzeug on a thread of the test."""
    with werkzeug_in_a_thread(wsgi_app.create_app(dispatcher, datafile)) as port:
        yield port


def url(port: int, path: str) -> str:
    return f"http://127.0.0.1:{port}{path}"


def test_page_decides_the_flag_and_its_event_is_delivered(
    port: int, dispatcher: RequestScopedEventDispatcher, event_endpoint: EventEndpoint
) -> None:
    response = requests.get(url(port, "/"), params={"user": "bob", "plan": "pro"}, timeout=WAIT)
    assert response.status_code == 200
    # bob is bucketed into the "on" variation of new_checkout_test by the test datafile.
    assert "Hello bob: you get the new checkout." in response.text

    (visitor,) = event_endpoint.wait_for_visitors(1, WAIT)
    assert visitor["visitor_id"] == "bob"
    (snapshot,) = visitor["snapshots"]
    (decision,) = snapshot["decisions"]
    assert decision["metadata"]["flag_key"] == "new_checkout"
    assert decision["metadata"]["variation_key"] == "on"
    assert {"key": "plan", "value": "pro"}.items() <= visitor["attributes"][0].items()


def test_buy_tracks_a_purchase_with_revenue(
    port: int, dispatcher: RequestScopedEventDispatcher, event_endpoint: EventEndpoint
) -> None:
    response = requests.get(url(port, "/buy"), params={"user": "alice"}, timeout=WAIT)
    assert response.status_code == 200
    assert "Thanks for your order, alice (classic checkout)." in response.text

    visitors = event_endpoint.wait_for_visitors(2, WAIT)
    events = [e for v in visitors for s in v["snapshots"] for e in s["events"]]
    (purchase,) = [e for e in events if e["key"] == "purchase"]
    assert purchase["revenue"] == 4200
    assert purchase["value"] == 42.0
    assert dispatcher.flush(WAIT)
    stats = dispatcher.stats()
    assert stats["requests"] == 1
    assert stats["collected"] == stats["delivered_events"] == 2


def test_events_wait_for_the_response(
    port: int, dispatcher: RequestScopedEventDispatcher, event_endpoint: EventEndpoint
) -> None:
    # The endpoint holds every POST: the page must still answer at once.
    event_endpoint.hold()
    try:
        response = requests.get(url(port, "/buy"), params={"user": "carol"}, timeout=WAIT)
        assert response.status_code == 200
        event_endpoint.wait_for_arrivals(1, WAIT)
        assert event_endpoint.posts == []
    finally:
        event_endpoint.release()
    assert len(event_endpoint.wait_for_visitors(2, WAIT)) == 2


def test_unknown_path_is_404_without_events(
    port: int, dispatcher: RequestScopedEventDispatcher
) -> None:
    ended: queue.Queue[int] = queue.Queue()

    def on_request_end(d: RequestScopedEventDispatcher, events: list[Any], failed: bool) -> None:
        if d is dispatcher:
            ended.put(len(events))

    add_request_end_listener(on_request_end)
    try:
        response = requests.get(url(port, "/nope"), timeout=WAIT)
        assert response.status_code == 404
        # The server closes the response (and the scope) after the client has it.
        assert ended.get(timeout=WAIT) == 0
    finally:
        remove_request_end_listener(on_request_end)


def test_example_datafile_is_the_one_it_loads(wsgi_app: ModuleType) -> None:
    assert wsgi_app.DATAFILE == EXAMPLES / "datafile.json"
    assert '"new_checkout"' in wsgi_app.DATAFILE.read_text()


def test_running_the_example_sends_to_the_configured_endpoint() -> None:
    with DevServer(port=0) as devserver:
        env = dict(os.environ, OPTIMIZELY_EVENT_ENDPOINT=devserver.url, PYTHONUNBUFFERED="1")
        process = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "wsgi_app.py"), "--port", "0"],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        lines: queue.Queue[str] = queue.Queue()

        def pump() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        try:
            app_url, seen = "", []
            while not app_url:
                try:
                    seen.append(lines.get(timeout=WAIT))
                except queue.Empty:
                    raise AssertionError(f"the example did not start: {seen!r}") from None
                if "Running on http://127.0.0.1:" in seen[-1]:
                    app_url = seen[-1].split("Running on ")[1].strip()
            response = requests.get(f"{app_url}/buy", params={"user": "dave"}, timeout=WAIT)
            assert response.status_code == 200
            assert devserver.wait_for_visitors(2, WAIT)
            # Ctrl+C: the example closes its dispatcher and exits cleanly.
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=WAIT) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    keys = [e["key"] for v in devserver.visitors() for s in v["snapshots"] for e in s["events"]]
    assert sorted(keys) == ["campaign_activated", "purchase"]
    assert {v["visitor_id"] for v in devserver.visitors()} == {"dave"}
