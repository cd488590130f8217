"""The benchmark page as a Flask app, served by gunicorn (gthread).

The variant comes from the environment (see ``page_variants``)::

    BENCH_VARIANT=middleware BENCH_EVENT_URL=http://127.0.0.1:8765/v1/events \\
    BENCH_DATAFILE=tests/data/datafile.json \\
    gunicorn -c benchmarks/page_gunicorn_conf.py --pythonpath benchmarks page_flask_app:app
"""

from __future__ import annotations

import atexit
import itertools
import os

from flask import Flask, request
from page_variants import load_from_environment, render_page

variant = load_from_environment()
_fallback_ids = itertools.count()

app = Flask(__name__)


@app.get("/page")
def page() -> str:
    user_id = request.args.get("u") or f"{os.getpid()}-{next(_fallback_ids)}"
    variant.pages.add()
    return render_page(variant.client, user_id)


@app.get("/healthz")
def healthz() -> str:
    return "ok"


if variant.dispatcher is not None:
    from optimizely_middleware import OptimizelyWSGIMiddleware

    app.wsgi_app = OptimizelyWSGIMiddleware(app.wsgi_app, variant.dispatcher)  # type: ignore[method-assign]
    # As OptimizelyFlask does: close the dispatcher at process exit, which
    # gunicorn workers reach on a graceful stop (SIGTERM).
    atexit.register(variant.dispatcher.close, 5.0)
else:
    atexit.register(variant.shutdown)
