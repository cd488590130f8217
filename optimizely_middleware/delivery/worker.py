"""Background I/O threads that know nothing about HTTP, and noticing a patched threading.

Usage (the engine holds ``condition`` around every call but ``join``)::

    pool = WorkerPool(run_loop, max_workers=4, scale_up_after=0.1, clock=time.monotonic)
    pool.wake(condition)                          # work arrived: wake an idle worker or start one
    pool.maybe_grow(work_waiting=True)            # a second worker only when all are slow
    pool.idle_wait(condition, wait, timeout)      # a worker with nothing to do

    stamp = ThreadingStamp()
    if stamp.changed():                           # gevent patched threading since
        ...                                       # new locks, no threads

``run_loop(generation)`` is the engine's worker loop; it returns when
:attr:`WorkerPool.generation` is no longer the one it was started with.
A worker with nothing queued waits on the condition with no timeout: an
idle engine makes no wake-ups. A thread that cannot be started
(``RuntimeError: can't start new thread``) or that dies is forgotten, so
the next :meth:`WorkerPool.wake` starts another.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from optimizely_middleware.delivery.clock import Clock, Wait

__all__ = ["ThreadingStamp", "WorkerPool", "join_all"]

logger = logging.getLogger("optimizely_middleware.sender")


class ThreadingStamp:
    """The threading library an engine's locks and threads belong to.

    :meth:`changed` is True after gevent's monkey-patching (``threading.Lock``
    or ``threading.Condition`` is no longer the object seen at creation: a
    native lock mixed with patched code deadlocks). A new process is the
    package's one fork check's to notice (:mod:`optimizely_middleware.process.hooks`).

    Example::

        stamp = ThreadingStamp()
        gevent.monkey.patch_all()
        assert stamp.changed()
    """

    __slots__ = ("condition_type", "lock_type")

    def __init__(self) -> None:
        self.lock_type: object = threading.Lock
        self.condition_type: object = threading.Condition

    def changed(self) -> bool:
        return (
            threading.Lock is not self.lock_type or threading.Condition is not self.condition_type
        )


class WorkerPool:
    """Up to ``max_workers`` daemon threads running ``run(generation)``, started on demand.

    The first worker starts with the first work. Another starts only when
    work is waiting while every worker has been busy for ``scale_up_after``
    seconds (POSTs are slow).

    Example::

        pool = WorkerPool(engine_loop, max_workers=4, scale_up_after=0.1, clock=time.monotonic)
    """

    def __init__(
        self,
        run: Callable[[int], None],
        *,
        max_workers: int,
        scale_up_after: float,
        clock: Clock = time.monotonic,
        name: str = "optimizely-event-sender",
    ) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, not {max_workers!r}")
        if scale_up_after < 0:
            raise ValueError("scale_up_after must be >= 0")
        self._run = run
        self.max_workers = max_workers
        self.scale_up_after = scale_up_after
        self._clock = clock
        self.name = name
        self.generation = 0
        self.threads: list[threading.Thread] = []
        self.idle = 0
        self._all_busy_since: float | None = None

    def reset(self) -> None:
        """Forget every thread (a new process or threading library): new ones start on demand."""
        self.generation += 1
        self.threads = []
        self.idle = 0
        self._all_busy_since = None

    def retire(self) -> list[threading.Thread]:
        """Let every worker end at its next look at the queue; new ones start on demand.

        Only for a pool with no job in progress (its jobs belong to the old
        generation). Returns the retiring threads, to be joined.
        """
        self.generation += 1
        threads, self.threads = self.threads, []
        self._all_busy_since = None
        return threads

    def start(self) -> bool:
        """Start one more worker; False (logged) when the thread cannot be started."""
        thread = threading.Thread(
            target=self._run,
            args=(self.generation,),
            name=f"{self.name}-{len(self.threads) + 1}",
            daemon=True,
        )
        try:
            thread.start()
        except Exception as exc:  # RuntimeError: can't start new thread
            logger.warning(
                "Could not start an Optimizely event sender thread (%s: %s); the events "
                "stay queued and another start is tried at the next hand-off or flush.",
                type(exc).__name__,
                exc,
            )
            return False
        # The caller holds the engine's condition, so the new thread cannot look
        # at the pool before it is listed here.
        self.threads.append(thread)
        self._all_busy_since = self._clock()  # the new worker starts busy; the timer restarts
        return True

    def forget(self, thread: threading.Thread) -> None:
        """``thread`` ended (or died): the next :meth:`wake` may start another."""
        if thread in self.threads:
            self.threads.remove(thread)

    def wake(self, condition: threading.Condition) -> None:
        """Work arrived: wake one idle worker, or start one if none is alive."""
        if self.idle:
            condition.notify()
            return
        if self.threads and not any(thread.is_alive() for thread in self.threads):
            self.threads = []  # died without saying so
        if not self.threads:
            self.start()

    def maybe_grow(self, *, work_waiting: bool) -> None:
        """Start another worker if work waits while all workers have been busy long enough."""
        if not work_waiting or self.idle or not self.threads:
            return  # the first worker is started by wake()
        if len(self.threads) >= self.max_workers:
            return
        since = self._all_busy_since
        if since is not None and self._clock() - since >= self.scale_up_after:
            self.start()

    def idle_wait(self, condition: threading.Condition, wait: Wait, timeout: float | None) -> None:
        """Wait for work: forever (``timeout=None``: no wake-ups) or ``timeout`` seconds."""
        self.idle += 1
        self._all_busy_since = None
        try:
            if timeout is None:
                condition.wait()
            else:
                wait(condition, max(0.0, timeout))
        finally:
            self.idle -= 1
            if self.idle == 0:
                self._all_busy_since = self._clock()

    def join(self, deadline: float | None) -> bool:
        """Join every worker, until ``deadline`` (``time.monotonic()``) at most."""
        return join_all(list(self.threads), deadline)

    def alive(self) -> int:
        return sum(1 for thread in self.threads if thread.is_alive())


def join_all(threads: list[threading.Thread], deadline: float | None) -> bool:
    """Join each started thread (but the caller's own) until ``deadline``
    (``time.monotonic()``; None: no limit); True if none of them is still alive."""
    current = threading.current_thread()
    for thread in threads:
        if thread is current or thread.ident is None:
            continue
        thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    return not any(thread.is_alive() and thread is not current for thread in threads)
