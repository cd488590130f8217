"""A POST the devserver received, and how its terminal output reads.

Usage::

    from optimizely_middleware.devserver.received import ReceivedPost, format_post

    print(format_post(post))      # the readable text optimizely-devserver prints

The payload is read by :mod:`optimizely_middleware.wire.payloads`, the package's
one parser, so the terminal, the inspector page and the testing kit agree.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from http import HTTPStatus
from typing import Any, Literal

from optimizely_middleware.wire.payloads import (
    VisitorEvents,
    conversions_in,
    describe_impression,
    impressions_in,
    visitors_in,
)
from optimizely_middleware.wire.payloads import describe_conversion as _describe_conversion

__all__ = [
    "OutputFormat",
    "ReceivedPost",
    "describe_conversion",
    "describe_decision",
    "format_bytes",
    "format_post",
    "format_summary",
    "iso_time",
    "render_post",
    "status_text",
    "time_of_day",
]

# What the devserver prints per POST: readable text, one JSON line, or one summary line.
OutputFormat = Literal["text", "json", "quiet"]


@dataclass
class ReceivedPost:
    """One POST the server received, with the status it answered."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    received_at: float  # time.monotonic() when the body was read
    wall_time: float  # time.time() at the same moment, for display
    answered_at: float = 0.0  # time.monotonic() when the answer was sent (after any delay)
    payload: Any = None  # the decoded JSON body, None if it was not JSON
    problems: list[str] = field(default_factory=list)
    id: int = 0  # 1, 2, ... in arrival order, set when the server records it

    @cached_property
    def visitor_events(self) -> list[VisitorEvents]:
        """The visitors of the batch with their impressions and conversions, parsed."""
        return visitors_in(self.payload)

    @property
    def visitors(self) -> list[dict[str, Any]]:
        """The visitors of the batch (one per SDK event)."""
        if isinstance(self.payload, dict) and isinstance(self.payload.get("visitors"), list):
            return list(self.payload["visitors"])
        return []

    @property
    def event_count(self) -> int:
        """The impressions and conversions the batch carries (what the inspector counts)."""
        return sum(len(v.impressions) + len(v.conversions) for v in self.visitor_events)

    @property
    def accepted(self) -> bool:
        """True when the server answered 2xx, so the sender counts it as delivered."""
        return 200 <= self.status < 300


def time_of_day(wall_time: float) -> str:
    """``HH:MM:SS.mmm`` in local time, as the terminal output shows arrivals."""
    return datetime.fromtimestamp(wall_time).strftime("%H:%M:%S.%f")[:-3]


def format_bytes(n: int) -> str:
    """``n`` bytes for people: ``"512 bytes"``, ``"1.5 KiB"``, ``"32 MiB"``."""
    size = float(n)
    for unit in ("bytes", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            break
        size /= 1024
    return f"{n} bytes" if unit == "bytes" else f"{size:.3g} {unit}"


def iso_time(wall_time: float) -> str:
    """ISO 8601 in local time with its offset, to the millisecond (the JSON lines, the API)."""
    return datetime.fromtimestamp(wall_time).astimezone().isoformat(timespec="milliseconds")


def status_text(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def render_post(post: ReceivedPost, output_format: OutputFormat) -> str:
    """What the devserver prints for ``post`` in ``output_format`` (no final newline)."""
    if output_format == "quiet":
        return format_summary(post)
    if output_format == "text":
        return format_post(post)
    line = {
        "received_at": iso_time(post.wall_time),
        "path": post.path,
        "status": post.status,
        "problems": post.problems,
        "payload": post.payload,
    }
    return json.dumps(line, separators=(",", ":"))


def format_summary(post: ReceivedPost) -> str:
    """One line for a POST: arrival time, path, batch size and the answer."""
    return (
        f"{time_of_day(post.wall_time)}  POST {post.path}  {len(post.visitors)} visitor(s), "
        f"{post.event_count} event(s), {len(post.body)} bytes -> {status_text(post.status)}"
    )


def format_post(post: ReceivedPost) -> str:
    """A readable, multi-line description of one POST.

    Example output::

        14:03:07.412  POST /v1/events  2 visitor(s), 3 event(s), 1187 bytes -> 204 No Content
          visitor 'user-1'  plan='pro'
            decision    new_checkout: new_checkout_test (feature-test) -> on
            conversion  purchase  revenue=4200 value=42.5 tags={'category': 'shoes'}
    """
    lines = [format_summary(post)]
    payload = post.payload
    if isinstance(payload, dict):
        lines.append(
            f"  account {payload.get('account_id')}, project {payload.get('project_id')}, "
            f"revision {payload.get('revision')}, "
            f"{payload.get('client_name')} {payload.get('client_version')}"
        )
    for visitor in post.visitor_events:
        lines.extend(_visitor_lines(visitor))
    for problem in post.problems:
        lines.append(f"  ! {problem}")
    return "\n".join(lines)


def _visitor_lines(visitor: VisitorEvents) -> Iterator[str]:
    attributes = " ".join(
        f"{key}={value!r}"
        for key, value in visitor.attributes.items()
        if not key.startswith("$opt_")
    )
    yield f"  visitor {visitor.visitor_id!r}" + (f"  {attributes}" if attributes else "")
    for impression in visitor.impressions:
        yield f"    decision    {describe_impression(impression)}"
    for conversion in visitor.conversions:
        yield f"    conversion  {_describe_conversion(conversion)}"


def describe_decision(decision: dict[str, Any]) -> str:
    """``flag: rule (rule type) -> variation`` for one decision of a payload.

    A decision made by ``activate()`` has no flag, so it reads
    ``rule (experiment) -> variation``; without metadata the ids are shown.
    """
    snapshot = {"decisions": [decision], "events": []}
    (impression,) = impressions_in({"visitors": [{"snapshots": [snapshot]}]})
    return describe_impression(impression)


def describe_conversion(event: dict[str, Any]) -> str:
    """``key  revenue=.. value=.. tags={..}`` for one conversion event of a payload."""
    (conversion,) = conversions_in({"visitors": [{"snapshots": [{"events": [event]}]}]})
    return _describe_conversion(conversion)
