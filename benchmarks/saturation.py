"""Saturation: a server at full CPU, the machine's other core busy, a 100 ms endpoint.

Does a busy process drop its own events? Each case starts a fresh event
endpoint (``page_endpoint.py``, answering every POST after 100 ms and counting
each event's uuid), one server of the page benchmark, and a second process
that keeps another core busy (``while True: pass``), then loads the server
with ``wrk`` in a closed loop (32 connections, fresh user ids from
``page_wrk.lua``) for ``--seconds``. The server is then stopped (SIGTERM: the
middleware flushes and closes its dispatcher) and three counts are compared:

* events produced: every user event the SDK handed to its event processor
  in the server's processes (``page_variants`` counts them);
* events delivered: the endpoint's count of event uuids, unique and repeated,
  and how many had arrived when the load ended (before the stop, whose
  ``close`` delivers what is still queued);
* events dropped, by reason: the dispatcher's ``stats()["dropped"]``
  (``queue_full``, ``shutdown``, ...), which includes its sender's.

Every event must be delivered exactly once: delivered = unique uuids =
produced, nothing repeated, nothing dropped. An event neither delivered nor
counted as dropped is reported as lost silently.

Servers (``--servers``): ``flask-1x8`` and ``flask-1x16`` (Flask under gunicorn
gthread, 1 worker of 8 or 16 threads), ``flask-2x8``, ``starlette`` (uvicorn,
1 worker). Wirings (``--wirings``): ``middleware`` (``create_client``: the
package's event processor) and ``dispatcher`` (the SDK's
``ForwardingEventProcessor`` with a ``RequestScopedEventDispatcher``: the SDK
builds ``LogEvent``s), both behind the package's WSGI / ASGI middleware and a
default ``EventSender(endpoint=<local>)``.

The load generator is shown not to be the bottleneck: wrk's CPU (share of
one core) is reported beside the server's and the burner's.

Usage::

    python benchmarks/saturation.py                        # 60 s per case, 6 cases, ~8 minutes
    python benchmarks/saturation.py --servers flask-1x8 --rounds 2 --seconds 20
    python benchmarks/saturation.py --short                # 2 s per case: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from page_procs import (
    Endpoint,
    Server,
    describe_machine,
    kill_group,
    server_shape,
    tree_cpu_seconds,
)
from page_wrk import DEFAULT_DATAFILE, run_wrk, wrk_path

SERVERS = ("flask-1x8", "flask-1x16", "starlette")
WIRINGS = ("middleware", "dispatcher")
SHORT_SECONDS = 2


class Burner:
    """A process that keeps one core busy until stopped."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", "while True: pass"], start_new_session=True
        )

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        kill_group(self.process)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def one_case(
    args: argparse.Namespace, label: str, wiring: str, round_: int, work: Path
) -> dict[str, Any]:
    """One server, one wiring, one closed-loop run under saturation; what it counted."""
    framework, env = server_shape(label)
    load_before = load_average()
    endpoint = Endpoint("delay", args.endpoint_delay).start()
    server = Server(framework, wiring, endpoint.url, args.datafile, work, env=env)
    burner: Burner | None = None
    try:
        server.start()
        burner = Burner() if args.burn else None
        server_cpu = server.cpu_seconds()
        burner_cpu = burner.cpu_seconds() if burner else 0.0
        tag = f"s{round_}{label}{wiring[0]}"
        wrk = run_wrk(server.port, args.seconds, args.connections, args.wrk_threads, tag)
        during_load = endpoint.counts()  # before the stop, which flushes what is queued
        server_cpu = server.cpu_seconds() - server_cpu
        burner_cpu = burner.cpu_seconds() - burner_cpu if burner else 0.0
        if burner:
            burner.stop()
        shutdown_s = server.stop()
        counts = endpoint.settled_counts()
        stats = server.process_stats()
    except Exception:
        print(server.log_tail(), file=sys.stderr)
        raise
    finally:
        if burner:
            burner.stop()
        server.kill()
        endpoint.stop()
    dropped: Counter[str] = Counter()
    for process in stats:
        dropped.update((process.get("dispatcher") or {}).get("dropped") or {})
    produced = sum(p["produced"] for p in stats)
    row = {
        "server": label,
        "wiring": wiring,
        "round": round_,
        "seconds": wrk["elapsed"],
        "rps": wrk["rps"],
        "p50": wrk["p50"],
        "p99": wrk["p99"],
        "wrk_errors": wrk["errors"],
        "wrk_cpu": wrk["generator_cpu_share"],
        "server_cpu": server_cpu / wrk["elapsed"],
        "burner_cpu": burner_cpu / wrk["elapsed"],
        "processes": len(stats),
        "pages": sum(p["pages"] for p in stats),
        "produced": produced,
        "delivered": counts["events"],
        "delivered_during_load": during_load["events"],
        "unique": counts["unique_uuids"],
        "duplicates": counts["duplicate_uuids"],
        "posts": counts["accepted_posts"],
        "dropped": dict(dropped),
        "dropped_total": sum(dropped.values()),
        "shutdown_s": shutdown_s,
        "load_before": load_before,
        "load_after": load_average(),
        # Every counter of each server process's dispatcher (retries, POSTs, workers,
        # last_error, ...), and the server's last log lines, for the JSON report.
        "dispatcher_stats": [p.get("dispatcher") for p in stats],
        "server_log_tail": server.log_tail(),
    }
    row["silently_lost"] = produced - row["unique"] - row["dropped_total"]
    return row


def total(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds of one case added up (the rates and CPU shares averaged)."""
    out = dict(rows[0], round="all", rounds=len(rows))
    for key in (
        *("seconds", "processes", "pages", "produced", "delivered", "unique"),
        *("delivered_during_load", "duplicates", "posts", "dropped_total", "silently_lost"),
    ):
        out[key] = sum(r[key] for r in rows)
    for key in ("rps", "wrk_cpu", "server_cpu", "burner_cpu", "p50", "p99"):
        out[key] = sum(r[key] for r in rows) / len(rows)
    dropped: Counter[str] = Counter()
    for r in rows:
        dropped.update(r["dropped"])
    out["dropped"] = dict(dropped)
    out["load_before"], out["load_after"] = rows[0]["load_before"], rows[-1]["load_after"]
    return out


def exactly_once(r: dict[str, Any]) -> bool:
    """Every event produced arrived, once: the issue's target."""
    return bool(r["unique"] == r["delivered"] == r["produced"] > 0 and r["duplicates"] == 0)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| server | wiring | round | req/s | p99 ms | wrk CPU | server CPU | burner CPU "
        "| pages | events produced | delivered (unique uuids) | of which before the stop "
        "| repeated | dropped "
        "| dropped by reason | not accounted | load before / after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        share = r["dropped_total"] / r["produced"] if r["produced"] else 0.0
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r["dropped"].items())) or "-"
        lines.append(
            f"| {r['server']} | {r['wiring']} | {r['round']} | {r['rps']:.0f} "
            f"| {r['p99'] * 1000:.0f} | {r['wrk_cpu']:.2f} | {r['server_cpu']:.2f} "
            f"| {r['burner_cpu']:.2f} | {r['pages']} | {r['produced']} "
            f"| {r['unique']} | {r['delivered_during_load']} | {r['duplicates']} "
            f"| {r['dropped_total']} ({share:.1%}) "
            f"| {reasons} | {r['silently_lost']} | {r['load_before']} / {r['load_after']} |"
        )
    return "\n".join(lines)


def checks(totals: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in totals:
        where = f"{r['server']} {r['wiring']}"
        lines.append(
            f"{'PASS' if exactly_once(r) and not r['dropped_total'] else 'MISS'}  {where}: "
            f"{r['unique']}/{r['produced']} events delivered, {r['duplicates']} repeated, "
            f"{r['dropped_total']} dropped"
        )
        if r["silently_lost"]:
            lines.append(
                f"WARN  {where}: {r['silently_lost']} events neither delivered nor counted"
            )
        if r["wrk_errors"]:
            lines.append(f"WARN  {where}: wrk errors {r['wrk_errors']}")
        if r["wrk_cpu"] > 0.5:
            lines.append(f"WARN  {where}: wrk used {r['wrk_cpu']:.2f} of a core")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--servers", default=",".join(SERVERS), help=",".join(SERVERS))
    parser.add_argument("--wirings", default=",".join(WIRINGS), help=",".join(WIRINGS))
    parser.add_argument("--seconds", type=int, default=60, help="closed loop per round (60)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per case, fresh server (1)")
    parser.add_argument("--short", action="store_true", help=f"{SHORT_SECONDS} s per round")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument("--endpoint-delay", type=float, default=0.1, help="seconds (0.1)")
    parser.add_argument("--no-burn", dest="burn", action="store_false", help="no busy process")
    parser.add_argument("--datafile", type=Path, default=DEFAULT_DATAFILE)
    parser.add_argument("--json", type=Path, help="write every round and the totals here")
    args = parser.parse_args(argv)
    if args.short:
        args.seconds = SHORT_SECONDS
    args.datafile = args.datafile.resolve()
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    wirings = [w.strip() for w in args.wirings.split(",") if w.strip()]
    for label in servers:
        server_shape(label)  # refuse a bad label before anything starts
    for wiring in wirings:
        if wiring not in WIRINGS:
            raise SystemExit(f"unknown wiring {wiring!r}; choose from {', '.join(WIRINGS)}")
    wrk_path()
    load_before = load_average()
    print(describe_machine(), flush=True)
    print(
        f"# {args.rounds} round(s) of {args.seconds} s per case: wrk -t{args.wrk_threads} "
        f"-c{args.connections} closed loop, {'a busy process on another core, ' * args.burn}"
        f"endpoint answers in {args.endpoint_delay * 1000:.0f} ms",
        flush=True,
    )
    rounds: list[dict[str, Any]] = []
    totals: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="saturation-") as tmp:
        for label in servers:
            for wiring in wirings:
                case = []
                for round_ in range(1, args.rounds + 1):
                    work = Path(tmp) / f"{label}-{wiring}-{round_}"
                    case.append(one_case(args, label, wiring, round_, work))
                    print(table([case[-1]]).splitlines()[-1], flush=True)
                rounds += case
                totals.append(total(case))
    print(
        f"\n# load average before {load_before}, after {load_average()} (1, 5, 15 min); "
        f"{os.cpu_count()} CPUs\n"
    )
    print(table(rounds if args.rounds == 1 else [*rounds, *totals]))
    print()
    lines = checks(totals)
    for line in lines:
        print(line)
    if args.json:
        report = {
            "machine": describe_machine(),
            "settings": {k: str(v) for k, v in vars(args).items()},
            "rounds": rounds,
            "totals": totals,
            "checks": lines,
        }
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
