"""End to end: each request encodes its own events at the hand-off, on its own thread or
task, and a long ASGI hand-off lets the event loop serve other requests between slices.

Real servers on 127.0.0.1 (uvicorn and werkzeug, in threads of the test), the real SDK
with a real datafile, a real local event endpoint.
"""

from __future__ import annotations

import threading
import time

import requests
from flask import Flask
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from optimizely_middleware import (
    EventSender,
    OptimizelyASGIMiddleware,
    OptimizelyWSGIMiddleware,
    RequestScopedEventDispatcher,
    create_client,
)
from optimizely_middleware.delivery.encoded import EncodedEvent
from optimizely_middleware.delivery.encoding import EventEncoder
from tests.support.endpoint import EventEndpoint
from tests.support.servers import uvicorn_in_a_thread, werkzeug_in_a_thread

EVENTS_PER_BIG_REQUEST = 1000  # the scope's cap


class WatchedEncoder(EventEncoder):
    """The package's encoder, recording where each encode runs; ``delay`` slows each one."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.threads: list[str] = []
        self.started = threading.Event()

    def encode(self, item: object) -> EncodedEvent:
        self.threads.append(threading.current_thread().name)
        self.started.set()
        if self.delay:
            time.sleep(self.delay)  # a slow encode that holds the thread (and the loop)
        return super().encode(item)


def test_an_asgi_hand_off_runs_on_the_loop_and_yields_to_other_requests(
    datafile: str, event_endpoint: EventEndpoint
) -> None:
    # 3 ms per encode: each slice (1 ms) holds one event, and the 1,000-event
    # hand-off lasts about 3 s, during which a second request must be served.
    encoder = WatchedEncoder(delay=0.003)
    sender = EventSender(endpoint=event_endpoint.url, encoder=encoder)
    dispatcher = RequestScopedEventDispatcher(sender)
    client = create_client(dispatcher, datafile)
    encoded_when_pinged: list[int] = []

    async def big(request: Request) -> PlainTextResponse:
        for n in range(EVENTS_PER_BIG_REQUEST):
            user = client.create_user_context(f"user-{n}")
            assert user is not None
            user.decide("new_checkout")
        return PlainTextResponse("ok")

    async def ping(request: Request) -> PlainTextResponse:
        encoded_when_pinged.append(len(encoder.threads))
        return PlainTextResponse("pong")

    app = Starlette(
        routes=[Route("/big", big), Route("/ping", ping)],
        middleware=[Middleware(OptimizelyASGIMiddleware, dispatcher=dispatcher, client=client)],
    )
    try:
        with uvicorn_in_a_thread(app) as url:
            assert requests.get(f"{url}/big", timeout=30).text == "ok"
            assert encoder.started.wait(30)  # the big request's hand-off has begun
            assert requests.get(f"{url}/ping", timeout=30).text == "pong"
            assert dispatcher.flush(60)
    finally:
        dispatcher.close(10)
    (during,) = encoded_when_pinged
    assert 0 < during < EVENTS_PER_BIG_REQUEST  # served between two slices of the hand-off
    assert set(encoder.threads) == {"uvicorn-loop"}  # the loop's thread, never the sender's
    assert len(event_endpoint.all_visitors()) == EVENTS_PER_BIG_REQUEST
    assert dispatcher.stats()["dropped"] == {}


def test_a_wsgi_hand_off_is_encoded_on_the_request_thread(
    datafile: str, event_endpoint: EventEndpoint
) -> None:
    encoder = WatchedEncoder()
    sender = EventSender(endpoint=event_endpoint.url, encoder=encoder)
    dispatcher = RequestScopedEventDispatcher(sender)
    client = create_client(dispatcher, datafile)
    request_threads: list[str] = []
    app = Flask(__name__)

    @app.get("/")
    def home() -> str:
        request_threads.append(threading.current_thread().name)
        user = client.create_user_context("wsgi-user")
        assert user is not None
        user.decide("new_checkout")
        user.track_event("purchase")
        return "ok"

    app.wsgi_app = OptimizelyWSGIMiddleware(app.wsgi_app, dispatcher)  # type: ignore[method-assign]
    try:
        with werkzeug_in_a_thread(app) as port:
            for _ in range(3):
                assert requests.get(f"http://127.0.0.1:{port}/", timeout=30).text == "ok"
            assert dispatcher.flush(30)
    finally:
        dispatcher.close(10)
    assert len(encoder.threads) == 6
    assert set(encoder.threads) <= set(request_threads)  # each request's own thread
    assert not any(name.startswith("optimizely-event-sender") for name in encoder.threads)
    assert len(event_endpoint.all_visitors()) == 6
