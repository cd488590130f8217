"""Django middleware that sends a request's Optimizely events after the response.

Usage (``settings.py``)::

    MIDDLEWARE = [
        "optimizely_middleware.django.OptimizelyMiddleware",   # first: outermost
        ...
    ]
    OPTIMIZELY = {"DATAFILE_PATH": BASE_DIR / "datafile.json"}   # or "SDK_KEY"

and in a view::

    def checkout(request):
        user = request.optimizely.create_user_context(visitor_id(request))
        decision = user.decide("new_checkout")   # the event leaves after the response
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async

from optimizely_middleware.django.state import DjangoOptimizely, current_state, get_state
from optimizely_middleware.django.visitor import apply_visitor_cookie
from optimizely_middleware.integrations.adapters import owned_by_outer
from optimizely_middleware.integrations.wsgi import (
    ScopedAsyncIterator,
    ScopedIterator,
    ScopedRequest,
    hand_over_released_bodies,
)
from optimizely_middleware.scope import RequestScope, request_failed

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponseBase

__all__ = ["OptimizelyMiddleware"]

logger = logging.getLogger("optimizely_middleware")

GetResponse = Callable[["HttpRequest"], "HttpResponseBase"]
AsyncGetResponse = Callable[["HttpRequest"], Awaitable["HttpResponseBase"]]

NO_ASGI_WRAPPER_HINT = (
    "OptimizelyMiddleware serves an ASGI request that no OptimizelyASGIMiddleware owns, so "
    "nothing flushes Optimizely events when the server stops (uvicorn runs no atexit "
    "handlers) and the events of the last requests may be lost. In asgi.py, serve "
    "optimizely_middleware.django.asgi_application(get_asgi_application())."
)


class OptimizelyMiddleware:
    """Hands the Optimizely events of each request over after its response was sent.

    Add it first in ``MIDDLEWARE`` (outermost, so that the events of other
    middleware belong to the request too and it sees the final response). It
    works in sync (WSGI) and async (ASGI) handlers alike. Each request runs
    in a scope of the process's one dispatcher, built from
    ``settings.OPTIMIZELY`` when Django loads the middleware (a mistake
    raises :class:`~django.core.exceptions.ImproperlyConfigured` then); the
    client is ``request.optimizely``.

    The events are handed over once, in one non-blocking call, when Django's
    handler closes the response: under WSGI when the server calls
    ``close()`` after writing the body, under ASGI after the last body
    message was sent, in the test ``Client`` when the content has been read.
    A streaming response's iterator runs inside the request's scope, so the
    events it fires belong to the request; ``FileResponse`` keeps the
    server's ``sendfile`` path. A request that raised or answered with a 5xx
    status follows ``FAILED_REQUESTS``.

    Behind ``OptimizelyWSGIMiddleware`` / ``OptimizelyASGIMiddleware`` of the
    same dispatcher (such as :func:`~optimizely_middleware.django.asgi_application`),
    the outer middleware owns the request and this one only sets
    ``request.optimizely``, so nothing is handed over twice.

    Example::

        MIDDLEWARE = ["optimizely_middleware.django.OptimizelyMiddleware", *MIDDLEWARE]
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse | AsyncGetResponse) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
        get_state()  # settings mistakes surface when Django loads the middleware
        self._warned_no_asgi_wrapper = False

    def __repr__(self) -> str:
        return f"<OptimizelyMiddleware async_mode={self.async_mode}>"

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        scoped = self._scoped_request(request, get_state())
        with scoped or nullcontext():
            return self._respond(request, self.get_response(request), scoped)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        state = current_state() or await sync_to_async(get_state, thread_sensitive=False)()
        scoped = self._scoped_request(request, state)
        if scoped is not None:
            self._check_asgi_wrapper(request)
        get_response: AsyncGetResponse = self.get_response
        with scoped or nullcontext():
            return self._respond(request, await get_response(request), scoped)

    def _scoped_request(
        self, request: HttpRequest, state: DjangoOptimizely
    ) -> ScopedRequest | None:
        """Set ``request.optimizely``; the request's scope, or None when an outer
        middleware of the same dispatcher owns the request."""
        # Responses released during a garbage collection (never closed) are
        # handed over here, outside the collector (see ScopedRequest.watch).
        hand_over_released_bodies()
        request.optimizely = state.client
        if owned_by_outer(state.dispatcher):
            return None
        return ScopedRequest(state.dispatcher)

    def _respond(
        self, request: HttpRequest, response: HttpResponseBase, scoped: ScopedRequest | None
    ) -> HttpResponseBase:
        """Inside the scope: the visitor cookie, and the hand-off tied to ``close()``."""
        apply_visitor_cookie(request, response)
        if scoped is not None:
            hand_over_on_close(response, scoped)
        return response

    def _check_asgi_wrapper(self, request: HttpRequest) -> None:
        if self._warned_no_asgi_wrapper:
            return
        self._warned_no_asgi_wrapper = True
        asgi_scope = getattr(request, "scope", None)
        # Django's AsyncClient is not a server: nothing to flush at its "shutdown".
        if isinstance(asgi_scope, dict) and asgi_scope.get("server") != ("testserver", "80"):
            logger.warning(NO_ASGI_WRAPPER_HINT)


def hand_over_on_close(response: HttpResponseBase, scoped: ScopedRequest) -> None:
    """Tie the hand-off of ``scoped`` to ``response.close()``.

    Django's handlers call ``close()`` once the body went out (WSGI: the
    server does, through the response or its file wrapper; ASGI: the
    handler, after the last body message). The response's own closers (the
    streaming iterator's ``close``, the file's) run inside the scope, then
    the events are handed over. A response dropped without ``close()`` (a
    middleware replaced it) hands over when it is collected.
    """
    if request_failed(status=response.status_code):
        scoped.scope.mark_failed()
    streaming = getattr(response, "streaming", False)
    if streaming and getattr(response, "file_to_stream", None) is None:
        # A FileResponse only reads a file: leave it as it is for sendfile().
        content = response.streaming_content
        if getattr(response, "is_async", False):
            response.streaming_content = ScopedAsyncIterator(content, scoped)
        else:
            response.streaming_content = ScopedIterator(content, scoped)
    entry = _EnterScope(scoped)
    closers: list[Callable[[], object]] = response._resource_closers
    closers.insert(0, entry)
    closers.append(_HandOver(entry))
    scoped.watch(response)


class Released:
    """What this middleware's closers become when a response is pickled: nothing.

    Django's cache middleware pickles responses; the copy it serves later
    belongs to another request, so its ``close()`` must hand nothing over.
    The name is part of what is pickled, so it stays stable.

    Example::

        cached = pickle.loads(pickle.dumps(response))
        cached.close()   # runs Released(): a no-op
    """

    __slots__ = ()

    def __call__(self) -> None:
        pass


class _EnterScope:
    """The first closer of the response: the request's scope is current for the others."""

    __slots__ = ("activation", "scoped")

    def __init__(self, scoped: ScopedRequest) -> None:
        self.scoped = scoped
        self.activation: AbstractContextManager[RequestScope] | None = None

    def __call__(self) -> None:
        if self.activation is None and not self.scoped.scope.closed:
            activation = self.scoped.dispatcher.activate(self.scoped.scope)
            activation.__enter__()
            self.activation = activation

    def __reduce__(self) -> tuple[type[Released], tuple[()]]:
        return (Released, ())


class _HandOver:
    """The last closer of the response: leaves the scope and hands its events over."""

    __slots__ = ("entry",)

    def __init__(self, entry: _EnterScope) -> None:
        self.entry = entry

    def __call__(self) -> None:
        activation, self.entry.activation = self.entry.activation, None
        if activation is not None:
            activation.__exit__(None, None, None)
        self.entry.scoped.finish()

    def __reduce__(self) -> tuple[type[Released], tuple[()]]:
        return (Released, ())
