"""The interface between the dispatcher and whatever delivers events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["EventSink"]


@runtime_checkable
class EventSink(Protocol):
    """Takes a request's items off the request path and delivers them.

    :class:`~optimizely_middleware.EventSender` is the implementation used by
    default. An item is an SDK ``LogEvent`` or a ``PendingUserEvent`` (see
    :mod:`optimizely_middleware.encoding`). ``submit`` must be O(1) per
    request (no encoding on the caller's thread, which may be the event
    loop), never block and never raise.

    Example::

        class PrintingSink:
            def submit(self, items): print(len(items), "events")
            def flush(self, timeout=None): return True
            def close(self, timeout=None): pass
            def stats(self): return {"dropped": {}}
    """

    def submit(self, items: Sequence[Any]) -> None: ...

    def flush(self, timeout: float | None = None) -> bool: ...

    def close(self, timeout: float | None = None) -> None: ...

    def stats(self) -> dict[str, Any]: ...
