"""What an :class:`~optimizely_middleware.testing.EventCapture` records: each POST and each request.

Usage::

    from optimizely_middleware.testing.captured import CapturedPost

    post = CapturedPost.from_wire(url, body, {"Content-Type": "application/json"})
    assert not post.errors, post.errors       # checked against the event API's shape
    print(post.impressions, post.conversions)

Both are also importable from :mod:`optimizely_middleware.testing`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optimizely_middleware.testing.assertions import EventAssertions
from optimizely_middleware.wire.payloads import (
    Conversion,
    Impression,
    conversions_in,
    impressions_in,
)
from optimizely_middleware.wire.validation import payload_errors

if TYPE_CHECKING:
    from optimizely_middleware.dispatcher import RequestScopedEventDispatcher

__all__ = ["CapturedPost", "CapturedRequest"]


@dataclass(frozen=True)
class CapturedPost:
    """One POST as a sender made it: the URL, headers and body on the wire.

    ``payload`` is the decoded JSON body (``None`` if it was not JSON) and
    ``errors`` lists what :mod:`~optimizely_middleware.wire.validation` found wrong.
    """

    url: str
    headers: dict[str, str]
    body: bytes
    payload: Any
    errors: tuple[str, ...]
    impressions: tuple[Impression, ...]
    conversions: tuple[Conversion, ...]

    @classmethod
    def from_wire(cls, url: str, body: bytes, headers: Mapping[str, str]) -> CapturedPost:
        errors: list[str] = []
        content_type = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
        if not content_type.startswith("application/json"):
            errors.append(f"headers: Content-Type must be application/json, got {content_type!r}")
        try:
            payload = json.loads(body)
        except ValueError as exc:
            payload = None
            errors.append(f"body: not valid JSON ({exc})")
        else:
            errors.extend(payload_errors(payload))
        return cls(
            url=url,
            headers=dict(headers),
            body=bytes(body),
            payload=payload,
            errors=tuple(errors),
            impressions=tuple(impressions_in(payload)),
            conversions=tuple(conversions_in(payload)),
        )


@dataclass(frozen=True)
class CapturedRequest(EventAssertions):
    """What one request produced, as handed over when its scope closed.

    ``failed`` is true for a request that raised or answered with a 5xx
    status; ``discarded`` when its dispatcher was therefore told to drop its
    events (``failed_requests="discard"``), so none of them were POSTed.

    Example::

        request = optimizely_events.last_request
        request.assert_impression(flag_key="new_checkout", variation_key="on")
    """

    dispatcher: RequestScopedEventDispatcher
    failed: bool
    payloads: tuple[Any, ...]
    impressions: tuple[Impression, ...]
    conversions: tuple[Conversion, ...]

    _what = "request"

    @property
    def discarded(self) -> bool:
        return self.failed and self.dispatcher.failed_requests == "discard"

    def _impression_list(self) -> list[Impression]:
        return list(self.impressions)

    def _conversion_list(self) -> list[Conversion]:
        return list(self.conversions)
