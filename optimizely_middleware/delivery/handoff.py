"""Encoding one request's events on the thread or task that hands them over, in short slices.

Usage (the engine does this in ``submit`` / ``asubmit``)::

    encoding = HandOffEncoding(encoder, items, first_seq=0, queued_at=now)
    for _ in encoding.slices(budget=0.001, clock=time.perf_counter):
        time.sleep(0)                 # a thread lets the others run between slices
        # await asyncio.sleep(0)      # a task lets the event loop run between slices
    encoding.encoded, encoding.failed  # ready to be filed, all at once

A slice ends once ``budget`` seconds of ``clock`` have passed since it
began; the generator then yields, and the caller decides how to give way.
A hand-off of at most :data:`SMALL_HANDOFF` events (a page's few) is
encoded in one plain loop (:meth:`HandOffEncoding.finish`), with no clock
reads: at tens of microseconds an event it stays far below a slice.
Nothing here takes a lock or touches the queue: the caller files the whole
hand-off in one step once every slice is done, so a POST never carries part
of a request's events while the rest is being encoded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Final

from optimizely_middleware.delivery.encoded import EncodedEvent, ItemEncoder, UnserializableEvent

__all__ = ["SLICE_SECONDS", "SMALL_HANDOFF", "HandOffEncoding"]

logger = logging.getLogger("optimizely_middleware.sender")

# The longest stretch of encoding before a hand-off gives way to other threads or tasks.
SLICE_SECONDS: Final = 0.001
# Hand-offs of at most this many events are encoded in one go, without slices.
SMALL_HANDOFF: Final = 8


class HandOffEncoding:
    """The events of one hand-off, encoded in slices: ``encoded`` and ``failed``.

    ``encoded`` holds the ``EncodedEvent`` of each event that has a JSON
    form, in order (the queue numbers them from ``first_seq``); ``failed``
    holds ``(item, why)`` for each event that has no JSON form
    (``why`` never contains the payload).

    Example::

        encoding = HandOffEncoding(EventEncoder(), items, first_seq=7, queued_at=0.0)
        encoding.finish()             # every slice at once (no giving way)
    """

    __slots__ = (
        "encoded",
        "encoder",
        "failed",
        "first_seq",
        "items",
        "queued_at",
        "slice_count",
        "token",
    )

    def __init__(
        self,
        encoder: ItemEncoder,
        items: Sequence[object],
        first_seq: int,
        queued_at: float,
        token: int = 0,
    ) -> None:
        self.encoder = encoder
        self.token = token  # the engine's name for this hand-off
        self.items = items
        self.first_seq = first_seq
        self.queued_at = queued_at
        self.encoded: list[EncodedEvent] = []
        self.failed: list[tuple[object, str]] = []
        self.slice_count = 0

    @property
    def done(self) -> int:
        """How many items have been encoded or refused so far."""
        return len(self.encoded) + len(self.failed)

    def slices(self, budget: float, clock: Callable[[], float]) -> Iterator[None]:
        """Encode the rest; yield after each slice of ``budget`` seconds but the last."""
        total = len(self.items)
        while self.done < total:
            self.slice_count += 1
            started = clock()
            while self.done < total:
                self._encode_until(self.done + 1)
                if clock() - started >= budget:
                    break
            if self.done < total:
                yield

    @property
    def small(self) -> bool:
        """Few enough events to be encoded in one go (:data:`SMALL_HANDOFF`)."""
        return len(self.items) <= SMALL_HANDOFF

    def finish(self) -> None:
        """Encode whatever is left in one go (a small hand-off, or one that cannot give way)."""
        self._encode_until(len(self.items))

    def _encode_until(self, stop: int) -> None:
        items = self.items
        encode = self.encoder.encode
        encoded, failed = self.encoded, self.failed
        for position in range(len(encoded) + len(failed), stop):
            item = items[position]
            try:
                encoded.append(encode(item))
            except UnserializableEvent as exc:
                failed.append((item, str(exc)))
            except Exception as exc:
                failed.append((item, f"{type(exc).__name__} while encoding the event"))
