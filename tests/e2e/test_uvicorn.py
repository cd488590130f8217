"""End to end under a real uvicorn server on 127.0.0.1, with the real SDK and a
real local event endpoint that holds every POST until the test releases it."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import websocket

from tests.support.asgi import (
    arrivals_by_visitor,
    event_keys,
    posts_per_visitor,
    visitor_ids,
)
from tests.support.endpoint import EventEndpoint
from tests.support.examples import EXAMPLES
from tests.support.load import sigterm_then_release_at
from tests.support.servers import ROOT, ServerProcess
from tests.support.servers import uvicorn as start_uvicorn

EXIT_TIMEOUT = 30.0


@contextmanager
def uvicorn(
    app: str,
    endpoint: EventEndpoint,
    *,
    app_dir: Path = ROOT,
    env: dict[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """``app`` under uvicorn, after one readiness request (its events are from
    user "anonymous"); the endpoint is released and the server killed at the end."""
    server = start_uvicorn(
        app, env={"OPTIMIZELY_EVENT_ENDPOINT": endpoint.url, **(env or {})}, app_dir=app_dir
    )
    try:
        server.start()
        httpx.get(server.url + "/", params={"user": "anonymous"}, timeout=EXIT_TIMEOUT)
        yield server
    finally:
        endpoint.release()
        server.kill()


def own_visitors(endpoint: EventEndpoint) -> list[str]:
    return [v for v in visitor_ids(endpoint.all_visitors()) if v != "anonymous"]


def test_the_response_is_complete_while_every_post_is_held(
    event_endpoint: EventEndpoint, tmp_path: Path
) -> None:
    with uvicorn("tests.apps.starlette_e2e:app", event_endpoint) as server:
        event_endpoint.wait_for_visitors(2)  # the readiness request's events
        arrived_before = event_endpoint.arrived
        event_endpoint.hold()
        responses = [httpx.get(server.url + "/", params={"user": f"u{i}"}) for i in range(5)]
        for i, response in enumerate(responses):
            assert response.status_code == 200
            assert response.text.startswith(f"u{i}:")
            assert len(response.content) == int(response.headers["content-length"]) > 10_000
        event_endpoint.wait_for_arrivals(arrived_before + 1)  # delivery started, held
        posts_before_release = len(event_endpoint.posts)
        event_endpoint.release()
        event_endpoint.wait_for_visitors(2 + 10)
        server.terminate()

    new_posts = event_endpoint.posts[posts_before_release:]
    per_visitor = posts_per_visitor(new_posts)
    assert per_visitor == {f"u{i}": 1 for i in range(5)}
    assert own_visitors(event_endpoint) == sorted([f"u{i}" for i in range(5)] * 2)


def test_the_event_loop_is_never_blocked_while_delivery_is_held(
    event_endpoint: EventEndpoint, tmp_path: Path
) -> None:
    with uvicorn("tests.apps.starlette_e2e:app", event_endpoint) as server:
        event_endpoint.wait_for_visitors(2)
        arrived_before, posts_before = event_endpoint.arrived, len(event_endpoint.posts)
        event_endpoint.hold()
        assert httpx.get(server.url + "/", params={"user": "held"}).status_code == 200
        event_endpoint.wait_for_arrivals(arrived_before + 1)  # the POST is in flight, held
        held_since = time.monotonic()
        start = httpx.get(server.url + "/probe", params={"reset": "1"}).json()
        # While the POST stays held the loop keeps serving: sync endpoints
        # (thread pool) included, and the probe keeps ticking.
        for i in range(5):
            assert httpx.get(server.url + "/sync", params={"user": f"s{i}"}).text == "sync"
        deadline = time.monotonic() + EXIT_TIMEOUT
        while (probe := httpx.get(server.url + "/probe").json())["ticks"] < start["ticks"] + 50:
            assert time.monotonic() < deadline, "the loop stopped ticking"
            time.sleep(0.05)  # polling the server's probe, with a deadline
        held_for = time.monotonic() - held_since
        assert len(event_endpoint.posts) == posts_before  # all still held
        event_endpoint.release()
        event_endpoint.wait_for_visitors(2 + 2 + 10)
        server.terminate()

    # If delivery ran on the loop, the loop would have stalled for as long as the
    # POST was held; the largest lag seen is far below that.
    print(f"event-loop max lag while held: {probe['max_lag'] * 1000:.1f} ms over {held_for:.2f} s")
    assert probe["max_lag"] < held_for


def test_events_arrive_only_after_the_client_has_the_whole_response(
    event_endpoint: EventEndpoint, tmp_path: Path
) -> None:
    received_at: dict[str, float] = {}
    with uvicorn("tests.apps.starlette_e2e:app", event_endpoint) as server:
        event_endpoint.wait_for_visitors(2)
        with httpx.Client(base_url=server.url) as http:
            for i in range(3):
                user = f"g{i}"
                # /gated flushes the sender inside the request, so events that
                # escaped the request early would arrive before the response.
                response = http.get("/gated", params={"user": user})
                assert response.status_code == 200, response.text
                assert response.text.startswith(f"{user}:")
                assert len(response.content) == int(response.headers["content-length"])
                received_at[user] = time.monotonic()
                # The request ends (and its events may go) only after this.
                assert httpx.get(server.url + "/ack", params={"user": user}).text == "ok"
        event_endpoint.wait_for_visitors(2 + 6)
        server.terminate()

    arrivals = arrivals_by_visitor(event_endpoint.posts)
    for user, at in received_at.items():
        assert len(arrivals[user]) == 1
        assert arrivals[user][0] >= at, f"{user}'s events arrived before its response was read"


def stream_then_disconnect(port: int, user: str) -> None:
    """Read a streaming response up to its third chunk, then go away."""
    with socket.create_connection(("127.0.0.1", port), timeout=EXIT_TIMEOUT) as sock:
        sock.sendall(f"GET /stream?user={user} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        received = b""
        while b"chunk2" not in received:
            data = sock.recv(4096)
            assert data, "the server closed the stream early"
            received += data


def upload_then_disconnect(port: int, user: str) -> None:
    """Announce a 100 kB body, send 10 bytes of it, then go away."""
    with socket.create_connection(("127.0.0.1", port), timeout=EXIT_TIMEOUT) as sock:
        sock.sendall(
            f"POST /upload?user={user} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n".encode()
            + b"0123456789"
        )


def websocket_then_disconnect(port: int, user: str) -> None:
    """One message and its reply, then the TCP connection closes without a close frame."""
    connection = websocket.create_connection(f"ws://127.0.0.1:{port}/ws", timeout=EXIT_TIMEOUT)
    connection.send(user)
    assert connection.recv() == f"hello {user}"
    connection.shutdown()


@pytest.mark.parametrize("app", ["app", "decorated_app"], ids=["middleware", "decorator"])
def test_the_same_client_disconnect_is_never_a_failed_request(
    app: str, event_endpoint: EventEndpoint, tmp_path: Path
) -> None:
    """With failed_requests="discard": a request that raised is discarded, while
    a client that goes away mid-stream, mid-upload or from a websocket loses
    nothing, whether the app has the middleware or the endpoint decorator."""
    env = {"OPTIMIZELY_TEST_FAILED_REQUESTS": "discard"}
    with uvicorn(f"tests.apps.starlette_e2e:{app}", event_endpoint, env=env) as server:
        readiness = 2 if app == "app" else 1
        event_endpoint.wait_for_visitors(readiness)
        port = int(server.url.rsplit(":", 1)[1])
        assert httpx.get(server.url + "/boom", params={"user": "boom"}).status_code == 500
        stream_then_disconnect(port, "streamer")
        upload_then_disconnect(port, "uploader")
        expected = ["streamer"] * 3 + ["uploader"]
        if app == "app":  # the decorator is for HTTP endpoints
            websocket_then_disconnect(port, "ws-user")
            expected.append("ws-user")
        event_endpoint.wait_for_visitors(readiness + len(expected))
        stats = httpx.get(server.url + "/stats").json()
        server.terminate()

    assert own_visitors(event_endpoint) == sorted(expected)
    assert (stats["failed_requests"], stats["dropped"]) == (1, {"failed_request": 1}), server.log
    assert stats["open_scopes"] == (1 if app == "app" else 0)  # the /stats request itself


@pytest.mark.parametrize(
    "app", ["tests.apps.starlette_e2e:app", "tests.apps.asgi_bare:app"], ids=["starlette", "bare"]
)
def test_sigterm_after_a_burst_delivers_every_event_before_exit(
    app: str, event_endpoint: EventEndpoint, tmp_path: Path
) -> None:
    users = [f"burst{i}" for i in range(40)]
    with uvicorn(app, event_endpoint) as server:
        event_endpoint.wait_for_visitors(2)
        arrived_before = event_endpoint.arrived
        event_endpoint.hold()
        with httpx.Client(base_url=server.url) as http, ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda u: http.get("/", params={"user": u}), users))
        assert all(r.status_code == 200 for r in responses)
        event_endpoint.wait_for_arrivals(arrived_before + 1)
        # Released once uvicorn is in its lifespan shutdown: what arrives next is
        # delivered by the shutdown flush.
        returncode = sigterm_then_release_at(
            server, event_endpoint, "Waiting for application shutdown."
        )

    # No waiting here: everything must have been received before the exit.
    delivered = own_visitors(event_endpoint)
    assert delivered == sorted(users * 2), server.log
    assert returncode in (0, -signal.SIGTERM), server.log
    assert "Traceback" not in server.log
    assert "Application shutdown complete." in server.log


def test_the_fastapi_example_under_uvicorn(event_endpoint: EventEndpoint, tmp_path: Path) -> None:
    with uvicorn("fastapi_app:app", event_endpoint, app_dir=EXAMPLES) as server:
        event_endpoint.wait_for_visitors(1)
        arrived_before = event_endpoint.arrived
        event_endpoint.hold()
        with httpx.Client(base_url=server.url) as http:
            assert http.get("/", params={"user": "eve"}).json()["user"] == "eve"
            assert http.get("/buy", params={"user": "eve"}).json()["bought"] is True
        event_endpoint.wait_for_arrivals(arrived_before + 1)
        sigterm_then_release_at(server, event_endpoint, "Waiting for application shutdown.")

    assert own_visitors(event_endpoint) == ["eve"] * 3
    assert sorted(event_keys(event_endpoint.posts)) == ["campaign_activated"] * 3 + ["purchase"]


def test_a_fastapi_app_configured_only_by_the_environment(
    event_endpoint: EventEndpoint, tmp_path: Path
) -> None:
    """OptimizelyFastAPI(app) with no keywords: the datafile and the event endpoint
    come from OPTIMIZELY_* variables. Every event of a burst arrives exactly once,
    delivered by the lifespan shutdown after SIGTERM, and the app's own lifespan runs."""
    users = [f"env{i}" for i in range(20)]
    env = {"OPTIMIZELY_DATAFILE_PATH": str(ROOT / "tests" / "data" / "datafile.json")}
    with uvicorn("tests.apps.fastapi_env:app", event_endpoint, env=env) as server:
        event_endpoint.wait_for_visitors(1)  # the readiness request's decision
        server.wait_for_line("app lifespan: started")
        arrived_before = event_endpoint.arrived
        event_endpoint.hold()
        with httpx.Client(base_url=server.url) as http, ThreadPoolExecutor(4) as pool:
            pages = list(pool.map(lambda u: http.get("/", params={"user": u}), users))
            buys = list(pool.map(lambda u: http.get("/buy", params={"user": u}), users))
        assert [r.json()["user"] for r in pages] == users
        assert all(r.json()["bought"] for r in buys)
        event_endpoint.wait_for_arrivals(arrived_before + 1)
        returncode = sigterm_then_release_at(server, event_endpoint, "app lifespan: shutting down")

    # No waiting here: everything must have been received before the exit.
    assert own_visitors(event_endpoint) == sorted(users * 2), server.log
    assert sorted(event_keys(event_endpoint.posts)) == (
        ["campaign_activated"] * (len(users) + 1) + ["purchase"] * len(users)
    )
    assert returncode in (0, -signal.SIGTERM), server.log
    assert "Traceback" not in server.log
    assert "Application shutdown complete." in server.log
