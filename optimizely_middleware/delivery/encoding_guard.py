"""The run-time guard of the encoder's fast path: does it still write what the SDK writes?

Usage::

    from optimizely_middleware.delivery.encoding import EventEncoder, PendingUserEvent
    from optimizely_middleware.delivery.encoding_guard import fast_path_problem

    encoder = EventEncoder()
    problem = fast_path_problem(lambda event: encoder.encode_fast(PendingUserEvent(event, None)))
    assert problem is None   # this SDK's payload is what the fast path builds

:class:`~optimizely_middleware.delivery.encoding.EventEncoder` runs it once,
when it is built, on its own fast path
(:meth:`~optimizely_middleware.delivery.encoding.EventEncoder.encode_fast`):
impressions (of an experiment, of a holdout, of a rollout that decided
nothing) and conversions made from the SDK's own classes are encoded by that
fast path, and the merged body is compared with
``EventFactory.create_log_event`` of the same events, types included. If they
differ (a future SDK renamed, added or dropped a payload field) the encoder
warns once and builds every event with ``create_log_event``.

The fast path comes in as a function of a ``UserEvent``, so this module
imports nothing of the encoder's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeAlias

from optimizely.event.event_factory import EventFactory
from optimizely.event.user_event import ConversionEvent, UserEvent

from optimizely_middleware.delivery.encoded import EncodedEvent, merged_body
from optimizely_middleware.delivery.visitor_json import canonical_json
from optimizely_middleware.sdk_logging import SDKLogger

__all__ = ["FastPath", "fast_path_problem"]

FastPath: TypeAlias = Callable[[UserEvent], EncodedEvent | None]
"""An encoder's fast path: one ``UserEvent`` encoded, or None when it declines."""


def fast_path_problem(encode_fast: FastPath) -> str | None:
    """Compare ``encode_fast`` with ``create_log_event`` on synthetic events built
    from the SDK's own classes; None when they agree, else what differs."""
    events = _synthetic_user_events()
    encoded: list[EncodedEvent] = []
    for user_event in events:
        one = encode_fast(user_event)
        if one is None:
            return f"the fast path did not take a synthetic {type(user_event).__name__}"
        encoded.append(one)
    if any(item.key != encoded[0].key for item in encoded):
        return "events of one context got different envelopes"
    expected = EventFactory.create_log_event(list(events), SDKLogger())
    if expected is None:
        return "create_log_event built nothing"
    first = encoded[0]
    if first.url != expected.url or first.headers != dict(expected.headers or {}):
        return "the url or headers differ"
    if canonical_json(json.loads(merged_body(encoded))) != canonical_json(expected.params):
        return "the payload differs"
    return None


def _synthetic_user_events() -> list[UserEvent]:
    """Impressions with a cmab uuid, of a holdout (whose variation the SDK passes as
    a dict) and with no rule decided, and conversions with and without revenue,
    value and nested tags, of one event context, built from the SDK's own classes."""
    from optimizely import entities
    from optimizely.event.payload import VisitorAttribute
    from optimizely.event.user_event import EventContext, ImpressionEvent
    from optimizely.helpers.event_tag_utils import EventTags

    context = EventContext("1001", "2001", "7", True, "EU")
    attributes = [
        VisitorAttribute("3001", "plan", "custom", "pro"),
        VisitorAttribute("3002", "age", "custom", 41),
        VisitorAttribute("3003", "score", "custom", 0.5),
        VisitorAttribute("$opt_bot_filtering", "$opt_bot_filtering", "custom", False),
    ]
    experiment = entities.Experiment("4001", "exp", "Running", [], [], {}, [], "5001")
    variation = entities.Variation("6001", "on", featureEnabled=True)
    impression = ImpressionEvent(
        context, "user-1", experiment, attributes, variation,
        "flag", "exp", "feature-test", True, False, "cmab-1",
    )  # fmt: skip
    # A global or local holdout: a Holdout, not an Experiment (no layer id), and
    # its variation is the datafile's dict, as ProjectConfig keeps it.
    holdout = entities.Holdout(
        "4101", "holdout", entities.Holdout.Status.RUNNING,
        [{"id": "6101", "key": "holdout_off", "featureEnabled": False, "variables": []}],
        [{"entityId": "6101", "endOfRange": 10000}], [],
    )  # fmt: skip
    held_out = ImpressionEvent(
        context, "user-5", holdout, attributes[1:], holdout.variations[0],
        "flag", "holdout", "holdout", False, False, None,
    )  # fmt: skip
    # The SDK sends this for a flag whose rollout decided nothing (sendFlagDecisions).
    undecided = ImpressionEvent(
        context, "user-4", None, [], None,  # type: ignore[arg-type]
        "flag", "", "rollout", False, False, None,
    )  # fmt: skip
    event = entities.Event("8001", "purchase", ["4001"])
    tags = EventTags({"revenue": 1299, "value": "3.5", "nested": {"a": [1, 2.5, None, "x"]}})
    conversion = ConversionEvent(context, event, "user-2", [], tags, False)
    plain = ConversionEvent(context, event, "user-3", attributes[:1], None, None)
    return [impression, held_out, undecided, conversion, plain]
