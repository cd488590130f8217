"""ASGI middleware that sends a request's Optimizely events after the response.

Works with any ASGI app: Starlette, FastAPI, Quart, Django's ASGI handler, ...

Usage::

    from optimizely_middleware import (
        OptimizelyASGIMiddleware,
        RequestScopedEventDispatcher,
        create_client,
    )

    dispatcher = RequestScopedEventDispatcher()
    client = create_client(dispatcher, datafile=datafile_json)

    app = OptimizelyASGIMiddleware(app, dispatcher, client=client)
    # or, for Starlette and FastAPI:
    app.add_middleware(OptimizelyASGIMiddleware, dispatcher=dispatcher, client=client)

Each HTTP request gets its own scope. The events the SDK produces while the
app handles it (in the endpoint, in a thread-pool endpoint, while a streaming
body is produced, in ``BackgroundTasks``) are handed over in one non-blocking
call when the app call returns. On ``lifespan.shutdown`` the dispatcher is
flushed within ``shutdown_timeout`` seconds, in a thread of its own, and stays
usable (see :mod:`optimizely_middleware.integrations.lifespan`); under Mangum it is also
flushed after each request.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from optimizely_middleware.dispatcher import RequestScopedEventDispatcher
from optimizely_middleware.errors import WiringWarning
from optimizely_middleware.integrations.adapters import checked_dispatcher, owned_by_outer
from optimizely_middleware.integrations.lifespan import (
    NO_LIFESPAN_HINT,
    LifespanResponder,
    flush_for_shutdown,
    is_serverless_scope,
    no_lifespan_risk,
    run_in_anyio_thread,
    run_in_own_thread,
)
from optimizely_middleware.scope import RequestScope, request_failed

if TYPE_CHECKING:
    from optimizely.event_builder import Event
    from optimizely.optimizely import Optimizely

__all__ = ["OptimizelyASGIMiddleware", "run_in_anyio_thread", "run_in_own_thread"]

logger = logging.getLogger("optimizely_middleware")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The key under ``scope["state"]`` (``request.state.optimizely`` in Starlette).
STATE_KEY = "optimizely"


class OptimizelyASGIMiddleware:
    """Hands the Optimizely events of each request over after the response.

    A pure ASGI middleware (no ``BaseHTTPMiddleware``): each ``http`` request
    runs in a request scope of ``dispatcher`` that is handed over once, when the
    app call returns or raises. A request that raised (other than because the
    client went away) or answered with a 5xx status is a failed request for the
    dispatcher's ``failed_requests`` policy; exceptions propagate unchanged.

    ``lifespan`` is passed through to the app; when the server sends
    ``lifespan.shutdown``, the dispatcher is flushed within ``shutdown_timeout``
    seconds, on a thread of its own, before the server is told the shutdown is
    complete. The dispatcher stays usable (Mangum runs a lifespan around every
    invocation); it is closed by the exit handler. An app that does not speak
    the lifespan protocol gets it answered by the middleware. Under uvicorn
    this is the only shutdown hook that runs: ``atexit`` handlers do not.

    ``websocket`` connections are handed over step by step: the events fired
    since the last step go out each time the app sends a message or waits for
    the next one, so nothing is held for the life of a long connection.

    Options:

    * ``client``: the Optimizely client; put in ``scope["state"]`` so endpoints
      read it as ``request.state.optimizely`` (and checked for wiring).
    * ``shutdown_timeout``: seconds to deliver what is queued at shutdown
      (and, with ``flush_after_request``, after each request).
    * ``close_on_shutdown``: set False when the dispatcher is shared and flushed
      elsewhere (no flush at lifespan shutdown, no missing-lifespan warning).
    * ``flush_after_request``: flush after every request, for platforms that
      freeze the process once the response is returned. ``None`` (default):
      on when the request comes from Mangum (``scope["aws.event"]``).

    Example::

        app = Starlette(routes=routes)
        app.add_middleware(OptimizelyASGIMiddleware, dispatcher=dispatcher, client=client)
    """

    def __init__(
        self,
        app: ASGIApp,
        dispatcher: RequestScopedEventDispatcher,
        *,
        client: Optimizely | None = None,
        shutdown_timeout: float = 5.0,
        close_on_shutdown: bool = True,
        flush_after_request: bool | None = None,
    ) -> None:
        if shutdown_timeout < 0:
            raise ValueError("shutdown_timeout must not be negative")
        self.dispatcher = checked_dispatcher("OptimizelyASGIMiddleware", dispatcher, client)
        self.app = app
        self.client = client
        self.shutdown_timeout = shutdown_timeout
        self.close_on_shutdown = close_on_shutdown
        self.flush_after_request = flush_after_request
        self._saw_lifespan = False
        self._warned_no_lifespan = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type == "lifespan":
            await LifespanResponder(self)(scope, receive, send)
            return
        if scope_type not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.client is not None:
            scope.setdefault("state", {})[STATE_KEY] = self.client
        if owned_by_outer(self.dispatcher):
            await self.app(scope, receive, send)
            return
        if scope_type == "http":
            flush = self.flush_after_request
            if flush is None:
                flush = is_serverless_scope(scope)
            if not flush:
                self._check_lifespan()
            try:
                await HTTPResponder(self.app, self.dispatcher)(scope, receive, send)
            finally:
                if flush:
                    await self.flush("flush_after_request")
        else:
            await WebSocketResponder(self.app, self.dispatcher)(scope, receive, send)

    def _check_lifespan(self) -> None:
        if self._saw_lifespan or self._warned_no_lifespan or not self.close_on_shutdown:
            return
        self._warned_no_lifespan = True
        why = no_lifespan_risk()
        if why is None:
            logger.info(
                "This server sends no ASGI lifespan events; it exits normally, so the "
                "exit handler delivers the Optimizely events still queued then."
            )
            return
        hint = NO_LIFESPAN_HINT.format(why=why)
        logger.warning(hint)
        warnings.warn(hint, WiringWarning, stacklevel=3)

    async def shutdown(self) -> None:
        """Flush the dispatcher at lifespan shutdown, without blocking the event
        loop; it stays usable for later requests."""
        if self.close_on_shutdown:
            await self.flush("shutdown_timeout")

    async def flush(self, setting: str) -> None:
        finished = await run_in_own_thread(
            lambda: flush_for_shutdown(self.dispatcher, self.shutdown_timeout),
            name="optimizely-shutdown",
            # The flush's own timeout bounds the thread; this only guards the loop
            # against a sender that overruns it.
            timeout=self.shutdown_timeout + 1.0,
        )
        if not finished:
            logger.warning(
                "Flushing the Optimizely event sender took longer than %s (shutdown_timeout="
                "%.1f s); the server goes on.",
                setting,
                self.shutdown_timeout,
            )


class HTTPResponder:
    """One HTTP request: a scope around the app call, the status observed on send."""

    __slots__ = ("app", "disconnected", "dispatcher", "receive", "send", "status")

    def __init__(self, app: ASGIApp, dispatcher: RequestScopedEventDispatcher) -> None:
        self.app = app
        self.dispatcher = dispatcher
        self.status = 0
        self.disconnected = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.receive = receive
        self.send = send
        request = self.dispatcher.open_scope()
        failed = False
        try:
            with self.dispatcher.activate(request):
                await self.app(scope, self.receive_observed, self.send_observed)
        except BaseException as exc:
            failed = request_failed(status=self.status, exc=exc, disconnected=self.disconnected)
            raise
        else:
            failed = request_failed(status=self.status, disconnected=self.disconnected)
        finally:
            await self.dispatcher.aclose_scope(request, failed=failed)

    async def receive_observed(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.disconnect":
            self.disconnected = True
        return message

    async def send_observed(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        try:
            await self.send(message)
        except OSError:
            # ASGI 2.4 servers raise OSError on send once the client is gone.
            self.disconnected = True
            raise


class WebSocketScope(RequestScope):
    """The scope of a WebSocket connection, handed over step by step.

    The ContextVar holds this object for the whole connection. Each event goes
    to the current step; :meth:`next_step` hands the step over (if it has
    events) and starts a new one.
    """

    __slots__ = ("_dispatcher", "_step")

    def __init__(self, dispatcher: RequestScopedEventDispatcher) -> None:
        super().__init__(dispatcher.max_events_per_request)
        self._dispatcher = dispatcher
        self._step = dispatcher.open_scope()

    def add(self, event: Event) -> bool | None:
        while True:
            step = self._step
            added = step.add(event)
            if added is not None or self.closed:
                self.overflowed = step.overflowed
                return added
            # The step was handed over between the read and the add: the next
            # one is already in place (see next_step), so add to that.

    def next_step(self) -> None:
        step = self._step
        if not len(step):
            return
        self._step = self._dispatcher.open_scope()
        self._dispatcher.close_scope(step)

    def finish(self, *, failed: bool) -> None:
        self.close()
        self._dispatcher.close_scope(self._step, failed=failed)


class WebSocketResponder:
    """One WebSocket connection: events leave each time the app sends or receives."""

    __slots__ = ("app", "dispatcher")

    def __init__(self, app: ASGIApp, dispatcher: RequestScopedEventDispatcher) -> None:
        self.app = app
        self.dispatcher = dispatcher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        connection = WebSocketScope(self.dispatcher)
        # The same rule as HTTP: a client that closed the connection (a
        # websocket.disconnect received, an OSError from send) is not a failure,
        # nor is what the app raised because of it (WebSocketDisconnect).
        disconnected = False
        status: int | None = None  # of a denial response (websocket.http.response.start)

        async def receive_next() -> Message:
            nonlocal disconnected
            connection.next_step()
            message = await receive()
            if message["type"] == "websocket.disconnect":
                disconnected = True
            return message

        async def send_next(message: Message) -> None:
            nonlocal disconnected, status
            connection.next_step()
            if message["type"] == "websocket.http.response.start":
                status = int(message["status"])
            try:
                await send(message)
            except OSError:
                disconnected = True
                raise

        failed = False
        try:
            with self.dispatcher.activate(connection):
                await self.app(scope, receive_next, send_next)
        except BaseException as exc:
            failed = request_failed(status=status, exc=exc, disconnected=disconnected)
            raise
        else:
            failed = request_failed(status=status, disconnected=disconnected)
        finally:
            connection.finish(failed=failed)
