"""A FastAPI app configured only by ``OPTIMIZELY_*`` environment variables.

``OPTIMIZELY_DATAFILE_PATH`` and ``OPTIMIZELY_EVENT_ENDPOINT`` come from the
test; the app names no setting. Its own lifespan prints a line at shutdown, so
the test can see it ran as well as the Optimizely flush. Loaded as
``tests.apps.fastapi_env:app``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import BackgroundTasks, FastAPI

from optimizely_middleware.fastapi import OptimizelyClient, OptimizelyFastAPI


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    print("app lifespan: started", flush=True)
    yield
    print("app lifespan: shutting down", flush=True)


app = FastAPI(lifespan=lifespan)
optimizely = OptimizelyFastAPI(app)


@app.get("/")
async def home(optimizely: OptimizelyClient, user: str = "anon") -> dict[str, Any]:
    decision = optimizely.create_user_context(user).decide("new_checkout")
    return {"user": user, "new_checkout": decision.enabled}


@app.get("/buy")
def buy(optimizely: OptimizelyClient, tasks: BackgroundTasks, user: str = "anon") -> dict[str, Any]:
    context = optimizely.create_user_context(user)
    tasks.add_task(context.track_event, "purchase", {"revenue": 4200})
    return {"user": user, "bought": True}
