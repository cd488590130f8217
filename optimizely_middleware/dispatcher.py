"""The SDK-facing event dispatcher that holds events until the request is over.

Usage::

    from optimizely_middleware import RequestScopedEventDispatcher, create_client

    dispatcher = RequestScopedEventDispatcher()
    client = create_client(dispatcher, datafile=datafile_json)

    with dispatcher.request_scope():
        client.create_user_context("user-1").decide("new_checkout")
    # the decision event is handed to the sender here, not before
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from optimizely_middleware.delivery.drops import DropReason
from optimizely_middleware.delivery.ledger import DropLedger
from optimizely_middleware.delivery.sink import EventSink
from optimizely_middleware.errors import EventOutsideScopeError, WiringWarning
from optimizely_middleware.process import hooks
from optimizely_middleware.request_listeners import (
    Listeners,
    add_request_end_listener,
    remove_request_end_listener,
)
from optimizely_middleware.scope import RequestScope, ScopeBlock, ScopeVar
from optimizely_middleware.wiring_hints import WiringHints, called_by_forwarding_processor

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from optimizely.event_builder import Event

__all__ = [
    "FailedRequestPolicy",
    "OutsideScopePolicy",
    "RequestEndListener",
    "RequestScopedEventDispatcher",
    "UnreadBodyListener",
    "add_request_end_listener",
    "remove_request_end_listener",
]

logger = logging.getLogger("optimizely_middleware")

OutsideScopePolicy = Literal["send", "drop", "raise"]
FailedRequestPolicy = Literal["keep", "discard"]

# Called with (dispatcher, items, failed) each time a request scope closes, on the
# request's thread; items are LogEvents and PendingUserEvents.
RequestEndListener = Callable[["RequestScopedEventDispatcher", "list[Any]", bool], None]
# Called with (dispatcher, scope) when a WSGI body is returned with its scope still open.
UnreadBodyListener = Callable[["RequestScopedEventDispatcher", RequestScope], None]

# What stats() reports of the dispatcher itself, in this order.
_STATS_KEYS = (
    "requests",
    "failed_requests",
    "open_scopes",
    "collected",
    "handed_over",
    "outside_scope_sent",
)


class RequestScopedEventDispatcher:
    """Collects the events of each request and hands them over when it ends.

    Pass it to the SDK as the event dispatcher (through :func:`create_client`,
    which wires the SDK so events stay on the request's thread), and mount
    :class:`OptimizelyWSGIMiddleware` or :class:`OptimizelyASGIMiddleware`
    with it. ``dispatch_event`` only appends to the current request's scope:
    O(1), no I/O. When the request is over, the events go to ``sender`` with
    one call that never waits for I/O (the sender encodes them there).

    Options:

    * ``outside_scope``: what to do with an event that arrives outside any
      request (a CLI script, a background job): ``"send"`` it at once
      (default), ``"drop"`` it (counted, logged) or ``"raise"``
      :class:`EventOutsideScopeError`.
    * ``failed_requests``: ``"keep"`` (default) or ``"discard"`` the events
      of a request that raised or answered with a 5xx status.
    * ``max_events_per_request``: a cap that protects memory; events past it
      are counted as dropped and logged once per request.

    Example::

        dispatcher = RequestScopedEventDispatcher(failed_requests="discard")
        client = create_client(dispatcher, datafile=datafile_json)
        app.wsgi_app = OptimizelyWSGIMiddleware(app.wsgi_app, dispatcher)
    """

    def __init__(
        self,
        sender: EventSink | None = None,
        *,
        outside_scope: OutsideScopePolicy = "send",
        failed_requests: FailedRequestPolicy = "keep",
        max_events_per_request: int = 1000,
    ) -> None:
        if outside_scope not in ("send", "drop", "raise"):
            raise ValueError(
                f"outside_scope must be 'send', 'drop' or 'raise', not {outside_scope!r}"
            )
        if failed_requests not in ("keep", "discard"):
            raise ValueError(
                f"failed_requests must be 'keep' or 'discard', not {failed_requests!r}"
            )
        if max_events_per_request < 1:
            raise ValueError("max_events_per_request must be at least 1")
        if sender is None:
            from optimizely_middleware.delivery.sender import EventSender

            sender = EventSender()
        self.sender: EventSink = sender
        self.outside_scope: OutsideScopePolicy = outside_scope
        self.failed_requests: FailedRequestPolicy = failed_requests
        self.max_events_per_request = max_events_per_request
        self._scope_var = ScopeVar(f"optimizely_middleware.scope.{id(self):x}")
        #: Told of each request's end (:meth:`add_request_end_listener`).
        self.request_end_listeners: Listeners[RequestEndListener] = Listeners("request ends")
        #: Told of each WSGI body returned with its scope still open (the testing kit listens).
        self.unread_body_listeners: Listeners[UnreadBodyListener] = Listeners("unread bodies")
        self._hints = WiringHints()
        # The dispatcher's policies say why in their own words (once), not per event.
        self._lost = DropLedger(log=False)
        self.after_fork_in_child()
        hooks.on_fork(self)
        hooks.live_parts.add(self)

    def after_fork_in_child(self) -> None:
        """Zero counters and new locks: at construction and in a new process
        (after a fork the parent's counts are not this process's, and a parent
        thread may have held a lock)."""
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._open_scopes = 0
        self.request_end_listeners.after_fork_in_child()
        self.unread_body_listeners.after_fork_in_child()

    # -- the SDK-facing side -------------------------------------------------

    def dispatch_event(self, event: Event) -> None:
        """Collect ``event`` into the current request's scope (called by the SDK)."""
        if self._kept_in_scope(event):
            return
        # The SDK's ForwardingEventProcessor catches what dispatch_event raises
        # and logs the whole event at ERROR: raising from there reaches nobody.
        # Its frame is the one way to tell it from any other caller.
        forwarded = called_by_forwarding_processor(sys._getframe(1))
        self._outside_scope(event, can_raise=not forwarded)

    def collect(self, item: object) -> None:
        """Keep ``item`` (a ``PendingUserEvent`` or ``LogEvent``) for the current request;
        O(1). Outside any request the ``outside_scope`` policy applies."""
        if not self._kept_in_scope(item):
            self._outside_scope(item, can_raise=True)

    def _kept_in_scope(self, item: object) -> bool:
        """True when the current request's scope took ``item``, or counted it over its
        cap; False outside any open scope."""
        scope = self._scope_var.get()
        if scope is None:
            return False
        added = scope.add(item)
        if added is None:  # closed meanwhile
            return False
        if not added:
            self._note_overflow(scope)
        return True

    def _outside_scope(self, item: object, *, can_raise: bool) -> None:
        hooks.check_fork()
        self._hints.event_outside_scope(self._open_scopes)
        if self.outside_scope == "send":
            self._count(1, "outside_scope_sent", "handed_over")
            self._submit([item])
        elif self.outside_scope == "drop":
            self._lost.record_lost_event(DropReason.OUTSIDE_SCOPE, 1)
            self._hints.warn_once(
                "outside_scope",
                "An Optimizely event arrived outside any request scope and was dropped "
                "(outside_scope='drop'); further drops are counted in stats() only.",
            )
        else:
            self._lost.record_lost_event(DropReason.OUTSIDE_SCOPE_RAISED, 1)
            message = (
                "An Optimizely event was dispatched outside any request scope "
                "(outside_scope='raise'). Wrap the code in dispatcher.request_scope() "
                "or serve it through the middleware."
            )
            if can_raise:
                raise EventOutsideScopeError(message)
            logger.error("%s It is dropped and counted in stats().", message)
            self._hints.warn_once(
                "raise_swallowed",
                "outside_scope='raise' cannot reach your code through the SDK's "
                "ForwardingEventProcessor, which catches the error (and would log the "
                "event's payload). Build the client with create_client() to get the error.",
                category=WiringWarning,
            )

    def _note_overflow(self, scope: RequestScope) -> None:
        if scope.overflowed == 1:
            logger.warning(
                "A request produced more than max_events_per_request=%d Optimizely "
                "events; the rest of its events are dropped and counted in stats().",
                self.max_events_per_request,
            )

    # -- the adapter-facing side --------------------------------------------

    def current_scope(self) -> RequestScope | None:
        """The open scope of the current request, or None."""
        return self._scope_var.get()

    def open_scope(self) -> RequestScope:
        """Create a scope for a new request. Activate it with :meth:`activate`."""
        hooks.check_fork()
        with self._lock:
            self._open_scopes += 1
        return RequestScope(self.max_events_per_request)

    def activate(self, scope: RequestScope) -> AbstractContextManager[RequestScope]:
        """Make ``scope`` current for a block (the app call, one body chunk, ...)."""
        return self._scope_var.activate(scope)

    def close_scope(self, scope: RequestScope, *, failed: bool = False) -> None:
        """End a request: hand its events to the sender once (idempotent).

        ``failed`` marks a request that raised or answered with a 5xx status;
        with ``failed_requests="discard"`` its events are counted and dropped.
        The sender encodes the events on this thread, in slices of about 1 ms.
        """
        events = self._end_scope(scope, failed)
        if events:
            self._submit(events)

    async def aclose_scope(self, scope: RequestScope, *, failed: bool = False) -> None:
        """:meth:`close_scope` for an ASGI task: a sender with ``asubmit`` lets the
        event loop run between the slices of a long hand-off."""
        events = self._end_scope(scope, failed)
        if not events:
            return
        asubmit = getattr(self.sender, "asubmit", None)
        if asubmit is None:
            self._submit(events)
            return
        try:
            await asubmit(events)
        except Exception as exc:
            self._sender_raised(exc, events)

    def _end_scope(self, scope: RequestScope, failed: bool) -> list[Any] | None:
        """Close ``scope`` and count it; the events to hand over, if any, already
        counted as handed over (:meth:`_sender_raised` takes them back)."""
        events = scope.close()
        if events is None:
            return None
        failed = failed or scope.failed
        discard = failed and self.failed_requests == "discard"
        collected = len(events)
        hooks.check_fork()
        with self._lock:  # one lock a request: this runs after every response
            self._open_scopes = max(0, self._open_scopes - 1)
            counts = self._counts
            counts["requests"] += 1
            counts["collected"] += collected
            if failed:
                counts["failed_requests"] += 1
            if collected and not discard:
                counts["handed_over"] += collected
        if scope.overflowed:
            self._lost.record_lost_event(DropReason.REQUEST_CAP, scope.overflowed)
        if self.request_end_listeners:
            self.request_end_listeners.notify(self, events, failed)
        if not events:
            return None
        if discard:
            self._lost.record_lost_event(DropReason.FAILED_REQUEST, len(events))
            logger.info("Discarded %d Optimizely events of a failed request.", len(events))
            return None
        return events

    def add_request_end_listener(self, listener: RequestEndListener) -> None:
        """Call ``listener(self, items, failed)`` each time a request scope of this
        dispatcher closes, on the request's thread (keep it O(1))."""
        self.request_end_listeners.add(listener)

    def remove_request_end_listener(self, listener: RequestEndListener) -> None:
        """Undo :meth:`add_request_end_listener` (no error if it was not added)."""
        self.request_end_listeners.remove(listener)

    def request_scope(self) -> ScopeBlock:
        """A ``with`` / ``async with`` block that is one request.

        Inside an already open scope of this dispatcher the block joins it, so
        nested use (middleware plus a view decorator) hands events over once.
        """
        return ScopeBlock(self)

    # -- delivery ------------------------------------------------------------

    def _submit(self, events: list[Any]) -> None:
        """Hand ``events``, already counted as handed over, to the sender."""
        try:
            self.sender.submit(events)
        except Exception as exc:
            self._sender_raised(exc, events)

    def _sender_raised(self, exc: Exception, events: list[Any]) -> None:
        """``events`` were refused: no longer handed over, but lost (``sender_error``)."""
        self._count(-len(events), "handed_over")
        self._lost.record_lost_event(DropReason.SENDER_ERROR, len(events))
        logger.error(
            "The event sender raised %s while taking %d events; they are dropped.",
            type(exc).__name__,
            len(events),
        )

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event handed over so far is delivered or has failed."""
        return self.sender.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush and stop the sender. Closing twice is harmless."""
        self.sender.close(timeout)

    def stats(self) -> dict[str, Any]:
        """Counters of this dispatcher merged with those of its sender.

        ``dropped`` maps each reason to a count, from both the dispatcher
        (``request_cap``, ``failed_request``, ``outside_scope``, ...) and the
        sender (``queue_full``, ``retries_exhausted``, ...).
        """
        sender_stats = dict(self.sender.stats())
        hooks.check_fork()
        with self._lock:
            counts = {**self._counts, "open_scopes": self._open_scopes}
        dropped = Counter(self._lost.dropped())
        dropped.update(sender_stats.pop("dropped", {}) or {})
        merged: dict[str, Any] = {key: counts.get(key, 0) for key in _STATS_KEYS}
        merged.update(sender_stats)
        merged["dropped"] = dict(dropped)
        return merged

    # -- bookkeeping ---------------------------------------------------------

    def _count(self, n: int, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._counts[key] += n
