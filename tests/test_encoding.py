"""The encoder against the SDK's own output: the JSON value of a POST body built
from encoded events equals ``EventFactory.create_log_event(those events).params``."""

from __future__ import annotations

import json
import logging
from typing import Any

from optimizely import optimizely
from optimizely.event.event_factory import EventFactory
from optimizely.event.event_processor import BaseEventProcessor
from optimizely.event.user_event import UserEvent

from optimizely_middleware.batching import EncodedEvent
from optimizely_middleware.encoding import EventEncoder, PendingUserEvent, canonical_json

SDK_LOG = logging.getLogger("tests.sdk")


class Keep(BaseEventProcessor):
    def __init__(self) -> None:
        self.events: list[UserEvent] = []

    def process(self, user_event: UserEvent) -> None:
        self.events.append(user_event)


def body_of(encoded: list[EncodedEvent]) -> Any:
    first = encoded[0]
    assert all(item.key == first.key for item in encoded)
    return json.loads(first.prefix + b",".join(item.visitors for item in encoded) + first.suffix)


def test_the_fast_path_is_what_create_log_event_builds(datafile: str) -> None:
    keep = Keep()
    client = optimizely.Optimizely(datafile=datafile, event_processor=keep)
    user = client.create_user_context("user-1", {"plan": "free"})
    user.decide("new_checkout")
    user.track_event("purchase", {"revenue": 1299, "value": "2.5", "nested": {"a": [1, None]}})
    client.activate("headline_test", "user-2")
    encoder = EventEncoder()
    assert encoder.fast_path
    encoded = [encoder.encode(PendingUserEvent(event, None)) for event in keep.events]
    expected = EventFactory.create_log_event(keep.events, SDK_LOG)
    assert expected is not None
    assert canonical_json(body_of(encoded)) == canonical_json(expected.params)
    assert encoded[0].url == expected.url
