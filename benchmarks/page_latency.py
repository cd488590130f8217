"""Page latency and event delivery: this package against the SDK's own dispatchers.

One command serves the same page (real ``optimizely-sdk``, the test datafile,
two ``decide`` calls and one ``track_event`` per request, a fresh user id each
time) from Flask under gunicorn (gthread, 2 workers x 8 threads) and from
Starlette under uvicorn (1 worker), once per variant, all on 127.0.0.1:

* ``baseline``: events built by the SDK, then dropped (the limit);
* ``sdk-sync``: the SDK's ``EventDispatcher`` through ``ForwardingEventProcessor``;
* ``sdk-default``: ``Optimizely(datafile, event_dispatcher=EventDispatcher)``;
* ``sdk-batch``: a started ``BatchEventProcessor`` with its class defaults;
* ``middleware``: ``create_client`` and this package's middleware.

For each: start a local event endpoint (100 ms answers by default; or down;
or answering 500) and the server, warm up, drive a fixed number of requests at
fixed concurrency from a separate process, SIGTERM the server, wait for it to
exit, then report requests/s and p50/p95/p99 latency (each also as a ratio to
the baseline of the same run), server CPU seconds per 1,000 requests, POSTs
per request, and events delivered versus produced. ``middleware`` and
``sdk-batch`` are repeated with the endpoint down and answering 500.

Usage::

    python benchmarks/page_latency.py                      # everything, ~8 minutes
    python benchmarks/page_latency.py --framework flask --variants middleware \\
        --endpoint-mode delay --requests 500 --runs 1 --json out.json
    python benchmarks/page_latency.py --rate 800 --variants sdk-batch,middleware \\
        --endpoint-mode delay                              # latency below saturation
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from page_procs import Endpoint, Server, run_load
from page_variants import EVENTS_PER_PAGE, VARIANTS

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATAFILE = ROOT / "tests" / "data" / "datafile.json"
FRAMEWORKS = ("flask", "starlette")
MODES = ("delay", "down", "500")
FAULT_VARIANTS = ("sdk-batch", "middleware")
TARGET_P99_RATIO = 1.05
TARGET_RPS_RATIO = 0.95


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="variants:\n" + "\n".join(f"  {k:12} {v}" for k, v in VARIANTS.items()),
    )
    parser.add_argument("--framework", choices=(*FRAMEWORKS, "both"), default="both")
    parser.add_argument(
        "--variants",
        # The dispatcher wiring is measured by saturation.py and page_cpu_interleaved.py.
        default=",".join(v for v in VARIANTS if v != "dispatcher"),
        help="comma-separated variants run against the healthy endpoint (baseline always runs)",
    )
    parser.add_argument(
        "--fault-variants",
        default=",".join(FAULT_VARIANTS),
        help="variants repeated with the endpoint down and answering 500",
    )
    parser.add_argument(
        "--endpoint-mode",
        default="all",
        help="comma-separated from delay, down, 500; or all (default)",
    )
    parser.add_argument("--endpoint-delay", type=float, default=0.1, help="seconds (0.1)")
    parser.add_argument("--requests", type=int, default=3000, help="measured requests (3000)")
    parser.add_argument("--warmup", type=int, default=None, help="default: min(requests, 200)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--rate",
        type=float,
        help="open-loop: requests/s of the measured phase, latency counted from when each "
        "request was due (default: closed-loop, every connection flat out)",
    )
    parser.add_argument("--runs", type=int, default=3, help="repetitions; medians reported")
    parser.add_argument(
        "--sync-seconds",
        type=float,
        default=15.0,
        help="time budget of the sdk-sync load phase: no new request starts after it (15)",
    )
    parser.add_argument("--datafile", type=Path, default=DEFAULT_DATAFILE)
    parser.add_argument("--json", type=Path, help="write every run and the medians here")
    parser.add_argument("--keep", action="store_true", help="keep server logs and stats files")
    args = parser.parse_args(argv)
    args.frameworks = FRAMEWORKS if args.framework == "both" else (args.framework,)
    args.variant_list = _choose(args.variants, VARIANTS, "variant")
    args.fault_list = _choose(args.fault_variants, VARIANTS, "fault variant")
    modes = args.endpoint_mode
    args.modes = MODES if modes == "all" else _choose(modes, MODES, "endpoint mode")
    if args.warmup is None:
        args.warmup = min(args.requests, 200)
    if args.requests < 1 or args.runs < 1 or args.concurrency < 1:
        parser.error("--requests, --runs and --concurrency must be at least 1")
    return args


def _choose(text: str, allowed: Iterable[str], what: str) -> tuple[str, ...]:
    allowed = tuple(allowed)
    chosen = tuple(x.strip() for x in text.split(",") if x.strip())
    for item in chosen:
        if item not in allowed:
            raise SystemExit(f"unknown {what} {item!r}; choose from {', '.join(allowed)}")
    return chosen


def plan(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(mode, variant) pairs of one run, baseline first."""
    steps: list[tuple[str, str]] = [(args.modes[0], "baseline")]
    for mode in args.modes:
        names = args.variant_list if mode == "delay" else args.fault_list
        steps += [(mode, v) for v in VARIANTS if v in names and v != "baseline"]
    return steps


# -- one measurement ---------------------------------------------------------


def measure(
    args: argparse.Namespace, framework: str, mode: str, variant: str, run: int, work: Path
) -> dict[str, Any]:
    endpoint = Endpoint(mode, args.endpoint_delay)
    server: Server | None = None
    try:
        endpoint.start()
        server = Server(framework, variant, endpoint.url, args.datafile.resolve(), work).start()
        sync = variant == "sdk-sync"
        warmup = min(args.warmup, args.concurrency) if sync else args.warmup
        budget = args.sync_seconds if sync else 600.0
        tag = f"r{run}{framework[0]}{mode}{variant}"
        run_load(server.port, warmup, args.concurrency, tag + "w", budget)
        cpu_before = server.cpu_seconds()
        load = run_load(server.port, args.requests, args.concurrency, tag, budget, args.rate)
        cpu = server.cpu_seconds() - cpu_before
        shutdown_seconds = server.stop()
        counts = endpoint.settled_counts()
        processes = server.process_stats()
    finally:
        if server is not None:
            server.kill()
        endpoint.stop()
    pages = sum(p["pages"] for p in processes)
    produced = sum(p["produced"] for p in processes)
    dropped: dict[str, int] = {}
    sender: dict[str, int] = {}
    for p in processes:
        stats = p.get("dispatcher") or {}
        for reason, n in (stats.get("dropped") or {}).items():
            dropped[reason] = dropped.get(reason, 0) + n
        for key in ("delivered_events", "delivered_posts", "retries", "queue_depth"):
            if isinstance(stats.get(key), int):
                sender[key] = sender.get(key, 0) + stats[key]
    if variant == "baseline":
        dropped["by design"] = sum(p.get("dropped_by_baseline", 0) for p in processes)
    return {
        "framework": framework,
        "mode": mode,
        "variant": variant,
        "run": run,
        "requests": load["ok"],
        "errors": load["errors"],
        "rps": load["rps"],
        "p50": load["p50"],
        "p95": load["p95"],
        "p99": load["p99"],
        "cpu_per_1000": 1000 * cpu / load["ok"] if load["ok"] else math.nan,
        "server_processes": len(processes),
        "pages": pages,
        "produced": produced,
        "expected_produced": EVENTS_PER_PAGE * pages,
        "posts": counts["posts"],
        "posts_per_request": counts["posts"] / pages if pages else math.nan,
        "delivered": counts["visitors"],
        "rejected": counts["rejected_visitors"],
        "delivered_ratio": counts["visitors"] / produced if produced else math.nan,
        "dropped": dropped,
        "sender": sender,
        "shutdown_seconds": shutdown_seconds,
    }


def add_ratios(results: list[dict[str, Any]]) -> None:
    """Ratios to the baseline of the same framework and run."""
    baselines = {(r["framework"], r["run"]): r for r in results if r["variant"] == "baseline"}
    for r in results:
        base = baselines.get((r["framework"], r["run"]))
        for key in ("rps", "p50", "p95", "p99"):
            r[f"{key}_ratio"] = r[key] / base[key] if base and base[key] else math.nan


# -- aggregation and the report ----------------------------------------------

MEDIAN_KEYS = (
    "requests",
    "rps",
    "p50",
    "p95",
    "p99",
    "rps_ratio",
    "p50_ratio",
    "p95_ratio",
    "p99_ratio",
    "cpu_per_1000",
    "posts_per_request",
    "delivered_ratio",
    "shutdown_seconds",
)


def medians(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["framework"], r["mode"], r["variant"]), []).append(r)
    rows = []
    for (framework, mode, variant), group in groups.items():
        row: dict[str, Any] = {
            "framework": framework,
            "mode": mode,
            "variant": variant,
            "runs": len(group),
        }
        for key in MEDIAN_KEYS:
            values = [r[key] for r in group if r[key] is not None and not _isnan(r[key])]
            row[key] = statistics.median(values) if values else math.nan
        row["killed_at_shutdown"] = sum(r["shutdown_seconds"] is None for r in group)
        row["pages"] = sum(r["pages"] for r in group)
        row["produced"] = sum(r["produced"] for r in group)
        row["expected_produced"] = sum(r["expected_produced"] for r in group)
        row["delivered"] = sum(r["delivered"] for r in group)
        row["errors"] = _sum_dicts(r["errors"] for r in group)
        row["dropped"] = _sum_dicts(r["dropped"] for r in group)
        rows.append(row)
    return rows


def _sum_dicts(dicts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    return total


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _ms(seconds: float) -> str:
    return "-" if _isnan(seconds) else f"{seconds * 1000:.1f}"


def _ratio(value: float) -> str:
    if _isnan(value):
        return "-"
    return f"{value:.3f}" if value < 0.1 else f"{value:.2f}"


def table(rows: list[dict[str, Any]], endpoint_delay: float) -> str:
    head = (
        "| framework | endpoint | variant | requests | req/s (x base) | p50 ms (x) | p95 ms (x) "
        "| p99 ms (x) | CPU s/1k req | POSTs/req | delivered / produced | dropped (counted) "
        "| shutdown s |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        mode = f"{endpoint_delay * 1000:.0f} ms" if r["mode"] == "delay" else r["mode"]
        produced = r["produced"]
        delivered = (
            f"{r['delivered']} / {produced} ({100 * r['delivered'] / produced:.1f}%)"
            if produced
            else "-"
        )
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(r["dropped"].items())) or "-"
        shutdown = "-" if _isnan(r["shutdown_seconds"]) else f"{r['shutdown_seconds']:.1f}"
        if r["killed_at_shutdown"]:
            shutdown += f" ({r['killed_at_shutdown']} killed)"
        lines.append(
            f"| {r['framework']} | {mode} | {r['variant']} | {r['requests']:.0f} "
            f"| {r['rps']:.0f} ({_ratio(r['rps_ratio'])}) "
            f"| {_ms(r['p50'])} ({_ratio(r['p50_ratio'])}) "
            f"| {_ms(r['p95'])} ({_ratio(r['p95_ratio'])}) "
            f"| {_ms(r['p99'])} ({_ratio(r['p99_ratio'])}) "
            f"| {r['cpu_per_1000']:.2f} | {r['posts_per_request']:.2f} | {delivered} "
            f"| {dropped} | {shutdown} |"
        )
    return "\n".join(lines)


def target_checks(rows: list[dict[str, Any]]) -> list[str]:
    """The middleware's targets, one line each: PASS or MISS."""
    lines = []
    for r in rows:
        if r["variant"] != "middleware":
            continue
        where = f"{r['framework']}, endpoint {r['mode']}"
        checks = [
            (f"p99 {_ratio(r['p99_ratio'])}x baseline", r["p99_ratio"] <= TARGET_P99_RATIO),
            (f"req/s {_ratio(r['rps_ratio'])}x baseline", r["rps_ratio"] >= TARGET_RPS_RATIO),
            (f"{r['posts_per_request']:.2f} POSTs/request", r["posts_per_request"] <= 1.0),
        ]
        if r["mode"] == "delay":
            checks.append(
                (f"{r['delivered']}/{r['produced']} delivered", r["delivered"] == r["produced"])
            )
        for text, ok in checks:
            lines.append(f"{'PASS' if ok else 'MISS'}  middleware ({where}): {text}")
    for r in rows:
        if r["produced"] != r["expected_produced"]:
            lines.append(
                f"WARN  {r['framework']} {r['variant']}: {r['produced']} events produced for "
                f"{r['pages']} pages, expected {EVENTS_PER_PAGE} per page"
            )
        if r["errors"]:
            lines.append(f"WARN  {r['framework']} {r['variant']} {r['mode']}: {r['errors']}")
    return lines


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for dist in ("optimizely-sdk", "flask", "starlette", "gunicorn", "uvicorn", "requests"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "loadavg": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    steps = plan(args)
    print(
        f"# {info['cpus']} x {info['cpu']}, Python {info['python']}, load average "
        f"{' '.join(f'{x:.2f}' for x in info['loadavg'])}",
        flush=True,
    )
    print(
        f"# {args.runs} runs x {len(args.frameworks)} frameworks x {len(steps)} variants; "
        f"{args.requests} requests (sdk-sync: at most {args.sync_seconds:.0f} s) after "
        f"{args.warmup} warm-up, concurrency {args.concurrency}, "
        f"{f'open-loop at {args.rate:.0f} requests/s, ' if args.rate else ''}"
        f"endpoint delay {args.endpoint_delay * 1000:.0f} ms",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="page-latency-") as tmp:
        for run in range(1, args.runs + 1):
            for framework in args.frameworks:
                for mode, variant in steps:
                    work = Path(tmp) / f"{run}-{framework}-{mode}-{variant}"
                    result = measure(args, framework, mode, variant, run, work)
                    results.append(result)
                    print(
                        f"  run {run} {framework:9} {mode:5} {variant:11} "
                        f"{result['requests']:5d} req {result['rps']:8.1f}/s "
                        f"p99 {result['p99'] * 1000:8.1f} ms  delivered "
                        f"{result['delivered']}/{result['produced']}",
                        flush=True,
                    )
        if args.keep:
            kept = Path(tempfile.mkdtemp(prefix="page-latency-kept-"))
            shutil.copytree(tmp, kept, dirs_exist_ok=True)
            print(f"# logs and stats kept in {kept}")
    add_ratios(results)
    rows = medians(results)
    info["loadavg_after"] = os.getloadavg()
    print(f"\n# medians of {args.runs} run(s), {time.monotonic() - started:.0f} s in all\n")
    print(table(rows, args.endpoint_delay))
    print()
    for line in target_checks(rows):
        print(line)
    if args.json:
        report = {
            "command": " ".join(["python", "benchmarks/page_latency.py", *(argv or sys.argv[1:])]),
            "machine": info,
            "settings": {
                "requests": args.requests,
                "warmup": args.warmup,
                "concurrency": args.concurrency,
                "rate": args.rate,
                "runs": args.runs,
                "endpoint_delay": args.endpoint_delay,
                "sync_seconds": args.sync_seconds,
            },
            "runs": results,
            "medians": rows,
            "targets": target_checks(rows),
        }
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
