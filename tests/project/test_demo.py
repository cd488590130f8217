"""The demo (examples/demo.py, what ./scripts/demo runs), as a subprocess."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

ROOT = Path(__file__).parents[2]
DEMO = ROOT / "examples" / "demo.py"
WAIT = 20.0
RUN_TIMEOUT = 120.0

ROW = re.compile(
    r"^\s+(\d+)\s+GET (/\S*)\?user=(\S+)\s+(\d{3})\s+([\d.]+) ms\s+(\d+)\s+(\d+)"
    r"\s+\+([\d.]+) ms\s+\+([\d.]+) ms$"
)


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEMO), *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        cwd=ROOT,
    )


def test_demo_reports_every_event_delivered_after_its_response() -> None:
    result = run_demo()
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout

    assert "answers 204 after 200 ms" in out
    rows = [m for m in map(ROW.match, out.splitlines()) if m]
    assert [m.group(1) for m in rows] == ["1", "2", "3", "4", "5"]
    for m in rows:
        path, status, events, posts = m.group(2), m.group(4), int(m.group(6)), int(m.group(7))
        assert status == "200"
        assert events == (2 if path == "/buy" else 1)
        assert posts >= 1
        reached, answered = float(m.group(8)), float(m.group(9))
        # Event times count from the hand-off after the response, so they are >= 0,
        # and the endpoint answers no sooner than its 200 ms delay after arrival.
        assert answered >= reached + 200.0 - 1.0

    assert "7 events produced by 5 requests, 7 delivered to the endpoint" in out
    assert "0 lost." in out
    assert "OK: every event arrived, and only after its response had been sent." in out
    # What the local endpoint printed for those POSTs.
    assert "decision    new_checkout: new_checkout_test (feature-test) -> on" in out
    assert "conversion  purchase  revenue=4200 value=42.0" in out
    for visitor in ("alice", "bob", "carol", "dave", "erin"):
        assert f"visitor '{visitor}'" in out


def test_demo_fails_when_events_are_lost() -> None:
    # An endpoint that rejects every batch (400 is final, not retried): nothing arrives.
    result = run_demo("--status", "400", "--requests", "2", "--delay", "0")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "3 events produced by 2 requests, 0 delivered to the endpoint" in result.stdout
    assert "FAILED: 3 event(s) did not arrive." in result.stdout
    assert "'rejected': 3" in result.stdout
    # The sender says so too, in the log.
    assert "rejected" in result.stderr


class Serving:
    """``examples/demo.py --serve`` as a subprocess, read line by line."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(DEMO), "--serve", "--delay", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def read_until(self, text: str) -> list[str]:
        seen: list[str] = []
        while not seen or text not in seen[-1]:
            try:
                seen.append(self.lines.get(timeout=WAIT))
            except queue.Empty:
                raise AssertionError(f"{text!r} not printed; got {seen!r}") from None
        return seen

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def serving() -> Iterator[Serving]:
    demo = Serving()
    try:
        yield demo
    finally:
        demo.kill()


def test_serve_keeps_running_for_a_browser(serving: Serving) -> None:
    printed = serving.read_until("Ctrl+C to stop.")
    links = dict(
        (line.split(None, 1)[1], line.split()[0]) for line in printed if line.startswith("  http")
    )
    buy_url = links["the app, with a purchase"]
    assert buy_url.startswith("http://127.0.0.1:") and buy_url.endswith("/buy?user=alice")
    inspector = links["the inspector: what the app sent, live"]
    assert inspector.startswith("http://127.0.0.1:") and inspector.endswith("/")
    # On the event endpoint's port, not the app's.
    assert urlsplit(inspector).port != urlsplit(buy_url).port

    response = requests.get(buy_url, timeout=WAIT)
    assert response.status_code == 200
    assert "Thanks for your order, alice" in response.text
    serving.read_until("conversion  purchase  revenue=4200 value=42.0")
    # The inspector shows the same POSTs.
    assert "<title>Optimizely events" in requests.get(inspector, timeout=WAIT).text
    listing = requests.get(inspector + "api/posts", params={"event": "purchase"}, timeout=WAIT)
    (purchase,) = [
        c for p in listing.json()["posts"] for v in p["visitors"] for c in v["conversions"]
    ]
    assert (purchase["event_key"], purchase["revenue"]) == ("purchase", 4200)

    serving.process.send_signal(signal.SIGINT)
    stopped = serving.read_until("Stopped:")
    assert "Stopped: 1 requests, 2 events, 2 delivered, dropped={}." in stopped[-1]
    assert serving.process.wait(timeout=WAIT) == 0
