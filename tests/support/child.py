"""Waiting for a child made by a real ``os.fork()`` in a test."""

from __future__ import annotations

import os
import select


def wait_child(pid: int, timeout: float = 60.0) -> int:
    """The forked child's exit code; kills it if it does not finish in time
    (a deadlock in the child fails the test instead of hanging it).

    Waits on the child's pidfd, which becomes readable when the child exits."""
    pidfd = os.pidfd_open(pid)
    try:
        exited, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    if not exited:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise AssertionError("the forked child did not finish (deadlock?)")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
