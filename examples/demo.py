"""See request-scoped Optimizely events leave after the response, in a few seconds.

Run it::

    ./scripts/demo                  # sets up .venv, then runs this file
    python examples/demo.py         # in an environment that has the package
    python examples/demo.py --serve # keep the app, the endpoint and its inspector running

It starts the local event endpoint (slowed down to 200 ms per POST) and the
plain WSGI example app with the middleware, both on 127.0.0.1, sends a few
requests, and reports each request's latency, when its events reached the
endpoint and whether every event arrived. It exits 1 if any event was lost.
"""

from __future__ import annotations

import argparse
import io
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from werkzeug.serving import make_server

sys.path.insert(0, str(Path(__file__).parent))

from wsgi_app import DATAFILE, create_app

from optimizely_middleware import EventSender, RequestScopedEventDispatcher
from optimizely_middleware.devserver import DevServer
from optimizely_middleware.dispatcher import (
    add_request_end_listener,
    remove_request_end_listener,
)

PATHS = ("/", "/buy")
VISITORS = ("alice", "bob", "carol", "dave", "erin")


@dataclass
class RequestResult:
    """One request of the demo and what became of its events."""

    path: str
    visitor: str
    status: int = 0
    latency: float = 0.0  # seconds, as the client saw it
    events: int = 0  # produced by the SDK during the request
    handed_over_at: float = 0.0  # monotonic: the response was sent, the events left
    arrivals: list[float] = field(default_factory=list)  # monotonic, one per delivered event
    answers: list[float] = field(default_factory=list)  # monotonic, endpoint answered
    posts: int = 0


class HandOffClock:
    """Notes when each request's events were handed over, keyed by visitor id.

    The middleware hands a request's events over when the server closes the
    response, i.e. after the last byte has been written: the moment the
    events leave the request.
    """

    def __init__(self, dispatcher: RequestScopedEventDispatcher) -> None:
        self.dispatcher = dispatcher
        self.times: dict[str, tuple[float, int]] = {}
        self._cond = threading.Condition()

    def __call__(self, dispatcher: RequestScopedEventDispatcher, events: Any, failed: bool) -> None:
        if dispatcher is not self.dispatcher or not events:
            return
        now = time.monotonic()
        first = events[0]
        user_event = getattr(first, "user_event", None)  # kept by the request-scoped processor
        if user_event is not None:
            visitor = user_event.user_id
        else:
            visitor = first.params["visitors"][0]["visitor_id"]
        with self._cond:
            self.times[visitor] = (now, len(events))
            self._cond.notify_all()

    def wait_for(self, n_requests: int, timeout: float) -> bool:
        """Wait until ``n_requests`` requests have handed their events over.

        The client can read a response before the server has closed it, so
        the last hand-off may still be under way when the last response is in.
        """
        with self._cond:
            return self._cond.wait_for(lambda: len(self.times) >= n_requests, timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5, help="requests to send (default 5)")
    parser.add_argument(
        "--delay",
        type=float,
        default=0.2,
        help="seconds the local endpoint takes to answer each POST (default 0.2)",
    )
    parser.add_argument(
        "--status",
        type=int,
        default=204,
        help="status the local endpoint answers with (default 204; 400 shows a lost batch)",
    )
    parser.add_argument(
        "--serve", action="store_true", help="keep running for a browser instead of reporting"
    )
    parser.add_argument("--port", type=int, default=0, help="app port (default: a free one)")
    args = parser.parse_args(argv)

    endpoint_log: Any = sys.stdout if args.serve else io.StringIO()
    if not args.serve:
        # The report shows each request; werkzeug's access log would repeat them.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    endpoint = DevServer(port=0, status=args.status, delay=args.delay, output=endpoint_log)
    endpoint.start()
    dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=endpoint.url))
    clock = HandOffClock(dispatcher)
    add_request_end_listener(clock)
    server = make_server(
        "127.0.0.1", args.port, create_app(dispatcher, DATAFILE.read_text()), threaded=True
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    app_url = f"http://127.0.0.1:{server.server_port}"
    try:
        if args.serve:
            return serve(app_url, endpoint, dispatcher)
        return run(app_url, endpoint, dispatcher, clock, args.requests, endpoint_log.getvalue)
    finally:
        server.shutdown()
        server.server_close()
        dispatcher.close(timeout=10.0)
        remove_request_end_listener(clock)
        endpoint.stop()


def run(
    app_url: str,
    endpoint: DevServer,
    dispatcher: RequestScopedEventDispatcher,
    clock: HandOffClock,
    n_requests: int,
    endpoint_output: Any,
) -> int:
    print("Optimizely middleware demo")
    print(f"  app:            {app_url}/  (plain WSGI app + OptimizelyWSGIMiddleware, werkzeug)")
    print(
        f"  event endpoint: {endpoint.url}  "
        f"(local devserver, answers {endpoint.status} after {endpoint.delay * 1000:.0f} ms)"
    )
    results = send_requests(app_url, n_requests)
    # Let the sender work at its own pace (it batches what arrives within its
    # flush_interval), then flush only to settle its counters.
    handed_over = clock.wait_for(len(results), timeout=30.0)
    for result in results:
        result.handed_over_at, result.events = clock.times.get(result.visitor, (0.0, 0))
    endpoint.wait_for_visitors(sum(r.events for r in results), 30.0, include_rejected=True)
    settled = dispatcher.flush(timeout=30.0)
    for post in endpoint.posts:
        if not post.accepted:
            continue
        seen = set()
        for visitor in post.visitors:
            for result in results:
                if result.visitor == visitor.get("visitor_id"):
                    result.arrivals.append(post.received_at)
                    result.answers.append(post.answered_at)
                    if result.visitor not in seen:
                        result.posts += 1
                        seen.add(result.visitor)

    print("\nWhat the endpoint printed:")
    for line in endpoint_output().splitlines():
        print(f"  {line}")

    print("\nRequests (event times are counted from the moment the response was sent):")
    header = (
        f"  {'#':>2}  {'request':<24} {'status':>6} {'latency':>9} {'events':>6} {'POSTs':>5}"
        f"  {'reached endpoint':>16}  {'answered':>9}"
    )
    print(header)
    for number, r in enumerate(results, 1):
        reached = _after(r.arrivals, r.handed_over_at)
        answered = _after(r.answers, r.handed_over_at)
        print(
            f"  {number:>2}  {'GET ' + r.path + '?user=' + r.visitor:<24} {r.status:>6} "
            f"{r.latency * 1000:>6.1f} ms {r.events:>6} {r.posts:>5}  {reached:>16}  {answered:>9}"
        )

    produced = sum(r.events for r in results)
    delivered = sum(len(r.arrivals) for r in results)
    posts = len([p for p in endpoint.posts if p.accepted])
    lost = produced - delivered
    early = [r for r in results if any(t < r.handed_over_at for t in r.arrivals)]
    failed = [r for r in results if r.status != 200]
    slowest = max((r.latency for r in results), default=0.0)
    stats = dispatcher.stats()

    print("\nSummary")
    print(
        f"  {produced} events produced by {len(results)} requests, {delivered} delivered to the "
        f"endpoint in {posts} POST(s), {lost} lost."
    )
    print(
        f"  Slowest page: {slowest * 1000:.1f} ms, while the endpoint took "
        f"{endpoint.delay * 1000:.0f} ms to answer each POST: no page waited for it."
    )
    flush_interval = getattr(dispatcher.sender, "flush_interval", None)
    if flush_interval:
        print(
            f"  The sender batches: a lone event waits up to {flush_interval * 1000:.0f} ms "
            "(flush_interval) for others to share its POST."
        )
    print(
        f"  Dispatcher stats: collected={stats['collected']} "
        f"delivered_events={stats['delivered_events']} dropped={stats['dropped']}"
    )
    problems = []
    if not handed_over:
        problems.append("not every request handed its events over within 30 s")
    if not settled:
        problems.append("the sender did not finish within 30 s")
    if lost:
        problems.append(f"{lost} event(s) did not arrive")
    if early:
        problems.append(f"{len(early)} request(s) had events arrive before their response")
    if failed:
        problems.append(f"{len(failed)} request(s) did not answer 200")
    if produced == 0:
        problems.append("no events were produced")
    if problems:
        print("FAILED: " + "; ".join(problems) + ".")
        return 1
    print("OK: every event arrived, and only after its response had been sent.")
    return 0


def send_requests(app_url: str, n_requests: int) -> list[RequestResult]:
    results = []
    with requests.Session() as session:
        for number in range(1, n_requests + 1):
            visitor = VISITORS[(number - 1) % len(VISITORS)]
            if number > len(VISITORS):
                visitor += f"-{(number - 1) // len(VISITORS)}"
            result = RequestResult(path=PATHS[(number - 1) % len(PATHS)], visitor=visitor)
            started = time.monotonic()
            response = session.get(
                f"{app_url}{result.path}", params={"user": result.visitor}, timeout=30
            )
            result.latency = time.monotonic() - started
            result.status = response.status_code
            results.append(result)
    return results


def _after(times: list[float], since: float) -> str:
    if not times or not since:
        return "-"
    return f"+{(max(times) - since) * 1000:.1f} ms"


def serve(app_url: str, endpoint: DevServer, dispatcher: RequestScopedEventDispatcher) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        links = (
            (f"{app_url}/?user=alice", "the app"),
            (f"{app_url}/buy?user=alice", "the app, with a purchase"),
            (endpoint.inspector_url, "the inspector: what the app sent, live"),
        )
        width = max(len(url) for url, _ in links)
        print("Serving. Open in a browser:")
        for url, what in links:
            print(f"  {url:<{width}}  {what}")
        print(
            f"Events go to the local endpoint at {endpoint.url}, which prints each POST below "
            f"(answering after {endpoint.delay * 1000:.0f} ms). Ctrl+C to stop.",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    delivered = dispatcher.flush(timeout=10.0)
    stats = dispatcher.stats()
    print(
        f"\nStopped: {stats['requests']} requests, {stats['collected']} events, "
        f"{stats['delivered_events']} delivered, dropped={stats['dropped']}.",
        flush=True,
    )
    return 0 if delivered and not stats["dropped"] else 1


if __name__ == "__main__":
    sys.exit(main())
