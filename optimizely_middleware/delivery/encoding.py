"""Turning what a request collected into POST-ready bytes, after the response.

Usage::

    from optimizely_middleware.delivery.encoding import EventEncoder, PendingUserEvent

    encoder = EventEncoder()                 # one per sender: it holds the envelope cache
    a = encoder.encode(PendingUserEvent(user_event, None))
    b = encoder.encode(log_event)            # a LogEvent from dispatch_event works too
    if a.key == b.key:
        body = a.prefix + a.visitors + b"," + b.visitors + a.suffix

A request's scope holds two kinds of items: the SDK's ``LogEvent`` (from
``RequestScopedEventDispatcher.dispatch_event``) and :class:`PendingUserEvent`
(from :class:`~optimizely_middleware.processor.RequestScopedEventProcessor`,
which keeps the SDK's ``UserEvent`` and builds nothing on the request path).

For a user event the encoder writes the visitor that the SDK's
``EventFactory._create_visitor`` builds, as plain dicts serialised with
``orjson`` (:func:`~optimizely_middleware.delivery.visitor_json.visitor_json`): what
``EventFactory.create_log_event(...).params["visitors"]`` holds, at a fraction
of the cost (no payload objects, no ``json.dumps`` / ``json.loads`` round trip). The envelope
(every top-level key except ``visitors``, and the US or EU endpoint) is built
once per event context by the SDK's ``EventBatch`` and cached on the encoder.
Two events get the same ``key`` exactly when the SDK would batch them
together: same url, headers and top-level keys.

The fast path only runs on input it is sure about (tags and attributes of
plain JSON types, finite floats); anything else goes through
``EventFactory.create_log_event``, so the SDK decides what it means. When
the encoder is built, a guard runs that same fast path on synthetic events
and compares it with ``create_log_event``; if a future SDK changes its
payload classes, the encoder warns once and uses ``create_log_event`` for
everything.

One encoder serves every thread that ends a request: ``encode`` takes no
lock. Its caches are dicts of immutable values, bounded in size, whose
``get`` and item assignment are atomic, and the last event context's
envelope, replaced by one assignment; two threads that miss at once both
build the same value, and either may be kept. ``LogEvent``s are encoded by
:mod:`~optimizely_middleware.delivery.log_event_encoding`, on the same terms.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from optimizely.event.event_factory import EventFactory
from optimizely.event.payload import EventBatch
from optimizely.event.user_event import UserEvent
from optimizely.helpers.enums import NotificationTypes

from optimizely_middleware.delivery.encoded import (
    NO_ENVELOPE,
    EncodedEvent,
    Envelope,
    UnserializableEvent,
    bounded_set,
    envelope_parts,
    merge_key,
)
from optimizely_middleware.delivery.encoding_guard import fast_path_problem
from optimizely_middleware.delivery.log_event_encoding import LogEventEncoder
from optimizely_middleware.delivery.visitor_json import strict_json, visitor_json
from optimizely_middleware.sdk_logging import SDKLogger

if TYPE_CHECKING:
    from optimizely.event.log_event import LogEvent
    from optimizely.logger import Logger
    from optimizely.notification_center import NotificationCenter

__all__ = ["EventEncoder", "PendingUserEvent", "log_event_of"]

logger = logging.getLogger("optimizely_middleware")

_NOTHING: Final = object()  # no event context value is this object


class PendingUserEvent(NamedTuple):
    """What the request-scoped processor keeps: the SDK's ``UserEvent``, built later.

    ``notification_center`` is set only when the client had ``LOG_EVENT``
    listeners when the event was processed; they are called with the built
    ``LogEvent`` after the response.
    """

    user_event: UserEvent
    notification_center: NotificationCenter | None

    def to_log_event(self) -> LogEvent:
        """The ``LogEvent`` the SDK builds for this event (``create_log_event``; no
        notification is sent). Raises what the SDK raises for a bad event."""
        log_event = EventFactory.create_log_event(self.user_event, SDKLogger())
        if log_event is None:
            raise UnserializableEvent("the SDK built no event")
        return log_event

    # So that sinks written for LogEvents keep working: each access builds the
    # LogEvent again (the encoder never uses these). A bad event raises
    # AttributeError, so getattr(item, "params", default) stays safe.
    def _built(self) -> LogEvent:
        try:
            return self.to_log_event()
        except Exception as exc:
            raise AttributeError(
                f"the SDK cannot build this {type(self.user_event).__name__} ({type(exc).__name__})"
            ) from None

    @property
    def url(self) -> str:
        return self._built().url

    @property
    def params(self) -> dict[str, Any]:
        return self._built().params

    @property
    def headers(self) -> dict[str, str] | None:
        return self._built().headers

    @property
    def http_verb(self) -> str:
        return self._built().http_verb


def log_event_of(item: object, sdk_logger: Logger | None = None) -> Any:
    """The SDK's ``LogEvent`` for ``item`` (built with ``create_log_event`` if it is a
    :class:`PendingUserEvent`); fires no notification. Raises what the SDK raises."""
    if isinstance(item, PendingUserEvent):
        if sdk_logger is None:
            return item.to_log_event()
        return EventFactory.create_log_event(item.user_event, sdk_logger)
    return item


class EventEncoder:
    """Encodes handed-over items (``LogEvent`` or :class:`PendingUserEvent`) for the sender.

    One per :class:`~optimizely_middleware.EventSender`; it holds its
    envelope caches, so nothing is shared between senders. ``encode`` runs
    on the thread or task that ends a request, on several at once, and takes
    no lock. It raises
    :class:`~optimizely_middleware.delivery.encoded.UnserializableEvent` (whose
    message never contains the payload) for an event that has no JSON form:
    a set, datetime or bytes tag, a dict nested 10,000 deep, NaN. ``LOG_EVENT``
    listeners of a :class:`PendingUserEvent` are called here, with the
    ``LogEvent`` the SDK would have passed them.

    The run-time guard runs once, here in ``__init__`` (under a millisecond):
    at startup, where a sender is built, rather than in the first request's
    hand-off, and before any other thread can see the encoder.

    Example::

        encoder = EventEncoder()
        encoded = encoder.encode(PendingUserEvent(user_event, None))
        body = encoded.prefix + encoded.visitors + encoded.suffix
        assert json.loads(body) == EventFactory.create_log_event(user_event, log).params
    """

    def __init__(self, *, sdk_logger: Logger | None = None) -> None:
        self._sdk_logger: Logger = sdk_logger or SDKLogger()
        self._contexts: dict[tuple[Any, ...], Envelope] = {}
        self._last_context: tuple[tuple[Any, ...], Envelope] = ((_NOTHING,) * 7, NO_ENVELOPE)
        #: The ``LogEvent`` encoder, with its own envelope caches.
        self.log_events = LogEventEncoder()
        self._fast_path = self._run_guard()

    # -- public ----------------------------------------------------------------

    def encode(self, item: object) -> EncodedEvent:
        """Serialise ``item``; raise ``UnserializableEvent`` when it cannot be."""
        if item.__class__ is PendingUserEvent:
            if self._fast_path and item.notification_center is None:
                encoded = self.encode_fast(item)
                if encoded is not None:
                    return encoded
            return self._encode_via_sdk(item)
        return self.log_events.encode(item, item)

    @property
    def fast_path(self) -> bool:
        """Whether user events are serialised straight from the SDK's payload objects
        (False when the guard found that this SDK's output differs)."""
        return self._fast_path

    def encode_fast(self, item: PendingUserEvent) -> EncodedEvent | None:
        """The fast path alone: ``item`` written without the SDK's payload classes, or
        None when it is not plain input (the SDK then decides). What the guard checks."""
        user_event = item.user_event
        try:
            visitors = visitor_json(user_event, self._sdk_logger)
            if visitors is None:
                return None
            envelope = self._context_envelope(user_event.event_context)
        except Exception:
            return None  # the SDK's own path decides (and names the error)
        return EncodedEvent(
            envelope.key,
            envelope.url,
            envelope.headers,
            envelope.prefix,
            visitors,
            envelope.suffix,
            item,
        )

    # -- user events -------------------------------------------------------------

    def _encode_via_sdk(self, item: PendingUserEvent) -> EncodedEvent:
        kind = type(item.user_event).__name__
        try:
            log_event = EventFactory.create_log_event(item.user_event, self._sdk_logger)
        except Exception as exc:
            raise UnserializableEvent(
                f"the SDK cannot build this {kind} ({type(exc).__name__})"
            ) from None
        if log_event is None:
            raise UnserializableEvent(f"the SDK built no event from this {kind}")
        center = item.notification_center
        if center is not None:
            try:
                center.send_notifications(NotificationTypes.LOG_EVENT, log_event)
            except Exception:
                logger.warning("A LOG_EVENT listener raised; the event is sent anyway.")
        return self.log_events.encode(log_event, item, kind)

    def _context_envelope(self, context: Any) -> Envelope:
        # Events from one ProjectConfig carry the very same value objects: the same
        # objects are the same serialisation, checked without building a key.
        seen, last = self._last_context
        if (
            context.revision is seen[2]
            and context.account_id is seen[0]
            and context.project_id is seen[1]
            and context.anonymize_ip is seen[5]
            and context.region is seen[6]
            and context.client_name is seen[3]
            and context.client_version is seen[4]
        ):
            return last
        values = (
            context.account_id,
            context.project_id,
            context.revision,
            context.client_name,
            context.client_version,
            context.anonymize_ip,
            context.region,  # last: it picks the url and is not in the body
        )
        cache_key = values + tuple(map(type, values))  # True == 1, but they serialise apart
        envelope = self._contexts.get(cache_key)
        if envelope is None:
            batch = EventBatch(*values[:-1], True)  # enrich_decisions, as EventFactory sets it
            prefix, suffix = envelope_parts(batch.get_event_params(), strict_json)
            region = str(context.region or "US").upper()
            url = EventFactory.EVENT_ENDPOINTS.get(region, EventFactory.EVENT_ENDPOINTS["US"])
            headers = dict(EventFactory.HTTP_HEADERS)
            key = merge_key(url, headers, prefix, suffix)
            envelope = Envelope(key, url, headers, prefix, suffix)
            bounded_set(self._contexts, cache_key, envelope)
        self._last_context = (values, envelope)  # one atomic assignment
        return envelope

    # -- the guard ---------------------------------------------------------------

    def _run_guard(self) -> bool:
        def fast_path(user_event: UserEvent) -> EncodedEvent | None:
            return self.encode_fast(PendingUserEvent(user_event, None))

        try:
            problem = fast_path_problem(fast_path)
        except Exception as exc:
            problem = f"the check raised {type(exc).__name__}"
        if problem is not None:
            logger.warning(
                "optimizely_middleware: this Optimizely SDK's event payload differs from "
                "what the fast encoder produces (%s); every event is built with the SDK's "
                "EventFactory.create_log_event instead, which costs more CPU after each "
                "response.",
                problem,
            )
        return problem is None
