"""Flask apps for the tests: one with the extension (every request scoped), one
with ``defer_events`` on some views only.

``create_app()`` without arguments reads its settings from the environment so
gunicorn can load it as ``tests.apps.flask_views:create_app()``:
``OPTIMIZELY_TEST_EVENT_ENDPOINT`` (the event endpoint URL), ``OPTIMIZELY_TEST_DATAFILE``
(a datafile path) and optionally ``OPTIMIZELY_TEST_FAILED_REQUESTS`` and
``OPTIMIZELY_TEST_SHUTDOWN_TIMEOUT``; ``OPTIMIZELY_TEST_STARTUP_EVENT=1`` fires
one event while the app is created.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request, send_file, stream_with_context

from optimizely_middleware import EventSender, RequestScopedEventDispatcher, create_client
from optimizely_middleware.flask import OptimizelyFlask, current_optimizely, defer_events

# The file the send_file views serve.
STATIC_FILE = Path(__file__).resolve().parents[1] / "data" / "datafile.json"


def settings_from_env() -> dict[str, Any]:
    config: dict[str, Any] = {
        "OPTIMIZELY_EVENT_ENDPOINT": os.environ["OPTIMIZELY_TEST_EVENT_ENDPOINT"],
        "OPTIMIZELY_DATAFILE_PATH": os.environ["OPTIMIZELY_TEST_DATAFILE"],
    }
    if "OPTIMIZELY_TEST_SHUTDOWN_TIMEOUT" in os.environ:
        config["OPTIMIZELY_SHUTDOWN_TIMEOUT"] = float(
            os.environ["OPTIMIZELY_TEST_SHUTDOWN_TIMEOUT"]
        )
    if "OPTIMIZELY_TEST_FAILED_REQUESTS" in os.environ:
        config["OPTIMIZELY_FAILED_REQUESTS"] = os.environ["OPTIMIZELY_TEST_FAILED_REQUESTS"]
    return config


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Every request scoped by the extension; ``/deferred`` also has the decorator."""
    app = Flask(__name__)
    app.config.update(config if config is not None else settings_from_env())
    optimizely = OptimizelyFlask(app)
    if os.environ.get("OPTIMIZELY_TEST_STARTUP_EVENT"):
        # An event outside any request, before gunicorn --preload forks the workers.
        optimizely.client.create_user_context("startup").decide("new_checkout")

    def decide(user_id: str) -> bool:
        user = current_optimizely.create_user_context(user_id, {"plan": "pro"})
        return user.decide("new_checkout").enabled

    @app.get("/decide/<user_id>")
    def decide_view(user_id: str) -> Any:
        return jsonify(user=user_id, enabled=decide(user_id), pid=os.getpid())

    @app.get("/buy/<user_id>")
    def buy(user_id: str) -> Any:
        enabled = decide(user_id)
        current_optimizely.track("purchase", user_id, {"plan": "pro"}, {"revenue": 4200})
        return jsonify(user=user_id, enabled=enabled, pid=os.getpid())

    @app.get("/stream/<user_id>")
    def stream(user_id: str) -> Response:
        body = deciding_between_chunks(decide, user_id)
        return Response(stream_with_context(body), mimetype="text/plain")

    @app.get("/raise/<user_id>")
    def raise_view(user_id: str) -> Any:
        decide(user_id)
        raise RuntimeError("the view failed")

    @app.get("/raise-in-stream/<user_id>")
    def raise_in_stream(user_id: str) -> Response:
        def body() -> Iterator[str]:
            yield "first chunk\n"
            decide(user_id)
            raise RuntimeError("the body failed")

        return Response(stream_with_context(body()), mimetype="text/plain")

    @app.get("/file/<user_id>")
    def file_view(user_id: str) -> Response:
        decide(user_id)
        return send_file(STATIC_FILE, mimetype="application/octet-stream")

    @app.get("/async/<user_id>")
    async def async_view(user_id: str) -> Any:
        return jsonify(user=user_id, enabled=decide(user_id))

    @app.get("/deferred/<user_id>")
    @defer_events(optimizely.dispatcher)
    def deferred(user_id: str) -> Any:
        return jsonify(user=user_id, enabled=decide(user_id))

    @app.get("/endless/<user_id>")
    def endless(user_id: str) -> Response:
        decide(user_id)
        return Response(stream_with_context(endless_body(decide, user_id)))

    @app.post("/upload/<user_id>")
    def upload(user_id: str) -> Any:
        decide(user_id)
        return f"{len(request.get_data())} bytes"  # ClientDisconnected if the client left

    return app


def deciding_between_chunks(decide: Any, user_id: str) -> Iterator[str]:
    """A streamed body that decides for ``user_id`` between its two chunks."""
    yield "first chunk\n"
    decide(user_id)
    yield "second chunk\n"


def endless_body(decide: Any, user_id: str) -> Iterator[bytes]:
    """Chunks until the server stops (the client went away); then one more event."""
    try:
        while True:
            yield b"x" * 65536
    finally:
        decide(user_id)


def create_decorated_app_from_env() -> Flask:
    """:func:`create_decorated_app` with settings from the environment (for gunicorn)."""
    config = settings_from_env()
    dispatcher = RequestScopedEventDispatcher(
        EventSender(endpoint=config["OPTIMIZELY_EVENT_ENDPOINT"]),
        failed_requests=config.get("OPTIMIZELY_FAILED_REQUESTS", "keep"),
    )
    datafile = Path(config["OPTIMIZELY_DATAFILE_PATH"]).read_text(encoding="utf-8")
    return create_decorated_app(dispatcher, create_client(dispatcher, datafile=datafile))


def create_decorated_app(dispatcher: RequestScopedEventDispatcher, client: Any) -> Flask:
    """No middleware: only the views with ``@defer_events`` are request-scoped."""
    app = Flask(__name__)

    def decide(user_id: str) -> bool:
        return bool(client.create_user_context(user_id).decide("new_checkout").enabled)

    @app.get("/deferred/<user_id>")
    @defer_events(dispatcher)
    def deferred(user_id: str) -> Any:
        enabled = decide(user_id)
        client.track("purchase", user_id)
        return {"user": user_id, "enabled": enabled}

    @app.get("/deferred-stream/<user_id>")
    @defer_events(dispatcher)
    def deferred_stream(user_id: str) -> Response:
        body = deciding_between_chunks(decide, user_id)
        return Response(stream_with_context(body), mimetype="text/plain")

    @app.get("/deferred-file/<user_id>")
    @defer_events(dispatcher)
    def deferred_file(user_id: str) -> Response:
        decide(user_id)
        return send_file(STATIC_FILE, mimetype="application/octet-stream")

    @app.get("/deferred-async/<user_id>")
    @defer_events(dispatcher)
    async def deferred_async(user_id: str) -> Any:
        return {"user": user_id, "enabled": decide(user_id)}

    @app.get("/deferred-raise/<user_id>")
    @defer_events(dispatcher)
    def deferred_raise(user_id: str) -> Any:
        decide(user_id)
        raise RuntimeError("the view failed")

    @app.get("/deferred-500/<user_id>")
    @defer_events(dispatcher)
    def deferred_500(user_id: str) -> Any:
        decide(user_id)
        return "unavailable", 503

    @app.get("/deferred-endless/<user_id>")
    @defer_events(dispatcher)
    def deferred_endless(user_id: str) -> Response:
        decide(user_id)
        return Response(endless_body(decide, user_id))

    @app.post("/deferred-upload/<user_id>")
    @defer_events(dispatcher)
    def deferred_upload(user_id: str) -> Any:
        decide(user_id)
        return f"{len(request.get_data())} bytes"

    @app.get("/plain/<user_id>")
    def plain(user_id: str) -> Any:
        return {"user": user_id, "enabled": decide(user_id)}

    return app
