"""A slice clock for tests of the bounded hand-off encoding."""

from __future__ import annotations


class TickingClock:
    """A slice clock that moves ``step`` seconds each time it is read.

    Example::

        clock = TickingClock(0.0003)
        clock()  # 0.0003
    """

    def __init__(self, step: float) -> None:
        self.step = step
        self.now = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now
