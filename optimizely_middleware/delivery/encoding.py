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
``EventFactory.create_log_event``, so the SDK decides what it means. At
first use a guard compares the fast path with ``create_log_event`` on
synthetic events; if a future SDK changes its payload classes, the encoder
warns once and uses ``create_log_event`` for everything.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, NamedTuple

from optimizely.event.event_factory import EventFactory
from optimizely.event.payload import EventBatch
from optimizely.event.user_event import UserEvent
from optimizely.helpers.enums import NotificationTypes

from optimizely_middleware.delivery.encoded import (
    EncodedEvent,
    UnserializableEvent,
    envelope_cache_key,
    envelope_parts,
    post_headers,
)
from optimizely_middleware.delivery.encoding_guard import (
    fast_path_problem,
)  # not lazily: see after_fork_in_child
from optimizely_middleware.delivery.visitor_json import (
    _ENVELOPE_CACHE_SIZE,
    _JSON_HEADERS,
    _JSON_HEADERS_KEY,
    _context_cache_key,
    _dumps_visitor,
    _Envelope,
    _plain_user_event,
    _strict_dumps,
    canonical_json,
    visitor_json,
)
from optimizely_middleware.sdk_logging import SDKLogger

if TYPE_CHECKING:
    from optimizely.event.log_event import LogEvent
    from optimizely.logger import Logger
    from optimizely.notification_center import NotificationCenter

__all__ = ["EventEncoder", "PendingUserEvent", "canonical_json", "log_event_of"]

logger = logging.getLogger("optimizely_middleware")


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


def _quiet_logger() -> Logger:
    return SDKLogger()


class EventEncoder:
    """Encodes handed-over items (``LogEvent`` or :class:`PendingUserEvent`) for the sender.

    One per :class:`~optimizely_middleware.EventSender`; it holds its
    envelope cache, so nothing is shared between senders. ``encode`` runs on
    the sender's worker thread and raises
    :class:`~optimizely_middleware.delivery.encoded.UnserializableEvent` (whose
    message never contains the payload) for an event that has no JSON form:
    a set, datetime or bytes tag, a dict nested 10,000 deep, NaN. ``LOG_EVENT``
    listeners of a :class:`PendingUserEvent` are called here, with the
    ``LogEvent`` the SDK would have passed them.

    Example::

        encoder = EventEncoder()
        encoded = encoder.encode(PendingUserEvent(user_event, None))
        body = encoded.prefix + encoded.visitors + encoded.suffix
        assert json.loads(body) == EventFactory.create_log_event(user_event, log).params
    """

    def __init__(self, *, sdk_logger: Logger | None = None) -> None:
        self._sdk_logger: Logger = sdk_logger or _quiet_logger()
        self._contexts: dict[tuple[Any, ...], _Envelope] = {}
        self._params_envelopes: dict[tuple[Any, ...], tuple[bytes, bytes]] = {}
        self._fast_path: bool | None = None  # None until the guard has run
        self._guard_lock = threading.Lock()

    # -- public ----------------------------------------------------------------

    def after_fork_in_child(self) -> None:
        """A new guard lock: a parent thread may have been running the guard at
        fork time (it runs on the first encode, often just before a server forks
        its workers). A guard left unfinished then runs again in the child."""
        self._guard_lock = threading.Lock()

    def encode(self, item: object) -> EncodedEvent:
        """Serialise ``item``; raise ``UnserializableEvent`` when it cannot be."""
        if item.__class__ is PendingUserEvent:
            return self._encode_user_event(item)
        return self._encode_log_event(item, item)

    @property
    def fast_path(self) -> bool:
        """Whether user events are serialised straight from the SDK's payload objects
        (False after the guard found that this SDK's output differs)."""
        if self._fast_path is None:
            self._run_guard()
        return bool(self._fast_path)

    # -- user events -------------------------------------------------------------

    def _encode_user_event(self, item: PendingUserEvent) -> EncodedEvent:
        user_event = item.user_event
        fast = self._fast_path
        if fast is None:
            fast = self.fast_path
        if item.notification_center is None and fast and _plain_user_event(user_event):
            try:
                visitors = visitor_json(user_event, self._sdk_logger)
                if visitors is not None:
                    envelope = self._context_envelope(user_event.event_context)
                    return EncodedEvent(
                        key=envelope.key,
                        url=envelope.url,
                        headers=envelope.headers,
                        prefix=envelope.prefix,
                        visitors=visitors,
                        suffix=envelope.suffix,
                        event=item,
                    )
            except Exception:
                pass  # the SDK's own path below decides (and names the error)
        return self._encode_via_sdk(item)

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
        return self._encode_log_event(log_event, item, kind)

    def _context_envelope(self, context: Any) -> _Envelope:
        cache_key = _context_cache_key(context)
        envelope = self._contexts.get(cache_key)
        if envelope is None:
            batch = EventBatch(
                context.account_id,
                context.project_id,
                context.revision,
                context.client_name,
                context.client_version,
                context.anonymize_ip,
                True,
            )
            params = batch.get_event_params()
            prefix, suffix = envelope_parts(params, _strict_dumps)
            region = str(context.region or "US").upper()
            url = EventFactory.EVENT_ENDPOINTS.get(region, EventFactory.EVENT_ENDPOINTS["US"])
            headers = dict(EventFactory.HTTP_HEADERS)
            key = (url, self._headers_key(headers), prefix, suffix)
            envelope = _Envelope(key, url, headers, prefix, suffix)
            if len(self._contexts) >= _ENVELOPE_CACHE_SIZE:
                self._contexts.clear()
            self._contexts[cache_key] = envelope
        return envelope

    # -- LogEvents ----------------------------------------------------------------

    def _encode_log_event(self, event: Any, item: object, kind: str = "LogEvent") -> EncodedEvent:
        try:
            url = str(event.url)
            params = event.params
            raw_headers = getattr(event, "headers", None)
        except Exception as exc:
            raise UnserializableEvent(f"{type(exc).__name__} while reading the event") from None
        if not raw_headers or raw_headers == _JSON_HEADERS:
            headers: dict[str, str] = dict(_JSON_HEADERS)
        else:
            headers = post_headers(event)
        try:
            visitors = params.get("visitors") if isinstance(params, dict) else None
            if not isinstance(visitors, list) or not visitors:
                # Not a mergeable payload: send it as it is, on its own.
                return EncodedEvent(
                    key=("unmergeable", object()),
                    url=url,
                    headers=headers,
                    prefix=b"",
                    visitors=_dumps_visitor(params),
                    suffix=b"",
                    event=item,
                )
            prefix, suffix = self._params_envelope(params)
            encoded = [_dumps_visitor(visitor) for visitor in visitors]
        except (TypeError, ValueError, RecursionError) as exc:
            raise UnserializableEvent(
                f"the payload of this {kind} has no JSON form ({type(exc).__name__})"
            ) from None
        return EncodedEvent(
            key=(url, self._headers_key(headers), prefix, suffix),
            url=url,
            headers=headers,
            prefix=prefix,
            visitors=encoded[0] if len(encoded) == 1 else b",".join(encoded),
            suffix=suffix,
            event=item,
        )

    def _params_envelope(self, params: dict[Any, Any]) -> tuple[bytes, bytes]:
        if not all(name.__class__ is str for name in params):
            raise TypeError("keys must be str")
        cache_key = envelope_cache_key(params)
        if cache_key is not None:
            cached = self._params_envelopes.get(cache_key)
            if cached is not None:
                return cached
        envelope = envelope_parts(params, _strict_dumps)
        if cache_key is not None:
            if len(self._params_envelopes) >= _ENVELOPE_CACHE_SIZE:
                self._params_envelopes.clear()
            self._params_envelopes[cache_key] = envelope
        return envelope

    @staticmethod
    def _headers_key(headers: dict[str, str]) -> tuple[tuple[str, str], ...]:
        if headers == _JSON_HEADERS:
            return _JSON_HEADERS_KEY
        return tuple(sorted(headers.items()))

    # -- the guard ---------------------------------------------------------------

    def _run_guard(self) -> None:
        with self._guard_lock:
            if self._fast_path is not None:
                return
            try:
                problem = fast_path_problem(self)
            except Exception as exc:
                problem = f"the check raised {type(exc).__name__}"
            self._fast_path = problem is None
        if problem is not None:
            logger.warning(
                "optimizely_middleware: this Optimizely SDK's event payload differs from "
                "what the fast encoder produces (%s); every event is built with the SDK's "
                "EventFactory.create_log_event instead, which costs more CPU after each "
                "response.",
                problem,
            )
