"""WorkerPool and ThreadingStamp on their own: starts that fail, threads that die, a patched
threading library."""

from __future__ import annotations

import os
import threading
import time

import pytest

from optimizely_middleware.delivery.worker import ThreadingStamp, WorkerPool, join_all


def test_a_thread_that_cannot_start_is_not_listed_and_the_next_wake_starts_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran = threading.Event()
    pool = WorkerPool(lambda generation: ran.set(), max_workers=2, scale_up_after=0.1)
    cond = threading.Condition()
    real_start = threading.Thread.start
    attempts: list[str] = []

    def start(thread: threading.Thread) -> None:
        attempts.append(thread.name)
        if len(attempts) == 1:
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    with cond:
        pool.wake(cond)
        assert pool.threads == []
        pool.wake(cond)
        assert len(pool.threads) == 1
    assert ran.wait(10)
    pool.join(None)  # joins only threads that started: never raises


def test_a_dead_thread_is_replaced_at_the_next_wake() -> None:
    pool = WorkerPool(lambda generation: None, max_workers=1, scale_up_after=0.1)
    cond = threading.Condition()
    with cond:
        pool.wake(cond)
        (first,) = pool.threads
    first.join(10)  # it ended without being forgotten
    with cond:
        pool.wake(cond)
        (second,) = pool.threads
    assert second is not first


def test_a_patched_threading_lock_is_a_change_and_a_new_pid_is_not_its_business(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stamp = ThreadingStamp()
    pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: pid + 1)
    assert not stamp.changed()  # a fork is the process hooks' one fork check's to notice
    monkeypatch.setattr(threading, "Lock", lambda: None)  # as gevent's patch_all does
    assert stamp.changed()


def test_join_all_shares_one_deadline_and_skips_unstarted_threads_and_the_caller() -> None:
    release = threading.Event()
    blocked = [threading.Thread(target=release.wait) for _ in range(3)]
    for thread in blocked:
        thread.start()
    unstarted = threading.Thread(target=lambda: None)
    joined_from: list[float] = []
    real_join = threading.Thread.join

    class Recording(threading.Thread):
        def join(self, timeout: float | None = None) -> None:
            joined_from.append(-1.0 if timeout is None else timeout)
            real_join(self, timeout)

    for thread in blocked:
        thread.__class__ = Recording
    deadline = time.monotonic()  # already passed: each join gets 0 s, not a timeout each
    assert not join_all([*blocked, unstarted, threading.current_thread()], deadline)
    assert joined_from == [0.0, 0.0, 0.0]
    release.set()
    assert join_all(blocked, None)
