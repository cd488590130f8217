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
flushed and closed within ``shutdown_timeout`` seconds, in a thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from optimizely_middleware.client import check_client
from optimizely_middleware.dispatcher import RequestScopedEventDispatcher
from optimizely_middleware.errors import WiringWarning
from optimizely_middleware.outcome import request_failed
from optimizely_middleware.scope import RequestScope

if TYPE_CHECKING:
    from optimizely.event_builder import Event
    from optimizely.optimizely import Optimizely

__all__ = ["OptimizelyASGIMiddleware"]

logger = logging.getLogger("optimizely_middleware")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The key under ``scope["state"]`` (``request.state.optimizely`` in Starlette).
STATE_KEY = "optimizely"

NO_LIFESPAN_HINT = (
    "OptimizelyASGIMiddleware is serving HTTP requests but has not seen a lifespan "
    "startup, so it cannot flush Optimizely events when the server stops and the "
    "events of the last requests may be lost. Run the server with the lifespan "
    "protocol on (uvicorn's default; --lifespan on), add the middleware to the "
    "outermost app rather than to a mounted sub-app, or pass close_on_shutdown=False "
    "and call dispatcher.close(timeout) from your own shutdown code."
)


class OptimizelyASGIMiddleware:
    """Hands the Optimizely events of each request over after the response.

    A pure ASGI middleware (no ``BaseHTTPMiddleware``): each ``http`` request
    runs in a request scope of ``dispatcher`` that is handed over once, when the
    app call returns or raises. A request that raised (other than because the
    client went away) or answered with a 5xx status is a failed request for the
    dispatcher's ``failed_requests`` policy; exceptions propagate unchanged.

    ``lifespan`` is passed through to the app; when the server sends
    ``lifespan.shutdown``, the dispatcher is flushed and closed within
    ``shutdown_timeout`` seconds, on a thread of its own, before the server is
    told the shutdown is complete. An app that does not speak the lifespan
    protocol gets it answered by the middleware. Under uvicorn this is the only
    shutdown hook that runs: ``atexit`` handlers do not.

    ``websocket`` connections are handed over step by step: the events fired
    since the last step go out each time the app sends a message or waits for
    the next one, so nothing is held for the life of a long connection.

    Options:

    * ``client``: the Optimizely client; put in ``scope["state"]`` so endpoints
      read it as ``request.state.optimizely`` (and checked for wiring).
    * ``shutdown_timeout``: seconds to deliver what is queued at shutdown.
    * ``close_on_shutdown``: set False when the dispatcher is shared and closed
      elsewhere (it also silences the missing-lifespan warning).

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
    ) -> None:
        if not isinstance(dispatcher, RequestScopedEventDispatcher):
            raise TypeError(
                "OptimizelyASGIMiddleware needs a RequestScopedEventDispatcher, "
                f"not {type(dispatcher).__name__}"
            )
        if shutdown_timeout < 0:
            raise ValueError("shutdown_timeout must not be negative")
        if client is not None:
            check_client(client, dispatcher)
        self.app = app
        self.dispatcher = dispatcher
        self.client = client
        self.shutdown_timeout = shutdown_timeout
        self.close_on_shutdown = close_on_shutdown
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
        if self.dispatcher.current_scope() is not None:
            # An outer middleware of the same dispatcher already owns this request.
            await self.app(scope, receive, send)
            return
        if scope_type == "http":
            self._check_lifespan()
            await HTTPResponder(self.app, self.dispatcher)(scope, receive, send)
        else:
            await WebSocketResponder(self.app, self.dispatcher)(scope, receive, send)

    def _check_lifespan(self) -> None:
        if self._saw_lifespan or self._warned_no_lifespan or not self.close_on_shutdown:
            return
        self._warned_no_lifespan = True
        logger.warning(NO_LIFESPAN_HINT)
        warnings.warn(NO_LIFESPAN_HINT, WiringWarning, stacklevel=3)

    async def shutdown(self) -> None:
        """Flush and close the dispatcher without blocking the event loop."""
        if not self.close_on_shutdown:
            return
        finished = await run_in_own_thread(
            self._flush_and_close,
            name="optimizely-shutdown",
            # The sender's own timeouts bound the thread; this only guards the loop
            # against a sender that overruns them.
            timeout=self.shutdown_timeout + 1.0,
        )
        if not finished:
            logger.warning(
                "Closing the Optimizely event sender took longer than shutdown_timeout=%.1f s; "
                "the server goes on shutting down.",
                self.shutdown_timeout,
            )

    def _flush_and_close(self) -> None:
        deadline = time.monotonic() + self.shutdown_timeout
        flushed = self.dispatcher.flush(self.shutdown_timeout)
        self.dispatcher.close(max(0.0, deadline - time.monotonic()))
        if flushed:
            logger.debug("All Optimizely events were delivered before shutdown.")
        else:
            stats = self.dispatcher.stats()
            logger.warning(
                "shutdown_timeout=%.1f s passed before every Optimizely event was delivered "
                "(queue depth %s, dropped %s).",
                self.shutdown_timeout,
                stats.get("queue_depth"),
                stats.get("dropped"),
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
            self.dispatcher.close_scope(request, failed=failed)

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


class LifespanResponder:
    """Passes the lifespan protocol through; closes the dispatcher on shutdown.

    If the app does not speak the protocol (it raises or returns before
    answering ``lifespan.startup``), the responder answers it itself.
    """

    __slots__ = ("answered", "middleware", "shutdown_done", "shutdown_received", "startup_received")

    def __init__(self, middleware: OptimizelyASGIMiddleware) -> None:
        self.middleware = middleware
        self.startup_received = False
        self.shutdown_received = False
        self.answered = False
        self.shutdown_done = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_observed() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.startup_received = True
                self.middleware._saw_lifespan = True
            elif message["type"] == "lifespan.shutdown":
                self.shutdown_received = True
            return message

        async def send_observed(message: Message) -> None:
            self.answered = True
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.shut_down()
            await send(message)

        try:
            await self.middleware.app(scope, receive_observed, send_observed)
        except Exception as exc:
            if self.answered:
                if self.shutdown_received:
                    await self.shut_down()
                raise
            logger.info(
                "The app does not handle the ASGI lifespan protocol (it raised %s); "
                "OptimizelyASGIMiddleware answers it so that events are flushed at shutdown.",
                type(exc).__name__,
            )
            logger.debug("The app's lifespan error:", exc_info=True)
        else:
            if self.answered:
                if self.shutdown_received:
                    await self.shut_down()
                return
            logger.info(
                "The app does not handle the ASGI lifespan protocol; "
                "OptimizelyASGIMiddleware answers it so that events are flushed at shutdown."
            )
        await self.serve(receive, send)

    async def serve(self, receive: Receive, send: Send) -> None:
        if not self.startup_received:
            message = await receive()
            if message["type"] != "lifespan.startup":
                raise RuntimeError(f"Expected 'lifespan.startup', got {message['type']!r}")
            self.middleware._saw_lifespan = True
        await send({"type": "lifespan.startup.complete"})
        while (await receive())["type"] != "lifespan.shutdown":
            pass
        await self.shut_down()
        await send({"type": "lifespan.shutdown.complete"})

    async def shut_down(self) -> None:
        if not self.shutdown_done:
            self.shutdown_done = True
            await self.middleware.shutdown()


async def run_in_own_thread(fn: Callable[[], None], *, name: str, timeout: float) -> bool:
    """Run blocking ``fn`` on a new daemon thread and wait for it without
    blocking the loop or taking a worker of the loop's thread pool.

    Returns False when ``fn`` did not finish within ``timeout`` seconds (it
    then goes on in the background). Exceptions from ``fn`` are logged.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return await run_in_anyio_thread(fn, timeout=timeout)
    done: asyncio.Future[None] = loop.create_future()

    def mark_done() -> None:
        if not done.done():
            done.set_result(None)

    def target() -> None:
        try:
            fn()
        except Exception:
            logger.exception("Error while closing the Optimizely event sender")
        finally:
            # RuntimeError: the loop has already been closed, nobody is waiting.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(mark_done)

    threading.Thread(target=target, name=name, daemon=True).start()
    try:
        await asyncio.wait_for(asyncio.shield(done), timeout)
    except asyncio.TimeoutError:
        return False
    return True


async def run_in_anyio_thread(fn: Callable[[], None], *, timeout: float) -> bool:
    """:func:`run_in_own_thread` for loops other than asyncio (trio), through
    anyio with a limiter of its own, so the app's thread pool is not used."""
    import anyio
    import anyio.to_thread

    def guarded() -> None:
        try:
            fn()
        except Exception:
            logger.exception("Error while closing the Optimizely event sender")

    with anyio.move_on_after(timeout):
        await anyio.to_thread.run_sync(
            guarded, limiter=anyio.CapacityLimiter(1), abandon_on_cancel=True
        )
        return True
    return False
