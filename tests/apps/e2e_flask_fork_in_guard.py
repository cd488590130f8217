"""The real-server Flask app (:mod:`tests.apps.e2e_flask`), with the encoder's
first-encode guard held open in the master, so that gunicorn ``--preload``
forks its worker while the master's sender thread is inside the guard.

The guard sets :data:`GUARD_RUNNING` and stays inside for up to
:data:`GUARD_HOLD` seconds; the gunicorn config
(:mod:`tests.apps.gunicorn_fork_in_guard`) waits for it before each fork.
Loaded as ``tests.apps.e2e_flask_fork_in_guard:app`` with
``OPTIMIZELY_TEST_STARTUP_EVENT=1``.
"""

from __future__ import annotations

import threading
from typing import Any

import optimizely_middleware.delivery.encoding as encoding

GUARD_RUNNING = threading.Event()
GUARD_HOLD = 3.0
_real_guard = encoding.fast_path_problem


def _guard_held_open(encoder: Any) -> str | None:
    GUARD_RUNNING.set()
    threading.Event().wait(GUARD_HOLD)  # inside the guard, its lock held, while the master forks
    return _real_guard(encoder)


encoding.fast_path_problem = _guard_held_open

from tests.apps.e2e_flask import app  # noqa: E402  (after the guard is replaced)

__all__ = ["GUARD_RUNNING", "app"]
