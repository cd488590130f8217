"""DeliveryEngine: one generic engine from hand-off to POST, over a Transport and an encoder.

Usage (:class:`~optimizely_middleware.EventSender` is the thin public front)::

    engine = DeliveryEngine(transport=PooledTransport(), encoder=LogEventEncoder())
    engine.submit(items)          # O(1): the list is appended; nothing is encoded here
    engine.flush(timeout=5.0)     # True when everything handed over so far has settled
    engine.close(timeout=5.0)

The jobs are split by module: :mod:`~optimizely_middleware.batch_queue`
(bounds, groups, the named batching strategy), :mod:`~optimizely_middleware.worker`
(threads, process changes), :mod:`~optimizely_middleware.retry` (what to
retry, how long to wait), :mod:`~optimizely_middleware.drops` (lost events
and their log lines), :mod:`~optimizely_middleware.transport` (one POST).

What a worker does (encode in short slices, POST with retries) is in
:mod:`~optimizely_middleware.jobs`; this module is the caller's side: hand-off,
flush, close, stats, and re-initialising after a change of process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from optimizely_middleware import drops, process_hooks
from optimizely_middleware.batch_queue import BatchQueue, LingerOrFull
from optimizely_middleware.batching import ItemEncoder
from optimizely_middleware.clock import Clock, Wait, wait_on
from optimizely_middleware.jobs import WorkerJobs
from optimizely_middleware.retry import RetryPolicy
from optimizely_middleware.servers import in_uwsgi_master
from optimizely_middleware.transport import Transport
from optimizely_middleware.worker import ProcessStamp, WorkerPool

__all__ = ["DeliveryEngine", "ErrorCallback"]

logger = logging.getLogger("optimizely_middleware.sender")

# on_error(items, reason): items that will never be sent, on a worker thread.
ErrorCallback = Callable[[list[Any], str], None]

_reinit_lock = threading.Lock()

# How long a hand-off in a uWSGI master may wait for its own delivery.
MASTER_DELIVERY_TIMEOUT = 10.0


def _new_reinit_lock() -> None:
    global _reinit_lock
    _reinit_lock = threading.Lock()  # a parent thread may have held it at fork time


process_hooks.on_fork_in_child("senders", _new_reinit_lock)


class DeliveryEngine(WorkerJobs):
    """Bounded queue, encoding, batching, POSTs with retries, flush/close, counted drops.

    See :class:`~optimizely_middleware.EventSender` for the options. The
    batching decision is :class:`~optimizely_middleware.batch_queue.LingerOrFull`;
    inconsistent settings (a POST bigger than the queue) raise ``ValueError``.

    Example::

        engine = DeliveryEngine(transport=my_transport, encoder=my_encoder, flush_interval=0.05)
    """

    def __init__(
        self,
        *,
        transport: Transport,
        encoder: ItemEncoder,
        endpoint: str | None = None,
        max_queue_events: int = 10_000,
        max_queue_bytes: int = 16 * 1024 * 1024,
        max_events_per_post: int = 500,
        max_bytes_per_post: int = 1_000_000,
        flush_interval: float = 0.1,
        max_in_flight: int = 4,
        scale_up_after: float = 0.1,
        retry_policy: RetryPolicy | None = None,
        on_error: ErrorCallback | None = None,
        clock: Clock = time.monotonic,
        wait: Wait = wait_on,
        drop_log_interval: float = 10.0,
    ) -> None:
        for name, value in (
            ("max_queue_events", max_queue_events),
            ("max_queue_bytes", max_queue_bytes),
            ("max_events_per_post", max_events_per_post),
            ("max_bytes_per_post", max_bytes_per_post),
            ("max_in_flight", max_in_flight),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value!r}")
        if max_events_per_post > max_queue_events:
            raise ValueError(
                f"max_events_per_post ({max_events_per_post}) is larger than "
                f"max_queue_events ({max_queue_events}): a full POST could never be queued"
            )
        if max_bytes_per_post > max_queue_bytes:
            raise ValueError(
                f"max_bytes_per_post ({max_bytes_per_post}) is larger than "
                f"max_queue_bytes ({max_queue_bytes}): a full POST could never be queued"
            )
        if flush_interval < 0:
            raise ValueError("flush_interval must be >= 0")
        self.endpoint = endpoint
        self.encoder = encoder
        self.max_queue_events = max_queue_events
        self.max_queue_bytes = max_queue_bytes
        self.strategy = LingerOrFull(
            max_events=max_events_per_post, max_bytes=max_bytes_per_post, linger=flush_interval
        )
        self.max_in_flight = max_in_flight
        self.scale_up_after = scale_up_after
        self.retry_policy = retry_policy or RetryPolicy()
        self.on_error = on_error
        self._clock = clock
        self._wait = wait
        self._transport = transport
        self._drop_log = drops.DropLog(drop_log_interval, clock)
        self._pool = WorkerPool(
            self._run, max_workers=max_in_flight, scale_up_after=scale_up_after, clock=clock
        )
        self._reset(keep=False)

    def _reset(self, *, keep: bool) -> None:
        """New locks, no threads; a clean queue and zero counters unless ``keep``."""
        self._stamp = ProcessStamp()
        self._cond = threading.Condition(threading.Lock())
        self._pool.reset()
        self._jobs: dict[int, int] = {}  # job id -> oldest seq it holds (encoding or POSTing)
        self._job_ids = 0
        self._encoding = False
        self._encoding_count = 0  # events taken by the encoder, not filed yet
        self._in_network = 0  # jobs inside transport.post
        self._in_flight = 0  # events in batches being POSTed or waiting to retry
        self._flushing = 0
        self._aborted = False
        self._paused_until = float("-inf")  # Retry-After, for the whole transport
        if keep:
            return
        self._closed = False
        self._stopping = False
        self._queue = BatchQueue(
            max_events=self.max_queue_events, max_bytes=self.max_queue_bytes, strategy=self.strategy
        )
        self._submitted = 0
        self._delivered_events = 0
        self._delivered_posts = 0
        self._retries = 0
        self._dropped: Counter[str] = Counter()
        self._last_error: str | None = None

    # -- process changes -------------------------------------------------------

    def check_process(self) -> None:
        """Re-initialise if the process or the threading library changed (cheap)."""
        if self._stamp.changed():
            with _reinit_lock:
                if self._stamp.changed():
                    self._reinit()

    def _reinit(self) -> None:
        if not self._stamp.same_pid():
            # A forked child: the parent's threads do not exist here, and its
            # locks may be held forever. The parent's queue is the parent's to
            # send; the child starts empty and counts only its own events.
            self._reset(keep=False)
            self._drop_log.after_fork_in_child()
            after_fork = getattr(self.encoder, "after_fork_in_child", None)
            if after_fork is not None:
                after_fork()
            return
        # Same process, threading monkey-patched since (gevent): keep the
        # queue and the counters; batches on the old threads are unconfirmed.
        lost = self._in_flight + self._encoding_count
        self._queue.forget(self._encoding_count)
        self._reset(keep=True)
        if lost:
            self._dropped[drops.PROCESS_CHANGED] += lost
            self._drop_log.record(drops.PROCESS_CHANGED, lost)
        if self._queue.count:
            with self._cond:
                self._pool.wake(self._cond)

    @property
    def transport(self) -> Transport:
        """The transport of the next POST; assign to swap it (takes effect at once)."""
        return self._transport

    @transport.setter
    def transport(self, transport: Transport) -> None:
        self._transport = transport

    @contextmanager
    def use_transport(self, transport: Transport) -> Iterator[Transport]:
        """``with engine.use_transport(t):`` POSTs go through ``t``, then the previous one."""
        previous, self._transport = self._transport, transport
        try:
            yield transport
        finally:
            if self._transport is transport:
                self._transport = previous

    # -- the caller's side -------------------------------------------------------

    def submit(self, items: Sequence[object]) -> None:
        """Queue ``items`` for delivery: O(1), never blocks, never raises."""
        try:
            n = len(items)
            if not n:
                return
            self.check_process()
            now = self._clock()
            lost_reason = ""
            with self._cond:
                self._submitted += n
                queue = self._queue
                if self._closed:
                    lost_reason, lost = drops.CLOSED, n
                else:
                    was_empty = not queue.count
                    accepted = queue.offer(items, now)
                    lost = n - accepted
                    if lost:
                        lost_reason = drops.QUEUE_FULL
                    raw = queue.raw_count
                    if was_empty or raw - accepted < queue.encode_early <= raw:
                        self._pool.wake(self._cond)
                    self._grow_if_posts_are_slow()
            if lost_reason:
                self.record_lost_event(lost_reason, lost)
            if in_uwsgi_master():
                self._deliver_before_fork()
        except Exception:
            # Never raise into the request; the loss is still counted and logged.
            with suppress(Exception):
                self.record_lost_event(drops.SENDER_ERROR, len(items))
            logger.exception("EventSender.submit failed; the events are dropped.")

    def _deliver_before_fork(self) -> None:
        """In a uWSGI master, deliver now and leave no worker thread alive.

        uWSGI forks its workers from the master in C, where Python's fork
        handlers do not run: a thread alive at that moment (waiting on the
        GIL or a lock) can hang the worker for good. Events in a master are
        rare (sent at import), so this hand-off waits for its own POST.
        """
        if not self.flush(MASTER_DELIVERY_TIMEOUT):
            logger.warning(
                "An Optimizely event sent in the uWSGI master was not delivered within "
                "%.0f s; its worker thread stays alive, and workers forked now may hang. "
                "Set lazy-apps = true, or send no event before the fork.",
                MASTER_DELIVERY_TIMEOUT,
            )
            return
        with self._cond:
            if self._jobs:
                return
            threads = self._pool.retire()
            self._cond.notify_all()
        for thread in threads:
            thread.join(MASTER_DELIVERY_TIMEOUT)

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
                        # Re-check now and then whether the POSTs are slow enough
                        # for another worker; no wake-ups unless someone flushes.
                        self._grow_if_posts_are_slow()
                        step = self.scale_up_after or 0.1
                        if deadline is not None:
                            step = min(step, deadline - time.monotonic())
                            if step <= 0:
                                break
                        done = self._cond.wait_for(lambda: self._oldest_pending() >= target, step)
                finally:
                    self._flushing -= 1
        self._drop_log.flush()
        return done

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to ``timeout``), then stop the workers. Harmless to call twice.

        Items still queued when the timeout ends are dropped as ``"shutdown"``;
        POSTs still on the network are reported as in flight; later ``submit``
        calls are dropped as ``"closed"``.
        """
        self.check_process()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            already = self._closed
            self._closed = True
        delivered = self.flush(timeout)
        kept: list[object] = []
        drained = 0
        with self._cond:
            self._stopping = True
            if not delivered:
                self._aborted = True  # waits end, no more retries
                kept, drained = self._queue.drain()
            self._cond.notify_all()
        if drained:
            self.record_lost_event(drops.SHUTDOWN, drained, kept)
        if not delivered:
            # Batches waiting out a backoff (and the encoder) stop at once when
            # aborted and count themselves; a POST stuck on the network cannot be.
            with self._cond:
                self._cond.wait_for(lambda: len(self._jobs) <= self._in_network, 5.0)
        self._pool.join(deadline)
        with self._cond:
            in_flight = self._in_flight
            dropped = Counter(self._dropped)
            delivered_events, delivered_posts = self._delivered_events, self._delivered_posts
        if drained or in_flight:
            logger.warning(
                "%d Optimizely events were not delivered at shutdown: %d dropped from the "
                "queue, %d in flight and unconfirmed (a POST still on the network).",
                drained + in_flight,
                drained,
                in_flight,
            )
        if not already and (delivered_events or dropped):
            self._drop_log.totals(
                delivered_events=delivered_events, delivered_posts=delivered_posts, dropped=dropped
            )

    def stats(self) -> dict[str, Any]:
        """Counters: submitted, delivered_events, delivered_posts, retries, dropped
        (reason -> events), queue_depth, queue_bytes, in_flight (being POSTed),
        pending (queued + in flight), workers, last_error."""
        self.check_process()
        with self._cond:
            queued = self._queue.count
            return {
                "submitted": self._submitted,
                "delivered_events": self._delivered_events,
                "delivered_posts": self._delivered_posts,
                "retries": self._retries,
                "dropped": dict(self._dropped),
                "queue_depth": queued,
                "queue_bytes": self._queue.nbytes,
                "in_flight": self._in_flight,
                "pending": queued + self._in_flight,
                "workers": len(self._pool.threads),
                "last_error": self._last_error,
            }

    def record_lost_event(
        self, reason: str, quantity: int, items: Sequence[object] = (), detail: str = ""
    ) -> None:
        """The one place lost events go: counted, logged (rate-limited), passed to on_error."""
        if quantity <= 0:
            return
        with self._cond:
            self._dropped[reason] += quantity
            if detail:
                self._last_error = drops.redact(detail)
        self._drop_log.record(reason, quantity, detail)
        kept = [item for item in items if item is not None]
        if self.on_error is not None and kept:
            try:
                self.on_error(kept, reason)
            except Exception:
                logger.exception("The on_error callback raised; ignored.")

    # -- bookkeeping (with self._cond held) ----------------------------------------

    def _oldest_pending(self) -> int:
        oldest = self._queue.oldest_seq()
        if oldest is None:
            oldest = self._queue.next_seq
        for seq in self._jobs.values():
            oldest = min(oldest, seq)
        return oldest
