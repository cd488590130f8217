"""What an encoded event is, when two may share a POST, and the body they share.

Usage::

    from optimizely_middleware.delivery.encoded import merged_body
    from optimizely_middleware.delivery.encoding import EventEncoder

    encoder = EventEncoder()             # one per sender: it holds its envelope caches
    a = encoder.encode(log_event_1)
    b = encoder.encode(log_event_2)
    if a.key == b.key:
        body = merged_body([a, b])  # the SDK's own batch payload for both events

The merge rule is the one the SDK's ``EventFactory`` follows for a batch:
two events may share a POST if and only if their ``url``, their headers and
every top-level key of ``params`` other than ``visitors`` are equal; the POST
then carries the concatenation of their ``visitors`` lists. Equality is
checked on the serialised form (:func:`merge_key`), which is stricter than
``==`` (``1`` and ``1.0`` are not merged), so a merge can never change what
the API receives. Visitors are serialised one by one and joined as bytes:
never modified, never deduplicated, never re-ordered.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol

if TYPE_CHECKING:
    from optimizely.event_builder import Event


__all__ = [
    "ENVELOPE_CACHE_SIZE",
    "JSON_HEADERS",
    "NO_ENVELOPE",
    "NO_ENVELOPE_VALUES",
    "EncodedEvent",
    "Envelope",
    "EnvelopeValues",
    "ItemEncoder",
    "UnserializableEvent",
    "body_of",
    "bounded_set",
    "envelope_cache_key",
    "envelope_parts",
    "merge_key",
    "merged_body",
    "post_headers",
    "unmergeable_key",
]

JSON_HEADERS: Final[Mapping[str, str]] = {"Content-Type": "application/json"}
_JSON_HEADERS_KEY: Final = (("Content-Type", "application/json"),)


class UnserializableEvent(ValueError):
    """The event's payload cannot be turned into JSON. The message never contains the payload."""


@dataclass(slots=True)
class EncodedEvent:
    """One event, serialised: ``prefix + visitors + suffix`` is its own POST body.

    ``key`` is equal for two events exactly when they may share a POST, as
    ``prefix + b",".join(visitors) + suffix``. ``event`` is the item it was
    made from (passed to ``on_error``), or None. ``headers`` may be shared by
    every event of one envelope: treat it as read-only. Build it with keywords;
    the encoder passes them in order, as positional arguments cost far less.
    """

    key: Hashable
    url: str
    headers: dict[str, str]
    prefix: bytes
    visitors: bytes
    suffix: bytes
    event: object | None = None

    @property
    def nbytes(self) -> int:
        """Memory held by the serialised event (what the queue's byte cap counts)."""
        return len(self.prefix) + len(self.visitors) + len(self.suffix)


class ItemEncoder(Protocol):
    """Turns one handed-over item into an :class:`EncodedEvent`.

    Raises :class:`UnserializableEvent` (whose message never contains the
    payload) when the item cannot be encoded. May be called on several
    threads at once. An encoder with locks may also define
    ``after_fork_in_child()``; the engine calls it in a forked child before
    the child's first encode.
    """

    def encode(self, item: object) -> EncodedEvent: ...


def merge_key(url: str, headers: Mapping[str, str], prefix: bytes, suffix: bytes) -> Hashable:
    """The key that two events share exactly when the SDK would batch them into one POST:
    same url, same headers, and the same serialised top-level keys around ``visitors``."""
    if headers == JSON_HEADERS:
        headers_key: tuple[tuple[str, str], ...] = _JSON_HEADERS_KEY
    else:
        headers_key = tuple(sorted(headers.items()))
    return (url, headers_key, prefix, suffix)


class Envelope(NamedTuple):
    """Everything an event shares with the events it may be merged with."""

    key: Hashable
    url: str
    headers: dict[str, str]
    prefix: bytes
    suffix: bytes


NO_ENVELOPE: Final = Envelope(None, "", {}, b"", b"")

# Entries per envelope cache: far more event contexts (revisions, regions) and
# LogEvent envelopes than one process sees; past it the cache starts again.
ENVELOPE_CACHE_SIZE: Final = 256


def bounded_set(cache: dict[Any, Envelope], key: Any, value: Envelope) -> None:
    """Store ``value`` in ``cache``, starting the cache again when it is full. Both steps
    are atomic dict operations, so threads may race here: at worst one rebuilds."""
    if len(cache) >= ENVELOPE_CACHE_SIZE:
        cache.clear()
    cache[key] = value


def unmergeable_key() -> Hashable:
    """A key no other event shares (the ``object()`` in it lives as long as the key,
    so it cannot be reused), for a payload that is sent alone, as it is."""
    return ("unmergeable", object())


def post_headers(event: Event) -> dict[str, str]:
    """The event's headers, with ``Content-Type: application/json`` always set."""
    headers = {
        str(name): str(value)
        for name, value in (getattr(event, "headers", None) or {}).items()
        if str(name).lower() != "content-type"
    }
    headers["Content-Type"] = "application/json"
    return headers


def envelope_parts(params: dict[str, Any], dumps: Callable[[Any], str]) -> tuple[bytes, bytes]:
    """``(prefix, suffix)`` around the visitors of ``params``, in compact JSON:
    ``prefix + b",".join(visitors) + suffix`` is the body of those visitors."""
    before: list[str] = []
    after: list[str] = []
    side = before
    for name, value in params.items():
        if name == "visitors":
            side = after
            continue
        side.append(f"{dumps(name)}:{dumps(value)}")
    head = ",".join(before)
    tail = ",".join(after)
    prefix = ("{" + head + ("," if head else "") + '"visitors":[').encode()
    suffix = ("]" + ("," + tail if tail else "") + "}").encode()
    return prefix, suffix


_CACHEABLE: Final = frozenset({str, int, bool, type(None)})


def envelope_cache_key(params: dict[Any, Any]) -> tuple[Any, ...] | None:
    """A key that only equal serialisations share, or None when not cacheable.

    Only str, int, bool and None values qualify: the type is part of the key
    (``True == 1``), and floats are left out (``0.0 == -0.0``).
    """
    parts: list[Any] = []
    for name, value in params.items():
        if name == "visitors":
            parts.append(len(parts))  # where the visitors go
            continue
        if value.__class__ not in _CACHEABLE or name.__class__ is not str:
            return None
        parts.append((name, value.__class__, value))
    return tuple(parts)


class EnvelopeValues(NamedTuple):
    """The names and values of a cacheable ``params`` (see :func:`envelope_cache_key`)
    beside ``visitors``: :meth:`matches` tells whether other params have the same
    envelope, names in the same order, then the same value types, then equal values,
    without building a key.

    Example::

        kept = EnvelopeValues.of(log_event.params)
        kept.matches(next_log_event.params)   # True: the same envelope
    """

    names: tuple[str, ...]
    values_of: Callable[[dict[str, Any]], tuple[Any, ...]]
    types: tuple[type, ...]
    values: tuple[Any, ...]

    @classmethod
    def of(cls, params: dict[str, Any]) -> EnvelopeValues:
        others = [name for name in params if name != "visitors"]
        values_of: Callable[[dict[str, Any]], tuple[Any, ...]]
        if len(others) > 1:
            values_of = itemgetter(*others)
        else:  # itemgetter returns a bare value for one name, and needs at least one
            values_of = lambda params: tuple(params[name] for name in others)  # noqa: E731
        values = values_of(params)
        return cls(tuple(params), values_of, tuple(map(type, values)), values)

    def matches(self, params: dict[Any, Any]) -> bool:
        if tuple(params) != self.names:
            return False
        values = self.values_of(params)
        # Types first: they compare without calling anyone's __eq__ (and True == 1).
        return tuple(map(type, values)) == self.types and values == self.values


# Matches no params that has a visitors list (it holds no names at all).
NO_ENVELOPE_VALUES: Final = EnvelopeValues.of({})


def merged_body(items: Sequence[EncodedEvent]) -> bytes:
    """The POST body for events that all share one ``key``."""
    first = items[0]
    return body_of(first.prefix, [item.visitors for item in items], first.suffix)


def body_of(prefix: bytes, visitors: Sequence[bytes], suffix: bytes) -> bytes:
    """The POST body made of one envelope and the serialised visitors of its events.

    Built in one allocation: the envelope's two halves ride on the first and last
    visitor. ``prefix + join + suffix`` made three bodies' worth (up to a megabyte
    each), which a thread's malloc arena may hand back to the system and fault in
    again: up to 450 page faults for a full POST, with the GIL held.
    """
    if len(visitors) <= 1:
        return b"".join((prefix, *visitors, suffix))
    return b",".join([prefix + visitors[0], *visitors[1:-1], visitors[-1] + suffix])
