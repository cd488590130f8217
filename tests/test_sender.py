"""EventSender end to end: real SDK events, a real HTTP endpoint on 127.0.0.1."""

from __future__ import annotations

import gc
import json
import logging
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from optimizely.event.log_event import LogEvent
from pytest_httpserver import HTTPServer

from optimizely_middleware import EventSender, RequestScopedEventDispatcher, create_client
from optimizely_middleware.sender import iter_senders, set_transport_override
from optimizely_middleware.transport import TransportResponse
from tests.event_endpoint import EventEndpoint
from tests.test_batching import compact, conversion, impression, log_event, project_config

FAST_RETRIES: dict[str, Any] = {"backoff_base": 0.01, "backoff_cap": 0.05}
SENDER_LOGGER = "optimizely_middleware.sender"


def total_dropped(stats: dict[str, Any]) -> int:
    return sum(stats["dropped"].values())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LogWatcher(logging.Handler):
    """Sets ``seen`` when a record containing ``text`` is logged by the sender."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


@pytest.fixture
def sdk_events(datafile: str) -> list[LogEvent]:
    config = project_config(datafile)
    return [
        log_event(impression(config, "user-1")),
        log_event(conversion(config, "user-1")),
        log_event(impression(config, "user-2", "control")),
    ]


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
    logger = logging.getLogger(SENDER_LOGGER)

    def watch(text: str) -> LogWatcher:
        watcher = LogWatcher(text)
        logger.addHandler(watcher)
        watchers.append(watcher)
        return watcher

    yield watch
    for watcher in watchers:
        logger.removeHandler(watcher)


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


def test_a_lone_event_leaves_after_the_flush_interval_without_flush(
    sdk_events: list[LogEvent], event_endpoint: EventEndpoint, sender_factory: Any
) -> None:
    sender = sender_factory(endpoint=event_endpoint.url, flush_interval=0.05)
    sender.submit(sdk_events[:1])
    (post,) = event_endpoint.wait_for_posts(1)
    assert len(post.visitors) == 1


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
    assert any("serialised to JSON" in r.getMessage() for r in errors)
    assert all("secret-user" not in r.getMessage() for r in caplog.records)


class _ThreadRecordingDict(dict):  # type: ignore[type-arg]
    """A visitor whose serialisation records the thread that did it."""

    threads: ClassVar[list[str]] = []

    def items(self) -> Any:
        type(self).threads.append(threading.current_thread().name)
        return super().items()


def test_events_are_serialised_by_the_submitting_thread_not_a_worker(
    sdk_events: list[LogEvent], event_endpoint: EventEndpoint, sender_factory: Any
) -> None:
    # A worker serialising thousands of events holds the GIL in long stretches
    # and stalls request threads and the event loop; the submitting thread
    # (after its response) pays a few microseconds per event instead.
    params = json.loads(json.dumps(sdk_events[0].params))
    params["visitors"][0] = _ThreadRecordingDict(params["visitors"][0])
    _ThreadRecordingDict.threads = []
    sender = sender_factory(endpoint=event_endpoint.url)
    sender.submit([LogEvent(sdk_events[0].url, params, "POST", sdk_events[0].headers)])
    assert _ThreadRecordingDict.threads == [threading.current_thread().name]
    assert sender.flush(10)
    assert _ThreadRecordingDict.threads == [threading.current_thread().name]
    assert event_endpoint.all_visitors() == sdk_events[0].params["visitors"]


def test_an_unserialisable_event_is_counted_before_submit_returns(
    sdk_events: list[LogEvent], sender_factory: Any
) -> None:
    bad = LogEvent(sdk_events[0].url, {"visitors": [{"value": float("nan")}]}, "POST", {})
    sender = sender_factory(endpoint="http://127.0.0.1:9/v1/events")
    sender.submit([bad])
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


def test_queued_events_are_left_alone_by_the_garbage_collector_unless_on_error_needs_them(
    sdk_events: list[LogEvent], event_endpoint: EventEndpoint, sender_factory: Any
) -> None:
    # Thousands of tracked objects waiting in the queue would reach the oldest
    # generation, whose collections pause every thread for tens of milliseconds.
    plain = sender_factory(endpoint=event_endpoint.url, flush_interval=3600)
    plain.submit(sdk_events)
    gc.collect()
    queued = [item for group in plain._groups.values() for item in group.items]
    assert len(queued) == 3
    assert not any(gc.is_tracked(item) for item in queued)
    reporting = sender_factory(
        endpoint=event_endpoint.url, flush_interval=3600, on_error=lambda events, why: None
    )
    reporting.submit(sdk_events)
    kept = [item[-1] for group in reporting._groups.values() for item in group.items]
    assert kept == sdk_events


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
    sdk_events: list[LogEvent],
    http_server: HTTPServer,
    sender_factory: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    http_server.expect_ordered_request("/v1/events", method="POST").respond_with_data(
        "", status=429, headers={"Retry-After": "1"}
    )
    http_server.expect_ordered_request("/v1/events", method="POST").respond_with_data("")
    # With backoff_base=0 a retry would be immediate unless Retry-After is honoured.
    sender = sender_factory(endpoint=http_server.url_for("/v1/events"), backoff_base=0)
    with caplog.at_level(logging.WARNING, logger=SENDER_LOGGER):
        sender.submit(sdk_events)
        assert sender.flush(10)
    http_server.check_assertions()
    assert len(http_server.log) == 2
    assert any(
        "HTTP 429" in r.getMessage() and "in 1.00s" in r.getMessage() for r in caplog.records
    )
    assert sender.stats()["delivered_events"] == 3


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
    assert stats["dropped"]["queue_full"] >= 300 - 50 - 2 * 10
    sender.close(timeout=0.5)
    stats = sender.stats()
    assert stats["delivered_events"] == 0
    assert total_dropped(stats) == stats["submitted"] == 300
    assert stats["queue_depth"] == 0
    assert set(stats["dropped"]) <= {"queue_full", "shutdown"}


def test_byte_cap_bounds_the_serialised_queue(
    sdk_events: list[LogEvent], event_endpoint: EventEndpoint, sender_factory: Any
) -> None:
    event_size = len(compact(sdk_events[0].params))
    sender = sender_factory(
        endpoint=event_endpoint.url,
        max_in_flight=1,
        max_events_per_post=1,
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
    sender.close(timeout=10)
    assert len(event_endpoint.all_visitors()) == 3
    sender.close(timeout=10)  # twice is harmless
    sender.submit(sdk_events)
    stats = sender.stats()
    assert stats["dropped"] == {"closed": 3}
    assert stats["submitted"] == 6
    assert sender.flush(1)
    assert stats["workers"] >= 1
    assert all(not t.is_alive() for t in sender._threads)


def test_submit_never_raises_into_the_caller(sender_factory: Any) -> None:
    sender = sender_factory(transport=RecordingTransport())
    sender.submit(None)  # type: ignore[arg-type]
    sender.submit([object()])  # type: ignore[list-item]
    assert sender.flush(10)
    assert sender.stats()["dropped"] == {"unserializable": 1}


def test_drop_logging_is_rate_limited(
    sdk_events: list[LogEvent], sender_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sender = sender_factory(transport=RecordingTransport())
    sender.close()
    with caplog.at_level(logging.ERROR, logger=SENDER_LOGGER):
        for _ in range(100):
            sender.submit(sdk_events)
    assert sender.stats()["dropped"] == {"closed": 300}
    assert len([r for r in caplog.records if "closed" in r.getMessage()]) == 1


# -- seams: custom transport, override, registry, dispatcher ----------------------


class RecordingTransport:
    def __init__(self) -> None:
        self.posts: list[tuple[str, bytes, dict[str, str]]] = []
        self.lock = threading.Lock()

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> TransportResponse:
        with self.lock:
            self.posts.append((url, body, headers))
        return TransportResponse(200, {})

    def close(self) -> None:
        pass


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


def test_transport_override_applies_to_senders_created_before_and_after(
    sdk_events: list[LogEvent], event_endpoint: EventEndpoint, sender_factory: Any
) -> None:
    before = sender_factory(endpoint=event_endpoint.url)
    capture = RecordingTransport()
    set_transport_override(capture)
    try:
        after = sender_factory(endpoint=event_endpoint.url)
        before.submit(sdk_events[:1])
        after.submit(sdk_events[1:2])
        assert before.flush(10)
        assert after.flush(10)
    finally:
        set_transport_override(None)
    assert len(capture.posts) == 2
    assert event_endpoint.posts == []
    before.submit(sdk_events[2:])
    assert before.flush(10)
    assert len(event_endpoint.posts) == 1


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
