"""A small HTTP/1.1 load generator, run as its own process.

``concurrency`` keep-alive connections to 127.0.0.1 fetch ``/page?u=<id>``
until ``requests`` answers have come back (or ``max_seconds`` have passed,
after which no new request starts). Each request carries a fresh user id.
Prints one JSON object: the count, errors, wall time and latency percentiles.

By default the load is closed-loop: each connection sends its next request
as soon as the previous answer is in, so the server runs flat out. With
``--rate R`` it is open-loop instead: request ``i`` is due at ``i / R``
seconds, and its latency is counted from that moment, so time spent waiting
for a free connection counts too (no coordinated omission).

To show that the generator itself is not the bottleneck it also reports its
own CPU time (``cpu_s``, ``cpu_share`` of one core over the wall time), the
rate at which it actually sent (``sent_rate``), how late its timers fired
when a connection was free before a request was due (``late_p99``: this grows
when the generator, not the server, falls behind), and the share of requests
that found every connection still busy at their due time (``behind``).

Usage::

    python benchmarks/page_load.py --port 8000 --requests 3000 --concurrency 16 --tag run1
    python benchmarks/page_load.py --port 8000 --requests 3000 --rate 800 --tag run1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

REQUEST_TIMEOUT = 120.0


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (``q`` in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil
    return sorted_values[int(rank) - 1]


class Client:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> int:
        """One GET; reconnects once if a kept-alive connection was closed."""
        for attempt in (1, 2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                return await self._exchange(path)
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _exchange(self, path: str) -> int:
        assert self.reader is not None and self.writer is not None
        self.writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n".encode("latin-1")
        )
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        length = 0
        close = False
        for line in lines:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
            elif name == "transfer-encoding":
                raise ValueError("chunked answers are not expected from the benchmark page")
        if length:
            await self.reader.readexactly(length)
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run(
    port: int,
    requests: int,
    concurrency: int,
    tag: str,
    max_seconds: float,
    rate: float | None = None,
) -> dict[str, Any]:
    latencies: list[float] = []
    lateness: list[float] = []
    behind = 0
    last_send = 0.0
    errors: dict[str, int] = {}
    next_index = 0
    cpu_started = time.process_time()
    started = time.perf_counter()
    deadline = started + max_seconds

    async def worker() -> None:
        nonlocal next_index, behind, last_send
        client = Client(port)
        try:
            while next_index < requests and time.perf_counter() < deadline:
                index = next_index
                next_index += 1
                if rate:
                    begin = started + index / rate
                    wait = begin - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                        lateness.append(time.perf_counter() - begin)
                    else:
                        behind += 1
                else:
                    begin = time.perf_counter()
                last_send = time.perf_counter()
                try:
                    status = await asyncio.wait_for(
                        client.get(f"/page?u={tag}-{index}"), REQUEST_TIMEOUT
                    )
                except (OSError, asyncio.TimeoutError, ValueError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    client.close()
                    continue
                if status != 200:
                    errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
                    continue
                latencies.append(time.perf_counter() - begin)
        finally:
            client.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    latencies.sort()
    lateness.sort()
    send_span = last_send - started
    return {
        "sent": next_index,
        "offered_rate": rate,
        "sent_rate": next_index / send_span if send_span > 0 else float("nan"),
        "late_p50": percentile(lateness, 50),
        "late_p99": percentile(lateness, 99),
        "behind": behind / next_index if next_index else 0.0,
        "cpu_s": cpu,
        "cpu_share": cpu / elapsed if elapsed > 0 else float("nan"),
        "ok": len(latencies),
        "errors": errors,
        "elapsed": elapsed,
        "rps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "p99": percentile(latencies, 99),
        "max": latencies[-1] if latencies else float("nan"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tag", default="u", help="prefix of the user ids")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--rate", type=float, help="requests/s, open-loop (default: closed-loop)")
    args = parser.parse_args(argv)
    result = asyncio.run(
        run(args.port, args.requests, args.concurrency, args.tag, args.max_seconds, args.rate)
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
