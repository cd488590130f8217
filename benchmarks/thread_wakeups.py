"""What one thread's wake-ups cost beside a busy request thread: the GIL's convoy.

The sender's threads only do I/O, yet the per-page benchmarks charge them
milliseconds of CPU per POST. This benchmark leaves the package out. A
helper thread does nothing but ``time.sleep(period)`` in a loop, while the
main thread runs one of three loads:

* ``page``: the benchmark page through the SDK, as in the per-page
  benchmarks' baseline (``LogEvent``s built and dropped, no network);
* ``spin``: a loop of Python arithmetic, which never releases the GIL;
* ``spin-release``: the same loop with ``os.urandom(16)`` (what
  ``uuid.uuid4()`` calls, the GIL released around the system call) after
  every 1,500 additions. It needs nothing but Python, so
  ``--loads spin,spin-release`` runs under any interpreter.

Each load runs in blocks of ``--seconds`` with each of three helpers:
``none``, ``blocked`` (a thread waiting for an event that never comes: no
wake-ups) and ``sleeper``. The blocks interleave, their order turning by
one place each round. Ratios are against the same load's ``none`` block
of the same round; each figure is a median over rounds.

Reported per load and helper: the main thread's CPU per iteration, the
whole process's (the helper's included), and for the sleeper its wake-ups
a second, CPU per wake-up, voluntary context switches per wake-up (from
``/proc``) and how late each wake-up got the GIL back.

Usage::

    python benchmarks/thread_wakeups.py                        # 7 rounds of 1 s blocks
    python3.13 benchmarks/thread_wakeups.py --loads spin,spin-release
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from page_procs import describe_machine, format_load, median_ratio

LOADS = ("page", "spin", "spin-release")
HELPERS = ("none", "blocked", "sleeper")
SPIN = 1_500  # additions between two os.urandom calls (about 60 µs here)


def voluntary_switches(native_id: int) -> int | None:
    """The thread's voluntary context switches so far (Linux), or None."""
    try:
        status = Path(f"/proc/self/task/{native_id}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    return None


@dataclass
class Helper:
    """A thread beside the load: ``blocked`` waits for ``stop``; ``sleeper`` sleeps
    ``period`` in a loop, counting its wake-ups and how late each one was."""

    kind: str
    period: float
    stop: threading.Event = field(default_factory=threading.Event)
    wakes: int = 0
    late: float = 0.0
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"helper-{self.kind}")
        self.thread.start()

    def _run(self) -> None:
        if self.kind == "blocked":
            self.stop.wait()
            return
        while not self.stop.is_set():
            began = time.perf_counter()
            time.sleep(self.period)
            self.late += time.perf_counter() - began - self.period
            self.wakes += 1

    def cpu(self) -> float:
        """The helper thread's CPU seconds so far."""
        assert self.thread is not None and self.thread.ident is not None
        return time.clock_gettime(time.pthread_getcpuclockid(self.thread.ident))

    def switches(self) -> int | None:
        assert self.thread is not None and self.thread.native_id is not None
        return voluntary_switches(self.thread.native_id)

    def finish(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


def make_load(name: str) -> Callable[[int], None]:
    """One iteration of load ``name``."""
    if name == "page":
        from page_cpu import DEFAULT_DATAFILE, the_page
        from page_variants import build_variant

        client = build_variant("baseline", DEFAULT_DATAFILE.read_text()).client
        return lambda i: the_page(client, f"user-{i}")
    release = name == "spin-release"

    def spin(i: int) -> None:
        x = 0
        for n in range(SPIN):
            x += n
        if release:
            os.urandom(16)

    return spin


@dataclass
class Block:
    main_us: float  # main thread CPU per iteration
    whole_us: float  # process CPU per iteration
    wakes_per_s: float | None = None
    cpu_per_wake_ms: float | None = None
    switches_per_wake: float | None = None
    late_per_wake_ms: float | None = None


def run_block(
    load: Callable[[int], None], helper_kind: str, seconds: float, period: float
) -> Block:
    helper = None if helper_kind == "none" else Helper(helper_kind, period)
    if helper is not None:
        helper.start()
        cpu0, switches0, wakes0, late0 = helper.cpu(), helper.switches(), helper.wakes, helper.late
    iterations = 0
    began, thread0, process0 = time.perf_counter(), time.thread_time(), time.process_time()
    deadline = began + seconds
    while time.perf_counter() < deadline:
        load(iterations)
        iterations += 1
    main = time.thread_time() - thread0
    whole = time.process_time() - process0
    elapsed = time.perf_counter() - began
    block = Block(1e6 * main / iterations, 1e6 * whole / iterations)
    if helper is not None:
        wakes = helper.wakes - wakes0
        switches = helper.switches()
        if wakes:
            block.wakes_per_s = wakes / elapsed
            block.cpu_per_wake_ms = 1e3 * (helper.cpu() - cpu0) / wakes
            block.late_per_wake_ms = 1e3 * (helper.late - late0) / wakes
            if switches is not None and switches0 is not None:
                block.switches_per_wake = (switches - switches0) / wakes
        helper.finish()
    return block


def median_of(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def show(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", default=",".join(LOADS), help=f"of {', '.join(LOADS)}")
    parser.add_argument("--rounds", type=int, default=7, help="measured rounds (7); medians")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per block (1.0)")
    parser.add_argument("--period", type=float, default=0.1, help="the sleeper's sleep (0.1 s)")
    args = parser.parse_args(argv)
    loads = [name.strip() for name in args.loads.split(",") if name.strip()]
    unknown = set(loads) - set(LOADS)
    if unknown:
        raise SystemExit(f"unknown loads {sorted(unknown)}; choose from {', '.join(LOADS)}")
    load_before = os.getloadavg()
    print(describe_machine(), flush=True)
    print(
        f"# {args.rounds} rounds of {args.seconds:g} s blocks per load and helper, "
        f"interleaved; the sleeper sleeps {args.period:g} s",
        flush=True,
    )
    runners = {name: make_load(name) for name in loads}
    cells = [(load, helper) for load in loads for helper in HELPERS]
    blocks: dict[tuple[str, str], list[Block]] = {cell: [] for cell in cells}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        shift = round_ % len(cells)
        for load, helper in cells[shift:] + cells[:shift]:
            block = run_block(runners[load], helper, args.seconds, args.period)
            if round_:
                blocks[(load, helper)].append(block)
    print(
        f"\n# medians of {args.rounds} rounds; load average before {format_load(load_before)}, "
        f"after {format_load(os.getloadavg())}; {os.cpu_count()} CPUs"
    )
    print(
        "\n| load | helper | main thread, µs/iteration (x none) | whole process (x none) "
        "| wake-ups/s | CPU per wake-up, ms | switches per wake-up | late per wake-up, ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for load, helper in cells:
        mine, alone = blocks[(load, helper)], blocks[(load, "none")]
        main_x, *_ = median_ratio([b.main_us for b in mine], [a.main_us for a in alone])
        whole_x, *_ = median_ratio([b.whole_us for b in mine], [a.whole_us for a in alone])
        print(
            f"| {load} | {helper} "
            f"| {statistics.median(b.main_us for b in mine):.1f} ({main_x:.3f}x) "
            f"| {statistics.median(b.whole_us for b in mine):.1f} ({whole_x:.3f}x) "
            f"| {show(median_of([b.wakes_per_s for b in mine]), 1)} "
            f"| {show(median_of([b.cpu_per_wake_ms for b in mine]), 2)} "
            f"| {show(median_of([b.switches_per_wake for b in mine]), 0)} "
            f"| {show(median_of([b.late_per_wake_ms for b in mine]), 1)} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
