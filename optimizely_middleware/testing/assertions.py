"""The ``assert_*`` helpers of the testing kit, shared by a capture and one captured request.

Usage (through :class:`~optimizely_middleware.testing.EventCapture`)::

    events.assert_impression(flag_key="new_checkout", variation_key="on", count=1)
    events.assert_no_conversion(event_key="purchase")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any, TypeVar

from optimizely_middleware.wire.payloads import Conversion, Impression

__all__ = ["EventAssertions"]

_Item = TypeVar("_Item", Impression, Conversion)


class EventAssertions:
    """``assert_*`` helpers shared by the whole capture and one captured request."""

    _what = "capture"

    def _impression_list(self) -> list[Impression]:
        raise NotImplementedError

    def _conversion_list(self) -> list[Conversion]:
        raise NotImplementedError

    def assert_impression(self, *, count: int | None = None, **expected: Any) -> list[Impression]:
        """Assert that impressions with these field values were sent; return them.

        With ``count`` exactly that many must match, otherwise at least one.
        ``attributes`` matches when the given items are among the visitor's.

        Example::

            events.assert_impression(flag_key="new_checkout", variation_key="on", count=1)
        """
        __tracebackhide__ = True
        return _assert_matches("impression", self._impression_list(), expected, count, self)

    def assert_conversion(self, *, count: int | None = None, **expected: Any) -> list[Conversion]:
        """Assert that conversions with these field values were sent; return them.

        ``tags`` and ``attributes`` match when the given items are present.

        Example::

            events.assert_conversion(event_key="purchase", revenue=1299, tags={"sku": "A1"})
        """
        __tracebackhide__ = True
        return _assert_matches("conversion", self._conversion_list(), expected, count, self)

    def assert_no_impression(self, **expected: Any) -> None:
        """Assert that no impression with these field values (or none at all) was sent."""
        __tracebackhide__ = True
        _assert_matches("impression", self._impression_list(), expected, 0, self)

    def assert_no_conversion(self, **expected: Any) -> None:
        """Assert that no conversion with these field values (or none at all) was sent."""
        __tracebackhide__ = True
        _assert_matches("conversion", self._conversion_list(), expected, 0, self)

    def assert_no_events(self) -> None:
        """Assert that neither impressions nor conversions were sent."""
        __tracebackhide__ = True
        impressions, conversions = self._impression_list(), self._conversion_list()
        if impressions or conversions:
            raise AssertionError(
                f"Expected no Optimizely events in the {self._what}, found:\n"
                + _describe_all(impressions, conversions)
            )


def _matches(item: Impression | Conversion, expected: Mapping[str, Any]) -> bool:
    for name, want in expected.items():
        have = getattr(item, name)
        if isinstance(want, Mapping) and isinstance(have, Mapping):
            if any(key not in have or have[key] != value for key, value in want.items()):
                return False
        elif have != want:
            return False
    return True


def _assert_matches(
    kind: str,
    items: list[_Item],
    expected: Mapping[str, Any],
    count: int | None,
    view: EventAssertions,
) -> list[_Item]:
    cls = Impression if kind == "impression" else Conversion
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(expected) - set(known))
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {', '.join(unknown)}; use {known}")
    matched = [item for item in items if _matches(item, expected)]
    __tracebackhide__ = True
    if (count is None and matched) or (count is not None and len(matched) == count):
        return matched
    criteria = ", ".join(f"{name}={value!r}" for name, value in expected.items()) or "any fields"
    if count is None:
        wanted = f"at least one {kind} with {criteria}"
    elif count == 0:
        wanted = f"no {kind} with {criteria}"
    else:
        wanted = f"{count} {kind}(s) with {criteria}"
    lines = [f"Expected {wanted} in the {view._what}, found {len(matched)}."]
    impressions, conversions = view._impression_list(), view._conversion_list()
    if impressions or conversions:
        lines.append("Captured:")
        lines.append(_describe_all(impressions, conversions))
    else:
        lines.append(
            "No Optimizely events were captured. Check that the client is built with "
            "create_client(dispatcher, ...) and that the app is wrapped in the middleware "
            "(or the code runs inside dispatcher.request_scope())."
        )
    raise AssertionError("\n".join(lines))


def _describe(item: Impression | Conversion) -> str:
    if isinstance(item, Impression):
        names = ["flag_key", "rule_key", "rule_type", "variation_key", "enabled", "user_id"]
        label = "impression"
    else:
        names = ["event_key", "revenue", "value", "tags", "user_id"]
        label = "conversion"
    values = " ".join(f"{name}={getattr(item, name)!r}" for name in names)
    return f"  {label}: {values}"


def _describe_all(impressions: Sequence[Impression], conversions: Sequence[Conversion]) -> str:
    items: list[Impression | Conversion] = [*impressions, *conversions]
    return "\n".join(_describe(item) for item in items)
