"""The Flask app of the real-server tests (gevent, uWSGI, waitress): 3 events
per request, ``GET /work/<user>``.

Read from the environment: ``OPTIMIZELY_TEST_EVENT_ENDPOINT`` (the event endpoint),
``OPTIMIZELY_TEST_STARTUP_EVENT=1`` (one event from user ``startup`` while the
module is imported, outside any request: in the master under ``--preload`` or
uWSGI without ``--lazy-apps``), ``OPTIMIZELY_TEST_SIGTERM_FLUSH=1``
(:func:`install_sigterm_flush`), ``OPTIMIZELY_TEST_SHUTDOWN_TIMEOUT``.
Loaded as ``tests.apps.e2e_flask:app``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from flask import Flask, jsonify

from optimizely_middleware import install_sigterm_flush
from optimizely_middleware.flask import OptimizelyFlask, current_optimizely

DATAFILE = Path(__file__).resolve().parents[1] / "data" / "datafile.json"

logging.basicConfig(level=logging.INFO, format="%(process)d %(name)s %(levelname)s %(message)s")

app = Flask(__name__)
app.config.update(
    OPTIMIZELY_EVENT_ENDPOINT=os.environ["OPTIMIZELY_TEST_EVENT_ENDPOINT"],
    OPTIMIZELY_DATAFILE_PATH=str(DATAFILE),
    OPTIMIZELY_SHUTDOWN_TIMEOUT=float(os.environ.get("OPTIMIZELY_TEST_SHUTDOWN_TIMEOUT", "20")),
)
optimizely = OptimizelyFlask(app)

if os.environ.get("OPTIMIZELY_TEST_STARTUP_EVENT"):
    optimizely.client.create_user_context("startup").decide("new_checkout")
if os.environ.get("OPTIMIZELY_TEST_SIGTERM_FLUSH"):
    install_sigterm_flush(optimizely.dispatcher, timeout=20.0)


@app.get("/work/<user_id>")
def work(user_id: str) -> Any:
    user = current_optimizely.create_user_context(user_id, {"plan": "pro"})
    enabled = user.decide("new_checkout").enabled
    user.track_event("add_to_cart")
    user.track_event("purchase", {"revenue": 4200})
    return jsonify(user=user_id, enabled=enabled, pid=os.getpid())


@app.get("/stats")
def stats() -> Any:
    return jsonify(pid=os.getpid(), **optimizely.dispatcher.stats())
