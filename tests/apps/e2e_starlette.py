"""The Starlette app of the real-server tests (Mangum, hypercorn, daphne,
granian): 3 events per request, ``GET /work/<user>``.

Servers load ``tests.apps.e2e_starlette:app``, which sends to
``OPTIMIZELY_TEST_EVENT_ENDPOINT`` (the flush timeout: ``OPTIMIZELY_TEST_SHUTDOWN_TIMEOUT``);
in-process tests call :func:`build_app`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from optimizely_middleware import (
    EventSender,
    OptimizelyASGIMiddleware,
    RequestScopedEventDispatcher,
    create_client,
)
from optimizely_middleware.starlette import optimizely_client

DATAFILE = (Path(__file__).resolve().parents[1] / "data" / "datafile.json").read_text()

logging.basicConfig(level=logging.INFO, format="%(process)d %(name)s %(levelname)s %(message)s")


async def work(request: Request) -> Response:
    user = optimizely_client(request).create_user_context(
        request.path_params["user_id"], {"plan": "pro"}
    )
    enabled = user.decide("new_checkout").enabled
    user.track_event("add_to_cart")
    user.track_event("purchase", {"revenue": 4200})
    return JSONResponse({"user": user.user_id, "enabled": enabled, "pid": os.getpid()})


def build_app(
    endpoint: str, shutdown_timeout: float = 20.0
) -> tuple[Starlette, RequestScopedEventDispatcher]:
    """The app and its dispatcher, sending to ``endpoint``."""
    dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=endpoint, shutdown_timeout=20.0))
    client = create_client(dispatcher, datafile=DATAFILE)
    app = Starlette(
        routes=[Route("/work/{user_id}", work)],
        middleware=[
            Middleware(
                OptimizelyASGIMiddleware,
                dispatcher=dispatcher,
                client=client,
                shutdown_timeout=shutdown_timeout,
            )
        ],
    )
    return app, dispatcher


if "OPTIMIZELY_TEST_EVENT_ENDPOINT" in os.environ:  # as a server's app module
    app, dispatcher = build_app(
        os.environ["OPTIMIZELY_TEST_EVENT_ENDPOINT"],
        float(os.environ.get("OPTIMIZELY_TEST_SHUTDOWN_TIMEOUT", "20")),
    )
