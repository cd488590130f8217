"""gunicorn settings for the Flask benchmark server (``-c`` this file).

2 worker processes x 8 threads (gthread): 16 requests in flight, the load
generator's concurrency. Each worker closes its event pipeline in an
``atexit`` handler (see ``page_flask_app``), which gunicorn workers run when
they stop gracefully on SIGTERM; ``graceful_timeout`` leaves room for it.
"""

from __future__ import annotations

import os

worker_class = "gthread"
workers = int(os.environ.get("BENCH_WORKERS", "2"))
threads = int(os.environ.get("BENCH_THREADS", "8"))
backlog = 1024
keepalive = 30
graceful_timeout = 60
accesslog = None
loglevel = "warning"
