"""WSGI middleware that sends a request's Optimizely events after the response.

Works with any WSGI app: Flask, Django, Pyramid, Falcon, plain callables.

Usage, with the dispatcher and the client built as in :mod:`optimizely_middleware`::

    from optimizely_middleware import OptimizelyWSGIMiddleware

    app.wsgi_app = OptimizelyWSGIMiddleware(app.wsgi_app, dispatcher)   # Flask
    application = OptimizelyWSGIMiddleware(application, dispatcher)     # any WSGI app

Each request gets its own scope. The events the SDK produces while the app
handles it, including while the body is iterated (generators, Flask's
``stream_with_context``) and closed, are handed over in one non-blocking call
once the body has been written: when the server has taken its last chunk or
calls ``close()`` on it, whichever comes first.
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from optimizely_middleware.dispatcher import RequestScopedEventDispatcher
from optimizely_middleware.integrations.adapters import (
    RequestInScope,
    checked_dispatcher,
    owned_by_outer,
)
from optimizely_middleware.process import hooks
from optimizely_middleware.scope import RequestScope, request_failed

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from optimizely.optimizely import Optimizely
    from typing_extensions import Self

__all__ = [
    "ENVIRON_KEY",
    "OptimizelyWSGIMiddleware",
    "ScopedAsyncIterator",
    "ScopedBody",
    "ScopedIterator",
    "ScopedRequest",
    "hand_over_released_bodies",
]

T = TypeVar("T")

logger = logging.getLogger("optimizely_middleware")

# Where the middleware puts the client (when given one) in the WSGI environ.
ENVIRON_KEY = "optimizely.client"


class OptimizelyWSGIMiddleware:
    """Hands the Optimizely events of each request over after the response.

    Each request runs in a scope of ``dispatcher``. The scope is active only
    while app code runs: the app call, each ``next()`` on the body and its
    ``close()``; nothing stays set on the server's thread in between. The
    events are handed over once, after the whole body was written: when the
    server has taken the last chunk (the app's ``close()`` is then run at
    once, in the scope) or calls ``close()``, whichever comes first. A
    request that raised, or started a response with a 5xx status or with
    ``exc_info``, is a failed request for the dispatcher's
    ``failed_requests`` policy; a body the server closes before its last
    chunk is a client that went away, which is not
    (:func:`~optimizely_middleware.request_failed`). Exceptions
    propagate unchanged.

    A body that is an instance of the server's ``wsgi.file_wrapper`` (Flask's
    ``send_file``, Django's ``FileResponse``) is returned unchanged, so the
    server keeps its ``sendfile`` fast path; the hand-off is attached to that
    object's ``close``. If a server drops a response without calling
    ``close()``, its events are handed over when the response is garbage
    collected: late, but never lost.

    Inside a request that a middleware of the same dispatcher already handles
    (the app wrapped twice, or a :func:`~optimizely_middleware.flask.defer_events`
    view behind this middleware) it just calls through, so every event is
    handed over once.

    Options:

    * ``client``: the Optimizely client; put in the environ under
      ``"optimizely.client"`` for the app to use, and checked for wiring.

    Example::

        app = Flask(__name__)
        app.wsgi_app = OptimizelyWSGIMiddleware(app.wsgi_app, dispatcher, client=client)
    """

    def __init__(
        self,
        app: WSGIApplication,
        dispatcher: RequestScopedEventDispatcher,
        *,
        client: Optimizely | None = None,
    ) -> None:
        self.dispatcher = checked_dispatcher("OptimizelyWSGIMiddleware", dispatcher, client)
        self.app = app
        self.client = client

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        hand_over_released_bodies()
        if self.client is not None:
            environ[ENVIRON_KEY] = self.client
        if owned_by_outer(self.dispatcher):
            return self.app(environ, start_response)
        request = ScopedRequest(self.dispatcher)
        return request.run(self.app, environ, start_response)


class ScopedRequest(RequestInScope):
    """One request's scope, from the app call until the server closes the body.

    Also used by the Flask view decorator, which opens a scope per view call,
    and by Django's middleware. ``with scoped:`` runs app code in the scope
    and, if it raises, hands the events over at once (:class:`RequestInScope`).
    """

    __slots__ = ()

    def run(
        self, app: WSGIApplication, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """Call ``app`` in the scope and return a body that hands over on close."""
        with self:
            body = app(environ, self.observe(start_response))
        return self.attach(body, environ)

    def observe(self, start_response: StartResponse) -> StartResponse:
        """``start_response`` that marks the request failed on 5xx or ``exc_info``."""
        scope = self.scope

        def observed_start_response(
            status: str,
            headers: list[tuple[str, str]],
            exc_info: OptExcInfo | None = None,
            /,
        ) -> Callable[[bytes], object]:
            exc = exc_info[1] if exc_info is not None else None
            if request_failed(status=_status_code(status), exc=exc):
                scope.mark_failed()
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        return observed_start_response

    def attach(self, body: Iterable[bytes], environ: WSGIEnvironment) -> Iterable[bytes]:
        """Tie the hand-off to ``body``'s ``close()`` (or to its collection)."""
        file_wrapper = environ.get("wsgi.file_wrapper")
        if (
            isinstance(file_wrapper, type)
            and isinstance(body, file_wrapper)
            and self.hook_close(body)
        ):
            # Servers recognise their file wrapper by type (gunicorn:
            # isinstance(respiter, environ["wsgi.file_wrapper"])) to use
            # sendfile(), so the object itself must reach the server.
            return body
        return ScopedBody(body, self)

    def hook_close(self, body: Any) -> bool:
        """Make ``body.close()`` hand the events over, on this object only."""
        original_close: Callable[[], object] | None = getattr(body, "close", None)

        def close() -> None:
            self.close_body(original_close)

        try:
            self.watch(body)
            body.close = close
        except (AttributeError, TypeError):
            # No weakref or no settable attribute (__slots__): wrap it instead.
            self.unwatch()
            return False
        return True

    def watch(self, obj: object) -> None:
        """Hand the events over when ``obj`` is collected, unless closed before."""
        self.unwatch()
        self.finalizer = weakref.finalize(obj, _close_uncollected, self.dispatcher, self.scope)
        listeners = self.dispatcher.unread_body_listeners
        if listeners:  # the testing kit: a test may never read the body
            listeners.notify(self.dispatcher, self.scope)

    def unwatch(self) -> None:
        if self.finalizer is not None:
            self.finalizer.detach()
            self.finalizer = None

    def close_body(self, close: Callable[[], object] | None, *, disconnected: bool = False) -> None:
        """Run the app's ``close()`` in the scope, then hand the events over.

        ``disconnected``: the server closes the body before its last chunk
        (the client went away), so an error from ``close()`` is not a failure.
        """
        failed = False
        try:
            if close is not None:
                with self.dispatcher.activate(self.scope):
                    close()
        except BaseException as exc:
            failed = request_failed(exc=exc, disconnected=disconnected)
            raise
        finally:
            self.finish(failed=failed)

    def mark_failed_by(self, exc: BaseException) -> None:
        """Mark the request failed if ``exc``, raised by app code, fails it (the end
        of an iterator does not)."""
        if not isinstance(exc, (StopIteration, StopAsyncIteration)) and request_failed(exc=exc):
            self.scope.mark_failed()

    def finish(self, *, failed: bool = False) -> None:
        """Hand the events over now (idempotent)."""
        self.unwatch()
        super().finish(failed=failed)


def _status_code(status: str) -> int | None:
    try:
        return int(status[:3])
    except ValueError:
        return None


def _close_uncollected(dispatcher: RequestScopedEventDispatcher, scope: RequestScope) -> None:
    if not scope.closed:
        logger.debug(
            "A response was released without close() being called on it; "
            "its Optimizely events are handed over now."
        )
    if _collecting:
        # The cyclic garbage collector runs wherever an allocation triggers it,
        # possibly on a thread that holds the dispatcher's or the sender's lock
        # (neither is reentrant): taking them here could deadlock that thread.
        _released_during_gc.append((dispatcher, scope))
        return
    dispatcher.close_scope(scope)


_released_during_gc: deque[tuple[RequestScopedEventDispatcher, RequestScope]] = deque()
_collecting = False


def _track_collection(phase: str, info: dict[str, Any]) -> None:
    global _collecting
    _collecting = phase == "start"


hooks.on_gc(_track_collection)


def hand_over_released_bodies() -> None:
    """Hand over the scopes of bodies released during a garbage collection.

    Every adapter that ties a scope to a body (the WSGI middleware, Django's
    middleware) calls it at the start of each request, outside the
    collector; it returns at once when there is nothing to hand over. It
    also runs at interpreter exit.
    """
    while _released_during_gc:
        try:
            dispatcher, scope = _released_during_gc.popleft()
        except IndexError:
            return
        dispatcher.close_scope(scope)


# The "hand_over" exit phase runs before the senders close (see process.hooks).
hooks.on_exit("hand_over", hand_over_released_bodies)


class ScopedIterator(Generic[T]):
    """An iterable run inside a request's scope: ``iter()`` and each ``next()``.

    An exception that fails the request (:func:`~optimizely_middleware.request_failed`)
    marks it failed and propagates; the scope is handed over by whoever
    closes the body. Used for the WSGI body (:class:`ScopedBody`) and for
    Django's streaming content.

    Example::

        response.streaming_content = ScopedIterator(response.streaming_content, scoped)
    """

    __slots__ = ("_iterable", "_iterator", "_request")

    def __init__(self, iterable: Iterable[T], request: ScopedRequest) -> None:
        self._iterable = iterable
        self._iterator: Iterator[T] | None = None
        self._request = request

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> T:
        request = self._request
        try:
            with request.dispatcher.activate(request.scope):
                if self._iterator is None:
                    self._iterator = iter(self._iterable)
                return next(self._iterator)
        except StopIteration:
            self.ended()
            raise
        except BaseException as exc:
            request.mark_failed_by(exc)
            raise

    def ended(self) -> None:
        """Called once the iterable is exhausted (after the scope was left)."""


class ScopedAsyncIterator(Generic[T]):
    """:class:`ScopedIterator` for an async iterator (Django's async streaming content)."""

    __slots__ = ("_iterator", "_request")

    def __init__(self, iterator: AsyncIterator[T], request: ScopedRequest) -> None:
        self._iterator = iterator
        self._request = request

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        request = self._request
        try:
            with request.dispatcher.activate(request.scope):
                return await self._iterator.__anext__()
        except BaseException as exc:
            request.mark_failed_by(exc)
            raise


class ScopedBody(ScopedIterator[bytes]):
    """The response body, iterated and closed inside the request's scope."""

    __slots__ = ("__weakref__", "_closed", "_exhausted")

    def __init__(self, body: Iterable[bytes], request: ScopedRequest) -> None:
        super().__init__(body, request)
        self._closed = False
        self._exhausted = False
        request.watch(self)

    def ended(self) -> None:
        # The server has written the whole body. Finish the request now, app
        # close() included, rather than wait for the server's close(): some
        # callers (test clients) call it late or never.
        self._exhausted = True
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            # Closed before the last chunk was taken: the server stopped
            # writing, which is how a WSGI app learns that the client went away.
            self._request.close_body(
                getattr(self._iterable, "close", None), disconnected=not self._exhausted
            )
