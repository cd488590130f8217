"""WiringHints: each warning about the wiring is given once per dispatcher."""

from __future__ import annotations

import logging
import threading
import warnings

import pytest

from optimizely_middleware.errors import WiringWarning
from optimizely_middleware.wiring_hints import (
    BATCH_PROCESSOR_HINT,
    SDK_EVENT_THREAD_NAME,
    WiringHints,
)


def test_a_hint_is_logged_and_warned_once_per_key(caplog: pytest.LogCaptureFixture) -> None:
    hints = WiringHints()
    with caplog.at_level(logging.WARNING, logger="optimizely_middleware"):
        with pytest.warns(WiringWarning, match="first") as record:
            hints.warn_once("a", "first", category=WiringWarning)
            hints.warn_once("a", "first", category=WiringWarning)
        hints.warn_once("b", "second")  # logged only
    assert len(record) == 1
    assert [r.getMessage() for r in caplog.records] == ["first", "second"]


def test_an_event_on_the_sdk_event_thread_names_the_batch_processor() -> None:
    hints = WiringHints()
    caught: list[warnings.WarningMessage] = []

    def on_sdk_thread() -> None:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            hints.event_outside_scope(open_scopes=0)
        caught.extend(seen)

    thread = threading.Thread(target=on_sdk_thread, name=SDK_EVENT_THREAD_NAME)
    thread.start()
    thread.join()
    assert [str(w.message) for w in caught] == [BATCH_PROCESSOR_HINT]


def test_an_event_outside_a_request_is_a_hint_only_while_requests_are_served() -> None:
    hints = WiringHints()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        hints.event_outside_scope(open_scopes=0)  # a script, a job: nothing to say
        assert seen == []
        hints.event_outside_scope(open_scopes=1)
    assert len(seen) == 1 and "while requests are being served" in str(seen[0].message)
