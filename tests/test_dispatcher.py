from __future__ import annotations

import asyncio
import contextvars
import copy
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import pytest
from optimizely import optimizely
from optimizely.event_builder import Event
from optimizely.helpers import enums

from optimizely_middleware import (
    EventOutsideScopeError,
    EventSender,
    RequestScopedEventDispatcher,
    WiringWarning,
    create_client,
)
from optimizely_middleware.dispatcher import (
    add_request_end_listener,
    remove_request_end_listener,
)
from tests.event_endpoint import EventEndpoint
from tests.support import RecordingSink


class BuiltEvents:
    """Snapshots of what the SDK built, taken by a LOG_EVENT listener before dispatch."""

    def __init__(self, client: optimizely.Optimizely) -> None:
        self.bodies: list[str] = []
        client.notification_center.add_notification_listener(
            enums.NotificationTypes.LOG_EVENT, self._on_log_event
        )

    def _on_log_event(self, event: Event) -> None:
        self.bodies.append(json.dumps(copy.deepcopy(event.params), sort_keys=True))


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


@pytest.fixture
def client(dispatcher: RequestScopedEventDispatcher, datafile: str) -> optimizely.Optimizely:
    return create_client(dispatcher, datafile=datafile)


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
    assert [json.dumps(e.params, sort_keys=True) for e in handed] == built.bodies
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
    assert sink.batches[0][0].params["visitors"][0]["visitor_id"] == "user-2"
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


def test_outside_scope_raise_policy_raises_from_dispatch_event(
    sink: RecordingSink, datafile: str
) -> None:
    dispatcher = RequestScopedEventDispatcher(sink, outside_scope="raise")
    client = create_client(dispatcher, datafile=datafile)
    with pytest.raises(EventOutsideScopeError):
        dispatcher.dispatch_event(Event("https://example.invalid", {}))
    # Through the SDK the error is caught by the SDK's processor: nothing is sent.
    client.track("purchase", "user-4")
    assert sink.batches == []


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
        await asyncio.sleep(0)
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
        users = {e.params["visitors"][0]["visitor_id"] for e in batch}
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
    assert "decisions" in sink.batches[0][0].params["visitors"][0]["snapshots"][0]
    assert dispatcher.stats()["dropped"] == {}
