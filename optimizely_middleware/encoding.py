"""Turning what a request collected into POST-ready bytes, after the response.

Usage::

    from optimizely_middleware.encoding import EventEncoder, PendingUserEvent

    encoder = EventEncoder()                 # one per sender: it holds the envelope cache
    a = encoder.encode(PendingUserEvent(user_event, None))
    b = encoder.encode(log_event)            # a LogEvent from dispatch_event works too
    if a.key == b.key:
        body = a.prefix + a.visitors + b"," + b.visitors + a.suffix

A request's scope holds two kinds of items: the SDK's ``LogEvent`` (from
``RequestScopedEventDispatcher.dispatch_event``) and :class:`PendingUserEvent`
(from :class:`~optimizely_middleware.processor.RequestScopedEventProcessor`,
which keeps the SDK's ``UserEvent`` and builds nothing on the request path).

For a user event the encoder builds the visitor with the SDK's own
``EventFactory._create_visitor`` and serialises it with ``orjson`` straight
from the SDK's payload objects, which is what
``EventFactory.create_log_event(...).params["visitors"]`` holds, at a fraction
of the cost (no ``json.dumps`` / ``json.loads`` round trip). The envelope
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

import json
import logging
import math
import threading
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from optimizely.event.event_factory import EventFactory
from optimizely.event.payload import EventBatch
from optimizely.event.user_event import ConversionEvent, UserEvent
from optimizely.helpers.enums import NotificationTypes

from optimizely_middleware.batching import EncodedEvent, UnserializableEvent, post_headers
from optimizely_middleware.sdk_logging import SDKLogger

if TYPE_CHECKING:
    from optimizely.event.log_event import LogEvent
    from optimizely.logger import Logger
    from optimizely.notification_center import NotificationCenter

try:
    import orjson
except ImportError:  # pragma: no cover - orjson ships wheels for every mainstream platform
    orjson = None  # type: ignore[assignment]

__all__ = ["EventEncoder", "PendingUserEvent", "log_event_of"]

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


# The keys EventBatch.get_event_params drops when their value is None.
_DROPPED_WHEN_NONE: Final = frozenset({"revenue", "value", "tags", "decisions"})
_JSON_HEADERS: Final = {"Content-Type": "application/json"}
_JSON_HEADERS_KEY: Final = (("Content-Type", "application/json"),)
_ENVELOPE_CACHE_SIZE: Final = 256
# orjson refuses more than 254 levels; the visitor itself takes 6.
_MAX_TAG_DEPTH: Final = 200
_PLAIN_SCALARS: Final = frozenset({str, int, bool, type(None)})
_PLAIN_ATTRIBUTE_VALUES: Final = frozenset({str, int, bool, float})

_strict_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _payload_dict(obj: Any) -> dict[str, Any]:
    """An SDK payload object as get_event_params sees it: its ``__dict__`` without
    the None-valued keys it drops."""
    attrs: dict[str, Any] = obj.__dict__
    if None in attrs.values():
        return {k: v for k, v in attrs.items() if v is not None or k not in _DROPPED_WHEN_NONE}
    return attrs


def _refuse(obj: Any) -> Any:
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


if orjson is not None:
    _OPTIONS: Final = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS

    def _dumps_payload(obj: Any) -> bytes:
        return orjson.dumps(obj, default=_payload_dict, option=_OPTIONS)

    def _dumps_plain(obj: Any) -> bytes:
        # orjson writes NaN and infinities as null: a null needs the strict check.
        data = orjson.dumps(obj, default=_refuse, option=_OPTIONS)
        if b"null" in data:
            _strict_dumps(obj)
        return data

else:  # pragma: no cover

    def _dumps_payload(obj: Any) -> bytes:
        return _strict_dumps(obj).encode()  # the caller checks the input is plain

    def _dumps_plain(obj: Any) -> bytes:
        return _strict_dumps(obj).encode()


def _dumps_visitor(visitor: Any) -> bytes:
    """Compact JSON of one visitor of a ``LogEvent``; ValueError/TypeError/RecursionError
    when it has no JSON form (NaN, sets, ...)."""
    try:
        return _dumps_plain(visitor)
    except TypeError:
        # What orjson refuses but the stdlib writes: integers past 64 bits,
        # non-str keys, more than 254 levels.
        return _strict_dumps(visitor).encode()


def _plain_tags(tags: Any) -> bool:
    """True when ``tags`` holds only what orjson writes exactly as the SDK's
    ``json.dumps``/``json.loads`` round trip does (and no NaN)."""
    stack: list[tuple[Any, int]] = [(tags, 0)]
    while stack:
        value, depth = stack.pop()
        cls = value.__class__
        if cls in _PLAIN_SCALARS:
            continue
        if cls is float:
            if not math.isfinite(value):
                return False
            continue
        if depth >= _MAX_TAG_DEPTH:
            return False
        if cls is dict:
            for key, item in value.items():
                if key.__class__ is not str or (item is None and key in _DROPPED_WHEN_NONE):
                    return False
                if item.__class__ not in _PLAIN_SCALARS:  # scalars need no visit
                    stack.append((item, depth + 1))
        elif cls is list or cls is tuple:
            for item in value:
                if item.__class__ not in _PLAIN_SCALARS:
                    stack.append((item, depth + 1))
        else:
            return False
    return True


def _plain_user_event(user_event: Any) -> bool:
    for attribute in user_event.visitor_attributes:
        if attribute.value.__class__ not in _PLAIN_ATTRIBUTE_VALUES:
            return False
    if isinstance(user_event, ConversionEvent):
        tags = user_event.event_tags
        return tags is None or _plain_tags(tags)
    return True


class _Envelope(NamedTuple):
    key: Hashable
    url: str
    headers: dict[str, str]
    prefix: bytes
    suffix: bytes


def _split(params: dict[str, Any]) -> tuple[bytes, bytes]:
    """``(prefix, suffix)`` around the visitors of ``params`` (compact JSON)."""
    before: list[str] = []
    after: list[str] = []
    side = before
    for name, value in params.items():
        if name == "visitors":
            side = after
            continue
        side.append(f"{_strict_dumps(name)}:{_strict_dumps(value)}")
    head = ",".join(before)
    tail = ",".join(after)
    prefix = ("{" + head + ("," if head else "") + '"visitors":[').encode()
    suffix = ("]" + ("," + tail if tail else "") + "}").encode()
    return prefix, suffix


def _params_cache_key(params: dict[Any, Any]) -> tuple[Any, ...] | None:
    """A key that only equal serialisations of the envelope share (types included:
    ``True == 1``), or None when it cannot be cached (floats: ``0.0 == -0.0``)."""
    parts: list[Any] = []
    for name, value in params.items():
        if name == "visitors":
            parts.append(len(parts))
            continue
        if value.__class__ not in _PLAIN_SCALARS or name.__class__ is not str:
            return None
        parts.append((name, value.__class__, value))
    return tuple(parts)


def _context_cache_key(context: Any) -> tuple[Any, ...]:
    values = (
        context.account_id,
        context.project_id,
        context.revision,
        context.client_name,
        context.client_version,
        context.anonymize_ip,
        context.region,
    )
    return values + tuple(map(type, values))


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
    :class:`~optimizely_middleware.batching.UnserializableEvent` (whose
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
                visitor = EventFactory._create_visitor(user_event, self._sdk_logger)
                if visitor is not None:
                    envelope = self._context_envelope(user_event.event_context)
                    visitors = _dumps_payload(visitor)
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
            prefix, suffix = _split(params)
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
        cache_key = _params_cache_key(params)
        if cache_key is not None:
            cached = self._params_envelopes.get(cache_key)
            if cached is not None:
                return cached
        envelope = _split(params)
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


def fast_path_problem(encoder: EventEncoder) -> str | None:
    """Compare the fast path with ``create_log_event`` on synthetic events built from
    the SDK's own classes; None when they agree, else what differs."""
    events = _synthetic_user_events()
    sdk_logger = encoder._sdk_logger
    for build in (EventFactory._create_visitor, EventBatch.get_event_params):
        if not callable(build):
            return "a payload builder is missing"
    encoded: list[EncodedEvent] = []
    for user_event in events:
        if not _plain_user_event(user_event):
            return "the synthetic events are not plain"
        visitor = EventFactory._create_visitor(user_event, sdk_logger)
        if visitor is None:
            return "_create_visitor built nothing"
        envelope = encoder._context_envelope(user_event.event_context)
        encoded.append(
            EncodedEvent(
                key=envelope.key,
                url=envelope.url,
                headers=envelope.headers,
                prefix=envelope.prefix,
                visitors=_dumps_payload(visitor),
                suffix=envelope.suffix,
                event=None,
            )
        )
    if any(item.key != encoded[0].key for item in encoded):
        return "events of one context got different envelopes"
    first = encoded[0]
    body = first.prefix + b",".join(item.visitors for item in encoded) + first.suffix
    expected = EventFactory.create_log_event(list(events), sdk_logger)
    if expected is None:
        return "create_log_event built nothing"
    if first.url != expected.url or first.headers != dict(expected.headers or {}):
        return "the url or headers differ"
    if canonical_json(json.loads(body)) != canonical_json(expected.params):
        return "the payload differs"
    return None


def canonical_json(value: Any) -> str:
    """A string equal for two JSON values exactly when they are equal, types included
    (``1``, ``1.0`` and ``true`` differ)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)


def _synthetic_user_events() -> list[UserEvent]:
    """An impression (with a cmab uuid) and a conversion with revenue, value and
    nested tags, of one event context, built from the SDK's own classes."""
    from optimizely import entities
    from optimizely.event.payload import VisitorAttribute
    from optimizely.event.user_event import EventContext, ImpressionEvent
    from optimizely.helpers.event_tag_utils import EventTags

    context = EventContext("1001", "2001", "7", True, "EU")
    attributes = [
        VisitorAttribute("3001", "plan", "custom", "pro"),
        VisitorAttribute("3002", "age", "custom", 41),
        VisitorAttribute("3003", "score", "custom", 0.5),
        VisitorAttribute("$opt_bot_filtering", "$opt_bot_filtering", "custom", False),
    ]
    experiment = entities.Experiment("4001", "exp", "Running", [], [], {}, [], "5001")
    variation = entities.Variation("6001", "on", featureEnabled=True)
    impression = ImpressionEvent(
        context, "user-1", experiment, attributes, variation,
        "flag", "exp", "feature-test", True, False, "cmab-1",
    )  # fmt: skip
    event = entities.Event("8001", "purchase", ["4001"])
    tags = EventTags({"revenue": 1299, "value": "3.5", "nested": {"a": [1, 2.5, None, "x"]}})
    conversion = ConversionEvent(context, event, "user-2", [], tags, False)
    plain = ConversionEvent(context, event, "user-3", attributes[:1], None, None)
    return [impression, conversion, plain]
