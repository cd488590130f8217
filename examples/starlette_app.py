"""A Starlette app whose Optimizely events leave after the response.

Run it next to the local event endpoint::

    python -m optimizely_middleware.devserver       # terminal 1: prints each event POST
    python examples/starlette_app.py                # terminal 2: http://127.0.0.1:8000/

then open http://127.0.0.1:8000/?user=alice and http://127.0.0.1:8000/buy?user=alice.
``OPTIMIZELY_EVENT_ENDPOINT`` overrides where events go (default: the local
devserver); in production leave ``event_endpoint`` out and set
``OPTIMIZELY_SDK_KEY`` (or ``OPTIMIZELY_DATAFILE_PATH``) in the environment:
``OptimizelyStarlette(app)`` then needs no keywords at all.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from optimizely_middleware.starlette import OptimizelyStarlette, optimizely_client

DATAFILE = Path(__file__).with_name("datafile.json")
EVENT_ENDPOINT = os.environ.get("OPTIMIZELY_EVENT_ENDPOINT", "http://127.0.0.1:8765/v1/events")


async def home(request: Request) -> JSONResponse:
    user = optimizely_client(request).create_user_context(request.query_params.get("user", "anon"))
    decision = user.decide("new_checkout")
    return JSONResponse({"user": user.user_id, "new_checkout": decision.enabled})


async def buy(request: Request) -> JSONResponse:
    user = optimizely_client(request).create_user_context(request.query_params.get("user", "anon"))
    decision = user.decide("new_checkout")
    user.track_event("purchase", {"revenue": 4200, "value": 42.0})
    return JSONResponse({"user": user.user_id, "new_checkout": decision.enabled, "bought": True})


app = Starlette(routes=[Route("/", home), Route("/buy", buy, methods=["GET", "POST"])])
optimizely = OptimizelyStarlette(app, datafile_path=DATAFILE, event_endpoint=EVENT_ENDPOINT)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000)
