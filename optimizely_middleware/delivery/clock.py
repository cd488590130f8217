"""Time for the delivery engine: a clock and a way to wait on a condition, both injectable.

Usage::

    engine = EventSender(clock=time.monotonic, wait=wait_on)    # the defaults

    clock = ManualClock()                                       # in tests
    sender = EventSender(clock=clock, wait=clock.wait, transport=recording)
    ...
    assert recording.times[1] - recording.times[0] >= 2.0       # the backoff really waited

Every wait of the engine with a timeout (linger, backoff, ``Retry-After``)
goes through ``wait(condition, seconds)`` and then re-reads ``clock()``; a
wait without a timeout (an idle worker) is a plain ``condition.wait()``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["Clock", "ManualClock", "Wait", "wait_on"]

Clock = Callable[[], float]
# wait(condition, timeout): called with the condition held; returns when
# notified or when timeout seconds have passed on the engine's clock.
Wait = Callable[[threading.Condition, float], object]


def wait_on(condition: threading.Condition, timeout: float) -> object:
    """The default :data:`Wait`: ``condition.wait(timeout)``."""
    return condition.wait(timeout)


class ManualClock:
    """A clock for tests: time passes only when the engine waits, by exactly what it waits.

    ``wait(condition, seconds)`` moves the clock forward by ``seconds`` and
    returns at once, so a test sees every wait the engine makes, with its
    length, without sleeping. Replace a real wait by ``wait(0)`` in the
    engine and the clock no longer moves: the test notices.

    Example::

        clock = ManualClock()
        sender = EventSender(clock=clock, wait=clock.wait, flush_interval=5.0, transport=t)
        sender.submit(events)          # at t=0
        sender.flush(10)               # the POST was made at clock() == 5.0
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.waits: list[float] = []

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += max(0.0, seconds)

    def wait(self, condition: threading.Condition, timeout: float) -> object:
        with self._lock:
            self.waits.append(timeout)
            self._now += max(0.0, timeout)
        return condition.wait(0)
