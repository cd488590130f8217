"""The lifespan side of OptimizelyASGIMiddleware (optimizely_middleware.integrations.lifespan):
the shutdown flush, which leaves the dispatcher usable, the per-server
decision on a missing lifespan, serverless requests and the shutdown report."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.to_thread
import pytest

from optimizely_middleware import (
    EventSender,
    OptimizelyASGIMiddleware,
    RequestScopedEventDispatcher,
    WiringWarning,
    create_client,
)
from optimizely_middleware.integrations.lifespan import (
    no_lifespan_risk,
    run_in_anyio_thread,
    run_in_own_thread,
    unsent_summary,
)
from tests.support.asgi import Message, http_scope
from tests.support.endpoint import EventEndpoint
from tests.support.fakes import ShutdownSink


async def call_http(app: Any, scope: dict[str, Any] | None = None) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope or http_scope(), receive, send)
    return sent


async def run_lifespan(
    app: Any, *, after_startup: Callable[[], Any] | None = None
) -> tuple[list[Message], list[Any]]:
    """Play the server's side of the lifespan protocol; return what the app
    sent and, for each message, what the sink had been asked to do by then."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    sent: list[Message] = []
    startup_answered = asyncio.Event()
    seen_when_sent: list[Any] = []

    async def receive() -> Message:
        return await inbox.get()

    async def send(message: Message) -> None:
        sent.append(message)
        sender = app.dispatcher.sender
        seen_when_sent.append(list(getattr(sender, "threads", [])))
        if message["type"].startswith("lifespan.startup"):
            startup_answered.set()

    task = asyncio.create_task(app({"type": "lifespan", "state": {}}, receive, send))
    await inbox.put({"type": "lifespan.startup"})
    await startup_answered.wait()
    if after_startup is not None:
        result = after_startup()
        if asyncio.iscoroutine(result):
            await result
    await inbox.put({"type": "lifespan.shutdown"})
    await task
    return sent, seen_when_sent


async def lifespan_app(scope: Any, receive: Any, send: Any) -> None:
    """An app that speaks the lifespan protocol (like Starlette's router)."""
    if scope["type"] == "http":
        await ok_response(send)
        return
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def ok_response(send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok", "more_body": False})


async def http_only_app(scope: Any, receive: Any, send: Any) -> None:
    assert scope["type"] == "http", "this app knows nothing about lifespan"
    await ok_response(send)


async def returns_at_once(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await ok_response(send)


# -- the shutdown flush ----------------------------------------------------------


@pytest.mark.parametrize("app", [lifespan_app, http_only_app, returns_at_once])
def test_lifespan_shutdown_flushes_on_a_thread_of_its_own_and_does_not_close(
    app: Any, dispatcher: RequestScopedEventDispatcher, sink: ShutdownSink
) -> None:
    middleware = OptimizelyASGIMiddleware(app, dispatcher)
    loop_thread = threading.current_thread().name
    sent, seen_when_sent = asyncio.run(run_lifespan(middleware))

    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    # flushed before the server hears "complete"
    assert seen_when_sent == [[], ["optimizely-shutdown"]]
    assert loop_thread not in sink.threads
    assert not sink.closed  # the exit handler closes it, not the lifespan
    with warnings.catch_warnings():
        warnings.simplefilter("error", WiringWarning)
        asyncio.run(call_http(middleware))  # startup was seen: no warning


def test_a_failed_startup_propagates_and_leaves_the_dispatcher_alone(
    dispatcher: RequestScopedEventDispatcher, sink: ShutdownSink
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})
        raise ConnectionError("no database")

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        sent.append(message)

    with pytest.raises(ConnectionError):
        asyncio.run(OptimizelyASGIMiddleware(app, dispatcher)({"type": "lifespan"}, receive, send))
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert not sink.closed
    assert sink.threads == []


def test_close_on_shutdown_false_leaves_the_dispatcher_to_its_owner(
    dispatcher: RequestScopedEventDispatcher, sink: ShutdownSink
) -> None:
    middleware = OptimizelyASGIMiddleware(lifespan_app, dispatcher, close_on_shutdown=False)
    sent, _ = asyncio.run(run_lifespan(middleware))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert not sink.closed
    assert sink.threads == []


def test_the_loop_keeps_running_while_the_shutdown_flush_is_held() -> None:
    sink = ShutdownSink(hold=True)
    middleware = OptimizelyASGIMiddleware(lifespan_app, RequestScopedEventDispatcher(sink))
    released_by_the_loop = []

    async def release_from_the_loop() -> None:
        # Runs on the loop while the shutdown flush waits on the gate: if the
        # flush blocked the loop, the gate would only open by its own timeout.
        assert await asyncio.to_thread(sink.flush_started.wait, 10)
        released_by_the_loop.append(True)
        sink.gate.set()

    async def main() -> list[Message]:
        releaser = asyncio.create_task(release_from_the_loop())
        sent, _ = await run_lifespan(middleware)
        await releaser
        return sent

    sent = asyncio.run(main())
    assert released_by_the_loop == [True]
    assert sent[-1]["type"] == "lifespan.shutdown.complete"
    assert sink.threads == ["optimizely-shutdown"]


def test_a_sender_that_overruns_the_deadline_does_not_hold_the_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = ShutdownSink(hold=True)
    middleware = OptimizelyASGIMiddleware(
        lifespan_app, RequestScopedEventDispatcher(sink), shutdown_timeout=0.1
    )
    try:
        with caplog.at_level(logging.WARNING, logger="optimizely_middleware"):
            sent, _ = asyncio.run(run_lifespan(middleware))
        assert sent[-1]["type"] == "lifespan.shutdown.complete"
        assert not sink.gate.is_set()  # the flush was still held when shutdown completed
        assert "shutdown_timeout=0.1" in caplog.text
    finally:
        sink.gate.set()


def test_the_shutdown_thread_does_not_need_the_thread_pool() -> None:
    """With every token of anyio's default limiter (the pool that sync
    endpoints use) taken, both ways of running the flush still finish."""
    ran: list[str] = []

    async def main() -> tuple[bool, bool]:
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = 1
        async with limiter:
            own = await run_in_own_thread(lambda: ran.append("own"), name="t", timeout=10)
            via_anyio = await run_in_anyio_thread(lambda: ran.append("anyio"), timeout=10)
        return own, via_anyio

    assert anyio.run(main) == (True, True)
    assert ran == ["own", "anyio"]


def test_run_in_own_thread_reports_an_overrun_and_logs_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = threading.Event()

    def fails() -> None:
        raise OSError("sender broke")

    async def main() -> tuple[bool, bool, bool]:
        overrun = await run_in_own_thread(lambda: gate.wait(10), name="t", timeout=0.05)
        gate.set()
        failed = await run_in_own_thread(fails, name="t", timeout=10)
        failed_anyio = await run_in_anyio_thread(fails, timeout=10)
        return overrun, failed, failed_anyio

    with caplog.at_level(logging.ERROR, logger="optimizely_middleware"):
        assert asyncio.run(main()) == (False, True, True)
    errors = [r for r in caplog.records if r.exc_info and "sender broke" in str(r.exc_info[1])]
    assert len(errors) == 2


# -- with the real sender and the real SDK ------------------------------------------


@pytest.fixture
def real(
    event_endpoint: EventEndpoint, datafile: str
) -> Iterator[tuple[Any, RequestScopedEventDispatcher]]:
    """An ASGI app (2 events per request, the user from the path) on a real sender."""
    dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=event_endpoint.url))
    client = create_client(dispatcher, datafile=datafile)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan_app(scope, receive, send)
            return
        user = client.create_user_context(scope["path"].strip("/"), {"plan": "pro"})
        user.decide("new_checkout")
        user.track_event("purchase")
        await ok_response(send)

    yield app, dispatcher
    client.close()
    dispatcher.close(10)


def test_every_invocation_delivers_after_many_lifespan_cycles(
    real: tuple[Any, RequestScopedEventDispatcher], event_endpoint: EventEndpoint
) -> None:
    """Mangum's lifespan="auto": startup, one request, shutdown, again and again."""
    app, dispatcher = real
    middleware = OptimizelyASGIMiddleware(app, dispatcher)
    for i in range(5):

        async def request(i: int = i) -> None:
            await call_http(middleware, http_scope(path=f"/cycle{i}"))

        asyncio.run(run_lifespan(middleware, after_startup=request))
        # No waiting: the shutdown flush delivered this invocation's events.
        assert len(event_endpoint.all_visitors()) == 2 * (i + 1)
    assert middleware.dispatcher.stats()["dropped"] == {}


def test_the_shutdown_warning_counts_events_in_flight(
    real: tuple[Any, RequestScopedEventDispatcher],
    event_endpoint: EventEndpoint,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each POST is held 3 s; the shutdown flush gives up after 1 s."""
    app, dispatcher = real
    middleware = OptimizelyASGIMiddleware(app, dispatcher, shutdown_timeout=1.0)
    event_endpoint.delay = 3.0

    async def requests() -> None:
        for i in range(20):
            await call_http(middleware, http_scope(path=f"/held{i}"))

    with caplog.at_level(logging.WARNING, logger="optimizely_middleware"):
        asyncio.run(run_lifespan(middleware, after_startup=requests))
    [warning] = [r.getMessage() for r in caplog.records if "shutdown_timeout" in r.getMessage()]
    match = re.search(r"(\d+) events not confirmed by the endpoint \((\d+) in flight", warning)
    assert match, warning
    # Nothing can have been confirmed 1 s into a 3 s hold: all 40 are unconfirmed.
    assert int(match.group(1)) == 40, warning
    assert int(match.group(2)) > 0, warning
    # The flush gave up, but the sender is usable and goes on delivering.
    assert dispatcher.flush(30)
    assert len(event_endpoint.all_visitors()) == 40


def test_unsent_summary_falls_back_without_pending() -> None:
    assert unsent_summary({"in_flight": 5, "queue_depth": 7, "dropped": {}}).startswith(
        "12 events not confirmed by the endpoint (5 in flight, 7 queued)"
    )
    assert unsent_summary({"in_flight": 5, "queue_depth": 7, "pending": 13}).startswith("13 ")
    assert unsent_summary({}).startswith("0 events")


# -- no lifespan: decided per server ----------------------------------------------------


def test_no_lifespan_warns_under_uvicorn_and_unknown_servers_but_not_under_daphne() -> None:
    assert no_lifespan_risk({"uvicorn.server": object()}) is not None
    assert "re-raises SIGTERM" in (no_lifespan_risk({"uvicorn.server": object()}) or "")
    assert no_lifespan_risk({}) == ""
    assert no_lifespan_risk({"daphne.server": object()}) is None


def test_no_false_warning_when_the_server_exits_normally(
    dispatcher: RequestScopedEventDispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in [m for m in sys.modules if m.startswith("uvicorn")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "daphne.server", object())  # type: ignore[arg-type]
    middleware = OptimizelyASGIMiddleware(http_only_app, dispatcher)
    with warnings.catch_warnings():
        warnings.simplefilter("error", WiringWarning)
        asyncio.run(call_http(middleware))


def test_without_lifespan_under_uvicorn_the_warning_says_why(
    dispatcher: RequestScopedEventDispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn.server", object())  # type: ignore[arg-type]
    middleware = OptimizelyASGIMiddleware(http_only_app, dispatcher)
    with pytest.warns(WiringWarning, match="re-raises SIGTERM"):
        asyncio.run(call_http(middleware))


# -- serverless --------------------------------------------------------------------------


def test_a_mangum_request_is_flushed_before_the_handler_returns_without_a_warning(
    dispatcher: RequestScopedEventDispatcher, sink: ShutdownSink
) -> None:
    middleware = OptimizelyASGIMiddleware(http_only_app, dispatcher)
    with warnings.catch_warnings():
        warnings.simplefilter("error", WiringWarning)
        sent = asyncio.run(call_http(middleware, http_scope(**{"aws.event": {}})))
    assert sent[-1]["type"] == "http.response.body"
    assert sink.threads == ["optimizely-shutdown"]


def test_flush_after_request_can_be_forced_or_turned_off(
    dispatcher: RequestScopedEventDispatcher, sink: ShutdownSink
) -> None:
    forced = OptimizelyASGIMiddleware(http_only_app, dispatcher, flush_after_request=True)
    asyncio.run(call_http(forced))
    assert sink.threads == ["optimizely-shutdown"]
    off = OptimizelyASGIMiddleware(
        http_only_app, dispatcher, flush_after_request=False, close_on_shutdown=False
    )
    asyncio.run(call_http(off, http_scope(**{"aws.event": {}})))
    assert sink.threads == ["optimizely-shutdown"]
