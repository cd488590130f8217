"""Per-page CPU in one process: this package against the SDK with no network.

The page: ``create_user_context(<fresh id>, {"plan": "free"})``, two
``decide("new_checkout")`` calls and one ``track_event("purchase")``: 3 events,
with the real ``optimizely-sdk`` and the test datafile. Three variants:

* ``baseline``: the SDK with a ``ForwardingEventProcessor`` whose dispatcher
  throws each built ``LogEvent`` away (no network: the SDK's own limit);
* ``sdk-userevents``: an event processor that only keeps the SDK's
  ``UserEvent`` objects (the lower bound: nothing is ever built or sent);
* ``package``: ``create_client(RequestScopedEventDispatcher(EventSender(
  endpoint=<local>)))``, each page inside ``dispatcher.request_scope()``,
  delivering to ``benchmarks/page_endpoint.py`` in another process, and
  ``flush`` at the end of the run.

Each (variant, run) is a fresh child process: warm-up pages, then the measured
pages in a tight loop, in blocks (6 by default) each ended by ``flush``. It
reports the request thread's CPU per page (``time.thread_time`` around each
page, the scope's hand-off included) and the whole process's CPU per page
(``time.process_time`` from a block's first page until its ``flush`` has
returned: the sender's building, serialising and POSTing included), each the
median over the blocks, which a burst of load from other processes moves far
less than a total (the means are in the JSON too). The variants' order
rotates from run to run, so the machine's drift hits them alike; ratios are
taken against the baseline of the same run, then the median over runs is
reported. For ``package`` the endpoint
counts every event uuid: each must arrive exactly once.

Usage::

    python benchmarks/page_cpu.py                      # 7 runs, ~1 minute on an idle machine
    python benchmarks/page_cpu.py --runs 9 --pages 5000 --json cpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from page_procs import Endpoint, describe_machine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_DATAFILE = ROOT / "tests" / "data" / "datafile.json"
VARIANTS = ("baseline", "sdk-userevents", "package")
EVENTS_PER_PAGE = 3
TARGET_THREAD_RATIO = 0.65
TARGET_PROCESS_RATIO = 0.85


# -- the child: one variant, one run ------------------------------------------


def the_page(client: Any, user_id: str) -> None:
    user = client.create_user_context(user_id, {"plan": "free"})
    user.decide("new_checkout")
    user.decide("new_checkout")
    user.track_event("purchase", {"revenue": 4200})


class DroppingDispatcher:
    """The baseline's dispatcher: counts the events, sends nothing."""

    def __init__(self) -> None:
        self.events = 0

    def dispatch_event(self, event: Any) -> None:
        self.events += len(event.params["visitors"])


class KeepingProcessor:
    """An event processor that keeps the SDK's ``UserEvent`` objects, nothing else.

    ``start_page`` drops the previous page's list, as a request scope is dropped.
    """

    def __init__(self) -> None:
        self.kept: list[Any] = []
        self.events = 0

    def start_page(self) -> None:
        self.events += len(self.kept)
        self.kept = []

    def process(self, user_event: Any) -> None:
        self.kept.append(user_event)

    def stop(self) -> None:
        pass


def build(variant: str, datafile: str, endpoint_url: str) -> tuple[Callable[[str], None], Any]:
    """(page function, finisher) for ``variant``; the finisher flushes and returns counts."""
    from optimizely import optimizely
    from optimizely.notification_center import NotificationCenter
    from page_variants import forwarding_client

    if variant == "baseline":
        dropping = DroppingDispatcher()
        client = forwarding_client(datafile, dropping)
        return (lambda uid: the_page(client, uid)), (lambda: {"events": dropping.events})
    if variant == "sdk-userevents":
        keeping = KeepingProcessor()
        center = NotificationCenter()
        client = optimizely.Optimizely(
            datafile,
            event_processor=keeping,  # type: ignore[arg-type]
            notification_center=center,
        )

        def keeping_page(uid: str) -> None:
            keeping.start_page()
            the_page(client, uid)

        def keeping_done() -> dict[str, Any]:
            keeping.start_page()
            return {"events": keeping.events}

        return keeping_page, keeping_done
    if variant == "package":
        from optimizely_middleware import EventSender, RequestScopedEventDispatcher, create_client

        dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=endpoint_url))
        client = create_client(dispatcher, datafile=datafile)
        scope = dispatcher.request_scope

        def package_page(uid: str) -> None:
            with scope():
                the_page(client, uid)

        def package_done() -> dict[str, Any]:
            flushed = dispatcher.flush(120)
            stats = dispatcher.stats()
            return {"flushed": flushed, "dropped": stats.get("dropped", {})}

        package_page.close = lambda: dispatcher.close(10)  # type: ignore[attr-defined]
        return package_page, package_done
    raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def child(
    variant: str, pages: int, warmup: int, blocks: int, tag: str, datafile: Path, url: str
) -> None:
    """Measure one run of one variant and print one JSON object.

    The measured pages run in ``blocks`` blocks, each followed by ``done()``
    (the package's flush), so that each block's process CPU is complete; the
    result is the median block, which a burst of load from other processes
    on the machine moves far less than a total would.
    """
    import gc

    from page_variants import guard_loopback, point_sdk_at

    guard_loopback()
    point_sdk_at(url)
    page, done = build(variant, datafile.read_text(), url)
    for i in range(warmup):
        page(f"{tag}-w{i}")
    done()  # the warm-up's events are delivered before the measured part
    ids = [f"{tag}-{i}" for i in range(pages)]
    size = -(-pages // blocks)
    per_page: list[float] = []
    append = per_page.append
    thread_time = time.thread_time
    block_thread: list[float] = []
    block_process: list[float] = []
    finished: dict[str, Any] = {}
    all_flushed = True
    gc.collect()
    wall_start = time.perf_counter()
    for first in range(0, pages, size):
        block = ids[first : first + size]
        process_start = time.process_time()
        thread_start = len(per_page)
        for uid in block:
            begin = thread_time()
            page(uid)
            append(thread_time() - begin)
        finished = done()
        all_flushed = all_flushed and finished.get("flushed", True)
        block_process.append((time.process_time() - process_start) / len(block))
        block_thread.append(sum(per_page[thread_start:]) / len(block))
    wall = time.perf_counter() - wall_start
    close = getattr(page, "close", None)
    if close is not None:
        close()
    finished["flushed"] = all_flushed
    per_page.sort()
    result = {
        "variant": variant,
        "pages": pages,
        "warmup": warmup,
        "blocks": len(block_thread),
        "thread_us": 1e6 * statistics.median(block_thread),
        "process_us": 1e6 * statistics.median(block_process),
        "thread_mean_us": 1e6 * sum(per_page) / pages,
        "process_mean_us": 1e6 * statistics.mean(block_process),
        "thread_p50_us": 1e6 * per_page[len(per_page) // 2],
        "thread_p99_us": 1e6 * per_page[min(len(per_page) - 1, int(len(per_page) * 0.99))],
        "wall_s": wall,
        **finished,
    }
    print(json.dumps(result), flush=True)


# -- the parent: runs, interleaving, ratios, the report ------------------------


def run_child(args: argparse.Namespace, variant: str, run: int, url: str) -> dict[str, Any]:
    tag = f"r{run}{variant[0]}{os.getpid()}"
    completed = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            *("--child", variant, "--pages", str(args.pages), "--warmup", str(args.warmup)),
            *("--blocks", str(args.blocks)),
            *("--tag", tag, "--datafile", str(args.datafile), "--endpoint-url", url),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"},
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{variant} run {run} failed:\n{completed.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    result["run"] = run
    return result


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_run: dict[int, dict[str, dict[str, Any]]] = {}
    for r in results:
        by_run.setdefault(r["run"], {})[r["variant"]] = r
    for variants in by_run.values():
        base = variants.get("baseline")
        for r in variants.values():
            for key in ("thread_us", "process_us"):
                r[key.replace("_us", "_ratio")] = r[key] / base[key] if base else math.nan
    rows = []
    for variant in VARIANTS:
        group = [r for r in results if r["variant"] == variant]
        if not group:
            continue
        row: dict[str, Any] = {"variant": variant, "runs": len(group)}
        for key in (
            "thread_us",
            "thread_p50_us",
            "thread_p99_us",
            "process_us",
            "thread_ratio",
            "process_ratio",
        ):
            row[key] = statistics.median(r[key] for r in group)
        row["thread_ratio_range"] = (
            min(r["thread_ratio"] for r in group),
            max(r["thread_ratio"] for r in group),
        )
        row["process_ratio_range"] = (
            min(r["process_ratio"] for r in group),
            max(r["process_ratio"] for r in group),
        )
        row["pages"] = sum(r["pages"] + r["warmup"] for r in group)
        row["produced"] = sum(r.get("events", 0) for r in group)
        if variant == "package":
            row["delivered"] = sum(r["delivered"] for r in group)
            row["unique"] = sum(r["unique"] for r in group)
            row["duplicates"] = sum(r["duplicates"] for r in group)
            row["dropped"] = _sum_dicts(r.get("dropped", {}) for r in group)
            row["all_flushed"] = all(r.get("flushed") for r in group)
        rows.append(row)
    return rows


def _sum_dicts(dicts: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    return total


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | runs | request thread µs/page (x base) | range of x | per-page p50 / p99 µs "
        "| whole process µs/page (x base) | range of x | events |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["variant"] == "package":
            events = (
                f"{r['unique']} unique of {EVENTS_PER_PAGE * r['pages']} expected, "
                f"{r['duplicates']} repeated"
            )
        else:
            events = f"{r['produced']} built, none sent (by design)"
        lines.append(
            f"| {r['variant']} | {r['runs']} | {r['thread_us']:.1f} ({r['thread_ratio']:.2f}) "
            f"| {r['thread_ratio_range'][0]:.2f}-{r['thread_ratio_range'][1]:.2f} "
            f"| {r['thread_p50_us']:.0f} / {r['thread_p99_us']:.0f} "
            f"| {r['process_us']:.1f} ({r['process_ratio']:.2f}) "
            f"| {r['process_ratio_range'][0]:.2f}-{r['process_ratio_range'][1]:.2f} | {events} |"
        )
    return "\n".join(lines)


def target_checks(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        if r["variant"] == "baseline" and r["produced"] != EVENTS_PER_PAGE * r["pages"]:
            lines.append(
                f"WARN  baseline built {r['produced']} events for {r['pages']} pages, "
                f"expected {EVENTS_PER_PAGE} per page"
            )
        if r["variant"] != "package":
            continue
        expected = EVENTS_PER_PAGE * r["pages"]
        checks = [
            (
                f"request thread {r['thread_ratio']:.3f}x baseline (target <= "
                f"{TARGET_THREAD_RATIO}x)",
                r["thread_ratio"] <= TARGET_THREAD_RATIO,
            ),
            (
                f"whole process {r['process_ratio']:.3f}x baseline (target <= "
                f"{TARGET_PROCESS_RATIO}x)",
                r["process_ratio"] <= TARGET_PROCESS_RATIO,
            ),
            (
                f"{r['unique']}/{expected} events delivered, {r['duplicates']} repeated, "
                f"dropped {r['dropped'] or 'none'}",
                r["unique"] == expected == r["delivered"] and r["duplicates"] == 0,
            ),
        ]
        lines += [f"{'PASS' if ok else 'MISS'}  package: {text}" for text, ok in checks]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=7, help="runs per variant (7); medians")
    parser.add_argument("--pages", type=int, default=3000, help="measured pages per run (3000)")
    parser.add_argument("--warmup", type=int, default=300, help="warm-up pages per run (300)")
    parser.add_argument(
        "--blocks", type=int, default=6, help="blocks per run, each flushed; median block (6)"
    )
    parser.add_argument("--endpoint-delay", type=float, default=0.1, help="seconds (0.1)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--datafile", type=Path, default=DEFAULT_DATAFILE)
    parser.add_argument("--json", type=Path, help="write every run and the medians here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="u", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(
            args.child,
            args.pages,
            args.warmup,
            args.blocks,
            args.tag,
            args.datafile,
            args.endpoint_url,
        )
        return 0
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "baseline" not in variants:
        variants.insert(0, "baseline")
    unknown = set(variants) - set(VARIANTS)
    if unknown or min(args.runs, args.pages, args.blocks) < 1:
        parser.error(f"unknown variants {sorted(unknown)}" if unknown else "runs, pages >= 1")
    args.blocks = min(args.blocks, args.pages)
    args.datafile = args.datafile.resolve()
    load_before = os.getloadavg()
    print(describe_machine(), flush=True)
    print(
        f"# {args.runs} runs x {len(variants)} variants, {args.pages} pages in {args.blocks} "
        f"blocks after {args.warmup} warm-up, {EVENTS_PER_PAGE} events per page, endpoint "
        f"answers in "
        f"{args.endpoint_delay * 1000:.0f} ms",
        flush=True,
    )
    endpoint = Endpoint("delay", args.endpoint_delay).start()
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        for run in range(1, args.runs + 1):
            shift = (run - 1) % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                before = endpoint.counts()
                result = run_child(args, variant, run, endpoint.url)
                after = endpoint.counts()
                result["delivered"] = after["events"] - before["events"]
                result["unique"] = after["unique_uuids"] - before["unique_uuids"]
                result["duplicates"] = after["duplicate_uuids"] - before["duplicate_uuids"]
                results.append(result)
                print(
                    f"  run {run} {variant:15} thread {result['thread_us']:7.1f} µs/page  "
                    f"process {result['process_us']:7.1f} µs/page  delivered "
                    f"{result['unique']} (+{result['duplicates']} repeated)",
                    flush=True,
                )
    finally:
        endpoint.stop()
    rows = summarise(results)
    load_after = os.getloadavg()
    print(
        f"\n# medians of {args.runs} runs, {time.monotonic() - started:.0f} s; load average "
        f"before {load_before[0]:.2f}, after {load_after[0]:.2f}\n"
    )
    print(table(rows))
    print()
    checks = target_checks(rows)
    for line in checks:
        print(line)
    if args.json:
        report = {
            "machine": describe_machine(),
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "settings": {k: str(v) for k, v in vars(args).items()},
            "runs": results,
            "medians": rows,
            "targets": checks,
        }
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
