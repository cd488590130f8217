"""The page latency benchmark still runs end to end and reports what it measured.

A tiny run (20 requests, one run) of the baseline and the middleware variant
on both frameworks: real gunicorn and uvicorn servers, the real event endpoint
process and load generator. No timing is asserted, only the report's content.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "page_latency.py"
REQUESTS = 20
WARMUP = 4


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench") / "report.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            *("--framework", "both", "--variants", "middleware", "--endpoint-mode", "delay"),
            *("--requests", str(REQUESTS), "--warmup", str(WARMUP), "--runs", "1"),
            *("--endpoint-delay", "0.01", "--json", str(out)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return json.loads(out.read_text()), completed.stdout


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
