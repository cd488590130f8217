"""Helpers shared by the WSGI, Flask, gunicorn and werkzeug tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from optimizely_middleware.dispatcher import (
    RequestScopedEventDispatcher,
    add_request_end_listener,
    remove_request_end_listener,
)
from tests.support.endpoint import ReceivedPost
from tests.support.fakes import visitor_id_of

ROOT = Path(__file__).resolve().parents[2]
DATAFILE_PATH = ROOT / "tests" / "data" / "datafile.json"


@contextmanager
def hand_offs(dispatcher: RequestScopedEventDispatcher) -> Iterator[list[tuple[list[str], bool]]]:
    """Records (visitor ids, failed) each time a request of ``dispatcher`` ends."""
    ended: list[tuple[list[str], bool]] = []

    def listener(d: RequestScopedEventDispatcher, events: list[Any], failed: bool) -> None:
        if d is dispatcher:
            ended.append(([visitor_id_of(e) for e in events], failed))

    add_request_end_listener(listener)
    try:
        yield ended
    finally:
        remove_request_end_listener(listener)


def visitor_ids(post: ReceivedPost) -> list[str]:
    return [v["visitor_id"] for v in post.visitors]


def event_keys(visitors: list[dict[str, Any]]) -> list[str]:
    return [e["key"] for v in visitors for s in v["snapshots"] for e in s["events"]]


def posts_of(posts: list[ReceivedPost], user: str) -> list[ReceivedPost]:
    """The POSTs that carry at least one event of ``user``."""
    return [p for p in posts if user in visitor_ids(p)]


def visitors_of(posts: list[ReceivedPost], user: str) -> list[dict[str, Any]]:
    return [v for p in posts for v in p.visitors if v["visitor_id"] == user]
