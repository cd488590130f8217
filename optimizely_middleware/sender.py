"""EventSender: the public front of the delivery engine that POSTs handed-over events.

Usage::

    from optimizely_middleware import EventSender, RequestScopedEventDispatcher

    sender = EventSender(max_in_flight=4, on_error=lambda events, reason: ...)
    dispatcher = RequestScopedEventDispatcher(sender)
    ...
    sender.flush(timeout=5.0)   # True when everything handed over so far has settled
    sender.close(timeout=5.0)   # also done at interpreter exit

``submit`` appends the request's list of items to a bounded queue and
returns: O(1) per request, no encoding, no I/O, never blocks, never raises.
Worker threads (one at first; more only while POSTs are slow, up to
``max_in_flight``) encode the items in short slices, merge compatible events
into one POST, POST them through a
:class:`~optimizely_middleware.transport.Transport` and retry transient
failures. The engine itself is :class:`~optimizely_middleware.engine.DeliveryEngine`.

Every event that does not arrive is counted in ``stats()["dropped"]`` under a
reason and logged (rate-limited, never under-reported), and may be passed to
``on_error``.

Seams on the instance: ``sender.transport`` (assign to swap) and
``with sender.use_transport(t):``. Process-wide, :func:`iter_senders` lists
every live sender and :func:`on_new_sender` tells you about each new one
(the testing kit uses both to capture every sender's POSTs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from optimizely_middleware import process_hooks
from optimizely_middleware.batching import ItemEncoder, LogEventEncoder
from optimizely_middleware.clock import Clock, Wait, wait_on
from optimizely_middleware.engine import DeliveryEngine, ErrorCallback
from optimizely_middleware.retry import RetryPolicy
from optimizely_middleware.transport import PooledTransport, Transport

if TYPE_CHECKING:
    from optimizely.event_builder import Event

__all__ = ["ErrorCallback", "EventSender", "iter_senders", "on_new_sender"]

logger = logging.getLogger("optimizely_middleware.sender")

_senders: process_hooks.Registry[EventSender] = process_hooks.Registry()


def iter_senders() -> list[EventSender]:
    """Every live (not garbage-collected) :class:`EventSender` in the process."""
    return _senders.live()


def on_new_sender(callback: Callable[[EventSender], object]) -> Callable[[], None]:
    """Call ``callback(sender)`` for every sender created from now on; returns the unsubscribe."""
    return _senders.subscribe(callback)


def default_encoder() -> ItemEncoder:
    """The package's encoder (LogEvents and the processor's pending user events)."""
    try:
        from optimizely_middleware.encoding import EventEncoder
    except ImportError:
        return LogEventEncoder()
    encoder: ItemEncoder = EventEncoder()
    return encoder


class EventSender:
    """Delivers handed-over events as merged JSON POSTs from a small pool of worker threads.

    The default hand-off target of :class:`RequestScopedEventDispatcher`.
    ``endpoint`` sends every event to that URL instead of ``event.url``.

    Options (defaults in brackets; ``docs/delivery.md`` explains each):

    * ``max_queue_events`` [10000] and ``max_queue_bytes`` [16 MiB]: the
      queue's bounds (count on hand-off, bytes once encoded); newer events
      past them are dropped and counted.
    * ``max_events_per_post`` [500] and ``max_bytes_per_post`` [1 MB]: caps on
      one POST (the event API accepts up to 3.5 MB); not above the queue's bounds.
    * ``flush_interval`` [0.1 s]: how long a lone event may wait for company.
    * ``max_in_flight`` [4]: worker threads at most, so POSTs in flight at once.
      A second worker starts only when work waits while every worker has
      been busy for ``scale_up_after`` [0.1 s], each in a POST (slow
      POSTs; encoding is Python work that another thread cannot speed up).
    * ``max_retries`` [5], ``backoff_base`` [0.5 s], ``backoff_cap`` [30 s],
      ``retry_after_cap`` [60 s]: retry policy for transient failures.
    * ``timeout`` [(3.05, 10.0)]: connect and read timeouts of the default transport.
    * ``transport``: your own :class:`~optimizely_middleware.transport.Transport`.
    * ``encoder``: turns a handed-over item into an ``EncodedEvent`` (on a worker).
    * ``on_error``: ``on_error(events, reason)`` for events that failed for good.
    * ``shutdown_timeout`` [5 s]: how long the exit handler waits for delivery.
    * ``clock`` and ``wait``: time for the engine (see :mod:`optimizely_middleware.clock`).

    Example::

        sender = EventSender(max_in_flight=8, flush_interval=0.05)
        dispatcher = RequestScopedEventDispatcher(sender)
        with sender.use_transport(recording_transport):
            ...
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        transport: Transport | None = None,
        encoder: ItemEncoder | None = None,
        max_queue_events: int = 10_000,
        max_queue_bytes: int = 16 * 1024 * 1024,
        max_events_per_post: int = 500,
        max_bytes_per_post: int = 1_000_000,
        flush_interval: float = 0.1,
        max_in_flight: int = 4,
        scale_up_after: float = 0.1,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        retry_after_cap: float = 60.0,
        timeout: tuple[float, float] = (3.05, 10.0),
        on_error: ErrorCallback | None = None,
        shutdown_timeout: float = 5.0,
        drop_log_interval: float = 10.0,
        clock: Clock = time.monotonic,
        wait: Wait = wait_on,
    ) -> None:
        if shutdown_timeout < 0:
            raise ValueError("shutdown_timeout must be >= 0")
        self.endpoint = endpoint
        self.shutdown_timeout = shutdown_timeout
        self._own_transport = (
            PooledTransport(timeout=timeout, pool_size=max(10, max_in_flight))
            if transport is None
            else None
        )
        self._engine = DeliveryEngine(
            transport=transport or self._own_transport,  # type: ignore[arg-type]
            encoder=encoder or default_encoder(),
            endpoint=endpoint,
            max_queue_events=max_queue_events,
            max_queue_bytes=max_queue_bytes,
            max_events_per_post=max_events_per_post,
            max_bytes_per_post=max_bytes_per_post,
            flush_interval=flush_interval,
            max_in_flight=max_in_flight,
            scale_up_after=scale_up_after,
            retry_policy=RetryPolicy(max_retries, backoff_base, backoff_cap, retry_after_cap),
            on_error=on_error,
            clock=clock,
            wait=wait,
            drop_log_interval=drop_log_interval,
        )
        self._closed = False
        _senders.add(self)

    # -- options, read back ----------------------------------------------------------

    @property
    def encoder(self) -> ItemEncoder:
        return self._engine.encoder

    @property
    def on_error(self) -> ErrorCallback | None:
        return self._engine.on_error

    @property
    def retry_policy(self) -> RetryPolicy:
        return self._engine.retry_policy

    @property
    def flush_interval(self) -> float:
        return self._engine.strategy.linger

    @property
    def max_in_flight(self) -> int:
        return self._engine.max_in_flight

    # -- the transport, on the instance ---------------------------------------------

    @property
    def transport(self) -> Transport:
        """The transport of the next POST; assign to swap it (takes effect at once)."""
        return self._engine.transport

    @transport.setter
    def transport(self, transport: Transport) -> None:
        self._engine.transport = transport

    @contextmanager
    def use_transport(self, transport: Transport) -> Iterator[Transport]:
        """``with sender.use_transport(t):`` every POST goes through ``t``, then back."""
        with self._engine.use_transport(transport) as swapped:
            yield swapped

    # -- the EventSink interface -------------------------------------------------------

    def submit(self, events: Sequence[Event] | Sequence[object]) -> None:
        """Queue ``events`` for delivery: O(1) per call, never blocks, never raises."""
        self._engine.submit(events)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event submitted before the call is delivered or has
        definitively failed. Returns False if ``timeout`` seconds passed first."""
        return self._engine.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to ``timeout``), then stop the workers. Harmless to call twice.

        Events still queued when the timeout ends are dropped as ``"shutdown"``
        (counted, logged); POSTs still on the network are counted in the
        "not delivered at shutdown" warning; later ``submit`` calls are
        dropped as ``"closed"``.
        """
        self._engine.close(timeout)
        if not self._closed:
            self._closed = True
            if self._own_transport is not None:
                try:
                    self._own_transport.close()
                except Exception:
                    logger.debug("Closing the transport failed.", exc_info=True)

    def stats(self) -> dict[str, Any]:
        """Counters: submitted, delivered_events, delivered_posts, retries, dropped
        (reason -> events), queue_depth, queue_bytes, in_flight (events being
        POSTed), pending (queued + in flight), workers, last_error."""
        return self._engine.stats()

    def record_lost_event(self, reason: str, quantity: int) -> None:
        """Count (and log) ``quantity`` events lost for ``reason`` outside the engine."""
        self._engine.record_lost_event(reason, quantity)


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


def _reset_senders_in_child() -> None:
    for sender in iter_senders():
        sender._engine.check_process()


process_hooks.on_exit("close_senders", _close_senders_at_exit)
process_hooks.on_fork_in_child("senders", _reset_senders_in_child)
