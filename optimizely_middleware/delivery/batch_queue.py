"""The engine's bounded queue of encoded events, and the strategy that decides when a batch goes.

Usage (the engine holds its lock around every call; the queue has none)::

    queue = BatchQueue(max_events=10_000, max_bytes=16 << 20,
                       strategy=LingerOrFull(max_events=500, max_bytes=1_000_000, linger=0.1))
    first_seq = queue.reserve(3)                  # room for a hand-off being encoded
    queue.add_all([encoded], first_seq, queued_at, keep_events=False)  # filed by group
    queue.release(n)                              # reserved events that will not be filed
    batch, wait = queue.next_batch(now, urgent=False)

The queue only ever holds bytes: each event is encoded by the thread that
hands it over (see :mod:`~optimizely_middleware.delivery.handoff`) and filed
in the group of events that may share its POST. Room is reserved by count
before a hand-off is encoded, so no work is spent on events that would not
fit; the byte bound is checked as each encoded event is filed.

Queued encoded events are plain tuples of bytes and numbers (plus the item
only when ``on_error`` needs it): Python's garbage collector stops tracking
them at once, so thousands of them never reach the oldest generation, whose
collections pause every thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Sequence
from typing import Final

from optimizely_middleware.delivery.encoded import EncodedEvent, body_of

__all__ = ["Batch", "BatchQueue", "LingerOrFull"]

# (seq, queued_at, encoded visitors, item or None)
_Item = tuple[int, float, bytes, object | None]
_SEQ: Final = 0
_QUEUED_AT: Final = 1
_VISITORS: Final = 2
_EVENT: Final = 3


class _Group:
    """Encoded events that may share one POST, and what they share."""

    __slots__ = ("envelope", "headers", "items", "nbytes", "prefix", "suffix", "url")

    def __init__(self, first: EncodedEvent) -> None:
        self.url = first.url
        self.headers = first.headers
        self.prefix = first.prefix
        self.suffix = first.suffix
        self.envelope = len(first.prefix) + len(first.suffix)
        self.items: deque[_Item] = deque()
        self.nbytes = 0  # queued events, each with its envelope (what max_bytes counts)


class Batch:
    """The events of one POST: ``url``, ``headers`` and ``body()``."""

    __slots__ = ("headers", "items", "prefix", "suffix", "url")

    def __init__(self, group: _Group, items: list[_Item]) -> None:
        self.url = group.url
        self.headers = group.headers
        self.prefix = group.prefix
        self.suffix = group.suffix
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    @property
    def first_seq(self) -> int:
        return self.items[0][_SEQ]

    def body(self) -> bytes:
        return body_of(self.prefix, [item[_VISITORS] for item in self.items], self.suffix)

    def events(self) -> list[object | None]:
        return [item[_EVENT] for item in self.items]


def at_least_one(**values: int) -> None:
    """Refuse a bound below 1, naming the option (``ValueError``)."""
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, not {value!r}")


class LingerOrFull:
    """The batching decision: a group goes when it holds a full POST (``max_events``
    events or ``max_bytes`` bytes), when its oldest event has waited ``linger``
    seconds, or at once when the engine is flushing or closing.

    Example::

        strategy = LingerOrFull(max_events=500, max_bytes=1_000_000, linger=0.1)
    """

    def __init__(self, *, max_events: int, max_bytes: int, linger: float) -> None:
        at_least_one(max_events_per_post=max_events, max_bytes_per_post=max_bytes)
        if linger < 0:
            raise ValueError("flush_interval must be >= 0")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.linger = linger

    def is_full(self, group: _Group) -> bool:
        return (
            len(group.items) >= self.max_events or group.envelope + group.nbytes >= self.max_bytes
        )

    def ready_at(self, queued_at: float) -> float:
        """When an event queued at ``queued_at`` may leave without company."""
        return queued_at + self.linger


class BatchQueue:
    """Encoded events grouped by POST, bounded by count and bytes; see the module docstring."""

    def __init__(self, *, max_events: int, max_bytes: int, strategy: LingerOrFull) -> None:
        at_least_one(max_queue_events=max_events, max_queue_bytes=max_bytes)
        if strategy.max_events > max_events:
            raise ValueError(
                f"max_events_per_post ({strategy.max_events}) is larger than "
                f"max_queue_events ({max_events}): a full POST could never be queued"
            )
        if strategy.max_bytes > max_bytes:
            raise ValueError(
                f"max_bytes_per_post ({strategy.max_bytes}) is larger than "
                f"max_queue_bytes ({max_bytes}): a full POST could never be queued"
            )
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.strategy = strategy
        self.count = 0  # queued events, plus those reserved for hand-offs being encoded
        self.nbytes = 0  # encoded events' bytes
        self.next_seq = 0
        self.became_full = False  # a group filled up since the engine last looked
        self._groups: dict[Hashable, _Group] = {}

    # -- reserving room ----------------------------------------------------------

    def reserve(self, n: int) -> int:
        """Room for as many of ``n`` events as the count bound allows; returns how many.

        The reserved events are numbered from ``next_seq`` (read it first).
        """
        room = min(n, self.max_events - self.count)
        if room <= 0:
            return 0
        self.next_seq += room
        self.count += room
        return room

    def release(self, n: int) -> None:
        """``n`` reserved events will not be filed (unencodable, or given up)."""
        self.count -= n

    # -- encoded side ------------------------------------------------------------

    def add_all(
        self,
        events: Sequence[EncodedEvent],
        first_seq: int,
        queued_at: float,
        keep_events: bool,
    ) -> int:
        """File reserved, encoded events in order, numbered from ``first_seq``; returns how
        many the byte bound refused (those are released). Sets :attr:`became_full` when a
        group now holds a full POST."""
        refused = 0
        groups = self._groups
        max_bytes = self.max_bytes
        nbytes = self.nbytes
        key: Hashable = None
        group: _Group | None = None
        filled: list[_Group] = []
        seq = first_seq - 1
        for event in events:
            seq += 1
            visitors = event.visitors
            size = len(event.prefix) + len(visitors) + len(event.suffix)
            if nbytes + size > max_bytes:
                self.count -= 1
                refused += 1
                continue
            if group is None or event.key is not key:
                # A hand-off's events usually share one envelope, and so its key object.
                key = event.key
                group = groups.get(key)
                if group is None:
                    group = groups[key] = _Group(event)
                filled.append(group)
            group.items.append((seq, queued_at, visitors, event.event if keep_events else None))
            group.nbytes += size
            nbytes += size
        self.nbytes = nbytes
        if not self.became_full:
            is_full = self.strategy.is_full
            for group in filled:
                if is_full(group):
                    self.became_full = True
                    break
        return refused

    def next_batch(self, now: float, urgent: bool) -> tuple[Batch | None, float | None]:
        """The next POST's events, or ``(None, when the next group is ready)``.

        Of the ready groups, the one holding the oldest event goes first.
        """
        chosen: _Group | None = None
        chosen_key: Hashable = None
        wake_at: float | None = None
        strategy = self.strategy
        for key, group in self._groups.items():
            head = group.items[0]
            ready_at = strategy.ready_at(head[_QUEUED_AT])
            if urgent or ready_at <= now or strategy.is_full(group):
                if chosen is None or head[_SEQ] < chosen.items[0][_SEQ]:
                    chosen, chosen_key = group, key
            elif wake_at is None or ready_at < wake_at:
                wake_at = ready_at
        if chosen is None:
            return None, wake_at
        queued = chosen.items
        n = len(queued)
        whole_body = chosen.envelope + (chosen.nbytes - n * chosen.envelope) + n - 1
        if n <= strategy.max_events and whole_body <= strategy.max_bytes:
            # The usual case: the whole group is one POST (copied at C speed).
            items = list(queued)
            queued.clear()
            taken = chosen.nbytes
        else:
            items = [queued.popleft()]
            visitors_size = len(items[0][_VISITORS])
            room = strategy.max_bytes - chosen.envelope
            while queued and len(items) < strategy.max_events:
                size = len(queued[0][_VISITORS]) + 1
                if visitors_size + size > room:
                    break
                visitors_size += size
                items.append(queued.popleft())
            taken = visitors_size - (len(items) - 1) + chosen.envelope * len(items)
        chosen.nbytes -= taken
        self.nbytes -= taken
        self.count -= len(items)
        if not chosen.items:
            del self._groups[chosen_key]
        return Batch(chosen, items), None

    # -- the whole queue ---------------------------------------------------------

    @property
    def has_encoded(self) -> bool:
        return bool(self._groups)

    @property
    def queued(self) -> int:
        """Encoded events in the queue (not those reserved and still being encoded)."""
        return sum(len(group.items) for group in self._groups.values())

    def oldest_seq(self) -> int | None:
        """The number of the oldest encoded event in the queue."""
        oldest: int | None = None
        for group in self._groups.values():
            seq = group.items[0][_SEQ]
            if oldest is None or seq < oldest:
                oldest = seq
        return oldest

    def drain(self) -> tuple[list[object], int]:
        """Empty the queue: ``(items kept for on_error, number of events)``.

        Reserved events (hand-offs still being encoded) stay reserved.
        """
        kept: list[object] = []
        n = 0
        for group in self._groups.values():
            n += len(group.items)
            kept.extend(item[_EVENT] for item in group.items if item[_EVENT] is not None)
        self._groups.clear()
        self.count -= n
        self.nbytes = 0
        return kept, n
