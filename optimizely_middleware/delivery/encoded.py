"""Serialising events once, and merging compatible ones into one POST body.

Usage::

    encoder = LogEventEncoder()          # one per sender: it holds its envelope cache
    a = encoder.encode(log_event_1)
    b = encoder.encode(log_event_2)
    if a.key == b.key:
        body = merged_body([a, b])  # the SDK's own batch payload for both events

The merge rule is the one the SDK's ``EventFactory`` follows for a batch:
two events may share a POST if and only if their ``url``, their headers and
every top-level key of ``params`` other than ``visitors`` are equal; the POST
then carries the concatenation of their ``visitors`` lists. Equality is
checked on the serialised form, which is stricter than ``==`` (``1`` and
``1.0`` are not merged), so a merge can never change what the API receives.
Visitors are serialised one by one and joined as bytes: never modified,
never deduplicated, never re-ordered.

Each event is serialised exactly once, by the delivery engine's worker
thread, in short slices (see :mod:`optimizely_middleware.engine`), never on
the request's thread. :class:`LogEventEncoder` serialises the SDK's
``LogEvent`` with ``json.dumps(..., separators=(",", ":"))``; a body made of
one event is byte-for-byte ``json.dumps(event.params, separators=(",", ":"))``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from optimizely.event_builder import Event

__all__ = [
    "EncodedEvent",
    "ItemEncoder",
    "LogEventEncoder",
    "UnserializableEvent",
    "body_of",
    "encode_event",
    "merged_body",
    "post_headers",
]

# check_circular=False: a circular payload still fails (RecursionError, refused
# like any other), and the id bookkeeping it saves is a sixth of the encoding time.
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False, check_circular=False).encode


class UnserializableEvent(ValueError):
    """The event's payload cannot be turned into JSON. The message never contains the payload."""


@dataclass(slots=True, kw_only=True)
class EncodedEvent:
    """One event, serialised: ``prefix + visitors + suffix`` is its own POST body.

    ``key`` is equal for two events exactly when they may share a POST, as
    ``prefix + b",".join(visitors) + suffix``. ``event`` is the item it was
    made from (passed to ``on_error``), or None.
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
    payload) when the item cannot be encoded. Called on a worker thread.
    An encoder with locks may also define ``after_fork_in_child()``; the engine
    calls it in a forked child before the child's first encode.
    """

    def encode(self, item: object) -> EncodedEvent: ...


def post_headers(event: Event) -> dict[str, str]:
    """The event's headers, with ``Content-Type: application/json`` always set."""
    headers = {
        str(name): str(value)
        for name, value in (getattr(event, "headers", None) or {}).items()
        if str(name).lower() != "content-type"
    }
    headers["Content-Type"] = "application/json"
    return headers


# Each unmergeable event gets a key of its own (not id(event): the sender lets
# events go once serialised, and a freed id can be reused).
_unmergeable_keys = itertools.count()

_JSON_HEADERS = {"Content-Type": "application/json"}
_JSON_HEADERS_KEY: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
_ENVELOPE_CACHE_SIZE = 256


class LogEventEncoder:
    """Encodes the SDK's ``LogEvent`` objects; its envelope cache lives on the instance.

    Every event of one SDK client and datafile revision shares one envelope
    (every top-level key except ``visitors``), so most events skip that work.
    Values JSON cannot represent (objects, NaN, infinities, circular
    references) are refused, so that one bad event cannot spoil a merged POST
    that the API would reject as a whole.

    Example::

        encoder = LogEventEncoder()
        encoded = encoder.encode(log_event)
        assert encoded.prefix + encoded.visitors + encoded.suffix == compact_json(log_event.params)
    """

    def __init__(self) -> None:
        self._envelopes: dict[tuple[Any, ...], tuple[bytes, bytes]] = {}

    def encode(self, item: object) -> EncodedEvent:
        """Serialise ``item`` (a ``LogEvent``); :class:`UnserializableEvent` if it cannot be."""
        try:
            url = str(item.url)  # type: ignore[attr-defined]
            raw_headers = getattr(item, "headers", None)
            params = item.params  # type: ignore[attr-defined]
        except AttributeError as exc:
            raise UnserializableEvent(f"{type(exc).__name__} while reading the event") from None
        if not raw_headers or raw_headers == _JSON_HEADERS:
            headers, headers_key = dict(_JSON_HEADERS), _JSON_HEADERS_KEY
        else:
            headers = post_headers(item)  # type: ignore[arg-type]
            headers_key = tuple(sorted(headers.items()))
        try:
            envelope = _split_envelope(params, self._envelopes)
            if envelope is None:
                body = _dumps(params).encode()
                key: Hashable = ("unmergeable", next(_unmergeable_keys))
                return EncodedEvent(
                    key=key, url=url, headers=headers, prefix=b"", visitors=body, suffix=b"",
                    event=item,
                )  # fmt: skip
            prefix, suffix, visitor_list = envelope
            if len(visitor_list) == 1:
                visitors = _dumps(visitor_list[0]).encode()
            else:
                visitors = ",".join(_dumps(visitor) for visitor in visitor_list).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            raise UnserializableEvent(f"{type(exc).__name__}: {_first_line(exc)}") from None
        return EncodedEvent(
            key=(url, headers_key, prefix, suffix),
            url=url,
            headers=headers,
            prefix=prefix,
            visitors=visitors,
            suffix=suffix,
            event=item,
        )


def encode_event(event: Event) -> EncodedEvent:
    """Serialise one ``LogEvent`` (with a fresh :class:`LogEventEncoder`, so no shared cache)."""
    return LogEventEncoder().encode(event)


def _split_envelope(
    params: Any, cache: dict[tuple[Any, ...], tuple[bytes, bytes]]
) -> tuple[bytes, bytes, list[Any]] | None:
    """``(prefix, suffix, visitors)`` such that ``prefix + ",".join(visitors) + suffix``
    is the compact JSON of ``params``; None when ``params`` is not mergeable."""
    if not isinstance(params, dict):
        return None
    visitors = params.get("visitors")
    if not isinstance(visitors, list) or not visitors:
        return None
    cache_key = envelope_cache_key(params)
    cached = cache.get(cache_key) if cache_key is not None else None
    if cached is not None:
        return cached[0], cached[1], visitors
    if not all(isinstance(name, str) for name in params):
        return None
    prefix, suffix = envelope_parts(params, _dumps)
    if cache_key is not None:
        if len(cache) >= _ENVELOPE_CACHE_SIZE:
            cache.clear()
        cache[cache_key] = (prefix, suffix)
    return prefix, suffix, visitors


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


_CACHEABLE = frozenset({str, int, bool, type(None)})


def merged_body(items: Sequence[EncodedEvent]) -> bytes:
    """The POST body for events that all share one ``key``."""
    first = items[0]
    return body_of(first.prefix, [item.visitors for item in items], first.suffix)


def body_of(prefix: bytes, visitors: Sequence[bytes], suffix: bytes) -> bytes:
    """The POST body made of one envelope and the serialised visitors of its events."""
    if len(visitors) == 1:
        return prefix + visitors[0] + suffix
    return prefix + b",".join(visitors) + suffix


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()
    return text[0][:200] if text else ""
