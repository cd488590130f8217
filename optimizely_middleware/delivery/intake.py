"""Intake: the hand-off half of the engine, run on the thread or task that hands events over.

Usage (the engine owns one and delegates ``submit`` / ``asubmit`` to it)::

    intake = Intake(engine)
    intake.submit(items)          # reserve room, encode in slices, file the whole hand-off
    await intake.asubmit(items)   # the same from a task, yielding to the loop between slices
    intake.reserved()             # events still being encoded (with the engine's lock held)

The producer pays: the caller encodes its events
(:mod:`~optimizely_middleware.delivery.handoff`, slices of about 1 ms) and
files the bytes, whole hand-offs at once, in the engine's queue. The lock,
the queue and the counters stay the engine's (a new process replaces them),
so every step reads them through the engine, under the engine's lock.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import suppress
from typing import Protocol

from optimizely_middleware.delivery.batch_queue import BatchQueue
from optimizely_middleware.delivery.clock import Clock
from optimizely_middleware.delivery.drops import DropReason
from optimizely_middleware.delivery.encoded import ItemEncoder
from optimizely_middleware.delivery.handoff import HandOffEncoding
from optimizely_middleware.delivery.ledger import DropLedger
from optimizely_middleware.delivery.worker import WorkerPool

__all__ = ["Intake", "IntakeOwner"]

logger = logging.getLogger("optimizely_middleware.sender")


class IntakeOwner(Protocol):
    """What the intake reads on its engine (:class:`~.engine.DeliveryEngine`), always afresh:
    a new process or gevent's patching replaces the lock, the queue and the pool's state."""

    encoder: ItemEncoder
    slice_seconds: float
    _slice_clock: Clock
    _clock: Clock
    _lock: threading.Lock
    _cond: threading.Condition
    _queue: BatchQueue
    _closed: bool
    _submitted: int
    _flushing: int
    _pool: WorkerPool
    _ledger: DropLedger

    def check_process(self) -> None: ...

    def _lose(
        self, reason: DropReason, quantity: int, items: Sequence[object] = (), detail: str = ""
    ) -> None: ...

    def _grow_if_posts_are_slow(self) -> None: ...


class Intake:
    """Hand-offs in progress: ``submit`` / ``asubmit`` and the room they hold in the queue.

    ``pending`` maps a hand-off's token to ``(first seq, events reserved)``
    while its events are encoded; the engine reads it (with its lock held)
    for ``flush``, ``close`` and ``stats``.

    Example::

        intake = Intake(engine)
        intake.submit(items)
    """

    def __init__(self, engine: IntakeOwner) -> None:
        self._engine = engine
        self._tokens = itertools.count(1)  # a name for each hand-off in progress
        self.pending: dict[int, tuple[int, int]] = {}

    def reset(self) -> None:
        """Forget every hand-off in progress (a clean start; the engine holds no lock yet)."""
        self.pending = {}

    def reserved(self) -> int:
        """Events reserved by hand-offs still being encoded (call with the engine's lock)."""
        return sum(reserved for _, reserved in self.pending.values())

    def oldest_seqs(self) -> Iterator[int]:
        """The first seq of each hand-off in progress (call with the engine's lock)."""
        return (seq for seq, _ in self.pending.values())

    def abandon(self) -> int:
        """Give up on every hand-off in progress and release its room; the events it held.

        Call with the engine's lock held (``close`` once the flush has failed).
        """
        queue = self._engine._queue
        encoding = 0
        for _, reserved in self.pending.values():
            encoding += reserved
            queue.release(reserved)
        self.pending.clear()
        return encoding

    def submit(self, items: Sequence[object]) -> None:
        """Encode ``items`` here, in slices of about 1 ms, and queue the bytes. Never raises."""
        encoding = self._begin(items)
        if encoding is None or self._filed_at_once(encoding):
            return
        engine = self._engine
        try:
            for _ in encoding.slices(engine.slice_seconds, engine._slice_clock):
                time.sleep(0)  # let other threads (and gevent's hub) run between slices
        except BaseException:
            self._end(encoding, interrupted=True)
            raise
        self._end(encoding)

    async def asubmit(self, items: Sequence[object]) -> None:
        """:meth:`submit` for a task: between slices the event loop runs. Never raises
        (but a cancellation is passed on once the hand-off is filed)."""
        encoding = self._begin(items)
        if encoding is None or self._filed_at_once(encoding):
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (trio): no way to yield, so no slices
            self._end(encoding, interrupted=True)
            return
        engine = self._engine
        try:
            for _ in encoding.slices(engine.slice_seconds, engine._slice_clock):
                await asyncio.sleep(0)
        except BaseException:
            self._end(encoding, interrupted=True)  # cancelled: finish here, nothing lost
            raise
        self._end(encoding)

    def _filed_at_once(self, encoding: HandOffEncoding) -> bool:
        """A page's few events: encoded in one go and filed (True); False for a longer one."""
        if not encoding.small:
            return False
        encoding.finish()
        self._end(encoding)
        return True

    def _begin(self, items: Sequence[object]) -> HandOffEncoding | None:
        """Reserve room for ``items`` (count bound); what does not fit is dropped and counted."""
        engine = self._engine
        try:
            n = len(items)
            if not n:
                return None
            engine.check_process()
            lost_reason: DropReason | None = None
            with engine._lock:
                engine._submitted += n
                if engine._closed:
                    lost_reason, accepted = DropReason.CLOSED, 0
                else:
                    first_seq = engine._queue.next_seq
                    accepted = engine._queue.reserve(n)
                    if accepted < n:
                        lost_reason = DropReason.QUEUE_FULL
                    if accepted:
                        token = next(self._tokens)
                        self.pending[token] = (first_seq, accepted)
            if lost_reason is not None:
                engine._lose(lost_reason, n - accepted, items[accepted:])
            if not accepted:
                return None
            return HandOffEncoding(  # positional: cheaper, once per request
                engine.encoder,
                items if accepted == n else items[:accepted],
                first_seq,
                engine._clock(),
                token,
            )
        except Exception:
            self._log_handoff_failure(items)
            return None

    def _end(self, encoding: HandOffEncoding, *, interrupted: bool = False) -> None:
        """Encode what is left (``interrupted``) and file the whole hand-off at once."""
        try:
            if interrupted:
                encoding.finish()
            self._file(encoding)
        except Exception:
            with suppress(Exception), self._engine._lock:  # no reservation left for flush()
                reserved = self.pending.pop(encoding.token, None)
                if reserved is not None:
                    self._engine._queue.release(reserved[1])
            self._log_handoff_failure(encoding.items)

    def _log_handoff_failure(self, items: Sequence[object]) -> None:
        # Never raise into the request; the loss is still counted and logged.
        with suppress(Exception):
            self._engine._lose(DropReason.SENDER_ERROR, len(items))
        logger.exception("The Optimizely event hand-off failed; the events are dropped.")

    def _file(self, encoding: HandOffEncoding) -> None:
        engine = self._engine
        token = encoding.token
        keep = engine._ledger.on_error is not None
        failed = encoding.failed
        with engine._lock:
            if token not in self.pending:
                return  # close() gave up on it (and counted it), or a new process
            queue = engine._queue
            was_empty = not queue.has_encoded
            over_bytes = queue.add_all(
                encoding.encoded, encoding.first_seq, encoding.queued_at, keep
            )
            if failed:
                queue.release(len(failed))
            del self.pending[token]  # filed: flush() no longer waits for it
            became_full, queue.became_full = queue.became_full, False
            if encoding.encoded and (was_empty or engine._flushing or became_full):
                # Wake-ups per batch, not per request: an idle worker waits for the
                # first event; a lingering one is woken early only by a full POST.
                engine._pool.wake(engine._cond)
            engine._grow_if_posts_are_slow()
        if over_bytes:
            engine._lose(DropReason.QUEUE_BYTES, over_bytes)
        for item, why in failed:
            logger.debug("Unencodable Optimizely event: %r", getattr(item, "params", item))
            engine._lose(DropReason.UNSERIALIZABLE, 1, [item], why)
