"""What every framework adapter does alike, whatever its protocol.

The WSGI and ASGI middleware and the framework faces share these steps:
check the dispatcher and client they are given; for each request, step
aside when an outer adapter of the same dispatcher already owns the
request, so that every event is handed over once; run app code in the
request's scope and hand it over at once if that code raises
(:class:`RequestInScope`).

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

import logging
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from optimizely_middleware.client import check_client
from optimizely_middleware.dispatcher import RequestScopedEventDispatcher
from optimizely_middleware.scope import RequestScope, request_failed
from optimizely_middleware.settings.build import build_client, build_dispatcher

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from optimizely.optimizely import Optimizely

    from optimizely_middleware.settings.model import OptimizelySettings

__all__ = [
    "Flushable",
    "RequestInScope",
    "checked_dispatcher",
    "client_and_dispatcher",
    "decorator_dispatcher",
    "flush_within",
    "owned_by_outer",
    "raised_failure",
]

logger = logging.getLogger("optimizely_middleware")


class Flushable(Protocol):
    """What a shutdown hook needs: a dispatcher or an :class:`~optimizely_middleware.EventSender`.

    Example::

        def deliver(target: Flushable) -> bool:
            return target.flush(5.0)
    """

    def flush(self, timeout: float | None = None) -> bool: ...


def flush_within(
    targets: Iterable[Flushable], timeout: float, *, clock: Callable[[], float] = time.monotonic
) -> bool:
    """Flush every target within ``timeout`` seconds in all; True if every one settled.

    Each target gets what is left of the one deadline, so several
    dispatchers never add up their timeouts. A target that raises is
    logged and counts as unsettled; the others are still flushed.
    """
    deadline = clock() + timeout
    settled = True
    for target in targets:
        try:
            settled = target.flush(max(0.0, deadline - clock())) and settled
        except Exception:
            logger.exception("Flushing Optimizely events failed.")
            settled = False
    return settled


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


def client_and_dispatcher(
    owner: str,
    settings: OptimizelySettings,
    *,
    dispatcher: RequestScopedEventDispatcher | None = None,
    client: Optimizely | None = None,
) -> tuple[Optimizely, RequestScopedEventDispatcher]:
    """What a framework extension (``owner``) runs on: a client wired to a dispatcher.

    Given ``dispatcher`` is shared; without it, the one ``client`` forwards
    to, else one built from ``settings``. A given ``client`` is checked for
    wiring; otherwise one is built from ``settings`` (if that fails, a
    dispatcher built here is closed again).
    """
    if dispatcher is None and client is not None:
        dispatcher = _dispatcher_of(owner, client)
    built = dispatcher is None
    if dispatcher is None:
        dispatcher = build_dispatcher(settings)
    if client is not None:
        check_client(client, dispatcher)
        return client, dispatcher
    try:
        return build_client(settings, dispatcher), dispatcher
    except BaseException:
        if built:
            dispatcher.close(0)
        raise


def _dispatcher_of(owner: str, client: Optimizely) -> RequestScopedEventDispatcher:
    processor = getattr(client, "event_processor", None)
    dispatcher = getattr(processor, "event_dispatcher", None)
    if not isinstance(dispatcher, RequestScopedEventDispatcher):
        raise TypeError(
            f"{owner}(client=...) needs a client that forwards its events to a "
            "RequestScopedEventDispatcher (build it with create_client), or pass "
            "dispatcher= as well."
        )
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


def raised_failure(exc: BaseException) -> bool:
    """Whether what app code raised fails the request: :func:`request_failed` of ``exc``."""
    return request_failed(exc=exc)


class RequestInScope:
    """A request's scope, opened by an adapter; ``with`` runs app code inside it.

    If the block raises, the scope is handed over at once, failed or not by
    ``failed_by(exc)`` (by default :func:`raised_failure`; a framework whose
    exceptions become responses of their own judges them by that status),
    and the exception goes on. Otherwise the adapter hands it over later,
    with :meth:`finish`, once the response has gone out.

    Example::

        request = RequestInScope(dispatcher)
        with request:
            response = view()
        ...                                 # the response is sent
        request.finish(failed=False)
    """

    __slots__ = ("_activation", "dispatcher", "failed_by", "finalizer", "scope")

    def __init__(
        self,
        dispatcher: RequestScopedEventDispatcher,
        scope: RequestScope | None = None,
        *,
        failed_by: Callable[[BaseException], bool] = raised_failure,
    ) -> None:
        self.dispatcher = dispatcher
        self.scope = scope if scope is not None else dispatcher.open_scope()
        self.failed_by = failed_by
        self._activation: AbstractContextManager[RequestScope] | None = None
        # Set by adapters that also hand over when the response is collected
        # (ScopedRequest.watch in integrations/wsgi.py).
        self.finalizer: weakref.finalize[Any, Any] | None = None

    def __enter__(self) -> RequestScope:
        self._activation = self.dispatcher.activate(self.scope)
        return self._activation.__enter__()

    def __exit__(self, *exc_info: Any) -> None:
        activation, self._activation = self._activation, None
        if activation is not None:
            activation.__exit__(*exc_info)
        exc: BaseException | None = exc_info[1]
        if exc is not None:
            self.finish(failed=self.failed_by(exc))

    def finish(self, *, failed: bool = False) -> None:
        """Hand the events over now (idempotent)."""
        self.dispatcher.close_scope(self.scope, failed=failed)
