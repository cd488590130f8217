"""Helpers shared by the Starlette, FastAPI and uvicorn tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest
from httpx import Response
from starlette.testclient import TestClient

from optimizely_middleware import EventSender, create_client
from optimizely_middleware.dispatcher import (
    RequestScopedEventDispatcher,
    add_request_end_listener,
    remove_request_end_listener,
)
from tests.support.endpoint import EventEndpoint, ReceivedPost
from tests.support.examples import load_example

Message = dict[str, Any]


def http_scope(**extra: Any) -> dict[str, Any]:
    """An ASGI HTTP scope for GET / (``extra`` replaces its keys)."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "headers": [],
        "server": ("127.0.0.1", 8000),
    }
    scope.update(extra)
    return scope


class Timeline:
    """What happened, in order: the response going out (recorded by the
    outermost ASGI wrapper, :meth:`wrap`) and each request scope closing
    (recorded by a request-end listener for one dispatcher)."""

    def __init__(self, dispatcher: RequestScopedEventDispatcher) -> None:
        self.dispatcher = dispatcher
        self.entries: list[str] = []
        self.handed_over: list[list[Any]] = []
        # time.monotonic() once each response's last body message was sent:
        # in-process (TestClient), the client then holds the whole response.
        self.ended_at: list[float] = []

    def on_request_end(
        self, dispatcher: RequestScopedEventDispatcher, events: list[Any], failed: bool
    ) -> None:
        if dispatcher is self.dispatcher:
            self.handed_over.append(events)
            self.entries.append(f"handed_over:{len(events)}:{'failed' if failed else 'ok'}")

    @contextmanager
    def listening(self) -> Iterator[Timeline]:
        add_request_end_listener(self.on_request_end)
        try:
            yield self
        finally:
            remove_request_end_listener(self.on_request_end)

    def wrap(self, app: Any) -> Any:
        async def recorded(scope: Any, receive: Any, send: Any) -> None:
            async def send_recorded(message: Message) -> None:
                await send(message)
                if message["type"] == "http.response.start":
                    self.entries.append(f"response.start:{message['status']}")
                elif message["type"] == "http.response.body" and not message.get("more_body"):
                    self.ended_at.append(time.monotonic())
                    self.entries.append("response.end")

            await app(scope, receive, send_recorded)

        return recorded


def visitor_ids(visitors: list[dict[str, Any]]) -> list[str]:
    return sorted(v["visitor_id"] for v in visitors)


def event_keys(posts: list[ReceivedPost]) -> list[str]:
    return sorted(
        event["key"]
        for post in posts
        for visitor in post.visitors
        for snapshot in visitor["snapshots"]
        for event in snapshot["events"]
    )


def posts_per_visitor(posts: list[ReceivedPost]) -> dict[str, int]:
    """For each visitor id, how many POSTs carried some of its events."""
    counts: dict[str, int] = {}
    for post in posts:
        for visitor_id in {v["visitor_id"] for v in post.visitors}:
            counts[visitor_id] = counts.get(visitor_id, 0) + 1
    return counts


def visit_the_example(
    name: str, endpoint: EventEndpoint, monkeypatch: pytest.MonkeyPatch, user: str
) -> tuple[Response, Response]:
    """``examples/<name>.py`` (the Starlette or FastAPI shop) sending to ``endpoint``,
    run through its lifespan: ``user`` opens ``/`` and ``/buy``. Both answer 200 and
    the user's two impressions and one purchase arrive; returns the two responses."""
    monkeypatch.setenv("OPTIMIZELY_EVENT_ENDPOINT", endpoint.url)
    example = load_example(name)
    try:
        with TestClient(example.app) as http:
            home = http.get("/", params={"user": user})
            buy = http.get("/buy", params={"user": user})
            assert home.status_code == buy.status_code == 200
            endpoint.wait_for_visitors(3)
        assert visitor_ids(endpoint.all_visitors()) == [user] * 3
        assert event_keys(endpoint.posts) == ["campaign_activated"] * 2 + ["purchase"]
    finally:
        example.optimizely.client.close()
    return home, buy


WiredT = TypeVar("WiredT", bound="Wired")


class Wired:
    """A dispatcher sending to the test endpoint, a client wired to it, and a timeline."""

    def __init__(self, endpoint: EventEndpoint, datafile: str, **options: Any) -> None:
        self.dispatcher = RequestScopedEventDispatcher(
            EventSender(endpoint=endpoint.url), **options
        )
        self.client = create_client(self.dispatcher, datafile=datafile)
        self.timeline = Timeline(self.dispatcher)

    @contextmanager
    def running(self: WiredT) -> Iterator[WiredT]:
        """Record the timeline while in use; close the dispatcher, then the client, after.

        Example::

            with Wired(endpoint, datafile).running() as wired:
                ...
        """
        with self.timeline.listening():
            yield self
        self.dispatcher.close(5)
        self.client.close()


def arrivals_by_visitor(posts: list[ReceivedPost]) -> dict[str, list[float]]:
    """For each visitor id, when each POST carrying its events reached the endpoint."""
    arrivals: dict[str, list[float]] = {}
    for post in posts:
        for visitor_id in {v["visitor_id"] for v in post.visitors}:
            arrivals.setdefault(visitor_id, []).append(post.arrived_at)
    return arrivals
