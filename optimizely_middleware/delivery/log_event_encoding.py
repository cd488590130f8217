"""The SDK's ``LogEvent`` into POST-ready bytes.

Usage (the :class:`~optimizely_middleware.delivery.encoding.EventEncoder` owns one)::

    encoder = LogEventEncoder()
    encoded = encoder.encode(log_event, log_event)   # (event, the item it stands for)
    encoded.prefix + encoded.visitors + encoded.suffix  # == the JSON of log_event.params

A ``LogEvent`` of the SDK's shape (default headers, ``visitors`` the last key
of ``params``) is written whole in one ``orjson`` call. When those bytes
begin with the envelope of a ``LogEvent`` seen before (the last one, or one
of a few kept by their bytes, for a process with several projects), the
visitors are the bytes between that envelope and the closing ``]}``, and
nothing else is looked at. JSON leaves no doubt there: a string cannot
hold an unescaped quote, so equal leading bytes up to ``"visitors":[`` are
equal names, value types and values. Anything else (other headers, another
key order, a payload ``orjson`` refuses or whose JSON holds a ``null``, which
may have been NaN) takes the careful path: the envelope matched by names,
value types and values, then cached, and each visitor written on its own.

Like the rest of the encoder it takes no lock: its caches are dicts of
immutable values, bounded, read and written with atomic dict operations,
and the last envelopes are replaced by one assignment each.
"""

from __future__ import annotations

from typing import Any, Final

from optimizely_middleware.delivery.encoded import (
    JSON_HEADERS,
    NO_ENVELOPE,
    NO_ENVELOPE_VALUES,
    EncodedEvent,
    Envelope,
    EnvelopeValues,
    UnserializableEvent,
    bounded_set,
    envelope_cache_key,
    envelope_parts,
    merge_key,
    post_headers,
    unmergeable_key,
)
from optimizely_middleware.delivery.visitor_json import compact_json, plain_json, strict_json

__all__ = ["LogEventEncoder"]

# How many envelope lengths a payload's first bytes are looked up by, after the last one.
_KNOWN_LENGTHS: Final = 8


_NO_PREFIX: Final = b"\xff"  # no JSON begins with it
# A payload whose last key is ``visitors`` ends with this, after its visitors.
_LAST_LIST_SUFFIX: Final = b"]}"
_CLOSE: Final = ord("]")  # right after the prefix: the visitors list is empty


class LogEventEncoder:
    """Encodes ``LogEvent``s: the dispatcher wiring's, and those the SDK builds for a user
    event the fast path leaves to it. One per :class:`EventEncoder`, shared by threads.

    Example::

        encoder = LogEventEncoder()
        encoded = encoder.encode(log_event, log_event)
        assert json.loads(encoded.prefix + encoded.visitors + encoded.suffix) == log_event.params
    """

    def __init__(self) -> None:
        self._params_envelopes: dict[tuple[Any, ...], Envelope] = {}
        # The last cacheable envelope, matched by value: (url, what its params held, envelope).
        self._last_params = ("", NO_ENVELOPE_VALUES, NO_ENVELOPE)
        # Envelopes by the bytes a payload begins with: the last one, then (url, prefix).
        self._last_payload = ("", _NO_PREFIX, NO_ENVELOPE)
        self._payload_envelopes: dict[tuple[str, bytes], Envelope] = {}
        self._prefix_lengths: tuple[int, ...] = ()

    def encode(self, event: Any, item: object, kind: str = "LogEvent") -> EncodedEvent:
        """Serialise ``event``; ``item`` (what was handed over) rides along. Raises
        :class:`UnserializableEvent` (without the payload) when it has no JSON form."""
        try:
            url = str(event.url)
            params = event.params
            raw_headers = getattr(event, "headers", None)
        except Exception as exc:
            raise UnserializableEvent(f"{type(exc).__name__} while reading the event") from None
        whole: bytes | None = None
        if not raw_headers or raw_headers == JSON_HEADERS:
            headers: dict[str, str] | None = None  # the shared JSON headers
            if params.__class__ is dict and params and next(reversed(params)) == "visitors":
                whole = plain_json(params)
                if whole is not None:
                    encoded = self._by_known_bytes(url, whole, item)
                    if encoded is not None:
                        return encoded
        else:
            headers = post_headers(event)
        try:
            visitors: Any = params.get("visitors") if isinstance(params, dict) else None
            envelope = (
                self._params_envelope(url, headers, params)
                if isinstance(visitors, list) and visitors
                else None
            )
            if envelope is None:
                # Not a mergeable payload: send it as it is, on its own.
                return EncodedEvent(
                    unmergeable_key(),
                    url,
                    headers if headers is not None else dict(JSON_HEADERS),
                    b"",
                    whole if whole is not None else compact_json(params),
                    b"",
                    item,
                )
            if (
                whole is not None
                and envelope.suffix == _LAST_LIST_SUFFIX
                and whole.startswith(envelope.prefix)
            ):
                self._remember_bytes(url, envelope)
                encoded_visitors = whole[len(envelope.prefix) : -2]
            elif len(visitors) == 1:
                encoded_visitors = compact_json(visitors[0])
            else:
                encoded_visitors = b",".join([compact_json(visitor) for visitor in visitors])
        except (TypeError, ValueError, RecursionError) as exc:
            raise UnserializableEvent(
                f"the payload of this {kind} has no JSON form ({type(exc).__name__})"
            ) from None
        return EncodedEvent(
            envelope.key,
            url,
            envelope.headers,
            envelope.prefix,
            encoded_visitors,
            envelope.suffix,
            item,
        )

    # -- envelopes known by their bytes ----------------------------------------------

    def _by_known_bytes(self, url: str, whole: bytes, item: object) -> EncodedEvent | None:
        """``whole`` (a payload with ``visitors`` last) split at an envelope seen before,
        or None when it begins with none of them or its visitors list is empty."""
        last_url, prefix, envelope = self._last_payload
        if not (url == last_url and whole.startswith(prefix)):
            known = self._payload_envelopes
            for length in self._prefix_lengths:
                found = known.get((url, whole[:length]))
                if found is not None:
                    envelope, prefix = found, found.prefix
                    self._last_payload = (url, prefix, envelope)  # one assignment
                    break
            else:
                return None
        start = len(prefix)
        if whole[start] == _CLOSE:
            return None
        return EncodedEvent(
            envelope.key,
            url,
            envelope.headers,
            prefix,
            whole[start:-2],
            envelope.suffix,
            item,
        )

    def _remember_bytes(self, url: str, envelope: Envelope) -> None:
        self._last_payload = (url, envelope.prefix, envelope)  # one assignment
        bounded_set(self._payload_envelopes, (url, envelope.prefix), envelope)
        length = len(envelope.prefix)
        lengths = self._prefix_lengths
        if length not in lengths and len(lengths) < _KNOWN_LENGTHS:
            self._prefix_lengths = (*lengths, length)  # one assignment

    # -- envelopes matched by value ----------------------------------------------------

    def _params_envelope(
        self, url: str, headers: dict[str, str] | None, params: dict[Any, Any]
    ) -> Envelope | None:
        """The envelope of ``params`` (a non-empty visitors list), or None when a
        top-level name is not a str (the payload is then sent alone). Cached when the
        headers are the default JSON ones and the values exact (see
        :func:`~optimizely_middleware.delivery.encoded.envelope_cache_key`)."""
        if headers is None:
            # The SDK's LogEvents come from json.loads, so each has new value objects.
            last_url, last_values, last_envelope = self._last_params
            if url == last_url and last_values.matches(params):
                return last_envelope
        if not all(name.__class__ is str for name in params):
            return None
        cache_key = envelope_cache_key(params) if headers is None else None
        if cache_key is not None:
            cache_key = (url, *cache_key)
            envelope = self._params_envelopes.get(cache_key)
            if envelope is None:
                envelope = self._new_params_envelope(url, dict(JSON_HEADERS), params)
                bounded_set(self._params_envelopes, cache_key, envelope)
            self._last_params = (url, EnvelopeValues.of(params), envelope)  # one assignment
            return envelope
        return self._new_params_envelope(url, headers or dict(JSON_HEADERS), params)

    @staticmethod
    def _new_params_envelope(url: str, headers: dict[str, str], params: dict[str, Any]) -> Envelope:
        prefix, suffix = envelope_parts(params, strict_json)
        return Envelope(merge_key(url, headers, prefix, suffix), url, headers, prefix, suffix)
