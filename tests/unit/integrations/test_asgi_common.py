"""ObservedCall (optimizely_middleware.integrations.asgi_common): one ASGI call in a
request's scope, its status and the client's disconnect observed, then the scope closed."""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager, nullcontext

import pytest

from optimizely_middleware import RequestScopedEventDispatcher
from optimizely_middleware.integrations import asgi_common as asgi
from tests.support.fakes import RecordingSink


def handed_over(sink: RecordingSink) -> list[object]:
    return list(sink.events)


class Exchange:
    """A dispatcher that discards failed requests, and one ObservedCall in it."""

    def __init__(self, *, incoming: str = "http.request", send_raises: bool = False) -> None:
        self.sink = RecordingSink()
        self.dispatcher = RequestScopedEventDispatcher(self.sink, failed_requests="discard")
        self.call = asgi.ObservedCall(self.dispatcher, self.dispatcher.open_scope())
        self.incoming = incoming
        self.send_raises = send_raises
        self.open_while_sending: list[bool] = []

    async def receive(self) -> asgi.Message:
        return {"type": self.incoming}

    async def send(self, message: asgi.Message) -> None:
        self.open_while_sending.append(not self.call.request.closed)
        if self.send_raises:
            raise OSError("client gone")

    def run(self, app: asgi.ASGIApp) -> None:
        asyncio.run(self.call.run(app, {"type": "http"}, self.receive, self.send))


def answering(exchange: Exchange, status: int, *, then_raise: bool = False) -> asgi.ASGIApp:
    async def app(scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        exchange.dispatcher.collect("event")
        await send({"type": "http.response.start", "status": status})
        await send({"type": "http.response.body", "body": b"x"})
        if then_raise:
            raise ValueError("bug after the body")

    return app


def test_a_call_that_answers_hands_its_events_over_once_it_returns() -> None:
    exchange = Exchange()
    exchange.run(answering(exchange, 200))
    assert exchange.open_while_sending == [True, True]
    assert exchange.call.status == 200
    assert exchange.call.request.closed
    assert handed_over(exchange.sink) == ["event"]


@pytest.mark.parametrize(
    ("status", "then_raise", "send_raises", "kept"),
    [
        (503, False, False, False),  # a 5xx answer fails the request
        (200, True, False, False),  # so does an exception after a 200
        (200, False, True, True),  # an OSError from send: the client went away
        (503, False, True, False),  # ...but a 5xx stays a failure
    ],
)
def test_the_status_and_the_disconnect_decide_whether_the_request_failed(
    status: int, then_raise: bool, send_raises: bool, kept: bool
) -> None:
    exchange = Exchange(send_raises=send_raises)
    raises: AbstractContextManager[object] = (
        pytest.raises((OSError, ValueError)) if then_raise or send_raises else nullcontext()
    )
    with raises:
        exchange.run(answering(exchange, status, then_raise=then_raise))
    assert exchange.call.request.closed
    assert exchange.call.disconnected is send_raises
    assert handed_over(exchange.sink) == (["event"] if kept else [])


def test_an_error_after_the_client_disconnected_is_not_a_failure() -> None:
    exchange = Exchange(incoming="http.disconnect")

    async def app(scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        exchange.dispatcher.collect("event")
        await receive()
        raise ValueError("read after http.disconnect")

    with pytest.raises(ValueError):
        exchange.run(app)
    assert exchange.call.disconnected
    assert handed_over(exchange.sink) == ["event"]
