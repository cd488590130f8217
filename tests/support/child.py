"""Waiting for a child made by a real ``os.fork()`` in a test."""

from __future__ import annotations

import os
import time


def wait_child(pid: int, timeout: float = 60.0) -> int:
    """The forked child's exit code; kills it if it does not finish in time
    (a deadlock in the child fails the test instead of hanging it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)  # polling a process; there is nothing to wait on
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError("the forked child did not finish (deadlock?)")
