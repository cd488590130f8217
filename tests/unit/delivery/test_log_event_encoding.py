"""The LogEvent half of the encoder: payloads split by the bytes of envelopes seen before.

Every case runs :class:`~optimizely_middleware.delivery.encoding.EventEncoder` (whose
``log_events`` is the
:class:`~optimizely_middleware.delivery.log_event_encoding.LogEventEncoder`) on
hand-made ``LogEvent``s through one encoder, so that what it saw before is in play.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optimizely.event.log_event import LogEvent

from optimizely_middleware.delivery.encoded import (
    EncodedEvent,
    UnserializableEvent,
    envelope_parts,
    merged_body,
)
from optimizely_middleware.delivery.encoding import EventEncoder
from optimizely_middleware.delivery.visitor_json import canonical_json, strict_json

URL = "http://h/v1/events"


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
