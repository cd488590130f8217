"""Helpers of the real-server tests (tests/test_e2e_<server>.py): a server in a
subprocess with its log read on a thread, a load of N requests from several
client threads, and exactly-once counting of event uuids at the endpoint."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.endpoint import EventEndpoint

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
EVENTS_PER_REQUEST = 3
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server command in a subprocess (stdout and stderr merged, read on a thread)."""

    def __init__(self, command: Sequence[str], *, env: dict[str, str], port: int) -> None:
        self.port = port
        self.command = list(command)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # a signal to the test's group never reaches it
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stop_seconds: float | None = None

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._cond:
                self.lines.append(line.rstrip())
                self._cond.notify_all()

    @property
    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def count(self, pattern: str) -> int:
        with self._cond:
            return sum(1 for line in self.lines if re.search(pattern, line))

    def wait_for_line(self, pattern: str, n: int = 1, timeout: float = START_TIMEOUT) -> None:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self.count_locked(pattern) >= n or self.process.poll() is not None,
                timeout,
            )
            found = self.count_locked(pattern) >= n
        assert ok and found, f"expected {n} lines matching {pattern!r}; log:\n{self.log}"

    def count_locked(self, pattern: str) -> int:
        return sum(1 for line in self.lines if re.search(pattern, line))

    def wait_ready(self, pattern: str | None = None) -> ServerProcess:
        """Wait for the ready line (if given), then for the port to accept."""
        if pattern is not None:
            self.wait_for_line(pattern)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.process.poll() is None, f"the server exited:\n{self.log}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
                return self
            except OSError:
                assert time.monotonic() < deadline, f"nothing listens:\n{self.log}"
                time.sleep(0.05)  # readiness poll of another process's port

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` and wait for the exit; ``stop_seconds`` is how long it took."""
        started = time.monotonic()
        self.process.send_signal(sig)
        code = self.wait(timeout)
        self.stop_seconds = time.monotonic() - started
        return code

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)


def get(port: int, path: str, timeout: float = 15.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@dataclass
class Load:
    users: list[str]
    latencies: list[float]

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def run_load(
    port: int, n: int = 300, clients: int = 8, prefix: str = "u", timeout: float = 15.0
) -> Load:
    """``n`` GET /work/<user> requests from ``clients`` threads; each must answer
    200 within ``timeout`` seconds."""
    users = [f"{prefix}{i}" for i in range(n)]

    def one(user: str) -> float:
        started = time.monotonic()
        status, body = get(port, f"/work/{user}", timeout)
        assert status == 200, (status, body[:300])
        return time.monotonic() - started

    pool = ThreadPoolExecutor(clients)
    try:
        latencies = [future.result() for future in [pool.submit(one, user) for user in users]]
    finally:
        # A server that hangs fails the test at the first timeout, not after all of them.
        pool.shutdown(wait=True, cancel_futures=True)
    return Load(users, latencies)


def event_uuids(endpoint: EventEndpoint) -> Counter[str]:
    return Counter(
        event["uuid"]
        for visitor in endpoint.all_visitors()
        for snapshot in visitor["snapshots"]
        for event in snapshot["events"]
    )


def events_per_visitor(endpoint: EventEndpoint) -> Counter[str]:
    return Counter(
        visitor["visitor_id"]
        for visitor in endpoint.all_visitors()
        for snapshot in visitor["snapshots"]
        for _ in snapshot["events"]
    )


def assert_exactly_once(
    endpoint: EventEndpoint,
    users: Sequence[str],
    extra: dict[str, int] | None = None,
    log: str = "",
) -> int:
    """Every event of every user arrived once: 3 per user, no uuid twice,
    nothing else (``extra``: other visitors and their event counts). Returns
    the number of events that arrived. ``log``, the server's output, is shown
    when events are missing."""
    uuids = event_uuids(endpoint)
    twice = {uuid: n for uuid, n in uuids.items() if n > 1}
    assert not twice, f"{len(twice)} events arrived more than once"
    expected = Counter({user: EVENTS_PER_REQUEST for user in users})
    expected.update(extra or {})
    got = events_per_visitor(endpoint)
    missing = sum((expected - got).values())
    unexpected = sum((got - expected).values())
    assert (missing, unexpected) == (0, 0), (
        f"{missing} events missing, {unexpected} unexpected, of {sum(expected.values())}"
        + (f"; the server printed:\n{log}" if log else "")
    )
    return sum(uuids.values())


def report(server: str, sent: int, arrived: int, **figures: Any) -> None:
    """One line of figures per test, for the test log (pytest -s)."""
    extra = " ".join(f"{key}={value}" for key, value in figures.items())
    print(f"\nE2E {server}: events sent={sent} arrived={arrived} {extra}")


@contextmanager
def running(
    command: Sequence[str], endpoint: EventEndpoint, port: int, *, ready: str | None, **env: str
) -> Iterator[ServerProcess]:
    """Start ``command`` with the app's settings in the environment; wait until
    it is ready; kill whatever is left of it at the end."""
    server = ServerProcess(
        command, env={"OPTIMIZELY_TEST_EVENT_ENDPOINT": endpoint.url, **env}, port=port
    )
    try:
        yield server.wait_ready(ready)
    finally:
        endpoint.release()
        server.kill()


def load_then_stop(
    server: ServerProcess, endpoint: EventEndpoint, *, n: int = 300, sig: int = signal.SIGTERM
) -> tuple[Load, int]:
    """The workflow: ``n`` requests while the endpoint holds every POST, so
    that all their events are queued or in flight; then release it and stop
    the server at once. Whatever arrives is there when the server has exited."""
    endpoint.hold()
    load = run_load(server.port, n)
    endpoint.release()
    return load, server.stop(sig)


def python_module(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]
