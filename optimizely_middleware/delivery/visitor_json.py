"""The encoder's JSON writers: a user event's visitor written as the SDK would write it.

Usage::

    from optimizely_middleware.delivery.visitor_json import compact_json, visitor_json

    data = visitor_json(user_event, logger)  # == json of create_log_event's visitor, or None
    body = compact_json(log_event.params)    # a LogEvent's payload, compact

The SDK's ``get_event_params`` runs ``json.dumps(default=lambda o: o.__dict__)``
and ``json.loads`` with a hook that drops the ``revenue``, ``value``,
``tags`` and ``decisions`` keys whose value is None, at every level. orjson
with a ``default`` that returns the object's ``__dict__`` without those keys
gives the same JSON value, provided the user's input (tags, attribute values)
holds only plain JSON types without NaN and without dicts that have such
None-valued keys: :func:`visitor_json` checks exactly that as it goes, and
returns None for anything else, which the encoder sends through
``create_log_event``. :func:`compact_json` and :func:`strict_json` write
plain values (a ``LogEvent``'s visitors, an envelope) and refuse NaN;
:func:`canonical_json` compares JSON values, types included. Used by
:mod:`optimizely_middleware.delivery.encoding` and its guard; not a public API.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

from optimizely import entities
from optimizely.event.event_factory import EventFactory
from optimizely.event.event_id_normalizer import normalize_campaign_id, normalize_variation_id
from optimizely.event.user_event import ConversionEvent, ImpressionEvent
from optimizely.helpers.event_tag_utils import get_numeric_value

try:
    import orjson
except ImportError:  # pragma: no cover - orjson ships wheels for every mainstream platform
    orjson = None  # type: ignore[assignment]

__all__ = ["canonical_json", "compact_json", "plain_json", "strict_json", "visitor_json"]


# The keys EventBatch.get_event_params drops when their value is None.
_DROPPED_WHEN_NONE: Final = frozenset({"revenue", "value", "tags", "decisions"})
# orjson refuses more than 254 levels; the visitor itself takes 6.
_MAX_TAG_DEPTH: Final = 200
_PLAIN_SCALARS: Final = frozenset({str, int, bool, type(None)})
_PLAIN_ATTRIBUTE_VALUES: Final = frozenset({str, int, bool})  # and finite floats

_ACTIVATE_EVENT_KEY: Final = EventFactory.ACTIVATE_EVENT_KEY

# Compact JSON that refuses NaN and infinities; circular input raises ValueError.
strict_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


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

    def plain_json(value: Any) -> bytes | None:
        """Compact JSON of a plain value in one C call, or None when orjson cannot be sure
        of it: it refuses the value (integers past 64 bits, non-str keys, more than 254
        levels), or it wrote a ``null``, which may have been NaN or an infinity."""
        try:
            data: bytes = orjson.dumps(value, default=_refuse, option=_OPTIONS)
        except TypeError:
            return None
        return None if b"null" in data else data

else:  # pragma: no cover

    def _dumps_payload(obj: Any) -> bytes:
        return strict_json(obj).encode()  # the caller checks the input is plain

    def plain_json(value: Any) -> bytes | None:
        """Compact JSON of a plain value, or None when it has no JSON form."""
        try:
            return strict_json(value).encode()
        except (TypeError, ValueError, RecursionError):
            return None


def compact_json(value: Any) -> bytes:
    """Compact JSON of a plain value (a ``LogEvent``'s visitor, or its whole params), as
    the stdlib writes it; ValueError/TypeError/RecursionError when it has no JSON form
    (NaN, sets, ...)."""
    data = plain_json(value)
    if data is None:
        return strict_json(value).encode()  # the stdlib decides, and refuses NaN
    return data


def visitor_json(event: Any, logger: Any) -> bytes | None:
    """JSON of the visitor ``EventFactory._create_visitor(event)`` builds, as
    ``get_event_params`` writes it; None when the SDK would build none, or when
    the input is not plain (an attribute value or tag orjson would write
    differently, or NaN): the caller then lets the SDK decide.

    The same fields in the same order, written as plain dicts: about a third
    of the CPU of building the SDK's payload objects and serialising them
    through a ``default`` hook (see :mod:`optimizely_middleware.delivery.encoding_guard`,
    which checks the two agree).
    """
    attributes = []
    for attribute in event.visitor_attributes:
        fields = attribute.__dict__
        value = fields["value"]
        if value.__class__ not in _PLAIN_ATTRIBUTE_VALUES and (
            value.__class__ is not float or not math.isfinite(value)
        ):
            return None
        attributes.append(fields if None not in fields.values() else _payload_dict(attribute))
    cls = event.__class__
    if cls is ImpressionEvent:
        variation = event.variation
        if variation.__class__ is dict:  # a holdout's variation, as the datafile has it
            variation_id, variation_key = variation.get("id", ""), variation.get("key", "")
        elif isinstance(variation, entities.Variation):
            variation_id, variation_key = variation.id, variation.key
        elif isinstance(variation, dict):
            variation_id, variation_key = variation.get("id", ""), variation.get("key", "")
        else:
            variation_id = variation_key = ""
        experiment = event.experiment
        experiment_id = layer_id = ""
        if experiment:
            experiment_id = experiment.id
            if isinstance(experiment, entities.Experiment):
                layer_id = experiment.layerId
        campaign_id = normalize_campaign_id(layer_id, experiment_id)
        metadata = {
            "flag_key": event.flag_key,
            "rule_key": event.rule_key,
            "rule_type": event.rule_type,
            "variation_key": variation_key,
            "enabled": event.enabled,
        }
        if event.cmab_uuid:
            metadata["cmab_uuid"] = event.cmab_uuid
        snapshot: dict[str, Any] = {
            "events": [
                {
                    "entity_id": campaign_id,
                    "uuid": event.uuid,
                    "key": _ACTIVATE_EVENT_KEY,
                    "timestamp": event.timestamp,
                }
            ],
            "decisions": [
                {
                    "campaign_id": campaign_id,
                    "experiment_id": experiment_id,
                    "variation_id": normalize_variation_id(variation_id),
                    "metadata": metadata,
                }
            ],
        }
    elif cls is ConversionEvent and event.event:
        tags = event.event_tags
        snapshot_event = {
            "entity_id": event.event.id,
            "uuid": event.uuid,
            "key": event.event.key,
            "timestamp": event.timestamp,
        }
        if tags is not None:
            if not _plain_tags(tags):
                return None
            # get_revenue_value's rule (an Integral that is not a bool): in plain tags,
            # exactly an int, checked here without its slow ABC isinstance.
            revenue = tags.get("revenue") if tags.__class__ is dict else None
            if revenue.__class__ is int:
                snapshot_event["revenue"] = revenue
            value = get_numeric_value(tags, logger)
            if value is not None:
                snapshot_event["value"] = value
            snapshot_event["tags"] = tags
        snapshot = {"events": [snapshot_event]}
    else:
        return None  # a subclass, or no event: the SDK decides
    return _dumps_payload(
        {"snapshots": [snapshot], "attributes": attributes, "visitor_id": event.user_id}
    )


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


def canonical_json(value: Any) -> str:
    """A string equal for two JSON values exactly when they are equal, types included
    (``1``, ``1.0`` and ``true`` differ)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)
