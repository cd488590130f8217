"""The Starlette app the uvicorn tests run (``tests.apps.starlette_e2e:app``).

Events go to ``OPTIMIZELY_EVENT_ENDPOINT``. ``/probe`` reports an event-loop
lag probe: a task that sleeps 10 ms at a time and records how late it wakes.
``/gated`` keeps its request open (in a background task) until ``/ack`` is
called for the same user, so a test knows when the request can end.
``decorated_app`` serves the same endpoints with ``defer_events`` and no
middleware.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from optimizely_middleware import (
    EventSender,
    OptimizelyASGIMiddleware,
    RequestScopedEventDispatcher,
    create_client,
)
from optimizely_middleware.starlette import defer_events, optimizely_client

DATAFILE = (Path(__file__).parents[1] / "data" / "datafile.json").read_text()
TICK = 0.01

dispatcher = RequestScopedEventDispatcher(
    EventSender(endpoint=os.environ["OPTIMIZELY_EVENT_ENDPOINT"]),
    failed_requests=os.environ.get("OPTIMIZELY_TEST_FAILED_REQUESTS", "keep"),  # type: ignore[arg-type]
)
client = create_client(dispatcher, datafile=DATAFILE)


class LagProbe:
    def __init__(self) -> None:
        self.ticks = 0
        self.max_lag = 0.0

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(TICK)
            self.max_lag = max(self.max_lag, time.monotonic() - started - TICK)
            self.ticks += 1


probe = LagProbe()


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    task = asyncio.create_task(probe.run())
    yield
    task.cancel()


def user_of(request: Request) -> str:
    return request.query_params.get("user", "anonymous")


async def home(request: Request) -> Response:
    user = optimizely_client(request).create_user_context(user_of(request), {"plan": "pro"})
    decision = user.decide("new_checkout")
    user.track_event("purchase")
    return PlainTextResponse(f"{user.user_id}:{decision.variation_key}:" + "x" * 10_000)


def sync_home(request: Request) -> Response:
    user = optimizely_client(request).create_user_context(user_of(request))
    user.decide("new_checkout")
    return PlainTextResponse("sync", background=BackgroundTask(user.track_event, "purchase"))


async def stream(request: Request) -> Response:
    user = client.create_user_context(user_of(request))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(3):
            user.track_event("add_to_cart")
            yield f"chunk{i}\n".encode()
        await asyncio.Event().wait()  # never set: until the client goes away
        yield b"never"

    return StreamingResponse(chunks(), media_type="text/plain")


def gated(request: Request) -> Response:
    user = client.create_user_context(user_of(request), {"plan": "pro"})
    user.decide("new_checkout")
    user.track_event("purchase")
    # Whatever the sender holds goes out now: had this request's events left
    # its scope early, they would reach the endpoint before the response.
    if not dispatcher.flush(10):
        return PlainTextResponse("flush timed out", status_code=500)
    return PlainTextResponse(
        f"{user.user_id}:" + "x" * 10_000,
        background=BackgroundTask(wait_for_ack, user.user_id),
    )


acks: dict[str, asyncio.Event] = {}


async def wait_for_ack(user: str) -> None:
    await asyncio.wait_for(acks.setdefault(user, asyncio.Event()).wait(), 30)


async def ack(request: Request) -> Response:
    acks.setdefault(user_of(request), asyncio.Event()).set()
    return PlainTextResponse("ok")


async def upload(request: Request) -> Response:
    """Decides, then reads the body: a client that goes away mid-upload makes
    ``request.body()`` raise ClientDisconnect."""
    client.create_user_context(user_of(request)).decide("new_checkout")
    body = await request.body()
    return PlainTextResponse(f"{len(body)} bytes")


async def boom(request: Request) -> Response:
    """A request that really fails (a 500): the control for failed_requests."""
    client.create_user_context(user_of(request)).decide("new_checkout")
    raise RuntimeError("the endpoint failed")


async def stats(request: Request) -> Response:
    return JSONResponse(dispatcher.stats())


async def chat(websocket: WebSocket) -> None:
    """Replies to each message until the client goes away; the
    WebSocketDisconnect that receive_text() then raises is not caught."""
    await websocket.accept()
    while True:
        text = await websocket.receive_text()
        client.create_user_context(text).decide("new_checkout")
        await websocket.send_text(f"hello {text}")


async def lag(request: Request) -> Response:
    if "reset" in request.query_params:
        probe.max_lag = 0.0
    return JSONResponse({"ticks": probe.ticks, "max_lag": probe.max_lag})


app = Starlette(
    routes=[
        Route("/", home),
        Route("/sync", sync_home),
        Route("/stream", stream),
        Route("/probe", lag),
        Route("/gated", gated),
        Route("/ack", ack),
        Route("/upload", upload, methods=["POST"]),
        Route("/boom", boom),
        Route("/stats", stats),
        WebSocketRoute("/ws", chat),
    ],
    middleware=[Middleware(OptimizelyASGIMiddleware, dispatcher=dispatcher, client=client)],
    lifespan=lifespan,
)


@defer_events(dispatcher)
async def plain_home(request: Request) -> Response:
    client.create_user_context(user_of(request)).decide("new_checkout")
    return PlainTextResponse("home")


decorated_app = Starlette(
    routes=[
        Route("/", plain_home),
        Route("/stream", defer_events(dispatcher)(stream)),
        Route("/upload", defer_events(dispatcher)(upload), methods=["POST"]),
        Route("/boom", defer_events(dispatcher)(boom)),
        Route("/stats", stats),
    ],
)
