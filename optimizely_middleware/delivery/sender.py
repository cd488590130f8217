"""EventSender: the public front of the delivery engine.

Usage::

    from optimizely_middleware import EventSender, RequestScopedEventDispatcher

    sender = EventSender(max_in_flight=8, on_error=lambda events, reason: ...)
    dispatcher = RequestScopedEventDispatcher(sender)
    ...
    sender.flush(timeout=5.0)   # True when everything handed over so far has settled
    sender.close(timeout=5.0)   # also done at interpreter exit

``submit`` runs on the thread that ends the request, after its response:
it encodes the request's events there (slices of about 1 ms; ``asubmit``
lets the event loop run between them) and files the bytes in a bounded
queue. It never waits for I/O and never raises. One I/O thread (more only
while POSTs are slow, up to ``max_in_flight``) merges compatible events
into one POST, sends it through a
:class:`~optimizely_middleware.delivery.transport.Transport` and retries
transient failures. The engine is
:class:`~optimizely_middleware.delivery.engine.DeliveryEngine`; this front
adds the default transport, the exit handler, and what servers need
(:func:`~optimizely_middleware.process.uwsgi.in_uwsgi_master`).

Every event that does not arrive is counted in ``stats()["dropped"]`` under a
reason and logged (rate-limited, never under-reported), and may be passed to
``on_error``.

The seam on the instance: ``sender.transport`` (read it, or assign to swap
it). Process-wide, :func:`iter_senders` lists every live sender and
:func:`on_new_sender` tells you about each new one (the testing kit uses
both to capture every sender's POSTs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

from optimizely_middleware.delivery.clock import Clock, Wait
from optimizely_middleware.delivery.encoded import ItemEncoder
from optimizely_middleware.delivery.engine import DeliveryEngine, ErrorCallback
from optimizely_middleware.delivery.retry import RetryPolicy
from optimizely_middleware.delivery.transport import PooledTransport, Transport
from optimizely_middleware.process import hooks
from optimizely_middleware.process.uwsgi import in_uwsgi_master

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["ErrorCallback", "EventSender", "SenderOptions", "iter_senders", "on_new_sender"]

logger = logging.getLogger("optimizely_middleware.sender")

# How long a hand-off in a uWSGI master may wait for its own delivery.
MASTER_DELIVERY_TIMEOUT = 10.0

_RETRY_OPTIONS = ("max_retries", "backoff_base", "backoff_cap", "retry_after_cap")


class SenderOptions(TypedDict, total=False):
    """The engine's options, passed through by :class:`EventSender` (defaults in the engine)."""

    max_queue_events: int
    max_queue_bytes: int
    max_events_per_post: int
    max_bytes_per_post: int
    flush_interval: float
    max_in_flight: int
    scale_up_after: float
    max_retries: int
    backoff_base: float
    backoff_cap: float
    retry_after_cap: float
    on_error: ErrorCallback | None
    drop_log_interval: float
    clock: Clock
    wait: Wait
    slice_seconds: float
    slice_clock: Clock


def iter_senders() -> list[EventSender]:
    """Every live (not garbage-collected) :class:`EventSender` in the process."""
    return [part for part in hooks.live_parts.live() if isinstance(part, EventSender)]


def on_new_sender(callback: Callable[[EventSender], object]) -> Callable[[], None]:
    """Call ``callback(sender)`` for every sender created from now on; returns the unsubscribe."""

    def on_new_part(part: object) -> None:
        if isinstance(part, EventSender):
            callback(part)

    return hooks.live_parts.subscribe(on_new_part)


def default_encoder() -> ItemEncoder:
    """The package's encoder (LogEvents and the processor's pending user events)."""
    from optimizely_middleware.delivery.encoding import EventEncoder

    return EventEncoder()


class EventSender:
    """Delivers handed-over events as merged JSON POSTs; each request encodes its own.

    The default hand-off target of :class:`RequestScopedEventDispatcher`.
    ``endpoint`` sends every event to that URL instead of ``event.url``.

    Options (defaults in brackets; ``docs/delivery.md`` explains each):

    * ``max_queue_events`` [10000] and ``max_queue_bytes`` [16 MiB]: the
      queue's bounds; newer events past them are dropped and counted.
    * ``max_events_per_post`` [2000] and ``max_bytes_per_post`` [1 MB]: caps on
      one POST (the event API accepts up to 3.5 MB); not above the queue's bounds.
    * ``flush_interval`` [0.1 s]: how long a lone event may wait for company.
    * ``max_in_flight`` [8]: I/O threads at most, so POSTs in flight at once.
      A second thread starts only when a batch waits while every thread has
      been in a POST for ``scale_up_after`` [0.1 s] (a slow endpoint).
    * ``max_retries`` [5], ``backoff_base`` [0.5 s], ``backoff_cap`` [30 s],
      ``retry_after_cap`` [60 s]: retry policy for transient failures.
    * ``timeout`` [(3.05, 10.0)]: connect and read timeouts of the default transport.
    * ``transport``: your own :class:`~optimizely_middleware.delivery.transport.Transport`.
    * ``encoder``: turns a handed-over item into an ``EncodedEvent`` (at the hand-off).
    * ``on_error``: ``on_error(events, reason)`` for events that failed for good.
    * ``shutdown_timeout`` [5 s]: how long the exit handler waits for delivery.
    * ``slice_seconds`` [0.001]: the longest stretch of encoding at a hand-off.
    * ``clock``, ``wait``, ``slice_clock``: time for the engine
      (see :mod:`optimizely_middleware.delivery.clock`).

    Example::

        sender = EventSender(max_in_flight=8, flush_interval=0.05)
        dispatcher = RequestScopedEventDispatcher(sender)
        sender.transport = recording_transport   # every POST from now on goes through it
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        transport: Transport | None = None,
        encoder: ItemEncoder | None = None,
        timeout: tuple[float, float] | None = None,
        shutdown_timeout: float = 5.0,
        **options: Unpack[SenderOptions],
    ) -> None:
        if shutdown_timeout < 0:
            raise ValueError("shutdown_timeout must be >= 0")
        engine_options: dict[str, Any] = dict(options)
        retry = {name: engine_options.pop(name) for name in _RETRY_OPTIONS if name in options}
        if retry:
            engine_options["retry_policy"] = RetryPolicy(**retry)
        self._own_transport: PooledTransport | None = None
        if transport is None:
            pool_size = max(10, options.get("max_in_flight", 0))
            timeouts = {} if timeout is None else {"timeout": timeout}
            transport = self._own_transport = PooledTransport(pool_size=pool_size, **timeouts)
        self.endpoint = endpoint
        self.shutdown_timeout = shutdown_timeout
        self._engine = DeliveryEngine(
            transport=transport,
            encoder=encoder or default_encoder(),
            endpoint=endpoint,
            **engine_options,
        )
        self._closed = False
        hooks.live_parts.add(self)

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

    # -- the EventSink interface -------------------------------------------------------

    def submit(self, events: Sequence[object]) -> None:
        """Encode ``events`` on this thread (bounded slices) and queue them; never raises."""
        self._engine.submit(events)
        if in_uwsgi_master():
            self._deliver_before_fork()

    async def asubmit(self, events: Sequence[object]) -> None:
        """:meth:`submit` for a task: a long hand-off yields to the event loop between slices."""
        await self._engine.asubmit(events)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event submitted before the call is delivered or has
        definitively failed. Returns False if ``timeout`` seconds passed first."""
        return self._engine.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to ``timeout``), then stop the I/O threads. Harmless to call twice.

        Returns within ``timeout`` and never raises. Events not delivered by
        then (queued, being encoded, or in a POST still on the network) are
        counted as ``"shutdown"`` and named in one warning; later ``submit``
        calls are dropped as ``"closed"``.
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
        POSTed), pending (queued, being encoded, in flight), workers, last_error."""
        return self._engine.stats()

    # -- servers -----------------------------------------------------------------------

    def _deliver_before_fork(self) -> None:
        """In a uWSGI master, deliver now and leave no I/O thread alive.

        uWSGI forks its workers from the master in C, where Python's fork
        handlers do not run: a thread alive at that moment (waiting on the
        GIL or a lock) can hang the worker for good. Events in a master are
        rare (sent at import), so this hand-off waits for its own POST.
        """
        if not self.flush(MASTER_DELIVERY_TIMEOUT):
            logger.warning(
                "An Optimizely event sent in the uWSGI master was not delivered within "
                "%.0f s; its sender thread stays alive, and workers forked now may hang. "
                "Set lazy-apps = true, or send no event before the fork.",
                MASTER_DELIVERY_TIMEOUT,
            )
            return
        self._engine.retire_workers(MASTER_DELIVERY_TIMEOUT)


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


hooks.on_exit("close_senders", _close_senders_at_exit)
