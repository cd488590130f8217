"""The delivery engine: waits (with an injectable clock), faults, the hand-off, process changes.

With a ManualClock, time passes only when the engine waits, by exactly what it
waits, so each test below proves a wait: replace it by wait(0) and it fails.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from optimizely.event.log_event import LogEvent

from optimizely_middleware import EventSender
from optimizely_middleware.delivery.clock import ManualClock
from optimizely_middleware.delivery.encoded import EncodedEvent
from optimizely_middleware.delivery.encoding import EventEncoder
from optimizely_middleware.delivery.engine import DeliveryEngine
from optimizely_middleware.delivery.handoff import SMALL_HANDOFF
from optimizely_middleware.delivery.retry import RetryPolicy
from optimizely_middleware.delivery.transport import TransportResponse
from tests.support.clocks import TickingClock
from tests.support.endpoint import EventEndpoint
from tests.support.events import (
    LogWatcher,
    RecordingTransport,
    free_port,
    project_config,
    three_events,
)

US = "https://logx.optimizely.com/v1/events"


def event(visitor: str, revision: str = "42") -> LogEvent:
    return LogEvent(
        US,
        {"account_id": "1", "revision": revision, "visitors": [{"visitor_id": visitor}]},
    )


@pytest.fixture
def engines() -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for engine in made:
        engine.close(2.0)


def make_engine(engines: list[Any], clock: ManualClock | None, **options: Any) -> DeliveryEngine:
    """An engine on ``clock`` (None: real time) with a RecordingTransport."""
    options.setdefault("transport", RecordingTransport(clock=clock))
    options.setdefault("encoder", EventEncoder())
    if clock is not None:
        options.update(clock=clock, wait=clock.wait)
    engine = DeliveryEngine(**options)
    engines.append(engine)
    return engine


def statuses(*answers: int | tuple[int, dict[str, str]]) -> Any:
    """A respond() for RecordingTransport: the given answers, then 200s."""

    def respond(n: int) -> TransportResponse:
        if n >= len(answers):
            return TransportResponse(200, {})
        answer = answers[n]
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        return TransportResponse(status, headers)

    return respond


# -- waits, proven ---------------------------------------------------------------


def test_a_lone_event_waits_exactly_the_flush_interval(engines: list[Any]) -> None:
    clock = ManualClock()
    transport = RecordingTransport(clock=clock)
    engine = make_engine(engines, clock, transport=transport, flush_interval=5.0)
    engine.submit([event("a")])
    transport.wait_for_posts(1)
    assert transport.times == [5.0]  # removing the linger makes it 0.0


def test_events_arriving_during_the_linger_share_the_post(engines: list[Any]) -> None:
    # Real time here: a ManualClock would let the linger pass as soon as the
    # worker waits, possibly between the two hand-offs.
    transport = RecordingTransport(clock=time.monotonic)
    engine = make_engine(engines, None, transport=transport, flush_interval=1.0)
    submitted_at = time.monotonic()
    engine.submit([event("a")])
    engine.submit([event("b"), event("c")])
    transport.wait_for_posts(1)
    assert transport.times[0] - submitted_at >= 1.0
    assert [v["visitor_id"] for v in transport.visitors] == ["a", "b", "c"]
    assert engine.flush(10)
    assert len(transport.posts) == 1


def test_backoff_waits_before_a_retry(engines: list[Any]) -> None:
    clock = ManualClock()
    transport = RecordingTransport(statuses(503, 503), clock=clock)
    policy = RetryPolicy(max_retries=5, backoff_base=2.0, backoff_cap=30.0, random=lambda: 1.0)
    engine = make_engine(engines, clock, transport=transport, flush_interval=0, retry_policy=policy)
    engine.submit([event("a")])
    transport.wait_for_posts(3)
    assert engine.flush(10)
    assert transport.times == [0.0, 2.0, 6.0]  # 2 s, then 4 s: exponential
    assert engine.stats()["retries"] == 2


def test_retry_after_is_honoured_and_capped(engines: list[Any]) -> None:
    clock = ManualClock()
    transport = RecordingTransport(
        statuses((429, {"Retry-After": "30"}), (503, {"retry-after": "900"})), clock=clock
    )
    policy = RetryPolicy(max_retries=5, backoff_base=0.0, retry_after_cap=60.0)
    engine = make_engine(engines, clock, transport=transport, flush_interval=0, retry_policy=policy)
    engine.submit([event("a")])
    transport.wait_for_posts(3)
    assert transport.times == [0.0, 30.0, 90.0]


def test_retry_after_pauses_every_post_of_the_transport_not_only_its_batch(
    engines: list[Any],
) -> None:
    clock = ManualClock()
    transport = RecordingTransport(statuses((429, {"Retry-After": "10"})), clock=clock)
    policy = RetryPolicy(max_retries=0, backoff_base=0.0)  # the refused batch is dropped
    engine = make_engine(
        engines, clock, transport=transport, flush_interval=0, retry_policy=policy,
        max_in_flight=1,
    )  # fmt: skip
    engine.submit([event("a", revision="1")])
    transport.wait_for_posts(1)
    engine.submit([event("b", revision="2")])  # another group: another POST
    transport.wait_for_posts(2)
    assert transport.times == [0.0, 10.0]
    assert engine.stats()["dropped"] == {"retries_exhausted": 1}


# -- faults ------------------------------------------------------------------------


def test_urls_are_redacted_in_logs_and_last_error(engines: list[Any]) -> None:
    secret_url = f"http://user:pw-secret@127.0.0.1:{free_port()}/v1/events?key=q-secret"
    watcher = LogWatcher()
    try:
        sender = EventSender(
            endpoint=secret_url, max_retries=1, backoff_base=0.01, backoff_cap=0.01
        )
        engines.append(sender)
        sender.submit([event("a")])
        assert sender.flush(10)
    finally:
        watcher.remove()
    stats = sender.stats()
    assert stats["dropped"] == {"retries_exhausted": 1}
    texts = [message for _, message in watcher.messages] + [stats["last_error"]]
    assert any("retry 1 of 1" in text for text in texts)
    assert any("127.0.0.1" in text for text in texts)
    assert not any("secret" in text for text in texts)


def test_http_errors_name_the_url_without_its_query(
    engines: list[Any], event_endpoint: EventEndpoint
) -> None:
    event_endpoint.status = 400
    sender = EventSender(endpoint=event_endpoint.url + "?key=q-secret")
    engines.append(sender)
    sender.submit([event("a")])
    assert sender.flush(10)
    assert sender.stats()["last_error"] == f"HTTP 400 from {event_endpoint.url}"


def test_after_close_gives_up_no_retry_is_announced_or_counted(engines: list[Any]) -> None:
    watcher = LogWatcher()
    try:
        sender = EventSender(
            endpoint=f"http://127.0.0.1:{free_port()}/v1/events",
            max_retries=5,
            backoff_base=30.0,
            backoff_cap=30.0,
            transport=RecordingTransport(statuses(*[503] * 10)),
            flush_interval=0,
        )
        engines.append(sender)
        sender.submit([event("a")])
        seen = threading.Event()
        watcher.text, watcher.seen = "retry 1 of 5", seen
        assert seen.wait(10)
        sender.close(0.1)
        for thread in sender._engine._pool.threads:
            thread.join(10)
            assert not thread.is_alive()
    finally:
        watcher.remove()
    retry_lines = [m for _, m in watcher.messages if "retry" in m and "of 5" in m]
    assert retry_lines[0].startswith("POST of 1 Optimizely events failed (HTTP 503")
    assert len(retry_lines) == 1
    stats = sender.stats()
    assert stats["retries"] == 0  # planned, never made
    assert stats["dropped"] == {"shutdown": 1}


@pytest.mark.parametrize(
    ("endpoint", "headers", "why"),
    [
        ("http://", {}, "invalid URL"),
        ("ftp://127.0.0.1/v1/events", {}, "invalid URL"),
        (None, {"X-Bad": "a\nb"}, "header"),
    ],
    ids=["no-host", "scheme", "header"],
)
def test_errors_that_cannot_heal_are_rejected_at_once(
    engines: list[Any], event_endpoint: EventEndpoint, endpoint: str | None, headers: Any, why: str
) -> None:
    sender = EventSender(endpoint=endpoint or event_endpoint.url, backoff_base=5.0)
    engines.append(sender)
    bad = LogEvent(US, event("a").params, "POST", {"Content-Type": "application/json", **headers})
    watcher = LogWatcher()
    try:
        sender.submit([bad])
        assert sender.flush(10)
    finally:
        watcher.remove()
    stats = sender.stats()
    assert stats["dropped"] == {"rejected": 1}
    assert stats["retries"] == 0
    assert why in (stats["last_error"] or "")
    assert any("[rejected]" in m and why in m for _, m in watcher.messages)
    assert event_endpoint.arrived == 0


def test_a_transport_bug_is_rejected_not_retried(engines: list[Any]) -> None:
    def broken(n: int) -> TransportResponse:
        raise TypeError("a bug in a custom transport")

    clock = ManualClock()
    engine = make_engine(
        engines, clock, transport=RecordingTransport(broken, clock=clock), flush_interval=0
    )
    engine.submit([event("a")])
    assert engine.flush(10)
    stats = engine.stats()
    assert stats["dropped"] == {"rejected": 1}
    assert stats["last_error"] == "TypeError: a bug in a custom transport"


def test_the_shutdown_warning_counts_events_in_flight(
    engines: list[Any], event_endpoint: EventEndpoint, datafile: str
) -> None:
    sender = EventSender(endpoint=event_endpoint.url, max_in_flight=1, max_events_per_post=3)
    engines.append(sender)
    event_endpoint.hold()
    sender.submit(three_events(datafile))
    event_endpoint.wait_for_arrivals(1)
    watcher = LogWatcher()
    try:
        sender.submit([event("queued")])
        stats = sender.stats()
        assert (stats["in_flight"], stats["pending"]) == (3, 4)
        sender.close(0.2)
        stats = sender.stats()  # before the held POST is released
    finally:
        watcher.remove()
        event_endpoint.release()
    assert (
        logging.WARNING,
        "4 Optimizely events were not delivered at shutdown: 1 queued, 0 still being "
        "encoded at a hand-off, 3 in a POST still unconfirmed.",
    ) in watcher.messages
    assert stats["dropped"] == {"shutdown": 4}
    assert (stats["in_flight"], stats["pending"]) == (0, 0)


# -- workers: started only when POSTs are slow, no idle wake-ups ---------------------


class BlockingTransport(RecordingTransport):
    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> TransportResponse:
        response = super().post(url, body, headers)
        assert self.release.wait(10)
        return response


def test_a_second_worker_starts_only_when_posts_are_slow(engines: list[Any]) -> None:
    clock = ManualClock()
    transport = BlockingTransport()
    engine = make_engine(engines, clock, transport=transport, flush_interval=0, scale_up_after=0.5)
    try:
        engine.submit([event("a", revision="1")])
        transport.wait_for_posts(1)  # the only worker is now in a POST
        engine.submit([event("b", revision="2")])
        assert engine.stats()["workers"] == 1  # busy for 0 s: not slow yet
        clock.advance(0.5)
        engine.submit([event("c", revision="3")])
        assert engine.stats()["workers"] == 2  # busy for 0.5 s with work waiting
    finally:
        transport.release.set()
    assert engine.flush(10)


def test_fast_posts_never_start_a_second_worker(engines: list[Any]) -> None:
    clock = ManualClock()
    engine = make_engine(engines, clock, flush_interval=0, max_in_flight=4)
    for n in range(200):
        engine.submit([event(str(n), revision=str(n % 7))])
    assert engine.flush(10)
    assert engine.stats()["workers"] == 1


def test_an_idle_engine_makes_no_wake_ups(engines: list[Any]) -> None:
    clock = ManualClock()
    engine = make_engine(engines, clock, flush_interval=1.0)
    engine.submit([event("a")])
    assert engine.flush(10)
    with engine._cond:
        assert engine._cond.wait_for(lambda: engine._pool.idle == 1, 10)
    waits = list(clock.waits)
    time.sleep(0.3)  # an observation window, not synchronisation
    assert clock.waits == waits  # the idle worker waits with no timeout
    assert engine._pool.idle == 1


# -- settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"max_events_per_post": 11, "max_queue_events": 10},
        {"max_bytes_per_post": 2000, "max_queue_bytes": 1000},
        {"max_in_flight": 0},
        {"flush_interval": -1},
    ],
)
def test_inconsistent_settings_are_refused_at_construction(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        EventSender(transport=RecordingTransport(), **options)


@pytest.mark.parametrize(
    "name", ["max_queue_events", "max_queue_bytes", "max_events_per_post", "max_bytes_per_post"]
)
def test_a_bound_below_one_is_refused_by_its_name(name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} must be at least 1, not 0$"):
        EventSender(transport=RecordingTransport(), **{name: 0})


# -- a change of process ---------------------------------------------------------------


def test_a_new_pid_on_hand_off_starts_a_clean_engine(
    engines: list[Any], monkeypatch: pytest.MonkeyPatch, datafile: str
) -> None:
    engine = make_engine(engines, None, flush_interval=3600)  # real time: it lingers
    engine.submit(three_events(datafile))
    old_cond, old_generation = engine._cond, engine._pool.generation
    parent_pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: parent_pid + 1)
    engine.submit([event("child")])
    stats = engine.stats()
    assert stats["submitted"] == 1  # the parent's queue is the parent's to send
    assert stats["queue_depth"] == 1
    assert engine._cond is not old_cond
    assert engine._pool.generation == old_generation + 1
    assert all(t.is_alive() for t in engine._pool.threads)  # started in this "process"
    assert engine.flush(10)
    assert [v["visitor_id"] for v in engine.transport.visitors] == ["child"]  # type: ignore[attr-defined]


def test_a_patched_threading_lock_makes_new_locks_and_keeps_the_queue(
    engines: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading as threading_module

    engine = make_engine(engines, None, flush_interval=3600)  # real time: it lingers
    engine.submit([event("before")])
    old_cond = engine._cond
    native_lock = threading_module.Lock

    def patched_lock() -> Any:  # what gevent's monkey-patching looks like from here
        return native_lock()

    monkeypatch.setattr(threading_module, "Lock", patched_lock)
    engine.submit([event("after")])
    assert engine._cond is not old_cond
    stats = engine.stats()
    assert (stats["submitted"], stats["queue_depth"]) == (2, 2)
    engine.submit([event("again")])
    assert engine.stats()["submitted"] == 3
    assert engine.flush(10)
    visitors = [v["visitor_id"] for v in engine.transport.visitors]  # type: ignore[attr-defined]
    assert sorted(visitors) == ["after", "again", "before"]


def test_an_unchanged_process_is_never_reinitialised(engines: list[Any]) -> None:
    clock = ManualClock()
    engine = make_engine(engines, clock)
    cond = engine._cond
    for _ in range(10):
        engine.submit([event("a")])
    assert engine._cond is cond


def test_datafile_fixture_builds_real_events(datafile: str) -> None:
    assert project_config(datafile).revision == "42"


# -- a uWSGI master ---------------------------------------------------------------


class FakeUwsgiModule:
    """The embedded ``uwsgi`` module as a master process sees it."""

    def __init__(self, worker_id: int) -> None:
        self._worker_id = worker_id

    def worker_id(self) -> int:
        return self._worker_id


def test_in_a_uwsgi_master_the_hand_off_delivers_and_leaves_no_thread(
    engines: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """uWSGI forks its workers from the master in C: a sender thread alive at
    that moment can hang a worker, so a master delivers at the hand-off."""
    monkeypatch.setitem(sys.modules, "uwsgi", FakeUwsgiModule(worker_id=0))
    engine = EventSender(transport=RecordingTransport(), flush_interval=30.0)
    engines.append(engine)
    before = set(threading.enumerate())
    engine.submit([event("at-import")])
    assert len(engine.transport.posts) == 1  # type: ignore[attr-defined]
    assert engine.stats()["workers"] == 0
    assert set(threading.enumerate()) - before == set()  # the worker has ended
    engine.submit([event("later")])  # a new worker starts on demand, and retires again
    assert len(engine.transport.posts) == 2  # type: ignore[attr-defined]
    assert engine.stats()["delivered_events"] == 2


def test_in_a_uwsgi_worker_the_hand_off_stays_asynchronous(
    engines: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "uwsgi", FakeUwsgiModule(worker_id=1))
    engine = EventSender(transport=RecordingTransport(), flush_interval=30.0)
    engines.append(engine)
    engine.submit([event("in-a-request")])
    assert engine.transport.posts == []  # type: ignore[attr-defined]
    assert engine.stats()["queue_depth"] == 1


# -- faults: a worker that cannot start or dies; close() within its timeout -------------


def test_a_thread_start_that_fails_once_is_retried_and_nothing_is_counted_twice(
    engines: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_start = threading.Thread.start
    failures: list[str] = []

    def start_failing_once(thread: threading.Thread) -> None:
        if not failures:
            failures.append(thread.name)
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_failing_once)
    engine = make_engine(engines, None, flush_interval=3600)
    engine.submit([event("first")])
    assert failures == ["optimizely-event-sender-1"]
    stats = engine.stats()
    assert (stats["dropped"], stats["queue_depth"], stats["workers"]) == ({}, 1, 0)
    assert engine.flush(10)  # the flush starts the worker the hand-off could not
    engine.submit([event("second")])
    assert engine.flush(10)
    stats = engine.stats()
    assert (stats["delivered_events"], stats["dropped"]) == (2, {})
    engine.close(1.0)  # never raises (it used to join a thread never started)


class ThreadKiller(BaseException):
    """Ends a thread the way a BaseException from a transport or gevent's kill does."""


def test_a_worker_that_dies_mid_post_is_replaced_at_the_next_hand_off(
    engines: list[Any],
) -> None:
    def respond(n: int) -> TransportResponse:
        if n == 0:
            raise ThreadKiller()
        return TransportResponse(200, {})

    transport = RecordingTransport(respond)
    engine = make_engine(engines, None, transport=transport, flush_interval=0)
    engine.submit([event("lost")])
    assert engine.flush(10)  # the dead worker's batch is settled, not left pending
    first_worker = transport.posts and engine.stats()
    assert first_worker and first_worker["dropped"] == {"sender_error": 1}
    engine.submit([event("after")])
    assert engine.flush(10)
    stats = engine.stats()
    assert (stats["delivered_events"], stats["dropped"]) == (1, {"sender_error": 1})
    assert len(transport.posts) == 2


class HeldEncoder(EventEncoder):
    """Encodes once released; ``started`` is set when a hand-off begins to encode."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.release = threading.Event()

    def encode(self, item: object) -> EncodedEvent:
        self.started.set()
        assert self.release.wait(10)
        return super().encode(item)


def test_close_returns_within_its_timeout_and_counts_a_post_held_and_a_hand_off_held(
    engines: list[Any], event_endpoint: EventEndpoint, datafile: str
) -> None:
    encoder = HeldEncoder()
    encoder.release.set()
    sender = EventSender(
        endpoint=event_endpoint.url, encoder=encoder, max_in_flight=1, flush_interval=0
    )
    engines.append(sender)
    event_endpoint.hold()
    sender.submit(three_events(datafile))
    event_endpoint.wait_for_arrivals(1)  # a POST of 3 is now held by the endpoint
    encoder.release.clear()
    encoder.started.clear()
    hand_off = threading.Thread(target=sender.submit, args=([event("being-encoded")],))
    hand_off.start()
    assert encoder.started.wait(10)  # a request thread is now encoding 1 event
    watcher = LogWatcher()
    closing = threading.Thread(target=sender.close, args=(1.0,))
    try:
        closing.start()
        closing.join(4.0)  # a hang guard only: close() must return within about 1 s
        assert not closing.is_alive()
        stats = sender.stats()
    finally:
        watcher.remove()
        encoder.release.set()
        event_endpoint.release()
    hand_off.join(10)
    assert stats["dropped"] == {"shutdown": 4}
    assert (stats["in_flight"], stats["pending"]) == (0, 0)
    assert (
        logging.WARNING,
        "4 Optimizely events were not delivered at shutdown: 0 queued, 1 still being "
        "encoded at a hand-off, 3 in a POST still unconfirmed.",
    ) in watcher.messages
    assert sender.flush(1) and sender.stats()["dropped"] == {"shutdown": 4}  # never twice


# -- the hand-off: bounded slices, whole hand-offs, yielding to the event loop ------------


def make_sliced_engine(engines: list[Any]) -> DeliveryEngine:
    """A real-time engine whose hand-offs take 1 ms slices of 4 events (0.3 ms per read)."""
    return make_engine(
        engines,
        None,
        flush_interval=3600,
        max_events_per_post=1000,
        slice_seconds=0.001,
        slice_clock=TickingClock(0.0003),
    )


def test_a_long_hand_off_is_encoded_in_bounded_slices_and_filed_whole(
    engines: list[Any], monkeypatch: pytest.MonkeyPatch, datafile: str
) -> None:
    # 0.3 ms per read of the slice clock, slices of 1 ms: 4 events per slice.
    engine = make_sliced_engine(engines)
    gaps: list[int] = []
    real_sleep = time.sleep

    def between_slices(seconds: float) -> None:
        gaps.append(engine.stats()["queue_depth"])  # nothing of the hand-off is filed yet
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", between_slices)
    events = three_events(datafile) * 333 + [event("last")]
    engine.submit(events)
    assert gaps == [0] * 249  # 1,000 events, 4 per slice: 250 slices, a pause between each
    assert engine.stats()["queue_depth"] == 1000
    assert engine.flush(10)
    assert engine.stats()["delivered_events"] == 1000


def test_a_page_sized_hand_off_is_encoded_in_one_go_without_reading_the_slice_clock(
    engines: list[Any], monkeypatch: pytest.MonkeyPatch, datafile: str
) -> None:
    engine = make_sliced_engine(engines)
    reads: list[float] = []
    slice_clock = engine._slice_clock
    engine._slice_clock = lambda: reads.append(slice_clock()) or reads[-1]
    pauses: list[float] = []
    monkeypatch.setattr(time, "sleep", pauses.append)
    engine.submit((three_events(datafile) * 3)[:SMALL_HANDOFF])  # a page's events
    assert (reads, pauses) == ([], [])
    engine.submit(three_events(datafile) * 3)  # one more than that: sliced
    assert (len(reads), len(pauses)) == (5 + 5 + 2, 2)  # 4 events a slice: 3 slices
    assert engine.flush(10) and engine.stats()["delivered_events"] == SMALL_HANDOFF + 9


def test_an_async_hand_off_lets_the_event_loop_run_between_slices(
    engines: list[Any], datafile: str
) -> None:
    engine = make_sliced_engine(engines)
    ticks = 0
    seen_by_encoder: list[int] = []
    real_encode = engine.encoder.encode

    def encode(item: object) -> EncodedEvent:
        seen_by_encoder.append(ticks)
        return real_encode(item)

    engine.encoder.encode = encode  # type: ignore[method-assign]

    async def other_request() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def main() -> None:
        task = asyncio.create_task(other_request())
        await asyncio.sleep(0)
        await engine.asubmit(three_events(datafile) * 333 + [event("last")])
        task.cancel()

    asyncio.run(main())
    assert len(seen_by_encoder) == 1000
    # The other task ran between the 250 slices, and never inside one.
    assert seen_by_encoder[-1] - seen_by_encoder[0] >= 249
    assert len(set(seen_by_encoder[:4])) == 1
    assert engine.stats()["queue_depth"] == 1000


def test_a_cancelled_async_hand_off_still_files_every_event(
    engines: list[Any], datafile: str
) -> None:
    engine = make_sliced_engine(engines)

    async def main() -> None:
        task = asyncio.create_task(engine.asubmit(three_events(datafile) * 100))
        await asyncio.sleep(0)  # the hand-off has done its first slice
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    stats = engine.stats()
    assert (stats["queue_depth"], stats["dropped"]) == (300, {})


def test_the_io_thread_is_woken_once_per_batch_not_once_per_request(engines: list[Any]) -> None:
    engine = make_engine(engines, None, flush_interval=3600)  # real time: it lingers
    engine.submit([event("first")])
    deadline = time.monotonic() + 10
    with engine._cond:  # until the thread waits out the linger of the first event
        while engine._pool.idle != 1 and time.monotonic() < deadline:
            engine._cond.wait(0.01)  # an idle thread notifies nobody: look again
        assert engine._pool.idle == 1
    cond = engine._cond
    wake_ups: list[str] = []
    real_notify, real_notify_all = cond.notify, cond.notify_all

    def notify(n: int = 1) -> None:
        wake_ups.append("notify")
        real_notify(n)

    def notify_all() -> None:
        wake_ups.append("all")
        real_notify_all()

    cond.notify, cond.notify_all = notify, notify_all  # type: ignore[method-assign]
    for n in range(199):
        engine.submit([event(str(n))])
    assert engine.stats()["queue_depth"] == 200
    assert wake_ups == []  # 199 more hand-offs, and the lingering thread was left alone
    assert engine.flush(10)
    assert len(engine.transport.posts) == 1  # type: ignore[attr-defined]


def test_a_hand_off_that_fails_while_filing_leaves_no_reservation_behind(
    engines: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(engines, None, flush_interval=0)
    engine._queue.max_events = 2

    def broken(*args: Any) -> int:
        raise MemoryError("no room to file")

    monkeypatch.setattr(engine._queue, "add_all", broken)
    engine.submit([event("a"), event("b")])  # never raises into the request
    monkeypatch.undo()
    stats = engine.stats()
    assert (stats["dropped"], stats["pending"]) == ({"sender_error": 2}, 0)
    assert engine.flush(1)  # nothing reserved is left for a flush to wait on
    assert engine._queue.count == 0  # nor any room taken
    engine.submit([event("c"), event("d")])
    assert engine.flush(10) and engine.stats()["delivered_events"] == 2
