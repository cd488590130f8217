"""Delivery: from a request's hand-off to the event API, one folder, a file per job.

* :mod:`~optimizely_middleware.delivery.sender`: :class:`EventSender`, the public front.
* :mod:`~optimizely_middleware.delivery.engine`: :class:`DeliveryEngine`, the one engine class.
* :mod:`~optimizely_middleware.delivery.handoff`: encoding a hand-off in slices, on its thread.
* :mod:`~optimizely_middleware.delivery.batch_queue`: the bounded queue of bytes and the
  batching strategy.
* :mod:`~optimizely_middleware.delivery.worker`: I/O threads that know nothing of HTTP;
  noticing a fork.
* :mod:`~optimizely_middleware.delivery.posting`: one batch's POST, with retries.
* :mod:`~optimizely_middleware.delivery.retry`, :mod:`~optimizely_middleware.delivery.transport`,
  :mod:`~optimizely_middleware.delivery.drops`, :mod:`~optimizely_middleware.delivery.clock`,
  :mod:`~optimizely_middleware.delivery.sink`: what to retry, one POST, lost events, time,
  and the interface the dispatcher hands over to.

Usage::

    from optimizely_middleware.delivery import EventSender

    sender = EventSender(endpoint="http://127.0.0.1:8765/v1/events")
"""

from optimizely_middleware.delivery.sender import EventSender

__all__ = ["EventSender"]
