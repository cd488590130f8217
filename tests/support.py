"""Small fakes for unit tests of one class."""

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
