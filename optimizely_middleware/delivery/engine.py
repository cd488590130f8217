"""DeliveryEngine: one generic engine from hand-off to POST, over a Transport and an encoder.

Usage (:class:`~optimizely_middleware.EventSender` is the thin public front)::

    engine = DeliveryEngine(transport=PooledTransport(), encoder=EventEncoder())
    engine.submit(items)          # encodes on this thread, in slices, then files the bytes
    await engine.asubmit(items)   # the same from a task, yielding to the loop between slices
    engine.flush(timeout=5.0)     # True when everything handed over so far has settled
    engine.close(timeout=5.0)

The producer pays: the hand-off (reserving room, encoding in slices,
filing whole hand-offs in the bounded
:class:`~optimizely_middleware.delivery.batch_queue.BatchQueue`) runs on
the caller's thread or task, in the engine's
:class:`~optimizely_middleware.delivery.intake.Intake`. The engine's
threads (:mod:`~optimizely_middleware.delivery.worker`) only do I/O: take
a ready batch (the :class:`LingerOrFull` strategy decides), POST it with
retries (:mod:`~optimizely_middleware.delivery.posting`), wait; the POSTs
under way are listed in
:class:`~optimizely_middleware.delivery.in_flight.PostsInFlight`. Every
lost event goes through one
:class:`~optimizely_middleware.delivery.ledger.DropLedger`; a forked child
is noticed by the package's one fork check (:mod:`optimizely_middleware.process.hooks`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from optimizely_middleware.delivery.batch_queue import Batch, BatchQueue, LingerOrFull
from optimizely_middleware.delivery.clock import Clock, Wait, wait_on
from optimizely_middleware.delivery.drops import DropReason, describe_error, redact
from optimizely_middleware.delivery.encoded import ItemEncoder
from optimizely_middleware.delivery.handoff import SLICE_SECONDS
from optimizely_middleware.delivery.in_flight import PostsInFlight
from optimizely_middleware.delivery.intake import Intake
from optimizely_middleware.delivery.ledger import DropLedger, ErrorCallback
from optimizely_middleware.delivery.posting import BatchPoster
from optimizely_middleware.delivery.retry import RetryPolicy
from optimizely_middleware.delivery.transport import Transport
from optimizely_middleware.delivery.worker import ThreadingStamp, WorkerPool, join_all
from optimizely_middleware.process import hooks

__all__ = ["DeliveryEngine", "ErrorCallback"]

logger = logging.getLogger("optimizely_middleware.sender")


class DeliveryEngine:
    """Encoding at the hand-off, a bounded queue of bytes, I/O threads that POST with retries.

    See :class:`~optimizely_middleware.EventSender` for the options (their
    defaults are written here, once). Inconsistent settings (a POST bigger
    than the queue) raise ``ValueError``.

    Example::

        engine = DeliveryEngine(transport=my_transport, encoder=EventEncoder(), flush_interval=0.05)
    """

    def __init__(
        self,
        *,
        transport: Transport,
        encoder: ItemEncoder,
        endpoint: str | None = None,
        max_queue_events: int = 10_000,
        max_queue_bytes: int = 16 * 1024 * 1024,
        max_events_per_post: int = 2000,
        max_bytes_per_post: int = 1_000_000,
        flush_interval: float = 0.1,
        max_in_flight: int = 8,
        scale_up_after: float = 0.1,
        retry_policy: RetryPolicy | None = None,
        on_error: ErrorCallback | None = None,
        clock: Clock = time.monotonic,
        wait: Wait = wait_on,
        drop_log_interval: float = 10.0,
        slice_seconds: float = SLICE_SECONDS,
        slice_clock: Clock = time.perf_counter,
    ) -> None:
        if slice_seconds <= 0:
            raise ValueError("slice_seconds must be > 0")
        self.encoder = encoder
        self.max_queue_events = max_queue_events
        self.max_queue_bytes = max_queue_bytes
        self.strategy = LingerOrFull(
            max_events=max_events_per_post, max_bytes=max_bytes_per_post, linger=flush_interval
        )
        self.max_in_flight = max_in_flight
        self.slice_seconds = slice_seconds
        self._slice_clock = slice_clock
        self._clock = clock
        self._wait = wait
        self._poster = BatchPoster(
            transport=transport,
            endpoint=endpoint,
            retry_policy=retry_policy or RetryPolicy(),
            clock=clock,
            wait=wait,
        )
        self._ledger = DropLedger(on_error=on_error, log_interval=drop_log_interval, clock=clock)
        self._pool = WorkerPool(
            self._run, max_workers=max_in_flight, scale_up_after=scale_up_after, clock=clock
        )
        self._intake = Intake(self)
        self._reinit_lock = threading.Lock()
        self._reset(keep=False)
        hooks.on_fork(self)  # after the ledger and the transport: they start over first

    @property
    def on_error(self) -> ErrorCallback | None:
        return self._ledger.on_error

    @property
    def endpoint(self) -> str | None:
        return self._poster.endpoint

    @property
    def retry_policy(self) -> RetryPolicy:
        return self._poster.retry_policy

    def _reset(self, *, keep: bool) -> None:
        """New locks, no threads; a clean queue and zero counters unless ``keep``."""
        self._threading = ThreadingStamp()
        # The intake takes the plain lock (cheaper); waits and wake-ups use the condition.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pool.reset()
        self._posts = PostsInFlight()  # batches being POSTed or waiting to retry
        self._flushing = 0
        self._aborted = False
        if keep:
            return
        self._intake.reset()
        self._closed = False
        self._stopping = False
        self._queue = BatchQueue(
            max_events=self.max_queue_events, max_bytes=self.max_queue_bytes, strategy=self.strategy
        )
        self._poster.reset()
        self._submitted = 0
        self._delivered_events = 0
        self._delivered_posts = 0

    # -- process changes -------------------------------------------------------

    def check_process(self) -> None:
        """Start over if the process (the one fork check) or the threading library changed."""
        hooks.check_fork()
        if self._threading.changed():
            with self._reinit_lock:
                if self._threading.changed():
                    self._adopt_patched_threading()

    def after_fork_in_child(self) -> None:
        """A forked child: the parent's threads do not exist here, and its locks may be
        held forever. The parent's queue is the parent's to send; the child starts
        empty and counts only its own events."""
        self._reinit_lock = threading.Lock()
        self._reset(keep=False)
        after_fork = getattr(self.encoder, "after_fork_in_child", None)
        if after_fork is not None:
            after_fork()

    def _adopt_patched_threading(self) -> None:
        # Same process, threading monkey-patched since (gevent): keep the
        # queue and the counters; batches on the old threads are unconfirmed.
        lost = self._posts.events
        self._reset(keep=True)
        self._lose(DropReason.PROCESS_CHANGED, lost)
        if self._queue.count:
            with self._cond:
                self._pool.wake(self._cond)

    @property
    def transport(self) -> Transport:
        """The transport of the next POST; assign to swap it (takes effect at once)."""
        return self._poster.transport

    @transport.setter
    def transport(self, transport: Transport) -> None:
        self._poster.transport = transport

    # -- the hand-off (the caller's thread or task: the intake) ---------------------------

    def submit(self, items: Sequence[object]) -> None:
        """Encode ``items`` here, in slices of about 1 ms, and queue the bytes. Never raises."""
        self._intake.submit(items)

    async def asubmit(self, items: Sequence[object]) -> None:
        """:meth:`submit` for a task: between slices the event loop runs. Never raises
        (but a cancellation is passed on once the hand-off is filed)."""
        await self._intake.asubmit(items)

    def retire_workers(self, timeout: float) -> bool:
        """Stop every worker thread once idle (new ones start on demand); True if none is left.

        For a process about to be forked by code that runs no fork handlers.
        """
        with self._cond:
            if self._posts:
                return False
            threads = self._pool.retire()
            self._cond.notify_all()
        return join_all(threads, time.monotonic() + timeout)

    # -- flush, close, stats -------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every item submitted before the call is delivered or has
        definitively failed. Returns False if ``timeout`` seconds passed first."""
        self.check_process()
        with self._cond:
            target = self._queue.next_seq
            done = self._oldest_pending() >= target
            if not done:
                self._flushing += 1
                self._cond.notify_all()  # lingering workers send now
                deadline = None if timeout is None else time.monotonic() + timeout
                try:
                    while not done:
                        # Now and then: a worker that died or could not start is
                        # replaced, and slow POSTs may get another worker.
                        if self._queue.has_encoded:
                            self._pool.wake(self._cond)
                        self._grow_if_posts_are_slow()
                        step = self._pool.scale_up_after or 0.1
                        if deadline is not None:
                            step = min(step, deadline - time.monotonic())
                            if step <= 0:
                                break
                        done = self._cond.wait_for(lambda: self._oldest_pending() >= target, step)
                finally:
                    self._flushing -= 1
        self._ledger.flush_log()
        return done

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to ``timeout``), then stop the workers. Harmless to call twice; never raises.

        Returns within ``timeout``. What could not be delivered by then (queued,
        being encoded at a hand-off, or in a POST still on the network) is
        counted as ``"shutdown"`` in ``stats()`` and in the warning before it
        returns; later ``submit`` calls are dropped as ``"closed"``.
        """
        try:
            self._close(timeout)
        except Exception:
            logger.exception("Closing the Optimizely event sender failed.")

    def _close(self, timeout: float | None) -> None:
        self.check_process()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            already = self._closed
            self._closed = True
        delivered = self.flush(timeout)
        kept: list[object] = []
        drained = encoding = unconfirmed = 0
        with self._cond:
            self._stopping = True
            if not delivered:
                self._aborted = True  # waits end, no more retries, late results ignored
                kept, drained = self._queue.drain()
                encoding = self._intake.abandon()
                unconfirmed = self._posts.abandon()
            self._cond.notify_all()
        self._ledger.lost_at_shutdown(
            queued=drained, encoding=encoding, unconfirmed=unconfirmed, items=kept
        )
        self._pool.join(deadline)
        with self._cond:
            delivered_events, delivered_posts = self._delivered_events, self._delivered_posts
        if not already:
            self._ledger.close_report(
                delivered_events=delivered_events, delivered_posts=delivered_posts
            )

    def stats(self) -> dict[str, Any]:
        """Counters: submitted, delivered_events, delivered_posts, retries, dropped
        (reason -> events), queue_depth, queue_bytes, in_flight (being POSTed),
        pending (queued, being encoded, in flight), workers, last_error."""
        self.check_process()
        with self._cond:
            queued = self._queue.queued
            encoding = self._intake.reserved()
            return {
                "submitted": self._submitted,
                "delivered_events": self._delivered_events,
                "delivered_posts": self._delivered_posts,
                "retries": self._poster.retries,
                "dropped": self._ledger.dropped(),
                "queue_depth": queued,
                "queue_bytes": self._queue.nbytes,
                "in_flight": self._posts.events,
                "pending": queued + encoding + self._posts.events,
                "workers": len(self._pool.threads),
                "last_error": self._poster.last_error,
            }

    def _lose(
        self, reason: DropReason, quantity: int, items: Sequence[object] = (), detail: str = ""
    ) -> None:
        """Lost events go to the ledger; the error behind them is the last one seen."""
        if detail and quantity > 0:
            with self._cond:
                self._poster.last_error = redact(detail)
        self._ledger.record_lost_event(reason, quantity, items, detail)

    # -- the I/O threads ----------------------------------------------------------------

    def _run(self, generation: int) -> None:
        me = threading.current_thread()
        try:
            while True:
                with self._cond:
                    job = self._next_batch(generation)
                if job is None:
                    return
                self._post(*job, generation)
        except BaseException:  # the thread ends here; the next hand-off or flush starts another
            logger.exception("An Optimizely event sender thread died; another one will start.")
        finally:
            with self._cond:
                if generation == self._pool.generation:
                    self._pool.forget(me)

    def _next_batch(self, generation: int) -> tuple[int, Batch] | None:
        queue = self._queue
        while True:
            if generation != self._pool.generation:
                return None
            now = self._clock()
            urgent = self._flushing > 0 or self._stopping
            batch: Batch | None
            ready: float | None
            if now < self._poster.paused_until:
                batch, ready = None, self._poster.paused_until
            else:
                batch, ready = queue.next_batch(now, urgent)
            if batch is not None:
                job_id = self._posts.start(batch.first_seq, len(batch))
                self._grow_if_posts_are_slow()
                return job_id, batch
            if self._stopping and not queue.has_encoded:
                return None
            timeout = None if ready is None else ready - now
            self._pool.idle_wait(self._cond, self._wait, timeout)

    def _post(self, job_id: int, batch: Batch, generation: int) -> None:
        def gave_up() -> DropReason | None:
            if self._aborted or not self._posts.is_open(job_id):
                return DropReason.SHUTDOWN
            if generation != self._pool.generation:
                return DropReason.PROCESS_CHANGED
            return None

        reason: DropReason | None = DropReason.SENDER_ERROR
        detail = "the sender thread died during the POST"
        try:
            reason, detail = self._poster.deliver(batch, self._cond, gave_up)
        except Exception as exc:
            reason, detail = DropReason.SENDER_ERROR, describe_error(exc)
            logger.exception("Unexpected error while sending Optimizely events.")
        finally:
            # Also when the thread dies (a BaseException): the job settles, once,
            # and a flush returns only after on_error has seen a failed batch.
            with self._cond:
                settled_here = self._posts.settle(job_id)  # close() counts it no more
                if settled_here and reason is None:
                    self._delivered_events += len(batch)
                    self._delivered_posts += 1
            if settled_here and reason is not None:
                self._lose(reason, len(batch), batch.events(), detail)
            with self._cond:
                self._posts.end(job_id)
                self._cond.notify_all()

    # -- bookkeeping (with self._cond held) ----------------------------------------

    def _grow_if_posts_are_slow(self) -> None:
        """Another I/O thread only while a ready batch waits and every thread has been in
        a POST (or its retry wait) for ``scale_up_after``: POSTs to a slow endpoint."""
        self._pool.maybe_grow(work_waiting=self._queue.has_encoded)

    def _oldest_pending(self) -> int:
        oldest = self._queue.oldest_seq()
        if oldest is None:
            oldest = self._queue.next_seq
        for seq in self._intake.oldest_seqs():
            oldest = min(oldest, seq)
        for seq in self._posts.oldest_seqs():
            oldest = min(oldest, seq)
        return oldest
