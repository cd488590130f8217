"""Responses a test never reads, with the ``optimizely_events`` fixture, as a user meets them.

A WSGI request's events are handed over when the server has taken the whole
body; a test client only takes it when the test reads it. Each user file
below checks status codes only, reads a body after asserting, leaves events
unasserted and fails while holding a response, and the last test must see
its own events and nobody else's. The apps POST to a real local endpoint, so
an event that escaped the capture would arrive there; none may.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from optimizely_middleware import (
    OptimizelyWSGIMiddleware,
    RequestScopedEventDispatcher,
    create_client,
)
from optimizely_middleware.testing.unread_responses import UnreadResponses
from tests.support.endpoint import EventEndpoint
from tests.support.fakes import RecordingSink, visitor_id_of
from tests.support.generated_apps import app_preamble, write_user_file

pytest_plugins = ["pytester"]

# The user's tests, the same for every framework; ``body(response)`` reads a body.
USER_TESTS = """
import gc

def test_a_test_that_only_checks_the_status(client, optimizely_events):
    r = client.get("/?user=a-user")
    assert r.status_code == 200
    optimizely_events.assert_impression(user_id="a-user", count=1)


def test_a_streamed_response_that_is_never_read(client, optimizely_events):
    r = client.get("/stream?user=s-user")
    assert r.status_code == 200
    optimizely_events.assert_impression(user_id="s-user", count=1)
    assert len(optimizely_events.requests) == 1


def test_a_body_read_after_the_assertion(client, optimizely_events):
    r = client.get("/stream?user=r-user")
    optimizely_events.last_request.assert_impression(user_id="r-user", count=1)
    assert body(r) == b"first\\nsecond\\n"
    assert [i.user_id for i in optimizely_events.impressions] == ["r-user"]
    assert len(optimizely_events.requests) == 1


def test_waiting_for_requests_counts_unread_ones(client, optimizely_events):
    client.get("/?user=w-user")
    client.get("/stream?user=w-user")
    assert len(optimizely_events.wait_for_requests(2)) == 2


def test_a_test_that_leaves_its_events_unasserted(client, optimizely_events):
    assert client.get("/?user=left-user").status_code == 200
    assert client.get("/stream?user=left-user").status_code == 200


def test_a_test_that_fails_while_holding_its_response(client, optimizely_events):
    r = client.get("/?user=failed-user")
    assert r.status_code == 500, "the user's test fails"


def test_the_next_test_sees_only_its_own_events(client, optimizely_events):
    gc.collect()  # whatever the failed test's traceback kept alive is released now
    assert client.get("/?user=b-user").status_code == 200
    assert [i.user_id for i in optimizely_events.impressions] == ["b-user"]
    assert len(optimizely_events.requests) == 1
"""

FLASK_APP = (
    app_preamble("from flask import Flask, request", "OptimizelyWSGIMiddleware")
    + """
dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=EVENTS_URL))
optimizely = create_client(dispatcher, DATAFILE)
app = Flask(__name__)
app.wsgi_app = OptimizelyWSGIMiddleware(app.wsgi_app, dispatcher)


@app.get("/")
def home():
    optimizely.create_user_context(request.args["user"]).decide("new_checkout")
    return "hello", {"Content-Type": "text/plain"}


@app.get("/stream")
def stream():
    optimizely.create_user_context(request.args["user"]).decide("new_checkout")
    return (chunk for chunk in ["first\\n", "second\\n"]), {"Content-Type": "text/plain"}


@pytest.fixture
def client():
    return app.test_client()


def body(response):
    return response.data
"""
)

STARLETTE_IMPORTS = """
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient
"""

STARLETTE_APP = (
    app_preamble(STARLETTE_IMPORTS, "OptimizelyASGIMiddleware")
    + """
dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=EVENTS_URL))
optimizely = create_client(dispatcher, DATAFILE)


async def home(request):
    optimizely.create_user_context(request.query_params["user"]).decide("new_checkout")
    return PlainTextResponse("hello")


async def stream(request):
    optimizely.create_user_context(request.query_params["user"]).decide("new_checkout")

    async def chunks():
        yield b"first\\n"
        yield b"second\\n"

    return StreamingResponse(chunks(), media_type="text/plain")


app = Starlette(
    routes=[Route("/", home), Route("/stream", stream)],
    middleware=[Middleware(OptimizelyASGIMiddleware, dispatcher=dispatcher, client=optimizely)],
)


@pytest.fixture(scope="module")
def client():
    with TestClient(app) as client:
        yield client


def body(response):
    return response.content
"""
)

DJANGO_CONFTEST = """
from pathlib import Path

import django
from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse
from django.urls import path


def home(request):
    request.optimizely.create_user_context(request.GET["user"]).decide("new_checkout")
    return HttpResponse("hello", content_type="text/plain")


def stream(request):
    request.optimizely.create_user_context(request.GET["user"]).decide("new_checkout")
    return StreamingHttpResponse(iter([b"first\\n", b"second\\n"]), content_type="text/plain")


urlpatterns = [path("", home), path("stream", stream)]


def pytest_configure(config):
    settings.configure(
        SECRET_KEY="tests-only",
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF="conftest",
        MIDDLEWARE=["optimizely_middleware.django.OptimizelyMiddleware"],
        OPTIMIZELY={
            "DATAFILE_PATH": str(Path(__file__).parent / "datafile.json"),
            "EVENT_ENDPOINT": EVENTS_URL,
        },
    )
    django.setup()
"""

DJANGO_APP = """
import pytest
from django.test import Client


@pytest.fixture
def client():
    return Client()


def body(response):
    if response.streaming:
        return b"".join(response.streaming_content)
    return response.content
"""

OUTCOMES = {"passed": 6, "failed": 1}


@pytest.fixture
def user_project(pytester: pytest.Pytester, datafile: str) -> pytest.Pytester:
    pytester.path.joinpath("datafile.json").write_text(datafile)
    return pytester


def write(pytester: pytest.Pytester, name: str, endpoint: EventEndpoint, *parts: str) -> None:
    write_user_file(pytester, name, endpoint.url, *parts)


def run_in_subprocess(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run the user's tests as ``pytest`` runs them: in a process of their own.

    In process, pytester keeps every report and so the failing test's
    traceback, which would keep its response alive past the run.
    """
    return pytester.runpytest_subprocess(
        "-p", "no:django", "-p", "no:cacheprovider", "-W", "error", *args
    )


def assert_only_the_failing_test_failed(result: pytest.RunResult) -> None:
    result.assert_outcomes(**OUTCOMES)
    result.stdout.fnmatch_lines(["FAILED *test_a_test_that_fails_while_holding_its_response*"])


def test_a_flask_test_that_never_reads_the_body(
    user_project: pytest.Pytester, event_endpoint: EventEndpoint
) -> None:
    write(user_project, "test_flask_unread", event_endpoint, FLASK_APP, USER_TESTS)
    result = run_in_subprocess(user_project)
    assert_only_the_failing_test_failed(result)
    assert event_endpoint.arrived == 0


def test_a_starlette_test_that_never_reads_the_body(
    user_project: pytest.Pytester, event_endpoint: EventEndpoint
) -> None:
    write(user_project, "test_starlette_unread", event_endpoint, STARLETTE_APP, USER_TESTS)
    result = run_in_subprocess(
        user_project, "-W", "ignore:Using `httpx` with `starlette.testclient` is deprecated"
    )
    assert_only_the_failing_test_failed(result)
    assert event_endpoint.arrived == 0


def test_a_django_test_that_never_reads_the_body(
    user_project: pytest.Pytester, event_endpoint: EventEndpoint
) -> None:
    write(user_project, "conftest", event_endpoint, DJANGO_CONFTEST)
    write(user_project, "test_django_unread", event_endpoint, DJANGO_APP, USER_TESTS)
    result = run_in_subprocess(user_project)
    assert_only_the_failing_test_failed(result)
    assert event_endpoint.arrived == 0


# -- UnreadResponses on its own, with a real Flask app -----------------------


@pytest.fixture
def flask_app(datafile: str) -> tuple[Any, RequestScopedEventDispatcher, RecordingSink]:
    from flask import Flask, request

    sink = RecordingSink()
    dispatcher = RequestScopedEventDispatcher(sink)
    optimizely = create_client(dispatcher, datafile=datafile)
    app = Flask(__name__)
    app.wsgi_app = OptimizelyWSGIMiddleware(app.wsgi_app, dispatcher)  # type: ignore[method-assign]

    @app.get("/")
    def home() -> str:
        user = optimizely.create_user_context(request.args["user"])
        assert user is not None
        user.decide("new_checkout")
        return "hello"

    return app, dispatcher, sink


def test_an_unread_response_is_handed_over_once(flask_app: Any) -> None:
    app, dispatcher, sink = flask_app
    with UnreadResponses() as unread:
        response = app.test_client().get("/?user=user-1")
        assert sink.batches == []  # the body is unread: a server would still be writing
        assert unread.hand_over() == 1
        assert [visitor_id_of(e) for e in sink.events] == ["user-1"]
        assert response.data == b"hello"  # reading it later hands over nothing more
        assert unread.hand_over() == 0
    assert len(sink.batches) == 1
    assert dispatcher.stats()["requests"] == 1


def test_the_end_of_the_block_hands_over_what_is_left(flask_app: Any) -> None:
    app, _, sink = flask_app
    with UnreadResponses():
        response = app.test_client().get("/?user=user-2")
    assert [visitor_id_of(e) for e in sink.events] == ["user-2"]
    assert response.status_code == 200


def test_a_response_returned_on_another_thread_is_left_to_its_server(flask_app: Any) -> None:
    app, dispatcher, sink = flask_app
    responses: list[Any] = []
    with UnreadResponses() as unread:
        thread = threading.Thread(
            target=lambda: responses.append(app.test_client().get("/?user=user-4"))
        )
        thread.start()
        thread.join()
        assert unread.hand_over() == 0
        assert dispatcher.stats()["open_scopes"] == 1 and sink.batches == []
        responses[0].close()  # the "server" closes the body: the request ends then
    assert dispatcher.stats()["open_scopes"] == 0 and len(sink.batches) == 1


def test_nothing_is_recorded_once_uninstalled(flask_app: Any) -> None:
    app, _, sink = flask_app
    unread = UnreadResponses().install()
    unread.uninstall()
    response = app.test_client().get("/?user=user-3")
    assert unread.hand_over() == 0 and sink.batches == []
    response.close()
    assert len(sink.batches) == 1
