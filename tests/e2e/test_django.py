"""End to end: the example Django project (its own ``mysite/wsgi.py`` and
``mysite/asgi.py``, plus the test views) served by gunicorn (gthread) and by
uvicorn through Django's ASGI handler, with the real SDK, the real datafile
and a real local event endpoint on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.django import DATAFILE_PATH, EXAMPLE_PROJECT, DatafileServer
from tests.support.endpoint import EventEndpoint
from tests.support.load import event_uuids
from tests.support.servers import ServerProcess, get, gunicorn, killed_at_the_end, uvicorn
from tests.support.wsgi import visitors_of

pytestmark = pytest.mark.slow

EXIT_TIMEOUT = 60.0


def gunicorn_project(env: dict[str, str], *args: str) -> ServerProcess:
    """The example's ``mysite.wsgi:application`` under gunicorn (1 worker, 4 threads)."""
    return gunicorn("mysite.wsgi:application", "--pythonpath", str(EXAMPLE_PROJECT), *args, env=env)


def uvicorn_project(env: dict[str, str]) -> ServerProcess:
    """The example's ``mysite.asgi:application`` under uvicorn."""
    return uvicorn("mysite.asgi:application", env=env, app_dir=EXAMPLE_PROJECT)


ServerFactory = Callable[..., ServerProcess]


@pytest.fixture(params=["gunicorn", "uvicorn"])
def serve(
    request: pytest.FixtureRequest, event_endpoint: EventEndpoint, tmp_path: Path
) -> Iterator[ServerFactory]:
    """``serve(start=True, **env)``: the project on gunicorn or on uvicorn."""

    def start(*, wait: bool = True, **extra: str) -> ServerProcess:
        env = {
            "DJANGO_SETTINGS_MODULE": "tests.apps.django_settings",
            "OPTIMIZELY_EVENT_ENDPOINT": event_endpoint.url,
            "OPTIMIZELY_DATAFILE_PATH": str(DATAFILE_PATH),
            "OPTIMIZELY_TEST_SENDFILE_LOG": str(tmp_path / "sendfile.log"),
            **extra,
        }
        server = gunicorn_project(env) if request.param == "gunicorn" else uvicorn_project(env)
        started.append(server)
        return server.start() if wait else server

    with killed_at_the_end(event_endpoint) as started:
        yield start


def burst(port: int, users: list[str]) -> None:
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda user: get(port, f"/page/{user}"), users))
    for user, (status, body) in zip(users, results, strict=True):
        assert status == 200
        assert body == f"{user}:".encode() + b"x" * 20_000


def test_every_event_arrives_exactly_once(
    serve: ServerFactory, event_endpoint: EventEndpoint
) -> None:
    server = serve()
    users = [f"u{i}" for i in range(60)]
    burst(server.port, users)
    event_endpoint.wait_for_visitors(2 * len(users))
    assert server.terminate() in (0, -signal.SIGTERM)
    uuids = event_uuids(event_endpoint)
    print(f"{len(uuids)} distinct event uuids in {len(event_endpoint.posts)} POSTs")
    assert len(uuids) == 2 * len(users)
    assert set(uuids.values()) == {1}
    assert sorted(v["visitor_id"] for v in event_endpoint.all_visitors()) == sorted(users * 2)


def test_a_held_endpoint_never_delays_a_page(
    serve: ServerFactory, event_endpoint: EventEndpoint
) -> None:
    server = serve()
    event_endpoint.hold()
    burst(server.port, [f"held{i}" for i in range(5)])  # complete pages, every POST held
    event_endpoint.wait_for_arrivals(1)  # delivery has started and is held
    assert event_endpoint.posts == []
    released_at = time.monotonic()
    event_endpoint.release()
    event_endpoint.wait_for_visitors(10)
    assert all(post.received_at >= released_at for post in event_endpoint.posts)
    server.terminate()


def test_sigterm_while_each_post_is_held_for_a_second_loses_nothing(
    serve: ServerFactory, event_endpoint: EventEndpoint
) -> None:
    server = serve()
    event_endpoint.delay = 1.0
    users = [f"term{i}" for i in range(40)]
    burst(server.port, users)
    # The last requests' POSTs are held for a second: not delivered yet.
    pending = 2 * len(users) - len(event_uuids(event_endpoint))
    assert pending > 0
    signalled_at = time.monotonic()
    code = server.terminate()
    exited_after = time.monotonic() - signalled_at
    # Counted at once: every event arrived before the process was gone.
    uuids = event_uuids(event_endpoint)
    print(
        f"exit {code} {exited_after:.2f} s after SIGTERM; {pending} events pending at the "
        f"signal; {len(uuids)} events in {len(event_endpoint.posts)} POSTs held 1 s each"
    )
    assert len(uuids) == 2 * len(users), server.log
    assert set(uuids.values()) == {1}
    assert code in (0, -signal.SIGTERM), server.log


def read_until(response: http.client.HTTPResponse, marker: bytes) -> bytes:
    received = b""
    while marker not in received:
        line = response.readline()
        assert line, f"the stream ended before {marker!r}: {received!r}"
        received += line
    return received


def test_events_of_a_streaming_body_arrive_only_after_the_body(
    serve: ServerFactory, event_endpoint: EventEndpoint
) -> None:
    server = serve()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("GET", "/stream-flushed/bob", headers={"Connection": "close"})
    response = connection.getresponse()
    assert response.status == 200
    # The view decided, then waited for the dispatcher's flush before this chunk:
    # an event handed over mid-body would be at the endpoint already.
    assert read_until(response, b"decided\n") == b"first chunk\ndecided\n"
    assert visitors_of(event_endpoint.posts, "bob") == []
    assert response.read() == b"last chunk\n"
    body_done = time.monotonic()
    connection.close()
    [post] = event_endpoint.wait_for_posts(1)
    assert [v["visitor_id"] for v in post.visitors] == ["bob"]
    assert post.received_at >= body_done
    server.terminate()


def test_async_views_streams_and_files(
    serve: ServerFactory, event_endpoint: EventEndpoint, tmp_path: Path
) -> None:
    server = serve()
    assert get(server.port, "/async/amy")[0] == 200
    assert get(server.port, "/async-stream/ben") == (200, b"first chunk\nsecond chunk\n")
    assert get(server.port, "/stream/cy") == (200, b"first chunk\nsecond chunk\n")
    assert get(server.port, "/file/dee") == (200, DATAFILE_PATH.read_bytes())
    event_endpoint.wait_for_visitors(4)
    server.terminate()
    users = sorted(v["visitor_id"] for v in event_endpoint.all_visitors())
    assert users == ["amy", "ben", "cy", "dee"]
    if "gunicorn" in server.command:
        # FileResponse kept gunicorn's sendfile() path.
        assert "/file/dee" in (tmp_path / "sendfile.log").read_text().splitlines()


def test_a_view_that_raises(serve: ServerFactory, event_endpoint: EventEndpoint) -> None:
    kept = serve()
    assert get(kept.port, "/raise/carol")[0] == 500
    event_endpoint.wait_for_visitors(1)
    kept.terminate()
    assert [v["visitor_id"] for v in event_endpoint.all_visitors()] == ["carol"]

    discarding = serve(OPTIMIZELY_TEST_FAILED_REQUESTS="discard")
    assert get(discarding.port, "/raise/erin")[0] == 500
    assert get(discarding.port, "/unavailable/eve")[0] == 503
    assert get(discarding.port, "/decide/frank")[0] == 200
    event_endpoint.wait_for_visitors(2)
    discarding.terminate()
    assert [v["visitor_id"] for v in event_endpoint.all_visitors()] == ["carol", "frank"]


def test_the_example_pages_keep_one_visitor_id(
    serve: ServerFactory, event_endpoint: EventEndpoint
) -> None:
    server = serve()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("GET", "/")
    first = connection.getresponse()
    first.read()
    cookie = first.getheader("Set-Cookie", "")
    assert cookie.startswith("optimizely_visitor_id=")
    visitor = cookie.split(";", 1)[0].split("=", 1)[1]
    connection.request("POST", "/buy", headers={"Cookie": f"optimizely_visitor_id={visitor}"})
    second = connection.getresponse()
    assert second.status == 200
    second.read()
    assert second.getheader("Set-Cookie") is None
    connection.close()
    event_endpoint.wait_for_visitors(3)
    server.terminate()
    assert [v["visitor_id"] for v in event_endpoint.all_visitors()] == [visitor] * 3


def test_a_misconfigured_setting_stops_the_server_with_improperly_configured(
    serve: ServerFactory,
) -> None:
    server = serve(wait=False, OPTIMIZELY_DATAFILE_PATH="/nonexistent/datafile.json")
    code = server.wait(EXIT_TIMEOUT)
    assert code != 0
    assert "ImproperlyConfigured" in server.log
    assert "'/nonexistent/datafile.json' cannot be read" in server.log


def test_gunicorn_preload_with_an_sdk_key_polls_the_datafile_in_the_worker(
    event_endpoint: EventEndpoint,
) -> None:
    """The client is built in the master (--preload); the worker must poll on
    its own to see a new datafile revision."""
    datafiles = DatafileServer()
    server = gunicorn_project(
        {
            "DJANGO_SETTINGS_MODULE": "tests.apps.django_settings",
            "OPTIMIZELY_EVENT_ENDPOINT": event_endpoint.url,
            "OPTIMIZELY_TEST_SDK_KEY": "sdk-key-1",
            "OPTIMIZELY_TEST_DATAFILE_URL": datafiles.url + "/{sdk_key}.json",
        },
        "--preload",
    )
    try:
        server.start()
        assert get(server.port, "/decide/before")[0] == 200
        [first] = event_endpoint.wait_for_posts(1)
        assert first.json["revision"] == "42"
        new_datafile = json.loads(datafiles.datafile)
        new_datafile["revision"] = "43"
        datafiles.datafile = json.dumps(new_datafile).encode()
        deadline = time.monotonic() + 30
        for i in range(1_000):
            assert time.monotonic() < deadline, "the worker never saw revision 43"
            assert get(server.port, f"/decide/after{i}")[0] == 200
            post = event_endpoint.wait_for_posts(2 + i)[-1]
            if post.json["revision"] == "43":
                print(f"revision 43 after {i + 1} pages, {time.monotonic() - deadline + 30:.2f} s")
                break
        assert server.terminate() == 0, server.log
    finally:
        server.kill()
        datafiles.stop()
