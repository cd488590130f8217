"""Load for the real-server tests and their exactly-once count: N requests from
several client threads, then every event uuid counted at the endpoint.

    load, code = load_then_stop(server, event_endpoint, n=200)
    arrived = assert_exactly_once(event_endpoint, load.users)
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tests.support.endpoint import EventEndpoint
from tests.support.servers import ServerProcess, get, running

EVENTS_PER_REQUEST = 3


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


def arrived_events(endpoint: EventEndpoint) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each event that arrived at ``endpoint``, with its visitor id."""
    for visitor in endpoint.all_visitors():
        for snapshot in visitor["snapshots"]:
            for event in snapshot["events"]:
                yield visitor["visitor_id"], event


def event_uuids(endpoint: EventEndpoint) -> Counter[str]:
    return Counter(event["uuid"] for _, event in arrived_events(endpoint))


def events_per_visitor(endpoint: EventEndpoint) -> Counter[str]:
    return Counter(visitor for visitor, _ in arrived_events(endpoint))


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


def sigterm_then_release_at(server: ServerProcess, endpoint: EventEndpoint, line: str) -> int:
    """SIGTERM; once the server logs ``line`` (and still runs), release the held
    endpoint, so that what arrives from then on was sent by the code that runs at
    that point (a lifespan shutdown, a SIGTERM handler). Returns the exit code."""
    server.process.send_signal(signal.SIGTERM)
    server.wait_for_line(line)
    assert server.process.poll() is None, server.log
    endpoint.release()
    return server.wait()


def load_then_sigterm_flush(
    server: ServerProcess, endpoint: EventEndpoint, *, n: int
) -> tuple[Load, int]:
    """For a server that dies by SIGTERM, with ``install_sigterm_flush``: ``n``
    requests while the endpoint holds every POST, then SIGTERM; the endpoint is
    released only once the handler runs, so what arrives is delivered by the
    handler alone. Returns the load and the exit code."""
    endpoint.hold()
    load = run_load(server.port, n)
    return load, sigterm_then_release_at(server, endpoint, "SIGTERM: flushing Optimizely events")


def every_event_arrives_once_at_stop(
    command: Sequence[str],
    endpoint: EventEndpoint,
    port: int,
    *,
    ready: str | None,
    name: str,
    n: int,
    sig: int = signal.SIGTERM,
    startup_events: int = 0,
    **env: str,
) -> ServerProcess:
    """The real-server test most servers share: start ``command``, run
    ``load_then_stop``; every event must arrive exactly once (plus
    ``startup_events`` from visitor "startup", sent at import) and the server
    exit with 0. Prints one report line; returns the stopped server (its log)."""
    with running(command, endpoint, port, ready=ready, **env) as server:
        load, code = load_then_stop(server, endpoint, n=n, sig=sig)
    extra = {"startup": startup_events} if startup_events else None
    arrived = assert_exactly_once(endpoint, load.users, extra, log=server.log)
    assert code == 0, server.log
    report(
        name, EVENTS_PER_REQUEST * n + startup_events, arrived, stop_s=f"{server.stop_seconds:.2f}"
    )
    return server
