"""gunicorn config: fork each worker only once the master's sender thread is
inside the encoder's guard (see :mod:`tests.apps.e2e_flask_fork_in_guard`)."""

from __future__ import annotations

from typing import Any


def pre_fork(server: Any, worker: Any) -> None:
    from tests.apps.e2e_flask_fork_in_guard import GUARD_RUNNING

    if not GUARD_RUNNING.wait(20):
        server.log.warning("the guard did not start: the fork is not inside it")
