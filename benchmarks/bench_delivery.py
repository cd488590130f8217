"""Delivery engine: per-event cost on the request thread, and sustained throughput.

Two measurements, each repeated (median reported) and compared with a
baseline measured in the same run:

1. Per-event cost of the event path on the request's thread: ``track_event``
   through ``create_client`` + ``dispatcher.request_scope()`` (3 events per
   request, handed to an ``EventSender`` whose transport answers 200 at once)
   versus the SDK's ``ForwardingEventProcessor`` with a dispatcher that does
   nothing (the floor: building the event is all the SDK does).
2. Sustained delivery to a local endpoint (``benchmarks/page_endpoint.py``, a
   separate process) answering in 0 ms and in 100 ms: a producer thread
   submits real SDK events, 3 per request, at a fixed rate for a fixed time;
   then ``flush``. Reports delivered events/s, POSTs/s and drops. The baseline
   is the SDK's own ``BatchEventProcessor`` (batch size 10, its 1,000-event
   queue, one thread) fed the same events at the same rate and sending with
   the SDK's ``EventDispatcher``.

Usage::

    python benchmarks/bench_delivery.py                 # ~1.5 minutes
    python benchmarks/bench_delivery.py --runs 5 --seconds 5 --rate 20000
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from optimizely import optimizely
from optimizely.error_handler import NoOpErrorHandler
from optimizely.event.event_factory import EventFactory
from optimizely.event.event_processor import BatchEventProcessor, ForwardingEventProcessor
from optimizely.event.log_event import LogEvent
from optimizely.event.user_event import UserEvent
from optimizely.event.user_event_factory import UserEventFactory
from optimizely.event_dispatcher import EventDispatcher
from optimizely.notification_center import NotificationCenter
from optimizely.project_config import ProjectConfig

from optimizely_middleware import EventSender, RequestScopedEventDispatcher, create_client
from optimizely_middleware.transport import TransportResponse

ROOT = Path(__file__).resolve().parent.parent
DATAFILE = (ROOT / "tests" / "data" / "datafile.json").read_text()
ENDPOINT_SCRIPT = ROOT / "benchmarks" / "page_endpoint.py"
SDK_LOGGER = logging.getLogger("bench.sdk")
EVENTS_PER_REQUEST = 3


# -- helpers ---------------------------------------------------------------------


class NoopDispatcher:
    def dispatch_event(self, event: Any) -> None:
        pass


class OkTransport:
    def post(self, url: str, body: bytes, headers: dict[str, str]) -> TransportResponse:
        return TransportResponse(200, {})

    def close(self) -> None:
        pass


@contextmanager
def local_endpoint(delay: float) -> Iterator[str]:
    """``page_endpoint.py`` in its own process; yields its POST URL."""
    proc = subprocess.Popen(
        [sys.executable, str(ENDPOINT_SCRIPT), "--delay", str(delay), "--status", "200"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # a POST cut off at shutdown is not news
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "READY":
            raise RuntimeError(f"event endpoint did not start: {line!r}")
        yield f"http://127.0.0.1:{line[1]}/v1/events"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def endpoint_counts(url: str) -> dict[str, int]:
    with urllib.request.urlopen(url.replace("/v1/events", "/_counts"), timeout=10) as response:
        counts: dict[str, int] = json.load(response)
        return counts


def user_events(config: ProjectConfig, n: int) -> list[UserEvent]:
    experiment = config.get_experiment_from_key("headline_test")
    variation_id = config.get_variation_from_key("headline_test", "bold").id
    events: list[UserEvent] = []
    for i in range(n):
        user = f"user-{i}"
        if i % 3 == 0:
            event = UserEventFactory.create_impression_event(
                config, experiment, variation_id, "", "headline_test", "experiment", True,
                user, {"plan": "pro"}, None,
            )  # fmt: skip
        else:
            event = UserEventFactory.create_conversion_event(
                config, "purchase", user, {"plan": "pro"}, {"revenue": 1299}
            )
        assert event is not None
        events.append(event)
    return events


def paced(seconds: float, rate: float, submit: Callable[[int], None]) -> int:
    """Call ``submit(i)`` for request i at ``rate`` events/s for ``seconds``; returns requests."""
    requests_per_tick = max(1, round(rate / EVENTS_PER_REQUEST / 100))  # 100 ticks/s
    start = time.monotonic()
    sent = 0
    tick = 0
    while True:
        target = start + tick / 100
        now = time.monotonic()
        if now - start >= seconds:
            return sent
        if target > now:
            time.sleep(target - now)
        for _ in range(requests_per_tick):
            submit(sent)
            sent += 1
        tick += 1


# -- 1. per-event cost ----------------------------------------------------------------


def per_event_cost(requests: int, runs: int, deferred: bool) -> tuple[float, float]:
    """Median µs/event of ``track_event`` (baseline, ours), runs interleaved so that
    machine noise hits both alike. ``deferred`` keeps the sender's workers idle
    during the timed loop (they deliver at the flush after it), isolating the
    request thread's share (serialising at the hand-off included); otherwise
    the workers' CPU (merging, POSTing) competes with the loop for the GIL, as
    it would on a CPU-bound server."""
    nc = NotificationCenter()
    baseline = optimizely.Optimizely(
        DATAFILE,
        event_processor=ForwardingEventProcessor(NoopDispatcher(), notification_center=nc),
        notification_center=nc,
    )
    options: dict[str, Any] = {}
    if deferred:
        options = {"flush_interval": 3600, "max_events_per_post": 100_000}
        options["max_queue_events"] = requests * EVENTS_PER_REQUEST
    sender = EventSender(transport=OkTransport(), **options)
    dispatcher = RequestScopedEventDispatcher(sender)
    ours = create_client(dispatcher, datafile=DATAFILE)

    def timed(client: optimizely.Optimizely, scoped: bool) -> float:
        users = [client.create_user_context(f"u{i}", {"plan": "pro"}) for i in range(requests)]
        gc.collect()
        start = time.perf_counter()
        for user in users:
            if scoped:
                with dispatcher.request_scope():
                    for _ in range(EVENTS_PER_REQUEST):
                        user.track_event("purchase", {"revenue": 1299})
            else:
                for _ in range(EVENTS_PER_REQUEST):
                    user.track_event("purchase", {"revenue": 1299})
        elapsed = time.perf_counter() - start
        dispatcher.flush(30)
        return elapsed / (requests * EVENTS_PER_REQUEST) * 1e6

    try:
        timed(baseline, False)  # warm-up
        timed(ours, True)
        base_runs: list[float] = []
        our_runs: list[float] = []
        for _ in range(runs):
            base_runs.append(timed(baseline, False))
            our_runs.append(timed(ours, True))
    finally:
        baseline.close()
        ours.close()
        dispatcher.close(10)
    return statistics.median(base_runs), statistics.median(our_runs)


def hand_off_cost(requests: int) -> float:
    """µs per event for dispatch_event inside a scope plus the hand-off, SDK excluded."""
    config = ProjectConfig(DATAFILE, SDK_LOGGER, NoOpErrorHandler())
    events = [EventFactory.create_log_event(e, SDK_LOGGER) for e in user_events(config, 300)]
    dispatcher = RequestScopedEventDispatcher(EventSender(transport=OkTransport()))
    try:
        start = time.perf_counter()
        for i in range(requests):
            with dispatcher.request_scope():
                for j in range(EVENTS_PER_REQUEST):
                    dispatcher.dispatch_event(events[(i * 3 + j) % 300])  # type: ignore[arg-type]
        elapsed = time.perf_counter() - start
        dispatcher.flush(30)
    finally:
        dispatcher.close(10)
    return elapsed / (requests * EVENTS_PER_REQUEST) * 1e6


# -- 2. throughput --------------------------------------------------------------------


def throughput_ours(url: str, seconds: float, rate: float) -> dict[str, float]:
    config = ProjectConfig(DATAFILE, SDK_LOGGER, NoOpErrorHandler())
    pool: list[LogEvent] = [
        e for e in (EventFactory.create_log_event(u, SDK_LOGGER) for u in user_events(config, 600))
        if e is not None
    ]  # fmt: skip
    sender = EventSender(endpoint=url)
    before = endpoint_counts(url)
    start = time.monotonic()
    requests = paced(
        seconds,
        rate,
        lambda i: sender.submit([pool[(i * 3 + k) % len(pool)] for k in range(3)]),
    )
    flushed = sender.flush(60)
    elapsed = time.monotonic() - start
    stats = sender.stats()
    sender.close(10)
    result = delivery_summary(url, before, requests, elapsed)
    result["sender_dropped"] = sum(stats["dropped"].values())
    result["flushed"] = float(flushed)
    return result


def delivery_summary(
    url: str, before: dict[str, int], requests: int, elapsed: float
) -> dict[str, float]:
    """What the endpoint received since ``before``, against what was produced."""
    after = endpoint_counts(url)
    delivered = after["visitors"] - before["visitors"]
    posts = after["accepted_posts"] - before["accepted_posts"]
    produced = requests * EVENTS_PER_REQUEST
    return {
        "produced": produced,
        "delivered": delivered,
        "dropped": produced - delivered,
        "events_per_s": delivered / elapsed,
        "posts_per_s": posts / elapsed,
        "events_per_post": delivered / posts if posts else 0.0,
    }


class RedirectingDispatcher:
    """The SDK's own EventDispatcher, aimed at the local endpoint."""

    def __init__(self, url: str) -> None:
        self.url = url

    def dispatch_event(self, event: Any) -> None:
        EventDispatcher.dispatch_event(LogEvent(self.url, event.params, "POST", event.headers))


def throughput_sdk_batch(url: str, seconds: float, rate: float) -> dict[str, float]:
    config = ProjectConfig(DATAFILE, SDK_LOGGER, NoOpErrorHandler())
    pool = user_events(config, 600)
    processor = BatchEventProcessor(
        RedirectingDispatcher(url),
        logger=None,
        start_on_init=True,
        batch_size=10,
        flush_interval=30,
        timeout_interval=5,
    )
    before = endpoint_counts(url)
    start = time.monotonic()
    requests = paced(
        seconds,
        rate,
        lambda i: [processor.process(pool[(i * 3 + k) % len(pool)]) for k in range(3)],
    )
    processor.stop()  # flushes what it can within its 5 s timeout
    return delivery_summary(url, before, requests, time.monotonic() - start)


def median_of(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="repetitions (median reported)")
    parser.add_argument("--requests", type=int, default=3000, help="requests per cost run")
    parser.add_argument("--seconds", type=float, default=3.0, help="producer time per run")
    parser.add_argument("--rate", type=float, default=12000.0, help="events/s offered")
    parser.add_argument("--skip-sdk", action="store_true", help="no SDK throughput baseline")
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)  # the SDK logs every dropped event and failed POST

    print(f"# per-event cost on the request thread ({max(5, args.runs)} runs, median)")
    runs = max(5, args.runs)
    base, mine = per_event_cost(args.requests, runs, deferred=False)
    base_d, mine_d = per_event_cost(args.requests, runs, deferred=True)
    hand_off = statistics.median(hand_off_cost(args.requests) for _ in range(args.runs))
    print(f"track_event, SDK ForwardingEventProcessor + no-op dispatcher: {base:8.1f} µs/event")
    print(f"track_event, create_client + request scope + EventSender:     {mine:8.1f} µs/event")
    print(f"  ratio ours / baseline: {mine / base:.2f}x  ({mine - base:+.1f} µs/event, workers'")
    print("  serialising and POSTing included: they share the GIL with this loop)")
    print(f"same, delivery deferred until after the loop: baseline {base_d:.1f}, ours {mine_d:.1f}")
    print(
        f"  ratio ours / baseline: {mine_d / base_d:.2f}x  ({mine_d - base_d:+.1f} µs/event on the"
    )
    print("  request thread)")
    print(f"dispatch_event in a scope + hand-off alone: {hand_off:.2f} µs/event")

    for delay in (0.0, 0.1):
        print(f"\n# sustained delivery, endpoint answering in {delay * 1000:.0f} ms, "
              f"{args.rate:.0f} events/s offered for {args.seconds:.0f} s, "
              f"{args.runs} runs, median")  # fmt: skip
        with local_endpoint(delay) as url:
            ours = [throughput_ours(url, args.seconds, args.rate) for _ in range(args.runs)]
            rows = [("EventSender (defaults)", ours)]
            if not args.skip_sdk:
                sdk = [throughput_sdk_batch(url, args.seconds, args.rate) for _ in range(args.runs)]
                rows.append(("SDK BatchEventProcessor (batch 10)", sdk))
        for name, runs in rows:
            produced = median_of(runs, "produced")
            dropped = median_of(runs, "dropped")
            print(
                f"{name:36s} {median_of(runs, 'events_per_s'):9.0f} events/s "
                f"{median_of(runs, 'posts_per_s'):7.1f} POSTs/s "
                f"{median_of(runs, 'events_per_post'):6.1f} events/POST "
                f"dropped {dropped:.0f}/{produced:.0f} ({dropped / produced:.1%})"
            )
        if len(rows) == 2:
            ratio = median_of(ours, "events_per_s") / max(
                1.0, median_of(rows[1][1], "events_per_s")
            )
            print(f"delivered events/s, ours / SDK: {ratio:.1f}x")


if __name__ == "__main__":
    main()
