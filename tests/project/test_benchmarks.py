"""The benchmarks still run end to end and report what they measured.

Tiny runs (a few dozen requests or pages, one run): the page latency
benchmark's baseline and middleware variants on both frameworks (real
gunicorn and uvicorn servers, the real event endpoint process and load
generator), the three per-page CPU benchmarks (one of them running this tree
beside itself), the thread wake-ups benchmark, the wrk benchmark, the
saturation benchmark and the delivery engine's ceiling. No timing is asserted, only the
report's content: what was counted and delivered.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
REQUESTS = 20
WARMUP = 4


def run_benchmark(script: str, *args: str, timeout: float = 100) -> str:
    """Run ``benchmarks/<script>`` with ``args``; it must exit 0. Returns its stdout."""
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


def run_benchmark_to_json(
    script: str, *args: str, out: Path, timeout: float = 100
) -> tuple[dict[str, Any], str]:
    """Run ``benchmarks/<script>`` with ``args --json out``: its JSON report and its stdout."""
    stdout = run_benchmark(script, *args, "--json", str(out), timeout=timeout)
    return json.loads(out.read_text()), stdout


def wrk_benchmark(test: Callable[..., None]) -> Callable[..., None]:
    """The marks of a benchmark driven by wrk: slow, a longer timeout, skipped without wrk."""
    test = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")(test)
    return pytest.mark.timeout(240)(pytest.mark.slow(test))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench") / "report.json"
    args = ("--framework", "both", "--variants", "middleware", "--endpoint-mode", "delay")
    args += ("--requests", str(REQUESTS), "--warmup", str(WARMUP), "--runs", "1")
    return run_benchmark_to_json("page_latency.py", *args, "--endpoint-delay", "0.01", out=out)


def rows(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["framework"], r["variant"]): r for r in report["medians"]}


@pytest.mark.timeout(120)
def test_every_framework_and_variant_is_reported(report: tuple[dict[str, Any], str]) -> None:
    data, _ = report
    assert set(rows(data)) == {
        ("flask", "baseline"),
        ("flask", "middleware"),
        ("starlette", "baseline"),
        ("starlette", "middleware"),
    }
    for row in data["medians"]:
        assert row["mode"] == "delay"
        assert row["requests"] == REQUESTS, row
        assert row["errors"] == {}, row
        assert row["pages"] == REQUESTS + WARMUP, row
        assert row["rps"] > 0 and row["p99"] >= row["p50"] > 0, row
        assert row["rps_ratio"] > 0 and row["p99_ratio"] > 0, row
        assert row["cpu_per_1000"] >= 0, row
        assert row["killed_at_shutdown"] == 0, row


@pytest.mark.timeout(120)
def test_three_events_per_page_are_produced(report: tuple[dict[str, Any], str]) -> None:
    data, _ = report
    for row in data["medians"]:
        assert row["produced"] == 3 * row["pages"] == row["expected_produced"], row


@pytest.mark.timeout(120)
def test_baseline_drops_every_event_and_posts_nothing(report: tuple[dict[str, Any], str]) -> None:
    data, _ = report
    for framework in ("flask", "starlette"):
        row = rows(data)[(framework, "baseline")]
        assert row["delivered"] == 0
        assert row["posts_per_request"] == 0
        assert row["dropped"] == {"by design": row["produced"]}


@pytest.mark.timeout(120)
def test_middleware_delivers_every_event_after_shutdown(report: tuple[dict[str, Any], str]) -> None:
    data, stdout = report
    for framework in ("flask", "starlette"):
        row = rows(data)[(framework, "middleware")]
        assert row["delivered"] == row["produced"] == 3 * (REQUESTS + WARMUP), row
        assert row["dropped"] == {}, row
        assert 0 < row["posts_per_request"] <= 1, row
        assert f"PASS  middleware ({framework}, endpoint delay): 72/72 delivered" in stdout
        assert f"| {framework} | 10 ms | middleware | {REQUESTS} |" in stdout


# -- per-page CPU in one process (benchmarks/page_cpu.py) -------------------------

CPU_PAGES = 30
CPU_WARMUP = 5


@pytest.fixture(scope="module")
def cpu_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench") / "cpu.json"
    args = ("--runs", "1", "--pages", str(CPU_PAGES), "--warmup", str(CPU_WARMUP))
    return run_benchmark_to_json("page_cpu.py", *args, "--endpoint-delay", "0.01", out=out)


@pytest.mark.timeout(120)
def test_page_cpu_reports_every_variant_against_the_baseline(
    cpu_report: tuple[dict[str, Any], str],
) -> None:
    data, stdout = cpu_report
    by_variant = {r["variant"]: r for r in data["medians"]}
    assert set(by_variant) == {"baseline", "sdk-userevents", "package"}
    for row in by_variant.values():
        assert row["runs"] == 1
        assert row["pages"] == CPU_PAGES + CPU_WARMUP
        assert row["thread_us"] > 0 and row["process_us"] > 0, row
        assert row["thread_ratio"] > 0 and row["process_ratio"] > 0, row
    assert by_variant["baseline"]["thread_ratio"] == 1.0
    assert "CPUs, load average" in stdout
    assert "| package | 1 |" in stdout


@pytest.mark.timeout(120)
def test_page_cpu_counts_three_events_per_page_and_each_delivered_once(
    cpu_report: tuple[dict[str, Any], str],
) -> None:
    data, stdout = cpu_report
    by_variant = {r["variant"]: r for r in data["medians"]}
    expected = 3 * (CPU_PAGES + CPU_WARMUP)
    assert by_variant["baseline"]["produced"] == expected
    assert by_variant["sdk-userevents"]["produced"] == expected
    package = by_variant["package"]
    assert package["unique"] == package["delivered"] == expected, package
    assert package["duplicates"] == 0 and package["dropped"] == {}, package
    assert f"PASS  package: {expected}/{expected} events delivered, 0 repeated" in stdout


# -- benchmarks that run blocks of pages in one process ------------------------------

BLOCK_ROUNDS, BLOCK_PAGES = 1, 20
# One delivering variant's events: 3 a page, the warm-up round included.
BLOCK_EVENTS = 3 * BLOCK_PAGES * (BLOCK_ROUNDS + 1)


def run_blocks(script: str, *args: str) -> str:
    """``script``'s smallest run: one round (and the warm-up) of a few pages per block."""
    blocks = ("--rounds", str(BLOCK_ROUNDS), "--pages", str(BLOCK_PAGES))
    return run_benchmark(script, *args, *blocks, timeout=100)


def table_rows(stdout: str, marker: str) -> dict[str, str]:
    """The report's table rows that hold ``marker``, by their first cell."""
    return {
        line.split("|")[1].strip(): line
        for line in stdout.splitlines()
        if line.startswith("| ") and marker in line
    }


@pytest.mark.timeout(120)
def test_page_cpu_interleaved_reports_every_variant_and_delivers_each_event_once() -> None:
    stdout = run_blocks("page_cpu_interleaved.py", "--endpoint-delay", "0")
    table = table_rows(stdout, "x)")
    assert set(table) == {
        "baseline",
        "scope-only",
        "package",
        "dispatcher",
        "dispatcher-scope-only",
    }
    # Up to the response, the request thread, the whole process: each against the baseline.
    assert table["baseline"].count("(1.00x) | 1.00-1.00") == 3, table["baseline"]
    for row in table.values():
        assert len(re.findall(r"\d+ \(\d+\.\d\dx\) \| \d+\.\d\d-\d+\.\d\d", row)) == 3, row
    delivered = 2 * BLOCK_EVENTS  # two delivering variants
    assert f"# endpoint: {delivered} events in" in stdout, stdout
    assert (
        f"PASS  package, dispatcher: {delivered}/{delivered} events delivered, 0 repeated" in stdout
    )
    for target in ("package, up to the response", "package, whole process", "dispatcher, whole"):
        assert re.search(rf"^(PASS|MISS)  {target}", stdout, re.M), target


@pytest.mark.timeout(120)
def test_page_cpu_interleaved_no_io_variants_send_nothing_to_the_endpoint() -> None:
    variants = "baseline,package,package-no-io,dispatcher-no-io"
    stdout = run_blocks("page_cpu_interleaved.py", "--variants", variants, "--endpoint-delay", "0")
    assert set(table_rows(stdout, "x) |")) == set(variants.split(",")), stdout
    # Only the package's events reach the endpoint, each once.
    delivered = BLOCK_EVENTS
    assert f"# endpoint: {delivered} events in" in stdout, stdout
    assert f"PASS  package: {delivered}/{delivered} events delivered, 0 repeated" in stdout


@pytest.mark.timeout(120)
def test_page_cpu_ab_runs_another_tree_beside_this_one_and_delivers_each_event_once() -> None:
    stdout = run_blocks("page_cpu_ab.py", str(ROOT))
    # The other tree runs as a package of its own, renamed.
    dispatcher = "dispatcher.RequestScopedEventDispatcher"
    assert f"# before: optimizely_middleware_before.{dispatcher}" in stdout, stdout
    assert f"# after: optimizely_middleware.{dispatcher}" in stdout, stdout
    rows = table_rows(stdout, "x (")
    assert set(rows) == {"dispatcher", "package"}, stdout
    for row in rows.values():  # the hand-off and the whole process, after / before
        assert len(re.findall(r"\| \d+\.\d{3}x \(\d+\.\d\d-\d+\.\d\d\)", row)) == 2, row
    delivered = 2 * 2 * BLOCK_EVENTS  # two packages, two wirings
    assert f"PASS  {delivered}/{delivered} events delivered, 0 repeated" in stdout, stdout


@pytest.mark.timeout(60)
def test_thread_wakeups_reports_each_load_and_helper_and_the_sleepers_wakeups() -> None:
    stdout = run_benchmark(
        "thread_wakeups.py",
        *("--rounds", "1", "--seconds", "0.3", "--period", "0.01", "--loads", "page,spin"),
        timeout=50,
    )
    rows = {
        tuple(cell.strip() for cell in line.split("|")[1:3]): line.split("|")[3:-1]
        for line in stdout.splitlines()
        if line.startswith("| ") and "x)" in line
    }
    assert set(rows) == {
        (load, helper) for load in ("page", "spin") for helper in ("none", "blocked", "sleeper")
    }, stdout
    for (load, helper), cells in rows.items():
        if helper == "none":
            assert cells[0].strip().endswith("(1.000x)"), cells
        # Only the sleeper wakes up: wake-ups a second, CPU, switches and lateness per wake.
        measured = [cell.strip() != "-" for cell in cells[2:]]
        assert measured == [helper == "sleeper"] * 4, (load, helper, cells)
        if helper == "sleeper":
            assert float(cells[2]) > 0, cells


# -- closed and open loop with wrk (benchmarks/page_wrk.py) -----------------------


@wrk_benchmark
def test_page_wrk_measures_both_loops_and_counts_every_event(tmp_path: Path) -> None:
    args = ("--runs", "1", "--seconds", "1", "--warmup-seconds", "1", "--endpoint-delay", "0.01")
    data, _ = run_benchmark_to_json("page_wrk.py", *args, out=tmp_path / "wrk.json", timeout=230)
    phases = {(r["framework"], r["phase"], r["variant"]) for r in data["medians"]}
    assert phases == {
        (server, phase, variant)
        for server in ("flask-1x16", "flask-2x8", "starlette")
        for phase in ("closed", "open50", "open80")
        for variant in ("baseline", "middleware")
    }
    for row in data["medians"]:
        assert row["requests"] > 0 and row["errors"] == {}, row
        assert row["p99"] >= row["p50"] > 0, row
        assert row["generator_cpu_share"] > 0, row
        if row["phase"] != "closed":
            assert row["offered_rate"] > 0 and row["sent_rate"] > 0, row
    for delivery in data["deliveries"]:
        assert delivery["produced"] == 3 * delivery["pages"] > 0, delivery
        assert delivery["unique"] == delivery["produced"], delivery
        assert delivery["duplicates"] == 0, delivery


@wrk_benchmark
def test_page_wrk_passes_the_flush_interval_to_the_middleware_servers(tmp_path: Path) -> None:
    # A minute's linger: a POST leaves only when it is full (2,000 events or 1 MB, about
    # 1,800 of these), or at the stop; the default 0.1 s sends about ten a second while
    # the load runs (40 POSTs for 10,674 events here).
    args = ("--servers", "starlette", "--runs", "1", "--seconds", "1", "--warmup-seconds", "1")
    args += ("--endpoint-delay", "0.01", "--flush-interval", "60")
    data, _ = run_benchmark_to_json("page_wrk.py", *args, out=tmp_path / "wrk.json", timeout=230)
    (delivery,) = data["deliveries"]
    assert delivery["unique"] == delivery["produced"] > 0, delivery
    assert delivery["posts"] <= delivery["produced"] // 1500 + 3, delivery


# -- saturation: full CPU, the other core busy (benchmarks/saturation.py) -----------


@wrk_benchmark
def test_saturation_reports_each_server_and_wiring_and_every_event_once(tmp_path: Path) -> None:
    args = ("--short", "--servers", "flask-1x8,starlette", "--endpoint-delay", "0.01")
    out = tmp_path / "saturation.json"
    data, stdout = run_benchmark_to_json("saturation.py", *args, out=out, timeout=230)
    cases = {(r["server"], r["wiring"]) for r in data["rounds"]}
    assert cases == {
        (server, wiring)
        for server in ("flask-1x8", "starlette")
        for wiring in ("middleware", "dispatcher")
    }
    for r in data["rounds"]:
        assert r["processes"] == 1 and r["wrk_errors"] == {}, r
        assert r["produced"] == 3 * r["pages"] > 0, r
        # A 2 s run produces far fewer events than the sender's queue holds: each one
        # must arrive, once, and the dispatcher must count nothing as dropped.
        assert r["unique"] == r["delivered"] == r["produced"], r
        assert r["duplicates"] == 0 and r["dropped"] == {} and r["silently_lost"] == 0, r
        assert 0 <= r["delivered_during_load"] <= r["delivered"], r
        assert r["wrk_cpu"] > 0 and r["server_cpu"] > 0 and r["burner_cpu"] > 0, r
        line = f"| {r['server']} | {r['wiring']} | 1 | "
        assert line in stdout
        assert (
            f"PASS  {r['server']} {r['wiring']}: {r['produced']}/{r['produced']} events "
            "delivered, 0 repeated, 0 dropped" in stdout
        )
    assert "CPUs, load average" in stdout


# -- the delivery engine's ceiling and throughput (benchmarks/bench_delivery.py) ---


@pytest.mark.timeout(150)
def test_bench_delivery_finds_a_ceiling_and_counts_what_arrived(tmp_path: Path) -> None:
    out = tmp_path / "delivery.json"
    data, stdout = run_benchmark_to_json(
        "bench_delivery.py",
        *("--items", "both", "--runs", "1", "--seconds", "1", "--skip-sdk"),
        *("--start-rate", "1500", "--max-rate", "2500", "--rate", "1500"),
        *("--ceiling-delay", "0.01"),
        out=out,
        timeout=140,
    )
    # Both wirings' hand-offs, captured through the public API, are offered.
    assert set(data["ceiling"]) == {"log-events", "user-events"}
    for kind, ceiling in data["ceiling"].items():
        # 1500/s and 2250/s offered, each well within what one process sends.
        assert [round(s["offered_rate"]) for s in ceiling["steps"]] == [1500, 2250]
        assert ceiling["last_clean_rate"] == 2250 and ceiling["first_failing_rate"] is None
        assert ceiling["overload_rate"] == 4500
        for step in ceiling["steps"] + ceiling["confirmed"] + ceiling["overloaded"]:
            assert step["produced"] > 0
            assert step["delivered"] + step["dropped"] == step["produced"], step
            assert step["endpoint_cpu_share"] >= 0, step  # measured (it counts, parses nothing)
        assert ceiling["clean_confirmations"] == len(ceiling["confirmed"]) == 1
        assert f"| {kind} | >= 2250 (never overloaded up to --max-rate) | 1/1 |" in stdout
        assert f"MISS  ceiling, {kind}: 2250 events/s with no drops" in stdout
    endpoint_cpu = [
        step["endpoint_cpu_share"]
        for ceiling in data["ceiling"].values()
        for step in ceiling["steps"] + ceiling["confirmed"] + ceiling["overloaded"]
    ]
    assert sum(endpoint_cpu) > 0  # the endpoint's process is the one measured
    for runs in data["throughput"].values():
        (ours,) = runs["EventSender (defaults)"]
        assert ours["delivered"] == ours["produced"] > 0 and ours["dropped"] == 0, ours
    assert "CPUs, load average" in stdout
