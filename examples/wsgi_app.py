"""A plain WSGI app (no framework) whose Optimizely events leave after the response.

Run it next to the local event endpoint::

    python -m optimizely_middleware.devserver          # terminal 1: prints each event POST
    python examples/wsgi_app.py                        # terminal 2: http://127.0.0.1:8000/

then open http://127.0.0.1:8000/?user=alice and http://127.0.0.1:8000/buy?user=alice.
``OPTIMIZELY_EVENT_ENDPOINT`` overrides where events go; ``--port`` where the app listens.

The same three lines wrap any WSGI app (Django's ``get_wsgi_application()``,
Bottle, Pyramid, ...)::

    dispatcher = RequestScopedEventDispatcher()
    client = create_client(dispatcher, datafile=datafile)
    application = OptimizelyWSGIMiddleware(application, dispatcher)
"""

from __future__ import annotations

import argparse
import html
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from optimizely_middleware import (
    EventSender,
    OptimizelyWSGIMiddleware,
    RequestScopedEventDispatcher,
    create_client,
)

DATAFILE = Path(__file__).with_name("datafile.json")
DEV_ENDPOINT = "http://127.0.0.1:8765/v1/events"

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def create_app(dispatcher: RequestScopedEventDispatcher, datafile: str) -> WSGIApp:
    """The shop app wrapped in the middleware; its events go to ``dispatcher``.

    ``/`` decides the ``new_checkout`` flag for ``?user=``; ``/buy`` also
    tracks a ``purchase`` with revenue.
    """
    client = create_client(dispatcher, datafile=datafile)

    def shop(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path not in ("/", "/buy"):
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"Not found\n"]
        query = parse_qs(environ.get("QUERY_STRING", ""))
        user_id = query.get("user", ["anonymous"])[0]
        user = client.create_user_context(user_id, {"plan": query.get("plan", ["free"])[0]})
        decision = user.decide("new_checkout")
        label = "new checkout" if decision.enabled else "classic checkout"
        if path == "/buy":
            user.track_event("purchase", {"revenue": 4200, "value": 42.0})
            text = f"Thanks for your order, {user_id} ({label})."
        else:
            text = f"Hello {user_id}: you get the {label}."
        body = f"<!doctype html><p>{html.escape(text)}</p>\n".encode()
        start_response(
            "200 OK",
            [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return OptimizelyWSGIMiddleware(shop, dispatcher, client=client)


def main(argv: list[str] | None = None) -> None:
    from werkzeug.serving import run_simple

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)

    endpoint = os.environ.get("OPTIMIZELY_EVENT_ENDPOINT", DEV_ENDPOINT)
    dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=endpoint))
    application = create_app(dispatcher, DATAFILE.read_text())
    try:
        run_simple("127.0.0.1", args.port, application, threaded=True)
    finally:
        # Deliver what the last requests produced before the process ends.
        dispatcher.close(timeout=5.0)


if __name__ == "__main__":
    main()
