"""The per-request container of events and the ContextVar that holds it.

A scope holds opaque items: the SDK's ``LogEvent`` (from
``RequestScopedEventDispatcher.dispatch_event``) or a
:class:`~optimizely_middleware.delivery.encoding.PendingUserEvent` (from the
request-scoped event processor). Nothing is built or copied here.

A :class:`RequestScope` is created when a request starts and set in a
:class:`ScopeVar` before the app runs. It is a mutable object, so copies of the
context made by thread pools (Starlette's sync endpoints, ``anyio.to_thread``,
``contextvars.copy_context().run``) still add to the same request.

Adapters rarely touch this module directly; they use the dispatcher's
``open_scope`` / ``activate`` / ``close_scope`` or ``request_scope()``.

Whether a request failed is one rule, :func:`request_failed`, that every
adapter applies (the dispatcher's ``failed_requests`` policy acts on it).
"""

from __future__ import annotations

import threading
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from contextlib import AbstractContextManager


__all__ = ["RequestScope", "ScopeActivation", "ScopeBlock", "ScopeVar", "request_failed"]


class ScopeOwner(Protocol):
    """What a :class:`ScopeBlock` needs of its dispatcher."""

    def current_scope(self) -> RequestScope | None: ...

    def open_scope(self) -> RequestScope: ...

    def activate(self, scope: RequestScope) -> AbstractContextManager[RequestScope]: ...

    def close_scope(self, scope: RequestScope, *, failed: bool = False) -> None: ...

    async def aclose_scope(self, scope: RequestScope, *, failed: bool = False) -> None: ...


class RequestScope:
    """The events one request produced, until the request is over.

    ``add`` is O(1) and thread-safe; ``close`` returns the collected items
    exactly once, so a scope can never be handed over twice.

    Example::

        scope = RequestScope(max_events=100)
        scope.add(event)
        assert scope.close() == [event] and scope.close() is None
    """

    __slots__ = ("_closed", "_events", "_lock", "failed", "max_events", "overflowed")

    def __init__(self, max_events: int = 1000) -> None:
        self.max_events = max_events
        self.failed = False
        self.overflowed = 0
        self._events: list[object] = []
        self._closed = False
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._events)

    def add(self, event: Any) -> bool | None:
        """Collect ``event`` (a ``LogEvent`` or a ``PendingUserEvent``).

        Returns True when collected, False when the per-request cap was hit
        (the event is not kept) and None when the scope is already closed.
        """
        with self._lock:
            if self._closed:
                return None
            if len(self._events) >= self.max_events:
                self.overflowed += 1
                return False
            self._events.append(event)
            return True

    def mark_failed(self) -> None:
        """Record that the request failed (an exception or a 5xx status)."""
        self.failed = True

    def close(self) -> list[object] | None:
        """Close the scope; return its events the first time, None after."""
        with self._lock:
            if self._closed:
                return None
            self._closed = True
            events, self._events = self._events, []
            return events


class ScopeVar:
    """A ContextVar holding the active :class:`RequestScope` of one dispatcher."""

    __slots__ = ("_var",)

    def __init__(self, name: str) -> None:
        self._var: ContextVar[RequestScope | None] = ContextVar(name, default=None)

    def get(self) -> RequestScope | None:
        """The active, still open scope in this context, if any."""
        scope = self._var.get()
        if scope is None or scope.closed:
            return None
        return scope

    def activate(self, scope: RequestScope) -> ScopeActivation:
        """Make ``scope`` the active one for the duration of the block.

        The previous value is restored on exit, so nothing leaks into whatever
        runs next on the same thread or task.
        """
        return ScopeActivation(self._var, scope)


class ScopeActivation:
    """The ``with`` block of :meth:`ScopeVar.activate`: sets the scope, then restores
    what was there. Single use, like a ``contextmanager``'s block; a plain class,
    since it runs once per request and once per WSGI body chunk.

    Example::

        with ScopeActivation(var, scope):
            assert var.get() is scope
    """

    __slots__ = ("_scope", "_token", "_var")

    def __init__(self, var: ContextVar[RequestScope | None], scope: RequestScope) -> None:
        self._var = var
        self._scope = scope
        self._token: Token[RequestScope | None] | None = None

    def __enter__(self) -> RequestScope:
        self._token = self._var.set(self._scope)
        return self._scope

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            self._var.reset(self._token)
            self._token = None


class ScopeBlock:
    """``with`` / ``async with`` block returned by the dispatcher's ``request_scope()``."""

    __slots__ = ("_activation", "_dispatcher", "_scope")

    def __init__(self, dispatcher: ScopeOwner) -> None:
        self._dispatcher = dispatcher
        self._scope: RequestScope | None = None
        self._activation: AbstractContextManager[RequestScope] | None = None

    def __enter__(self) -> RequestScope:
        current = self._dispatcher.current_scope()
        if current is not None:
            return current
        self._scope = self._dispatcher.open_scope()
        self._activation = self._dispatcher.activate(self._scope)
        return self._activation.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        scope = self._leave(exc_type, exc, tb)
        if scope is not None:
            self._dispatcher.close_scope(scope, failed=request_failed(exc=exc))

    async def __aenter__(self) -> RequestScope:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        scope = self._leave(exc_type, exc, tb)
        if scope is not None:
            await self._dispatcher.aclose_scope(scope, failed=request_failed(exc=exc))

    def _leave(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> RequestScope | None:
        """Deactivate the scope this block opened; it, to be closed (None if it joined one)."""
        if self._scope is None or self._activation is None:
            return None
        self._activation.__exit__(exc_type, exc, tb)
        return self._scope


def request_failed(
    *,
    status: int | None = None,
    exc: BaseException | None = None,
    disconnected: bool = False,
) -> bool:
    """Return True when a request counts as failed.

    * ``status``: the HTTP status the response started with, if it started.
      A 5xx status is a failure, whatever happens afterwards (the client
      going away included): the app itself answered that it failed. Any
      other status is not.
    * ``exc``: what the app raised, if anything. An ``Exception`` (an
      ``ExceptionGroup`` too) is a failure, unless the client had
      disconnected. A ``BaseException`` that is not an ``Exception`` is
      *not* a failure: ``asyncio.CancelledError`` (also anyio's cancellation
      on asyncio), trio's ``Cancelled``, ``GeneratorExit``,
      ``KeyboardInterrupt`` and ``SystemExit`` stop a request from outside
      (a client that went away, a server that shuts down or times a worker
      out); they say nothing about the app. A ``BaseExceptionGroup`` is a
      failure when one of its exceptions is.
    * ``disconnected``: the client went away before the response was
      complete. That is not a failure, and neither is whatever the app
      raised as a result (``OSError`` or ``ClientDisconnect`` from a send,
      an error from a read after ``http.disconnect``,
      ``WebSocketDisconnect``): the events were fired by decisions the user
      was being shown.

    What counts as a disconnect is for the adapter to observe: an
    ``OSError`` from the server's ``send`` (ASGI 2.4), an
    ``http.disconnect`` / ``websocket.disconnect`` from ``receive``, the
    framework's own disconnect exception (Starlette's ``ClientDisconnect``),
    a WSGI server closing the body before its last chunk. An exception that
    the framework turns into an HTTP response of its own (werkzeug's and
    Starlette's ``HTTPException``) is judged by that response's status: pass
    ``status=``, not ``exc=``.

    Example::

        >>> request_failed(status=503)
        True
        >>> request_failed(status=200, exc=ValueError("bug"))
        True
        >>> request_failed(status=200, exc=OSError("gone"), disconnected=True)
        False
        >>> import asyncio
        >>> request_failed(exc=asyncio.CancelledError())
        False
    """
    if status is not None and status >= 500:
        return True
    if exc is None or disconnected:
        return False
    return _is_failure(exc)


def _is_failure(exc: BaseException) -> bool:
    if isinstance(exc, Exception):
        return True
    # A BaseExceptionGroup (Python 3.11+ or the exceptiongroup backport) that
    # holds an Exception next to the cancellations.
    inner = getattr(exc, "exceptions", None)
    if isinstance(inner, tuple):
        return any(_is_failure(e) for e in inner if isinstance(e, BaseException))
    return False
