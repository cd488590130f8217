"""The Starlette app the uvicorn tests run (``tests.apps.starlette_e2e:app``).

Events go to ``OPTIMIZELY_EVENT_ENDPOINT``. ``/probe`` reports an event-loop
lag probe: a task that sleeps 10 ms at a time and records how late it wakes.
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
from starlette.routing import Route

from optimizely_middleware import (
    EventSender,
    OptimizelyASGIMiddleware,
    RequestScopedEventDispatcher,
    create_client,
)
from optimizely_middleware.starlette import optimizely_client

DATAFILE = (Path(__file__).parents[1] / "data" / "datafile.json").read_text()
TICK = 0.01

dispatcher = RequestScopedEventDispatcher(
    EventSender(endpoint=os.environ["OPTIMIZELY_EVENT_ENDPOINT"])
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
    user = optimizely_client(request).create_user_context(user_of(request))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(3):
            user.track_event("add_to_cart")
            yield f"chunk{i}\n".encode()
        await asyncio.sleep(3600)  # until the client goes away
        yield b"never"

    return StreamingResponse(chunks(), media_type="text/plain")


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
    ],
    middleware=[Middleware(OptimizelyASGIMiddleware, dispatcher=dispatcher, client=client)],
    lifespan=lifespan,
)
