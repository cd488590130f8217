"""A real os.fork(): the child starts a clean engine, never re-sends the parent's queue,
and never deadlocks on a lock a parent thread held at fork time."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import pytest
from optimizely.event.log_event import LogEvent

from optimizely_middleware import EventSender
from tests.event_endpoint import EventEndpoint
from tests.test_sender import sdk_events  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def wait_child(pid: int, timeout: float = 60.0) -> int:
    """The child's exit code; kills it if it does not finish in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)  # polling a process; there is nothing to wait on
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError("the forked child did not finish (deadlock?)")


def run_in_child(body: Any) -> int:
    """Fork; the child runs ``body()`` and exits 0 if it returns True."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            code = 0 if body() else 2
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return wait_child(pid)


def test_child_never_resends_the_parents_queue_and_nothing_is_lost(
    sdk_events: list[LogEvent],  # noqa: F811
    event_endpoint: EventEndpoint,
) -> None:
    sender = EventSender(endpoint=event_endpoint.url, max_in_flight=1, max_events_per_post=1)
    parent_events = sdk_events
    child_event = LogEvent(
        sdk_events[0].url,
        {**sdk_events[0].params, "visitors": [{"visitor_id": "child", "snapshots": []}]},
    )
    try:
        event_endpoint.hold()
        sender.submit(parent_events)  # one POST in flight (held), two events queued
        event_endpoint.wait_for_arrivals(1)
        assert sender.stats()["queue_depth"] == 2

        def child() -> bool:
            fresh = sender.stats()
            if fresh["submitted"] or fresh["queue_depth"] or fresh["in_flight"]:
                return False
            sender.submit([child_event])
            ok = sender.flush(30)
            stats = sender.stats()
            sender.close(5)
            return ok and stats["submitted"] == 1 and stats["delivered_events"] == 1

        release = threading.Timer(0.2, event_endpoint.release)
        release.start()
        code = run_in_child(child)
        release.join()
        assert code == 0
        assert sender.flush(30)
    finally:
        event_endpoint.release()
        sender.close(5)
    ids = sorted(v["visitor_id"] for v in event_endpoint.all_visitors())
    assert ids == sorted(["user-1", "user-1", "user-2", "child"])
    assert sender.stats()["delivered_events"] == 3


def test_child_does_not_deadlock_on_a_lock_held_by_a_parent_thread(
    sdk_events: list[LogEvent],  # noqa: F811
    event_endpoint: EventEndpoint,
) -> None:
    sender = EventSender(endpoint=event_endpoint.url)
    sender.submit(sdk_events[:1])
    assert sender.flush(10)
    holding = threading.Event()
    done = threading.Event()

    def hold_the_lock() -> None:
        with sender._cond:
            holding.set()
            done.wait(30)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    try:
        assert holding.wait(10)

        def child() -> bool:
            sender.submit(sdk_events[1:])
            return sender.flush(30) and sender.stats()["delivered_events"] == 2

        assert run_in_child(child) == 0
    finally:
        done.set()
        holder.join()
        sender.close(5)
    assert len(event_endpoint.all_visitors()) == 3
