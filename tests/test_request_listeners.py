"""Process-wide request-end listeners (``optimizely_middleware.request_listeners``)."""

from __future__ import annotations

from optimizely_middleware import RequestScopedEventDispatcher, create_client
from optimizely_middleware.request_listeners import (
    add_request_end_listener,
    remove_request_end_listener,
)
from tests.support import RecordingSink


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
