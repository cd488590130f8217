"""The benchmark page as a Starlette app, served by uvicorn.

The endpoint is ``async def`` and calls the SDK directly, as most async apps
do. The variant comes from the environment (see ``page_variants``)::

    BENCH_VARIANT=middleware BENCH_EVENT_URL=http://127.0.0.1:8765/v1/events \\
    BENCH_DATAFILE=tests/data/datafile.json \\
    uvicorn --app-dir benchmarks page_starlette_app:app
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from page_variants import load_from_environment, render_page, write_stats_from_environment
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse
from starlette.routing import Route

variant = load_from_environment(stats_at_exit=False)
_fallback_ids = itertools.count()


async def page(request: Request) -> HTMLResponse:
    user_id = request.query_params.get("u") or f"{os.getpid()}-{next(_fallback_ids)}"
    variant.pages.add()
    return HTMLResponse(render_page(variant.client, user_id))


async def healthz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    if variant.dispatcher is None:
        # The middleware variant needs nothing here: OptimizelyASGIMiddleware
        # flushes and closes its dispatcher on lifespan.shutdown by itself.
        variant.shutdown()


starlette_app = Starlette(
    routes=[Route("/page", page), Route("/healthz", healthz)], lifespan=lifespan
)
inner: Any = starlette_app
if variant.dispatcher is not None:
    from optimizely_middleware import OptimizelyASGIMiddleware

    inner = OptimizelyASGIMiddleware(starlette_app, variant.dispatcher, client=variant.client)


async def app(scope: Any, receive: Any, send: Any) -> None:
    """The served app: writes this process's stats once everything inside has
    finished its lifespan shutdown (the middleware flushes before answering)."""
    if scope["type"] != "lifespan":
        await inner(scope, receive, send)
        return

    async def send_outermost(message: Any) -> None:
        if message["type"] == "lifespan.shutdown.complete":
            write_stats_from_environment(variant)
        await send(message)

    await inner(scope, receive, send_outermost)
