"""Reading an event payload: which visitor saw which variation, and what they converted on.

This is the one parser of the package. The devserver's terminal output, its
inspector page and the testing kit all read payloads through it, so they agree
on what an impression and a conversion are.

Usage::

    from optimizely_middleware.wire.payloads import conversions_in, impressions_in, visitors_in

    payload = json.loads(body)                 # what the SDK POSTs to the event API
    for impression in impressions_in(payload):
        print(impression.user_id, impression.flag_key, impression.variation_key)
    for visitor in visitors_in(payload):       # the same, grouped by visitor
        print(visitor.visitor_id, len(visitor.impressions), len(visitor.conversions))

Every function is tolerant: a malformed payload gives fewer items, never an
exception (:mod:`optimizely_middleware.wire.validation` says what is wrong with it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "IMPRESSION_EVENT_KEY",
    "Conversion",
    "Impression",
    "VisitorEvents",
    "conversions_in",
    "describe_conversion",
    "describe_impression",
    "impressions_in",
    "visitors_in",
]

# The key of the snapshot event that the SDK puts beside every decision: the
# impression half of it, not a conversion.
IMPRESSION_EVENT_KEY = "campaign_activated"


@dataclass(frozen=True)
class Impression:
    """One decision event: a user was bucketed into a variation of a flag or experiment.

    ``flag_key`` is ``""`` for the legacy ``activate()`` API, which decides
    experiments rather than flags; ``rule_key`` is then the experiment key.

    Example::

        (impression,) = impressions_in(payload)
        assert (impression.flag_key, impression.variation_key) == ("new_checkout", "on")
    """

    flag_key: str
    rule_key: str
    rule_type: str
    variation_key: str
    enabled: bool
    experiment_id: str
    variation_id: str | None
    campaign_id: str
    user_id: str
    attributes: dict[str, Any] = field(default_factory=dict)
    timestamp: int | None = None
    uuid: str | None = None


@dataclass(frozen=True)
class Conversion:
    """One conversion event (``track`` / ``track_event``).

    ``revenue`` (integer, in cents) and ``value`` (number) are what the SDK
    extracted from ``tags``; they are ``None`` when the tags had none.

    Example::

        (conversion,) = conversions_in(payload)
        assert (conversion.event_key, conversion.revenue) == ("purchase", 4200)
    """

    event_key: str
    revenue: int | None
    value: float | None
    tags: dict[str, Any]
    user_id: str
    attributes: dict[str, Any] = field(default_factory=dict)
    event_id: str = ""
    timestamp: int | None = None
    uuid: str | None = None


@dataclass(frozen=True)
class VisitorEvents:
    """One visitor of a payload with its impressions and conversions, in payload order.

    Example::

        for visitor in visitors_in(payload):
            print(visitor.visitor_id, visitor.attributes, visitor.impressions)
    """

    visitor_id: str
    attributes: dict[str, Any]
    impressions: tuple[Impression, ...]
    conversions: tuple[Conversion, ...]


def visitors_in(payload: Any) -> list[VisitorEvents]:
    """The visitors of one event payload, each with what it carries."""
    return [
        VisitorEvents(
            visitor_id=_visitor_id(visitor),
            attributes=_attributes(visitor),
            impressions=tuple(_impressions(visitor)),
            conversions=tuple(_conversions(visitor)),
        )
        for visitor in _dicts(payload.get("visitors") if isinstance(payload, Mapping) else None)
    ]


def impressions_in(payload: Any) -> list[Impression]:
    """The impressions in one event payload."""
    return [item for visitor in visitors_in(payload) for item in visitor.impressions]


def conversions_in(payload: Any) -> list[Conversion]:
    """The conversions in one event payload."""
    return [item for visitor in visitors_in(payload) for item in visitor.conversions]


def describe_impression(impression: Impression) -> str:
    """``flag: rule (rule type) -> variation``, as the devserver prints a decision.

    A decision made by ``activate()`` has no flag, so it reads
    ``rule (experiment) -> variation``; without metadata the ids are shown.
    """
    rule = impression.rule_key or f"experiment {impression.experiment_id}"
    variation = impression.variation_key or f"variation {impression.variation_id}"
    text = f"{impression.flag_key}: {rule}" if impression.flag_key else rule
    if impression.rule_type:
        text += f" ({impression.rule_type})"
    text += f" -> {variation}"
    if impression.flag_key and not impression.enabled:
        text += "  [flag off]"
    return text


def describe_conversion(conversion: Conversion) -> str:
    """``key  revenue=.. value=.. tags={..}``, as the devserver prints a conversion."""
    parts = []
    if conversion.revenue is not None:
        parts.append(f"revenue={conversion.revenue}")
    if conversion.value is not None:
        parts.append(f"value={conversion.value}")
    tags = {k: v for k, v in conversion.tags.items() if k not in ("revenue", "value")}
    if tags:
        parts.append(f"tags={tags}")
    key = conversion.event_key or f"event {conversion.event_id}"
    return f"{key}  {' '.join(parts)}".rstrip()


def _impressions(visitor: Mapping[str, Any]) -> Iterable[Impression]:
    for snapshot in _dicts(visitor.get("snapshots")):
        activations = [
            e for e in _dicts(snapshot.get("events")) if e.get("key") == IMPRESSION_EVENT_KEY
        ]
        for index, decision in enumerate(_dicts(snapshot.get("decisions"))):
            metadata = decision.get("metadata")
            meta: Mapping[str, Any] = metadata if isinstance(metadata, Mapping) else {}
            event = activations[index] if index < len(activations) else {}
            yield Impression(
                flag_key=meta.get("flag_key", ""),
                rule_key=meta.get("rule_key", ""),
                rule_type=meta.get("rule_type", ""),
                variation_key=meta.get("variation_key", ""),
                enabled=meta.get("enabled", False),
                experiment_id=decision.get("experiment_id", ""),
                variation_id=decision.get("variation_id"),
                campaign_id=decision.get("campaign_id", ""),
                user_id=_visitor_id(visitor),
                attributes=_attributes(visitor),
                timestamp=event.get("timestamp"),
                uuid=event.get("uuid"),
            )


def _conversions(visitor: Mapping[str, Any]) -> Iterable[Conversion]:
    for snapshot in _dicts(visitor.get("snapshots")):
        is_decision = bool(snapshot.get("decisions"))
        for event in _dicts(snapshot.get("events")):
            if is_decision and event.get("key") == IMPRESSION_EVENT_KEY:
                continue
            tags = event.get("tags")
            yield Conversion(
                event_key=event.get("key", ""),
                revenue=event.get("revenue"),
                value=event.get("value"),
                tags=dict(tags) if isinstance(tags, Mapping) else {},
                user_id=_visitor_id(visitor),
                attributes=_attributes(visitor),
                event_id=event.get("entity_id", ""),
                timestamp=event.get("timestamp"),
                uuid=event.get("uuid"),
            )


def _dicts(value: Any) -> list[Mapping[str, Any]]:
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _visitor_id(visitor: Mapping[str, Any]) -> str:
    visitor_id = visitor.get("visitor_id", "")
    return visitor_id if isinstance(visitor_id, str) else str(visitor_id)


def _attributes(visitor: Mapping[str, Any]) -> dict[str, Any]:
    return {
        attribute["key"]: attribute.get("value")
        for attribute in _dicts(visitor.get("attributes"))
        if isinstance(attribute.get("key"), str)
    }
