"""What the ASGI adapters share: the protocol's types and one observed call in a scope.

:class:`ObservedCall` is the one send-state machine of the package: it runs
an ASGI callable inside a request scope, observes the status the response
starts with and whether the client went away, and closes the scope with
:func:`~optimizely_middleware.request_failed` however the call ends. The
ASGI middleware (HTTP and, through a subclass, WebSocket) and the Starlette
decorator's :class:`~optimizely_middleware.starlette.DeferredResponse` use it.

Usage::

    from optimizely_middleware.integrations.asgi_common import ObservedCall

    async def __call__(self, scope, receive, send):
        call = ObservedCall(self.dispatcher, self.dispatcher.open_scope())
        await call.run(self.app, scope, receive, send)   # the scope is closed after
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from optimizely_middleware.scope import request_failed

if TYPE_CHECKING:
    from optimizely_middleware.dispatcher import RequestScopedEventDispatcher
    from optimizely_middleware.scope import RequestScope

__all__ = ["STATE_KEY", "ASGIApp", "Message", "ObservedCall", "Receive", "Scope", "Send"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The key under ``scope["state"]`` (``request.state.optimizely`` in Starlette).
STATE_KEY = "optimizely"


class ObservedCall:
    """One ASGI call inside ``request``: status and disconnect observed, then the scope closed.

    :meth:`run` activates ``request``, calls ``app`` with a ``receive`` and a
    ``send`` that watch the exchange, and closes the scope when the call
    returns or raises, failed or not by
    :func:`~optimizely_middleware.request_failed`. A client that went away
    (a disconnect message received, an ``OSError`` from the server's
    ``send``) is not a failure, nor is what the app raised because of it.
    Exceptions propagate unchanged.

    A subclass names the message types of another protocol
    (:attr:`start_type`, :attr:`disconnect_type`) and overrides
    :meth:`close` to end its scope in its own way.

    Example::

        await ObservedCall(dispatcher, dispatcher.open_scope()).run(app, scope, receive, send)
    """

    __slots__ = ("_receive", "_send", "disconnected", "dispatcher", "request", "status")

    #: The message that carries the response's status.
    start_type = "http.response.start"
    #: The message ``receive`` returns once the client has gone.
    disconnect_type = "http.disconnect"

    def __init__(self, dispatcher: RequestScopedEventDispatcher, request: RequestScope) -> None:
        self.dispatcher = dispatcher
        self.request = request
        self.status: int | None = None
        self.disconnected = False

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        failed = False
        try:
            with self.dispatcher.activate(self.request):
                await app(scope, self.receive, self.send)
        except BaseException as exc:
            failed = request_failed(status=self.status, exc=exc, disconnected=self.disconnected)
            raise
        else:
            failed = request_failed(status=self.status, disconnected=self.disconnected)
        finally:
            await self.close(failed=failed)

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == self.disconnect_type:
            self.disconnected = True
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == self.start_type:
            self.status = int(message["status"])
        try:
            await self._send(message)
        except OSError:
            # ASGI 2.4 servers raise OSError on send once the client is gone
            # (Starlette's StreamingResponse turns it into ClientDisconnect).
            self.disconnected = True
            raise

    async def close(self, *, failed: bool) -> None:
        """End the scope: hand its events over."""
        await self.dispatcher.aclose_scope(self.request, failed=failed)
