"""The in-memory capture, driven by the real SDK, dispatcher and EventSender.

Every sender here points at a real local endpoint, so an event that escaped
the capture would show up there (and never on the network).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest
import requests
import uvicorn
from optimizely import optimizely
from optimizely.event.log_event import LogEvent
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from optimizely_middleware import (
    EventSender,
    OptimizelyASGIMiddleware,
    RequestScopedEventDispatcher,
    create_client,
)
from optimizely_middleware.testing import (
    CapturedRequest,
    Conversion,
    EventCapture,
    Impression,
    conversions_in,
    impressions_in,
)
from optimizely_middleware.wire.validation import InvalidEventPayload
from tests.support.endpoint import EventEndpoint

# Users whose bucketing in the test datafile is known.
ON_USER = "user-1"  # new_checkout -> "on"
OFF_USER = "user-2"  # new_checkout -> "off"


@pytest.fixture
def dispatcher(event_endpoint: EventEndpoint) -> Iterator[RequestScopedEventDispatcher]:
    dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=event_endpoint.url))
    yield dispatcher
    dispatcher.close(timeout=10)


@pytest.fixture
def client(dispatcher: RequestScopedEventDispatcher, datafile: str) -> optimizely.Optimizely:
    return create_client(dispatcher, datafile)


def checkout(
    client: optimizely.Optimizely,
    dispatcher: RequestScopedEventDispatcher,
    user_id: str = ON_USER,
) -> None:
    """One request: a flag decision and a purchase."""
    with dispatcher.request_scope():
        user = client.create_user_context(user_id, {"plan": "pro"})
        user.decide("new_checkout")
        user.track_event("purchase", {"revenue": 1299, "value": 3.5, "sku": "A1"})


def assert_nothing_reached(endpoint: EventEndpoint) -> None:
    assert endpoint.arrived == 0
    assert endpoint.posts == []


def test_impressions_and_conversions_are_decoded_from_the_wire_payload(
    client: optimizely.Optimizely,
    dispatcher: RequestScopedEventDispatcher,
    event_endpoint: EventEndpoint,
) -> None:
    with EventCapture() as events:
        checkout(client, dispatcher)
        impressions, conversions = events.impressions, events.conversions
        posts = events.posts

    assert impressions == [
        Impression(
            flag_key="new_checkout",
            rule_key="new_checkout_test",
            rule_type="feature-test",
            variation_key="on",
            enabled=True,
            experiment_id="40002",
            variation_id="60004",
            campaign_id="50002",
            user_id=ON_USER,
            attributes={"plan": "pro", "$opt_bot_filtering": False},
            timestamp=impressions[0].timestamp,
            uuid=impressions[0].uuid,
        )
    ]
    assert isinstance(impressions[0].timestamp, int)
    assert conversions == [
        Conversion(
            event_key="purchase",
            revenue=1299,
            value=3.5,
            tags={"revenue": 1299, "value": 3.5, "sku": "A1"},
            user_id=ON_USER,
            attributes={"plan": "pro", "$opt_bot_filtering": False},
            event_id="11001",
            timestamp=conversions[0].timestamp,
            uuid=conversions[0].uuid,
        )
    ]
    # What was captured is the body the sender put on the wire, to the sender's URL.
    assert {post.url for post in posts} == {event_endpoint.url}
    for post in posts:
        assert post.payload == json.loads(post.body)
        assert post.headers["Content-Type"] == "application/json"
        assert post.errors == ()
    assert_nothing_reached(event_endpoint)


def test_events_are_grouped_per_request(
    client: optimizely.Optimizely, dispatcher: RequestScopedEventDispatcher
) -> None:
    with EventCapture() as events:
        checkout(client, dispatcher, ON_USER)
        with dispatcher.request_scope():
            pass
        checkout(client, dispatcher, OFF_USER)

        first, empty, last = events.requests
        assert events.last_request is last

    assert isinstance(first, CapturedRequest)
    assert first.dispatcher is dispatcher
    assert [(i.user_id, i.variation_key) for i in first.impressions] == [(ON_USER, "on")]
    assert [c.event_key for c in first.conversions] == ["purchase"]
    assert empty.impressions == () and empty.conversions == () and empty.payloads == ()
    assert [(i.user_id, i.variation_key) for i in last.impressions] == [(OFF_USER, "off")]
    assert not first.failed and not first.discarded
    last.assert_impression(flag_key="new_checkout", variation_key="off", count=1)
    with pytest.raises(AssertionError, match="in the request"):
        last.assert_impression(user_id=ON_USER)
    # In total, both requests' events.
    assert sorted(i.user_id for i in events.impressions) == [ON_USER, OFF_USER]


def test_a_discarded_failed_request_shows_what_it_produced_but_nothing_is_posted(
    datafile: str, event_endpoint: EventEndpoint
) -> None:
    dispatcher = RequestScopedEventDispatcher(
        EventSender(endpoint=event_endpoint.url), failed_requests="discard"
    )
    client = create_client(dispatcher, datafile)
    try:
        with EventCapture() as events:
            with pytest.raises(RuntimeError), dispatcher.request_scope():
                client.create_user_context(ON_USER).decide("new_checkout")
                raise RuntimeError("view failed")
            request = events.last_request
            assert request.failed and request.discarded
            assert [i.flag_key for i in request.impressions] == ["new_checkout"]
            assert events.posts == []
            events.assert_no_events()
    finally:
        dispatcher.close(timeout=10)


def test_events_outside_a_request_are_posted_but_belong_to_no_request(
    client: optimizely.Optimizely, event_endpoint: EventEndpoint
) -> None:
    with EventCapture() as events:
        client.track("add_to_cart", "cli-user")
        events.assert_conversion(event_key="add_to_cart", user_id="cli-user", count=1)
        assert events.requests == []
        with pytest.raises(AssertionError, match="No request has ended"):
            _ = events.last_request
    assert_nothing_reached(event_endpoint)


def test_clear_forgets_what_was_captured(
    client: optimizely.Optimizely, dispatcher: RequestScopedEventDispatcher
) -> None:
    with EventCapture() as events:
        checkout(client, dispatcher)
        events.clear()
        assert events.posts == [] and events.requests == []
        checkout(client, dispatcher, OFF_USER)
        assert [i.user_id for i in events.impressions] == [OFF_USER]


def test_after_the_capture_events_go_to_the_real_transport_again(
    client: optimizely.Optimizely,
    dispatcher: RequestScopedEventDispatcher,
    event_endpoint: EventEndpoint,
) -> None:
    with EventCapture() as events:
        checkout(client, dispatcher)
    assert len(events.impressions) == 1
    checkout(client, dispatcher, OFF_USER)
    assert dispatcher.flush(10)
    visitors = event_endpoint.wait_for_visitors(2)
    assert {v["visitor_id"] for v in visitors} == {OFF_USER}
    # The capture no longer listens either.
    assert len(events.requests) == 1
    assert len(events.impressions) == 1


def test_the_capture_is_removed_even_when_the_block_raises(
    client: optimizely.Optimizely,
    dispatcher: RequestScopedEventDispatcher,
    event_endpoint: EventEndpoint,
) -> None:
    with pytest.raises(ZeroDivisionError), EventCapture() as events:
        checkout(client, dispatcher)
        _ = 1 / 0
    checkout(client, dispatcher, OFF_USER)
    assert dispatcher.flush(10)
    assert {v["visitor_id"] for v in event_endpoint.wait_for_visitors(2)} == {OFF_USER}
    assert [r.impressions[0].user_id for r in events.requests] == [ON_USER]


def test_nested_captures_restore_the_outer_one(
    client: optimizely.Optimizely,
    dispatcher: RequestScopedEventDispatcher,
    event_endpoint: EventEndpoint,
) -> None:
    with EventCapture() as outer:
        with EventCapture() as inner:
            checkout(client, dispatcher, ON_USER)
            assert [i.user_id for i in inner.impressions] == [ON_USER]
        checkout(client, dispatcher, OFF_USER)
        assert [i.user_id for i in outer.impressions] == [OFF_USER]
        assert [i.user_id for i in inner.impressions] == [ON_USER]
    assert_nothing_reached(event_endpoint)


def test_installing_the_same_capture_twice_is_an_error() -> None:
    with EventCapture() as events, pytest.raises(RuntimeError, match="already installed"):
        events.install()


# -- validation ----------------------------------------------------------------


def malformed_event(url: str) -> LogEvent:
    params = {
        "account_id": "10001",
        "project_id": "20001",
        "revision": "42",
        "client_name": "python-sdk",
        "client_version": "5.7.0",
        "anonymize_ip": True,
        "enrich_decisions": True,
        "visitors": [
            {
                "visitor_id": "user-9",
                "attributes": [],
                "snapshots": [
                    {
                        "events": [
                            {
                                "entity_id": "11001",
                                "uuid": "u-1",
                                "key": "purchase",
                                "timestamp": "yesterday",
                            }
                        ]
                    }
                ],
            }
        ],
    }
    return LogEvent(url, params, "POST", {"Content-Type": "application/json"})


def test_a_malformed_post_fails_the_next_read_with_its_path(
    dispatcher: RequestScopedEventDispatcher, event_endpoint: EventEndpoint
) -> None:
    with EventCapture() as events:
        with dispatcher.request_scope():
            dispatcher.dispatch_event(malformed_event(event_endpoint.url))
        with pytest.raises(InvalidEventPayload) as info:
            _ = events.conversions
        assert info.value.errors == [
            "POST #1 visitors[0].snapshots[0].events[0].timestamp: expected int, got str"
        ]
        # Reported once; the capture is still readable afterwards.
        assert [c.event_key for c in events.conversions] == ["purchase"]
        assert len(events.invalid_posts) == 1
    assert_nothing_reached(event_endpoint)


def test_an_unread_malformed_post_fails_when_the_capture_ends(
    dispatcher: RequestScopedEventDispatcher, event_endpoint: EventEndpoint
) -> None:
    with pytest.raises(InvalidEventPayload, match="timestamp: expected int"):  # noqa: SIM117
        with EventCapture():
            with dispatcher.request_scope():
                dispatcher.dispatch_event(malformed_event(event_endpoint.url))
    assert_nothing_reached(event_endpoint)


def test_validation_can_be_turned_off(
    dispatcher: RequestScopedEventDispatcher, event_endpoint: EventEndpoint
) -> None:
    with EventCapture(validate=False) as events:
        with dispatcher.request_scope():
            dispatcher.dispatch_event(malformed_event(event_endpoint.url))
        assert [c.user_id for c in events.conversions] == ["user-9"]
        assert len(events.invalid_posts) == 1


# -- assertion helpers -----------------------------------------------------------


def test_assert_impression_returns_the_matches_and_counts(
    client: optimizely.Optimizely, dispatcher: RequestScopedEventDispatcher
) -> None:
    with EventCapture() as events:
        checkout(client, dispatcher, ON_USER)
        checkout(client, dispatcher, "user-3")  # also "on"
        matched = events.assert_impression(flag_key="new_checkout", variation_key="on", count=2)
        assert [i.user_id for i in matched] == [ON_USER, "user-3"]
        events.assert_impression(user_id="user-3", attributes={"plan": "pro"})
        events.assert_conversion(event_key="purchase", tags={"sku": "A1"}, count=2)
        events.assert_no_impression(variation_key="off")
        events.assert_no_conversion(event_key="add_to_cart")
        with pytest.raises(AssertionError, match=r"Expected 1 impression\(s\) .* found 2"):
            events.assert_impression(variation_key="on", count=1)
        with pytest.raises(AssertionError, match="Expected no conversion"):
            events.assert_no_conversion(revenue=1299)
        with pytest.raises(AssertionError, match="Expected no Optimizely events"):
            events.assert_no_events()


def test_a_failed_assertion_lists_what_was_captured(
    client: optimizely.Optimizely, dispatcher: RequestScopedEventDispatcher
) -> None:
    with EventCapture() as events:
        checkout(client, dispatcher, ON_USER)
        with pytest.raises(AssertionError) as info:
            events.assert_impression(flag_key="new_checkout", variation_key="off")
    assert str(info.value) == (
        "Expected at least one impression with flag_key='new_checkout', variation_key='off' "
        "in the capture, found 0.\n"
        "Captured:\n"
        "  impression: flag_key='new_checkout' rule_key='new_checkout_test' "
        "rule_type='feature-test' variation_key='on' enabled=True user_id='user-1'\n"
        "  conversion: event_key='purchase' revenue=1299 value=3.5 "
        "tags={'revenue': 1299, 'value': 3.5, 'sku': 'A1'} user_id='user-1'"
    )


def test_a_failed_assertion_on_an_empty_capture_says_how_to_wire_the_client() -> None:
    with EventCapture() as events, pytest.raises(AssertionError) as info:
        events.assert_conversion(event_key="purchase")
    assert "No Optimizely events were captured" in str(info.value)
    assert "create_client(dispatcher" in str(info.value)


def test_an_unknown_field_name_is_a_type_error() -> None:
    with EventCapture() as events, pytest.raises(TypeError, match="variation"):
        events.assert_impression(variation="on")


# -- decoding ------------------------------------------------------------------


def test_decoding_tolerates_malformed_payloads() -> None:
    assert impressions_in(None) == []
    assert conversions_in({"visitors": "x"}) == []
    odd = {"visitors": [{"snapshots": [{"events": [{}], "decisions": [{"metadata": 3}]}]}]}
    [impression] = impressions_in(odd)
    assert impression.flag_key == "" and impression.user_id == ""
    assert [c.event_key for c in conversions_in(odd)] == [""]


def test_activate_impressions_have_an_empty_flag_key(
    client: optimizely.Optimizely, dispatcher: RequestScopedEventDispatcher
) -> None:
    with EventCapture() as events:
        with dispatcher.request_scope():
            variation = client.activate("headline_test", ON_USER)
        events.assert_impression(
            flag_key="", rule_key="headline_test", rule_type="experiment", variation_key=variation
        )


# -- a real server in a thread of the test -----------------------------------------


def test_a_server_running_in_a_thread_of_the_test_is_captured(
    datafile: str, event_endpoint: EventEndpoint
) -> None:
    dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=event_endpoint.url))
    client = create_client(dispatcher, datafile)

    async def home(request: Request) -> PlainTextResponse:
        decision = client.create_user_context(request.query_params["user"]).decide("new_checkout")
        return PlainTextResponse(decision.variation_key or "")

    app = Starlette(
        routes=[Route("/", home)],
        middleware=[Middleware(OptimizelyASGIMiddleware, dispatcher=dispatcher, client=client)],
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # connections wait in the backlog until the server accepts them
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    try:
        with EventCapture() as events:
            thread.start()
            for user in (ON_USER, OFF_USER):
                response = requests.get(url, params={"user": user}, timeout=30)
                assert response.status_code == 200
            # The server answers first and ends the request just after.
            assert len(events.wait_for_requests(2)) == 2
            assert [(i.user_id, i.variation_key) for i in events.impressions] == [
                (ON_USER, "on"),
                (OFF_USER, "off"),
            ]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        dispatcher.close(10)
    assert not thread.is_alive()
    assert_nothing_reached(event_endpoint)


def test_waiting_for_requests_that_never_end_fails_readably() -> None:
    with EventCapture() as events, pytest.raises(AssertionError, match=r"Expected 1 request"):
        events.wait_for_requests(1, timeout=0.05)


def test_reads_flush_the_senders_so_they_never_race_the_worker(
    datafile: str, event_endpoint: EventEndpoint
) -> None:
    # A lone event would wait a minute for company; only a flush sends it now.
    dispatcher = RequestScopedEventDispatcher(
        EventSender(endpoint=event_endpoint.url, flush_interval=60)
    )
    client = create_client(dispatcher, datafile)
    try:
        with EventCapture() as events:
            checkout(client, dispatcher)
            assert dispatcher.stats()["delivered_events"] == 0
            assert [i.variation_key for i in events.impressions] == ["on"]
            assert dispatcher.stats()["delivered_events"] == 2
    finally:
        dispatcher.close(10)
    assert_nothing_reached(event_endpoint)
