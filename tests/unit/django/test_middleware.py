"""The Django middleware with real Django (the test Client, RequestFactory,
Django's WSGI and ASGI handlers), the real SDK and the real datafile."""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import threading
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import AsyncClient, Client, RequestFactory, override_settings

from optimizely_middleware import OptimizelyWSGIMiddleware
from optimizely_middleware.django import (
    OptimizelyMiddleware,
    asgi_application,
    get_client,
    get_dispatcher,
    get_state,
)
from optimizely_middleware.django import state as state_module
from optimizely_middleware.testing import EventCapture
from tests.support.django import (
    DATAFILE_PATH,
    EXAMPLE_PROJECT,
    HandOffs,
    configure_django,
    recording_hand_offs,
)
from tests.support.endpoint import EventEndpoint


@pytest.fixture(autouse=True)
def optimizely_settings(event_endpoint: EventEndpoint) -> Iterator[dict[str, Any]]:
    """Django configured; every test gets a fresh client and dispatcher that
    send to its own local endpoint (override_settings rebuilds them)."""
    configure_django()
    config = {"DATAFILE_PATH": str(DATAFILE_PATH), "EVENT_ENDPOINT": event_endpoint.url}
    with override_settings(OPTIMIZELY=config):
        yield config


@pytest.fixture
def hand_offs() -> Iterator[HandOffs]:
    with recording_hand_offs() as recorded:
        yield recorded


def visitors(endpoint: EventEndpoint, n: int) -> list[str]:
    get_dispatcher().flush(10)
    return sorted(v["visitor_id"] for v in endpoint.wait_for_visitors(n))


# -- hand-off after the response -------------------------------------------------


def test_events_are_handed_over_when_the_response_is_closed(hand_offs: HandOffs) -> None:
    middleware = OptimizelyMiddleware(lambda request: _decide_and_respond(request, "alice"))
    response = middleware(RequestFactory().get("/"))
    assert response.content == b"ok"
    assert len(hand_offs) == 0  # the view has returned, the response is not sent yet
    response.close()
    assert hand_offs.ended == [(["alice"], False)]
    response.close()
    assert len(hand_offs) == 1


def _decide_and_respond(request: Any, user: str, status: int = 200) -> Any:
    from django.http import HttpResponse

    request.optimizely.create_user_context(user).decide("new_checkout")
    return HttpResponse("ok", status=status)


def test_the_test_client_groups_events_per_request(
    optimizely_events: EventCapture, hand_offs: HandOffs
) -> None:
    client = Client()
    assert client.get("/decide/alice").json()["user"] == "alice"
    assert client.get("/page/bob").status_code == 200
    assert hand_offs.ended == [(["alice"], False), (["bob", "bob"], False)]
    assert len(optimizely_events.requests) == 2
    last = optimizely_events.last_request
    assert [c.event_key for c in last.conversions] == ["purchase"]
    assert last.conversions[0].revenue == 4200
    assert [i.user_id for i in last.impressions] == ["bob"]


def test_events_reach_the_endpoint_exactly_once(event_endpoint: EventEndpoint) -> None:
    client = Client()
    for i in range(20):
        assert client.get(f"/page/u{i}").status_code == 200
    received = visitors(event_endpoint, 40)
    assert received == sorted([f"u{i}" for i in range(20)] * 2)
    uuids = [
        e["uuid"]
        for v in event_endpoint.all_visitors()
        for s in v["snapshots"]
        for e in s["events"]
    ]
    assert len(uuids) == len(set(uuids)) == 40


def test_request_optimizely_is_the_process_client() -> None:
    seen: list[Any] = []

    def view(request: Any) -> Any:
        seen.append(request.optimizely)
        return _decide_and_respond(request, "carol")

    OptimizelyMiddleware(view)(RequestFactory().get("/")).close()
    assert seen == [get_client()]
    assert get_state().dispatcher is get_dispatcher()


def test_the_state_is_built_once_under_concurrent_first_use(
    optimizely_settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    with override_settings(OPTIMIZELY={**optimizely_settings, "SHUTDOWN_TIMEOUT": 1.0}):
        barrier = threading.Barrier(8)
        states: list[Any] = []

        def first_use() -> None:
            barrier.wait()
            states.append(get_state())

        builds: list[int] = []

        def slow_build(config: Any) -> Any:
            builds.append(1)
            time.sleep(0.05)  # widens the window in which a second build could start
            return real_build(config)

        real_build = state_module.build
        monkeypatch.setattr(state_module, "build", slow_build)
        threads = [threading.Thread(target=first_use) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(states) == 8
        assert len({id(state) for state in states}) == 1
        assert len(builds) == 1
        assert states[0].settings.shutdown_timeout == 1.0


# -- streaming and files ------------------------------------------------------------


def test_events_from_a_streaming_body_belong_to_the_request(hand_offs: HandOffs) -> None:
    response = Client().get("/stream/dave")
    assert len(hand_offs) == 0  # nothing is read yet
    assert b"".join(response.streaming_content) == b"first chunk\nsecond chunk\n"
    assert hand_offs.ended == [(["dave"], False)]


def test_a_streaming_body_hands_over_only_on_close(hand_offs: HandOffs) -> None:
    from tests.apps.django_views import stream

    response = OptimizelyMiddleware(lambda request: stream(request, "erin"))(
        RequestFactory().get("/")
    )
    chunks = list(response)
    assert chunks == [b"first chunk\n", b"second chunk\n"]
    assert len(hand_offs) == 0  # the event is in the scope, the server has not closed yet
    response.close()
    assert hand_offs.ended == [(["erin"], False)]


def test_a_generator_closed_early_still_runs_in_the_scope(hand_offs: HandOffs) -> None:
    from django.http import StreamingHttpResponse

    def view(request: Any) -> Any:
        def body() -> Iterator[bytes]:
            try:
                yield b"first\n"
                yield b"never\n"
            finally:  # runs when the server closes the response early
                request.optimizely.create_user_context("fay").decide("new_checkout")

        return StreamingHttpResponse(body())

    response = OptimizelyMiddleware(view)(RequestFactory().get("/"))
    assert next(iter(response)) == b"first\n"
    response.close()
    assert hand_offs.ended == [(["fay"], False)]
    assert get_dispatcher().stats()["outside_scope_sent"] == 0


def test_file_response(hand_offs: HandOffs) -> None:
    response = Client().get("/file/gina")
    assert b"".join(response.streaming_content) == DATAFILE_PATH.read_bytes()
    assert hand_offs.ended == [(["gina"], False)]


def test_the_wsgi_file_wrapper_path_hands_over_on_its_close(hand_offs: HandOffs) -> None:
    from wsgiref.util import FileWrapper

    from django.core.handlers.wsgi import WSGIHandler
    from werkzeug.test import create_environ

    environ = create_environ("/file/hal")
    environ["wsgi.file_wrapper"] = FileWrapper
    body = WSGIHandler()(environ, lambda status, headers, exc_info=None: lambda data: None)
    assert isinstance(body, FileWrapper)  # the server's sendfile path is kept
    assert b"".join(body) == DATAFILE_PATH.read_bytes()
    assert len(hand_offs) == 0
    body.close()
    assert hand_offs.ended == [(["hal"], False)]


# -- failed requests ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "failed"),
    [("/raise/ivan", 500, True), ("/unavailable/jo", 503, True), ("/not-found/kai", 404, False)],
)
def test_failed_requests_are_marked(
    hand_offs: HandOffs, path: str, status: int, failed: bool
) -> None:
    assert Client(raise_request_exception=False).get(path).status_code == status
    [(users, was_failed)] = hand_offs.ended
    assert len(users) == 1
    assert was_failed is failed


def test_a_raising_view_still_raises_in_the_test_client(hand_offs: HandOffs) -> None:
    with pytest.raises(RuntimeError, match="the view failed"):
        Client().get("/raise/lea")
    assert hand_offs.ended == [(["lea"], True)]


def test_failed_requests_discard(
    optimizely_settings: dict[str, Any], event_endpoint: EventEndpoint
) -> None:
    with override_settings(OPTIMIZELY={**optimizely_settings, "FAILED_REQUESTS": "discard"}):
        client = Client(raise_request_exception=False)
        assert client.get("/raise/max").status_code == 500
        assert client.get("/decide/ned").status_code == 200
        assert visitors(event_endpoint, 1) == ["ned"]
        assert get_dispatcher().stats()["dropped"] == {"failed_request": 1}


# -- async ----------------------------------------------------------------------------


def test_async_views_and_async_streams_under_the_async_client(hand_offs: HandOffs) -> None:
    async def run() -> tuple[bytes, bytes]:
        client = AsyncClient()
        page = await client.get("/async/olga")
        streamed = await client.get("/async-stream/pat")
        chunks = [chunk async for chunk in streamed.streaming_content]
        return page.content, b"".join(chunks)

    page, streamed = asyncio.run(run())
    assert b'"olga"' in page
    assert streamed == b"first chunk\nsecond chunk\n"
    assert hand_offs.ended == [(["olga"], False), (["pat"], False)]


def test_the_asgi_wrapper_answers_lifespan_owns_requests_and_flushes_at_shutdown(
    hand_offs: HandOffs, event_endpoint: EventEndpoint
) -> None:
    from django.core.asgi import get_asgi_application

    app = asgi_application(get_asgi_application())
    sent: list[dict[str, Any]] = []
    delivered_at_shutdown: list[int] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "lifespan.shutdown.complete":
            delivered_at_shutdown.append(len(event_endpoint.all_visitors()))
        sent.append(dict(message))

    async def run() -> None:
        lifespan_messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        lifespan_messages.put_nowait({"type": "lifespan.startup"})
        lifespan = asyncio.ensure_future(
            app({"type": "lifespan", "asgi": {"version": "3.0"}}, lifespan_messages.get, send)
        )
        while not any(m["type"] == "lifespan.startup.complete" for m in sent):
            await asyncio.sleep(0)
        request: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        request.put_nowait({"type": "http.request", "body": b""})
        http_scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "path": "/page/quinn",
            "query_string": b"",
            "headers": [(b"host", b"testserver")],
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 5000),
        }
        event_endpoint.delay = 0.5  # each POST takes half a second to be answered
        await app(http_scope, request.get, send)
        assert hand_offs.ended == [(["quinn", "quinn"], False)]  # once, by the wrapper
        assert event_endpoint.all_visitors() == []
        lifespan_messages.put_nowait({"type": "lifespan.shutdown"})
        await asyncio.wait_for(lifespan, 30)

    asyncio.run(run())
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200]
    assert sent[-1]["type"] == "lifespan.shutdown.complete"
    assert delivered_at_shutdown == [2]  # delivered before the server was told "complete"


def test_an_outer_wsgi_middleware_of_the_same_dispatcher_owns_the_request(
    hand_offs: HandOffs,
) -> None:
    from django.core.handlers.wsgi import WSGIHandler
    from werkzeug.test import Client as WerkzeugClient

    app = OptimizelyWSGIMiddleware(WSGIHandler(), get_dispatcher())
    response = WerkzeugClient(app).get("/page/rita")
    assert response.status_code == 200
    response.close()
    assert hand_offs.ended == [(["rita", "rita"], False)]


def test_a_response_never_closed_and_collected_in_a_cycle_is_handed_over(
    hand_offs: HandOffs,
) -> None:
    response = OptimizelyMiddleware(lambda request: _decide_and_respond(request, "uma"))(
        RequestFactory().get("/")
    )
    response.cycle = response  # only the cyclic collector can release it
    del response
    gc.collect()
    # Not under the collector (it may run where a lock is held): at the next request.
    assert len(hand_offs) == 0
    assert Client().get("/decide/vic").status_code == 200
    assert hand_offs.ended == [(["uma"], False), (["vic"], False)]


# -- pickling (Django's cache middleware) --------------------------------------------


def test_a_scoped_response_can_be_pickled_and_its_copy_closed(hand_offs: HandOffs) -> None:
    response = OptimizelyMiddleware(lambda request: _decide_and_respond(request, "sam"))(
        RequestFactory().get("/")
    )
    copy = pickle.loads(pickle.dumps(response))
    copy.close()
    assert len(hand_offs) == 0
    response.close()
    assert hand_offs.ended == [(["sam"], False)]


# -- the example project ------------------------------------------------------------


def test_the_example_project(
    monkeypatch: pytest.MonkeyPatch, optimizely_events: EventCapture
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE_PROJECT))
    with override_settings(ROOT_URLCONF="mysite.urls"):
        client = Client()
        first = client.get("/")
        assert first.status_code == 200
        assert client.post("/buy").status_code == 200
    cookie = first.cookies["optimizely_visitor_id"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax"
    assert len(optimizely_events.requests) == 2
    [purchase] = optimizely_events.conversions
    assert purchase.revenue == 4200
    # one stable visitor over both requests, never "None"
    assert {i.user_id for i in optimizely_events.impressions} == {purchase.user_id}
    assert purchase.user_id == cookie.value != "None"


# -- settings mistakes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("datafile.json", "settings.OPTIMIZELY must be a dict, not str"),
        ({}, "needs a datafile or an SDK key"),
        (
            {"DATAFILE_PTH": "x.json"},
            "Unknown key 'DATAFILE_PTH' in settings.OPTIMIZELY; did you mean 'DATAFILE_PATH'?",
        ),
        ({"SDK_KEY": "k", "FAILED_REQUEST": "keep"}, "did you mean 'FAILED_REQUESTS'?"),
        ({"DATAFILE_PATH": "/nonexistent/datafile.json"}, "cannot be read: No such file"),
        ({"DATAFILE": "{not json"}, "is not valid JSON"),
        ({"DATAFILE": "{}"}, "The Optimizely SDK rejected the datafile"),
        ({"SDK_KEY": "k", "FAILED_REQUESTS": "discrad"}, "did you mean 'discard'?"),
        ({"SDK_KEY": "k", "OUTSIDE_SCOPE": "ignore"}, "'send', 'drop' or 'raise', not 'ignore'"),
        ({"SDK_KEY": "k", "SHUTDOWN_TIMEOUT": -1}, "seconds, a number >= 0, not -1"),
        ({"SDK_KEY": "k", "EVENT_ENDPOINT": "localhost:8765"}, "must be a URL"),
        (
            {"SDK_KEY": "k", "EVENT_ENDPOINT": "localhost:8765"},
            "did you mean 'http://localhost:8765'?",
        ),
        ({"SDK_KEY": "k", "ENDPOINT": "http://x"}, "did you mean 'EVENT_ENDPOINT'?"),
        ({"DATAFILE_PATH": os.devnull}, "is not valid JSON (it is empty)"),
        ({"SDK_KEY": "k", "CLIENT_OPTIONS": {"event_dispatcher": None}}, "CLIENT_OPTIONS"),
    ],
)
def test_settings_mistakes_raise_improperly_configured(config: Any, message: str) -> None:
    with override_settings(OPTIMIZELY=config), pytest.raises(ImproperlyConfigured) as raised:
        get_state()
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"OPTIMIZELY_DATAFILE_PTH": "x.json"},
            "Unknown key 'OPTIMIZELY_DATAFILE_PTH' in the environment; "
            "did you mean 'OPTIMIZELY_DATAFILE_PATH'?",
        ),
        ({"OPTIMIZELY_ENDPOINT": "http://x"}, "did you mean 'OPTIMIZELY_EVENT_ENDPOINT'?"),
        ({"OPTIMIZELY_EVENT_ENDPOINT": "127.0.0.1:1"}, "OPTIMIZELY_EVENT_ENDPOINT must be a URL"),
        ({"OPTIMIZELY_DATAFILE_PATH": os.devnull}, "is not valid JSON (it is empty)"),
    ],
)
def test_environment_mistakes_raise_improperly_configured(
    environ: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.conf import settings

    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with override_settings():
        del settings.OPTIMIZELY
        with pytest.raises(ImproperlyConfigured) as raised:
            get_state()
    assert message in str(raised.value)


def test_the_environment_alone_configures_django(
    event_endpoint: EventEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.conf import settings

    monkeypatch.setenv("OPTIMIZELY_DATAFILE_PATH", str(DATAFILE_PATH))
    monkeypatch.setenv("OPTIMIZELY_EVENT_ENDPOINT", event_endpoint.url)
    monkeypatch.setenv("OPTIMIZELY_FAILED_REQUESTS", "discard")
    with override_settings():
        del settings.OPTIMIZELY
        assert Client().get("/decide/env-user").status_code == 200
        assert get_state().settings.failed_requests == "discard"
        assert visitors(event_endpoint, 1) == ["env-user"]


def test_a_mistake_surfaces_when_django_loads_the_middleware() -> None:
    from django.core.handlers.wsgi import WSGIHandler

    with override_settings(OPTIMIZELY={"DATAFILE_PATH": "/nonexistent.json"}):
        with pytest.raises(ImproperlyConfigured, match="DATAFILE_PATH"):
            WSGIHandler()
        with pytest.raises(ImproperlyConfigured, match="DATAFILE_PATH"):
            Client().get("/decide/tom")


def test_missing_settings_say_what_to_add() -> None:
    from django.conf import settings

    with override_settings():
        del settings.OPTIMIZELY
        with pytest.raises(ImproperlyConfigured, match=r"needs settings\.OPTIMIZELY"):
            get_state()


# -- visitor ids ------------------------------------------------------------------------


def test_visitor_id_sets_a_cookie_once_and_keeps_the_id(hand_offs: HandOffs) -> None:
    from optimizely_middleware.django import visitor_id

    def view(request: Any) -> Any:
        first = visitor_id(request)
        assert visitor_id(request) == first  # stable within the request
        return _decide_and_respond(request, first)

    middleware = OptimizelyMiddleware(view)
    new = middleware(RequestFactory().get("/"))
    new.close()
    cookie = new.cookies["optimizely_visitor_id"]
    assert len(cookie.value) == 32 and cookie.value != "None"
    assert cookie["max-age"] == 365 * 24 * 3600
    assert "Cookie" in new["Vary"]

    factory = RequestFactory()
    factory.cookies["optimizely_visitor_id"] = cookie.value
    again = middleware(factory.get("/"))
    again.close()
    assert "optimizely_visitor_id" not in again.cookies
    assert "Cookie" in again["Vary"]

    factory.cookies["optimizely_visitor_id"] = "not an id; <script>"
    replaced = middleware(factory.get("/"))
    replaced.close()
    assert replaced.cookies["optimizely_visitor_id"].value != "not an id; <script>"
    ids = [users[0] for users, _ in hand_offs.ended]
    assert ids[0] == ids[1] == cookie.value
    assert ids[2] == replaced.cookies["optimizely_visitor_id"].value


def test_views_that_do_not_ask_for_a_visitor_id_set_no_cookie() -> None:
    response = Client().get("/decide/wes")
    assert "optimizely_visitor_id" not in response.cookies
    assert not response.has_header("Vary")


# -- ASGI without the wrapper ------------------------------------------------------------


def test_serving_asgi_without_the_wrapper_logs_a_warning_once(
    caplog: pytest.LogCaptureFixture, hand_offs: HandOffs
) -> None:
    from django.core.asgi import get_asgi_application

    application = get_asgi_application()

    async def request(path: str) -> int:
        sent: list[MutableMapping[str, Any]] = []
        incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        incoming.put_nowait({"type": "http.request", "body": b""})

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "path": path,
            "query_string": b"",
            "headers": [(b"host", b"127.0.0.1")],
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 5000),
        }
        await application(scope, incoming.get, send)
        return int(sent[0]["status"])

    async def run() -> list[int]:
        return [await request("/async/xena"), await request("/decide/yuri")]

    assert asyncio.run(run()) == [200, 200]
    assert hand_offs.ended == [(["xena"], False), (["yuri"], False)]
    hints = [r for r in caplog.records if "asgi_application" in r.getMessage()]
    assert len(hints) == 1
