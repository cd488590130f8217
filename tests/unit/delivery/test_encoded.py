"""The merge rule and the POST body, on the encoder in use, checked against the SDK's own batch.

Every case runs :class:`~optimizely_middleware.delivery.encoding.EventEncoder` on the
SDK's ``LogEvent`` (the dispatcher wiring) or on hand-made payloads: what
may share a POST, what is sent alone, what is refused.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optimizely.event.log_event import LogEvent

from optimizely_middleware.delivery.encoded import (
    JSON_HEADERS,
    NO_ENVELOPE_VALUES,
    EncodedEvent,
    EnvelopeValues,
    UnserializableEvent,
    body_of,
    envelope_parts,
    merge_key,
    merged_body,
    post_headers,
    unmergeable_key,
)
from optimizely_middleware.delivery.encoding import EventEncoder
from optimizely_middleware.delivery.visitor_json import canonical_json, strict_json
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


def test_a_log_event_after_its_envelope_is_known_is_split_by_its_bytes() -> None:
    # The SDK's shape (visitors last) is written in one call; the envelope seen last
    # is recognised by the bytes the payload begins with, and only when they are equal.
    envelope = {"account_id": "1", "revision": "42", "anonymize_ip": True}

    def event(visitors: list[Any], url: str = URL, **changes: Any) -> LogEvent:
        return LogEvent(url, {**envelope, **changes, "visitors": visitors})

    encoder = EventEncoder()
    first = encoder.encode(event([{"v": 1}]))
    cases: list[tuple[LogEvent, bool]] = [  # (event, merges with the first)
        (event([{"v": 2}]), True),
        (event([{"v": 3}, {"v": [4, "é"]}]), True),
        (event([]), False),  # nothing to merge: sent alone
        (event([[]]), True),  # a visitor that is a list
        (event([{"v": "null"}]), True),  # "null" in a value: the careful path, same key
        (event([{"v": 5}], revision="420"), False),
        (event([{"v": 6}], anonymize_ip=1), False),
        (event([{"v": 7}], url=URL + "x"), False),
        (LogEvent(URL, {"visitors": [{"v": 8}], **envelope}), False),
        (LogEvent(URL, {**envelope, "visitors": [{"v": 9}], "z": [1]}), False),
    ]
    for case, merges in cases:
        encoded = encoder.encode(case)
        assert json.loads(merged_body([encoded])) == case.params
        assert list(json.loads(merged_body([encoded]))) == list(case.params)
        assert (encoded.key == first.key) is merges
        if merges and case.params["visitors"]:
            both = {**envelope, "visitors": [{"v": 1}, *case.params["visitors"]]}
            assert json.loads(merged_body([first, encoded])) == both
        encoder.encode(event([{"v": 1}]))  # the first envelope is the last one seen again
    with pytest.raises(UnserializableEvent):
        encoder.encode(event([{"v": float("nan")}]))


# A few envelopes that differ in one value, its type or their order, and visitors
# that may hold nulls, "null" in a string, or nothing at all.
envelope_values = st.none() | st.booleans() | st.integers(-2, 2) | st.sampled_from([0.0, -0.0, 1.5])
envelope_values |= st.sampled_from(["1", "null", "é", '"visitors":['])
envelopes = st.dictionaries(st.sampled_from(["account_id", "revision", "a"]), envelope_values)
visitor_values = st.none() | st.booleans() | st.integers() | st.text(max_size=6) | st.just("null")
visitors = st.lists(
    st.dictionaries(st.sampled_from(["visitor_id", "v"]), visitor_values), max_size=3
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(envelopes, min_size=1, max_size=3),
    st.lists(
        st.tuples(st.integers(0, 2), visitors, st.booleans(), st.sampled_from([URL, URL + "2"])),
        min_size=1,
        max_size=12,
    ),
)
def test_one_encoder_merges_log_events_exactly_when_their_envelopes_are_written_alike(
    kinds: list[dict[str, Any]], events: list[tuple[int, list[Any], bool, str]]
) -> None:
    encoder = EventEncoder()  # one encoder: what it saw last must never leak into the next
    seen: list[tuple[LogEvent, EncodedEvent]] = []
    for kind, visitor_list, visitors_last, url in events:
        envelope = kinds[kind % len(kinds)]
        params = (
            {**envelope, "visitors": visitor_list}
            if visitors_last
            else {"visitors": visitor_list, **envelope}
        )
        event = LogEvent(url, params)
        encoded = encoder.encode(event)
        assert canonical_json(json.loads(merged_body([encoded]))) == canonical_json(params)
        assert list(json.loads(merged_body([encoded]))) == list(params)
        for other_event, other in seen:
            mergeable = bool(params["visitors"]) and bool(other_event.params["visitors"])
            alike = mergeable and (
                url == other_event.url
                and envelope_parts(params, strict_json)
                == envelope_parts(other_event.params, strict_json)
            )
            assert (encoded.key == other.key) is alike
            if alike:
                both = [*other_event.params["visitors"], *params["visitors"]]
                merged = json.loads(merged_body([other, encoded]))
                assert canonical_json(merged) == canonical_json({**params, "visitors": both})
        seen.append((event, encoded))


def test_log_events_of_several_envelopes_are_split_by_their_bytes_in_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A process with several projects: each envelope, once seen, is known by its bytes.
    envelopes = [{"account_id": "1", "revision": r} for r in ("42", "4200", "43")]
    encoder = EventEncoder()
    first = [encoder.encode(LogEvent(URL, {**e, "visitors": [{"v": 0}]})) for e in envelopes]
    assert len({encoded.key for encoded in first}) == 3

    def by_value(*args: Any) -> None:
        raise AssertionError("an envelope seen before was matched by value")

    monkeypatch.setattr(encoder.log_events, "_params_envelope", by_value)
    for n in range(1, 10):
        envelope = envelopes[n % 3]
        params = {**envelope, "visitors": [{"v": n}]}
        encoded = encoder.encode(LogEvent(URL, params))
        assert encoded.key == first[n % 3].key
        assert json.loads(merged_body([first[n % 3], encoded])) == {
            **envelope,
            "visitors": [{"v": 0}, {"v": n}],
        }
    with pytest.raises(AssertionError, match="matched by value"):  # another URL: not known
        encoder.encode(LogEvent(URL + "x", {**envelopes[0], "visitors": [{"v": 1}]}))
