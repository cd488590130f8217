"""Small fakes and helpers shared by the unit tests (no test module imports another)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from optimizely.event.log_event import LogEvent


class RecordingSink:
    """An EventSink that records each hand-off (a list of events) in memory."""

    def __init__(self) -> None:
        self.batches: list[list[LogEvent]] = []
        self.closed = False
        self._lock = threading.Lock()

    def submit(self, events: Sequence[LogEvent]) -> None:
        with self._lock:
            self.batches.append(list(events))

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self, timeout: float | None = None) -> None:
        self.closed = True

    def stats(self) -> dict[str, Any]:
        return {"submitted": sum(len(b) for b in self.batches), "dropped": {}}

    @property
    def events(self) -> list[LogEvent]:
        return [e for b in self.batches for e in b]


class ShutdownSink(RecordingSink):
    """A RecordingSink that records on which thread it was flushed and closed,
    and can hold ``flush`` until the test opens ``gate``."""

    def __init__(self, *, hold: bool = False) -> None:
        super().__init__()
        self.gate = threading.Event()
        if not hold:
            self.gate.set()
        self.flush_started = threading.Event()
        self.threads: list[str] = []

    def flush(self, timeout: float | None = None) -> bool:
        self.threads.append(threading.current_thread().name)
        self.flush_started.set()
        return self.gate.wait(10)

    def close(self, timeout: float | None = None) -> None:
        self.threads.append(threading.current_thread().name)
        super().close(timeout)


def visitor_id_of(item: object) -> str:
    """The visitor of one handed-over item: a LogEvent (its params) or a
    pending SDK UserEvent (``.user_event.user_id``)."""
    params = getattr(item, "params", None)
    if params is not None:
        return str(params["visitors"][0]["visitor_id"])
    return str(item.user_event.user_id)  # type: ignore[attr-defined]
