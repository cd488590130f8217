"""Where the package's per-page CPU goes: variants interleaved block by block in one process.

``page_cpu.py`` gives each variant a process of its own. This one runs them
side by side in one process, alternating short blocks (``--pages`` pages,
then ``flush``), so a machine whose speed drifts from second to second
(a busy VM host) moves every variant alike; the order of the blocks turns
by one place each round, so each variant follows each of the others in
turn; each block's ratio is taken against the baseline block of the same
round, and the median over rounds is reported. Same page as
``page_cpu.py`` (3 events), same baseline (the SDK with a
``ForwardingEventProcessor`` whose dispatcher drops each ``LogEvent``).
The variants split the package's cost:

* ``scope-only``: the package's request path (scope, processor, hand-off)
  into a sink that throws the hand-off away: nothing is ever built or sent;
* ``package``: ``create_client(RequestScopedEventDispatcher(EventSender(endpoint=...)))``,
  as in ``page_cpu.py``: the worker builds, serialises and POSTs while the
  pages run;
* ``dispatcher``: the dispatcher wiring, the SDK's ``ForwardingEventProcessor``
  with a ``RequestScopedEventDispatcher`` (``page_variants``): the SDK builds
  each ``LogEvent`` on the request thread, as in the baseline, and the
  package delivers it;
* ``dispatcher-scope-only``: the same wiring into a sink that throws the
  hand-off away: what keeping a page's ``LogEvent`` objects in its scope costs
  before anything is encoded or sent.

Two more on request (``--variants``), ``package-no-io`` and
``dispatcher-no-io``: those wirings with a transport that sends nothing (it
waits as long as the endpoint would answer, then reports 200), so the
sender's threads take batches and wait as usual but make no system call
for them: what those threads cost beyond their I/O. Their events are
counted as delivered by the sender but never reach the endpoint.

Three figures per variant, each a median over rounds of the block's ratio
to the baseline block: *up to the response* (``thread_time`` of the page
inside the request scope), *request thread* (the same plus the scope's
hand-off at its end), and *whole process* (``process_time`` from the block's
first page until its ``flush`` has returned: delivery included). Every
event the package variants produce must reach the endpoint exactly once (it
counts event uuids).

On an engine whose sender threads also encode (before the hand-off encoded
its own events), a second table splits those threads' CPU per page
(``getrusage(RUSAGE_THREAD)`` around each job) into encoding and POSTing,
user and system time. The current engine has no such jobs to time.

With ``--no-gc`` the cyclic garbage collector is off during the blocks
(collected between them, outside the measurement): the difference shows
what keeping events alive costs in collections.

Usage::

    python benchmarks/page_cpu_interleaved.py                  # 20 rounds of 300 pages
    python benchmarks/page_cpu_interleaved.py --rounds 30 --no-gc
    python benchmarks/page_cpu_interleaved.py --variants baseline,package,dispatcher
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from page_cpu import DEFAULT_DATAFILE, the_page
from page_procs import Endpoint, delivered_once, describe_machine, format_load, median_ratio
from page_variants import (
    DiscardingSink,
    build_variant,
    forwarding_client,
    guard_loopback,
    point_sdk_at,
)

VARIANTS = ("baseline", "scope-only", "package", "dispatcher", "dispatcher-scope-only")
ON_REQUEST = ("package-no-io", "dispatcher-no-io")
# The targets, against the baseline: (variant, figure, at most).
TARGETS = (
    ("package", "response", 0.60),
    ("package", "process", 0.70),
    ("dispatcher", "process", 1.05),
)
FIGURES = {
    "response": "up to the response",
    "thread": "request thread",
    "process": "whole process",
}


class WorkerClock:
    """The CPU (user, system) a sender's worker threads spend encoding and POSTing.

    Wraps the engine's two job methods on this one instance (a diagnostic).
    """

    KINDS = ("encode", "post")
    JOBS = ("_encode", "_post")

    @classmethod
    def attach(cls, sender: Any) -> WorkerClock | None:
        """A clock on ``sender``'s engine, or None on an engine without those jobs."""
        engine = getattr(sender, "_engine", None)
        if engine is None or not all(callable(getattr(engine, n, None)) for n in cls.JOBS):
            return None
        return cls(engine)

    def __init__(self, engine: Any) -> None:
        self.spent = dict.fromkeys(self.KINDS, (0.0, 0.0))
        self._lock = threading.Lock()  # several workers finish jobs at once
        for kind, name in zip(self.KINDS, self.JOBS, strict=True):
            setattr(engine, name, self._timed(kind, getattr(engine, name)))

    def _timed(self, kind: str, job: Callable[..., None]) -> Callable[..., None]:
        def timed(*args: Any) -> None:
            before = resource.getrusage(resource.RUSAGE_THREAD)
            try:
                job(*args)
            finally:
                after = resource.getrusage(resource.RUSAGE_THREAD)
                with self._lock:
                    user, system = self.spent[kind]
                    self.spent[kind] = (
                        user + after.ru_utime - before.ru_utime,
                        system + after.ru_stime - before.ru_stime,
                    )

        return timed

    def take(self) -> dict[str, tuple[float, float]]:
        """What was spent since the last call."""
        with self._lock:
            spent, self.spent = self.spent, dict.fromkeys(self.KINDS, (0.0, 0.0))
        return spent


# (client, scope factory, flush, close, worker clock)
Variant = tuple[
    Any,
    Callable[[], AbstractContextManager[Any]],
    Callable[[], object],
    Callable[[], object],
    WorkerClock | None,
]


class Unavailable(Exception):
    """A diagnostic variant that this version of the engine cannot be set up for."""


class NoIOTransport:
    """Sends nothing: waits ``delay`` seconds (the endpoint's answer time), then 200."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Any:
        from optimizely_middleware.delivery.transport import TransportResponse

        time.sleep(self.delay)
        return TransportResponse(200, {})

    def close(self) -> None:
        pass


def build(name: str, datafile: str, url: str, delay: float = 0.1) -> Variant:
    """(client, scope factory, flush, close, worker clock) for ``name``; ``delay`` is
    the endpoint's answer time, which the ``-no-io`` variants' transport waits."""
    from optimizely_middleware import EventSender, RequestScopedEventDispatcher, create_client

    if name == "baseline":  # the page benchmark's baseline client
        client = build_variant("baseline", datafile).client
        return client, nullcontext, lambda: None, lambda: None, None
    if name in ("dispatcher", "dispatcher-no-io"):  # the SDK builds LogEvents; the package sends
        built = build_variant("dispatcher", datafile, url)
        dispatcher = built.dispatcher
        if name == "dispatcher-no-io":
            dispatcher.sender.transport = NoIOTransport(delay)
        clock = WorkerClock.attach(dispatcher.sender)
        return (
            built.client,
            dispatcher.request_scope,
            dispatcher.flush,
            lambda: dispatcher.close(10),
            clock,
        )
    if name == "dispatcher-scope-only":
        dispatcher = RequestScopedEventDispatcher(DiscardingSink())
        client = forwarding_client(datafile, dispatcher)
        return client, dispatcher.request_scope, lambda: None, lambda: None, None
    clock = None
    if name == "scope-only":
        dispatcher = RequestScopedEventDispatcher(DiscardingSink())
    elif name in ("package", "package-no-io"):
        no_io = NoIOTransport(delay) if name == "package-no-io" else None
        sender = EventSender(endpoint=url, transport=no_io)
        clock = WorkerClock.attach(sender)
        dispatcher = RequestScopedEventDispatcher(sender)
    else:
        known = ", ".join(VARIANTS + ON_REQUEST)
        raise SystemExit(f"unknown variant {name!r}; choose from {known}")
    client = create_client(dispatcher, datafile=datafile)
    return client, dispatcher.request_scope, dispatcher.flush, lambda: dispatcher.close(10), clock


def run_block(
    client: Any,
    scope: Callable[[], AbstractContextManager[Any]],
    flush: Callable[[], Any],
    pages: int,
    tag: str,
) -> tuple[float, float, float]:
    """One block of ``pages`` pages, each inside ``scope()``, then ``flush()``: µs per
    page up to the response, on the request thread (the scope's hand-off included),
    and in the whole process until ``flush`` has returned."""
    response = thread = 0.0
    started = time.process_time()
    for i in range(pages):
        begin = time.thread_time()
        with scope():
            the_page(client, f"{tag}-{i}")
            answered = time.thread_time()
        response += answered - begin
        thread += time.thread_time() - begin
    flush()
    whole = time.process_time() - started
    return 1e6 * response / pages, 1e6 * thread / pages, 1e6 * whole / pages


def ratio_rows(
    names: list[str], figures: dict[str, dict[str, list[float]]]
) -> dict[str, dict[str, tuple[float, float, float, float]]]:
    """Per variant and figure: (median µs/page, median ratio, lowest, highest ratio),
    each ratio a block's against the baseline block of the same round."""
    rows: dict[str, dict[str, tuple[float, float, float, float]]] = {}
    for name in names:
        rows[name] = {}
        for figure, per_variant in figures.items():
            rows[name][figure] = (
                statistics.median(per_variant[name]),
                *median_ratio(per_variant[name], per_variant["baseline"]),
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="measured rounds (20); medians")
    parser.add_argument("--pages", type=int, default=300, help="pages per block (300)")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"of {', '.join(VARIANTS + ON_REQUEST)} (the first {len(VARIANTS)} by default)",
    )
    parser.add_argument("--endpoint-delay", type=float, default=0.1, help="seconds (0.1)")
    parser.add_argument("--no-gc", action="store_true", help="no cyclic GC inside the blocks")
    args = parser.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "baseline" not in names:
        names.insert(0, "baseline")
    load_before = os.getloadavg()
    print(describe_machine(), flush=True)
    print(
        f"# {args.rounds} rounds of {args.pages} pages per variant, interleaved in one process; "
        f"endpoint answers in {args.endpoint_delay * 1000:.0f} ms; "
        f"GC {'off in the blocks' if args.no_gc else 'on'}",
        flush=True,
    )
    endpoint = Endpoint("delay", args.endpoint_delay).start()
    variants: dict[str, Variant] = {}
    try:
        guard_loopback()
        point_sdk_at(endpoint.url)
        datafile = DEFAULT_DATAFILE.read_text()
        for name in list(names):
            try:
                variants[name] = build(name, datafile, endpoint.url, args.endpoint_delay)
            except Unavailable as why:
                print(f"# {name}: not measured ({why})", flush=True)
                names.remove(name)
        figures: dict[str, dict[str, list[float]]] = {
            figure: {name: [] for name in names} for figure in FIGURES
        }
        # per variant, per block: (encode user, encode system, POST user, POST system) µs/page
        worker: dict[str, list[tuple[float, ...]]] = {name: [] for name in names}
        if args.no_gc:
            gc.disable()
        for round_ in range(args.rounds + 1):  # round 0 warms up
            # Each variant takes each place in the round in turn: what a block leaves
            # behind (a sender's threads, garbage) falls on every variant alike.
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                client, scope, flush, _, clock = variants[name]
                spent = run_block(client, scope, flush, args.pages, f"{name}-{round_}")
                jobs = clock.take() if clock else {}
                if args.no_gc:
                    gc.collect()
                if round_:
                    for figure, us_per_page in zip(FIGURES, spent, strict=True):
                        figures[figure][name].append(us_per_page)
                    if jobs:
                        worker[name].append(
                            tuple(
                                1e6 * t / args.pages
                                for kind in WorkerClock.KINDS
                                for t in jobs[kind]
                            )
                        )
        rows = ratio_rows(names, figures)
        load_after = os.getloadavg()
        print(
            f"\n# medians of {args.rounds} rounds; load average before "
            f"{format_load(load_before)}, after {format_load(load_after)}; {os.cpu_count()} CPUs"
        )
        print(
            "\n| variant | "
            + " | ".join(
                f"{label}, µs/page (x baseline) | range of x" for label in FIGURES.values()
            )
            + " |"
        )
        print("|---|" + "---|---|" * len(FIGURES))
        for name in names:
            cells = [
                f"{us:.0f} ({x:.2f}x) | {low:.2f}-{high:.2f}"
                for us, x, low, high in rows[name].values()
            ]
            print(f"| {name} | " + " | ".join(cells) + " |")
        if any(worker.values()):
            print(
                "\n| variant | worker: encoding, user + system µs/page "
                "| worker: POSTs, user + system µs/page |"
            )
            print("|---|---|---|")
            for name in names:
                if worker[name]:
                    eu, es, pu, ps = (
                        statistics.median(column) for column in zip(*worker[name], strict=True)
                    )
                    print(f"| {name} | {eu:.0f} + {es:.0f} | {pu:.0f} + {ps:.0f} |")
        counts = endpoint.settled_counts()
        print(f"\n# endpoint: {counts.get('visitors', 0)} events in {counts.get('posts', 0)} POSTs")
        delivering = [n for n in names if n in ("package", "dispatcher")]
        expected = 3 * args.pages * (args.rounds + 1) * len(delivering)
        once, unique, repeated = delivered_once(counts, expected)
        print(
            f"{'PASS' if once else 'MISS'}  {', '.join(delivering) or 'nothing'}: "
            f"{unique}/{expected} events delivered, {repeated} repeated"
        )
        for name, figure, limit in TARGETS:
            if name in rows:
                x = rows[name][figure][1]
                print(
                    f"{'PASS' if x <= limit else 'MISS'}  {name}, {FIGURES[figure]}: "
                    f"{x:.2f}x baseline (target <= {limit:.2f}x)"
                )
    finally:
        for _, _, _, close, _ in variants.values():
            close()
        endpoint.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
