"""Where the package's per-page CPU goes: variants interleaved block by block in one process.

``page_cpu.py`` gives each variant a process of its own. This one runs them
side by side in one process, alternating short blocks (``--pages`` pages,
then ``flush``), so a machine whose speed drifts from second to second
(a busy VM host) moves every variant alike; each block's ratio is taken
against the baseline block just before it, and the median over rounds is
reported. Same page as ``page_cpu.py`` (3 events), same baseline (the SDK
with a ``ForwardingEventProcessor`` whose dispatcher drops each
``LogEvent``). The variants split the package's cost:

* ``scope-only``: the package's request path (scope, processor, hand-off)
  into a sink that throws the hand-off away: nothing is ever built or sent;
* ``package``: ``create_client(RequestScopedEventDispatcher(EventSender(endpoint=...)))``,
  as in ``page_cpu.py``: the worker builds, serialises and POSTs while the
  pages run;
* ``package-at-flush``: the same, but the worker is never woken before the
  block's ``flush`` (a diagnostic: it reaches into the engine to raise its
  early-encoding threshold, and lingers 100 s), so nothing competes with the
  pages for the GIL; the queued events are kept alive until then.

For both package variants a second table splits the worker threads' CPU
per page (``getrusage(RUSAGE_THREAD)`` around each job) into encoding and
POSTing, user and system time: in ``package-at-flush`` the worker runs while
the page loop waits in ``flush``, so its figures are the work alone; in
``package`` the same work runs beside the pages, and the difference is what
waiting for the GIL costs it (system time: futex wake-ups).

With ``--no-gc`` the cyclic garbage collector is off during the blocks
(collected between them, outside the measurement): the difference shows
what keeping events alive costs in collections.

Usage::

    python benchmarks/page_cpu_interleaved.py                  # 20 rounds of 300 pages
    python benchmarks/page_cpu_interleaved.py --rounds 30 --no-gc
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from page_cpu import DEFAULT_DATAFILE, the_page
from page_procs import Endpoint, describe_machine
from page_variants import build_variant, guard_loopback, point_sdk_at

VARIANTS = ("baseline", "scope-only", "package", "package-at-flush")


class DiscardingSink:
    """An ``EventSink`` that throws every hand-off away."""

    def submit(self, items: Sequence[Any]) -> None:
        pass

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self, timeout: float | None = None) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {"dropped": {}}


class WorkerClock:
    """The CPU (user, system) a sender's worker threads spend encoding and POSTing.

    Wraps the engine's two job methods on this one instance (a diagnostic).
    """

    KINDS = ("encode", "post")

    def __init__(self, engine: Any) -> None:
        self.spent = dict.fromkeys(self.KINDS, (0.0, 0.0))
        self._lock = threading.Lock()  # several workers finish jobs at once
        for kind, name in zip(self.KINDS, ("_encode", "_post"), strict=True):
            job = getattr(engine, name, None)
            if job is not None:  # engines that encode at the hand-off have no _encode job
                setattr(engine, name, self._timed(kind, job))

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


def build(name: str, datafile: str, url: str) -> Variant:
    """(client, scope factory, flush, close, worker clock) for ``name``."""
    from optimizely_middleware import EventSender, RequestScopedEventDispatcher, create_client

    if name == "baseline":  # the page benchmark's baseline client
        client = build_variant("baseline", datafile).client
        return client, nullcontext, lambda: None, lambda: None, None
    clock = None
    if name == "scope-only":
        dispatcher = RequestScopedEventDispatcher(DiscardingSink())
    elif name == "package":
        sender = EventSender(endpoint=url)
        clock = WorkerClock(sender._engine)
        dispatcher = RequestScopedEventDispatcher(sender)
    elif name == "package-at-flush":
        sender = EventSender(endpoint=url, flush_interval=100.0, max_queue_events=1_000_000)
        sender._engine._queue.encode_early = 10**9  # diagnostic only: no early wake-up
        clock = WorkerClock(sender._engine)
        dispatcher = RequestScopedEventDispatcher(sender)
    else:
        raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    client = create_client(dispatcher, datafile=datafile)
    return client, dispatcher.request_scope, dispatcher.flush, lambda: dispatcher.close(10), clock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="measured rounds (20); medians")
    parser.add_argument("--pages", type=int, default=300, help="pages per block (300)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--endpoint-delay", type=float, default=0.1, help="seconds (0.1)")
    parser.add_argument("--no-gc", action="store_true", help="no cyclic GC inside the blocks")
    args = parser.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "baseline" not in names:
        names.insert(0, "baseline")
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
        variants.update((name, build(name, datafile, endpoint.url)) for name in names)
        thread: dict[str, list[float]] = {name: [] for name in names}
        process: dict[str, list[float]] = {name: [] for name in names}
        # per variant, per block: (encode user, encode system, POST user, POST system) µs/page
        worker: dict[str, list[tuple[float, ...]]] = {name: [] for name in names}
        if args.no_gc:
            gc.disable()
        for round_ in range(args.rounds + 1):  # round 0 warms up
            for name, (client, scope, flush, _, clock) in variants.items():
                spent = 0.0
                started = time.process_time()
                for i in range(args.pages):
                    begin = time.thread_time()
                    with scope():
                        the_page(client, f"{name}-{round_}-{i}")
                    spent += time.thread_time() - begin
                flush()
                whole = time.process_time() - started
                jobs = clock.take() if clock else {}
                if args.no_gc:
                    gc.collect()
                if round_:
                    thread[name].append(1e6 * spent / args.pages)
                    process[name].append(1e6 * whole / args.pages)
                    if jobs:
                        worker[name].append(
                            tuple(
                                1e6 * t / args.pages
                                for kind in WorkerClock.KINDS
                                for t in jobs[kind]
                            )
                        )
        print("\n| variant | request thread, µs/page (x baseline) | whole process (x baseline) |")
        print("|---|---|---|")
        for name in names:
            t_ratio = statistics.median(
                a / b for a, b in zip(thread[name], thread["baseline"], strict=True)
            )
            p_ratio = statistics.median(
                a / b for a, b in zip(process[name], process["baseline"], strict=True)
            )
            print(
                f"| {name} | {statistics.median(thread[name]):.0f} ({t_ratio:.2f}x) "
                f"| {statistics.median(process[name]):.0f} ({p_ratio:.2f}x) |"
            )
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
    finally:
        for _, _, _, close, _ in variants.values():
            close()
        endpoint.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
