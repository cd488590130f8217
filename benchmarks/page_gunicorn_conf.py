"""gunicorn settings for the Flask benchmark server (``-c`` this file).

2 worker processes x 8 threads (gthread): 16 requests in flight, the load
generator's concurrency. The bind address comes from ``BENCH_BIND``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

bind = os.environ.get("BENCH_BIND", "127.0.0.1:8000")
worker_class = "gthread"
workers = int(os.environ.get("BENCH_WORKERS", "2"))
threads = int(os.environ.get("BENCH_THREADS", "8"))
backlog = 1024
keepalive = 30
graceful_timeout = 60
accesslog = None
loglevel = "warning"


def worker_exit(server: Any, worker: Any) -> None:
    app_module = sys.modules.get("page_flask_app")
    if app_module is not None:
        app_module.on_worker_exit()
