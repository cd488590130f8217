"""The interface between the dispatcher and whatever delivers events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from optimizely.event_builder import Event

__all__ = ["EventSink"]


@runtime_checkable
class EventSink(Protocol):
    """Takes events off the request path and delivers them.

    :class:`~optimizely_middleware.EventSender` is the implementation used by
    default. ``submit`` must be O(1) per event, never block and never raise.
    """

    def submit(self, events: Sequence[Event]) -> None: ...

    def flush(self, timeout: float | None = None) -> bool: ...

    def close(self, timeout: float | None = None) -> None: ...

    def stats(self) -> dict[str, Any]: ...
