"""A bare ASGI app that knows nothing of lifespan (it raises on it), wrapped
in the middleware: the uvicorn tests run it as ``tests.apps.asgi_bare:app``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from optimizely_middleware import (
    EventSender,
    OptimizelyASGIMiddleware,
    RequestScopedEventDispatcher,
    create_client,
)

DATAFILE = (Path(__file__).parents[1] / "data" / "datafile.json").read_text()

dispatcher = RequestScopedEventDispatcher(
    EventSender(endpoint=os.environ["OPTIMIZELY_EVENT_ENDPOINT"])
)
client = create_client(dispatcher, datafile=DATAFILE)


async def shop(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        raise RuntimeError(f"unsupported scope type {scope['type']!r}")
    query = parse_qs(scope["query_string"].decode())
    user = client.create_user_context(query.get("user", ["anonymous"])[0], {"plan": "pro"})
    decision = user.decide("new_checkout")
    user.track_event("purchase")
    body = f"{user.user_id}:{decision.variation_key}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


app = OptimizelyASGIMiddleware(shop, dispatcher)
