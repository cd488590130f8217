"""The engine's bounded queue, and the named strategy that decides when a batch goes.

Usage (the engine holds its lock around every call; the queue has none)::

    queue = BatchQueue(max_events=10_000, max_bytes=16 << 20,
                       strategy=LingerOrFull(max_events=500, max_bytes=1_000_000, linger=0.1))
    accepted = queue.offer(items, now)            # O(1): the list is appended as is
    raw = queue.take_raw(limit=500)               # a worker encodes these ...
    queue.add_encoded(seq, queued_at, encoded)    # ... and files each under its group
    batch, wait = queue.next_batch(now, urgent=False)

Two stages. Handed-over lists wait *raw* (not encoded) in FIFO order,
bounded by count. A worker encodes them and files each event in the group
of events that may share its POST; encoded events are bounded by bytes as
well. Only one worker encodes at a time, so each group stays in hand-off
order and the oldest unsettled event is always at the head of a deque.

Queued encoded events are plain tuples of bytes and numbers (plus the item
only when ``on_error`` needs it): Python's garbage collector stops tracking
them at once, so thousands of them never reach the oldest generation, whose
collections pause every thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Sequence
from typing import Final

from optimizely_middleware.batching import EncodedEvent, body_of

__all__ = ["Batch", "BatchQueue", "LingerOrFull", "RawEntry"]

# (seq, queued_at, encoded visitors, item or None)
_Item = tuple[int, float, bytes, object | None]
_SEQ: Final = 0
_QUEUED_AT: Final = 1
_VISITORS: Final = 2
_EVENT: Final = 3

# (seq of the first item, queued_at, the handed-over items)
RawEntry = tuple[int, float, Sequence[object]]


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


class LingerOrFull:
    """The batching decision: a group goes when it holds a full POST (``max_events``
    events or ``max_bytes`` bytes), when its oldest event has waited ``linger``
    seconds, or at once when the engine is flushing or closing.

    Example::

        strategy = LingerOrFull(max_events=500, max_bytes=1_000_000, linger=0.1)
    """

    def __init__(self, *, max_events: int, max_bytes: int, linger: float) -> None:
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
    """Raw hand-offs, then encoded events grouped by POST; see the module docstring."""

    def __init__(self, *, max_events: int, max_bytes: int, strategy: LingerOrFull) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.strategy = strategy
        # This many raw events are encoded before their linger ends: SDK objects
        # waiting raw are tracked by the garbage collector; encoded ones are not.
        self.encode_early = min(100, strategy.max_events)
        self.raw: deque[RawEntry] = deque()
        self.raw_count = 0  # raw events, not yet taken by the encoder
        self.count = 0  # every queued event: raw, being encoded, encoded
        self.nbytes = 0  # encoded events' bytes
        self.next_seq = 0
        self._groups: dict[Hashable, _Group] = {}

    # -- raw side ----------------------------------------------------------------

    def offer(self, items: Sequence[object], now: float) -> int:
        """Queue as many of ``items`` as the count bound allows; returns how many."""
        room = self.max_events - self.count
        n = len(items)
        if n > room:
            if room <= 0:
                return 0
            items, n = items[:room], room
        self.raw.append((self.next_seq, now, items))
        self.next_seq += n
        self.raw_count += n
        self.count += n
        return n

    def raw_ready_at(self) -> float | None:
        """When the oldest raw events must be encoded (their linger ends), or None."""
        if not self.raw:
            return None
        if self.raw_count >= self.encode_early:
            return float("-inf")
        return self.strategy.ready_at(self.raw[0][1])

    def take_raw(self, limit: int) -> list[RawEntry]:
        """Whole hand-offs from the front, at least one, until ``limit`` events."""
        taken: list[RawEntry] = []
        n = 0
        while self.raw and (not taken or n + len(self.raw[0][2]) <= limit):
            entry = self.raw.popleft()
            taken.append(entry)
            n += len(entry[2])
        self.raw_count -= n
        return taken

    def forget(self, n: int) -> None:
        """``n`` taken events will not be filed (dropped while encoding)."""
        self.count -= n

    # -- encoded side ------------------------------------------------------------

    def add_encoded(
        self, seq: int, queued_at: float, encoded: EncodedEvent, keep_event: bool
    ) -> bool:
        """File one encoded event; False (and forgotten) when the byte bound is reached."""
        size = encoded.nbytes
        if self.nbytes + size > self.max_bytes:
            self.count -= 1
            return False
        group = self._groups.get(encoded.key)
        if group is None:
            group = self._groups[encoded.key] = _Group(encoded)
        event = encoded.event if keep_event else None
        group.items.append((seq, queued_at, encoded.visitors, event))
        group.nbytes += size
        self.nbytes += size
        return True

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

    def oldest_seq(self) -> int | None:
        """The number of the oldest queued event that is raw or encoded (not being encoded)."""
        oldest = self.raw[0][0] if self.raw else None
        for group in self._groups.values():
            seq = group.items[0][_SEQ]
            if oldest is None or seq < oldest:
                oldest = seq
        return oldest

    def drain(self) -> tuple[list[object], int]:
        """Empty the queue: ``(items kept for on_error, number of events)`` (not being encoded)."""
        kept: list[object] = []
        n = 0
        for _, _, items in self.raw:
            kept.extend(items)
            n += len(items)
        for group in self._groups.values():
            n += len(group.items)
            kept.extend(item[_EVENT] for item in group.items if item[_EVENT] is not None)
        self.raw.clear()
        self._groups.clear()
        self.count -= n
        self.raw_count = 0
        self.nbytes = 0
        return kept, n
