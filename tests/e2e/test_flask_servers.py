"""End to end: Flask apps with the extension or the decorator, served by real
servers on 127.0.0.1 (gunicorn with gthread workers as a subprocess, the
werkzeug dev server in a thread), the real SDK, the real EventSender and a
real local event endpoint."""

from __future__ import annotations

import contextlib
import http.client
import signal
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.apps.flask_views import create_app, create_decorated_app
from tests.support.endpoint import EventEndpoint
from tests.support.servers import (
    ServerProcess,
    get,
    gunicorn,
    killed_at_the_end,
    werkzeug_in_a_thread,
)
from tests.support.wsgi import DATAFILE_PATH, event_keys, posts_of, visitors_of

EXTENSION_APP = "tests.apps.flask_views:create_app()"
DECORATED_APP = "tests.apps.flask_views:create_decorated_app_from_env()"


class Served:
    """A running server: its port, and a way to wait until every event it
    will ever send has been sent (gunicorn: a graceful stop; in-process: a
    flush of the dispatcher)."""

    def __init__(self, port: int, settle: Callable[[], None]) -> None:
        self.port = port
        self.settle = settle

    def get(self, path: str) -> tuple[int, bytes]:
        return get(self.port, path)


ServerFactory = Callable[..., Served]


def one_page_sends_once(served: Served, endpoint: EventEndpoint, path: str) -> tuple[int, bytes]:
    """GET ``path`` (its last segment is the visitor); once the server has settled,
    that visitor's events arrived in exactly one visitor entry. The page."""
    page = served.get(path)
    endpoint.wait_for_visitors(1)
    served.settle()
    assert len(visitors_of(endpoint.posts, path.rsplit("/", 1)[1])) == 1
    return page


@pytest.fixture(name="gunicorn")
def gunicorn_fixture(
    event_endpoint: EventEndpoint, tmp_path: Path
) -> Iterator[Callable[..., ServerProcess]]:
    def start(
        app: str = EXTENSION_APP, *args: str, env: dict[str, str] | None = None
    ) -> ServerProcess:
        server = gunicorn(
            app,
            *args,
            env={
                "OPTIMIZELY_TEST_EVENT_ENDPOINT": event_endpoint.url,
                "OPTIMIZELY_TEST_DATAFILE": str(DATAFILE_PATH),
                "OPTIMIZELY_TEST_SENDFILE_LOG": str(tmp_path / "sendfile.log"),
                **(env or {}),
            },
        )
        started.append(server)
        return server.start()

    with killed_at_the_end(event_endpoint) as started:
        yield start


@contextmanager
def werkzeug_server(app: Flask, dispatcher: Any) -> Iterator[Served]:
    try:
        with werkzeug_in_a_thread(app) as port:
            yield Served(port, lambda: dispatcher.flush(30))
    finally:
        dispatcher.close(10)


@pytest.fixture(params=["gunicorn", "werkzeug"])
def serve(
    request: pytest.FixtureRequest,
    gunicorn: Callable[..., ServerProcess],
    event_endpoint: EventEndpoint,
    datafile: str,
) -> Iterator[ServerFactory]:
    """``serve(decorated=False, **env)``: the extension app, or the app with
    ``defer_events`` on some views only, on each server."""
    with ExitStack() as stack:

        def start(*, decorated: bool = False, **env: str) -> Served:
            if request.param == "gunicorn":
                server = gunicorn(DECORATED_APP if decorated else EXTENSION_APP, env=env)
                return Served(server.port, lambda: _stopped(server))
            config = {
                "OPTIMIZELY_EVENT_ENDPOINT": event_endpoint.url,
                "OPTIMIZELY_DATAFILE_PATH": str(DATAFILE_PATH),
            }
            if "OPTIMIZELY_TEST_FAILED_REQUESTS" in env:
                config["OPTIMIZELY_FAILED_REQUESTS"] = env["OPTIMIZELY_TEST_FAILED_REQUESTS"]
            if decorated:
                from optimizely_middleware import (
                    EventSender,
                    RequestScopedEventDispatcher,
                    create_client,
                )

                dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=event_endpoint.url))
                app = create_decorated_app(dispatcher, create_client(dispatcher, datafile))
            else:
                app = create_app(config)
                dispatcher = app.extensions["optimizely"].dispatcher
            return stack.enter_context(werkzeug_server(app, dispatcher))

        yield start


def _stopped(server: ServerProcess) -> None:
    assert server.terminate() == 0


# -- on both servers --------------------------------------------------------------


def test_the_client_has_the_whole_response_while_the_endpoint_is_held(
    serve: ServerFactory, event_endpoint: EventEndpoint
) -> None:
    served = serve()
    event_endpoint.hold()
    status, body = served.get("/buy/alice")
    assert status == 200
    assert b'"user":"alice"' in body.replace(b" ", b"")
    event_endpoint.wait_for_arrivals(1)  # the events' POST is on its way, and held
    assert event_endpoint.posts == []
    event_endpoint.release()
    event_endpoint.wait_for_visitors(2)
    served.settle()
    [post] = posts_of(event_endpoint.posts, "alice")
    assert event_keys(post.visitors) == ["campaign_activated", "purchase"]


def test_an_event_fired_mid_stream_is_sent_with_the_request(
    serve: ServerFactory, event_endpoint: EventEndpoint
) -> None:
    served = serve()
    status, body = served.get("/stream/bob")
    assert (status, body) == (200, b"first chunk\nsecond chunk\n")
    event_endpoint.wait_for_visitors(1)
    served.settle()
    assert event_keys(visitors_of(event_endpoint.posts, "bob")) == ["campaign_activated"]


def test_exceptions_before_and_during_iteration_still_send(
    serve: ServerFactory, event_endpoint: EventEndpoint
) -> None:
    served = serve()
    status, _ = served.get("/raise/carol")
    assert status == 500
    # The body raises after the response started: the server cuts it off.
    with contextlib.suppress(http.client.HTTPException, ConnectionError):
        served.get("/raise-in-stream/dave")
    event_endpoint.wait_for_visitors(2)
    served.settle()
    assert len(visitors_of(event_endpoint.posts, "carol")) == 1
    assert len(visitors_of(event_endpoint.posts, "dave")) == 1


def test_failed_requests_are_discarded_with_the_discard_policy(
    serve: ServerFactory, event_endpoint: EventEndpoint
) -> None:
    served = serve(OPTIMIZELY_TEST_FAILED_REQUESTS="discard")
    assert served.get("/raise/erin")[0] == 500
    assert served.get("/decide/frank")[0] == 200
    event_endpoint.wait_for_visitors(1)
    served.settle()
    assert {v["visitor_id"] for v in event_endpoint.all_visitors()} == {"frank"}


def test_send_file(serve: ServerFactory, event_endpoint: EventEndpoint) -> None:
    page = one_page_sends_once(serve(), event_endpoint, "/file/gina")
    assert page == (200, DATAFILE_PATH.read_bytes())


def test_an_async_view(serve: ServerFactory, event_endpoint: EventEndpoint) -> None:
    assert one_page_sends_once(serve(), event_endpoint, "/async/hank")[0] == 200


def test_middleware_plus_decorator_sends_each_event_once(
    serve: ServerFactory, event_endpoint: EventEndpoint
) -> None:
    assert one_page_sends_once(serve(), event_endpoint, "/deferred/ivan")[0] == 200


def test_the_decorator_on_some_views_only(
    serve: ServerFactory, event_endpoint: EventEndpoint
) -> None:
    served = serve(decorated=True)
    event_endpoint.hold()
    for path in ("/deferred/judy", "/deferred-stream/kim", "/deferred-file/liam"):
        status, _ = served.get(path)
        assert status == 200
    assert served.get("/deferred-async/mia")[0] == 200
    assert served.get("/plain/nina")[0] == 200  # not scoped: sent at once
    event_endpoint.release()
    event_endpoint.wait_for_visitors(6)
    served.settle()
    posts = event_endpoint.posts
    [judy] = posts_of(posts, "judy")
    assert event_keys(visitors_of([judy], "judy")) == ["campaign_activated", "purchase"]
    for user in ("kim", "liam", "mia", "nina"):
        assert len(visitors_of(posts, user)) == 1, user


# -- gunicorn only ------------------------------------------------------------------


def test_gunicorn_still_uses_sendfile_for_send_file(
    gunicorn: Callable[..., ServerProcess], event_endpoint: EventEndpoint, tmp_path: Path
) -> None:
    for app, path in ((EXTENSION_APP, "/file/olga"), (DECORATED_APP, "/deferred-file/pat")):
        server = gunicorn(app)
        assert get(server.port, path) == (200, DATAFILE_PATH.read_bytes())
        # The events leave after close(), which gunicorn calls after sendfile() returned.
        user = path.rsplit("/", 1)[1]
        event_endpoint.wait_for_posts(len(event_endpoint.posts) + 1)
        assert len(visitors_of(event_endpoint.posts, user)) == 1
        assert path in (tmp_path / "sendfile.log").read_text().splitlines()
        assert server.terminate() == 0


def test_gunicorn_preload_with_two_workers_sends_every_event_once(
    gunicorn: Callable[..., ServerProcess], event_endpoint: EventEndpoint
) -> None:
    server = gunicorn(
        EXTENSION_APP, "--preload", "--workers", "2", env={"OPTIMIZELY_TEST_STARTUP_EVENT": "1"}
    )
    users = [f"user-{n}" for n in range(60)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda u: get(server.port, f"/decide/{u}"), users))
    assert all(status == 200 for status, _ in results)
    event_endpoint.wait_for_visitors(len(users) + 1, timeout=60)
    assert server.terminate() == 0
    delivered = [v["visitor_id"] for v in event_endpoint.all_visitors()]
    assert sorted(delivered) == sorted([*users, "startup"])


def test_sigterm_after_a_burst_delivers_every_event_before_the_workers_exit(
    gunicorn: Callable[..., ServerProcess], event_endpoint: EventEndpoint
) -> None:
    server = gunicorn(
        EXTENSION_APP, "--workers", "2", env={"OPTIMIZELY_TEST_SHUTDOWN_TIMEOUT": "60"}
    )
    event_endpoint.hold()  # nothing is delivered while the requests are served
    users = [f"burst-{n}" for n in range(40)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda u: get(server.port, f"/buy/{u}"), users))
    assert all(status == 200 for status, _ in results)
    event_endpoint.wait_for_arrivals(1)
    assert event_endpoint.posts == []

    server.process.send_signal(signal.SIGTERM)
    # Both workers have left their serving loop; only exit handlers run from here,
    # and they keep the workers alive while the endpoint holds their events.
    server.wait_for_line(r"Worker exiting", 2)
    with pytest.raises(subprocess.TimeoutExpired):
        server.process.wait(timeout=2.0)
    event_endpoint.release()
    assert server.wait(timeout=60) == 0
    # No waiting from here: what arrived before gunicorn exited is all there is.
    delivered = [v["visitor_id"] for v in event_endpoint.all_visitors()]
    assert sorted(delivered) == sorted(users * 2)
    for user in users:
        [post] = posts_of(event_endpoint.posts, user)
        assert event_keys(visitors_of([post], user)) == ["campaign_activated", "purchase"]
