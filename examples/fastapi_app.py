"""A FastAPI app whose Optimizely events leave after the response.

Run it next to the local event endpoint::

    python -m optimizely_middleware.devserver       # terminal 1: prints each event POST
    python examples/fastapi_app.py                  # terminal 2: http://127.0.0.1:8000/

then open http://127.0.0.1:8000/?user=alice and http://127.0.0.1:8000/buy?user=alice.
``OPTIMIZELY_EVENT_ENDPOINT`` overrides where events go (default: the local
devserver); in production leave ``event_endpoint`` out and set
``OPTIMIZELY_SDK_KEY`` (or ``OPTIMIZELY_DATAFILE_PATH``) in the environment:
``OptimizelyFastAPI(app)`` then needs no keywords at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import BackgroundTasks, FastAPI

from optimizely_middleware.fastapi import OptimizelyClient, OptimizelyFastAPI

DATAFILE = Path(__file__).with_name("datafile.json")
EVENT_ENDPOINT = os.environ.get("OPTIMIZELY_EVENT_ENDPOINT", "http://127.0.0.1:8765/v1/events")

app = FastAPI()
optimizely = OptimizelyFastAPI(app, datafile_path=DATAFILE, event_endpoint=EVENT_ENDPOINT)


@app.get("/")
async def home(optimizely: OptimizelyClient, user: str = "anon") -> dict[str, Any]:
    decision = optimizely.create_user_context(user).decide("new_checkout")
    return {"user": user, "new_checkout": decision.enabled}


@app.get("/buy")
def buy(optimizely: OptimizelyClient, tasks: BackgroundTasks, user: str = "anon") -> dict[str, Any]:
    # A sync endpoint runs in the thread pool; its events still belong to the request,
    # and so do those of its background tasks.
    context = optimizely.create_user_context(user)
    decision = context.decide("new_checkout")
    tasks.add_task(context.track_event, "purchase", {"revenue": 4200, "value": 42.0})
    return {"user": user, "new_checkout": decision.enabled, "bought": True}


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000)
