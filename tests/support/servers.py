"""Starting real servers for the tests: a server command in a subprocess (its log
read on a thread), waiting for its port, stopping it by a signal; a WSGI or ASGI
app served on a thread of the test; one GET on a fresh connection.

Every test that starts a server uses these::

    with running(python_module("waitress", ...), event_endpoint, port, ready="Serving on") as s:
        s.stop(signal.SIGINT)
"""

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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.endpoint import EventEndpoint

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, alive: Callable[[], bool] = lambda: True, timeout: float = START_TIMEOUT
) -> None:
    """Wait until 127.0.0.1:``port`` accepts a connection; fail at once if ``alive``
    says the server has exited."""
    deadline = time.monotonic() + timeout
    while True:
        assert alive(), f"the server exited before listening on {port}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on 127.0.0.1:{port}"
            time.sleep(0.05)  # readiness poll of another process's port


def python_module(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


class ServerProcess:
    """A server command in a subprocess (stdout and stderr merged, read on a thread),
    in a session of its own, so a signal to the test's group never reaches it."""

    def __init__(
        self, command: Sequence[str], *, env: dict[str, str], port: int, cwd: Path = ROOT
    ) -> None:
        self.port = port
        self.command = list(command)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self.process = subprocess.Popen(
            self.command,
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
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
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def count(self, pattern: str) -> int:
        with self._cond:
            return self._count_locked(pattern)

    def _count_locked(self, pattern: str) -> int:
        return sum(1 for line in self.lines if re.search(pattern, line))

    def wait_for_line(self, pattern: str, n: int = 1, timeout: float = START_TIMEOUT) -> None:
        """Wait for ``n`` log lines matching ``pattern``; fail when the log ends first."""
        with self._cond:
            self._cond.wait_for(lambda: self._count_locked(pattern) >= n or self._eof, timeout)
            found = self._count_locked(pattern) >= n
        assert found, f"expected {n} lines matching {pattern!r}; log:\n{self.log}"

    def worker_pids(self) -> set[int]:
        """gunicorn's workers, from its "Booting worker" lines."""
        with self._cond:
            return {
                int(m)
                for line in self.lines
                for m in re.findall(r"Booting worker with pid: (\d+)", line)
            }

    def wait_ready(self, pattern: str | None = None) -> ServerProcess:
        """Wait for the ready line (if given), then for the port to accept."""
        if pattern is not None:
            self.wait_for_line(pattern)
        try:
            wait_for_port(self.port, lambda: self.process.poll() is None)
        except AssertionError as error:
            raise AssertionError(f"{error}; log:\n{self.log}") from None
        return self

    def start(self, ready: str | None = None) -> ServerProcess:
        """``wait_ready``, killing the server if it never gets there."""
        try:
            return self.wait_ready(ready)
        except BaseException:
            self.kill()
            raise

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` and wait for the exit; ``stop_seconds`` is how long it took."""
        started = time.monotonic()
        self.process.send_signal(sig)
        code = self.wait(timeout)
        self.stop_seconds = time.monotonic() - started
        return code

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM (a graceful stop for most servers) and wait for the exit."""
        return self.stop(signal.SIGTERM, timeout)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code

    def kill(self) -> None:
        """Kill whatever is left of the server, its workers included."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)


def gunicorn(app: str, *args: str, env: dict[str, str]) -> ServerProcess:
    """gunicorn (gthread workers, 4 threads) serving ``app`` on a free port; call
    ``start()`` to wait until it listens."""
    port = free_port()
    command = python_module(
        "gunicorn",
        *("--bind", f"127.0.0.1:{port}", "--worker-class", "gthread", "--threads", "4"),
        *("--config", "python:tests.apps.wsgi_gunicorn_conf", "--graceful-timeout", "30"),
        *args,
        app,
    )
    return ServerProcess(command, env=env, port=port)


def uvicorn(app: str, *, env: dict[str, str], app_dir: Path = ROOT) -> ServerProcess:
    """uvicorn serving ``app`` (``module:attribute`` under ``app_dir``) on a free port;
    call ``start()`` to wait until it listens."""
    port = free_port()
    command = python_module(
        "uvicorn", app, "--app-dir", str(app_dir), "--host", "127.0.0.1", "--port", str(port)
    )
    return ServerProcess(command, env=env, port=port)


@contextmanager
def running(
    command: Sequence[str], endpoint: EventEndpoint, port: int, *, ready: str | None, **env: str
) -> Iterator[ServerProcess]:
    """Start ``command`` with the test apps' event endpoint in the environment; wait
    until it is ready; release the endpoint and kill whatever is left at the end."""
    server = ServerProcess(
        command, env={"OPTIMIZELY_TEST_EVENT_ENDPOINT": endpoint.url, **env}, port=port
    )
    try:
        yield server.wait_ready(ready)
    finally:
        endpoint.release()
        server.kill()


@contextmanager
def killed_at_the_end(endpoint: EventEndpoint) -> Iterator[list[ServerProcess]]:
    """A list for the servers a test starts: at the end the endpoint is released
    (a held POST would keep a server from exiting) and each server is killed."""
    started: list[ServerProcess] = []
    try:
        yield started
    finally:
        endpoint.release()
        for server in started:
            server.kill()


@contextmanager
def werkzeug_in_a_thread(app: Any) -> Iterator[int]:
    """The werkzeug server (threaded) serving the WSGI ``app`` on a thread of the
    test; yields its port and shuts it down at the end."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join(30)
        server.server_close()
        assert not thread.is_alive(), "the werkzeug server did not stop"


@contextmanager
def uvicorn_in_a_thread(app: Any) -> Iterator[str]:
    """uvicorn serving the ASGI ``app`` on a thread of the test named
    ``uvicorn-loop`` (the event loop's thread); yields its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="uvicorn-loop", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def get(port: int, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
    """One GET on a fresh connection; the whole body is read before returning."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()
