"""The Flask extension and ``defer_events``: real Flask, the real SDK, the real
EventSender and a real local event endpoint, driven by Flask's test client
(gunicorn and the werkzeug server are in tests/e2e/test_flask_servers.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from gunicorn.http.wsgi import FileWrapper as GunicornFileWrapper
from optimizely.optimizely import Optimizely
from werkzeug.test import EnvironBuilder

from optimizely_middleware import (
    EventSender,
    OptimizelyWSGIMiddleware,
    RequestScopedEventDispatcher,
    WiringWarning,
    create_client,
)
from optimizely_middleware.errors import ConfigurationError
from optimizely_middleware.flask import (
    OptimizelyFlask,
    OptimizelyState,
    current_optimizely,
    defer_events,
)
from tests.apps.flask_views import create_app, create_decorated_app
from tests.support.endpoint import EventEndpoint
from tests.support.examples import load_example
from tests.support.servers import get, gunicorn, werkzeug_in_a_thread
from tests.support.wsgi import (
    DATAFILE_PATH,
    ROOT,
    event_keys,
    hand_offs,
    posts_of,
    visitors_of,
)

# send_file as it runs under gunicorn, whose file wrapper enables sendfile().
GUNICORN_ENVIRON = {"wsgi.file_wrapper": GunicornFileWrapper}


def settings(endpoint: EventEndpoint, **extra: Any) -> dict[str, Any]:
    return {
        "OPTIMIZELY_EVENT_ENDPOINT": endpoint.url,
        "OPTIMIZELY_DATAFILE_PATH": str(DATAFILE_PATH),
        **extra,
    }


@pytest.fixture
def app(event_endpoint: EventEndpoint) -> Iterator[Flask]:
    app = create_app(settings(event_endpoint))
    yield app
    app.extensions["optimizely"].dispatcher.close(10)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def state(app: Flask) -> OptimizelyState:
    return app.extensions["optimizely"]  # type: ignore[no-any-return]


class Decorated:
    """An app with ``defer_events`` on some views and no middleware."""

    def __init__(self, endpoint: EventEndpoint, datafile: str, **options: Any) -> None:
        self.dispatcher = RequestScopedEventDispatcher(
            EventSender(endpoint=endpoint.url), **options
        )
        self.client = create_client(self.dispatcher, datafile=datafile)
        self.app = create_decorated_app(self.dispatcher, self.client)
        self.test_client = self.app.test_client()


@pytest.fixture
def decorated(event_endpoint: EventEndpoint, datafile: str) -> Iterator[Decorated]:
    setup = Decorated(event_endpoint, datafile)
    yield setup
    setup.dispatcher.close(10)


# -- the extension --------------------------------------------------------------


def test_init_app_wires_everything_from_the_config(
    app: Flask, event_endpoint: EventEndpoint
) -> None:
    ext_state = state(app)
    assert isinstance(ext_state, OptimizelyState)
    assert isinstance(app.wsgi_app, OptimizelyWSGIMiddleware)
    assert app.wsgi_app.dispatcher is ext_state.dispatcher
    sender = ext_state.dispatcher.sender
    assert isinstance(sender, EventSender) and sender.endpoint == event_endpoint.url
    processor = ext_state.client.event_processor
    assert processor.event_dispatcher is ext_state.dispatcher  # type: ignore[attr-defined]
    with app.app_context():
        assert current_optimizely.config_manager is ext_state.client.config_manager
    assert ext_state.dispatcher.failed_requests == "keep"


def test_the_response_is_complete_before_its_events_are_sent(
    client: FlaskClient, app: Flask, event_endpoint: EventEndpoint
) -> None:
    event_endpoint.hold()
    with hand_offs(state(app).dispatcher) as ended:
        response = client.get("/buy/alice")
        assert response.status_code == 200
        assert ended == []  # the body has not been read to its end yet
        assert response.json is not None and response.json["user"] == "alice"
        assert ended == [(["alice", "alice"], False)]
    event_endpoint.wait_for_arrivals(1)  # the response was read while the POST is held
    event_endpoint.release()
    event_endpoint.wait_for_visitors(2)
    [post] = posts_of(event_endpoint.posts, "alice")
    assert event_keys(post.visitors) == ["campaign_activated", "purchase"]


def test_an_event_fired_mid_stream_belongs_to_the_request(
    client: FlaskClient, app: Flask, event_endpoint: EventEndpoint
) -> None:
    with hand_offs(state(app).dispatcher) as ended:
        with client.get("/stream/bob") as response:
            assert response.get_data(as_text=True) == "first chunk\nsecond chunk\n"
        assert ended == [(["bob"], False)]
    assert len(visitors_of(event_endpoint.wait_for_posts(1), "bob")) == 1


def test_an_exception_in_the_view_hands_its_events_over_as_failed(
    client: FlaskClient, app: Flask, event_endpoint: EventEndpoint
) -> None:
    with hand_offs(state(app).dispatcher) as ended:
        with client.get("/raise/carol") as response:
            assert response.status_code == 500
        assert ended == [(["carol"], True)]
    event_endpoint.wait_for_visitors(1)  # failed_requests="keep"
    assert state(app).dispatcher.stats()["failed_requests"] == 1


def test_an_exception_while_streaming_propagates_and_hands_over(
    client: FlaskClient, app: Flask
) -> None:
    with hand_offs(state(app).dispatcher) as ended:
        response = client.get("/raise-in-stream/dave")
        assert ended == []
        with pytest.raises(RuntimeError, match="the body failed"):
            response.get_data()
        response.close()
        assert ended == [(["dave"], True)]


def test_failed_requests_are_discarded_when_configured(event_endpoint: EventEndpoint) -> None:
    app = create_app(settings(event_endpoint, OPTIMIZELY_FAILED_REQUESTS="discard"))
    dispatcher = state(app).dispatcher
    try:
        client = app.test_client()
        with client.get("/raise/erin") as failed:
            assert failed.status_code == 500
        with client.get("/decide/frank") as ok:
            assert ok.status_code == 200
        posts = event_endpoint.wait_for_visitors(1)
        assert dispatcher.flush(10)
        assert [v["visitor_id"] for v in posts] == ["frank"]
        assert dispatcher.stats()["dropped"] == {"failed_request": 1}
    finally:
        dispatcher.close(10)


def serve(app: Flask, path: str) -> tuple[list[str], Any]:
    """Call ``app`` as gunicorn does (the test client would wrap the body)."""
    environ = EnvironBuilder(path, environ_overrides=GUNICORN_ENVIRON).get_environ()
    status: list[str] = []
    body = app(environ, lambda s, headers, exc_info=None: status.append(s))
    return status, body


def assert_the_file_wrapper_reaches_the_server_and_closing_it_hands_over(
    app: Flask, dispatcher: RequestScopedEventDispatcher, path: str, user: str
) -> None:
    """``path`` is a send_file view that decides for ``user``."""
    with hand_offs(dispatcher) as ended:
        status, body = serve(app, path)
        assert status == ["200 OK"]
        # What gunicorn checks before it uses sendfile():
        assert isinstance(body, GunicornFileWrapper)
        assert b"".join(body) == DATAFILE_PATH.read_bytes()
        assert ended == []
        body.close()
        assert ended == [([user], False)]


def test_send_file_keeps_the_servers_file_wrapper(app: Flask) -> None:
    assert_the_file_wrapper_reaches_the_server_and_closing_it_hands_over(
        app, state(app).dispatcher, "/file/gina", "gina"
    )


def test_an_async_view_adds_to_the_request(client: FlaskClient, app: Flask) -> None:
    with hand_offs(state(app).dispatcher) as ended:
        with client.get("/async/hank") as response:
            assert response.json is not None and response.json["user"] == "hank"
        assert ended == [(["hank"], False)]


def test_the_decorator_behind_the_extension_sends_once(
    client: FlaskClient, app: Flask, event_endpoint: EventEndpoint
) -> None:
    dispatcher = state(app).dispatcher
    with hand_offs(dispatcher) as ended:
        with client.get("/deferred/ivan") as response:
            assert response.status_code == 200
        assert ended == [(["ivan"], False)]
    assert dispatcher.flush(10)
    assert len(visitors_of(event_endpoint.posts, "ivan")) == 1
    assert dispatcher.stats()["handed_over"] == 1


def test_init_app_needs_a_datafile_or_sdk_key() -> None:
    with pytest.raises(ConfigurationError, match="OPTIMIZELY_DATAFILE_PATH"):
        OptimizelyFlask(Flask(__name__))


def test_init_app_twice_is_an_error(app: Flask) -> None:
    with pytest.raises(RuntimeError, match="already"):
        OptimizelyFlask(app)


def test_one_extension_serves_several_apps(event_endpoint: EventEndpoint) -> None:
    optimizely = OptimizelyFlask()
    first, second = Flask("first"), Flask("second")
    for app in (first, second):
        app.config.update(settings(event_endpoint))
        optimizely.init_app(app)
    try:
        with first.app_context():
            assert optimizely.client is state(first).client
            assert optimizely.dispatcher is state(first).dispatcher
        with second.app_context():
            assert optimizely.client is state(second).client
        assert state(first).client is not state(second).client
    finally:
        state(first).dispatcher.close(10)
        state(second).dispatcher.close(10)


def test_a_client_built_with_create_client_brings_its_dispatcher(
    datafile: str, event_endpoint: EventEndpoint
) -> None:
    dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=event_endpoint.url))
    client = create_client(dispatcher, datafile=datafile)
    app = Flask(__name__)
    optimizely = OptimizelyFlask(app, client=client)
    try:
        assert optimizely.client is client
        assert state(app).dispatcher is dispatcher
    finally:
        dispatcher.close(10)


def test_a_badly_wired_client_is_reported(datafile: str) -> None:
    dispatcher = RequestScopedEventDispatcher(EventSender())
    badly_wired = Optimizely(datafile, event_dispatcher=dispatcher)
    try:
        with pytest.warns(WiringWarning):
            OptimizelyFlask(Flask(__name__), client=badly_wired)
    finally:
        badly_wired.close()
        dispatcher.close(1)
    with pytest.raises(TypeError, match="create_client"):
        OptimizelyFlask(Flask(__name__), client=Optimizely(datafile))


def test_the_dispatcher_is_closed_when_the_process_exits(tmp_path: Path) -> None:
    # A sink that reports how it was closed, so only the extension's exit hook is seen.
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from flask import Flask
            from optimizely_middleware import RequestScopedEventDispatcher
            from optimizely_middleware.flask import OptimizelyFlask
            from tests.support.fakes import RecordingSink

            class ReportingSink(RecordingSink):
                def close(self, timeout=None):
                    print(f"closed timeout={{timeout}} events={{len(self.events)}}", flush=True)

            app = Flask(__name__)
            app.config["OPTIMIZELY_DATAFILE_PATH"] = {str(DATAFILE_PATH)!r}
            app.config["OPTIMIZELY_SHUTDOWN_TIMEOUT"] = 7
            OptimizelyFlask(app, dispatcher=RequestScopedEventDispatcher(ReportingSink()))

            @app.get("/")
            def index():
                app.extensions["optimizely"].client.create_user_context("u").decide("new_checkout")
                return "ok"

            with app.test_client().get("/") as response:
                assert response.status_code == 200
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "closed timeout=7.0 events=1"


# -- the decorator --------------------------------------------------------------


def test_a_decorated_view_hands_its_events_over_after_the_response(
    decorated: Decorated, event_endpoint: EventEndpoint
) -> None:
    event_endpoint.hold()
    with hand_offs(decorated.dispatcher) as ended:
        response = decorated.test_client.get("/deferred/judy")
        assert ended == []
        assert response.json == {"user": "judy", "enabled": response.json["enabled"]}
        assert ended == [(["judy", "judy"], False)]
    event_endpoint.wait_for_arrivals(1)
    event_endpoint.release()
    event_endpoint.wait_for_visitors(2)
    [post] = posts_of(event_endpoint.posts, "judy")
    assert event_keys(post.visitors) == ["campaign_activated", "purchase"]


def test_views_without_the_decorator_are_not_scoped(decorated: Decorated) -> None:
    with (
        hand_offs(decorated.dispatcher) as ended,
        decorated.test_client.get("/plain/kim") as response,
    ):
        assert response.status_code == 200
    assert ended == []
    assert decorated.dispatcher.stats()["outside_scope_sent"] == 1


def test_a_decorated_streaming_view(decorated: Decorated) -> None:
    with hand_offs(decorated.dispatcher) as ended:
        response = decorated.test_client.get("/deferred-stream/liam")
        assert ended == []
        assert response.get_data(as_text=True) == "first chunk\nsecond chunk\n"
        assert ended == [(["liam"], False)]


def test_a_decorated_send_file_view_hands_over_when_the_file_is_closed(
    decorated: Decorated,
) -> None:
    # werkzeug returns the file wrapper itself: call_on_close hooks never run.
    assert_the_file_wrapper_reaches_the_server_and_closing_it_hands_over(
        decorated.app, decorated.dispatcher, "/deferred-file/mia", "mia"
    )


def test_a_decorated_send_file_view_without_a_server_file_wrapper(decorated: Decorated) -> None:
    with hand_offs(decorated.dispatcher) as ended:
        response = decorated.test_client.get("/deferred-file/nina")
        assert ended == []
        assert response.get_data() == DATAFILE_PATH.read_bytes()
        assert ended == [(["nina"], False)]


def test_a_decorated_async_view(decorated: Decorated) -> None:
    with hand_offs(decorated.dispatcher) as ended:
        with decorated.test_client.get("/deferred-async/olga") as response:
            assert response.json is not None and response.json["user"] == "olga"
        assert ended == [(["olga"], False)]
    assert decorated.dispatcher.stats()["outside_scope_sent"] == 0


def test_a_decorated_view_that_raises_or_answers_5xx_is_failed(
    event_endpoint: EventEndpoint, datafile: str
) -> None:
    setup = Decorated(event_endpoint, datafile, failed_requests="discard")
    try:
        with hand_offs(setup.dispatcher) as ended:
            with setup.test_client.get("/deferred-raise/pat") as raised:
                assert raised.status_code == 500
            with setup.test_client.get("/deferred-500/quinn") as unavailable:
                assert unavailable.status_code == 503
            with setup.test_client.get("/deferred/rob") as ok:
                assert ok.status_code == 200
        assert ended == [(["pat"], True), (["quinn"], True), (["rob", "rob"], False)]
        assert setup.dispatcher.flush(10)
        assert {v["visitor_id"] for v in event_endpoint.all_visitors()} == {"rob"}
        assert setup.dispatcher.stats()["dropped"] == {"failed_request": 2}
    finally:
        setup.dispatcher.close(10)


def test_a_decorated_view_whose_response_is_dropped_still_hands_over(
    decorated: Decorated,
) -> None:
    replaced: list[object] = []

    @decorated.app.after_request
    def replace(response: Any) -> Any:
        if "sam" in str(response.json):
            replaced.append(response)
            return decorated.app.make_response(("replaced", 200))
        return response

    with hand_offs(decorated.dispatcher) as ended:
        with decorated.test_client.get("/deferred/sam") as response:
            assert response.get_data(as_text=True) == "replaced"
        assert ended == []
        replaced.clear()  # the unserved response is released
        assert ended == [(["sam", "sam"], False)]


# -- a client that goes away, under the werkzeug server ---------------------------


def stream_then_disconnect(port: int, path: str) -> None:
    """Read the first bytes of an endless response, then go away."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")


def upload_then_disconnect(port: int, path: str) -> None:
    """Announce a 100 kB body, send 10 bytes of it, then go away."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n".encode()
            + b"0123456789"
        )
        sock.shutdown(socket.SHUT_WR)
        sock.recv(4096)  # the answer (400) or the close


@pytest.mark.parametrize("mounted", ["extension", "decorator"])
def test_the_same_client_disconnect_is_never_a_failed_request(
    mounted: str, event_endpoint: EventEndpoint, datafile: str
) -> None:
    """With failed_requests="discard": a view that raised is discarded, while a
    client that goes away mid-stream or mid-upload loses nothing, with the
    extension (the WSGI middleware) and with the view decorator alike."""
    if mounted == "extension":
        app = create_app(settings(event_endpoint, OPTIMIZELY_FAILED_REQUESTS="discard"))
        dispatcher = state(app).dispatcher
        prefix = ""
    else:
        setup = Decorated(event_endpoint, datafile, failed_requests="discard")
        app, dispatcher, prefix = setup.app, setup.dispatcher, "deferred-"
    try:
        with hand_offs(dispatcher) as ended, werkzeug_in_a_thread(app) as port:
            status, _ = get(port, f"/{prefix}raise/boom")
            assert status == 500
            stream_then_disconnect(port, f"/{prefix}endless/streamer")
            upload_then_disconnect(port, f"/{prefix}upload/uploader")
            visitors = event_endpoint.wait_for_visitors(3)
        assert sorted(v["visitor_id"] for v in visitors) == ["streamer", "streamer", "uploader"]
        assert sorted(ended) == [(["boom"], True), (["streamer"] * 2, False), (["uploader"], False)]
        stats = dispatcher.stats()
        assert (stats["failed_requests"], stats["dropped"]) == (1, {"failed_request": 1})
    finally:
        dispatcher.close(10)


@pytest.mark.slow
@pytest.mark.parametrize("mounted", ["extension", "decorator"])
def test_the_same_client_disconnect_is_never_a_failed_request_under_gunicorn(
    mounted: str, event_endpoint: EventEndpoint
) -> None:
    app, prefix = (
        ("tests.apps.flask_views:create_app()", "")
        if mounted == "extension"
        else ("tests.apps.flask_views:create_decorated_app_from_env()", "deferred-")
    )
    server = gunicorn(
        app,
        env={
            "OPTIMIZELY_TEST_EVENT_ENDPOINT": event_endpoint.url,
            "OPTIMIZELY_TEST_DATAFILE": str(DATAFILE_PATH),
            "OPTIMIZELY_TEST_FAILED_REQUESTS": "discard",
        },
    ).start()
    try:
        status, _ = get(server.port, f"/{prefix}raise/boom")
        assert status == 500
        stream_then_disconnect(server.port, f"/{prefix}endless/streamer")
        upload_then_disconnect(server.port, f"/{prefix}upload/uploader")
        event_endpoint.wait_for_visitors(3)
        assert server.terminate() == 0  # a graceful stop delivers what is queued
    finally:
        server.kill()
    visitors = sorted(v["visitor_id"] for v in event_endpoint.all_visitors())
    assert visitors == ["streamer", "streamer", "uploader"], server.log


# -- the example ----------------------------------------------------------------


def test_the_example_app(event_endpoint: EventEndpoint) -> None:
    example = load_example("flask_app")
    app = example.create_app(event_endpoint=event_endpoint.url)
    try:
        client = app.test_client()
        event_endpoint.hold()
        with client.get("/?user=tina") as page:
            assert page.status_code == 200
            assert "tina" in page.get_data(as_text=True)
        with client.post("/buy?user=tina") as bought:
            assert bought.status_code == 200
        event_endpoint.wait_for_arrivals(1)
        event_endpoint.release()
        visitors = event_endpoint.wait_for_visitors(3)
        assert {v["visitor_id"] for v in visitors} == {"tina"}
        assert sorted(event_keys(visitors)) == [
            "campaign_activated",
            "campaign_activated",
            "purchase",
        ]
    finally:
        app.extensions["optimizely"].dispatcher.close(10)


# -- decorator mistakes fail when decorating ------------------------------------


def test_a_bare_defer_events_fails_when_decorating_and_shows_the_right_form() -> None:
    app = Flask(__name__)
    with pytest.raises(TypeError) as raised:

        @app.get("/<u>")
        @defer_events  # type: ignore[arg-type]
        def view(u: str) -> str:
            return u

    assert "write @defer_events(dispatcher) above def view(...)" in str(raised.value)


def test_defer_events_needs_a_dispatcher() -> None:
    with pytest.raises(TypeError, match="needs a RequestScopedEventDispatcher, not str"):
        defer_events("dispatcher")  # type: ignore[arg-type]
