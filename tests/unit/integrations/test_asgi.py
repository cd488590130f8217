"""OptimizelyASGIMiddleware driven as a bare ASGI app, with the real SDK.

The server side (receive/send) is played by the tests, so each test can look
at what the dispatcher had handed over at the moment of each ASGI message.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from optimizely.optimizely import Optimizely

from optimizely_middleware import (
    OptimizelyASGIMiddleware,
    RequestScopedEventDispatcher,
    WiringWarning,
    create_client,
)
from tests.support.asgi import Message, http_scope
from tests.support.fakes import RecordingSink, ShutdownSink


@pytest.fixture
def client(dispatcher: RequestScopedEventDispatcher, datafile: str) -> Iterator[Optimizely]:
    client = create_client(dispatcher, datafile=datafile)
    yield client
    client.close()


def fire(client: Optimizely, user: str = "user-1") -> None:
    """Two events: a decision and a conversion."""
    context = client.create_user_context(user, {"plan": "pro"})
    context.decide("new_checkout")
    context.track_event("purchase")


def response(status: int = 200, body: bytes = b"ok") -> list[Message]:
    return [
        {"type": "http.response.start", "status": status, "headers": []},
        {"type": "http.response.body", "body": body, "more_body": False},
    ]


def discarding_failures(
    datafile: str,
) -> tuple[RecordingSink, RequestScopedEventDispatcher, Optimizely]:
    """A sink, a dispatcher that discards failed requests' events, and a client on it."""
    sink = RecordingSink()
    dispatcher = RequestScopedEventDispatcher(sink, failed_requests="discard")
    return sink, dispatcher, create_client(dispatcher, datafile=datafile)


def responding_app(
    client: Optimizely | None = None, *, status: int = 200, then_fire: str | None = None
) -> Any:
    """An ASGI app that fires two events with ``client`` (if given), then answers ``status``.

    ``then_fire`` fires two more for that user after the body, as a background task would.
    """

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if client is not None:
            fire(client)
        for message in response(status):
            await send(message)
        if client is not None and then_fire is not None:
            fire(client, then_fire)

    return app


async def call_http(
    app: Any,
    scope: dict[str, Any] | None = None,
    on_send: Callable[[Message], None] | None = None,
) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if on_send is not None:
            on_send(message)
        sent.append(message)

    await app(scope or http_scope(), receive, send)
    return sent


def quiet(middleware: OptimizelyASGIMiddleware) -> OptimizelyASGIMiddleware:
    """Mark the middleware as having seen a lifespan startup (no warning)."""
    middleware._saw_lifespan = True
    return middleware


# -- HTTP ----------------------------------------------------------------------


def test_events_are_handed_over_once_after_the_app_returns(
    dispatcher: RequestScopedEventDispatcher, sink: ShutdownSink, client: Optimizely
) -> None:
    app = responding_app(client, then_fire="user-2")  # the second pair after the body
    handed_over_at_send: list[int] = []
    middleware = quiet(OptimizelyASGIMiddleware(app, dispatcher))
    sent = asyncio.run(
        call_http(middleware, on_send=lambda m: handed_over_at_send.append(len(sink.events)))
    )

    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert handed_over_at_send == [0, 0]
    assert len(sink.batches) == 1
    assert len(sink.batches[0]) == 4
    stats = dispatcher.stats()
    assert (stats["requests"], stats["failed_requests"], stats["open_scopes"]) == (1, 0, 0)
    assert stats["outside_scope_sent"] == 0


def test_dispatcher_can_be_passed_by_keyword(
    dispatcher: RequestScopedEventDispatcher, sink: ShutdownSink, client: Optimizely
) -> None:
    app = responding_app(client)
    asyncio.run(call_http(quiet(OptimizelyASGIMiddleware(app, dispatcher=dispatcher))))
    assert len(sink.batches) == 1


def test_other_scope_types_pass_through_untouched(dispatcher: RequestScopedEventDispatcher) -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.extend([scope, receive, send, dispatcher.current_scope()])

    async def receive() -> Message:
        return {}

    async def send(message: Message) -> None:
        pass

    scope = {"type": "custom"}
    asyncio.run(OptimizelyASGIMiddleware(app, dispatcher)(scope, receive, send))
    assert seen == [scope, receive, send, None]


def test_a_5xx_response_is_a_failed_request(datafile: str) -> None:
    sink, dispatcher, client = discarding_failures(datafile)
    app = responding_app(client, status=503)
    asyncio.run(call_http(quiet(OptimizelyASGIMiddleware(app, dispatcher))))
    stats = dispatcher.stats()
    assert sink.batches == []
    assert stats["failed_requests"] == 1
    assert stats["dropped"] == {"failed_request": 2}


def test_an_exception_propagates_unchanged_and_fails_the_request(
    dispatcher: RequestScopedEventDispatcher, sink: ShutdownSink, client: Optimizely
) -> None:
    error = LookupError("boom")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        fire(client)
        raise error

    with pytest.raises(LookupError) as raised:
        asyncio.run(call_http(quiet(OptimizelyASGIMiddleware(app, dispatcher))))
    assert raised.value is error
    stats = dispatcher.stats()
    assert (stats["requests"], stats["failed_requests"], stats["open_scopes"]) == (1, 1, 0)
    assert len(sink.batches) == 1  # failed_requests="keep" is the default


@pytest.mark.parametrize("how", ["send_raises", "receive_disconnect"])
def test_a_client_disconnect_loses_nothing(how: str, datafile: str) -> None:
    sink, dispatcher, client = discarding_failures(datafile)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        fire(client)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        fire(client, "user-2")
        if how == "receive_disconnect":
            assert (await receive())["type"] == "http.disconnect"
            raise RuntimeError("stream cancelled")
        await send({"type": "http.response.body", "body": b"x", "more_body": True})

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            raise OSError("client went away")  # what ASGI 2.4 servers do

    middleware = quiet(OptimizelyASGIMiddleware(app, dispatcher))
    with pytest.raises((OSError, RuntimeError)):
        asyncio.run(middleware(http_scope(), receive, send))
    assert [len(b) for b in sink.batches] == [4]
    assert dispatcher.stats()["failed_requests"] == 0


def test_an_oserror_the_app_raises_itself_is_a_failure(datafile: str) -> None:
    """Only an OSError from the server's send means the client went away."""
    sink, dispatcher, client = discarding_failures(datafile)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        fire(client)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise ConnectionRefusedError("the database is down")

    with pytest.raises(ConnectionRefusedError):
        asyncio.run(call_http(quiet(OptimizelyASGIMiddleware(app, dispatcher))))
    assert sink.batches == []
    assert dispatcher.stats()["dropped"] == {"failed_request": 2}


def test_a_cancelled_request_is_not_a_failure(datafile: str) -> None:
    sink, dispatcher, client = discarding_failures(datafile)
    started = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        fire(client)
        started.set()
        await asyncio.Event().wait()  # until cancelled (a server giving up on it)

    async def main() -> None:
        task = asyncio.create_task(call_http(quiet(OptimizelyASGIMiddleware(app, dispatcher))))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert [len(b) for b in sink.batches] == [2]
    assert dispatcher.stats()["failed_requests"] == 0


def test_nested_middleware_of_one_dispatcher_hands_over_once(
    dispatcher: RequestScopedEventDispatcher, sink: ShutdownSink, client: Optimizely
) -> None:
    app = responding_app(client)
    inner = quiet(OptimizelyASGIMiddleware(app, dispatcher))
    outer = quiet(OptimizelyASGIMiddleware(inner, dispatcher))
    asyncio.run(call_http(outer))
    assert [len(b) for b in sink.batches] == [2]
    assert dispatcher.stats()["requests"] == 1


def test_the_client_is_put_in_the_request_state(
    dispatcher: RequestScopedEventDispatcher, client: Optimizely
) -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["state"]["optimizely"])
        for message in response():
            await send(message)

    middleware = quiet(OptimizelyASGIMiddleware(app, dispatcher, client=client))
    asyncio.run(call_http(middleware, http_scope(state={"db": "kept"})))
    asyncio.run(call_http(middleware))
    assert seen == [client, client]


def test_a_client_that_bypasses_the_scope_is_reported(
    dispatcher: RequestScopedEventDispatcher, datafile: str
) -> None:
    wrong = Optimizely(datafile, event_dispatcher=dispatcher)
    try:
        with pytest.warns(WiringWarning, match="create_client"):
            OptimizelyASGIMiddleware(lambda s, r, w: None, dispatcher, client=wrong)  # type: ignore[arg-type, return-value]
    finally:
        wrong.close()


def test_options_are_checked(dispatcher: RequestScopedEventDispatcher) -> None:
    with pytest.raises(TypeError, match="RequestScopedEventDispatcher"):
        OptimizelyASGIMiddleware(lambda s, r, w: None, object())  # type: ignore[arg-type, return-value]
    with pytest.raises(ValueError, match="shutdown_timeout"):
        OptimizelyASGIMiddleware(lambda s, r, w: None, dispatcher, shutdown_timeout=-1)  # type: ignore[arg-type, return-value]


def test_http_without_lifespan_warns_once_with_the_fix(
    dispatcher: RequestScopedEventDispatcher,
) -> None:
    app = responding_app()
    middleware = OptimizelyASGIMiddleware(app, dispatcher)
    with pytest.warns(WiringWarning, match="lifespan") as record:
        asyncio.run(call_http(middleware))
        asyncio.run(call_http(middleware))
    messages = [str(w.message) for w in record if issubclass(w.category, WiringWarning)]
    assert len(messages) == 1
    assert "--lifespan on" in messages[0]
    assert "close_on_shutdown=False" in messages[0]

    silent = OptimizelyASGIMiddleware(app, dispatcher, close_on_shutdown=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", WiringWarning)
        asyncio.run(call_http(silent))


# -- websocket -----------------------------------------------------------------


def test_websocket_events_are_handed_over_at_each_step(datafile: str) -> None:
    sink = RecordingSink()
    # "raise" would make any event that reaches the dispatcher outside a scope fail
    dispatcher = RequestScopedEventDispatcher(sink, outside_scope="raise")
    client = create_client(dispatcher, datafile=datafile)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        client.create_user_context("on-connect").decide("new_checkout")
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                break
            fire(client, message["text"])
            await send({"type": "websocket.send", "text": "ok"})
            client.create_user_context(message["text"]).track_event("add_to_cart")
        client.create_user_context("on-close").track_event("add_to_cart")

    incoming = [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": "a"},
        {"type": "websocket.receive", "text": "b"},
        {"type": "websocket.disconnect", "code": 1000},
    ]
    handed_over: list[tuple[str, list[int]]] = []

    async def receive() -> Message:
        handed_over.append(("receive", [len(b) for b in sink.batches]))
        return incoming.pop(0)

    async def send(message: Message) -> None:
        handed_over.append((message["type"], [len(b) for b in sink.batches]))

    middleware = OptimizelyASGIMiddleware(app, dispatcher)
    asyncio.run(middleware({"type": "websocket", "path": "/ws"}, receive, send))

    assert handed_over == [
        ("receive", []),
        ("websocket.accept", [1]),  # the decision made on connect
        ("receive", [1]),
        ("websocket.send", [1, 2]),  # message "a": decide + track
        ("receive", [1, 2, 1]),  # the event after the reply
        ("websocket.send", [1, 2, 1, 2]),
        ("receive", [1, 2, 1, 2, 1]),
    ]
    assert [len(b) for b in sink.batches] == [1, 2, 1, 2, 1, 1]
    stats = dispatcher.stats()
    assert (stats["open_scopes"], stats["outside_scope_sent"], stats["failed_requests"]) == (
        0,
        0,
        0,
    )


def test_websocket_error_fails_the_last_step_only(datafile: str) -> None:
    sink, dispatcher, client = discarding_failures(datafile)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        fire(client, "before")
        await send({"type": "websocket.accept"})
        fire(client, "during")
        raise ValueError("handler bug")

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        pass

    with pytest.raises(ValueError):
        asyncio.run(OptimizelyASGIMiddleware(app, dispatcher)({"type": "websocket"}, receive, send))
    assert [len(b) for b in sink.batches] == [2]
    assert dispatcher.stats()["dropped"] == {"failed_request": 2}
    assert dispatcher.stats()["open_scopes"] == 0


@pytest.mark.parametrize("how", ["receive_disconnect", "send_raises"])
def test_a_websocket_client_that_goes_away_is_not_a_failure(how: str, datafile: str) -> None:
    """The HTTP rule: what the app raises once the client is gone (Starlette's
    WebSocketDisconnect, an OSError from send) does not fail the connection."""
    sink, dispatcher, client = discarding_failures(datafile)
    incoming = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1006}]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        fire(client, "leaving")
        if how == "receive_disconnect":
            assert (await receive())["type"] == "websocket.disconnect"
            raise RuntimeError("WebSocketDisconnect, say")
        await send({"type": "websocket.send", "text": "too late"})

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        if message["type"] == "websocket.send":
            raise OSError("client went away")  # what ASGI 2.4 servers do

    with pytest.raises((OSError, RuntimeError)):
        asyncio.run(OptimizelyASGIMiddleware(app, dispatcher)({"type": "websocket"}, receive, send))
    assert [len(b) for b in sink.batches] == [2]
    assert dispatcher.stats()["failed_requests"] == 0


def test_events_after_a_websocket_closed_follow_the_outside_scope_policy(
    datafile: str,
) -> None:
    sink = RecordingSink()
    dispatcher = RequestScopedEventDispatcher(sink)
    client = create_client(dispatcher, datafile=datafile)
    leftover: list[asyncio.Task[None]] = []
    closed = asyncio.Event()

    async def late() -> None:
        await closed.wait()  # until the connection has been handed over
        client.create_user_context("late").track_event("purchase")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        leftover.append(asyncio.create_task(late()))  # copies the context

    async def main() -> None:
        async def receive() -> Message:
            return {"type": "websocket.connect"}

        async def send(message: Message) -> None:
            pass

        await OptimizelyASGIMiddleware(app, dispatcher)({"type": "websocket"}, receive, send)
        closed.set()
        await leftover[0]

    asyncio.run(main())
    assert dispatcher.stats()["outside_scope_sent"] == 1
    assert [len(b) for b in sink.batches] == [1]
