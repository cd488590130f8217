from __future__ import annotations

import contextvars
import copy
import functools
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import pytest
from optimizely import optimizely
from optimizely.event.event_processor import ForwardingEventProcessor
from optimizely.event_builder import Event
from optimizely.helpers import enums
from optimizely.notification_center import NotificationCenter

from optimizely_middleware import (
    EventOutsideScopeError,
    EventSender,
    RequestScopedEventDispatcher,
    WiringWarning,
    create_client,
)
from optimizely_middleware.delivery.encoding import EventEncoder, log_event_of
from optimizely_middleware.dispatcher import (
    add_request_end_listener,
    remove_request_end_listener,
)
from tests.support.endpoint import EventEndpoint
from tests.support.fakes import RecordingSink


class BuiltEvents:
    """Snapshots of what the SDK built, taken by a LOG_EVENT listener before dispatch."""

    def __init__(self, client: optimizely.Optimizely) -> None:
        self.bodies: list[str] = []
        client.notification_center.add_notification_listener(
            enums.NotificationTypes.LOG_EVENT, self._on_log_event
        )

    def _on_log_event(self, event: Event) -> None:
        self.bodies.append(json.dumps(copy.deepcopy(event.params), sort_keys=True))


def params_of(item: object) -> Any:
    """The SDK's payload of a handed-over item (a LogEvent or a PendingUserEvent)."""
    return log_event_of(item).params


def forwarding_client(
    dispatcher: RequestScopedEventDispatcher, datafile: str
) -> optimizely.Optimizely:
    """A client wired to the LogEvent path, as people who wire the SDK themselves do."""
    center = NotificationCenter()
    return optimizely.Optimizely(
        datafile,
        event_dispatcher=dispatcher,
        event_processor=ForwardingEventProcessor(dispatcher, notification_center=center),
        notification_center=center,
    )


def fire_three_events(client: optimizely.Optimizely, user_id: str = "user-1") -> None:
    client.activate("headline_test", user_id)
    client.create_user_context(user_id, {"plan": "pro"}).decide("new_checkout")
    client.track("purchase", user_id, None, {"revenue": 1299, "value": 3.5})


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
def dispatcher(sink: RecordingSink) -> RequestScopedEventDispatcher:
    return RequestScopedEventDispatcher(sink)


@pytest.fixture(params=["processor", "forwarding"])
def client(
    request: pytest.FixtureRequest, dispatcher: RequestScopedEventDispatcher, datafile: str
) -> optimizely.Optimizely:
    """Both SDK-facing paths: create_client's processor and the LogEvent path."""
    if request.param == "processor":
        return create_client(dispatcher, datafile=datafile)
    return forwarding_client(dispatcher, datafile)


def test_events_in_a_scope_are_held_until_it_closes_then_handed_over_once(
    sink: RecordingSink, dispatcher: RequestScopedEventDispatcher, client: optimizely.Optimizely
) -> None:
    built = BuiltEvents(client)
    with dispatcher.request_scope() as scope:
        fire_three_events(client)
        assert sink.batches == []
        assert len(scope) == 3
    assert len(sink.batches) == 1
    handed = sink.batches[0]
    encoder = EventEncoder()
    for item in handed:
        encoder.encode(item)  # the sender does this: LOG_EVENT listeners of user events fire
    assert [json.dumps(params_of(e), sort_keys=True) for e in handed] == built.bodies
    stats = dispatcher.stats()
    assert stats["requests"] == 1
    assert stats["collected"] == 3
    assert stats["handed_over"] == 3


def test_params_arrive_at_a_real_endpoint_exactly_as_built(
    datafile: str, event_endpoint: EventEndpoint
) -> None:
    dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=event_endpoint.url))
    client = create_client(dispatcher, datafile=datafile)
    built = BuiltEvents(client)
    with dispatcher.request_scope():
        fire_three_events(client)
    assert dispatcher.flush(10)
    dispatcher.close(10)
    received = [v for post in event_endpoint.posts for v in post.visitors]
    expected = [v for body in built.bodies for v in json.loads(body)["visitors"]]
    assert received == expected
    for post in event_endpoint.posts:
        assert post.headers["Content-Type"] == "application/json"
        envelope = {k: v for k, v in post.json.items() if k != "visitors"}
        first_built = {k: v for k, v in json.loads(built.bodies[0]).items() if k != "visitors"}
        assert envelope == first_built


def test_events_outside_a_scope_are_handed_over_at_once(
    sink: RecordingSink, dispatcher: RequestScopedEventDispatcher, client: optimizely.Optimizely
) -> None:
    client.track("purchase", "user-2")
    assert len(sink.batches) == 1
    assert params_of(sink.batches[0][0])["visitors"][0]["visitor_id"] == "user-2"
    assert dispatcher.stats()["outside_scope_sent"] == 1


def test_outside_scope_drop_policy_counts_and_logs_once(
    sink: RecordingSink, client: optimizely.Optimizely, datafile: str, caplog: Any
) -> None:
    dispatcher = RequestScopedEventDispatcher(sink, outside_scope="drop")
    client = create_client(dispatcher, datafile=datafile)
    with caplog.at_level(logging.WARNING, logger="optimizely_middleware"):
        client.track("purchase", "user-3")
        client.track("purchase", "user-3")
    assert sink.batches == []
    assert dispatcher.stats()["dropped"] == {"outside_scope": 2}
    messages = [r.getMessage() for r in caplog.records if "outside any request" in r.getMessage()]
    assert len(messages) == 1
    assert "user-3" not in caplog.text


def test_outside_scope_raise_policy_reaches_the_caller_of_the_sdk(
    sink: RecordingSink, datafile: str, caplog: Any
) -> None:
    dispatcher = RequestScopedEventDispatcher(sink, outside_scope="raise")
    client = create_client(dispatcher, datafile=datafile)
    with pytest.raises(EventOutsideScopeError):
        dispatcher.dispatch_event(Event("https://example.invalid", {}))
    user = client.create_user_context("user-4", {"plan": "secret-plan"})
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(EventOutsideScopeError):
            user.decide("new_checkout")
        with pytest.raises(EventOutsideScopeError):
            user.track_event("purchase", {"revenue": 1})
        with pytest.raises(EventOutsideScopeError):
            client.activate("headline_test", "user-4")
        with pytest.raises(EventOutsideScopeError):
            client.is_feature_enabled("new_checkout", "user-4")
    assert sink.batches == []
    assert dispatcher.stats()["dropped"] == {"outside_scope_raised": 5}
    assert "secret-plan" not in caplog.text


def test_outside_scope_raise_through_a_forwarding_processor_is_counted_not_logged(
    sink: RecordingSink, datafile: str, caplog: Any
) -> None:
    dispatcher = RequestScopedEventDispatcher(sink, outside_scope="raise")
    client = forwarding_client(dispatcher, datafile)
    # The SDK's ForwardingEventProcessor would catch the error and log the whole
    # event at ERROR: the dispatcher counts it and logs one line without the payload.
    with caplog.at_level(logging.DEBUG), pytest.warns(WiringWarning, match="create_client"):
        client.track("purchase", "user-4", {"plan": "secret-plan"})
        client.track("purchase", "user-4", {"plan": "secret-plan"})
    assert sink.batches == []
    assert dispatcher.stats()["dropped"] == {"outside_scope_raised": 2}
    # (The SDK's own NoOpLogger logs the user id at INFO: that is its choice.)
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [line for line in loud if "secret-plan" in line or "user-4" in line]
    assert sum("outside any request scope" in line for line in loud) == 2


def test_nested_scopes_hand_over_once(
    sink: RecordingSink, dispatcher: RequestScopedEventDispatcher, client: optimizely.Optimizely
) -> None:
    with dispatcher.request_scope() as outer:
        client.track("purchase", "user-5")
        with dispatcher.request_scope() as inner:
            assert inner is outer
            client.track("add_to_cart", "user-5")
        assert sink.batches == []
    assert len(sink.batches) == 1
    assert len(sink.batches[0]) == 2
    assert dispatcher.stats()["requests"] == 1


@pytest.mark.anyio
async def test_async_scope_collects_across_awaits(
    sink: RecordingSink, dispatcher: RequestScopedEventDispatcher, client: optimizely.Optimizely
) -> None:
    async with dispatcher.request_scope():
        client.track("purchase", "user-6")
        await anyio.sleep(0)
        client.track("add_to_cart", "user-6")
        assert sink.batches == []
    assert [len(b) for b in sink.batches] == [2]


def test_concurrent_requests_keep_their_own_events(
    sink: RecordingSink, dispatcher: RequestScopedEventDispatcher, client: optimizely.Optimizely
) -> None:
    barrier = threading.Barrier(4)

    def request(user_id: str) -> None:
        with dispatcher.request_scope():
            barrier.wait()
            client.track("purchase", user_id)
            client.track("add_to_cart", user_id)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(request, ["a", "b", "c", "d"]))
    assert len(sink.batches) == 4
    for batch in sink.batches:
        users = {params_of(e)["visitors"][0]["visitor_id"] for e in batch}
        assert len(batch) == 2 and len(users) == 1


def test_thread_pool_copy_of_the_context_lands_in_the_request(
    sink: RecordingSink, dispatcher: RequestScopedEventDispatcher, client: optimizely.Optimizely
) -> None:
    with dispatcher.request_scope(), ThreadPoolExecutor(1) as pool:
        context = contextvars.copy_context()
        pool.submit(context.run, client.track, "purchase", "user-7").result()
        assert sink.batches == []
    assert [len(b) for b in sink.batches] == [1]


def test_anyio_to_thread_lands_in_the_request(
    sink: RecordingSink, dispatcher: RequestScopedEventDispatcher, client: optimizely.Optimizely
) -> None:
    async def handler() -> None:
        async with dispatcher.request_scope():
            await anyio.to_thread.run_sync(client.track, "purchase", "user-8")
            assert sink.batches == []

    anyio.run(handler)
    assert [len(b) for b in sink.batches] == [1]


def test_failed_request_events_are_kept_by_default(
    sink: RecordingSink, dispatcher: RequestScopedEventDispatcher, client: optimizely.Optimizely
) -> None:
    with pytest.raises(ZeroDivisionError), dispatcher.request_scope():
        client.track("purchase", "user-9")
        raise ZeroDivisionError
    assert [len(b) for b in sink.batches] == [1]
    assert dispatcher.stats()["failed_requests"] == 1


def test_failed_request_events_can_be_discarded(sink: RecordingSink, datafile: str) -> None:
    dispatcher = RequestScopedEventDispatcher(sink, failed_requests="discard")
    client = create_client(dispatcher, datafile=datafile)
    with pytest.raises(ZeroDivisionError), dispatcher.request_scope():
        client.track("purchase", "user-10")
        raise ZeroDivisionError
    scope = dispatcher.open_scope()
    with dispatcher.activate(scope):
        client.track("purchase", "user-10")
    dispatcher.close_scope(scope, failed=True)  # what an adapter does for a 5xx
    assert sink.batches == []
    assert dispatcher.stats()["dropped"] == {"failed_request": 2}
    assert dispatcher.stats()["handed_over"] == 0


def test_per_request_cap_drops_the_excess_and_logs_once(
    sink: RecordingSink, datafile: str, caplog: Any
) -> None:
    dispatcher = RequestScopedEventDispatcher(sink, max_events_per_request=2)
    client = create_client(dispatcher, datafile=datafile)
    with caplog.at_level(logging.WARNING, logger="optimizely_middleware"):
        with dispatcher.request_scope():
            for _ in range(5):
                client.track("purchase", "user-11")
        with dispatcher.request_scope():
            for _ in range(3):
                client.track("purchase", "user-12")
    assert [len(b) for b in sink.batches] == [2, 2]
    assert dispatcher.stats()["dropped"] == {"request_cap": 4}
    assert sum("max_events_per_request" in r.getMessage() for r in caplog.records) == 2


def test_close_scope_is_idempotent(
    sink: RecordingSink, dispatcher: RequestScopedEventDispatcher, client: optimizely.Optimizely
) -> None:
    scope = dispatcher.open_scope()
    with dispatcher.activate(scope):
        client.track("purchase", "user-13")
    dispatcher.close_scope(scope)
    dispatcher.close_scope(scope)
    assert [len(b) for b in sink.batches] == [1]
    assert dispatcher.stats()["open_scopes"] == 0


def test_event_after_its_request_closed_is_sent_not_lost(
    sink: RecordingSink, dispatcher: RequestScopedEventDispatcher, client: optimizely.Optimizely
) -> None:
    with dispatcher.request_scope():
        context = contextvars.copy_context()
    context.run(client.track, "purchase", "user-14")  # e.g. a thread that outlived the request
    assert [len(b) for b in sink.batches] == [1]


def test_a_sender_that_raises_is_a_counted_drop_not_a_crash(datafile: str, caplog: Any) -> None:
    class BrokenSink(RecordingSink):
        def submit(self, events: Any) -> None:
            raise RuntimeError("boom")

    dispatcher = RequestScopedEventDispatcher(BrokenSink())
    client = create_client(dispatcher, datafile=datafile)
    with caplog.at_level(logging.ERROR, logger="optimizely_middleware"), dispatcher.request_scope():
        client.track("purchase", "user-15")
    assert dispatcher.stats()["dropped"] == {"sender_error": 1}
    assert "user-15" not in caplog.text


@pytest.mark.parametrize("asynchronous", [False, True], ids=["close_scope", "aclose_scope"])
def test_events_a_sender_refused_are_not_counted_as_handed_over(
    datafile: str, asynchronous: bool
) -> None:
    class RefusingSink(RecordingSink):
        def submit(self, events: Any) -> None:
            if len(events) == 2:
                raise RuntimeError("boom")
            super().submit(events)

    dispatcher = RequestScopedEventDispatcher(RefusingSink())
    client = create_client(dispatcher, datafile=datafile)
    for users in (["a", "b"], ["c"]):  # refused, then taken
        scope = dispatcher.open_scope()
        with dispatcher.activate(scope):
            for user in users:
                client.track("purchase", user)
        if asynchronous:
            anyio.run(functools.partial(dispatcher.aclose_scope, scope))
        else:
            dispatcher.close_scope(scope)
    stats = dispatcher.stats()
    assert (stats["collected"], stats["handed_over"]) == (3, 1)
    assert stats["dropped"] == {"sender_error": 2}


def test_request_end_listener_sees_each_request(
    sink: RecordingSink, dispatcher: RequestScopedEventDispatcher, client: optimizely.Optimizely
) -> None:
    seen: list[tuple[int, bool]] = []

    def listener(d: RequestScopedEventDispatcher, events: list[Event], failed: bool) -> None:
        assert d is dispatcher
        seen.append((len(events), failed))

    add_request_end_listener(listener)
    try:
        with dispatcher.request_scope():
            fire_three_events(client)
    finally:
        remove_request_end_listener(listener)
    with dispatcher.request_scope():
        client.track("purchase", "user-16")
    assert seen == [(3, False)]


def test_invalid_options_are_rejected(sink: RecordingSink) -> None:
    with pytest.raises(ValueError, match="outside_scope"):
        RequestScopedEventDispatcher(sink, outside_scope="later")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="failed_requests"):
        RequestScopedEventDispatcher(sink, failed_requests="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_events_per_request"):
        RequestScopedEventDispatcher(sink, max_events_per_request=0)


def test_default_wiring_through_batch_processor_warns(sink: RecordingSink, datafile: str) -> None:
    dispatcher = RequestScopedEventDispatcher(sink)
    # The usual way to wire a dispatcher: the SDK adds its BatchEventProcessor,
    # which calls dispatch_event on its own "EventThread".
    client = optimizely.Optimizely(datafile, event_dispatcher=dispatcher)
    try:
        with pytest.warns(WiringWarning, match="create_client"), dispatcher.request_scope():
            client.track("purchase", "user-17")
            client.event_processor.flush()  # type: ignore[union-attr]
            client.event_processor.stop()  # type: ignore[union-attr]
    finally:
        client.close()
    # The event arrived outside the request: sent on its own, not with the request.
    assert [len(b) for b in sink.batches] == [1]
    assert dispatcher.stats()["outside_scope_sent"] == 1


def test_unscoped_event_while_requests_are_served_warns(
    sink: RecordingSink, dispatcher: RequestScopedEventDispatcher, client: optimizely.Optimizely
) -> None:
    with dispatcher.request_scope():
        thread = threading.Thread(target=client.track, args=("purchase", "user-18"))
        with pytest.warns(WiringWarning, match="copy_context"):
            thread.start()
            thread.join()


def test_a_datafile_without_events_tracks_nothing_and_does_not_crash(
    datafile: str, caplog: Any
) -> None:
    data = json.loads(datafile)
    data["events"] = []
    sink = RecordingSink()
    dispatcher = RequestScopedEventDispatcher(sink)
    client = create_client(dispatcher, datafile=json.dumps(data))
    with caplog.at_level(logging.ERROR), dispatcher.request_scope():
        client.track("purchase", "user-19")  # unknown event key: the SDK logs and skips it
        client.create_user_context("user-19").decide("new_checkout")
    # Not silent: the SDK logs it at ERROR through Python logging, even with its NoOpLogger.
    assert any('"purchase" is not in datafile' in r.getMessage() for r in caplog.records)
    assert [len(b) for b in sink.batches] == [1]
    assert "decisions" in params_of(sink.batches[0][0])["visitors"][0]["snapshots"][0]
    assert dispatcher.stats()["dropped"] == {}


def test_request_end_listeners_live_on_each_dispatcher(
    sink: RecordingSink, dispatcher: RequestScopedEventDispatcher, client: optimizely.Optimizely
) -> None:
    other = RequestScopedEventDispatcher(RecordingSink())
    seen: list[RequestScopedEventDispatcher] = []

    def listener(d: RequestScopedEventDispatcher, items: list[object], failed: bool) -> None:
        seen.append(d)

    dispatcher.add_request_end_listener(listener)
    dispatcher.add_request_end_listener(listener)  # once is enough
    with dispatcher.request_scope():
        client.track("purchase", "user-20")
    with other.request_scope():
        pass
    dispatcher.remove_request_end_listener(listener)
    with dispatcher.request_scope():
        pass
    assert seen == [dispatcher]


def test_listeners_added_while_requests_end_are_safe(
    dispatcher: RequestScopedEventDispatcher,
) -> None:
    calls: list[int] = []
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():

            def listener(d: Any, items: list[object], failed: bool) -> None:
                calls.append(1)

            dispatcher.add_request_end_listener(listener)
            dispatcher.remove_request_end_listener(listener)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(2000):
            with dispatcher.request_scope():
                pass
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert dispatcher.stats()["requests"] == 2000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_after_a_fork_the_child_reports_only_its_own_counters(
    sink: RecordingSink, dispatcher: RequestScopedEventDispatcher, client: optimizely.Optimizely
) -> None:
    for n in range(3):
        with dispatcher.request_scope():
            client.track("purchase", f"user-{n}")
    assert dispatcher.stats()["handed_over"] == 3
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            report = {"before": dispatcher.stats()}
            with dispatcher.request_scope():
                client.track("purchase", "child-user")
            report["after"] = dispatcher.stats()
            os.write(write, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        report = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert report["before"]["requests"] == 0
    assert report["before"]["handed_over"] == 0
    assert report["after"]["requests"] == 1
    assert report["after"]["handed_over"] == 1
    assert dispatcher.stats()["handed_over"] == 3  # the parent keeps its own


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_after_a_fork_dispatcher_and_sender_counters_agree(
    datafile: str, event_endpoint: EventEndpoint
) -> None:
    dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=event_endpoint.url))
    client = create_client(dispatcher, datafile=datafile)
    try:
        for n in range(3):
            with dispatcher.request_scope():
                client.track("purchase", f"parent-{n}")
        assert dispatcher.flush(10)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            try:
                with dispatcher.request_scope():
                    client.track("purchase", "child")
                dispatcher.flush(10)
                os.write(write, json.dumps(dispatcher.stats()).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            child = json.loads(pipe.read())
        os.waitpid(pid, 0)
    finally:
        dispatcher.close(5)
    assert (child["requests"], child["handed_over"], child["submitted"]) == (1, 1, 1)
    assert child["delivered_events"] == 1
    visitors = event_endpoint.wait_for_visitors(4)
    assert sorted(v["visitor_id"] for v in visitors) == [
        "child",
        "parent-0",
        "parent-1",
        "parent-2",
    ]


# -- the hand-off encodes on the caller's thread or task --------------------------------


class ThreadRecordingEncoder(EventEncoder):
    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def encode(self, item: object) -> Any:
        self.threads.append(threading.current_thread().name)
        return super().encode(item)


def test_an_event_outside_any_request_is_encoded_by_its_caller(
    datafile: str, event_endpoint: EventEndpoint
) -> None:
    encoder = ThreadRecordingEncoder()
    dispatcher = RequestScopedEventDispatcher(
        EventSender(endpoint=event_endpoint.url, encoder=encoder), outside_scope="send"
    )
    client = create_client(dispatcher, datafile)
    script = threading.Thread(
        target=lambda: client.create_user_context("cli-user").decide("new_checkout"),
        name="a-cli-script",
    )
    script.start()
    script.join(10)
    try:
        assert encoder.threads == ["a-cli-script"]
        assert dispatcher.flush(10)
    finally:
        dispatcher.close(10)
    assert dispatcher.stats()["outside_scope_sent"] == 1
    assert [v["visitor_id"] for v in event_endpoint.all_visitors()] == ["cli-user"]


def test_an_async_hand_off_uses_the_senders_asubmit_or_falls_back_to_submit() -> None:
    class AsyncSink(RecordingSink):
        def __init__(self) -> None:
            super().__init__()
            self.awaited: list[list[Any]] = []

        async def asubmit(self, items: list[Any]) -> None:
            self.awaited.append(list(items))

    async_sink, plain_sink = AsyncSink(), RecordingSink()
    for sink in (async_sink, plain_sink):
        dispatcher = RequestScopedEventDispatcher(sink)

        async def request(d: RequestScopedEventDispatcher = dispatcher) -> None:
            async with d.request_scope():
                d.collect("an item")

        anyio.run(request)
        assert dispatcher.stats()["handed_over"] == 1
    assert async_sink.awaited == [["an item"]] and async_sink.batches == []
    assert plain_sink.batches == [["an item"]]
