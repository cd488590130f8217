"""What every framework adapter does before it scopes a request.

The WSGI and ASGI middleware (and the framework decorators) share two
steps: check the dispatcher and client they are given, and, for each
request, step aside when an outer adapter of the same dispatcher already
owns the request, so that every event is handed over once.

Usage::

    from optimizely_middleware.integrations.adapters import checked_dispatcher, owned_by_outer

    class MyMiddleware:
        def __init__(self, app, dispatcher, *, client=None):
            self.app = app
            self.dispatcher = checked_dispatcher("MyMiddleware", dispatcher, client)

        def __call__(self, environ, start_response):
            if owned_by_outer(self.dispatcher):
                return self.app(environ, start_response)
            ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from optimizely_middleware.client import check_client
from optimizely_middleware.dispatcher import RequestScopedEventDispatcher

if TYPE_CHECKING:
    from optimizely.optimizely import Optimizely

__all__ = ["checked_dispatcher", "decorator_dispatcher", "owned_by_outer"]


def checked_dispatcher(
    owner: str, dispatcher: object, client: Optimizely | None = None
) -> RequestScopedEventDispatcher:
    """Return ``dispatcher`` once it is known to be a
    :class:`RequestScopedEventDispatcher`, and ``client`` (if given) to be
    wired to it (:func:`~optimizely_middleware.client.check_client`).

    ``owner`` names the adapter in the ``TypeError`` raised otherwise.
    """
    if not isinstance(dispatcher, RequestScopedEventDispatcher):
        raise TypeError(
            f"{owner} needs a RequestScopedEventDispatcher, not {type(dispatcher).__name__}"
        )
    if client is not None:
        check_client(client, dispatcher)
    return dispatcher


def decorator_dispatcher(module: str, dispatcher: object) -> RequestScopedEventDispatcher:
    """The argument of ``defer_events(dispatcher)``, checked when the decorator is made.

    A bare ``@defer_events`` passes the view itself: that is reported here,
    at import time, with the right form, instead of as a failure of every
    request.
    """
    if isinstance(dispatcher, RequestScopedEventDispatcher):
        return dispatcher
    if callable(dispatcher):
        name = getattr(dispatcher, "__name__", "view")
        raise TypeError(
            f"{module}.defer_events takes the dispatcher, then decorates: write "
            f"@defer_events(dispatcher) above def {name}(...), not a bare @defer_events."
        )
    raise TypeError(
        f"{module}.defer_events(dispatcher) needs a RequestScopedEventDispatcher, "
        f"not {type(dispatcher).__name__}"
    )


def owned_by_outer(dispatcher: RequestScopedEventDispatcher) -> bool:
    """True inside a request that a middleware or decorator of ``dispatcher``
    already scopes (an app wrapped twice, a decorated view behind the
    middleware): the adapter then only calls through."""
    return dispatcher.current_scope() is not None
