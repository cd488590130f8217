"""The ASGI lifespan side of :class:`~optimizely_middleware.OptimizelyASGIMiddleware`.

What a lifespan shutdown does: it **flushes** the dispatcher within
``shutdown_timeout`` seconds, on a thread of its own, and leaves it usable.
It does not close it. Mangum (AWS Lambda) runs a lifespan startup and shutdown
around every invocation with its default ``lifespan="auto"``; a shutdown that
closed the sender would drop every event of every later invocation. The final
close happens at process exit (the exit handler of the sender); a server that
dies by its signal after the lifespan shutdown (uvicorn re-raises SIGTERM)
has nothing left to lose, since the flush delivered the queue.

What a missing lifespan means, per server (:func:`no_lifespan_risk`):

* Mangum (``scope["aws.event"]``): the middleware flushes after each request,
  because the platform freezes the process once the handler returns;
* daphne: it sends no lifespan events but exits normally, so the exit
  handler delivers; no warning;
* uvicorn with ``--lifespan off``, a mounted sub-app, any other server: the
  warning stands, since the exit handler may never run.

Usage (the middleware does all of this; call it yourself only from your own
shutdown code)::

    from optimizely_middleware.integrations.lifespan import flush_for_shutdown

    flush_for_shutdown(dispatcher, timeout=5.0)  # False (and a warning) if events are left
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from optimizely_middleware.integrations.asgi_common import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from optimizely_middleware.dispatcher import RequestScopedEventDispatcher

__all__ = [
    "LifespanResponder",
    "flush_for_shutdown",
    "is_serverless_scope",
    "no_lifespan_risk",
    "run_in_anyio_thread",
    "run_in_own_thread",
    "unsent_summary",
]

logger = logging.getLogger("optimizely_middleware")

NO_LIFESPAN_HINT = (
    "OptimizelyASGIMiddleware is serving HTTP requests but has not seen a lifespan "
    "startup, so it cannot flush Optimizely events when the server stops and the "
    "events of the last requests may be lost{why}. Run the server with the lifespan "
    "protocol on (uvicorn's default; --lifespan on), add the middleware to the "
    "outermost app rather than to a mounted sub-app, or pass close_on_shutdown=False "
    "and call dispatcher.flush(timeout) from your own shutdown code."
)
UVICORN_WHY = " (uvicorn re-raises SIGTERM after its shutdown, so exit handlers do not run)"

# Servers that send no lifespan events but let the interpreter exit normally on
# their stop signal, so the sender's exit handler delivers what is queued.
# Keyed by a module that only that server imports.
EXITS_NORMALLY = {"daphne.server": "daphne"}
# Servers whose process ends by the stop signal: exit handlers do not run.
DIES_BY_SIGNAL = {"uvicorn.server": UVICORN_WHY}


class LifespanOwner(Protocol):
    """What :class:`LifespanResponder` needs of the middleware."""

    app: ASGIApp
    _saw_lifespan: bool

    async def shutdown(self) -> None: ...


def is_serverless_scope(scope: Mapping[str, Any]) -> bool:
    """True for a request of a serverless adapter that returns the response only
    when the app call returns (Mangum puts the Lambda event in ``scope["aws.event"]``)."""
    return "aws.event" in scope


def no_lifespan_risk(modules: Mapping[str, object] | None = None) -> str | None:
    """Why events can be lost when no lifespan startup was seen, or None when the
    server is known to exit normally (its exit handler delivers)."""
    loaded = sys.modules if modules is None else modules
    for module, why in DIES_BY_SIGNAL.items():
        if module in loaded:
            return why
    for module in EXITS_NORMALLY:
        if module in loaded:
            return None
    return ""


def unsent_summary(stats: Mapping[str, Any]) -> str:
    """A summary of what ``stats()`` says is not delivered yet: in flight
    (POSTed, unconfirmed), queued, and what was dropped so far.

    ``pending`` (every event handed over and not settled), when the sender
    reports it, is the total; otherwise in flight plus queued.
    """
    in_flight = int(stats.get("in_flight") or 0)
    queued = int(stats.get("queue_depth") or 0)
    pending = stats.get("pending")
    unconfirmed = int(pending) if isinstance(pending, int) else in_flight + queued
    return (
        f"{unconfirmed} events not confirmed by the endpoint "
        f"({in_flight} in flight, {queued} queued), dropped so far {stats.get('dropped') or {}}"
    )


def flush_for_shutdown(dispatcher: RequestScopedEventDispatcher, timeout: float) -> bool:
    """Flush ``dispatcher`` for up to ``timeout`` seconds and leave it usable.

    Returns True when everything handed over was delivered or failed for
    good; otherwise logs a warning that counts what is still unconfirmed.
    """
    if dispatcher.flush(timeout):
        logger.debug("All Optimizely events were delivered at shutdown.")
        return True
    logger.warning(
        "shutdown_timeout=%.1f s passed before every Optimizely event was delivered: %s. "
        "They go on being sent until the process exits.",
        timeout,
        unsent_summary(dispatcher.stats()),
    )
    return False


class LifespanResponder:
    """Passes the lifespan protocol through; flushes the dispatcher on shutdown.

    If the app does not speak the protocol (it raises or returns before
    answering ``lifespan.startup``), the responder answers it itself.
    """

    __slots__ = ("answered", "owner", "shutdown_done", "shutdown_received", "startup_received")

    def __init__(self, owner: LifespanOwner) -> None:
        self.owner = owner
        self.startup_received = False
        self.shutdown_received = False
        self.answered = False
        self.shutdown_done = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_observed() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.startup_received = True
                self.owner._saw_lifespan = True
            elif message["type"] == "lifespan.shutdown":
                self.shutdown_received = True
            return message

        async def send_observed(message: Message) -> None:
            self.answered = True
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.shut_down()
            await send(message)

        try:
            await self.owner.app(scope, receive_observed, send_observed)
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
            self.owner._saw_lifespan = True
        await send({"type": "lifespan.startup.complete"})
        while (await receive())["type"] != "lifespan.shutdown":
            pass
        await self.shut_down()
        await send({"type": "lifespan.shutdown.complete"})

    async def shut_down(self) -> None:
        if not self.shutdown_done:
            self.shutdown_done = True
            await self.owner.shutdown()


async def run_in_own_thread(fn: Callable[[], object], *, name: str, timeout: float) -> bool:
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
            logger.exception("Error while flushing the Optimizely event sender")
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


async def run_in_anyio_thread(fn: Callable[[], object], *, timeout: float) -> bool:
    """:func:`run_in_own_thread` for loops other than asyncio (trio), through
    anyio with a limiter of its own, so the app's thread pool is not used."""
    import anyio
    import anyio.to_thread

    def guarded() -> None:
        try:
            fn()
        except Exception:
            logger.exception("Error while flushing the Optimizely event sender")

    with anyio.move_on_after(timeout):
        await anyio.to_thread.run_sync(
            guarded, limiter=anyio.CapacityLimiter(1), abandon_on_cancel=True
        )
        return True
    return False
