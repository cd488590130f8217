"""EventSender end to end: real SDK events, a real HTTP endpoint on 127.0.0.1."""

from __future__ import annotations

import gc
import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from optimizely.event.log_event import LogEvent
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from optimizely_middleware import EventSender, RequestScopedEventDispatcher, create_client
from optimizely_middleware.delivery.encoded import EncodedEvent
from optimizely_middleware.delivery.sender import default_encoder, iter_senders, on_new_sender
from tests.support.endpoint import EventEndpoint
from tests.support.events import (
    SENDER_LOGGER,
    LogWatcher,
    RecordingTransport,
    compact,
    conversion,
    free_port,
    impression,
    log_event,
    project_config,
    three_events,
)

FAST_RETRIES: dict[str, Any] = {"backoff_base": 0.01, "backoff_cap": 0.05}


def total_dropped(stats: dict[str, Any]) -> int:
    return sum(stats["dropped"].values())


@pytest.fixture
def sdk_events(datafile: str) -> list[LogEvent]:
    return three_events(datafile)


@pytest.fixture
def sender_factory() -> Iterator[Any]:
    senders: list[EventSender] = []

    def make(*args: Any, **kwargs: Any) -> EventSender:
        sender = EventSender(*args, **kwargs)
        senders.append(sender)
        return sender

    yield make
    for sender in senders:
        sender.close(timeout=2.0)


@pytest.fixture
def http_server() -> Iterator[HTTPServer]:
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    try:
        yield server
    finally:
        server.clear()
        if server.is_running():
            server.stop()


@pytest.fixture
def watch_log() -> Iterator[Any]:
    watchers: list[LogWatcher] = []

    def watch(text: str) -> LogWatcher:
        watcher = LogWatcher(text)
        watchers.append(watcher)
        return watcher

    yield watch
    for watcher in watchers:
        watcher.remove()


# -- bodies and headers --------------------------------------------------------


def test_a_requests_events_leave_in_one_post_equal_to_the_sdk_batch(
    datafile: str, event_endpoint: EventEndpoint, sender_factory: Any
) -> None:
    config = project_config(datafile)
    user_events = [
        impression(config, "user-1"),
        conversion(config, "user-1"),
        impression(config, "user-2", "control"),
        conversion(config, "user-2", revenue=7),
    ]
    sender = sender_factory(endpoint=event_endpoint.url)
    sender.submit([log_event(e) for e in user_events])
    assert sender.flush(10)
    (post,) = event_endpoint.posts
    expected = log_event(user_events).params
    assert post.json == expected
    assert post.body == compact(expected)
    assert post.path == "/v1/events"
    assert post.headers["Content-Type"] == "application/json"
    stats = sender.stats()
    assert (stats["submitted"], stats["delivered_events"], stats["delivered_posts"]) == (4, 4, 1)


def test_single_event_body_and_headers_are_exact(
    sdk_events: list[LogEvent], event_endpoint: EventEndpoint, sender_factory: Any
) -> None:
    event = sdk_events[0]
    traced = LogEvent(event.url, event.params, "POST", {**event.headers, "X-Trace": "abc"})
    sender = sender_factory(endpoint=event_endpoint.url)
    sender.submit([traced])
    assert sender.flush(10)
    (post,) = event_endpoint.posts
    assert post.body == json.dumps(event.params, separators=(",", ":")).encode()
    assert post.headers["Content-Type"] == "application/json"
    assert post.headers["X-Trace"] == "abc"


def test_different_revisions_are_never_merged(
    datafile: str, event_endpoint: EventEndpoint, sender_factory: Any
) -> None:
    old, new = project_config(datafile), project_config(datafile, revision="43")
    events = [
        log_event(impression(old, "a")),
        log_event(impression(new, "b")),
        log_event(conversion(old, "c")),
    ]
    sender = sender_factory(endpoint=event_endpoint.url)
    sender.submit(events)
    assert sender.flush(10)
    by_revision = {post.json["revision"]: post for post in event_endpoint.posts}
    assert len(event_endpoint.posts) == 2
    assert [v["visitor_id"] for v in by_revision["42"].visitors] == ["a", "c"]
    assert [v["visitor_id"] for v in by_revision["43"].visitors] == ["b"]
    assert by_revision["42"].json == log_event(
        [impression(old, "a"), conversion(old, "c")]
    ).params | {"visitors": by_revision["42"].visitors}


def test_different_original_urls_are_not_merged_even_with_an_endpoint_override(
    sdk_events: list[LogEvent], event_endpoint: EventEndpoint, sender_factory: Any
) -> None:
    us = sdk_events[0]
    eu = LogEvent("https://eu.logx.optimizely.com/v1/events", sdk_events[1].params, "POST")
    sender = sender_factory(endpoint=event_endpoint.url)
    sender.submit([us, eu])
    assert sender.flush(10)
    assert sorted(len(post.visitors) for post in event_endpoint.posts) == [1, 1]


def test_batches_grow_while_the_endpoint_is_busy(
    sdk_events: list[LogEvent], event_endpoint: EventEndpoint, sender_factory: Any
) -> None:
    sender = sender_factory(endpoint=event_endpoint.url, max_in_flight=1, flush_interval=0)
    event_endpoint.hold()
    sender.submit([sdk_events[0]])
    event_endpoint.wait_for_arrivals(1)
    for _ in range(30):  # 30 more requests while the only POST in flight is held
        sender.submit(sdk_events)
    event_endpoint.release()
    assert sender.flush(10)
    assert len(event_endpoint.all_visitors()) == 91
    assert len(event_endpoint.posts) == 2  # the held one, then all 90 in one POST
    assert sender.stats()["delivered_posts"] == 2


def test_caps_on_events_and_bytes_per_post(
    sdk_events: list[LogEvent], event_endpoint: EventEndpoint, sender_factory: Any
) -> None:
    sender = sender_factory(endpoint=event_endpoint.url, max_events_per_post=2)
    sender.submit(sdk_events * 3)
    assert sender.flush(10)
    assert sorted(len(p.visitors) for p in event_endpoint.posts) == [1, 2, 2, 2, 2]

    one_event = len(compact(sdk_events[0].params))
    cap = one_event + 600  # room for one more visitor at most
    small = sender_factory(endpoint=event_endpoint.url, max_bytes_per_post=cap)
    small.submit(sdk_events * 3)
    assert small.flush(10)
    later = event_endpoint.posts[5:]
    assert sum(len(p.visitors) for p in later) == 9
    assert all(len(p.body) <= cap for p in later)
    assert len(later) >= 5


def test_an_event_bigger_than_the_byte_cap_is_still_sent_alone(
    sdk_events: list[LogEvent], event_endpoint: EventEndpoint, sender_factory: Any
) -> None:
    sender = sender_factory(endpoint=event_endpoint.url, max_bytes_per_post=10)
    sender.submit(sdk_events)
    assert sender.flush(10)
    assert [len(p.visitors) for p in event_endpoint.posts] == [1, 1, 1]


def test_a_lone_event_waits_the_flush_interval_for_company_then_leaves_without_flush(
    sdk_events: list[LogEvent], event_endpoint: EventEndpoint, sender_factory: Any
) -> None:
    sender = sender_factory(endpoint=event_endpoint.url, flush_interval=0.3)
    submitted_at = time.monotonic()
    sender.submit(sdk_events[:1])
    (post,) = event_endpoint.wait_for_posts(1)
    assert len(post.visitors) == 1
    # A lower bound on the real gap: fails if the linger is removed.
    assert post.received_at - submitted_at >= 0.3


def test_flush_does_not_wait_for_a_long_flush_interval(
    sdk_events: list[LogEvent], event_endpoint: EventEndpoint, sender_factory: Any
) -> None:
    sender = sender_factory(endpoint=event_endpoint.url, flush_interval=3600)
    sender.submit(sdk_events)
    assert sender.flush(10)
    assert len(event_endpoint.all_visitors()) == 3


def test_unserialisable_event_is_a_counted_drop_and_the_rest_of_its_batch_goes(
    sdk_events: list[LogEvent],
    event_endpoint: EventEndpoint,
    sender_factory: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad_params = json.loads(json.dumps(sdk_events[1].params))
    bad_params["visitors"][0]["visitor_id"] = "secret-user"
    bad_params["visitors"][0]["attributes"] = [{"value": object()}]
    bad = LogEvent(sdk_events[1].url, bad_params, "POST", sdk_events[1].headers)
    failures: list[tuple[list[Any], str]] = []
    sender = sender_factory(
        endpoint=event_endpoint.url, on_error=lambda events, why: failures.append((events, why))
    )
    with caplog.at_level(logging.INFO, logger=SENDER_LOGGER):
        sender.submit([sdk_events[0], bad, sdk_events[2]])
        assert sender.flush(10)
    (post,) = event_endpoint.posts
    assert post.visitors == sdk_events[0].params["visitors"] + sdk_events[2].params["visitors"]
    stats = sender.stats()
    assert stats["dropped"] == {"unserializable": 1}
    assert stats["delivered_events"] == 2
    assert failures == [([bad], "unserializable")]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("cannot be encoded to JSON" in r.getMessage() for r in errors)
    assert all("secret-user" not in r.getMessage() for r in caplog.records)


class ThreadRecordingEncoder:
    """The default encoder, recording the thread of every call."""

    def __init__(self) -> None:
        self.inner = default_encoder()
        self.threads: list[str] = []

    def encode(self, item: object) -> EncodedEvent:
        self.threads.append(threading.current_thread().name)
        return self.inner.encode(item)


def test_each_hand_off_is_encoded_on_its_own_thread_and_never_on_a_sender_thread(
    sdk_events: list[LogEvent], event_endpoint: EventEndpoint, sender_factory: Any
) -> None:
    # The producer pays: a busy process can never starve its own delivery,
    # because the sender threads only do I/O.
    encoder = ThreadRecordingEncoder()
    sender = sender_factory(endpoint=event_endpoint.url, encoder=encoder, flush_interval=3600)
    request_threads = [
        threading.Thread(target=sender.submit, args=([event],), name=f"request-{n}")
        for n, event in enumerate(sdk_events)
    ]
    for thread in request_threads:
        thread.start()
    for thread in request_threads:
        thread.join(10)
    assert sorted(encoder.threads) == ["request-0", "request-1", "request-2"]
    assert sender.stats()["queue_depth"] == 3  # encoded, lingering
    assert sender.flush(10)
    assert len(encoder.threads) == 3  # nothing encoded again while sending
    assert sorted(v["visitor_id"] for v in event_endpoint.all_visitors()) == sorted(
        v["visitor_id"] for e in sdk_events for v in e.params["visitors"]
    )


def test_the_queue_holds_only_bytes(sdk_events: list[LogEvent], sender_factory: Any) -> None:
    sender = sender_factory(transport=RecordingTransport(), flush_interval=3600)
    sender.submit(sdk_events)
    items = [item for group in sender._engine._queue._groups.values() for item in group.items]
    assert len(items) == 3
    for seq, queued_at, visitors, event in items:
        assert (type(seq), type(queued_at), type(visitors), event) == (int, float, bytes, None)
    assert sender.stats()["queue_bytes"] == sum(
        len(json.dumps(e.params, separators=(",", ":"))) for e in sdk_events
    )


def test_an_unserialisable_event_is_counted_once_encoded(
    sdk_events: list[LogEvent], sender_factory: Any
) -> None:
    bad = LogEvent(sdk_events[0].url, {"visitors": [{"value": float("nan")}]}, "POST", {})
    sender = sender_factory(endpoint="http://127.0.0.1:9/v1/events")
    sender.submit([bad])
    assert sender.flush(10)
    assert sender.stats()["dropped"] == {"unserializable": 1}
    assert sender.stats()["queue_depth"] == 0


def test_unmergeable_events_each_go_alone_even_after_the_sdk_objects_are_freed(
    sdk_events: list[LogEvent], event_endpoint: EventEndpoint, sender_factory: Any
) -> None:
    # The sender lets each event go once serialised, so a later event can reuse
    # a freed object's id: that must never make two unmergeable events share a POST.
    sender = sender_factory(endpoint=event_endpoint.url, flush_interval=3600)
    for n in range(20):
        sender.submit([LogEvent(sdk_events[0].url, {"n": n}, "POST", {})])
    assert sender.flush(10)
    assert sorted(post.json["n"] for post in event_endpoint.posts) == list(range(20))


def test_encoded_events_are_left_alone_by_the_garbage_collector_unless_on_error_needs_them(
    sdk_events: list[LogEvent], sender_factory: Any
) -> None:
    # Thousands of tracked objects waiting in the queue would reach the oldest
    # generation, whose collections pause every thread for tens of milliseconds.
    plain = sender_factory(transport=RecordingTransport(), flush_interval=3600)
    plain.submit(sdk_events * 40)  # enough to be encoded before the linger ends
    queued = wait_encoded(plain, 120)
    gc.collect()
    assert not any(gc.is_tracked(item) for item in queued)
    reporting = sender_factory(
        transport=RecordingTransport(), flush_interval=3600, on_error=lambda events, why: None
    )
    reporting.submit(sdk_events * 40)
    kept = [item[-1] for item in wait_encoded(reporting, 120)]
    assert kept == sdk_events * 40


def wait_encoded(sender: EventSender, n: int) -> list[Any]:
    engine = sender._engine

    def filed() -> bool:
        return bool(engine._queue.nbytes) and not engine._intake.pending

    with engine._cond:
        assert engine._cond.wait_for(filed, 10)
        groups = engine._queue._groups.values()
        items = [item for group in groups for item in group.items]
    assert len(items) == n
    return items


# -- retries -----------------------------------------------------------------------


def test_500_then_200_delivers_once(
    sdk_events: list[LogEvent], http_server: HTTPServer, sender_factory: Any
) -> None:
    http_server.expect_ordered_request("/v1/events", method="POST").respond_with_data(
        "", status=500
    )
    http_server.expect_ordered_request("/v1/events", method="POST").respond_with_data(
        "", status=200
    )
    sender = sender_factory(endpoint=http_server.url_for("/v1/events"), **FAST_RETRIES)
    sender.submit(sdk_events)
    assert sender.flush(10)
    http_server.check_assertions()
    bodies = [request.get_data() for request, _ in http_server.log]
    assert len(bodies) == 2
    assert bodies[0] == bodies[1]
    stats = sender.stats()
    assert (stats["delivered_events"], stats["delivered_posts"], stats["retries"]) == (3, 1, 1)
    assert stats["dropped"] == {}


def test_429_with_retry_after_waits_as_told(
    sdk_events: list[LogEvent], http_server: HTTPServer, sender_factory: Any
) -> None:
    arrivals: list[float] = []

    def answer(request: Request) -> Response:
        arrivals.append(time.monotonic())
        if len(arrivals) == 1:
            return Response(status=429, headers={"Retry-After": "1"})
        return Response(status=200)

    http_server.expect_request("/v1/events", method="POST").respond_with_handler(answer)
    # With backoff_base=0 a retry would be immediate unless Retry-After is honoured.
    sender = sender_factory(endpoint=http_server.url_for("/v1/events"), backoff_base=0)
    sender.submit(sdk_events)
    assert sender.flush(10)
    assert len(arrivals) == 2
    assert arrivals[1] - arrivals[0] >= 1.0  # fails if the wait becomes wait(0)
    stats = sender.stats()
    assert (stats["delivered_events"], stats["retries"]) == (3, 1)


def test_connection_refused_then_server_up_delivers(
    sdk_events: list[LogEvent], sender_factory: Any, watch_log: Any
) -> None:
    port = free_port()
    retried = watch_log("retry 1 of")
    sender = sender_factory(
        endpoint=f"http://127.0.0.1:{port}/v1/events",
        max_retries=200,
        backoff_base=0.02,
        backoff_cap=0.1,
    )
    sender.submit(sdk_events)
    assert retried.seen.wait(10)
    server = HTTPServer(host="127.0.0.1", port=port)
    server.expect_request("/v1/events", method="POST").respond_with_data("")
    server.start()
    try:
        assert sender.flush(20)
        assert len(server.log) == 1
        assert len(json.loads(server.log[0][0].get_data())["visitors"]) == 3
    finally:
        server.stop()
    stats = sender.stats()
    assert stats["delivered_events"] == 3
    assert stats["retries"] >= 1
    assert "ConnectionError" in (stats["last_error"] or "")


def test_400_drops_at_once_without_retry(
    sdk_events: list[LogEvent],
    event_endpoint: EventEndpoint,
    sender_factory: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    event_endpoint.status = 400
    failures: list[tuple[int, str]] = []
    sender = sender_factory(
        endpoint=event_endpoint.url,
        on_error=lambda events, why: failures.append((len(events), why)),
        **FAST_RETRIES,
    )
    with caplog.at_level(logging.ERROR, logger=SENDER_LOGGER):
        sender.submit(sdk_events)
        assert sender.flush(10)
    assert len(event_endpoint.rejected) == 1
    stats = sender.stats()
    assert stats["dropped"] == {"rejected": 3}
    assert stats["retries"] == 0
    assert stats["last_error"] == f"HTTP 400 from {event_endpoint.url}"
    assert failures == [(3, "rejected")]
    assert any("HTTP 400" in r.getMessage() for r in caplog.records)


def test_retries_exhausted_are_dropped_counted_and_reported(
    sdk_events: list[LogEvent], event_endpoint: EventEndpoint, sender_factory: Any
) -> None:
    event_endpoint.status = 503
    failures: list[tuple[int, str]] = []
    sender = sender_factory(
        endpoint=event_endpoint.url,
        max_retries=2,
        on_error=lambda events, why: failures.append((len(events), why)),
        **FAST_RETRIES,
    )
    sender.submit(sdk_events)
    assert sender.flush(10)
    assert len(event_endpoint.rejected) == 3  # first try + 2 retries
    stats = sender.stats()
    assert stats["dropped"] == {"retries_exhausted": 3}
    assert stats["retries"] == 2
    assert failures == [(3, "retries_exhausted")]


def test_a_raising_on_error_callback_is_contained(
    sdk_events: list[LogEvent], event_endpoint: EventEndpoint, sender_factory: Any
) -> None:
    event_endpoint.status = 404

    def broken(events: list[Any], reason: str) -> None:
        raise RuntimeError("callback bug")

    sender = sender_factory(endpoint=event_endpoint.url, on_error=broken)
    sender.submit(sdk_events)
    assert sender.flush(10)
    sender.submit(sdk_events)
    assert sender.flush(10)
    assert sender.stats()["dropped"] == {"rejected": 6}


# -- bounds, flush, close ------------------------------------------------------------


def test_endpoint_down_keeps_the_queue_bounded_and_counts_every_drop(
    sdk_events: list[LogEvent], sender_factory: Any
) -> None:
    sender = sender_factory(
        endpoint=f"http://127.0.0.1:{free_port()}/v1/events",
        max_queue_events=50,
        max_in_flight=2,
        max_events_per_post=10,
        backoff_base=5.0,
        backoff_cap=5.0,
    )
    for _ in range(100):
        sender.submit(sdk_events)
        assert sender.stats()["queue_depth"] <= 50
    stats = sender.stats()
    # Accepted at most: the queue's 50, plus what the workers took off it
    # meanwhile (one encoding slice and two POSTs of 10 events each).
    assert stats["dropped"]["queue_full"] >= 300 - 50 - 3 * 10
    threads = list(sender._engine._pool.threads)
    sender.close(timeout=0.5)
    # Batches waiting out their backoff are counted by close() itself, without
    # a grace period; a POST still on the network is reported as in flight.
    stats = sender.stats()
    assert stats["delivered_events"] == 0
    assert total_dropped(stats) + stats["in_flight"] == stats["submitted"] == 300
    assert stats["queue_depth"] == 0
    retries_at_close = stats["retries"]
    for thread in threads:
        thread.join(10)  # a refused connection ends fast; then the worker exits
    assert threads and not any(t.is_alive() for t in threads)
    stats = sender.stats()
    assert total_dropped(stats) == 300
    assert set(stats["dropped"]) <= {"queue_full", "shutdown"}
    assert stats["retries"] == retries_at_close  # none is counted once close() gave up


def test_byte_cap_bounds_the_serialised_queue(
    sdk_events: list[LogEvent], event_endpoint: EventEndpoint, sender_factory: Any
) -> None:
    event_size = len(compact(sdk_events[0].params))
    sender = sender_factory(
        endpoint=event_endpoint.url,
        max_in_flight=1,
        max_events_per_post=1,
        max_bytes_per_post=event_size,
        max_queue_bytes=event_size * 5,
    )
    event_endpoint.hold()
    sender.submit(sdk_events[:1])
    event_endpoint.wait_for_arrivals(1)
    for _ in range(10):
        sender.submit(sdk_events)
    assert sender.stats()["queue_bytes"] <= event_size * 5
    event_endpoint.release()
    assert sender.flush(20)
    stats = sender.stats()
    assert stats["dropped"]["queue_bytes"] > 0
    assert stats["delivered_events"] + total_dropped(stats) == stats["submitted"] == 31
    assert len(event_endpoint.all_visitors()) == stats["delivered_events"]


def test_flush_returns_false_on_timeout_and_true_when_done(
    sdk_events: list[LogEvent], event_endpoint: EventEndpoint, sender_factory: Any
) -> None:
    sender = sender_factory(endpoint=event_endpoint.url)
    assert sender.flush(0)  # nothing submitted yet
    event_endpoint.hold()
    sender.submit(sdk_events)
    event_endpoint.wait_for_arrivals(1)
    assert sender.flush(0.2) is False
    assert sender.stats()["in_flight"] == 3
    event_endpoint.release()
    assert sender.flush(10) is True
    assert sender.stats()["in_flight"] == 0


def test_close_flushes_then_later_submits_are_counted_drops(
    sdk_events: list[LogEvent], event_endpoint: EventEndpoint
) -> None:
    sender = EventSender(endpoint=event_endpoint.url, flush_interval=3600)
    sender.submit(sdk_events)
    threads = list(sender._engine._pool.threads)
    sender.close(timeout=10)
    assert len(event_endpoint.all_visitors()) == 3
    sender.close(timeout=10)  # twice is harmless
    sender.submit(sdk_events)
    stats = sender.stats()
    assert stats["dropped"] == {"closed": 3}
    assert stats["submitted"] == 6
    assert sender.flush(1)
    assert len(threads) == 1 and stats["workers"] == 0
    assert not any(t.is_alive() for t in threads)  # close() joined them


def test_submit_never_raises_into_the_caller(sender_factory: Any) -> None:
    sender = sender_factory(transport=RecordingTransport())
    sender.submit(None)  # type: ignore[arg-type]
    sender.submit([object()])
    assert sender.flush(10)
    assert sender.stats()["dropped"] == {"unserializable": 1}


def test_drop_logging_is_rate_limited_and_never_under_reports(
    sdk_events: list[LogEvent], sender_factory: Any
) -> None:
    sender = sender_factory(transport=RecordingTransport())
    sender.close()
    watcher = LogWatcher()
    try:
        for _ in range(100):
            sender.submit(sdk_events)
        lines = [m for _, m in watcher.messages if "[closed]" in m]
        assert len(lines) == 1
        sender.flush(1)  # the end of a flush logs what was held back
        lines = [m for _, m in watcher.messages if "[closed]" in m]
    finally:
        watcher.remove()
    assert sender.stats()["dropped"] == {"closed": 300}
    assert lines == [
        "Dropped 3 Optimizely event(s) [closed]: the sender is closed",
        "Dropped 297 more Optimizely event(s) [closed]: the sender is closed",
    ]


def test_close_logs_held_back_drops_and_a_final_line_with_totals(
    sdk_events: list[LogEvent], event_endpoint: EventEndpoint, sender_factory: Any
) -> None:
    event_endpoint.status = 400
    sender = sender_factory(endpoint=event_endpoint.url, max_events_per_post=1)
    watcher = LogWatcher()
    try:
        sender.submit(sdk_events)
        sender.close(10)
    finally:
        watcher.remove()
    messages = [m for _, m in watcher.messages]
    rejected = [int(m.split()[1]) for m in messages if "[rejected]" in m]
    assert sum(rejected) == 3
    assert messages[-1] == (
        "Optimizely event sender closed: 0 events delivered in 0 POSTs, 3 dropped (rejected: 3)."
    )


def test_a_transport_is_swapped_on_the_instance(
    sdk_events: list[LogEvent], event_endpoint: EventEndpoint, sender_factory: Any
) -> None:
    sender = sender_factory(endpoint=event_endpoint.url)
    other = sender_factory(endpoint=event_endpoint.url)
    capture = RecordingTransport()
    own = sender.transport
    sender.transport = capture
    assert sender.transport is capture
    sender.submit(sdk_events[:1])
    other.submit(sdk_events[1:2])
    assert sender.flush(10)
    assert other.flush(10)
    assert len(capture.posts) == 1  # only the sender it was swapped on
    assert len(event_endpoint.posts) == 1
    sender.transport = own
    sender.submit(sdk_events[2:])
    assert sender.flush(10)
    assert len(event_endpoint.posts) == 2
    assert len(capture.posts) == 1


def test_new_senders_are_announced_to_subscribers() -> None:
    seen: list[EventSender] = []
    unsubscribe = on_new_sender(seen.append)
    try:
        sender = EventSender(transport=RecordingTransport())
    finally:
        unsubscribe()
    later = EventSender(transport=RecordingTransport())
    assert seen == [sender]
    assert later not in seen
    sender.close(1)
    later.close(1)


def test_a_custom_transport_gets_url_body_and_headers(
    sdk_events: list[LogEvent], sender_factory: Any
) -> None:
    transport = RecordingTransport()
    sender = sender_factory(transport=transport)
    sender.submit(sdk_events[:1])
    assert sender.flush(10)
    ((url, body, headers),) = transport.posts
    assert url == "https://logx.optimizely.com/v1/events"
    assert body == compact(sdk_events[0].params)
    assert headers == {"Content-Type": "application/json"}


def test_iter_senders_lists_live_senders_only() -> None:
    sender = EventSender(transport=RecordingTransport())
    assert sender in iter_senders()
    sender_id = id(sender)
    del sender
    gc.collect()
    assert sender_id not in {id(s) for s in iter_senders()}


def test_dispatcher_hands_a_requests_events_over_in_one_post(
    datafile: str, event_endpoint: EventEndpoint
) -> None:
    assert isinstance(RequestScopedEventDispatcher().sender, EventSender)
    dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=event_endpoint.url))
    client = create_client(dispatcher, datafile=datafile)
    try:
        with dispatcher.request_scope():
            user = client.create_user_context("user-9", {"plan": "pro"})
            user.decide("new_checkout")
            user.track_event("purchase", {"revenue": 100})
        assert dispatcher.flush(10)
    finally:
        client.close()
        dispatcher.close(5)
    (post,) = event_endpoint.posts
    assert [v["visitor_id"] for v in post.visitors] == ["user-9", "user-9"]
    stats = dispatcher.stats()
    assert (stats["handed_over"], stats["delivered_events"], stats["delivered_posts"]) == (2, 2, 1)


def test_atexit_delivers_what_is_queued(
    sdk_events: list[LogEvent], event_endpoint: EventEndpoint, tmp_path: Path
) -> None:
    events_file = tmp_path / "events.json"
    events_file.write_text(json.dumps([e.params for e in sdk_events]))
    script = textwrap.dedent(
        f"""
        import json
        from optimizely.event.log_event import LogEvent
        from optimizely_middleware import EventSender

        sender = EventSender(endpoint={event_endpoint.url!r}, flush_interval=3600)
        params = json.load(open({str(events_file)!r}))
        sender.submit([LogEvent("https://logx.optimizely.com/v1/events", p) for p in params])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    (post,) = event_endpoint.wait_for_posts(1)
    assert post.visitors == [v for e in sdk_events for v in e.params["visitors"]]
