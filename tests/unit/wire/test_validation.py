from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from optimizely import optimizely

from optimizely_middleware import RequestScopedEventDispatcher, create_client
from optimizely_middleware.wire.validation import (
    InvalidEventPayload,
    payload_errors,
    validate_payload,
)
from tests.support.fakes import RecordingSink


@pytest.fixture
def sdk_payloads(datafile: str) -> list[dict[str, Any]]:
    """Real payloads built by the SDK: an activate, a decide, an is_feature_enabled
    and a track with revenue, value and tags."""
    sink = RecordingSink()
    dispatcher = RequestScopedEventDispatcher(sink)
    client: optimizely.Optimizely = create_client(dispatcher, datafile)
    with dispatcher.request_scope():
        client.activate("headline_test", "user-1", {"plan": "pro"})
        client.create_user_context("user-1", {"plan": "pro"}).decide("new_checkout")
        client.is_feature_enabled("new_checkout", "user-2")
        client.track("purchase", "user-1", None, {"revenue": 1299, "value": 3.5, "sku": "A1"})
        client.track("add_to_cart", "user-1")
    assert len(sink.events) == 5
    return [copy.deepcopy(event.params) for event in sink.events]


def test_every_payload_the_sdk_builds_is_valid(sdk_payloads: list[dict[str, Any]]) -> None:
    for payload in sdk_payloads:
        assert payload_errors(payload) == []
        validate_payload(payload)


def test_a_batch_of_merged_visitors_is_valid(sdk_payloads: list[dict[str, Any]]) -> None:
    merged = dict(sdk_payloads[0])
    merged["visitors"] = [v for p in sdk_payloads for v in p["visitors"]]
    assert payload_errors(merged) == []


def test_unknown_keys_are_allowed(sdk_payloads: list[dict[str, Any]]) -> None:
    payload = sdk_payloads[1]
    payload["future_field"] = 1
    payload["visitors"][0]["snapshots"][0]["decisions"][0]["metadata"]["cmab_uuid"] = "u-1"
    assert payload_errors(payload) == []


def _impression(payloads: list[dict[str, Any]]) -> dict[str, Any]:
    return payloads[1]


def _conversion(payloads: list[dict[str, Any]]) -> dict[str, Any]:
    return payloads[3]


Mutation = Callable[[dict[str, Any]], None]


def _set(path: list[str | int], value: Any) -> Mutation:
    def mutate(payload: dict[str, Any]) -> None:
        target: Any = payload
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    return mutate


def _delete(path: list[str | int]) -> Mutation:
    def mutate(payload: dict[str, Any]) -> None:
        target: Any = payload
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]

    return mutate


SNAP = ["visitors", 0, "snapshots", 0]


@pytest.mark.parametrize(
    ("which", "mutate", "expected"),
    [
        (_conversion, _set([*SNAP, "events", 0, "timestamp"], "1700000000000"),
         "visitors[0].snapshots[0].events[0].timestamp: expected int, got str"),
        (_conversion, _set([*SNAP, "events", 0, "timestamp"], True),
         "visitors[0].snapshots[0].events[0].timestamp: expected int, got bool"),
        (_conversion, _set([*SNAP, "events", 0, "revenue"], 12.99),
         "visitors[0].snapshots[0].events[0].revenue: expected int, got float"),
        (_conversion, _set([*SNAP, "events", 0, "value"], "3.5"),
         "visitors[0].snapshots[0].events[0].value: expected number, got str"),
        (_conversion, _set([*SNAP, "events", 0, "tags"], ["sku"]),
         "visitors[0].snapshots[0].events[0].tags: expected object, got list"),
        (_conversion, _delete([*SNAP, "events", 0, "key"]),
         "visitors[0].snapshots[0].events[0].key: missing"),
        (_conversion, _set([*SNAP, "events", 0, "uuid"], ""),
         "visitors[0].snapshots[0].events[0].uuid: must not be empty"),
        (_conversion, _set([*SNAP, "events"], []),
         "visitors[0].snapshots[0].events: expected at least 1 item(s), got 0"),
        (_impression, _delete([*SNAP, "decisions", 0, "metadata", "variation_key"]),
         "visitors[0].snapshots[0].decisions[0].metadata.variation_key: missing"),
        (_impression, _set([*SNAP, "decisions", 0, "metadata", "enabled"], "true"),
         "visitors[0].snapshots[0].decisions[0].metadata.enabled: expected bool, got str"),
        (_impression, _set([*SNAP, "decisions", 0, "variation_id"], 60003),
         "visitors[0].snapshots[0].decisions[0].variation_id: expected str or null, got int"),
        (_impression, _set([*SNAP, "decisions", 0], "on"),
         "visitors[0].snapshots[0].decisions[0]: expected object, got str"),
        (_impression, _set([*SNAP, "decisions"], {}),
         "visitors[0].snapshots[0].decisions: expected list, got dict"),
        (_impression, _delete(["visitors", 0, "visitor_id"]), "visitors[0].visitor_id: missing"),
        (_impression, _set(["visitors", 0, "attributes", 0, "value"], None),
         "visitors[0].attributes[0].value: expected str, number or bool, got null"),
        (_impression, _set(["visitors", 0, "snapshots"], []),
         "visitors[0].snapshots: expected at least 1 item(s), got 0"),
        (_impression, _set(["visitors"], []), "visitors: expected at least 1 item(s), got 0"),
        (_impression, _delete(["account_id"]), "account_id: missing"),
        (_impression, _set(["anonymize_ip"], "yes"), "anonymize_ip: expected bool, got str"),
        (_impression, _set(["revision"], 42), "revision: expected str, got int"),
    ],
)  # fmt: skip
def test_each_malformed_field_is_reported_with_its_path(
    sdk_payloads: list[dict[str, Any]],
    which: Callable[[list[dict[str, Any]]], dict[str, Any]],
    mutate: Mutation,
    expected: str,
) -> None:
    payload = which(sdk_payloads)
    mutate(payload)
    assert payload_errors(payload) == [expected]
    with pytest.raises(InvalidEventPayload) as info:
        validate_payload(payload)
    assert info.value.errors == [expected]
    assert expected in str(info.value)


def test_every_problem_is_listed_not_only_the_first(sdk_payloads: list[dict[str, Any]]) -> None:
    payload = _conversion(sdk_payloads)
    del payload["client_name"]
    payload["visitors"][0]["snapshots"][0]["events"][0]["timestamp"] = 1.5
    payload["visitors"].append({"visitor_id": 7})
    assert payload_errors(payload) == [
        "client_name: missing",
        "visitors[0].snapshots[0].events[0].timestamp: expected int, got float",
        "visitors[1].visitor_id: expected str, got int",
        "visitors[1].attributes: missing",
        "visitors[1].snapshots: missing",
    ]


@pytest.mark.parametrize("payload", [None, [], "{}", 3])
def test_a_payload_that_is_not_an_object_is_reported(payload: Any) -> None:
    assert payload_errors(payload) == [f"(payload): expected object, got {_name(payload)}"]


def _name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def test_invalid_payload_error_is_an_assertion_error_for_pytest() -> None:
    with pytest.raises(AssertionError, match=r"1 problem\(s\)\):\n  account_id: missing"):
        raise InvalidEventPayload(["account_id: missing"])
