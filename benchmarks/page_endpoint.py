"""A local stand-in for the Optimizely event API, run as its own process.

It answers every POST after a fixed delay (like a real internet round trip)
with 200 or with 500, and counts POSTs, visitors and event uuids (unique and
repeated, so that "delivered exactly once" can be checked). Bodies are parsed
with orjson where it is installed (a dependency of the package on CPython):
at tens of thousands of events a second the stdlib parser alone would take
most of a core, and the endpoint shares the machine with what it measures. ``GET /_counts``
returns the counters as JSON. It listens on 127.0.0.1 only, handles HTTP/1.1
keep-alive, and uses asyncio so a slow answer costs no thread.

``--defer-parse`` keeps each body as it arrives and parses them all when
the counts are asked for: the real event API parses on its own machines,
so a benchmark whose server takes every core (gunicorn with 2 workers on
2 cores) should not lose CPU to the stand-in's parsing while it measures.
The counts are the same (what arrived before the ``GET /_counts``).

``--count-only`` counts visitors and events by their keys in the raw body
(``"visitor_id":`` and ``"uuid":``) without parsing it and without uuids:
for the ceiling benchmark, which resends one pool of events (so uuids
repeat by design) at rates where parsing would take the endpoint's whole
core.

Usage::

    python benchmarks/page_endpoint.py --delay 0.1 --status 200
    # prints "READY <port>" once listening; stop it with SIGTERM
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable
from typing import Any

LOADS: Callable[[bytes], Any]
try:
    from orjson import loads as LOADS
except ImportError:  # pragma: no cover - PyPy, or orjson not installed
    LOADS = json.loads
MAX_BODY = 10 * 1024 * 1024


class Counters:
    def __init__(self) -> None:
        self.posts = 0  # every POST whose body arrived, whatever the answer
        self.accepted_posts = 0  # answered 2xx
        self.visitors = 0  # visitors in accepted POSTs: events delivered
        self.rejected_visitors = 0  # visitors in POSTs answered with an error
        self.events = 0  # events (snapshots[].events[]) in accepted POSTs
        self.unique_uuids = 0  # distinct event uuids among them
        self.duplicate_uuids = 0  # events whose uuid had been accepted before
        self.bad_bodies = 0
        self.connections = 0
        self._seen: set[str] = set()

    def count_events(self, visitors: list[Any]) -> None:
        """Count the events of an accepted body, and the uuids seen before."""
        seen = self._seen
        for visitor in visitors:
            for snapshot in visitor.get("snapshots", ()):
                for event in snapshot.get("events", ()):
                    self.events += 1
                    uuid = event.get("uuid")
                    if uuid in seen:
                        self.duplicate_uuids += 1
                    else:
                        seen.add(uuid)
                        self.unique_uuids += 1

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


class EndpointServer:
    def __init__(
        self, delay: float, status: int, count_only: bool = False, defer_parse: bool = False
    ) -> None:
        self.delay = delay
        self.status = status
        self.count_only = count_only
        self.defer_parse = defer_parse
        self.unparsed: list[bytes] = []  # bodies that arrived, to count (--defer-parse)
        self.counters = Counters()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counters.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, target, _ = request_line.split(" ", 2)
                headers = {}
                for line in header_lines:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await self._read_body(reader, headers)
                if method == "GET" and target.startswith("/_counts"):
                    self._count_unparsed()
                    await self._answer(writer, 200, json.dumps(self.counters.as_dict()).encode())
                elif method == "POST":
                    await self._post(writer, body)
                else:
                    await self._answer(writer, 404, b"")
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        except ValueError:
            await self._answer(writer, 400, b"")
        finally:
            writer.close()

    async def _read_body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return b"".join(chunks)
                chunks.append(await reader.readexactly(size + 2))
                chunks[-1] = chunks[-1][:-2]
        length = int(headers.get("content-length", "0"))
        if length > MAX_BODY:
            raise ValueError("body too large")
        return await reader.readexactly(length) if length else b""

    async def _post(self, writer: asyncio.StreamWriter, body: bytes) -> None:
        self.counters.posts += 1
        if self.defer_parse:
            self.unparsed.append(body)
        else:
            self._count(body)
        if self.delay:
            await asyncio.sleep(self.delay)
        await self._answer(writer, self.status, b"")

    def _count_unparsed(self) -> None:
        bodies, self.unparsed = self.unparsed, []
        for body in bodies:
            self._count(body)

    def _count(self, body: bytes) -> None:
        # Counted as arrived, as the real event API records what it receives.
        counters = self.counters
        visitor_list: list[Any] = []
        if self.count_only:
            visitors = body.count(b'"visitor_id":')
        else:
            try:
                visitor_list = LOADS(body).get("visitors", [])
                visitors = len(visitor_list)
            except (ValueError, AttributeError):
                counters.bad_bodies += 1
                visitors = 0
        if 200 <= self.status < 300:
            counters.accepted_posts += 1
            counters.visitors += visitors
            if self.count_only:
                counters.events += body.count(b'"uuid":')
            try:
                counters.count_events(visitor_list)
            except (AttributeError, TypeError):
                counters.bad_bodies += 1
        else:
            counters.rejected_visitors += visitors

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
        reason = {200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found"}.get(
            status, "Internal Server Error" if status >= 500 else "Status"
        )
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
            "Content-Type: application/json\r\n\r\n".encode("latin-1")
            + body
        )
        await writer.drain()


async def serve(
    port: int, delay: float, status: int, count_only: bool = False, defer_parse: bool = False
) -> None:
    endpoint = EndpointServer(delay, status, count_only, defer_parse)
    server = await asyncio.start_server(endpoint.handle, "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound_port = server.sockets[0].getsockname()[1]
    print(f"READY {bound_port}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.1, help="seconds before answering")
    parser.add_argument("--status", type=int, default=200)
    parser.add_argument(
        "--count-only", action="store_true", help="count by keys in the raw body, parse nothing"
    )
    parser.add_argument(
        "--defer-parse", action="store_true", help="keep the bodies, parse them for the counts"
    )
    args: Any = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.delay, args.status, args.count_only, args.defer_parse))


if __name__ == "__main__":
    sys.exit(main())
