"""ASGI middleware that sends a request's Optimizely events after the response.

Works with any ASGI app: Starlette, FastAPI, Quart, Django's ASGI handler, ...

Usage, with the dispatcher and the client built as in :mod:`optimizely_middleware`::

    from optimizely_middleware import OptimizelyASGIMiddleware

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
from typing import TYPE_CHECKING

from optimizely_middleware.dispatcher import RequestScopedEventDispatcher
from optimizely_middleware.errors import WiringWarning
from optimizely_middleware.integrations.adapters import checked_dispatcher, owned_by_outer
from optimizely_middleware.integrations.asgi_common import (
    STATE_KEY,
    ASGIApp,
    Message,
    ObservedCall,
    Receive,
    Scope,
    Send,
)
from optimizely_middleware.integrations.lifespan import (
    NO_LIFESPAN_HINT,
    LifespanResponder,
    flush_for_shutdown,
    is_serverless_scope,
    no_lifespan_risk,
    run_in_anyio_thread,
    run_in_own_thread,
)
from optimizely_middleware.scope import RequestScope

if TYPE_CHECKING:
    from optimizely.event_builder import Event
    from optimizely.optimizely import Optimizely

__all__ = ["OptimizelyASGIMiddleware", "run_in_anyio_thread", "run_in_own_thread"]

logger = logging.getLogger("optimizely_middleware")


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
                request = self.dispatcher.open_scope()
                await ObservedCall(self.dispatcher, request).run(self.app, scope, receive, send)
            finally:
                if flush:
                    await self.flush("flush_after_request")
        else:
            connection = WebSocketScope(self.dispatcher)
            await WebSocketCall(connection).run(self.app, scope, receive, send)

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


class WebSocketScope(RequestScope):
    """The scope of a WebSocket connection, handed over step by step.

    The ContextVar holds this object for the whole connection. Each event goes
    to the current step; :meth:`next_step` hands the step over (if it has
    events) and starts a new one.
    """

    __slots__ = ("_step", "dispatcher")

    def __init__(self, dispatcher: RequestScopedEventDispatcher) -> None:
        super().__init__(dispatcher.max_events_per_request)
        self.dispatcher = dispatcher
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
        self._step = self.dispatcher.open_scope()
        self.dispatcher.close_scope(step)

    def finish(self, *, failed: bool) -> None:
        self.close()
        self.dispatcher.close_scope(self._step, failed=failed)


class WebSocketCall(ObservedCall):
    """One WebSocket connection: events leave each time the app sends or receives.

    The same rule as HTTP: a client that closed the connection (a
    ``websocket.disconnect`` received, an ``OSError`` from send) is not a
    failure, nor is what the app raised because of it
    (``WebSocketDisconnect``); the status is that of a denial response.
    """

    __slots__ = ("connection",)

    start_type = "websocket.http.response.start"
    disconnect_type = "websocket.disconnect"

    def __init__(self, connection: WebSocketScope) -> None:
        super().__init__(connection.dispatcher, connection)
        self.connection = connection

    async def receive(self) -> Message:
        self.connection.next_step()
        return await super().receive()

    async def send(self, message: Message) -> None:
        self.connection.next_step()
        await super().send(message)

    async def close(self, *, failed: bool) -> None:
        self.connection.finish(failed=failed)
