"""Listeners on each dispatcher, and adding one to every dispatcher of the process
(``optimizely_middleware.request_listeners``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from optimizely_middleware import (
    OptimizelyWSGIMiddleware,
    RequestScopedEventDispatcher,
    create_client,
)
from optimizely_middleware.request_listeners import (
    add_request_end_listener,
    add_unread_body_listener,
    remove_request_end_listener,
    remove_unread_body_listener,
)
from optimizely_middleware.scope import RequestScope
from tests.support.fakes import RecordingSink

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


def test_a_process_wide_listener_reaches_dispatchers_created_later(datafile: str) -> None:
    seen: list[tuple[RequestScopedEventDispatcher, int]] = []

    def listener(d: RequestScopedEventDispatcher, items: list[object], failed: bool) -> None:
        seen.append((d, len(items)))

    before = RequestScopedEventDispatcher(RecordingSink())
    add_request_end_listener(listener)
    try:
        after = RequestScopedEventDispatcher(RecordingSink())
        client = create_client(after, datafile=datafile)
        with after.request_scope():
            client.track("purchase", "user-21")
        with before.request_scope():
            pass
    finally:
        remove_request_end_listener(listener)
    with after.request_scope():
        pass
    assert seen == [(after, 1), (before, 0)]


def test_unread_body_listeners_hear_of_each_wsgi_body_until_removed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def hello(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    dispatcher = RequestScopedEventDispatcher(RecordingSink())
    app = OptimizelyWSGIMiddleware(hello, dispatcher)
    heard: list[RequestScope] = []

    def failing(d: RequestScopedEventDispatcher, scope: RequestScope) -> None:
        raise RuntimeError("a broken listener")

    def hear(d: RequestScopedEventDispatcher, scope: RequestScope) -> None:
        heard.append(scope)

    assert not dispatcher.unread_body_listeners
    add_unread_body_listener(failing)
    add_unread_body_listener(hear)
    try:
        body = app({}, lambda status, headers, exc_info=None: lambda data: None)
        assert len(heard) == 1 and not heard[0].closed  # the body is still to be taken
        assert list(body) == [b"ok"]
        assert heard[0].closed
    finally:
        remove_unread_body_listener(failing)
        remove_unread_body_listener(hear)
    assert not dispatcher.unread_body_listeners
    assert "A listener of unread bodies raised; ignored." in caplog.text
    app({}, lambda status, headers, exc_info=None: lambda data: None)
    assert len(heard) == 1
