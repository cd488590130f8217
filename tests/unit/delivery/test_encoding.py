"""The encoder against the SDK's own output.

The JSON value of every POST body built from encoded events must equal
``EventFactory.create_log_event(those user events).params``, for every kind of
event the SDK emits. The user events are the real ones: the real client, the
real datafile (and variants of it), wired with the request-scoped processor.
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import math
from collections import defaultdict
from collections.abc import Hashable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optimizely import optimizely
from optimizely.decision.optimizely_decide_option import OptimizelyDecideOption
from optimizely.event import payload
from optimizely.event.event_factory import EventFactory
from optimizely.event.log_event import LogEvent
from optimizely.helpers import enums
from optimizely.notification_center import NotificationCenter

from optimizely_middleware import RequestScopedEventDispatcher
from optimizely_middleware.delivery.encoded import EncodedEvent, UnserializableEvent
from optimizely_middleware.delivery.encoding import EventEncoder, PendingUserEvent, log_event_of
from optimizely_middleware.delivery.visitor_json import canonical_json
from optimizely_middleware.processor import RequestScopedEventProcessor
from tests.conftest import DATA
from tests.support.fakes import RecordingSink

SDK_LOG = logging.getLogger("tests.sdk")
DATAFILE: dict[str, Any] = json.loads((DATA / "datafile.json").read_text())


def variant(
    *,
    revision: str = "42",
    anonymize_ip: bool = True,
    send_flag_decisions: bool = True,
    region: str | None = None,
    bot_filtering: bool | None = None,
    experiment_running: bool = True,
    holdouts: str = "none",
) -> str:
    """The test datafile with some settings changed; ``holdouts`` adds a global
    holdout, a local one (on the flag's experiment rule), or both, each taking
    half of the traffic."""
    data = json.loads(json.dumps(DATAFILE))
    if holdouts in ("global", "both"):
        data["holdouts"] = [holdout("11001", "global_holdout", "12001")]
    if holdouts in ("local", "both"):
        data["localHoldouts"] = [holdout("11002", "local_holdout", "12002", rules=["40002"])]
    data["revision"] = revision
    data["anonymizeIP"] = anonymize_ip
    data["sendFlagDecisions"] = send_flag_decisions
    if region is not None:
        data["region"] = region
    if bot_filtering is None:
        data.pop("botFiltering", None)
    else:
        data["botFiltering"] = bot_filtering
    if not experiment_running:  # decide falls through to the rollout rule
        for experiment in data["experiments"]:
            if experiment["key"] == "new_checkout_test":
                experiment["status"] = "Paused"
    return json.dumps(data)


def holdout(id_: str, key: str, variation_id: str, rules: list[str] | None = None) -> Any:
    """A running holdout of the datafile (SDK 5.7 keeps its variations as dicts)."""
    entry: dict[str, Any] = {
        "id": id_,
        "key": key,
        "status": "Running",
        "audienceIds": [],
        "audienceConditions": [],
        "variations": [
            {"id": variation_id, "key": f"{key}_off", "featureEnabled": False, "variables": []}
        ],
        "trafficAllocation": [{"entityId": variation_id, "endOfRange": 5000}],
    }
    if rules is not None:
        entry["includedRules"] = rules
    return entry


class Capture:
    """A real client wired with the request-scoped processor; keeps what one request collected."""

    def __init__(self, datafile: str) -> None:
        self.sink = RecordingSink()
        self.dispatcher = RequestScopedEventDispatcher(self.sink)
        center = NotificationCenter()
        self.client = optimizely.Optimizely(
            datafile=datafile,
            event_processor=RequestScopedEventProcessor(
                self.dispatcher, notification_center=center
            ),
            notification_center=center,
        )

    def items(self) -> list[PendingUserEvent]:
        items = self.sink.events
        assert all(isinstance(item, PendingUserEvent) for item in items)
        return items  # type: ignore[return-value]


def grouped(encoded: list[EncodedEvent]) -> dict[Hashable, list[EncodedEvent]]:
    groups: dict[Hashable, list[EncodedEvent]] = defaultdict(list)
    for item in encoded:
        groups[item.key].append(item)
    return groups


def body_of(group: list[EncodedEvent]) -> Any:
    first = group[0]
    return json.loads(first.prefix + b",".join(item.visitors for item in group) + first.suffix)


def sdk_log_event(items: list[PendingUserEvent]) -> LogEvent:
    log_event = EventFactory.create_log_event([item.user_event for item in items], SDK_LOG)
    assert log_event is not None
    return log_event


def batch_of(item: Any) -> str:
    """What the SDK's payload for ``item`` shares with every event it may be batched
    with: the url, the headers and every top-level key except ``visitors``."""
    log_event = sdk_log_event([item])
    envelope = {k: v for k, v in log_event.params.items() if k != "visitors"}
    return canonical_json([log_event.url, log_event.headers, envelope])


def assert_encodes_like_the_sdk(encoder: EventEncoder, items: list[PendingUserEvent]) -> None:
    """Each merge group's body is the SDK's batch payload; events share a group
    exactly when their url, headers and top-level keys are equal."""
    encoded = [encoder.encode(item) for item in items]
    groups = grouped(encoded)
    assert len(groups) == len({batch_of(item) for item in items})
    for group in groups.values():
        members: list[PendingUserEvent] = [item.event for item in group]  # type: ignore[misc]
        assert len({batch_of(item) for item in members}) == 1
        expected = sdk_log_event(members)
        assert canonical_json(body_of(group)) == canonical_json(expected.params)
        assert group[0].url == expected.url
        assert group[0].headers == expected.headers
        # Each event's own body is the SDK's payload for it alone, and so is the
        # fast path's, whatever the guard decided.
        for one in group:
            alone = sdk_log_event([one.event])  # type: ignore[list-item]
            assert canonical_json(body_of([one])) == canonical_json(alone.params)
            fast = encoder.encode_fast(one.event)  # type: ignore[arg-type]
            if fast is not None:
                assert canonical_json(body_of([fast])) == canonical_json(alone.params)
        # The LogEvent path (dispatch_event) merges the same events into the same body.
        log_events = [encoder.encode(sdk_log_event([item])) for item in members]
        assert {item.key for item in log_events} == {group[0].key}
        assert canonical_json(body_of(log_events)) == canonical_json(expected.params)


# -- strategies -------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | finite | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            # The keys get_event_params drops when None, at any depth, on purpose.
            st.sampled_from(["value", "revenue", "tags", "decisions", "k"]) | st.text(max_size=5),
            inner,
            max_size=3,
        )
    ),
    max_leaves=12,
)
attribute_values = st.text(max_size=8) | st.integers(-(2**60), 2**60) | finite | st.booleans()
attributes = st.dictionaries(
    st.sampled_from(["plan", "not_in_datafile", "$opt_bot_filtering", "$opt_user_agent"]),
    attribute_values,
    max_size=3,
)
tag_dicts = st.none() | st.fixed_dictionaries(
    {},
    optional={
        "revenue": st.integers(-(2**53), 2**53) | st.booleans() | finite | st.text(max_size=4),
        "value": st.integers(-(2**53), 2**53) | finite | st.text(max_size=4) | st.booleans(),
        "category": st.text(max_size=6),
        "nested": json_values,
    },
)
user_ids = st.text(min_size=0, max_size=12)
actions = st.lists(
    st.one_of(
        st.tuples(st.just("decide"), st.booleans()),
        st.tuples(st.just("activate"), st.sampled_from(["headline_test", "new_checkout_test"])),
        st.tuples(st.just("is_feature_enabled"), st.none()),
        st.tuples(st.just("track"), tag_dicts),
        st.tuples(st.just("track_event"), tag_dicts),
    ),
    min_size=1,
    max_size=6,
)
datafile_settings = st.fixed_dictionaries(
    {
        "revision": st.sampled_from(["42", "43"]),
        "anonymize_ip": st.booleans(),
        "send_flag_decisions": st.booleans(),
        "region": st.sampled_from([None, "US", "EU", "eu"]),
        "bot_filtering": st.sampled_from([None, True, False]),
        "experiment_running": st.booleans(),
        "holdouts": st.sampled_from(["none", "global", "local", "both"]),
    }
)


def run(capture: Capture, user_id: str, attrs: dict[str, Any], steps: list[Any]) -> None:
    client = capture.client
    for kind, arg in steps:
        if kind == "decide":
            options = [OptimizelyDecideOption.DISABLE_DECISION_EVENT] if arg else []
            client.create_user_context(user_id, attrs).decide("new_checkout", options)
        elif kind == "activate":  # of a flag's rule too: same entities, another rule type
            client.activate(arg, user_id, attrs)
        elif kind == "is_feature_enabled":
            client.is_feature_enabled("new_checkout", user_id, attrs)
        elif kind == "track":
            client.track("purchase", user_id, attrs, arg)
        else:
            client.create_user_context(user_id, attrs).track_event("add_to_cart", arg)


_captures: dict[str, Capture] = {}


def capture_for(**options: Any) -> Capture:
    datafile = variant(**options)
    capture = _captures.get(datafile)
    if capture is None:
        capture = _captures[datafile] = Capture(datafile)
    capture.sink.batches.clear()
    return capture


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    first=datafile_settings,
    second=datafile_settings,
    users=st.lists(st.tuples(user_ids, attributes, actions), min_size=1, max_size=3),
)
def test_encoded_events_are_the_sdks_payload(
    first: dict[str, Any], second: dict[str, Any], users: list[Any]
) -> None:
    items: list[PendingUserEvent] = []
    for n, (user_id, attrs, steps) in enumerate(users):
        capture = capture_for(**(first if n % 2 == 0 else second))
        with capture.dispatcher.request_scope():
            run(capture, user_id, attrs, steps)
        items.extend(capture.items())
    if items:  # none when every step was a decide without a decision event
        assert_encodes_like_the_sdk(EventEncoder(), items)


def test_every_kind_of_event_in_one_batch(datafile: str) -> None:
    capture = Capture(variant(region="EU", bot_filtering=True))
    with capture.dispatcher.request_scope():
        user = capture.client.create_user_context("user-1", {"plan": "pro"})
        user.decide("new_checkout")
        user.decide("new_checkout", [OptimizelyDecideOption.DISABLE_DECISION_EVENT])
        capture.client.activate("headline_test", "user-1", {"plan": "pro"})
        capture.client.is_feature_enabled("new_checkout", "user-1")
        user.track_event("purchase", {"revenue": 1299, "value": 2.5, "extra": {"a": [1, "b"]}})
    items = capture.items()
    assert len(items) == 4  # no event for DISABLE_DECISION_EVENT
    encoder = EventEncoder()
    assert encoder.fast_path
    assert_encodes_like_the_sdk(encoder, items)
    assert encoder.encode(items[0]).url == "https://eu.logx.optimizely.com/v1/events"


def test_a_rollout_decision_and_no_flag_decisions(datafile: str) -> None:
    capture = Capture(variant(experiment_running=False))
    with capture.dispatcher.request_scope():
        capture.client.create_user_context("user-2").decide("new_checkout")
    items = capture.items()
    assert [item.user_event.rule_type for item in items] == ["rollout"]  # type: ignore[attr-defined]
    assert_encodes_like_the_sdk(EventEncoder(), items)
    quiet = Capture(variant(experiment_running=False, send_flag_decisions=False))
    with quiet.dispatcher.request_scope():
        quiet.client.create_user_context("user-2").decide("new_checkout")
    assert quiet.items() == []


@pytest.mark.parametrize("holdouts", ["global", "local", "both"])
def test_holdout_decisions(holdouts: str) -> None:
    capture = Capture(variant(holdouts=holdouts))
    with capture.dispatcher.request_scope():
        for n in range(12):
            capture.client.create_user_context(f"user-{n}").decide("new_checkout")
    items = capture.items()
    held = [item for item in items if item.user_event.rule_type == "holdout"]  # type: ignore[attr-defined]
    assert held and all(isinstance(item.user_event.variation, dict) for item in held)  # type: ignore[attr-defined]
    encoder = EventEncoder()
    assert encoder.fast_path
    assert_encodes_like_the_sdk(encoder, items)
    assert all(encoder.encode_fast(item) is not None for item in held)


def test_revisions_are_never_merged() -> None:
    items = []
    for revision in ("42", "43", "42"):
        capture = Capture(variant(revision=revision))
        with capture.dispatcher.request_scope():
            capture.client.track("purchase", "user-3")
        items.extend(capture.items())
    encoded = [EventEncoder().encode(item) for item in items]
    assert encoded[0].key == encoded[2].key != encoded[1].key
    assert_encodes_like_the_sdk(EventEncoder(), items)


def test_one_encoder_follows_each_event_context_exactly() -> None:
    items = []
    revisions = ("42", "43", "42")
    for revision in revisions:
        capture = Capture(variant(revision=revision))
        with capture.dispatcher.request_scope():
            capture.client.track("purchase", "user-3")
        items.extend(capture.items())
    encoder = EventEncoder()  # one encoder: the context it saw last does not stick
    encoded = [encoder.encode(item) for item in items]
    assert encoded[0].key == encoded[2].key != encoded[1].key
    for revision, each in zip(revisions, encoded, strict=True):
        assert f'"revision":"{revision}"'.encode() in each.prefix
    # An equal value of another type is another envelope: anonymize_ip 1 is not True.
    twin = copy.copy(items[0].user_event)  # type: ignore[attr-defined]
    twin.event_context = copy.copy(twin.event_context)
    twin.event_context.anonymize_ip = 1
    assert b'"anonymize_ip":true' in encoder.encode(items[0]).prefix
    assert b'"anonymize_ip":1' in encoder.encode(PendingUserEvent(twin, None)).prefix
    assert_encodes_like_the_sdk(EventEncoder(), [*items, PendingUserEvent(twin, None)])


def test_a_log_event_and_the_same_user_event_share_a_key(datafile: str) -> None:
    capture = Capture(datafile)
    with capture.dispatcher.request_scope():
        capture.client.track("purchase", "user-4", None, {"revenue": 5})
    item = capture.items()[0]
    encoder = EventEncoder()
    from_user_event = encoder.encode(item)
    from_log_event = encoder.encode(log_event_of(item))
    assert from_user_event.key == from_log_event.key
    assert json.loads(from_user_event.visitors) == json.loads(from_log_event.visitors)


# -- bad input ---------------------------------------------------------------


def deep(n: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(n):
        value = {"a": value}
    return value


BAD_TAGS = {
    "set": {"s": {1, 2}},
    "datetime": {"when": datetime.datetime(2026, 1, 1)},
    "bytes": {"b": b"\x00"},
    "deep": {"d": deep(10_000)},
    "nan": {"x": math.nan},
    "inf": {"x": [math.inf]},
    "nan_revenue_value": {"value": 1.0, "y": {"z": -math.inf}},
}


@pytest.mark.parametrize("name", sorted(BAD_TAGS))
def test_a_bad_tag_is_refused_without_its_payload(name: str, datafile: str) -> None:
    capture = Capture(datafile)
    with capture.dispatcher.request_scope():
        capture.client.track("purchase", "secret-user", {"plan": "secret-plan"}, BAD_TAGS[name])
        capture.client.track("purchase", "good-user")
    bad, good = capture.items()
    encoder = EventEncoder()
    with pytest.raises(UnserializableEvent) as raised:
        encoder.encode(bad)
    assert "secret" not in str(raised.value)
    assert "Conversion" in str(raised.value)
    if name in ("set", "datetime", "bytes", "deep"):  # the SDK cannot build these at all
        assert getattr(bad, "params", None) is None
    assert body_of([encoder.encode(good)])["visitors"][0]["visitor_id"] == "good-user"


@pytest.mark.parametrize("value", [math.nan, math.inf, datetime.date(2026, 1, 1)], ids=repr)
def test_an_attribute_the_sdk_would_not_build_is_refused(value: Any, datafile: str) -> None:
    # The SDK's own attribute list keeps only finite numbers, str and bool; a
    # hand-made event can carry anything, and must not be written as null.
    capture = Capture(datafile)
    with capture.dispatcher.request_scope():
        capture.client.track("purchase", "user-10", {"plan": "pro"})
    (item,) = capture.items()
    item.user_event.visitor_attributes[0].value = value
    with pytest.raises(UnserializableEvent):
        EventEncoder().encode(item)


def test_a_log_event_with_nan_is_refused() -> None:
    event = LogEvent("https://logx.optimizely.com/v1/events", {"visitors": [{"v": math.nan}]})
    with pytest.raises(UnserializableEvent):
        EventEncoder().encode(event)
    fine = LogEvent("https://logx.optimizely.com/v1/events", {"a": 1, "visitors": [{"v": None}]})
    assert body_of([EventEncoder().encode(fine)]) == fine.params


def test_what_orjson_refuses_but_the_sdk_writes_goes_through_the_sdk(datafile: str) -> None:
    capture = Capture(datafile)
    tags = {"big": 2**70, 1: "int key", "s": "\ud800", "mid": deep(300)}
    with capture.dispatcher.request_scope():
        capture.client.track("purchase", "user-5", None, tags)
    assert_encodes_like_the_sdk(EventEncoder(), capture.items())


# -- LOG_EVENT listeners -------------------------------------------------------


def test_log_event_listeners_fire_at_encode_time_with_the_sdks_log_event(datafile: str) -> None:
    capture = Capture(datafile)
    seen: list[LogEvent] = []
    center = capture.client.notification_center
    center.add_notification_listener(enums.NotificationTypes.LOG_EVENT, seen.append)
    with capture.dispatcher.request_scope():
        capture.client.track("purchase", "user-6", None, {"revenue": 7})
    assert seen == []  # nothing is built on the request's thread
    (item,) = capture.items()
    assert item.notification_center is center
    encoded = EventEncoder().encode(item)
    assert len(seen) == 1
    assert body_of([encoded]) == seen[0].params == sdk_log_event([item]).params


def test_a_raising_listener_does_not_stop_delivery(datafile: str) -> None:
    capture = Capture(datafile)

    def broken(event: LogEvent) -> None:
        raise RuntimeError("listener bug")

    center = capture.client.notification_center
    center.add_notification_listener(enums.NotificationTypes.LOG_EVENT, broken)
    with capture.dispatcher.request_scope():
        capture.client.track("purchase", "user-7")
    encoded = EventEncoder().encode(capture.items()[0])
    assert body_of([encoded])["visitors"][0]["visitor_id"] == "user-7"


# -- the guard ---------------------------------------------------------------


def test_the_guard_falls_back_to_create_log_event_with_one_warning(
    datafile: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = payload.Visitor.__init__

    def with_a_new_field(self: Any, snapshots: Any, attributes: Any, visitor_id: str) -> None:
        original(self, snapshots, attributes, visitor_id)
        self.session_id = "s-1"  # a future SDK adds a field to every visitor

    monkeypatch.setattr(payload.Visitor, "__init__", with_a_new_field)
    capture = Capture(datafile)
    with capture.dispatcher.request_scope():
        capture.client.track("purchase", "user-8")
        capture.client.create_user_context("user-8").decide("new_checkout")
    encoder = EventEncoder()
    with caplog.at_level(logging.WARNING, logger="optimizely_middleware"):
        encoded = [encoder.encode(item) for item in capture.items()]
        encoded += [encoder.encode(item) for item in capture.items()]
    assert not encoder.fast_path
    warnings = [r for r in caplog.records if "create_log_event" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert body_of(encoded[:2]) == sdk_log_event(capture.items()).params


def test_the_guard_passes_with_this_sdk() -> None:
    assert EventEncoder().fast_path


@pytest.fixture(autouse=True)
def _fresh_captures() -> Iterator[None]:
    yield
    _captures.clear()


def test_a_pending_user_event_reads_like_a_log_event_for_older_sinks(datafile: str) -> None:
    capture = Capture(datafile)
    with capture.dispatcher.request_scope():
        capture.client.track("purchase", "user-9", None, {"revenue": 3})
    (item,) = capture.items()
    expected = sdk_log_event([item])
    assert (item.url, item.params, item.headers, item.http_verb) == (
        expected.url,
        expected.params,
        expected.headers,
        expected.http_verb,
    )
