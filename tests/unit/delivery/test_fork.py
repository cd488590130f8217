"""A real os.fork(): the child starts a clean engine, never re-sends the parent's queue,
and never deadlocks on a lock a parent thread held at fork time; the same without the
fork hooks (as under uWSGI, which forks in C), by pid alone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest
from optimizely.event.log_event import LogEvent

from optimizely_middleware import EventSender
from optimizely_middleware.delivery.encoding import PendingUserEvent
from optimizely_middleware.process import hooks
from tests.support.child import wait_child
from tests.support.endpoint import EventEndpoint
from tests.support.events import impression, project_config, three_events

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


@pytest.fixture
def sdk_events(datafile: str) -> list[LogEvent]:
    return three_events(datafile)


def run_in_child(body: Any, parent: Any = None) -> int:
    """Fork; the child runs ``body(signal)`` and exits 0 if it returns True.

    ``signal()`` in the child makes ``parent()`` run in the parent (if given).
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(read_end)
            code = 0 if body(lambda: os.write(write_end, b"x")) else 2
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    try:
        if parent is not None:
            signalled = os.read(read_end, 1)  # b"" if the child exited without signalling
            if signalled:
                parent()
    finally:
        os.close(read_end)
    return wait_child(pid)


def test_child_never_resends_the_parents_queue_and_nothing_is_lost(
    sdk_events: list[LogEvent],
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

        def child(signal: Any) -> bool:
            fresh = sender.stats()
            if fresh["submitted"] or fresh["queue_depth"] or fresh["in_flight"]:
                return False
            sender.submit([child_event])
            signal()  # the parent releases the endpoint only now, after the fork
            ok = sender.flush(30)
            stats = sender.stats()
            sender.close(5)
            return ok and stats["submitted"] == 1 and stats["delivered_events"] == 1

        code = run_in_child(child, parent=event_endpoint.release)
        assert code == 0
        assert sender.flush(30)
    finally:
        event_endpoint.release()
        sender.close(5)
    ids = sorted(v["visitor_id"] for v in event_endpoint.all_visitors())
    assert ids == sorted(["user-1", "user-1", "user-2", "child"])
    assert sender.stats()["delivered_events"] == 3


def test_child_does_not_deadlock_on_a_lock_held_by_a_parent_thread(
    sdk_events: list[LogEvent],
    event_endpoint: EventEndpoint,
) -> None:
    sender = EventSender(endpoint=event_endpoint.url)
    sender.submit(sdk_events[:1])
    assert sender.flush(10)
    holding = threading.Event()
    done = threading.Event()

    def hold_the_lock() -> None:
        with sender._engine._cond:
            holding.set()
            done.wait(30)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    try:
        assert holding.wait(10)

        def child(signal: Any) -> bool:
            sender.submit(sdk_events[1:])
            return sender.flush(30) and sender.stats()["delivered_events"] == 2

        assert run_in_child(child) == 0
    finally:
        done.set()
        holder.join()
        sender.close(5)
    assert len(event_endpoint.all_visitors()) == 3


def test_child_does_not_deadlock_on_a_drop_log_lock_held_at_fork(
    datafile: str,
    event_endpoint: EventEndpoint,
) -> None:
    """A parent thread writing a drop's log line when the process forks (gunicorn
    --preload) leaves the drop log's lock held in the child: the child renews it."""
    sender = EventSender(endpoint=event_endpoint.url)
    held = sender._engine._ledger._log._lock
    config = project_config(datafile)
    events = [PendingUserEvent(impression(config, f"user-{i}"), None) for i in range(3)]
    held.acquire()  # as a parent thread inside a drop's log line would
    try:

        def child(signal: Any) -> bool:
            sender.submit(events)
            return sender.flush(20) and sender.stats()["delivered_events"] == 3

        assert run_in_child(child) == 0
    finally:
        held.release()
        sender.close(5)
    assert len(event_endpoint.all_visitors()) == 3


def test_without_fork_hooks_the_child_notices_the_new_pid_on_its_first_hand_off(
    sdk_events: list[LogEvent],
    event_endpoint: EventEndpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # uWSGI forks in C: os.register_at_fork handlers do not run there.
    sender = EventSender(endpoint=event_endpoint.url, max_in_flight=1)
    event_endpoint.hold()
    sender.submit(sdk_events[:1])  # the parent's worker is now stuck in a POST
    event_endpoint.wait_for_arrivals(1)
    monkeypatch.setattr(hooks, "_after_fork_in_child", lambda: None)
    try:

        def child(signal: Any) -> bool:
            inherited = sender._engine._posts.events  # no hook ran: the parent's state is here
            sender.submit(sdk_events[1:])  # the first hand-off re-initialises by pid
            stats = sender.stats()
            signal()
            ok = sender.flush(30)
            sender.close(5)
            return inherited == 1 and stats["submitted"] == 2 and ok

        assert run_in_child(child, parent=event_endpoint.release) == 0
        assert sender.flush(30)
    finally:
        event_endpoint.release()
        sender.close(5)
    assert len(event_endpoint.all_visitors()) == 3


GEVENT_AFTER_FORK = textwrap.dedent(
    """
    import os, sys
    from optimizely.event.log_event import LogEvent
    from optimizely_middleware import EventSender

    def event(visitor):
        return LogEvent("https://logx.optimizely.com/v1/events",
                        {"account_id": "1", "visitors": [{"visitor_id": visitor}]})

    # As in a gunicorn --preload master: the sender is made and used (native
    # locks, a native worker thread) before the fork ...
    sender = EventSender(endpoint=sys.argv[1], flush_interval=0.01)
    sender.submit([event("master")])
    assert sender.flush(10)
    pid = os.fork()
    if pid:
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
    # ... and the worker process is monkey-patched by gevent after it.
    from gevent import monkey
    monkey.patch_all()
    sender.submit([event("gevent-worker")])
    ok = sender.flush(10)
    sender.close(5)
    os._exit(0 if ok else 3)
    """
)


def test_a_sender_made_before_fork_and_gevent_patching_delivers_in_the_worker(
    event_endpoint: EventEndpoint,
) -> None:
    pytest.importorskip("gevent")
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", GEVENT_AFTER_FORK, event_endpoint.url],
        capture_output=True,
        text=True,
        timeout=60,  # without the lock re-init the worker deadlocks here
    )
    assert result.returncode == 0, result.stderr
    assert [v["visitor_id"] for v in event_endpoint.all_visitors()] == ["master", "gevent-worker"]
