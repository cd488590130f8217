"""The benchmark page and the six ways of wiring its Optimizely client.

Imported by the server processes (``page_flask_app``, ``page_starlette_app``)
and configured through the environment, since gunicorn and uvicorn import the
app by name:

* ``BENCH_VARIANT``: ``baseline``, ``sdk-sync``, ``sdk-default``, ``sdk-batch``,
  ``middleware`` or ``dispatcher`` (see :data:`VARIANTS`);
* ``BENCH_EVENT_URL``: the local event endpoint, ``http://127.0.0.1:<port>/v1/events``;
* ``BENCH_DATAFILE``: path of the datafile;
* ``BENCH_STATS_DIR``: where each server process writes ``stats-<pid>.json``
  when it exits (events produced, pages served, the dispatcher's stats);
* ``BENCH_FLUSH_INTERVAL`` (optional): the ``middleware`` variant's
  ``EventSender(flush_interval=...)``, in seconds.

Benchmark only: the SDK's event URLs are pointed at the local endpoint, and
an audit hook refuses any socket connection or name lookup that is not on the
loopback interface, so no variant can reach the internet.
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from optimizely import optimizely
from optimizely.event.event_factory import EventFactory
from optimizely.event.event_processor import BatchEventProcessor, ForwardingEventProcessor
from optimizely.event_dispatcher import EventDispatcher
from optimizely.notification_center import NotificationCenter

VARIANTS = {
    "baseline": "events built by the SDK (ForwardingEventProcessor), then dropped: no network",
    "sdk-sync": "ForwardingEventProcessor(EventDispatcher): POSTs on the request's thread",
    "sdk-default": "Optimizely(datafile, event_dispatcher=EventDispatcher): "
    "BatchEventProcessor, batch size 1, started",
    "sdk-batch": "BatchEventProcessor(EventDispatcher) with its class defaults "
    "(batch size 10), started, shared NotificationCenter",
    "middleware": "create_client + OptimizelyWSGIMiddleware / OptimizelyASGIMiddleware, "
    "EventSender with its defaults (endpoint= the local endpoint)",
    "dispatcher": "the dispatcher wiring: Optimizely(event_processor=ForwardingEventProcessor("
    "RequestScopedEventDispatcher)) + the same middleware and EventSender (the SDK builds "
    "LogEvents)",
}

EVENTS_PER_PAGE = 3
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def point_sdk_at(event_url: str) -> None:
    """Make the SDK build every event for ``event_url`` (benchmark only).

    ``EventFactory.EVENT_ENDPOINTS`` maps a region to the event API URL; the
    SDK's own ``EventDispatcher`` posts to ``event.url``, so this is the only
    way to keep the sdk-* variants on this machine.
    """
    if not is_loopback(urlsplit(event_url).hostname):
        raise SystemExit(f"refusing a non-loopback event URL: {event_url!r}")
    endpoints: dict[str, str] = EventFactory.EVENT_ENDPOINTS
    for region in list(endpoints):
        endpoints[region] = event_url


def _loopback_guard(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple) and not is_loopback(str(address[0])):
            raise ConnectionRefusedError(f"benchmark: no connection to {address[0]!r}")
    elif event == "socket.getaddrinfo":
        host = args[0]
        if isinstance(host, bytes):
            host = host.decode()
        if host is not None and not is_loopback(str(host)):
            raise ConnectionRefusedError(f"benchmark: no name lookup for {host!r}")


def guard_loopback() -> None:
    """Refuse every socket connection and name lookup off 127.0.0.1 / ::1."""
    sys.addaudithook(_loopback_guard)


class DiscardingSink:
    """An ``EventSink`` that throws every hand-off away; the benchmarks' other sinks
    override ``submit`` only."""

    def submit(self, items: Sequence[Any]) -> None:
        pass

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self, timeout: float | None = None) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {"dropped": {}}


class DroppingDispatcher:
    """The baseline's dispatcher: counts the events and sends nothing."""

    def __init__(self) -> None:
        self.events = 0
        self.visitors = 0
        self._lock = threading.Lock()

    def dispatch_event(self, event: Any) -> None:
        with self._lock:
            self.events += 1
            self.visitors += len(event.params.get("visitors", ()))


class Counter:
    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self, n: int = 1) -> None:
        with self._lock:
            self.value += n


@dataclass
class Variant:
    """A built variant: the client, and what to call when the process stops."""

    name: str
    client: optimizely.Optimizely
    dispatcher: Any = None  # the RequestScopedEventDispatcher of the middleware variant
    dropping: DroppingDispatcher | None = None
    produced: Counter = field(default_factory=Counter)
    pages: Counter = field(default_factory=Counter)
    close_client: bool = False

    def shutdown(self) -> None:
        """What a careful user does at process exit for this wiring."""
        if self.close_client:
            # Stops the BatchEventProcessor: flushes its batch, joins the thread
            # for at most its timeout_interval (5 s).
            self.client.close()

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "pid": os.getpid(),
            "variant": self.name,
            "pages": self.pages.value,
            "produced": self.produced.value,
        }
        if self.dropping is not None:
            result["dropped_by_baseline"] = self.dropping.visitors
        if self.dispatcher is not None:
            result["dispatcher"] = self.dispatcher.stats()
        return result


def forwarding_client(datafile: str, dispatcher: Any) -> optimizely.Optimizely:
    """A client whose ``ForwardingEventProcessor`` hands each ``LogEvent`` it builds to
    ``dispatcher`` on the calling thread (the baseline's wiring, and the dispatcher
    wiring's)."""
    center = NotificationCenter()
    return optimizely.Optimizely(
        datafile,
        event_dispatcher=dispatcher,
        event_processor=ForwardingEventProcessor(dispatcher, notification_center=center),
        notification_center=center,
    )


def build_variant(name: str, datafile: str, event_url: str | None = None) -> Variant:
    """The client of variant ``name``; ``event_url`` defaults to ``BENCH_EVENT_URL``."""
    if name in ("middleware", "dispatcher"):
        event_url = event_url or os.environ["BENCH_EVENT_URL"]
    if name == "baseline":
        dropping = DroppingDispatcher()
        variant = Variant(name, forwarding_client(datafile, dropping), dropping=dropping)
    elif name == "sdk-sync":
        variant = Variant(name, forwarding_client(datafile, EventDispatcher))
    elif name == "sdk-default":
        client = optimizely.Optimizely(datafile, event_dispatcher=EventDispatcher)  # type: ignore[arg-type]
        variant = Variant(name, client, close_client=True)
    elif name == "sdk-batch":
        center = NotificationCenter()
        processor = BatchEventProcessor(
            EventDispatcher,  # type: ignore[arg-type]
            notification_center=center,
            start_on_init=True,
        )
        client = optimizely.Optimizely(
            datafile,
            event_dispatcher=EventDispatcher,  # type: ignore[arg-type]
            event_processor=processor,
            notification_center=center,
        )
        variant = Variant(name, client, close_client=True)
    elif name == "middleware":
        from optimizely_middleware import EventSender, RequestScopedEventDispatcher, create_client

        # A default EventSender, with endpoint= naming the local endpoint, so that
        # no event can leave this machine whichever URL the package builds.
        options: dict[str, Any] = {}
        if os.environ.get("BENCH_FLUSH_INTERVAL"):
            options["flush_interval"] = float(os.environ["BENCH_FLUSH_INTERVAL"])
        sender = EventSender(endpoint=event_url, **options)
        dispatcher = RequestScopedEventDispatcher(sender)
        client = create_client(dispatcher, datafile=datafile)
        variant = Variant(name, client, dispatcher=dispatcher)
    elif name == "dispatcher":
        from optimizely_middleware import EventSender, RequestScopedEventDispatcher

        # The wiring of an app that builds its client itself (docs/how-it-works.md):
        # the SDK builds each LogEvent and dispatch_event keeps it in the request.
        dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=event_url))
        variant = Variant(name, forwarding_client(datafile, dispatcher), dispatcher=dispatcher)
    else:
        raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    _count_produced(variant)
    return variant


def _count_produced(variant: Variant) -> None:
    """Count each user event the client hands to its event processor."""
    processor = variant.client.event_processor
    process = processor.process
    produced = variant.produced

    def counting_process(user_event: Any) -> None:
        produced.add()
        process(user_event)

    processor.process = counting_process  # type: ignore[method-assign]


def render_page(client: optimizely.Optimizely, user_id: str) -> str:
    """The page: two components decide ``new_checkout``, then a purchase is
    tracked. Three events per page with the test datafile (100% traffic,
    ``sendFlagDecisions``)."""
    user = client.create_user_context(user_id, {"plan": "pro"})
    header = user.decide("new_checkout")
    button = user.decide("new_checkout")
    user.track_event("purchase", {"revenue": 4200})
    label = button.variables.get("button_label", "Checkout")
    return (
        "<!doctype html><title>Shop</title>"
        f"<header>{'new' if header.enabled else 'classic'} checkout</header>"
        f"<p>Hello {user_id}</p><button>{label}</button>\n"
    )


def load_from_environment(*, stats_at_exit: bool = True) -> Variant:
    """Build the variant named by ``BENCH_VARIANT`` for this server process.

    With ``stats_at_exit`` its stats are written by an ``atexit`` handler
    (gunicorn workers run those); otherwise the caller writes them with
    :func:`write_stats_from_environment` (uvicorn re-raises SIGTERM once it has
    stopped, so ``atexit`` handlers never run there).
    """
    event_url = os.environ["BENCH_EVENT_URL"]
    guard_loopback()
    point_sdk_at(event_url)
    datafile = Path(os.environ["BENCH_DATAFILE"]).read_text()
    built: list[Variant] = []
    if stats_at_exit:
        # Registered before the client exists, so that it runs after every exit
        # handler the client's parts register (atexit runs them last-in first-out).
        atexit.register(lambda: built and write_stats_from_environment(built[0]))
    built.append(build_variant(os.environ["BENCH_VARIANT"], datafile))
    return built[0]


def write_stats_from_environment(variant: Variant) -> None:
    stats_dir = os.environ.get("BENCH_STATS_DIR")
    if stats_dir:
        path = Path(stats_dir) / f"stats-{os.getpid()}.json"
        path.write_text(json.dumps(variant.stats()))
