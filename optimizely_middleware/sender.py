"""EventSender: the delivery engine that POSTs handed-over events off the request path.

Usage::

    from optimizely_middleware import EventSender, RequestScopedEventDispatcher

    sender = EventSender(max_in_flight=4, on_error=lambda events, reason: ...)
    dispatcher = RequestScopedEventDispatcher(sender)
    ...
    sender.flush(timeout=5.0)   # True when everything handed over so far has settled
    sender.close(timeout=5.0)   # also done at interpreter exit

``submit`` serialises each event once, appends it to a bounded in-memory
queue and returns: no I/O, never blocks, never raises. Worker threads (started
on first use, up to ``max_in_flight`` of them) merge compatible events into one
POST (see :mod:`optimizely_middleware.batching`), POST them through a
:class:`~optimizely_middleware.transport.Transport` and retry transient
failures with backoff (see :mod:`optimizely_middleware.retry`).

Every event that does not arrive is counted in ``stats()["dropped"]`` under a
reason and logged (rate-limited), and may be passed to ``on_error``.

Serialising in ``submit`` rather than on a worker is deliberate: the caller is
a request's thread after its response has gone out, and a few microseconds
there cost less than a worker thread holding the GIL for milliseconds at a
time, which stalls every request thread and the event loop behind it (the
page latency benchmark measured p99 latency up to 2.8 times the baseline that
way).

Two process-wide seams: :func:`iter_senders` lists every live sender, and
:func:`set_transport_override` routes every sender's POSTs to another
transport (the testing kit uses it to capture events instead of sending them).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, Final

from optimizely_middleware.batching import (
    EncodedEvent,
    UnserializableEvent,
    body_of,
    encode_event,
)
from optimizely_middleware.retry import (
    RetryPolicy,
    is_retryable_status,
    is_success_status,
    parse_retry_after,
)
from optimizely_middleware.transport import RequestsTransport, Transport

if TYPE_CHECKING:
    from optimizely.event_builder import Event

__all__ = ["ErrorCallback", "EventSender", "iter_senders", "set_transport_override"]

logger = logging.getLogger("optimizely_middleware.sender")

# on_error(events, reason): called for events that will never be sent, on a worker thread
# (for unserialisable events, on the thread that called submit).
ErrorCallback = Callable[[list["Event"], str], None]

# Drop reasons (keys of stats()["dropped"]).
QUEUE_FULL = "queue_full"
QUEUE_BYTES = "queue_bytes"
CLOSED = "closed"
UNSERIALIZABLE = "unserializable"
REJECTED = "rejected"
RETRIES_EXHAUSTED = "retries_exhausted"
SHUTDOWN = "shutdown"
SENDER_ERROR = "sender_error"

_ABORT_GRACE = 0.25  # seconds close() waits for aborted retries to be counted

_transport_override: Transport | None = None
_live_senders: weakref.WeakSet[EventSender] = weakref.WeakSet()
_registry_lock = threading.Lock()


def set_transport_override(transport: Transport | None) -> None:
    """Make every :class:`EventSender` in the process POST through ``transport``.

    Applies to senders created before and after the call, from their next
    POST on; ``None`` restores each sender's own transport.
    """
    global _transport_override
    _transport_override = transport


def iter_senders() -> list[EventSender]:
    """Every live (not garbage-collected) :class:`EventSender` in the process."""
    with _registry_lock:
        return list(_live_senders)


# A queued event: (seq, queued_at, serialised visitors, the SDK's event or None).
# A plain tuple of bytes and numbers, so that Python's garbage collector stops
# tracking it at its first pass: thousands of queued events then never reach
# the oldest generation, whose collections pause every thread for tens of ms.
_Item = tuple[int, float, bytes, "Event | None"]
_SEQ: Final = 0
_QUEUED_AT: Final = 1
_VISITORS: Final = 2
_EVENT: Final = 3


class _Group:
    """Queued events that may share one POST, and what they share."""

    __slots__ = ("envelope", "headers", "items", "nbytes", "prefix", "suffix", "url")

    def __init__(self, first: EncodedEvent) -> None:
        self.url = first.url
        self.headers = first.headers
        self.prefix = first.prefix
        self.suffix = first.suffix
        self.envelope = len(first.prefix) + len(first.suffix)
        self.items: deque[_Item] = deque()
        self.nbytes = 0  # serialised size of the queued events, each with its envelope


class _Batch:
    """The events of one POST."""

    __slots__ = ("group", "items")

    def __init__(self, group: _Group, items: list[_Item]) -> None:
        self.group = group
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def body(self) -> bytes:
        return body_of(
            self.group.prefix, [item[_VISITORS] for item in self.items], self.group.suffix
        )

    def events(self) -> list[Event | None]:
        return [item[_EVENT] for item in self.items]


class _DropLog:
    """Logs drops of one reason at most once per ``interval`` seconds, with a count."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, level: int, reason: str, count: int, message: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(reason)
            if last is not None and now - last < self.interval:
                self._suppressed[reason] += count
                return
            self._last[reason] = now
            suppressed = self._suppressed.pop(reason, 0)
        if suppressed:
            message += " (%d more events dropped for this reason since the last message)"
            args = (*args, suppressed)
        logger.log(level, message, *args)


class EventSender:
    """Delivers handed-over events as merged JSON POSTs from a small pool of worker threads.

    The default hand-off target of :class:`RequestScopedEventDispatcher`.
    ``endpoint`` sends every event to that URL instead of ``event.url``.

    Options (defaults in brackets; ``docs/delivery.md`` explains each):

    * ``max_queue_events`` [10000] and ``max_queue_bytes`` [16 MiB]: the
      queue's bounds; newer events past them are dropped and counted.
    * ``max_events_per_post`` [500] and ``max_bytes_per_post`` [1 MB]: caps on
      one POST (the event API accepts up to 3.5 MB).
    * ``flush_interval`` [0.1 s]: how long a lone event may wait for company.
    * ``max_in_flight`` [4]: worker threads, so POSTs in flight at once.
    * ``max_retries`` [5], ``backoff_base`` [0.5 s], ``backoff_cap`` [30 s],
      ``retry_after_cap`` [60 s]: retry policy for transient failures.
    * ``timeout`` [(3.05, 10.0)]: connect and read timeouts of the default transport.
    * ``transport``: your own :class:`~optimizely_middleware.transport.Transport`.
    * ``on_error``: ``on_error(events, reason)`` for events that failed for good.
    * ``shutdown_timeout`` [5 s]: how long the exit handler waits for delivery.

    Example::

        sender = EventSender(max_in_flight=8, flush_interval=0.05)
        dispatcher = RequestScopedEventDispatcher(sender)
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        transport: Transport | None = None,
        max_queue_events: int = 10_000,
        max_queue_bytes: int = 16 * 1024 * 1024,
        max_events_per_post: int = 500,
        max_bytes_per_post: int = 1_000_000,
        flush_interval: float = 0.1,
        max_in_flight: int = 4,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        retry_after_cap: float = 60.0,
        timeout: tuple[float, float] = (3.05, 10.0),
        on_error: ErrorCallback | None = None,
        shutdown_timeout: float = 5.0,
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
        if flush_interval < 0 or shutdown_timeout < 0:
            raise ValueError("flush_interval and shutdown_timeout must be >= 0")
        self.endpoint = endpoint
        self.max_queue_events = max_queue_events
        self.max_queue_bytes = max_queue_bytes
        self.max_events_per_post = max_events_per_post
        self.max_bytes_per_post = max_bytes_per_post
        self.flush_interval = flush_interval
        self.max_in_flight = max_in_flight
        self.retry_policy = RetryPolicy(max_retries, backoff_base, backoff_cap, retry_after_cap)
        self.on_error = on_error
        self.shutdown_timeout = shutdown_timeout
        self._owns_transport = transport is None
        self._transport: Transport = transport or RequestsTransport(
            timeout=timeout, pool_size=max(10, max_in_flight)
        )
        self._drop_log = _DropLog(drop_log_interval)
        self._reset_state()
        with _registry_lock:
            _live_senders.add(self)

    def _reset_state(self) -> None:
        """A clean engine: empty queue, no threads, new locks, zero counters."""
        self._cond = threading.Condition(threading.Lock())
        self._abort = threading.Event()  # set when close gives up: retries stop waiting
        self._generation = getattr(self, "_generation", 0) + 1
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False
        self._stopping = False
        self._flushing = 0
        self._next_seq = 0
        self._groups: dict[Hashable, _Group] = {}
        self._queued = 0  # events in groups: what max_queue_events bounds
        self._queued_bytes = 0  # their serialised size: what max_queue_bytes bounds
        self._in_flight = 0
        # Oldest event number being POSTed, per job.
        self._working: dict[int, int] = {}
        self._job_ids = 0
        self._submitted = 0
        self._delivered_events = 0
        self._delivered_posts = 0
        self._retries = 0
        self._dropped: Counter[str] = Counter()
        self._last_error: str | None = None

    # -- the caller's side ---------------------------------------------------

    def submit(self, events: Sequence[Event]) -> None:
        """Serialise ``events`` and queue them for delivery: never blocks, never raises."""
        try:
            n = len(events)
            if n == 0:
                return
            queued_at = time.monotonic()
            encoded: list[EncodedEvent] = []
            failed: list[tuple[Event, str]] = []
            for event in events:
                try:
                    encoded.append(encode_event(event, queued_at=queued_at))
                except UnserializableEvent as exc:
                    failed.append((event, str(exc)))
                except Exception as exc:  # not an Event at all (no .url / .params)
                    failed.append((event, f"{type(exc).__name__} while reading the event"))
            # Without on_error nothing asks for the SDK's objects again; keeping
            # them would keep thousands of tracked objects alive (see _Item).
            keep_events = self.on_error is not None
            full = over_bytes = closed = 0
            with self._cond:
                self._submitted += n
                if self._closed:
                    closed, encoded = len(encoded), []
                wake = False
                groups = self._groups
                for item in encoded:
                    size = item.nbytes
                    if self._queued >= self.max_queue_events:
                        full += 1
                        continue
                    if self._queued_bytes + size > self.max_queue_bytes:
                        over_bytes += 1
                        continue
                    group = groups.get(item.key)
                    if group is None:
                        group = groups[item.key] = _Group(item)
                        wake = True  # a worker must start this group's flush_interval timer
                    group.items.append(
                        (
                            self._next_seq,
                            queued_at,
                            item.visitors,
                            item.event if keep_events else None,
                        )
                    )
                    self._next_seq += 1
                    group.nbytes += size
                    self._queued += 1
                    self._queued_bytes += size
                    if (
                        len(group.items) >= self.max_events_per_post
                        or group.envelope + group.nbytes >= self.max_bytes_per_post
                    ):
                        wake = True  # a full batch goes at once
                if wake:
                    if self._idle:
                        self._cond.notify()
                    elif len(self._threads) < self.max_in_flight:
                        self._spawn_worker()
                dropped = ((QUEUE_FULL, full), (QUEUE_BYTES, over_bytes), (CLOSED, closed))
                if full or over_bytes or closed:
                    for reason, count in dropped:
                        if count:
                            self._dropped[reason] += count
            if full or over_bytes or closed:
                for reason, count in dropped:
                    if count:
                        self._log_drop(reason, count, "")
            for event, why in failed:
                logger.debug(
                    "Unserialisable Optimizely event params: %r", getattr(event, "params", None)
                )
                self._drop([event], UNSERIALIZABLE, why)
        except Exception:
            # Never raise into the request; the loss is still counted and logged.
            try:
                with self._cond:
                    self._dropped[SENDER_ERROR] += len(events)
            except Exception:
                pass
            logger.exception("EventSender.submit failed; the events are dropped.")

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event submitted before the call is delivered or has
        definitively failed. Returns False if ``timeout`` seconds passed first."""
        with self._cond:
            target = self._next_seq
            if self._oldest_pending() >= target:
                return True
            self._flushing += 1
            self._cond.notify_all()  # lingering workers send now
            try:
                return self._cond.wait_for(lambda: self._oldest_pending() >= target, timeout)
            finally:
                self._flushing -= 1

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to ``timeout``), then stop the workers. Harmless to call twice.

        Events still queued when the timeout ends are dropped as ``"shutdown"``
        (counted, logged); later ``submit`` calls are dropped as ``"closed"``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            already = self._closed
            self._closed = True
        delivered = self.flush(timeout)
        with self._cond:
            self._stopping = True
            leftover: list[_Item] = []
            if not delivered:
                self._abort.set()
                for group in self._groups.values():
                    leftover.extend(group.items)
                self._groups.clear()
                self._queued -= len(leftover)
                self._queued_bytes = 0
            threads = list(self._threads)
            self._cond.notify_all()
        if leftover:
            self._drop([item[_EVENT] for item in leftover], SHUTDOWN, "")
        if not delivered:
            # Batches waiting out a backoff stop at once when aborted; give them a
            # moment to be counted. A POST stuck on the network is not waited for.
            with self._cond:
                self._cond.wait_for(lambda: not self._working, _ABORT_GRACE)
        for thread in threads:
            if thread is threading.current_thread():
                continue
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
        if not already and self._owns_transport:
            try:
                self._transport.close()
            except Exception:
                logger.debug("Closing the transport failed.", exc_info=True)

    def stats(self) -> dict[str, Any]:
        """Counters: submitted, delivered_events, delivered_posts, retries,
        dropped (reason -> events), queue_depth, queue_bytes, in_flight,
        workers, last_error."""
        with self._cond:
            return {
                "submitted": self._submitted,
                "delivered_events": self._delivered_events,
                "delivered_posts": self._delivered_posts,
                "retries": self._retries,
                "dropped": dict(self._dropped),
                "queue_depth": self._queued,
                "queue_bytes": self._queued_bytes,
                "in_flight": self._in_flight,
                "workers": len(self._threads),
                "last_error": self._last_error,
            }

    # -- bookkeeping (all with self._cond held) --------------------------------

    def _oldest_pending(self) -> int:
        """The number of the oldest event not yet settled (``_next_seq`` if none)."""
        oldest = self._next_seq
        for seq in self._working.values():
            oldest = min(oldest, seq)
        for group in self._groups.values():
            oldest = min(oldest, group.items[0][_SEQ])
        return oldest

    def _spawn_worker(self) -> None:
        thread = threading.Thread(
            target=self._worker,
            args=(self._generation,),
            name=f"optimizely-event-sender-{len(self._threads) + 1}",
            daemon=True,
        )
        self._threads.append(thread)
        thread.start()

    def _start_job(self, oldest_seq: int) -> int:
        self._job_ids += 1
        self._working[self._job_ids] = oldest_seq
        return self._job_ids

    # -- the workers ------------------------------------------------------------

    def _worker(self, generation: int) -> None:
        try:
            while True:
                with self._cond:
                    job = self._next_job(generation)
                if job is None:
                    return
                job_id, batch = job
                self._send(job_id, batch)
        except Exception:
            logger.exception("An Optimizely event sender worker crashed.")

    def _next_job(self, generation: int) -> tuple[int, _Batch] | None:
        while True:
            if generation != self._generation:
                return None
            batch, wait = self._take_batch()
            if batch is not None:
                self._in_flight += len(batch)
                if self._groups and not self._idle and len(self._threads) < self.max_in_flight:
                    self._spawn_worker()
                return self._start_job(batch.items[0][_SEQ]), batch
            if self._stopping and not self._groups:
                return None
            self._idle += 1
            try:
                self._cond.wait(wait)
            finally:
                self._idle -= 1

    def _take_batch(self) -> tuple[_Batch | None, float | None]:
        """The next POST's events, or ``(None, seconds to wait)`` if every group is lingering."""
        if not self._groups:
            return None, None
        now = time.monotonic()
        urgent = self._flushing > 0 or self._stopping
        chosen: Hashable | None = None
        wait: float | None = None
        for key, group in self._groups.items():
            head = group.items[0]
            ready_at = head[_QUEUED_AT] + self.flush_interval
            full = (
                len(group.items) >= self.max_events_per_post
                or group.envelope + group.nbytes >= self.max_bytes_per_post
            )
            if urgent or full or ready_at <= now:
                if chosen is None or head[_SEQ] < self._groups[chosen].items[0][_SEQ]:
                    chosen = key
            elif wait is None or ready_at - now < wait:
                wait = ready_at - now
        if chosen is None:
            return None, wait
        group = self._groups[chosen]
        items = [group.items.popleft()]
        size = group.envelope + len(items[0][_VISITORS])
        while group.items and len(items) < self.max_events_per_post:
            visitors = group.items[0][_VISITORS]
            if size + 1 + len(visitors) > self.max_bytes_per_post:
                break
            size += 1 + len(visitors)
            items.append(group.items.popleft())
        taken_bytes = sum(len(item[_VISITORS]) for item in items) + group.envelope * len(items)
        group.nbytes -= taken_bytes
        self._queued_bytes -= taken_bytes
        self._queued -= len(items)
        if not group.items:
            del self._groups[chosen]
        return _Batch(group, items), None

    def _send(self, job_id: int, batch: _Batch) -> None:
        try:
            reason, detail = self._post_with_retries(batch)
        except Exception as exc:
            reason, detail = SENDER_ERROR, f"{type(exc).__name__}: {_short(exc)}"
            logger.exception("Unexpected error while sending Optimizely events.")
        with self._cond:
            self._in_flight -= len(batch)
            if reason is None:
                self._delivered_events += len(batch)
                self._delivered_posts += 1
        if reason is not None:
            self._drop(batch.events(), reason, detail)
        self._finish_job(job_id)

    def _finish_job(self, job_id: int) -> None:
        with self._cond:
            del self._working[job_id]
            self._cond.notify_all()

    def _post_with_retries(self, batch: _Batch) -> tuple[str | None, str]:
        """POST ``batch`` until it is delivered (``None``) or fails for good (a drop reason)."""
        url = self.endpoint or batch.group.url
        body = batch.body()
        attempt = 0
        while True:
            transport = _transport_override or self._transport
            retry_after: float | None = None
            try:
                response = transport.post(url, body, dict(batch.group.headers))
            except Exception as exc:
                detail = f"{type(exc).__name__}: {_short(exc)}"
            else:
                if is_success_status(response.status):
                    return None, ""
                detail = f"HTTP {response.status} from {_safe_url(url)}"
                if not is_retryable_status(response.status):
                    return REJECTED, detail
                retry_after = parse_retry_after(_header(response.headers, "Retry-After"))
            attempt += 1
            if attempt > self.retry_policy.max_retries:
                return RETRIES_EXHAUSTED, detail
            delay = self.retry_policy.delay(attempt, retry_after)
            with self._cond:
                self._retries += 1
                self._last_error = detail
            logger.warning(
                "POST of %d Optimizely events failed (%s); retry %d of %d in %.2fs.",
                len(batch),
                detail,
                attempt,
                self.retry_policy.max_retries,
                delay,
            )
            if self._abort.wait(delay):
                return SHUTDOWN, detail

    # -- drops ------------------------------------------------------------------

    def _drop(self, events: Sequence[Event | None], reason: str, detail: str) -> None:
        """Count, log (rate-limited) and report events that will never be sent.

        ``events`` holds None for events submitted while ``on_error`` was unset.
        """
        with self._cond:
            self._dropped[reason] += len(events)
            if detail:
                self._last_error = detail
        self._log_drop(reason, len(events), detail)
        kept = [event for event in events if event is not None]
        if self.on_error is not None and kept:
            try:
                self.on_error(kept, reason)
            except Exception:
                logger.exception("The on_error callback raised; ignored.")

    def _log_drop(self, reason: str, n: int, detail: str) -> None:
        why = {
            QUEUE_FULL: f"the queue is full (max_queue_events={self.max_queue_events})",
            QUEUE_BYTES: f"the queue is full (max_queue_bytes={self.max_queue_bytes})",
            CLOSED: "the sender is closed",
            UNSERIALIZABLE: "the payload cannot be serialised to JSON; the rest of its "
            "batch is sent",
            REJECTED: "the event endpoint rejected them; not retried",
            RETRIES_EXHAUSTED: "every retry failed",
            SHUTDOWN: "the sender was closed before they could be sent",
            SENDER_ERROR: "unexpected error in the sender",
        }.get(reason, reason)
        self._drop_log(
            logging.ERROR,
            reason,
            n,
            "Dropped %d Optimizely event(s) [%s]: %s%s",
            n,
            reason,
            why,
            f" ({detail})" if detail else "",
        )

    # -- fork ---------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        # The parent's threads do not exist here and its locks may be held by
        # them forever: start over, without the parent's queue.
        self._reset_state()


def _header(headers: dict[str, str], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()
    return text[0][:300] if text else ""


def _safe_url(url: str) -> str:
    """The URL without its query string (which could carry credentials)."""
    return url.split("?", 1)[0]


def _reset_senders_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    for sender in list(_live_senders):
        sender._after_fork_in_child()


def _close_senders_at_exit() -> None:
    senders = iter_senders()
    if not senders:
        return
    deadline = time.monotonic() + max(s.shutdown_timeout for s in senders)
    for sender in senders:
        remaining = max(0.0, min(sender.shutdown_timeout, deadline - time.monotonic()))
        try:
            sender.close(remaining)
        except Exception:
            logger.exception("Closing an Optimizely event sender at exit failed.")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_senders_in_child)
atexit.register(_close_senders_at_exit)
