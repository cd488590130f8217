"""install_sigterm_flush: flush, then chain the previous handler. The signal is
really delivered to this process (the handlers run in the main thread);
the default action (death by SIGTERM) is tested under waitress in
tests/e2e/test_waitress.py."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest
from optimizely import optimizely

from optimizely_middleware import (
    EventSender,
    RequestScopedEventDispatcher,
    create_client,
    install_sigterm_flush,
)
from optimizely_middleware.integrations.sigterm import SignalFlush
from tests.support.endpoint import EventEndpoint
from tests.support.fakes import RecordingSink


class FlushCounter(RecordingSink):
    def __init__(self) -> None:
        super().__init__()
        self.flushes: list[str] = []

    def flush(self, timeout: float | None = None) -> bool:
        self.flushes.append(threading.current_thread().name)
        return True


@pytest.fixture(autouse=True)
def restore_sigterm() -> Iterator[None]:
    original = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, original)


def slow_dispatcher_and_client(
    event_endpoint: EventEndpoint, datafile: str
) -> tuple[RequestScopedEventDispatcher, optimizely.Optimizely]:
    """A dispatcher posting to ``event_endpoint`` that sends nothing on its own (60 s)."""
    dispatcher = RequestScopedEventDispatcher(
        EventSender(endpoint=event_endpoint.url, flush_interval=60.0)
    )
    return dispatcher, create_client(dispatcher, datafile=datafile)


def count_delivered_when_chained(event_endpoint: EventEndpoint) -> list[int]:
    """Install a previous SIGTERM handler that records how many visitors had arrived."""
    delivered_when_chained: list[int] = []

    def previous(signum: int, frame: FrameType | None) -> None:
        delivered_when_chained.append(len(event_endpoint.all_visitors()))

    signal.signal(signal.SIGTERM, previous)
    return delivered_when_chained


def test_sigterm_delivers_the_queue_before_the_previous_handler_runs(
    event_endpoint: EventEndpoint, datafile: str
) -> None:
    dispatcher, client = slow_dispatcher_and_client(event_endpoint, datafile)
    delivered_when_chained = count_delivered_when_chained(event_endpoint)
    try:
        handler = install_sigterm_flush(dispatcher, timeout=10.0)
        assert isinstance(handler, SignalFlush)
        for i in range(5):
            with dispatcher.request_scope():
                client.create_user_context(f"term{i}").decide("new_checkout")
        # flush_interval=60: nothing leaves on its own during this test.
        assert event_endpoint.all_visitors() == []
        os.kill(os.getpid(), signal.SIGTERM)
        assert delivered_when_chained == [5]
        # The dispatcher stays usable after the signal.
        with dispatcher.request_scope():
            client.create_user_context("after").decide("new_checkout")
        assert dispatcher.flush(10)
        assert len(event_endpoint.all_visitors()) == 6
    finally:
        client.close()
        dispatcher.close(5)


def test_installing_twice_keeps_one_handler_and_flushes_each_dispatcher_once() -> None:
    chained: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: chained.append(signum))
    first, second = FlushCounter(), FlushCounter()
    one = RequestScopedEventDispatcher(first)
    handler = install_sigterm_flush(one)
    assert install_sigterm_flush(one) is handler
    assert install_sigterm_flush(RequestScopedEventDispatcher(second), timeout=7.0) is handler
    assert handler is not None and handler.timeout == 7.0
    assert signal.getsignal(signal.SIGTERM) is handler
    os.kill(os.getpid(), signal.SIGTERM)
    assert first.flushes == ["optimizely-signal-flush"]  # not on the interrupted thread
    assert second.flushes == ["optimizely-signal-flush"]
    assert chained == [signal.SIGTERM]  # the previous handler ran once


def test_an_ignored_signal_stays_ignored() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sink = FlushCounter()
    install_sigterm_flush(RequestScopedEventDispatcher(sink))
    os.kill(os.getpid(), signal.SIGTERM)  # we are still alive to assert
    assert sink.flushes == ["optimizely-signal-flush"]


def test_a_flush_that_overruns_is_reported_and_the_chain_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = threading.Event()

    class Stuck(FlushCounter):
        def flush(self, timeout: float | None = None) -> bool:
            return gate.wait(timeout)

    chained: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: chained.append(signum))
    install_sigterm_flush(RequestScopedEventDispatcher(Stuck()), timeout=0.2)
    try:
        with caplog.at_level(logging.INFO, logger="optimizely_middleware"):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        gate.set()
    assert chained == [signal.SIGTERM]
    assert "still unsent after 0.2 s" in caplog.text


def test_outside_the_main_thread_nothing_is_installed(caplog: pytest.LogCaptureFixture) -> None:
    result: list[Any] = []
    before = signal.getsignal(signal.SIGTERM)
    with caplog.at_level(logging.WARNING, logger="optimizely_middleware"):
        thread = threading.Thread(
            target=lambda: result.append(install_sigterm_flush(RequestScopedEventDispatcher()))
        )
        thread.start()
        thread.join()
    assert result == [None]
    assert signal.getsignal(signal.SIGTERM) is before
    assert "main thread" in caplog.text


def test_a_negative_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="timeout"):
        install_sigterm_flush(RequestScopedEventDispatcher(FlushCounter()), timeout=-1)


def test_without_a_dispatcher_every_live_sender_is_flushed(
    event_endpoint: EventEndpoint, datafile: str
) -> None:
    dispatcher, client = slow_dispatcher_and_client(event_endpoint, datafile)
    delivered_when_chained = count_delivered_when_chained(event_endpoint)
    try:
        install_sigterm_flush(timeout=10.0)  # e.g. from Django's settings.py
        with dispatcher.request_scope():
            client.create_user_context("anyone").decide("new_checkout")
        os.kill(os.getpid(), signal.SIGTERM)
        assert delivered_when_chained == [1]
    finally:
        client.close()
        dispatcher.close(5)
