"""What a worker of the delivery engine does: pick a job, encode a slice, POST with retries.

Usage: :class:`WorkerJobs` is the half of
:class:`~optimizely_middleware.engine.DeliveryEngine` that runs on worker
threads; the engine runs ``WorkerPool(engine._run, ...)``::

    class DeliveryEngine(WorkerJobs):
        ...

A job is either *encode* (at most one at a time, so each group stays in
hand-off order) or *POST one batch*. Encoding runs in slices of at most
:data:`SLICE_SECONDS` of Python work with the GIL released between them.
A ``Retry-After`` pauses every POST of the engine, not only the batch that
got it. After ``close()`` gives up (``_aborted``) no retry is counted or
announced: waiting batches are dropped as ``shutdown`` at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

from optimizely_middleware import drops
from optimizely_middleware.batch_queue import Batch, BatchQueue, LingerOrFull, RawEntry
from optimizely_middleware.batching import EncodedEvent, ItemEncoder, UnserializableEvent
from optimizely_middleware.clock import Clock, Wait
from optimizely_middleware.retry import (
    RetryPolicy,
    is_retryable_status,
    is_success_status,
    is_transient_error,
    parse_retry_after,
)
from optimizely_middleware.transport import Transport
from optimizely_middleware.worker import WorkerPool

__all__ = ["SLICE_SECONDS", "WorkerJobs"]

logger = logging.getLogger("optimizely_middleware.sender")

SLICE_SECONDS: Final = 0.0002  # Python work between two releases of the GIL while encoding


class WorkerJobs:
    """The worker-thread half of the engine (state is set up by the engine)."""

    encoder: ItemEncoder
    endpoint: str | None
    strategy: LingerOrFull
    retry_policy: RetryPolicy
    on_error: Callable[[list[object], str], None] | None
    _clock: Clock
    _wait: Wait
    _transport: Transport
    _pool: WorkerPool
    _cond: threading.Condition
    _queue: BatchQueue
    _jobs: dict[int, int]
    _job_ids: int
    _encoding: bool
    _encoding_count: int
    _in_network: int
    _in_flight: int
    _flushing: int
    _stopping: bool
    _aborted: bool
    _paused_until: float
    _delivered_events: int
    _delivered_posts: int
    _retries: int
    _last_error: str | None

    def record_lost_event(
        self, reason: str, quantity: int, items: Sequence[object] = (), detail: str = ""
    ) -> None:
        raise NotImplementedError

    def _start_job(self, oldest_seq: int) -> int:
        self._job_ids += 1
        self._jobs[self._job_ids] = oldest_seq
        return self._job_ids

    def _grow_if_posts_are_slow(self) -> None:
        """Another worker only while every worker waits on the network (lock held):
        encoding is Python work under the GIL, which another thread cannot
        speed up, and each extra thread waiting for the GIL costs the request
        threads a wake-up whenever they release it."""
        all_in_network = self._in_network >= len(self._pool.threads)
        self._pool.maybe_grow(work_waiting=self._queue.count > 0 and all_in_network)

    def _finish_job(self, job_id: int, generation: int) -> None:
        with self._cond:
            if generation == self._pool.generation:
                self._jobs.pop(job_id, None)
            self._cond.notify_all()

    # -- the workers -----------------------------------------------------------------

    def _run(self, generation: int) -> None:
        try:
            while True:
                with self._cond:
                    job = self._next_job(generation)
                if job is None:
                    return
                job()
        except Exception:
            logger.exception("An Optimizely event sender worker crashed.")

    def _next_job(self, generation: int) -> Callable[[], None] | None:
        queue = self._queue
        while True:
            if generation != self._pool.generation:
                return None
            now = self._clock()
            urgent = self._flushing > 0 or self._stopping
            wake_at: float | None = None
            if not self._encoding:
                ready_at = queue.raw_ready_at()
                if ready_at is not None and (urgent or ready_at <= now):
                    entries = queue.take_raw(self.strategy.max_events)
                    self._encoding = True
                    self._encoding_count = sum(len(items) for _, _, items in entries)
                    job_id = self._start_job(entries[0][0])
                    return lambda: self._encode(job_id, entries, generation)
                wake_at = ready_at
            if queue.has_encoded:
                ready: float | None
                if now < self._paused_until:
                    batch, ready = None, self._paused_until
                else:
                    batch, ready = queue.next_batch(now, urgent)
                if batch is not None:
                    self._in_flight += len(batch)
                    job_id = self._start_job(batch.first_seq)
                    self._grow_if_posts_are_slow()
                    return lambda: self._post(job_id, batch, generation)
                if ready is not None and (wake_at is None or ready < wake_at):
                    wake_at = ready
            if self._stopping and not queue.count:
                return None
            self._pool.idle_wait(self._cond, self._wait, None if wake_at is None else wake_at - now)

    # -- encoding ---------------------------------------------------------------------

    def _encode(self, job_id: int, entries: list[RawEntry], generation: int) -> None:
        encoder = self.encoder
        encoded: list[tuple[int, float, EncodedEvent]] = []
        failed: list[tuple[object, str]] = []
        total = sum(len(items) for _, _, items in entries)
        handled = 0  # events filed in the queue or dropped by _file
        whole_encoded = whole_failed = 0  # how much of each list is whole hand-offs
        started = time.perf_counter()
        try:
            for first_seq, queued_at, items in entries:
                last = len(items) - 1
                for offset, item in enumerate(items):
                    try:
                        encoded.append((first_seq + offset, queued_at, encoder.encode(item)))
                    except UnserializableEvent as exc:
                        failed.append((item, str(exc)))
                    except Exception as exc:
                        failed.append((item, f"{type(exc).__name__} while encoding the event"))
                    if offset == last:
                        whole_encoded, whole_failed = len(encoded), len(failed)
                    if time.perf_counter() - started >= SLICE_SECONDS:
                        # Only whole hand-offs are filed: a POST made meanwhile never
                        # takes part of a request's events while the rest is encoded.
                        if whole_encoded or whole_failed:
                            if not self._file(
                                encoded[:whole_encoded], failed[:whole_failed], generation
                            ):
                                return
                            handled += whole_encoded + whole_failed
                            del encoded[:whole_encoded], failed[:whole_failed]
                            whole_encoded = whole_failed = 0
                        time.sleep(0)  # let request threads and the event loop run
                        started = time.perf_counter()
            if self._file(encoded, failed, generation):
                handled += len(encoded) + len(failed)
        finally:
            left = total - handled
            with self._cond:
                current = generation == self._pool.generation
                if current:
                    self._encoding = False
                    self._encoding_count = 0
                    self._jobs.pop(job_id, None)
                    self._queue.forget(left)
                self._cond.notify_all()
            if current and left:
                reason = drops.SHUTDOWN if self._aborted else drops.SENDER_ERROR
                self.record_lost_event(reason, left)

    def _file(
        self,
        encoded: list[tuple[int, float, EncodedEvent]],
        failed: list[tuple[object, str]],
        generation: int,
    ) -> bool:
        """Queue one slice of encoded events; False when the engine gave up meanwhile."""
        keep = self.on_error is not None
        over_bytes = 0
        with self._cond:
            if generation != self._pool.generation:
                return False
            if self._aborted:
                return False
            queue = self._queue
            for seq, queued_at, event in encoded:
                if not queue.add_encoded(seq, queued_at, event, keep):
                    over_bytes += 1
            queue.forget(len(failed))
            self._encoding_count -= len(encoded) + len(failed)
        self.record_lost_event(drops.QUEUE_BYTES, over_bytes)
        for item, why in failed:
            logger.debug("Unencodable Optimizely event: %r", getattr(item, "params", item))
            self.record_lost_event(drops.UNSERIALIZABLE, 1, [item], why)
        return True

    # -- POSTing ----------------------------------------------------------------------

    def _post(self, job_id: int, batch: Batch, generation: int) -> None:
        try:
            reason, detail = self._deliver(batch, generation)
        except Exception as exc:
            reason, detail = drops.SENDER_ERROR, drops.describe_error(exc)
            logger.exception("Unexpected error while sending Optimizely events.")
        with self._cond:
            if generation != self._pool.generation:
                return
            self._in_flight -= len(batch)
            if reason is None:
                self._delivered_events += len(batch)
                self._delivered_posts += 1
        if reason is not None:
            self.record_lost_event(reason, len(batch), batch.events(), detail)
        self._finish_job(job_id, generation)

    def _wait_until(self, when: float) -> bool:
        """Wait (lock held) until the clock reaches ``when``; False if aborted first."""
        while not self._aborted:
            remaining = when - self._clock()
            if remaining <= 0:
                return True
            self._wait(self._cond, remaining)
        return False

    def _deliver(self, batch: Batch, generation: int) -> tuple[str | None, str]:
        """POST ``batch`` until delivered (``None``) or failed for good (a drop reason)."""
        url = self.endpoint or batch.url
        body = batch.body()
        policy = self.retry_policy
        attempt = 0
        detail = "closed before the POST"
        resume_at = float("-inf")
        while True:
            with self._cond:
                if not self._wait_until(max(resume_at, self._paused_until)):
                    return drops.SHUTDOWN, detail
                if generation != self._pool.generation:
                    return drops.PROCESS_CHANGED, detail
                if attempt:
                    self._retries += 1  # counted when it happens, not when planned
                self._in_network += 1
            retry_after: float | None = None
            try:
                response = self._transport.post(url, body, dict(batch.headers))
            except Exception as exc:
                detail = drops.describe_error(exc)
                retryable = is_transient_error(exc)
            else:
                if is_success_status(response.status):
                    return None, ""
                detail = f"HTTP {response.status} from {drops.safe_url(url)}"
                retryable = is_retryable_status(response.status)
                retry_after = parse_retry_after(_header(response.headers, "Retry-After"))
            finally:
                with self._cond:
                    self._in_network -= 1
                    self._cond.notify_all()
            if not retryable:
                return drops.REJECTED, detail
            attempt += 1
            with self._cond:
                self._last_error = detail
                delay = policy.delay(attempt, retry_after)
                resume_at = self._clock() + delay
                if retry_after is not None:  # the server asked every POST to wait
                    self._paused_until = max(self._paused_until, resume_at)
                if self._aborted:
                    return drops.SHUTDOWN, detail
                if attempt > policy.max_retries:
                    return drops.RETRIES_EXHAUSTED, detail
                # Logged under the lock: once close() gives up, no retry is announced.
                logger.warning(
                    "POST of %d Optimizely events failed (%s); retry %d of %d in %.2fs.",
                    len(batch),
                    detail,
                    attempt,
                    policy.max_retries,
                    delay,
                )


def _header(headers: dict[str, str], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None
