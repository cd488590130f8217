"""Starlette with the middleware and with the endpoint decorator: real
Starlette, the real SDK, the real EventSender and a real local event endpoint,
driven by Starlette's TestClient (in-process; the uvicorn tests are in
tests/e2e/test_uvicorn.py)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from optimizely.optimizely import Optimizely
from starlette.applications import Starlette
from starlette.background import BackgroundTask, BackgroundTasks
from starlette.endpoints import HTTPEndpoint
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.types import Message
from starlette.websockets import WebSocket

from optimizely_middleware import (
    OptimizelyASGIMiddleware,
    RequestScopedEventDispatcher,
)
from optimizely_middleware.starlette import DeferredResponse, defer_events, optimizely_client
from tests.support.asgi import (
    Wired,
    arrivals_by_visitor,
    event_keys,
    posts_per_visitor,
    visit_the_example,
    visitor_ids,
)
from tests.support.endpoint import EventEndpoint
from tests.support.fakes import RecordingSink


class Shop(Wired):
    """A dispatcher sending to the test endpoint, a client, and a timeline."""

    def decide(self, user: str) -> str:
        decision = self.client.create_user_context(user, {"plan": "pro"}).decide("new_checkout")
        return str(decision.variation_key)

    def track(self, user: str, key: str = "purchase") -> None:
        self.client.create_user_context(user, {"plan": "pro"}).track_event(key)

    def app(self, routes: list[Any], *, middleware: list[Any] | None = None) -> Any:
        """A Starlette app with the Optimizely middleware, recorded by the timeline.
        ``middleware`` may hold ``"optimizely"`` as a placeholder for where it goes."""
        ours = Middleware(OptimizelyASGIMiddleware, dispatcher=self.dispatcher, client=self.client)
        stack = (
            [ours] if middleware is None else [ours if m == "optimizely" else m for m in middleware]
        )
        return self.timeline.wrap(Starlette(routes=routes, middleware=stack))


@pytest.fixture
def shop(event_endpoint: EventEndpoint, datafile: str) -> Iterator[Shop]:
    with Shop(event_endpoint, datafile).running() as shop:
        yield shop


def user_of(request: Request) -> str:
    return request.query_params.get("user", "anonymous")


# -- the middleware ------------------------------------------------------------


def test_the_response_is_complete_while_the_endpoint_holds_every_post(
    shop: Shop, event_endpoint: EventEndpoint
) -> None:
    async def home(request: Request) -> Response:
        user = user_of(request)
        variation = shop.decide(user)
        shop.track(user)
        return PlainTextResponse(f"{user}:{variation}")

    event_endpoint.hold()
    with TestClient(shop.app([Route("/", home)])) as http:
        # Each response comes back whole while the endpoint holds the POSTs.
        responses = [http.get("/", params={"user": f"u{i}"}) for i in range(3)]
        assert [r.text.split(":")[0] for r in responses] == ["u0", "u1", "u2"]
        assert all(r.status_code == 200 for r in responses)
        event_endpoint.wait_for_arrivals(1)  # delivery has started and is held
        event_endpoint.release()
        assert (
            visitor_ids(event_endpoint.wait_for_visitors(6)) == ["u0"] * 2 + ["u1"] * 2 + ["u2"] * 2
        )

    assert shop.timeline.entries == ["response.start:200", "response.end", "handed_over:2:ok"] * 3
    ended_at = dict(zip(["u0", "u1", "u2"], shop.timeline.ended_at, strict=True))
    for user, arrivals in arrivals_by_visitor(event_endpoint.posts).items():
        assert min(arrivals) >= ended_at[user], user
    assert posts_per_visitor(event_endpoint.posts) == {"u0": 1, "u1": 1, "u2": 1}
    assert event_keys(event_endpoint.posts) == ["campaign_activated"] * 3 + ["purchase"] * 3


@pytest.mark.parametrize("mounted", ["middleware", "decorator"])
def test_no_event_reaches_the_endpoint_before_its_response_was_sent(
    mounted: str, shop: Shop, event_endpoint: EventEndpoint
) -> None:
    def home(request: Request) -> Response:  # sync: runs in the thread pool
        user = user_of(request)
        shop.decide(user)
        shop.track(user)
        # Whatever the sender has been given goes out now. Had this request's
        # events left its scope early, they would reach the endpoint here,
        # before the response exists.
        assert shop.dispatcher.flush(10)
        return PlainTextResponse(user)

    if mounted == "middleware":
        app = shop.app([Route("/", home)])
    else:
        app = shop.timeline.wrap(
            Starlette(routes=[Route("/", defer_events(shop.dispatcher)(home))])
        )
    with TestClient(app) as http:
        for i in range(3):
            assert http.get("/", params={"user": f"p{i}"}).text == f"p{i}"
        event_endpoint.wait_for_visitors(6)

    ended_at = dict(zip(["p0", "p1", "p2"], shop.timeline.ended_at, strict=True))
    arrivals = arrivals_by_visitor(event_endpoint.posts)
    assert sorted(arrivals) == ["p0", "p1", "p2"]
    for user, times in arrivals.items():
        assert min(times) >= ended_at[user], f"{user}'s events arrived before its response ended"


def test_a_sync_endpoint_in_the_thread_pool_adds_to_its_request(
    shop: Shop, event_endpoint: EventEndpoint
) -> None:
    threads: list[str] = []

    def home(request: Request) -> Response:
        threads.append(threading.current_thread().name)
        shop.decide(user_of(request))
        shop.track(user_of(request))
        return PlainTextResponse("ok")

    with TestClient(shop.app([Route("/", home)])) as http:
        assert http.get("/", params={"user": "sync"}).text == "ok"
        assert visitor_ids(event_endpoint.wait_for_visitors(2)) == ["sync", "sync"]

    assert threads and threads[0] != threading.current_thread().name
    assert shop.timeline.entries == ["response.start:200", "response.end", "handed_over:2:ok"]
    assert shop.dispatcher.stats()["outside_scope_sent"] == 0


def test_background_tasks_sync_and_async_belong_to_the_request(
    shop: Shop, event_endpoint: EventEndpoint
) -> None:
    async def track_later(user: str) -> None:
        shop.track(user, "add_to_cart")

    async def buy(request: Request) -> Response:
        user = user_of(request)
        shop.decide(user)
        tasks = BackgroundTasks()
        tasks.add_task(shop.track, user, "purchase")  # sync: runs in the thread pool
        tasks.add_task(track_later, user)
        return PlainTextResponse("thanks", background=tasks)

    with TestClient(shop.app([Route("/buy", buy)])) as http:
        assert http.get("/buy", params={"user": "bg"}).text == "thanks"
        posts = event_endpoint.wait_for_visitors(3)

    assert shop.timeline.entries == ["response.start:200", "response.end", "handed_over:3:ok"]
    assert event_keys(event_endpoint.posts) == ["add_to_cart", "campaign_activated", "purchase"]
    assert posts and shop.dispatcher.stats()["outside_scope_sent"] == 0


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_events_fired_while_a_body_streams_belong_to_the_request(
    kind: str, shop: Shop, event_endpoint: EventEndpoint
) -> None:
    handed_over_mid_stream: list[int] = []

    def chunk(i: int) -> bytes:
        handed_over_mid_stream.append(len(shop.timeline.handed_over))
        shop.track("stream", "add_to_cart")
        return f"chunk{i}\n".encode()

    async def async_chunks() -> AsyncIterator[bytes]:
        for i in range(3):
            yield chunk(i)

    def sync_chunks() -> Iterator[bytes]:
        for i in range(3):
            yield chunk(i)

    async def stream(request: Request) -> Response:
        return StreamingResponse(async_chunks() if kind == "async" else sync_chunks())

    with TestClient(shop.app([Route("/stream", stream)])) as http:
        assert http.get("/stream").text == "chunk0\nchunk1\nchunk2\n"
        event_endpoint.wait_for_visitors(3)

    assert handed_over_mid_stream == [0, 0, 0]
    assert shop.timeline.entries == ["response.start:200", "response.end", "handed_over:3:ok"]


def test_base_http_middleware_elsewhere_in_the_stack(
    shop: Shop, event_endpoint: EventEndpoint
) -> None:
    class Outer(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            response = await call_next(request)
            response.headers["x-outer"] = "1"
            return response

    class Inner(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            shop.decide(user_of(request))
            response = await call_next(request)
            response.headers["x-inner"] = "1"
            return response

    def home(request: Request) -> Response:
        shop.track(user_of(request))
        background = BackgroundTask(shop.track, user_of(request), "add_to_cart")
        return PlainTextResponse("ok", background=background)

    app = shop.app(
        [Route("/", home)], middleware=[Middleware(Outer), "optimizely", Middleware(Inner)]
    )
    with TestClient(app) as http:
        response = http.get("/", params={"user": "mixed"})
        assert (response.headers["x-outer"], response.headers["x-inner"]) == ("1", "1")
        event_endpoint.wait_for_visitors(3)

    assert shop.timeline.entries[-1] == "handed_over:3:ok"
    assert shop.timeline.entries.count("handed_over:3:ok") == 1
    assert event_keys(event_endpoint.posts) == ["add_to_cart", "campaign_activated", "purchase"]


def test_an_exception_propagates_and_the_request_counts_as_failed(
    event_endpoint: EventEndpoint, datafile: str
) -> None:
    shop = Shop(event_endpoint, datafile, failed_requests="discard")
    error = ZeroDivisionError("bug in the endpoint")

    async def broken(request: Request) -> Response:
        shop.decide("broken")
        raise error

    with shop.timeline.listening():
        app = shop.app([Route("/", broken)])
        with TestClient(app, raise_server_exceptions=False) as http:
            assert http.get("/").status_code == 500
        with TestClient(app) as http, pytest.raises(ZeroDivisionError) as raised:
            http.get("/")
    assert raised.value is error
    assert shop.timeline.entries.count("handed_over:1:failed") == 2
    stats = shop.dispatcher.stats()
    assert (stats["failed_requests"], stats["dropped"].get("failed_request")) == (2, 2)
    assert event_endpoint.posts == []


def test_an_http_exception_below_500_is_not_a_failure(
    shop: Shop, event_endpoint: EventEndpoint
) -> None:
    async def missing(request: Request) -> Response:
        shop.decide("lost")
        raise HTTPException(404)

    with TestClient(shop.app([Route("/", missing)])) as http:
        assert http.get("/").status_code == 404
        assert visitor_ids(event_endpoint.wait_for_visitors(1)) == ["lost"]
    assert shop.timeline.entries == ["response.start:404", "response.end", "handed_over:1:ok"]


def test_lifespan_shutdown_delivers_what_is_queued_before_the_app_stops(
    shop: Shop, event_endpoint: EventEndpoint
) -> None:
    async def home(request: Request) -> Response:
        shop.track(user_of(request))
        return PlainTextResponse("ok")

    event_endpoint.delay = 0.2  # each POST still in flight when the next request ends
    with TestClient(shop.app([Route("/", home)])) as http:
        for i in range(3):
            http.get("/", params={"user": f"late{i}"})
    # No waiting: leaving the block ran the lifespan shutdown, which flushed.
    assert visitor_ids(event_endpoint.all_visitors()) == ["late0", "late1", "late2"]


def test_endpoints_reach_the_client_through_the_request(shop: Shop) -> None:
    seen: list[Optimizely] = []

    async def home(request: Request) -> Response:
        seen.extend([optimizely_client(request), request.state.optimizely])
        return PlainTextResponse("ok")

    async def bare(request: Request) -> Response:
        with pytest.raises(RuntimeError, match="client="):
            optimizely_client(request)
        return PlainTextResponse("no client")

    with TestClient(shop.app([Route("/", home)])) as http:
        http.get("/")
    plain = Starlette(
        routes=[Route("/", bare)],
        middleware=[Middleware(OptimizelyASGIMiddleware, dispatcher=shop.dispatcher)],
    )
    with TestClient(plain) as http:
        assert http.get("/").text == "no client"
    assert seen == [shop.client, shop.client]


def test_websocket_events_leave_while_the_connection_is_open(
    shop: Shop, event_endpoint: EventEndpoint
) -> None:
    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        async for text in websocket.iter_text():
            variation = shop.decide(text)
            await websocket.send_text(variation)

    with (
        TestClient(shop.app([WebSocketRoute("/ws", chat)])) as http,
        http.websocket_connect("/ws") as websocket,
    ):
        websocket.send_text("ws-user-1")
        assert websocket.receive_text() in ("on", "off")
        # still connected: the first message's event has already been delivered
        assert visitor_ids(event_endpoint.wait_for_visitors(1)) == ["ws-user-1"]
        websocket.send_text("ws-user-2")
        websocket.receive_text()
        assert visitor_ids(event_endpoint.wait_for_visitors(2)) == ["ws-user-1", "ws-user-2"]
    assert shop.dispatcher.stats()["outside_scope_sent"] == 0


# -- the decorator -------------------------------------------------------------


def decorated_endpoints(shop: Shop) -> dict[str, Any]:
    """One endpoint of each kind, each firing one event in the endpoint and
    one in a background task."""

    def respond(request: Request) -> Response:
        user = user_of(request)
        shop.decide(user)
        return PlainTextResponse("ok", background=BackgroundTask(shop.track, user))

    @defer_events(shop.dispatcher)
    async def async_function(request: Request) -> Response:
        return respond(request)

    @defer_events(shop.dispatcher)
    def sync_function(request: Request) -> Response:
        return respond(request)

    class AsyncMethod(HTTPEndpoint):
        @defer_events(shop.dispatcher)
        async def get(self, request: Request) -> Response:
            return respond(request)

    class SyncMethod(HTTPEndpoint):
        @defer_events(shop.dispatcher)
        def get(self, request: Request) -> Response:
            return respond(request)

    return {
        "async_function": async_function,
        "sync_function": sync_function,
        "async_method": AsyncMethod,
        "sync_method": SyncMethod,
    }


@pytest.mark.parametrize("kind", ["async_function", "sync_function", "async_method", "sync_method"])
def test_the_decorator_alone_hands_over_after_the_response_and_its_background(
    kind: str, shop: Shop, event_endpoint: EventEndpoint
) -> None:
    endpoint = decorated_endpoints(shop)[kind]
    app = shop.timeline.wrap(Starlette(routes=[Route("/", endpoint)]))
    event_endpoint.hold()
    with TestClient(app) as http:
        assert http.get("/", params={"user": kind}).text == "ok"  # while the POST is held
        event_endpoint.wait_for_arrivals(1)
        event_endpoint.release()
        assert visitor_ids(event_endpoint.wait_for_visitors(2)) == [kind, kind]

    assert shop.timeline.entries == ["response.start:200", "response.end", "handed_over:2:ok"]
    [post] = event_endpoint.posts
    assert post.arrived_at >= shop.timeline.ended_at[0]
    assert shop.dispatcher.stats()["open_scopes"] == 0


@pytest.mark.parametrize("kind", ["async_function", "sync_function", "async_method", "sync_method"])
def test_middleware_plus_decorator_hands_over_once(
    kind: str, shop: Shop, event_endpoint: EventEndpoint
) -> None:
    endpoint = decorated_endpoints(shop)[kind]
    with TestClient(shop.app([Route("/", endpoint)])) as http:
        assert http.get("/", params={"user": kind}).text == "ok"
        event_endpoint.wait_for_visitors(2)
    assert shop.timeline.entries == ["response.start:200", "response.end", "handed_over:2:ok"]
    assert shop.dispatcher.stats()["requests"] == 1


def test_the_decorator_fails_the_request_when_the_endpoint_raises(
    event_endpoint: EventEndpoint, datafile: str
) -> None:
    shop = Shop(event_endpoint, datafile, failed_requests="discard")

    @defer_events(shop.dispatcher)
    def broken(request: Request) -> Response:
        shop.decide("broken")
        raise KeyError("bug")

    @defer_events(shop.dispatcher)
    async def missing(request: Request) -> Response:
        shop.decide("missing")
        raise HTTPException(404)

    with shop.timeline.listening():
        app = Starlette(routes=[Route("/broken", broken), Route("/missing", missing)])
        with TestClient(app, raise_server_exceptions=False) as http:
            assert http.get("/broken").status_code == 500
            assert http.get("/missing").status_code == 404
            assert visitor_ids(event_endpoint.wait_for_visitors(1)) == ["missing"]
    assert shop.timeline.entries == ["handed_over:1:failed", "handed_over:1:ok"]
    assert shop.dispatcher.stats()["dropped"] == {"failed_request": 1}


def test_the_decorator_follows_the_one_failed_request_rule_while_streaming(
    event_endpoint: EventEndpoint, datafile: str
) -> None:
    """An OSError the body raises itself fails the request; a client that went
    away (http.disconnect on receive) and the error that follows do not."""
    shop = Shop(event_endpoint, datafile, failed_requests="discard")

    @defer_events(shop.dispatcher)
    async def database(request: Request) -> Response:
        shop.decide("db")

        async def body() -> AsyncIterator[bytes]:
            yield b"first"
            raise ConnectionRefusedError("the database is down")

        return StreamingResponse(body())

    @defer_events(shop.dispatcher)
    async def upload(request: Request) -> Response:
        shop.decide("uploader")
        return PlainTextResponse(f"{len(await request.body())} bytes")

    app = Starlette(routes=[Route("/db", database), Route("/upload", upload, methods=["POST"])])

    async def gone() -> Message:
        return {"type": "http.disconnect"}

    async def ignore(message: Message) -> None:
        pass

    with shop.timeline.listening():
        with TestClient(app) as http, pytest.raises(ConnectionRefusedError):
            http.get("/db")
        upload_scope = {
            "type": "http",
            "method": "POST",
            "path": "/upload",
            "headers": [],
            "query_string": b"",
        }
        with pytest.raises(ClientDisconnect):
            anyio.run(app, upload_scope, gone, ignore)
    assert shop.timeline.entries == ["handed_over:1:failed", "handed_over:1:ok"]
    assert shop.dispatcher.stats()["dropped"] == {"failed_request": 1}
    assert shop.dispatcher.flush(10)
    assert visitor_ids(event_endpoint.all_visitors()) == ["uploader"]
    shop.dispatcher.close(5)


def test_the_decorated_response_reads_through_to_the_response(shop: Shop) -> None:
    @defer_events(shop.dispatcher)
    async def home(request: Request) -> Response:
        return PlainTextResponse("ok", status_code=201, headers={"x-shop": "1"})

    wrapped: list[Any] = []

    async def outer(request: Request) -> Response:
        response = await home(request)
        wrapped.append(response)
        return response  # type: ignore[no-any-return]

    with TestClient(Starlette(routes=[Route("/", outer)])) as http:
        response = http.get("/")
    assert (response.status_code, response.headers["x-shop"]) == (201, "1")
    assert isinstance(wrapped[0], DeferredResponse)
    assert (wrapped[0].status_code, wrapped[0].headers["x-shop"]) == (201, "1")


# -- the example ---------------------------------------------------------------


def test_the_starlette_example(
    event_endpoint: EventEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, _ = visit_the_example("starlette_app", event_endpoint, monkeypatch, user="alice")
    assert home.json()["user"] == "alice"


# -- decorator mistakes fail when decorating ---------------------------------------


def test_a_bare_defer_events_fails_when_decorating_and_shows_the_right_form() -> None:
    with pytest.raises(TypeError) as raised:

        @defer_events  # type: ignore[arg-type]
        async def checkout(request: Request) -> Response:
            return PlainTextResponse("ok")

    assert "write @defer_events(dispatcher) above def checkout(...)" in str(raised.value)


@pytest.mark.parametrize(
    "endpoint",
    [
        lambda: None,
        lambda request, user: None,
    ],
    ids=["no-argument", "two-arguments"],
)
def test_what_starlette_cannot_call_with_the_request_is_refused(endpoint: Any) -> None:
    with pytest.raises(TypeError, match="a Starlette endpoint takes one argument, the request"):
        defer_events(RequestScopedEventDispatcher(RecordingSink()))(endpoint)
