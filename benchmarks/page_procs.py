"""Process plumbing for the page benchmark: free ports, the endpoint, the
servers, CPU time of a process tree from /proc, and clean stops."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def delivered_once(counts: dict[str, int], expected: int) -> tuple[bool, int, int]:
    """From an endpoint's ``counts``: (each of ``expected`` events arrived exactly once,
    unique event uuids, repeated ones)."""
    unique, repeated = counts.get("unique_uuids", 0), counts.get("duplicate_uuids", 0)
    return unique == counts.get("events", 0) == expected and repeated == 0, unique, repeated


def median_ratio(numerators: list[float], denominators: list[float]) -> tuple[float, float, float]:
    """(median, lowest, highest) of the ratios of paired figures, each block's against the
    one it is compared with in the same round; pairs whose denominator is 0 are left out."""
    ratios = [a / b for a, b in zip(numerators, denominators, strict=True) if b]
    return statistics.median(ratios), min(ratios), max(ratios)


def format_load(load: tuple[float, ...]) -> str:
    """A load average as the reports print it: ``0.52 0.61 0.89``."""
    return " ".join(f"{x:.2f}" for x in load)


def describe_machine() -> str:
    """One header line: CPUs, load average, Python, and which package code is measured.

    The package is found as the benchmark's processes will import it (so
    ``PYTHONPATH=<a checkout of another commit>`` measures that commit), and
    named by its git commit, or by a ``COMMIT`` file beside it.
    """
    import importlib.util

    load = format_load(os.getloadavg())
    spec = importlib.util.find_spec("optimizely_middleware")
    where = Path(spec.origin).resolve().parent.parent if spec and spec.origin else None
    commit = "unknown"
    if where is not None:
        described = subprocess.run(
            ["git", "-C", str(where), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        marker = where / "COMMIT"
        if described:
            dirty = subprocess.run(
                ["git", "-C", str(where), "status", "--porcelain", "--", "optimizely_middleware"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            commit = described + (" (+ uncommitted changes)" if dirty else "")
        elif marker.exists():
            commit = marker.read_text().strip()
    python = sys.version.split()[0]
    return (
        f"# {os.cpu_count()} CPUs, load average {load}, Python {python}; "
        f"optimizely_middleware from {where} at {commit}"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get_json(port: int, path: str, timeout: float = 5.0) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise OSError(f"GET {path}: HTTP {response.status}")
        return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()
    finally:
        connection.close()


def stop_process(process: subprocess.Popen[Any], timeout: float) -> float | None:
    """SIGTERM, wait up to ``timeout`` s, then kill the whole group.

    Returns the seconds the process took to exit after SIGTERM, or None when
    it had to be killed.
    """
    if process.poll() is not None:
        return 0.0
    started = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
        return time.monotonic() - started
    except subprocess.TimeoutExpired:
        kill_group(process)
        return None


def kill_group(process: subprocess.Popen[Any]) -> None:
    """SIGKILL the process and everything in its process group (it was
    started with ``start_new_session=True``, so that is only its own tree)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)


def _stat_fields(pid: str) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of ``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(entry)
        if fields is None:
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        times[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo.extend(children.get(pid, ()))
    return total


def read_ready_line(stream: IO[bytes], timeout: float) -> str:
    """The first line a child prints, or TimeoutError."""
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    try:
        if not selector.select(timeout):
            raise TimeoutError("no READY line from the child process")
        return stream.readline().decode().strip()
    finally:
        selector.close()


@dataclass
class Endpoint:
    """The local event endpoint process (or, for ``down``, a port nobody listens on)."""

    mode: str
    delay: float
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/events"

    def start(self) -> Endpoint:
        if self.mode == "down":
            self.port = free_port()  # closed again at once: connection refused
            return self
        status = "500" if self.mode == "500" else "200"
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "page_endpoint.py"),
                *("--delay", str(self.delay), "--status", status),
                "--defer-parse",  # the server measured gets every core while it runs
            ],
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        line = read_ready_line(self.process.stdout, 20.0)
        if not line.startswith("READY "):
            raise RuntimeError(f"event endpoint did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def counts(self) -> dict[str, int]:
        if self.process is None:
            return {"posts": 0, "accepted_posts": 0, "visitors": 0, "rejected_visitors": 0}
        result: dict[str, int] = get_json(self.port, "/_counts")
        return result

    def settled_counts(self, timeout: float = 5.0) -> dict[str, int]:
        """Counts once they stop changing (POSTs still in socket buffers land)."""
        deadline = time.monotonic() + timeout
        previous = self.counts()
        while time.monotonic() < deadline:
            time.sleep(0.25)
            current = self.counts()
            if current["posts"] == previous["posts"]:
                return current
            previous = current
        return previous

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, 5.0)


def server_command(framework: str, port: int) -> list[str]:
    if framework == "flask":
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(HERE / "page_gunicorn_conf.py"),
            "--pythonpath",
            str(HERE),
            "--bind",
            f"127.0.0.1:{port}",
            "page_flask_app:app",
        ]
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(HERE),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--lifespan",
        "on",
        "--no-access-log",
        "--log-level",
        "warning",
        "--backlog",
        "1024",
        "page_starlette_app:app",
    ]


def server_shape(label: str) -> tuple[str, dict[str, str]]:
    """``flask-1x16`` -> ("flask", gunicorn's worker and thread counts); ``starlette`` as is.

    The one place a server label of the page benchmarks is read: ``flask`` is
    gunicorn gthread (``flask-<workers>x<threads>``, plain ``flask`` is
    ``page_gunicorn_conf``'s default of 2 x 8), ``starlette`` is uvicorn with
    one worker.
    """
    framework, _, shape = label.partition("-")
    if framework == "starlette" and not shape:
        return framework, {}
    if framework == "flask":
        if not shape:
            return framework, {}
        workers, _, threads = shape.partition("x")
        if workers.isdigit() and threads.isdigit() and int(workers) and int(threads):
            return framework, {"BENCH_WORKERS": workers, "BENCH_THREADS": threads}
    raise ValueError(f"unknown server {label!r}: flask-<workers>x<threads>, flask or starlette")


@dataclass
class Server:
    framework: str
    variant: str
    event_url: str
    datafile: Path
    work_dir: Path
    env: dict[str, str] = field(default_factory=dict)  # e.g. BENCH_WORKERS, BENCH_THREADS
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.work_dir / "server.log"

    @property
    def stats_dir(self) -> Path:
        return self.work_dir / "stats"

    def start(self, timeout: float = 60.0) -> Server:
        self.port = free_port()
        self.stats_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            BENCH_VARIANT=self.variant,
            BENCH_EVENT_URL=self.event_url,
            BENCH_DATAFILE=str(self.datafile),
            BENCH_STATS_DIR=str(self.stats_dir),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.env)
        # Nothing in the servers may go through a proxy: all traffic is loopback.
        for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            env.pop(name, None)
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                server_command(self.framework, self.port),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                # Not the repository: gunicorn and ``python -m`` put the working
                # directory first on sys.path, and the package measured must be
                # the one on PYTHONPATH or installed (see describe_machine).
                cwd=self.work_dir,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.framework} server exited at start:\n{self.log_tail()}")
            try:
                if get_json(self.port, "/healthz", timeout=2.0) == "ok":
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.framework} server not ready:\n{self.log_tail()}")
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        assert self.process is not None
        return tree_cpu_seconds(self.process.pid)

    def stop(self, timeout: float = 90.0) -> float | None:
        assert self.process is not None
        return stop_process(self.process, timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            kill_group(self.process)

    def process_stats(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.stats_dir.glob("stats-*.json"))]

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def run_load(
    port: int,
    requests: int,
    concurrency: int,
    tag: str,
    max_seconds: float,
    rate: float | None = None,
) -> dict[str, Any]:
    """Run the load generator in its own process and return its JSON result."""
    completed = subprocess.run(
        [
            sys.executable,
            str(HERE / "page_load.py"),
            *("--port", str(port), "--requests", str(requests)),
            *("--concurrency", str(concurrency), "--tag", tag, "--max-seconds", str(max_seconds)),
            *(("--rate", str(rate)) if rate else ()),
        ],
        capture_output=True,
        timeout=max_seconds + 180,
        check=True,
    )
    result: dict[str, Any] = json.loads(completed.stdout)
    return result
