"""The SDK's event processor for request-scoped delivery: it keeps, it builds nothing.

Usage::

    from optimizely_middleware import RequestScopedEventDispatcher, create_client

    dispatcher = RequestScopedEventDispatcher()
    client = create_client(dispatcher, datafile=datafile_json)   # wires the processor
    assert isinstance(client.event_processor, RequestScopedEventProcessor)

The SDK hands every event it produces (``decide``, ``activate``, ``track``,
``is_feature_enabled``) to its event processor's ``process(user_event)``.
This processor appends the SDK's ``UserEvent`` to the current request's
scope and returns: no ``LogEvent`` is built and nothing is serialised on the
request's thread. The sender builds and encodes the events after the
response (see :mod:`optimizely_middleware.delivery.encoding`), in the SDK's own batch
format, and calls the client's ``LOG_EVENT`` listeners then.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from optimizely.event.event_processor import BaseEventProcessor
from optimizely.event.user_event import UserEvent
from optimizely.helpers.enums import NotificationTypes

from optimizely_middleware.delivery.encoding import PendingUserEvent

if TYPE_CHECKING:
    from optimizely.notification_center import NotificationCenter

    from optimizely_middleware.dispatcher import RequestScopedEventDispatcher

__all__ = ["RequestScopedEventProcessor"]

logger = logging.getLogger("optimizely_middleware")

_LOG_EVENT = NotificationTypes.LOG_EVENT


class RequestScopedEventProcessor(BaseEventProcessor):
    """Keeps each ``UserEvent`` in the current request's scope of ``dispatcher``.

    Pass it to ``Optimizely(event_processor=...)`` together with the same
    ``notification_center`` (:func:`~optimizely_middleware.create_client`
    does both). Inside a request ``process`` is O(1): one append. Outside
    any request the dispatcher's ``outside_scope`` policy applies:
    ``"send"`` hands the event over at once, ``"drop"`` counts it, and
    ``"raise"`` raises :class:`~optimizely_middleware.EventOutsideScopeError`
    out of the SDK call (``decide``, ``track``, ...), which the SDK does not
    catch.

    ``LOG_EVENT`` listeners of ``notification_center`` are called with the
    built ``LogEvent`` after the response, on the sender's thread, as the
    SDK's own ``BatchEventProcessor`` does.

    Example::

        center = NotificationCenter()
        processor = RequestScopedEventProcessor(dispatcher, notification_center=center)
        client = Optimizely(datafile, event_processor=processor, notification_center=center)
    """

    def __init__(
        self,
        dispatcher: RequestScopedEventDispatcher,
        *,
        notification_center: NotificationCenter | None = None,
    ) -> None:
        self.event_dispatcher = dispatcher
        self.notification_center = notification_center

    def process(self, user_event: UserEvent) -> None:
        """Keep ``user_event`` for the current request (called by the SDK)."""
        if not isinstance(user_event, UserEvent):
            logger.error("The Optimizely SDK passed an event of an unknown type; ignored.")
            return
        center = self.notification_center
        if center is not None and not center.notification_listeners[_LOG_EVENT]:
            center = None
        self.event_dispatcher.collect(PendingUserEvent(user_event, center))

    def __repr__(self) -> str:
        return f"<RequestScopedEventProcessor dispatcher={self.event_dispatcher!r}>"
