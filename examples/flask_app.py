"""A Flask app whose Optimizely events are sent after each response.

Run it next to the local event endpoint::

    python -m optimizely_middleware.devserver        # terminal 1: prints each event POST
    flask --app examples/flask_app.py run            # terminal 2: http://127.0.0.1:5000/

then open http://127.0.0.1:5000/?user=alice and POST to /buy?user=alice
(``curl -X POST 'http://127.0.0.1:5000/buy?user=alice'``).
``OPTIMIZELY_EVENT_ENDPOINT`` overrides where events go (default: the local
devserver); leave it out of ``app.config`` in production to send events to
Optimizely. Every ``OPTIMIZELY_*`` key can come from the environment instead
(see docs/configuration.md): with ``OPTIMIZELY_SDK_KEY`` set there,
``optimizely.init_app(app)`` needs no ``app.config`` at all.
"""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask, request
from markupsafe import escape

from optimizely_middleware.flask import OptimizelyFlask, current_optimizely

DATAFILE = Path(__file__).with_name("datafile.json")
DEV_ENDPOINT = "http://127.0.0.1:8765/v1/events"

# -- add it to your Flask app ---------------------------------------------------

optimizely = OptimizelyFlask()


def create_app(event_endpoint: str | None = None) -> Flask:
    app = Flask(__name__)
    app.config["OPTIMIZELY_DATAFILE_PATH"] = str(DATAFILE)  # or OPTIMIZELY_SDK_KEY
    app.config["OPTIMIZELY_EVENT_ENDPOINT"] = event_endpoint or os.environ.get(
        "OPTIMIZELY_EVENT_ENDPOINT", DEV_ENDPOINT
    )
    optimizely.init_app(app)

    @app.get("/")
    def index() -> str:
        user = current_optimizely.create_user_context(request.args.get("user", "anonymous"))
        decision = user.decide("new_checkout")  # collected, sent after the response
        # A str response is text/html: escape what came from the request.
        return f"Hello {escape(user.user_id)}: you get the {decision.variation_key} checkout.\n"

    @app.post("/buy")
    def buy() -> str:
        user = current_optimizely.create_user_context(request.args.get("user", "anonymous"))
        decision = user.decide("new_checkout")
        user.track_event("purchase", {"revenue": 4200})
        return f"Thanks for your order ({decision.variation_key} checkout).\n"

    return app


if __name__ == "__main__":
    create_app().run(port=5000)
