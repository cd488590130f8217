"""CapturedPost: one POST as it was on the wire, decoded and checked."""

from __future__ import annotations

import json

from optimizely_middleware import RequestScopedEventDispatcher, create_client
from optimizely_middleware.delivery.encoding import log_event_of
from optimizely_middleware.testing.captured import CapturedPost
from tests.support.fakes import RecordingSink

JSON = {"Content-Type": "application/json"}


def sdk_body(datafile: str) -> bytes:
    """The SDK's own payload for one decision and one conversion of a user."""
    sink = RecordingSink()
    dispatcher = RequestScopedEventDispatcher(sink)
    client = create_client(dispatcher, datafile=datafile)
    with dispatcher.request_scope():
        user = client.create_user_context("user-1", {"plan": "pro"})
        user.decide("new_checkout")
        user.track_event("purchase", {"revenue": 1299})
    params = [log_event_of(item).params for item in sink.events]
    first = params[0]
    first["visitors"] = [visitor for p in params for visitor in p["visitors"]]
    return json.dumps(first).encode()


def test_a_post_of_the_sdks_payload_has_no_errors_and_reads_as_events(datafile: str) -> None:
    post = CapturedPost.from_wire("https://logx.optimizely.com/v1/events", sdk_body(datafile), JSON)
    assert post.errors == ()
    assert [i.flag_key for i in post.impressions] == ["new_checkout"]
    assert [(c.event_key, c.revenue) for c in post.conversions] == [("purchase", 1299)]
    assert post.payload["visitors"][0]["visitor_id"] == "user-1"


def test_a_post_that_is_not_json_or_not_labelled_json_says_so() -> None:
    post = CapturedPost.from_wire("http://127.0.0.1/", b"{not json", {"Content-Type": "text/plain"})
    assert post.payload is None
    assert post.impressions == post.conversions == ()
    assert len(post.errors) == 2
    assert post.errors[0].startswith("headers: Content-Type must be application/json")
    assert post.errors[1].startswith("body: not valid JSON")
