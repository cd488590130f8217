"""What encoding an event costs in place (right after the page that made it) and alone.

Usage::

    python benchmarks/encode_in_place.py [--runs 5] [--blocks 8] [--pages 300]

In place: the benchmark page (``create_user_context`` + 2 ``decide`` + 1
``track``, the real SDK wired with the package's processor) runs in a
request scope; at the hand-off, on the same thread, the page's 3 events are
encoded with one shared ``EventEncoder``, timed with the thread's CPU clock.
Alone: the encoder in a loop over 600 events from the same pages. Blocks of
each alternate in one process; each run prints the medians of its blocks,
and the last line the medians over the runs, with the ratio, the page's
CPU with and without encoding at the hand-off, and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from page_variants import DiscardingSink, render_page

from optimizely_middleware import RequestScopedEventDispatcher, create_client
from optimizely_middleware.delivery.encoding import EventEncoder

DATAFILE = (Path(__file__).resolve().parent.parent / "tests" / "data" / "datafile.json").read_text()
POOL = 600
clock = time.thread_time_ns


class EncodingSink(DiscardingSink):
    """Takes each hand-off; encodes its events at once when ``encoder`` is set."""

    def __init__(self) -> None:
        self.encoder: EventEncoder | None = None
        self.ns_per_event: list[float] = []
        self.kept: list[Any] = []

    def submit(self, items: Sequence[Any]) -> None:
        encoder = self.encoder
        if encoder is not None:
            encode = encoder.encode
            start = clock()
            for item in items:
                encode(item)
            self.ns_per_event.append((clock() - start) / len(items))
        elif len(self.kept) < POOL:
            self.kept.extend(items)


def one_run(blocks: int, pages: int) -> dict[str, float]:
    sink = EncodingSink()
    dispatcher = RequestScopedEventDispatcher(sink)
    client = create_client(dispatcher, datafile=DATAFILE)
    encoder = EventEncoder()
    n = 0

    def page_block() -> float:
        nonlocal n
        start = clock()
        for _ in range(pages):
            n += 1
            with dispatcher.request_scope():
                render_page(client, f"user-{n}")
        return (clock() - start) / pages

    page_block()  # warm-up, fills the pool for the loop alone
    pool = sink.kept
    in_place: list[float] = []
    alone: list[float] = []
    page_with: list[float] = []
    page_without: list[float] = []
    for _ in range(blocks):
        sink.encoder, sink.ns_per_event = encoder, []
        page_with.append(page_block())
        in_place.append(statistics.median(sink.ns_per_event))
        sink.encoder = None
        page_without.append(page_block())
        start = clock()
        for item in pool:
            encoder.encode(item)
        alone.append((clock() - start) / len(pool))
    median = statistics.median
    return {
        "in_place_us": median(in_place) / 1e3,
        "alone_us": median(alone) / 1e3,
        "page_with_us": median(page_with) / 1e3,
        "page_without_us": median(page_without) / 1e3,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--pages", type=int, default=300)
    args = parser.parse_args(argv)
    runs = []
    for number in range(1, args.runs + 1):
        run = one_run(args.blocks, args.pages)
        runs.append(run)
        print(
            f"run {number}: in place {run['in_place_us']:.2f} µs/event, "
            f"alone {run['alone_us']:.2f} µs/event, "
            f"ratio {run['in_place_us'] / run['alone_us']:.2f}; "
            f"page {run['page_without_us']:.0f} µs, "
            f"with encoding at the hand-off {run['page_with_us']:.0f} µs",
            flush=True,
        )

    def median(key: str) -> float:
        return statistics.median(run[key] for run in runs)

    extra = (median("page_with_us") - median("page_without_us")) / 3
    print(
        f"median of {len(runs)} runs: in place {median('in_place_us'):.2f} µs/event, "
        f"alone {median('alone_us'):.2f} µs/event, "
        f"ratio {median('in_place_us') / median('alone_us'):.2f}; "
        f"page {median('page_without_us'):.0f} µs, +{extra:.2f} µs per event at the hand-off; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )


if __name__ == "__main__":
    main()
