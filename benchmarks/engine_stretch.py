"""Delivery engine measurements: GIL stretches of the worker, and CPU per POST.

Usage::

    python benchmarks/engine_stretch.py            # both measurements, 5 runs each
    python benchmarks/engine_stretch.py --only gil
    python benchmarks/engine_stretch.py --only post

**GIL stretch.** Events are queued first (the submitting thread then waits in
``flush``, which releases the GIL), and a heartbeat thread sleeps 100 µs in a
loop while the engine's worker encodes and POSTs them to an endpoint in
another process. Each time the heartbeat wakes late, the excess is how long
another thread held the GIL. Reported: the heartbeat alone (noise floor),
then the engine with the SDK's ``LogEvent`` items and with the processor's
``PendingUserEvent`` items; the longest excess and the 99.9th percentile.

**Worker CPU stretches** (immune to the machine's load): the worker's own CPU
time (``time.thread_time``) between two consecutive points where it lets the
GIL go (``time.sleep(0)`` between encoding slices, waiting on its condition,
a POST), so the longest stretch of Python work a request thread could wait
behind. A POST itself is reported whole (its CPU includes socket calls that
release the GIL).

**CPU per POST** of a ~193 KiB body to the same endpoint (thread CPU time):
``requests.Session.post`` (the old default, re-reading proxy and CA settings
from the environment on every request) against ``PooledTransport``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SERVER = r"""
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(204); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
s.daemon_threads = True
print(s.server_address[1], flush=True)
s.serve_forever()
"""


def start_endpoint() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}/v1/events"


def user_events(n: int) -> list[Any]:
    from optimizely.error_handler import NoOpErrorHandler
    from optimizely.event.user_event_factory import UserEventFactory
    from optimizely.logger import NoOpLogger
    from optimizely.project_config import ProjectConfig

    datafile = (ROOT / "tests" / "data" / "datafile.json").read_text()
    config = ProjectConfig(datafile, NoOpLogger(), NoOpErrorHandler())
    experiment = config.get_experiment_from_key("headline_test")
    variation = config.get_variation_from_key("headline_test", "bold").id
    events = []
    for i in range(n):
        if i % 3 == 2:
            event = UserEventFactory.create_conversion_event(
                config, "purchase", f"user-{i}", {"plan": "free"}, {"revenue": 1299, "k": "v"}
            )
        else:
            event = UserEventFactory.create_impression_event(
                config, experiment, variation, "", "headline_test", "experiment", True,
                f"user-{i}", {"plan": "pro"}, None,
            )  # fmt: skip
        events.append(event)
    return events


class Heartbeat(threading.Thread):
    """Sleeps ``period`` in a loop; records how late each wake-up was."""

    def __init__(self, period: float = 0.0001) -> None:
        super().__init__(daemon=True)
        self.period = period
        self.late: list[float] = []
        self.running = True

    def run(self) -> None:
        last = time.perf_counter()
        while self.running:
            time.sleep(self.period)
            now = time.perf_counter()
            self.late.append(now - last - self.period)
            last = now

    def stop(self) -> list[float]:
        self.running = False
        self.join()
        return sorted(self.late)


def stretch_run(url: str, kind: str, n_events: int) -> tuple[float, float]:
    from optimizely.event.event_factory import EventFactory

    from optimizely_middleware import EventSender
    from optimizely_middleware.delivery.encoding import PendingUserEvent

    events = user_events(n_events)
    if kind == "LogEvent":
        items: list[Any] = [EventFactory.create_log_event(e, None) for e in events]
    else:
        items = [PendingUserEvent(e, None) for e in events]
    sender = EventSender(endpoint=url, flush_interval=3600, max_queue_events=n_events)
    for start in range(0, n_events, 3):  # one hand-off per request of 3 events
        sender.submit(items[start : start + 3])
    heartbeat = Heartbeat()
    heartbeat.start()
    time.sleep(0.05)
    assert sender.flush(60)
    time.sleep(0.05)
    late = heartbeat.stop()
    stats = sender.stats()
    sender.close(5)
    assert stats["delivered_events"] == n_events, stats
    return late[-1] * 1e3, late[int(len(late) * 0.999)] * 1e3


class StretchProbe:
    """Records the worker's CPU time between the points where it releases the GIL."""

    def __init__(self) -> None:
        self.stretches: list[float] = []
        self.posts: list[float] = []
        self.longest: tuple[float, str] = (0.0, "")
        self._last: dict[int, float] = {}
        self._label: dict[int, str] = {}
        self.gc = 0.0

    def mark(self, label: str) -> None:
        now = time.thread_time()
        ident = threading.get_ident()
        last = self._last.get(ident)
        if last is not None:
            stretch = now - last
            self.stretches.append(stretch)
            if stretch > self.longest[0]:
                self.longest = (stretch, f"{self._label.get(ident)} -> {label}")
        self._last[ident] = now
        self._label[ident] = label

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if not threading.current_thread().name.startswith("optimizely-event-sender"):
            return
        if phase == "start":
            self._gc_started = time.thread_time()
        else:
            self.gc = max(self.gc, time.thread_time() - self._gc_started)

    def install(self, sender: Any) -> None:
        from optimizely_middleware.delivery import engine as jobs
        from optimizely_middleware.delivery.worker import WorkerPool

        real_sleep, real_idle = time.sleep, WorkerPool.idle_wait
        probe = self

        class Clocked:
            def sleep(self, seconds: float) -> None:
                probe.mark("encoding slice")
                real_sleep(seconds)
                probe._last[threading.get_ident()] = time.thread_time()

            def __getattr__(self, name: str) -> Any:
                return getattr(time, name)

        def idle_wait(pool: Any, *args: Any) -> None:
            probe.mark("idle")
            real_idle(pool, *args)
            probe._last[threading.get_ident()] = time.thread_time()

        jobs.time = Clocked()  # type: ignore[assignment]
        WorkerPool.idle_wait = idle_wait  # type: ignore[method-assign]
        inner = sender.transport

        class Timed:
            def post(self, url: str, body: bytes, headers: dict[str, str]) -> Any:
                probe.mark("POST")
                start = time.thread_time()
                try:
                    return inner.post(url, body, headers)
                finally:
                    probe.posts.append(time.thread_time() - start)
                    probe._last[threading.get_ident()] = time.thread_time()

            def close(self) -> None:
                inner.close()

        sender.transport = Timed()

    def uninstall(self) -> None:
        from optimizely_middleware.delivery import engine as jobs
        from optimizely_middleware.delivery.worker import WorkerPool

        jobs.time = time  # type: ignore[assignment]
        WorkerPool.idle_wait = _REAL_IDLE_WAIT  # type: ignore[method-assign]


def cpu_stretch_run(url: str, kind: str, n_events: int, pace: float) -> dict[str, float]:
    from optimizely.event.event_factory import EventFactory

    from optimizely_middleware import EventSender
    from optimizely_middleware.delivery.encoding import PendingUserEvent

    events = user_events(n_events)
    if kind == "LogEvent":
        items: list[Any] = [EventFactory.create_log_event(e, None) for e in events]
    else:
        items = [PendingUserEvent(e, None) for e in events]
    sender = EventSender(endpoint=url, flush_interval=3600, max_queue_events=n_events)
    probe = StretchProbe()
    probe.install(sender)
    gc.callbacks.append(probe.on_gc)
    try:
        for start in range(0, n_events, 3):
            sender.submit(items[start : start + 3])
            if pace:
                time.sleep(pace)  # requests arriving over time, not all at once
        assert sender.flush(60)
    finally:
        gc.callbacks.remove(probe.on_gc)
        probe.uninstall()
        sender.close(5)
    print(f"  longest stretch: {probe.longest[0] * 1e3:.3f} ms ({probe.longest[1]}); "
          f"longest collection on the worker: {probe.gc * 1e3:.3f} ms")  # fmt: skip
    stretches = sorted(probe.stretches)
    return {
        "max_ms": stretches[-1] * 1e3,
        "p99_ms": stretches[int(len(stretches) * 0.99)] * 1e3,
        "post_cpu_max_ms": max(probe.posts) * 1e3,
    }


def noise_run() -> tuple[float, float]:
    heartbeat = Heartbeat()
    heartbeat.start()
    time.sleep(0.5)
    late = heartbeat.stop()
    return late[-1] * 1e3, late[int(len(late) * 0.999)] * 1e3


from optimizely_middleware.delivery.worker import WorkerPool  # noqa: E402

_REAL_IDLE_WAIT = WorkerPool.idle_wait


def thread_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def post_cpu(post: Any, n: int = 300) -> float:
    for _ in range(20):
        post()
    start = thread_cpu()
    for _ in range(n):
        post()
    return (thread_cpu() - start) / n * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["gil", "cpu", "post"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--events", type=int, default=6000)
    args = parser.parse_args()
    proc, url = start_endpoint()
    results: dict[str, Any] = {"load_before": os.getloadavg()}
    try:
        if args.only in (None, "gil"):
            for label, run in (
                ("heartbeat alone", noise_run),
                ("engine, LogEvent items", lambda: stretch_run(url, "LogEvent", args.events)),
                (
                    "engine, PendingUserEvent items",
                    lambda: stretch_run(url, "pending", args.events),
                ),
            ):
                runs = [run() for _ in range(args.runs)]
                worst = statistics.median(r[0] for r in runs)
                p999 = statistics.median(r[1] for r in runs)
                results[label] = {"max_ms": round(worst, 3), "p99.9_ms": round(p999, 3)}
                print(f"{label:32s} longest late wake-up {worst:6.3f} ms (median of "
                      f"{args.runs}), p99.9 {p999:6.3f} ms")  # fmt: skip
        if args.only in (None, "cpu"):
            for kind in ("LogEvent", "pending"):
                for pace in (0.0, 0.0005):
                    runs = [cpu_stretch_run(url, kind, args.events, pace) for _ in range(args.runs)]
                    summary = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
                    how = "one request per 0.5 ms" if pace else "all queued at once"
                    results[f"worker CPU stretch, {kind}, {how}"] = summary
                    print(f"worker CPU between GIL releases, {kind:8s} items, {how}: longest "
                          f"{summary['max_ms']:.3f} ms, p99 {summary['p99_ms']:.3f} ms; "
                          f"longest POST {summary['post_cpu_max_ms']:.3f} ms CPU "
                          f"(median of {args.runs})")  # fmt: skip
        if args.only in (None, "post"):
            import requests

            from optimizely_middleware.delivery.transport import PooledTransport

            body = json.dumps({"visitors": ["x" * 1000] * 197}).encode()  # ~193 KiB
            headers = {"Content-Type": "application/json"}
            session = requests.Session()
            pooled = PooledTransport()

            def with_requests() -> None:
                session.post(
                    url, data=body, headers=headers, timeout=(3.05, 10.0), allow_redirects=False
                ).close()

            def with_pool() -> None:
                pooled.post(url, body, headers)

            old = [post_cpu(with_requests) for _ in range(args.runs)]
            new = [post_cpu(with_pool) for _ in range(args.runs)]
            ratios = [n / o for n, o in zip(new, old, strict=True)]
            results["post_cpu_ms"] = {
                "requests.Session": round(statistics.median(old), 3),
                "PooledTransport": round(statistics.median(new), 3),
                "ratio": round(statistics.median(ratios), 3),
            }
            print(f"CPU per POST of {len(body) / 1024:.0f} KiB: requests.Session "
                  f"{statistics.median(old):.3f} ms, PooledTransport "
                  f"{statistics.median(new):.3f} ms, ratio {statistics.median(ratios):.2f} "
                  f"(median of {args.runs} paired runs)")  # fmt: skip
    finally:
        proc.kill()
    results["load_after"] = os.getloadavg()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
