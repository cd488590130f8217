"""The merge rule and the POST body, on the encoder in use, checked against the SDK's own batch.

Every case runs :class:`~optimizely_middleware.delivery.encoding.EventEncoder` on the
SDK's ``LogEvent`` (the dispatcher wiring) or on hand-made payloads: what
may share a POST, what is sent alone, what is refused.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from optimizely.event.log_event import LogEvent

from optimizely_middleware.delivery.encoded import (
    JSON_HEADERS,
    NO_ENVELOPE_VALUES,
    EncodedEvent,
    EnvelopeValues,
    UnserializableEvent,
    body_of,
    merge_key,
    merged_body,
    post_headers,
    unmergeable_key,
)
from optimizely_middleware.delivery.encoding import EventEncoder
from tests.support.events import compact, conversion, impression, log_event, project_config

URL = "http://h/v1/events"


def encode(event: Any) -> EncodedEvent:
    return EventEncoder().encode(event)


@pytest.mark.parametrize("count", [0, 1, 2, 3, 50])
def test_body_is_the_envelope_around_the_visitors_joined_by_commas(count: int) -> None:
    visitors = [b'{"visitor_id":"v%d"}' % i for i in range(count)]
    body = body_of(b'{"account_id":"1","visitors":[', visitors, b"]}")
    assert body == b'{"account_id":"1","visitors":[' + b",".join(visitors) + b"]}"
    if count:
        assert [v["visitor_id"] for v in json.loads(body)["visitors"]] == [
            f"v{i}" for i in range(count)
        ]


def test_one_event_body_is_the_compact_json_of_its_params(datafile: str) -> None:
    event = log_event(impression(project_config(datafile), "user-1"))
    encoded = encode(event)
    assert merged_body([encoded]) == compact(event.params)


def test_merged_body_is_the_sdk_batch_of_the_same_user_events(datafile: str) -> None:
    config = project_config(datafile)
    user_events = [
        impression(config, "user-1"),
        conversion(config, "user-1"),
        impression(config, "user-2", "control"),
        conversion(config, "user-3", revenue=5),
    ]
    encoder = EventEncoder()
    encoded = [encoder.encode(log_event(e)) for e in user_events]
    assert len({e.key for e in encoded}) == 1
    batch = log_event(user_events)
    assert merged_body(encoded) == compact(batch.params)


def test_events_of_different_revisions_or_urls_get_different_keys(datafile: str) -> None:
    a = log_event(impression(project_config(datafile), "user-1"))
    b = log_event(impression(project_config(datafile, revision="43"), "user-1"))
    eu = LogEvent("https://eu.logx.optimizely.com/v1/events", a.params, "POST", a.headers)
    encoder = EventEncoder()
    for _ in range(2):  # the second pass hits the envelope cache
        assert len({encoder.encode(e).key for e in (a, b, eu)}) == 3


def test_events_with_different_headers_are_not_merged(datafile: str) -> None:
    a = log_event(impression(project_config(datafile), "user-1"))
    traced = LogEvent(a.url, a.params, "POST", {"Content-Type": "application/json", "X-T": "1"})
    encoder = EventEncoder()
    assert encoder.encode(a).key != encoder.encode(traced).key
    assert encoder.encode(traced).headers == {"Content-Type": "application/json", "X-T": "1"}
    assert encoder.encode(traced).key == encoder.encode(traced).key


def test_visitors_key_in_the_middle_keeps_key_order() -> None:
    params = {"a": 1, "visitors": [{"v": "x"}, {"v": "y"}], "z": [1, "é"]}
    encoded = encode(LogEvent(URL, params))
    assert merged_body([encoded]) == compact(params)
    assert list(json.loads(merged_body([encoded]))) == ["a", "visitors", "z"]


@pytest.mark.parametrize(
    "params",
    [
        {"account_id": "1", "visitors": []},
        {"account_id": "1"},
        {"account_id": "1", "visitors": "not a list"},
        {1: "int key", "visitors": [{"v": 1}]},
        ["not", "a", "dict"],
    ],
)
def test_unmergeable_payloads_are_sent_alone_and_unchanged(params: Any) -> None:
    encoder = EventEncoder()
    first = encoder.encode(LogEvent(URL, params))
    second = encoder.encode(LogEvent(URL, params))
    assert first.key != second.key
    assert merged_body([first]) == compact(params)


@pytest.mark.parametrize(
    "bad_value",
    [object(), float("nan"), float("inf"), {"set": {1, 2}}],
    ids=["object", "nan", "inf", "set"],
)
def test_unserialisable_payload_raises_without_showing_the_payload(bad_value: Any) -> None:
    params = {"account_id": "1", "visitors": [{"visitor_id": "secret-user", "x": bad_value}]}
    with pytest.raises(UnserializableEvent) as info:
        encode(LogEvent(URL, params))
    assert "secret-user" not in str(info.value)


def test_circular_payload_is_unserialisable() -> None:
    visitor: dict[str, Any] = {"visitor_id": "u"}
    visitor["self"] = visitor
    with pytest.raises(UnserializableEvent):
        encode(LogEvent(URL, {"visitors": [visitor]}))
    with pytest.raises(UnserializableEvent):  # circular in the envelope
        envelope: dict[str, Any] = {"visitors": [{"v": 1}]}
        envelope["loop"] = [envelope]
        encode(LogEvent(URL, envelope))


def test_post_headers_keep_the_events_headers_and_force_json() -> None:
    event = LogEvent("http://h", {}, "POST", {"content-type": "text/plain", "X-Trace": "abc"})
    assert post_headers(event) == {"X-Trace": "abc", "Content-Type": "application/json"}
    assert post_headers(LogEvent("http://h", {}, "POST", None)) == {
        "Content-Type": "application/json"
    }


def test_encoding_does_not_modify_the_event(datafile: str) -> None:
    event = log_event(impression(project_config(datafile), "user-1"))
    before = json.dumps(event.params, sort_keys=True)
    headers_before = dict(event.headers or {})
    encode(event)
    assert json.dumps(event.params, sort_keys=True) == before
    assert event.headers == headers_before


@pytest.mark.parametrize(
    ("first", "second"), [(True, 1), (1, 1.0), (0.0, -0.0), ("1", 1), (None, False)], ids=repr
)
def test_equal_but_differently_serialised_envelopes_are_never_confused(
    first: Any, second: Any
) -> None:
    a = {"anonymize_ip": first, "visitors": [{"v": 1}]}
    b = {"anonymize_ip": second, "visitors": [{"v": 2}]}
    encoder = EventEncoder()
    # The second pass hits the envelope cache; a repeat hits the last envelope kept.
    for params in (a, b, a, a, b, b, a):
        fresh = {**params, "visitors": [{"v": 3}]}  # new dict and list, the same values
        encoded = encoder.encode(LogEvent(URL, fresh))
        assert merged_body([encoded]) == compact(fresh)
        assert encoded.key != encoder.encode(LogEvent(URL, b if params is a else a)).key
        encoder.encode(LogEvent(URL, params))  # the last envelope is this one's again


def test_each_encoder_has_its_own_envelope_cache() -> None:
    params = {"account_id": "1", "visitors": [{"v": 1}]}
    first, second = EventEncoder(), EventEncoder()
    first.encode(LogEvent(URL, params))
    assert len(first.log_events._params_envelopes) == 1
    assert second.log_events._params_envelopes == {}


def test_an_item_that_is_not_a_log_event_is_unserialisable() -> None:
    with pytest.raises(UnserializableEvent, match="AttributeError"):
        EventEncoder().encode(object())


def test_encoded_events_carry_their_item_and_their_fields_in_order() -> None:
    event = LogEvent(URL, {"visitors": [{"v": 1}]})
    encoded = EventEncoder().encode(event)
    assert encoded.event is event
    fields = ("key", "url", "headers", "prefix", "visitors", "suffix", "event")
    assert EncodedEvent(*(getattr(encoded, name) for name in fields)) == encoded
    assert encoded.nbytes == len(merged_body([encoded]))


def test_the_merge_key_is_equal_exactly_for_equal_url_headers_and_envelope() -> None:
    key = merge_key(URL, {"Content-Type": "application/json"}, b"{", b"}")
    assert key == merge_key(URL, dict(JSON_HEADERS), b"{", b"}")
    assert key != merge_key(URL + "x", JSON_HEADERS, b"{", b"}")
    assert key != merge_key(URL, {"Content-Type": "application/json", "X": "1"}, b"{", b"}")
    assert key != merge_key(URL, JSON_HEADERS, b"{ ", b"}")
    assert key != merge_key(URL, JSON_HEADERS, b"{", b" }")
    headers = {"X": "1", "Content-Type": "application/json"}
    assert merge_key(URL, headers, b"", b"") == merge_key(
        URL, dict(reversed(headers.items())), b"", b""
    )
    assert unmergeable_key() != unmergeable_key()


def test_envelope_values_match_only_the_same_names_in_order_types_and_values() -> None:
    kept = EnvelopeValues.of({"a": "1", "visitors": [{"v": 1}], "b": True})
    assert kept.matches({"a": "1", "visitors": [{"v": 2}], "b": True})
    assert not kept.matches({"a": "1", "visitors": [], "b": 1})  # True == 1
    assert not kept.matches({"b": True, "a": "1", "visitors": []})  # another order
    assert not kept.matches({"a": "2", "visitors": [], "b": True})
    assert not kept.matches({"a": "1", "visitors": []})
    one = EnvelopeValues.of({"a": "x", "visitors": []})  # one name: still a tuple of values
    assert one.matches({"a": "x", "visitors": [{}]})
    assert not one.matches({"a": "y", "visitors": [{}]})
    assert not NO_ENVELOPE_VALUES.matches({"visitors": [{}]})
