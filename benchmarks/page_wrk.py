"""Page throughput (wrk, closed loop) and tail latency (open loop) against the baseline.

The page of ``page_variants`` (a fresh user id, two ``decide`` and one
``track_event``: 3 events) is served by Flask under gunicorn gthread, with 1
worker of 16 threads (``flask-1x16``) and with 2 workers of 8
(``flask-2x8``), and by Starlette under uvicorn (1 worker, ``starlette``), in
two variants started side by side, each idle while the other is measured:

* ``baseline``: SDK events built (``ForwardingEventProcessor``), then dropped;
* ``middleware``: ``create_client`` and this package's middleware, delivering
  to ``benchmarks/page_endpoint.py`` (another process, 100 ms answers).

Each run, per server: a wrk warm-up of both, then closed loop with ``wrk``
(``/usr/bin/wrk``, 16 connections, fresh ids from ``page_wrk.lua``), which
gives the baseline's capacity in that run; then open loop at 50% and 80% of
that capacity with ``page_load.py --rate`` (wrk has no constant-rate mode and
wrk2 is not packaged), latency counted from each request's due time. The
variants' order alternates from run to run. The servers are then stopped
(SIGTERM) and the endpoint's count of event uuids is compared with the events
the middleware's server processes produced: each must arrive exactly once.

That the load generators are not the bottleneck is shown, not assumed: wrk's
CPU and page_load's CPU (share of one core), the rate page_load actually
sent at, and how late its timers fired when a connection was free (that
grows when the generator falls behind, and stays near zero otherwise).

Usage::

    python benchmarks/page_wrk.py                       # 5 runs, 3 servers, ~11 minutes
    python benchmarks/page_wrk.py --servers flask-1x16,starlette --json out.json
    python benchmarks/page_wrk.py --framework starlette --runs 5 --seconds 4
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from page_procs import Endpoint, Server, describe_machine, server_shape

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_DATAFILE = ROOT / "tests" / "data" / "datafile.json"
FRAMEWORKS = ("flask", "starlette")
# Server labels (page_procs.server_shape): gunicorn gthread workers x threads, or uvicorn.
SERVERS = ("flask-1x16", "flask-2x8", "starlette")
VARIANTS = ("baseline", "middleware")
EVENTS_PER_PAGE = 3
TARGET_RPS_RATIO = 1.05
TARGET_TAIL_RATIO = 1.05
# Open loop: share of the baseline's requests that may find every connection busy
# at their due time before the run counts as saturated (void).
MAX_BEHIND = 0.02


# -- the load generators -------------------------------------------------------


def wrk_path() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    return found


def _children_cpu() -> float:
    """CPU seconds of every child reaped so far (the servers are reaped only at the end)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(port: int, seconds: float, connections: int, threads: int, tag: str) -> dict[str, Any]:
    """One closed-loop wrk run; its JSON summary plus its own CPU."""
    seconds = max(1, round(seconds))  # wrk takes whole seconds
    before = _children_cpu()
    process = subprocess.Popen(
        [
            wrk_path(),
            *(f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s"),
            *("-s", str(HERE / "page_wrk.lua"), f"http://127.0.0.1:{port}", "--", tag),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = process.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    cpu = _children_cpu() - before
    line = next((x for x in out.splitlines() if x.startswith("WRK ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    raw = json.loads(line[4:])
    elapsed = raw["duration_us"] / 1e6
    errors = {k: raw[k] for k in ("connect", "read", "write", "status", "timeout") if raw[k]}
    return {
        "requests": raw["requests"] - raw["status"],
        "errors": errors,
        "elapsed": elapsed,
        "rps": (raw["requests"] - raw["status"]) / elapsed,
        "p50": raw["p50_us"] / 1e6,
        "p95": raw["p95_us"] / 1e6,
        "p99": raw["p99_us"] / 1e6,
        "generator_cpu_share": cpu / elapsed,
    }


def run_open(port: int, rate: float, seconds: float, connections: int, tag: str) -> dict[str, Any]:
    """One open-loop run of ``page_load.py`` at ``rate`` requests/s."""
    requests = max(1, round(rate * seconds))
    completed = subprocess.run(
        [
            sys.executable,
            str(HERE / "page_load.py"),
            *("--port", str(port), "--requests", str(requests), "--rate", f"{rate:.3f}"),
            *("--concurrency", str(connections), "--tag", tag),
            *("--max-seconds", str(3 * seconds + 30)),
        ],
        capture_output=True,
        text=True,
        timeout=6 * seconds + 120,
        check=True,
    )
    raw: dict[str, Any] = json.loads(completed.stdout)
    return {
        "requests": raw["ok"],
        "errors": raw["errors"],
        "elapsed": raw["elapsed"],
        "rps": raw["rps"],
        "offered_rate": rate,
        "sent_rate": raw["sent_rate"],
        "p50": raw["p50"],
        "p95": raw["p95"],
        "p99": raw["p99"],
        "generator_cpu_share": raw["cpu_share"],
        "late_p99": raw["late_p99"],
        "behind": raw["behind"],
    }


# -- one run of one server -------------------------------------------------------


def one_run(args: argparse.Namespace, label: str, run: int, work: Path) -> dict[str, Any]:
    """One run of one server (``label``, e.g. ``flask-1x16``); rows name it as "framework"."""
    framework, env = server_shape(label)
    if args.flush_interval is not None:
        env = {**env, "BENCH_FLUSH_INTERVAL": str(args.flush_interval)}
    endpoint = Endpoint("delay", args.endpoint_delay).start()
    servers: dict[str, Server] = {}
    phases: list[dict[str, Any]] = []
    try:
        for variant in VARIANTS:
            servers[variant] = Server(
                framework, variant, endpoint.url, args.datafile, work / variant, env=env
            ).start()
        order = VARIANTS if run % 2 else VARIANTS[::-1]

        def measure(phase: str, variant: str, go: Any) -> dict[str, Any]:
            server = servers[variant]
            cpu_before = server.cpu_seconds()
            result: dict[str, Any] = go(server.port, f"r{run}{label}{variant[0]}{phase}")
            cpu = server.cpu_seconds() - cpu_before
            result.update(framework=label, run=run, phase=phase, variant=variant)
            result["server_cpu_ms"] = 1000 * cpu / result["requests"] if result["requests"] else 0
            print(
                f"  run {run} {label:10} {phase:6} {variant:10} {result['rps']:7.0f} req/s "
                f"p95 {result['p95'] * 1000:6.1f} ms p99 {result['p99'] * 1000:6.1f} ms "
                f"generator {result['generator_cpu_share']:.2f} core",
                flush=True,
            )
            phases.append(result)
            return result

        c, t = args.connections, args.wrk_threads
        for variant in order:
            run_wrk(servers[variant].port, args.warmup_seconds, c, t, f"r{run}{variant[0]}warm")
        closed = {
            v: measure("closed", v, lambda port, tag: run_wrk(port, args.seconds, c, t, tag))
            for v in order
        }
        capacity = closed["baseline"]["rps"]
        for fraction in args.fractions:
            rate = fraction * capacity
            for variant in order:
                measure(
                    f"open{round(fraction * 100)}",
                    variant,
                    lambda port, tag, rate=rate: run_open(
                        port, rate, args.seconds, args.open_connections, tag
                    ),
                )
        for server in servers.values():
            server.stop()
        counts = endpoint.settled_counts()
        stats = {v: s.process_stats() for v, s in servers.items()}
    finally:
        for server in servers.values():
            server.kill()
        endpoint.stop()
    produced = sum(p["produced"] for p in stats["middleware"])
    pages = sum(p["pages"] for p in stats["middleware"])
    dropped: dict[str, int] = {}
    for p in stats["middleware"]:
        for reason, n in ((p.get("dispatcher") or {}).get("dropped") or {}).items():
            dropped[reason] = dropped.get(reason, 0) + n
    return {
        "framework": label,
        "run": run,
        "capacity": capacity,
        "phases": phases,
        "pages": pages,
        "produced": produced,
        "baseline_produced": sum(p["produced"] for p in stats["baseline"]),
        "baseline_pages": sum(p["pages"] for p in stats["baseline"]),
        "delivered": counts["events"],
        "unique": counts["unique_uuids"],
        "duplicates": counts["duplicate_uuids"],
        "posts": counts["posts"],
        "dropped": dropped,
    }


# -- aggregation and the report ------------------------------------------------------


def add_ratios(runs: list[dict[str, Any]]) -> None:
    for run in runs:
        base = {p["phase"]: p for p in run["phases"] if p["variant"] == "baseline"}
        for p in run["phases"]:
            b = base[p["phase"]]
            for key in ("rps", "p50", "p95", "p99", "server_cpu_ms"):
                p[f"{key}_ratio"] = p[key] / b[key] if b[key] else math.nan
            # An open-loop comparison means something only while the baseline kept
            # up with the rate offered: on a machine that slowed down between the
            # closed-loop phase and this one, both variants are merely saturated.
            p["valid"] = p["phase"] == "closed" or (
                b["sent_rate"] >= 0.98 * b["offered_rate"] and b["behind"] <= MAX_BEHIND
            )


def medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        for p in run["phases"]:
            groups.setdefault((p["framework"], p["phase"], p["variant"]), []).append(p)
    rows = []
    for (framework, phase, variant), every in groups.items():
        group = [p for p in every if p["valid"]] or every
        row: dict[str, Any] = {
            "framework": framework,
            "phase": phase,
            "variant": variant,
            "runs": len(group),
            "void_runs": len(every) - sum(p["valid"] for p in every),
            "void": not any(p["valid"] for p in every),
        }
        keys = [
            k
            for k, v in group[0].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "run"
        ]
        for key in keys:
            values = [p[key] for p in group if p.get(key) is not None]
            row[key] = statistics.median(values) if values else math.nan
        for key in ("rps_ratio", "p95_ratio", "p99_ratio"):
            values = [p[key] for p in group]
            row[f"{key}_range"] = (min(values), max(values))
        row["errors"] = {}
        for p in group:
            for k, v in p["errors"].items():
                row["errors"][k] = row["errors"].get(k, 0) + v
        rows.append(row)
    order = {"closed": 0}
    rows.sort(key=lambda r: (r["framework"], order.get(r["phase"], 1), r["phase"], r["variant"]))
    return rows


def delivery_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for framework in dict.fromkeys(r["framework"] for r in runs):
        group = [r for r in runs if r["framework"] == framework]
        row = {"framework": framework, "runs": len(group)}
        for key in ("pages", "produced", "delivered", "unique", "duplicates", "posts"):
            row[key] = sum(r[key] for r in group)
        row["baseline_ok"] = all(
            r["baseline_produced"] == EVENTS_PER_PAGE * r["baseline_pages"] for r in group
        )
        row["dropped"] = {}
        for r in group:
            for k, v in r["dropped"].items():
                row["dropped"][k] = row["dropped"].get(k, 0) + v
        rows.append(row)
    return rows


def _x(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def tables(rows: list[dict[str, Any]], deliveries: list[dict[str, Any]]) -> str:
    closed = [
        "| server | variant | runs | req/s (x base) | range of x | p50 ms | p99 ms "
        "| server CPU ms/req (x) | wrk CPU (cores) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    open_ = [
        "| server | load | variant | runs | offered / sent req/s | p50 ms (x) | p95 ms (x) "
        "| p99 ms (x) | range of p99 x | server CPU ms/req (x) | generator CPU (cores) "
        "| timer late p99 ms | no free conn. |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ms = {k: r[k] * 1000 for k in ("p50", "p95", "p99")}
        if r["phase"] == "closed":
            low, high = r["rps_ratio_range"]
            closed.append(
                f"| {r['framework']} | {r['variant']} | {r['runs']} "
                f"| {r['rps']:.0f} ({_x(r['rps_ratio'])}) | {low:.2f}-{high:.2f} "
                f"| {ms['p50']:.1f} | {ms['p99']:.1f} "
                f"| {r['server_cpu_ms']:.2f} ({_x(r['server_cpu_ms_ratio'])}) "
                f"| {r['generator_cpu_share']:.2f} |"
            )
        else:
            low, high = r["p99_ratio_range"]
            runs = f"{r['runs']}" + (f" ({r['void_runs']} void)" if r["void_runs"] else "")
            if r["void"]:
                runs = f"0 valid of {r['void_runs']}"
            open_.append(
                f"| {r['framework']} | {r['phase'][4:]}% | {r['variant']} | {runs} "
                f"| {r['offered_rate']:.0f} / {r['sent_rate']:.0f} "
                f"| {ms['p50']:.1f} ({_x(r['p50_ratio'])}) "
                f"| {ms['p95']:.1f} ({_x(r['p95_ratio'])}) "
                f"| {ms['p99']:.1f} ({_x(r['p99_ratio'])}) | {low:.2f}-{high:.2f} "
                f"| {r['server_cpu_ms']:.2f} ({_x(r['server_cpu_ms_ratio'])}) "
                f"| {r['generator_cpu_share']:.2f} | {r['late_p99'] * 1000:.2f} "
                f"| {100 * r['behind']:.1f}% |"
            )
    delivered = [
        "| server | runs | pages (middleware) | events produced | delivered (unique uuids) "
        "| repeated | POSTs | dropped |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in deliveries:
        share = 100 * d["unique"] / d["produced"] if d["produced"] else math.nan
        delivered.append(
            f"| {d['framework']} | {d['runs']} | {d['pages']} | {d['produced']} "
            f"| {d['unique']} ({share:.1f}%) | {d['duplicates']} | {d['posts']} "
            f"| {', '.join(f'{k} {v}' for k, v in d['dropped'].items()) or '-'} |"
        )
    parts = ["Closed loop (wrk):", *closed, "", "Open loop (page_load.py --rate):", *open_]
    return "\n".join([*parts, "", "Delivery:", *delivered])


def target_checks(rows: list[dict[str, Any]], deliveries: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        if r["variant"] != "middleware":
            continue
        where = f"middleware ({r['framework']}, {r['phase']})"
        if r["phase"] == "closed":
            checks = [(f"req/s {_x(r['rps_ratio'])}x baseline", r["rps_ratio"] >= TARGET_RPS_RATIO)]
        elif r["void"]:
            lines.append(
                f"VOID  {where}: in no run did the baseline keep up with the rate offered "
                "(the machine was slower than in the closed-loop phase)"
            )
            continue
        else:
            runs = f"{r['runs']} valid runs"
            checks = [
                (
                    f"p95 {_x(r['p95_ratio'])}x baseline, {runs}",
                    r["p95_ratio"] <= TARGET_TAIL_RATIO,
                ),
                (
                    f"p99 {_x(r['p99_ratio'])}x baseline, {runs}",
                    r["p99_ratio"] <= TARGET_TAIL_RATIO,
                ),
            ]
        lines += [f"{'PASS' if ok else 'MISS'}  {where}: {text}" for text, ok in checks]
    for d in deliveries:
        ok = d["unique"] == d["produced"] == d["delivered"] and d["duplicates"] == 0
        lines.append(
            f"{'PASS' if ok else 'MISS'}  middleware ({d['framework']}): {d['unique']}/"
            f"{d['produced']} events delivered, {d['duplicates']} repeated"
        )
        if not d["baseline_ok"]:
            lines.append(f"WARN  {d['framework']} baseline: not {EVENTS_PER_PAGE} events per page")
    for r in rows:
        if r["errors"]:
            lines.append(f"WARN  {r['framework']} {r['phase']} {r['variant']}: {r['errors']}")
        if r["phase"] != "closed" and r["void_runs"]:
            lines.append(
                f"NOTE  {r['framework']} {r['phase']} {r['variant']}: {r['void_runs']} run(s) "
                "left out, where the baseline could not keep up with the rate offered"
            )
        if r["generator_cpu_share"] > 0.5:
            lines.append(
                f"WARN  {r['framework']} {r['phase']} {r['variant']}: the load generator used "
                f"{r['generator_cpu_share']:.2f} of a core"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help="flask-<workers>x<threads> (gunicorn gthread) or starlette (uvicorn); "
        f"default {','.join(SERVERS)}",
    )
    parser.add_argument(
        "--framework", choices=(*FRAMEWORKS, "both"), default="both", help="only these servers"
    )
    parser.add_argument("--runs", type=int, default=5, help="runs (5); medians of per-run ratios")
    parser.add_argument("--seconds", type=int, default=5, help="seconds per phase (5)")
    parser.add_argument("--warmup-seconds", type=int, default=1, help="wrk warm-up (1)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument(
        "--open-connections", type=int, default=64, help="page_load connections, open loop (64)"
    )
    parser.add_argument(
        "--fractions", default="0.5,0.8", help="open-loop rates, shares of the baseline's req/s"
    )
    parser.add_argument("--endpoint-delay", type=float, default=0.1, help="seconds (0.1)")
    parser.add_argument(
        "--flush-interval",
        type=float,
        help="the middleware's EventSender(flush_interval=...) (default: the package's)",
    )
    parser.add_argument("--datafile", type=Path, default=DEFAULT_DATAFILE)
    parser.add_argument("--json", type=Path, help="write every phase and the medians here")
    args = parser.parse_args(argv)
    args.fractions = tuple(float(x) for x in args.fractions.split(",") if x.strip())
    args.datafile = args.datafile.resolve()
    frameworks = [
        label
        for label in (x.strip() for x in args.servers.split(",") if x.strip())
        if args.framework in ("both", server_shape(label)[0])
    ]
    wrk_path()
    load_before = os.getloadavg()
    print(describe_machine(), flush=True)
    print(
        f"# {args.runs} runs x {len(frameworks)} servers ({', '.join(frameworks)}); "
        f"phases of {args.seconds:.0f} s: "
        f"closed loop (wrk -t{args.wrk_threads} -c{args.connections}), open loop at "
        f"{', '.join(f'{f:.0%}' for f in args.fractions)} of the baseline's req/s "
        f"({args.open_connections} connections); endpoint answers in "
        f"{args.endpoint_delay * 1000:.0f} ms"
        + (
            ""
            if args.flush_interval is None
            else f"; the middleware's flush_interval {args.flush_interval:g} s"
        ),
        flush=True,
    )
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="page-wrk-") as tmp:
        for run in range(1, args.runs + 1):
            for framework in frameworks:
                runs.append(one_run(args, framework, run, Path(tmp) / f"{run}-{framework}"))
    add_ratios(runs)
    rows = medians(runs)
    deliveries = delivery_rows(runs)
    load_after = os.getloadavg()
    print(
        f"\n# medians of {args.runs} runs, {time.monotonic() - started:.0f} s; load average "
        f"before {load_before[0]:.2f}, after {load_after[0]:.2f}; {os.cpu_count()} CPUs\n"
    )
    print(tables(rows, deliveries))
    print()
    checks = target_checks(rows, deliveries)
    for line in checks:
        print(line)
    if args.json:
        report = {
            "machine": describe_machine(),
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "settings": {k: str(v) for k, v in vars(args).items()},
            "runs": runs,
            "medians": rows,
            "deliveries": deliveries,
            "targets": checks,
        }
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
