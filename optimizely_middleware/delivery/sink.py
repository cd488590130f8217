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
    :mod:`optimizely_middleware.delivery.encoding`). ``submit`` runs on the thread
    that ends the request, after its response: it may do bounded CPU work
    (the sender encodes there), but it must never wait for I/O, never block
    on a lock held across I/O and never raise. A sink may also offer
    ``async def asubmit(items)``; ASGI adapters then await it, so a long
    hand-off can yield to the event loop.

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
