from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from optimizely.event.log_event import LogEvent

from optimizely_middleware.dispatcher import RequestScopedEventDispatcher
from optimizely_middleware.scope import RequestScope, ScopeVar
from tests.support.fakes import RecordingSink


def make_event(n: int = 0) -> LogEvent:
    return LogEvent("https://logx.optimizely.com/v1/events", {"n": n})


def test_add_then_close_returns_events_once() -> None:
    scope = RequestScope()
    events = [make_event(i) for i in range(3)]
    for event in events:
        assert scope.add(event) is True
    assert len(scope) == 3
    assert scope.close() == events
    assert scope.close() is None
    assert scope.closed


def test_add_after_close_is_refused() -> None:
    scope = RequestScope()
    scope.close()
    assert scope.add(make_event()) is None


def test_cap_counts_overflow_and_keeps_the_first_events() -> None:
    scope = RequestScope(max_events=2)
    results = [scope.add(make_event(i)) for i in range(5)]
    assert results == [True, True, False, False, False]
    assert scope.overflowed == 3
    closed = scope.close()
    assert closed is not None
    assert [e.params["n"] for e in closed] == [0, 1]


def test_concurrent_adds_lose_nothing() -> None:
    scope = RequestScope(max_events=100_000)

    def add_many(offset: int) -> None:
        for i in range(1000):
            scope.add(make_event(offset + i))

    threads = [threading.Thread(target=add_many, args=(k * 1000,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    closed = scope.close()
    assert closed is not None
    assert sorted(e.params["n"] for e in closed) == list(range(8000))


def test_activate_restores_previous_value() -> None:
    var = ScopeVar("test")
    outer, inner = RequestScope(), RequestScope()
    assert var.get() is None
    with var.activate(outer):
        assert var.get() is outer
        with var.activate(inner):
            assert var.get() is inner
        assert var.get() is outer
    assert var.get() is None


def test_activate_restores_previous_value_when_the_block_raises() -> None:
    var = ScopeVar("test")
    outer, inner = RequestScope(), RequestScope()
    with var.activate(outer):
        with pytest.raises(ZeroDivisionError), var.activate(inner):
            raise ZeroDivisionError
        assert var.get() is outer
    assert var.get() is None


def test_closed_scope_is_not_current() -> None:
    var = ScopeVar("test")
    scope = RequestScope()
    with var.activate(scope):
        scope.close()
        assert var.get() is None


def test_context_copy_in_a_thread_pool_sees_the_same_mutable_scope() -> None:
    var = ScopeVar("test")
    scope = RequestScope()
    with var.activate(scope), ThreadPoolExecutor(2) as pool:
        context = contextvars.copy_context()
        future = pool.submit(context.run, lambda: var.get().add(make_event(7)))  # type: ignore[union-attr]
        assert future.result() is True
    closed = scope.close()
    assert closed is not None
    assert [e.params["n"] for e in closed] == [7]


def test_a_request_scope_block_follows_the_failed_request_rule() -> None:
    dispatcher = RequestScopedEventDispatcher(RecordingSink())
    with pytest.raises(ValueError), dispatcher.request_scope():
        raise ValueError("the app failed")
    with pytest.raises(asyncio.CancelledError), dispatcher.request_scope():
        raise asyncio.CancelledError
    with dispatcher.request_scope():
        pass
    stats = dispatcher.stats()
    assert stats["requests"] == 3
    assert stats["failed_requests"] == 1  # the cancelled block is not a failure
