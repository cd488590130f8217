"""What the adapters share (optimizely_middleware.integrations.adapters): running app
code in a request's scope, and flushing several targets within one deadline."""

from __future__ import annotations

import pytest

from optimizely_middleware import RequestScopedEventDispatcher
from optimizely_middleware.integrations.adapters import RequestInScope, flush_within
from tests.support.fakes import RecordingSink


def handed_over(sink: RecordingSink) -> list[object]:
    return list(sink.events)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class SlowTarget:
    """Takes ``takes`` seconds of ``clock`` to flush; records the timeout it was given."""

    def __init__(self, clock: Clock, takes: float, settles: bool = True) -> None:
        self.clock = clock
        self.takes = takes
        self.settles = settles
        self.given: list[float | None] = []

    def flush(self, timeout: float | None = None) -> bool:
        self.given.append(timeout)
        self.clock.now += self.takes
        return self.settles


class BrokenTarget:
    def flush(self, timeout: float | None = None) -> bool:
        raise RuntimeError("broken sender")


def test_flush_within_gives_each_target_what_is_left_of_one_deadline() -> None:
    clock = Clock()
    first, second, third = SlowTarget(clock, 3.0), SlowTarget(clock, 4.0), SlowTarget(clock, 0)
    assert flush_within([first, second, third], 5.0, clock=clock)
    assert first.given == [5.0]
    assert second.given == [2.0]
    assert third.given == [0.0]  # the deadline has passed: never a negative timeout


def test_flush_within_reports_an_unsettled_or_broken_target_and_flushes_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    after = SlowTarget(clock, 0.0)
    assert not flush_within([BrokenTarget(), after], 1.0, clock=clock)
    assert after.given == [1.0]
    assert "Flushing Optimizely events failed" in caplog.text
    assert not flush_within([SlowTarget(clock, 0.0, settles=False), after], 1.0, clock=clock)


def discarding() -> tuple[RecordingSink, RequestScopedEventDispatcher]:
    sink = RecordingSink()
    return sink, RequestScopedEventDispatcher(sink, failed_requests="discard")


def test_request_in_scope_hands_over_at_once_when_the_block_raises() -> None:
    sink, dispatcher = discarding()
    request = RequestInScope(dispatcher)
    with pytest.raises(ValueError), request:
        assert dispatcher.current_scope() is request.scope
        dispatcher.collect("event")
        raise ValueError("bug")
    assert dispatcher.current_scope() is None
    assert request.scope.closed
    assert handed_over(sink) == []  # failed, so discarded
    assert dispatcher.stats()["failed_requests"] == 1


def test_request_in_scope_judges_a_raise_by_failed_by_and_waits_for_finish() -> None:
    sink, dispatcher = discarding()
    answered = RequestInScope(dispatcher, failed_by=lambda exc: False)
    with pytest.raises(LookupError), answered:
        dispatcher.collect("event")
        raise LookupError("404: answered by the framework")
    assert handed_over(sink) == ["event"]

    served = RequestInScope(dispatcher)
    with served:
        dispatcher.collect("later")
    assert not served.scope.closed  # the response has not gone out yet
    served.finish()
    assert handed_over(sink) == ["event", "later"]
