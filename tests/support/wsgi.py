"""Helpers shared by the WSGI, Flask, gunicorn and werkzeug tests."""

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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from optimizely_middleware.dispatcher import (
    RequestScopedEventDispatcher,
    add_request_end_listener,
    remove_request_end_listener,
)
from tests.support.endpoint import ReceivedPost
from tests.support.fakes import free_port, visitor_id_of

ROOT = Path(__file__).resolve().parents[2]
DATAFILE_PATH = ROOT / "tests" / "data" / "datafile.json"


@contextmanager
def hand_offs(dispatcher: RequestScopedEventDispatcher) -> Iterator[list[tuple[list[str], bool]]]:
    """Records (visitor ids, failed) each time a request of ``dispatcher`` ends."""
    ended: list[tuple[list[str], bool]] = []

    def listener(d: RequestScopedEventDispatcher, events: list[Any], failed: bool) -> None:
        if d is dispatcher:
            ended.append(([visitor_id_of(e) for e in events], failed))

    add_request_end_listener(listener)
    try:
        yield ended
    finally:
        remove_request_end_listener(listener)


def visitor_ids(post: ReceivedPost) -> list[str]:
    return [v["visitor_id"] for v in post.visitors]


def event_keys(visitors: list[dict[str, Any]]) -> list[str]:
    return [e["key"] for v in visitors for s in v["snapshots"] for e in s["events"]]


def posts_of(posts: list[ReceivedPost], user: str) -> list[ReceivedPost]:
    """The POSTs that carry at least one event of ``user``."""
    return [p for p in posts if user in visitor_ids(p)]


def visitors_of(posts: list[ReceivedPost], user: str) -> list[dict[str, Any]]:
    return [v for p in posts for v in p.visitors if v["visitor_id"] == user]


def get(port: int, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
    """One GET on a fresh connection; the whole body is read before returning."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_for_port(port: int, process: subprocess.Popen[Any] | None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port}") from None
            time.sleep(0.05)  # readiness poll of another process's port


class Gunicorn:
    """gunicorn (gthread workers) serving ``app`` on 127.0.0.1, as a subprocess.

    Its log is read on a thread, so tests can wait for lines such as
    ``Worker exiting``.
    """

    def __init__(self, app: str, *, env: dict[str, str], args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.lines: list[str] = []
        self._cond = threading.Condition()
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--worker-class",
            "gthread",
            "--threads",
            "4",
            "--config",
            "python:tests.apps.wsgi_gunicorn_conf",
            "--graceful-timeout",
            "30",
            *args,
            app,
        ]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **env},
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._cond:
                self.lines.append(line.rstrip())
                self._cond.notify_all()

    def start(self) -> Gunicorn:
        try:
            wait_for_port(self.port, self.process)
        except BaseException:
            self.kill()
            raise
        return self

    def count(self, pattern: str) -> int:
        return sum(1 for line in self.lines if re.search(pattern, line))

    def wait_for_log(self, pattern: str, n: int = 1, timeout: float = 30.0) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: self.count(pattern) >= n, timeout)
        assert ok, f"expected {n} log lines matching {pattern!r}; log:\n" + "\n".join(self.lines)

    def worker_pids(self) -> set[int]:
        return {
            int(m)
            for line in self.lines
            for m in re.findall(r"Booting worker with pid: (\d+)", line)
        }

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (a graceful stop) and wait for gunicorn to exit."""
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 60.0) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
