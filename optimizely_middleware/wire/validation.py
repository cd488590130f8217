"""Checking an event payload against the shape of the Optimizely event API.

Usage::

    from optimizely_middleware.wire.validation import payload_errors, validate_payload

    problems = payload_errors(event.params)   # [] when the payload is well formed
    validate_payload(event.params)            # raises InvalidEventPayload otherwise

Each problem names the path of the offending value, for example
``visitors[0].snapshots[0].events[0].timestamp: expected int, got str``.
The checks follow what the SDK's ``EventFactory`` builds (see
``optimizely/event/payload.py``): required keys and their JSON types, at least
one visitor and one snapshot, decisions with their metadata, and events with
an integer millisecond timestamp. Unknown keys are allowed, so payloads of
newer SDK versions still pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["InvalidEventPayload", "payload_errors", "validate_payload"]


class InvalidEventPayload(AssertionError):
    """A payload does not have the shape the Optimizely event API expects.

    It subclasses :class:`AssertionError` so that pytest reports it as a
    failed assertion. ``errors`` holds one line per problem.

    Example::

        try:
            validate_payload(body)
        except InvalidEventPayload as exc:
            print(exc.errors)   # ['visitors[0].visitor_id: missing']
    """

    def __init__(self, errors: list[str], *, where: str = "event payload") -> None:
        self.errors = list(errors)
        lines = "\n".join(f"  {error}" for error in self.errors)
        super().__init__(f"Invalid Optimizely {where} ({len(self.errors)} problem(s)):\n{lines}")


def validate_payload(payload: Any) -> None:
    """Raise :class:`InvalidEventPayload` if ``payload`` is malformed."""
    errors = payload_errors(payload)
    if errors:
        raise InvalidEventPayload(errors)


def payload_errors(payload: Any) -> list[str]:
    """Every problem found in ``payload`` (a decoded JSON body), as ``path: message``."""
    errors: list[str] = []
    _check_object(payload, "", _BATCH, errors)
    return errors


# -- the schema ----------------------------------------------------------------

Check = Callable[[Any, str, list[str]], None]


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return type(value).__name__


def _expect(kind: str, accept: Callable[[Any], bool], *, empty_ok: bool = True) -> Check:
    def check(value: Any, path: str, errors: list[str]) -> None:
        if not accept(value):
            errors.append(f"{path}: expected {kind}, got {_type_name(value)}")
        elif not empty_ok and value == "":
            errors.append(f"{path}: must not be empty")

    return check


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_string = _expect("str", lambda v: isinstance(v, str))
_id = _expect("str", lambda v: isinstance(v, str), empty_ok=False)
_boolean = _expect("bool", lambda v: isinstance(v, bool))
_integer = _expect("int", _is_int)
_number = _expect("number", _is_number)
_nullable_string = _expect("str or null", lambda v: v is None or isinstance(v, str))
_object = _expect("object", lambda v: isinstance(v, Mapping))
_attribute_value = _expect("str, number or bool", lambda v: isinstance(v, (str, int, float, bool)))


def _object_of(fields: dict[str, tuple[bool, Check]]) -> Check:
    def check(value: Any, path: str, errors: list[str]) -> None:
        _check_object(value, path, fields, errors)

    return check


def _list_of(item: Check, *, min_items: int = 0) -> Check:
    def check(value: Any, path: str, errors: list[str]) -> None:
        if not isinstance(value, list):
            errors.append(f"{path}: expected list, got {_type_name(value)}")
            return
        if len(value) < min_items:
            errors.append(f"{path}: expected at least {min_items} item(s), got {len(value)}")
        for index, element in enumerate(value):
            item(element, f"{path}[{index}]", errors)

    return check


def _check_object(
    value: Any, path: str, fields: dict[str, tuple[bool, Check]], errors: list[str]
) -> None:
    if not isinstance(value, Mapping):
        errors.append(f"{path or '(payload)'}: expected object, got {_type_name(value)}")
        return
    for key, (required, check) in fields.items():
        child = f"{path}.{key}" if path else key
        if key not in value:
            if required:
                errors.append(f"{child}: missing")
            continue
        check(value[key], child, errors)


# (required, check) for each key; keys not listed are allowed.
_METADATA: dict[str, tuple[bool, Check]] = {
    "flag_key": (True, _string),  # "" for decisions made by activate()
    "rule_key": (True, _string),
    "rule_type": (True, _id),
    "variation_key": (True, _string),
    "enabled": (True, _boolean),
    "cmab_uuid": (False, _string),
}
_DECISION: dict[str, tuple[bool, Check]] = {
    "campaign_id": (True, _string),
    "experiment_id": (True, _string),
    "variation_id": (True, _nullable_string),
    "metadata": (True, _object_of(_METADATA)),
}
_EVENT: dict[str, tuple[bool, Check]] = {
    "entity_id": (True, _string),
    "uuid": (True, _id),
    "key": (True, _id),
    "timestamp": (True, _integer),
    "revenue": (False, _integer),
    "value": (False, _number),
    "tags": (False, _object),
}
_SNAPSHOT: dict[str, tuple[bool, Check]] = {
    "events": (True, _list_of(_object_of(_EVENT), min_items=1)),
    "decisions": (False, _list_of(_object_of(_DECISION))),
}
_ATTRIBUTE: dict[str, tuple[bool, Check]] = {
    "entity_id": (True, _id),
    "key": (True, _id),
    "type": (True, _id),
    "value": (True, _attribute_value),
}
_VISITOR: dict[str, tuple[bool, Check]] = {
    "visitor_id": (True, _string),
    "attributes": (True, _list_of(_object_of(_ATTRIBUTE))),
    "snapshots": (True, _list_of(_object_of(_SNAPSHOT), min_items=1)),
}
_BATCH: dict[str, tuple[bool, Check]] = {
    "account_id": (True, _id),
    "project_id": (True, _id),
    "revision": (True, _id),
    "client_name": (True, _id),
    "client_version": (True, _id),
    "anonymize_ip": (True, _boolean),
    "enrich_decisions": (True, _boolean),
    "visitors": (True, _list_of(_object_of(_VISITOR), min_items=1)),
}
