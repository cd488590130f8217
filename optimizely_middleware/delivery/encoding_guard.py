"""The run-time guard of :class:`~optimizely_middleware.delivery.encoding.EventEncoder`'s fast path.

Usage::

    from optimizely_middleware.delivery.encoding import EventEncoder
    from optimizely_middleware.delivery.encoding_guard import fast_path_problem

    assert fast_path_problem(EventEncoder()) is None   # this SDK's payload is what we build

At first use the encoder builds an impression and two conversions from the
SDK's own classes, encodes them the fast way and compares the merged body
with ``EventFactory.create_log_event`` of the same events, types included.
If they differ (a future SDK renamed, added or dropped a payload field) the
encoder warns once and builds every event with ``create_log_event``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from optimizely.event.event_factory import EventFactory
from optimizely.event.payload import EventBatch
from optimizely.event.user_event import ConversionEvent, UserEvent

from optimizely_middleware.delivery.encoded import EncodedEvent
from optimizely_middleware.delivery.visitor_json import (
    _plain_user_event,
    canonical_json,
    visitor_json,
)

if TYPE_CHECKING:
    from optimizely_middleware.delivery.encoding import EventEncoder

__all__ = ["fast_path_problem"]


def fast_path_problem(encoder: EventEncoder) -> str | None:
    """Compare the fast path with ``create_log_event`` on synthetic events built from
    the SDK's own classes; None when they agree, else what differs."""
    events = _synthetic_user_events()
    sdk_logger = encoder._sdk_logger
    for build in (EventFactory._create_visitor, EventBatch.get_event_params):
        if not callable(build):
            return "a payload builder is missing"
    encoded: list[EncodedEvent] = []
    for user_event in events:
        if not _plain_user_event(user_event):
            return "the synthetic events are not plain"
        visitors = visitor_json(user_event, sdk_logger)
        if visitors is None:
            return "the fast path built no visitor"
        envelope = encoder._context_envelope(user_event.event_context)
        encoded.append(
            EncodedEvent(
                key=envelope.key,
                url=envelope.url,
                headers=envelope.headers,
                prefix=envelope.prefix,
                visitors=visitors,
                suffix=envelope.suffix,
                event=None,
            )
        )
    if any(item.key != encoded[0].key for item in encoded):
        return "events of one context got different envelopes"
    first = encoded[0]
    body = first.prefix + b",".join(item.visitors for item in encoded) + first.suffix
    expected = EventFactory.create_log_event(list(events), sdk_logger)
    if expected is None:
        return "create_log_event built nothing"
    if first.url != expected.url or first.headers != dict(expected.headers or {}):
        return "the url or headers differ"
    if canonical_json(json.loads(body)) != canonical_json(expected.params):
        return "the payload differs"
    return None


def _synthetic_user_events() -> list[UserEvent]:
    """Impressions with a cmab uuid and with no rule decided, and conversions with
    and without revenue, value and nested tags, of one event context, built
    from the SDK's own classes."""
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
    # The SDK sends this for a flag whose rollout decided nothing (sendFlagDecisions).
    undecided = ImpressionEvent(
        context, "user-4", None, [], None,  # type: ignore[arg-type]
        "flag", "", "rollout", False, False, None,
    )  # fmt: skip
    event = entities.Event("8001", "purchase", ["4001"])
    tags = EventTags({"revenue": 1299, "value": "3.5", "nested": {"a": [1, 2.5, None, "x"]}})
    conversion = ConversionEvent(context, event, "user-2", [], tags, False)
    plain = ConversionEvent(context, event, "user-3", attributes[:1], None, None)
    return [impression, undecided, conversion, plain]
