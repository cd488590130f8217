"""Serialising events once and merging compatible ones: checked against the SDK's own batch."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from optimizely.error_handler import NoOpErrorHandler
from optimizely.event.event_factory import EventFactory
from optimizely.event.log_event import LogEvent
from optimizely.event.user_event import UserEvent
from optimizely.event.user_event_factory import UserEventFactory
from optimizely.project_config import ProjectConfig

from optimizely_middleware.batching import (
    UnserializableEvent,
    encode_event,
    merged_body,
    post_headers,
)

SDK_LOGGER = logging.getLogger("optimizely.sdk.tests")


def compact(params: Any) -> bytes:
    return json.dumps(params, separators=(",", ":")).encode()


def project_config(datafile: str, *, revision: str | None = None) -> ProjectConfig:
    if revision is not None:
        data = json.loads(datafile)
        data["revision"] = revision
        datafile = json.dumps(data)
    return ProjectConfig(datafile, SDK_LOGGER, NoOpErrorHandler())


def impression(config: ProjectConfig, user_id: str, variation: str = "bold") -> UserEvent:
    experiment = config.get_experiment_from_key("headline_test")
    variation_id = config.get_variation_from_key("headline_test", variation).id
    event = UserEventFactory.create_impression_event(
        config,
        experiment,
        variation_id,
        "",
        "headline_test",
        "experiment",
        True,
        user_id,
        {"plan": "pro"},
        None,
    )
    assert event is not None
    return event


def conversion(config: ProjectConfig, user_id: str, revenue: int = 1299) -> UserEvent:
    event = UserEventFactory.create_conversion_event(
        config, "purchase", user_id, {"plan": "free"}, {"revenue": revenue, "value": 1.5}
    )
    assert event is not None
    return event


def log_event(user_events: UserEvent | list[UserEvent]) -> LogEvent:
    event = EventFactory.create_log_event(user_events, SDK_LOGGER)  # type: ignore[arg-type]
    assert event is not None
    return event


def test_one_event_body_is_the_compact_json_of_its_params(datafile: str) -> None:
    event = log_event(impression(project_config(datafile), "user-1"))
    encoded = encode_event(event)
    assert merged_body([encoded]) == compact(event.params)


def test_merged_body_is_the_sdk_batch_of_the_same_user_events(datafile: str) -> None:
    config = project_config(datafile)
    user_events = [
        impression(config, "user-1"),
        conversion(config, "user-1"),
        impression(config, "user-2", "control"),
        conversion(config, "user-3", revenue=5),
    ]
    encoded = [encode_event(log_event(e)) for e in user_events]
    assert len({e.key for e in encoded}) == 1
    batch = log_event(user_events)
    assert merged_body(encoded) == compact(batch.params)


def test_events_of_different_revisions_or_urls_get_different_keys(datafile: str) -> None:
    a = log_event(impression(project_config(datafile), "user-1"))
    b = log_event(impression(project_config(datafile, revision="43"), "user-1"))
    eu = LogEvent("https://eu.logx.optimizely.com/v1/events", a.params, "POST", a.headers)
    keys = {encode_event(e).key for e in (a, b, eu)}
    assert len(keys) == 3


def test_events_with_different_headers_are_not_merged(datafile: str) -> None:
    a = log_event(impression(project_config(datafile), "user-1"))
    traced = LogEvent(a.url, a.params, "POST", {"Content-Type": "application/json", "X-T": "1"})
    assert encode_event(a).key != encode_event(traced).key


def test_visitors_key_in_the_middle_keeps_key_order() -> None:
    params = {"a": 1, "visitors": [{"v": "x"}, {"v": "y"}], "z": [1, "é"]}
    encoded = encode_event(LogEvent("http://h/v1/events", params))
    assert merged_body([encoded]) == compact(params)


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
    first = encode_event(LogEvent("http://h/v1/events", params), seq=1)
    second = encode_event(LogEvent("http://h/v1/events", params), seq=2)
    assert first.key != second.key
    assert merged_body([first]) == compact(params)


@pytest.mark.parametrize(
    "bad_value", [object(), float("nan"), float("inf"), {"set": {1, 2}}], ids=repr
)
def test_unserialisable_payload_raises_without_showing_the_payload(bad_value: Any) -> None:
    params = {"account_id": "1", "visitors": [{"visitor_id": "secret-user", "x": bad_value}]}
    with pytest.raises(UnserializableEvent) as info:
        encode_event(LogEvent("http://h/v1/events", params))
    assert "secret-user" not in str(info.value)


def test_circular_payload_is_unserialisable() -> None:
    visitor: dict[str, Any] = {"visitor_id": "u"}
    visitor["self"] = visitor
    with pytest.raises(UnserializableEvent):
        encode_event(LogEvent("http://h/v1/events", {"visitors": [visitor]}))


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
    encode_event(event)
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
    for _ in range(2):  # the second pass hits the envelope cache
        encoded_a = encode_event(LogEvent("http://h/v1/events", a))
        encoded_b = encode_event(LogEvent("http://h/v1/events", b))
        assert encoded_a.key != encoded_b.key
        assert merged_body([encoded_a]) == compact(a)
        assert merged_body([encoded_b]) == compact(b)
