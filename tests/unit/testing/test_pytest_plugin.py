"""The ``optimizely_events`` fixture as a user meets it: test files run by pytester.

Each user file builds a real app (Flask, Starlette or FastAPI) with the real
SDK, the test datafile and the middleware. Its sender points at a real local
endpoint, so an event that escaped the capture would arrive there; none may.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from optimizely_middleware import EventSender, RequestScopedEventDispatcher, create_client
from tests.support.endpoint import EventEndpoint
from tests.support.generated_apps import app_preamble, write_user_file

pytest_plugins = ["pytester"]


@pytest.fixture
def user_project(pytester: pytest.Pytester, datafile: str, event_endpoint: EventEndpoint) -> str:
    """A user's project directory with the datafile; returns the endpoint URL for apps."""
    pytester.path.joinpath("datafile.json").write_text(datafile)
    return event_endpoint.url


FLASK_APP = app_preamble(
    "from flask import Flask, jsonify", "OptimizelyWSGIMiddleware"
) + textwrap.dedent(
    """


    def create_app():
        dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=EVENTS_URL))
        optimizely = create_client(dispatcher, DATAFILE)
        app = Flask(__name__)

        @app.post("/checkout/<user_id>")
        def checkout(user_id):
            user = optimizely.create_user_context(user_id, {"plan": "pro"})
            decision = user.decide("new_checkout")
            user.track_event("purchase", {"revenue": 1299, "sku": "A1"})
            return jsonify(variation=decision.variation_key)

        @app.get("/home")
        def home():
            return "no experiment here"

        app.wsgi_app = OptimizelyWSGIMiddleware(app.wsgi_app, dispatcher)
        app.config["OPTIMIZELY_DISPATCHER"] = dispatcher
        return app


    @pytest.fixture
    def client():
        app = create_app()
        yield app.test_client()
        app.config["OPTIMIZELY_DISPATCHER"].close(10)
"""
)

FLASK_TESTS = """
    def test_checkout_records_one_impression_and_one_purchase(client, optimizely_events):
        response = client.post("/checkout/user-1")
        assert response.json == {"variation": "on"}

        optimizely_events.assert_impression(
            flag_key="new_checkout", variation_key="on", user_id="user-1", count=1
        )
        optimizely_events.assert_conversion(event_key="purchase", revenue=1299, count=1)
        request = optimizely_events.last_request
        assert [i.rule_key for i in request.impressions] == ["new_checkout_test"]
        assert request.conversions[0].tags == {"revenue": 1299, "sku": "A1"}


    def test_each_request_is_seen_on_its_own(client, optimizely_events):
        client.post("/checkout/user-1")
        client.get("/home")
        client.post("/checkout/user-2")

        first, home, second = optimizely_events.requests
        assert [i.variation_key for i in first.impressions] == ["on"]
        home.assert_no_events()
        assert [i.variation_key for i in second.impressions] == ["off"]
        assert len(optimizely_events.conversions) == 2


    def test_a_page_without_experiments_sends_nothing(client, optimizely_events):
        client.get("/home")
        optimizely_events.assert_no_events()
"""


def test_a_flask_users_tests_pass(
    pytester: pytest.Pytester, user_project: str, event_endpoint: EventEndpoint
) -> None:
    write_user_file(pytester, "test_flask_checkout", user_project, FLASK_APP, FLASK_TESTS)
    result = pytester.runpytest("-W", "error::optimizely_middleware.WiringWarning")
    result.assert_outcomes(passed=3)
    assert event_endpoint.arrived == 0


STARLETTE_IMPORTS = """
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.middleware import Middleware
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient
"""

STARLETTE_APP = app_preamble(STARLETTE_IMPORTS, "OptimizelyASGIMiddleware") + textwrap.dedent(
    """


    def create_app():
        dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=EVENTS_URL))
        optimizely = create_client(dispatcher, DATAFILE)

        async def checkout(request):
            user_id = request.path_params["user_id"]
            user = optimizely.create_user_context(user_id, {"plan": "pro"})
            decision = user.decide("new_checkout")
            # Tracked after the response, in a background task: still this request's.
            task = BackgroundTask(user.track_event, "purchase", {"revenue": 1299})
            return JSONResponse({"variation": decision.variation_key}, background=task)

        def headline(request):  # a sync endpoint, run in the thread pool
            variation = optimizely.activate("headline_test", request.query_params["user"])
            return JSONResponse({"variation": variation})

        return Starlette(
            routes=[
                Route("/checkout/{user_id}", checkout, methods=["POST"]),
                Route("/headline", headline),
            ],
            middleware=[
                Middleware(OptimizelyASGIMiddleware, dispatcher=dispatcher, client=optimizely)
            ],
        )


    @pytest.fixture
    def client():
        with TestClient(create_app()) as client:
            yield client
"""
)

STARLETTE_TESTS = """
    def test_checkout_records_one_impression_and_one_purchase(client, optimizely_events):
        assert client.post("/checkout/user-1").json() == {"variation": "on"}

        optimizely_events.assert_impression(flag_key="new_checkout", variation_key="on", count=1)
        optimizely_events.assert_conversion(event_key="purchase", revenue=1299, count=1)
        request = optimizely_events.last_request
        assert len(request.impressions) == 1 and len(request.conversions) == 1


    def test_a_sync_endpoint_records_its_impression(client, optimizely_events):
        variation = client.get("/headline", params={"user": "user-3"}).json()["variation"]

        optimizely_events.last_request.assert_impression(
            flag_key="", rule_key="headline_test", variation_key=variation, user_id="user-3"
        )
"""


def test_a_starlette_users_tests_pass(
    pytester: pytest.Pytester, user_project: str, event_endpoint: EventEndpoint
) -> None:
    write_user_file(
        pytester, "test_starlette_checkout", user_project, STARLETTE_APP, STARLETTE_TESTS
    )
    result = pytester.runpytest("-W", "error::optimizely_middleware.WiringWarning")
    result.assert_outcomes(passed=2)
    assert event_endpoint.arrived == 0


FASTAPI_IMPORTS = """
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
"""

FASTAPI_TESTS = app_preamble(FASTAPI_IMPORTS, "OptimizelyASGIMiddleware") + textwrap.dedent(
    """


    @pytest.fixture
    def client():
        dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=EVENTS_URL))
        optimizely = create_client(dispatcher, DATAFILE)
        app = FastAPI()
        app.add_middleware(OptimizelyASGIMiddleware, dispatcher=dispatcher, client=optimizely)

        @app.post("/checkout/{user_id}")
        def checkout(user_id: str):
            user = optimizely.create_user_context(user_id)
            user.decide("new_checkout")
            user.track_event("purchase", {"revenue": 500, "value": 2})
            return {"ok": True}

        with TestClient(app) as client:
            yield client


    def test_checkout(client, optimizely_events):
        client.post("/checkout/user-2")
        optimizely_events.assert_impression(flag_key="new_checkout", variation_key="off")
        optimizely_events.assert_conversion(event_key="purchase", revenue=500, value=2)
"""
)


def test_a_fastapi_users_tests_pass(
    pytester: pytest.Pytester, user_project: str, event_endpoint: EventEndpoint
) -> None:
    write_user_file(pytester, "test_fastapi_checkout", user_project, FASTAPI_TESTS)
    result = pytester.runpytest("-W", "error::optimizely_middleware.WiringWarning")
    result.assert_outcomes(passed=1)
    assert event_endpoint.arrived == 0


WRONG_VARIATION = """
    def test_checkout_shows_the_new_checkout(client, optimizely_events):
        client.post("/checkout/user-1")
        optimizely_events.assert_impression(flag_key="new_checkout", variation_key="off")
"""


def test_asserting_a_wrong_variation_fails_with_a_readable_message(
    pytester: pytest.Pytester, user_project: str, event_endpoint: EventEndpoint
) -> None:
    write_user_file(pytester, "test_wrong", user_project, FLASK_APP, WRONG_VARIATION)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            '*optimizely_events.assert_impression(flag_key="new_checkout", variation_key="off")',
            "E *AssertionError: Expected at least one impression with flag_key='new_checkout', "
            "variation_key='off' in the capture, found 0.",
            "E *Captured:",
            "E *impression: flag_key='new_checkout' rule_key='new_checkout_test' "
            "rule_type='feature-test' variation_key='on' enabled=True user_id='user-1'",
            "E *conversion: event_key='purchase' revenue=1299 value=None "
            "tags={'revenue': 1299, 'sku': 'A1'} user_id='user-1'",
        ]
    )
    # The failure points at the user's line, not inside the testing kit.
    assert "optimizely_middleware/testing.py" not in result.stdout.str()
    assert event_endpoint.arrived == 0


MALFORMED_EVENT = """
    from optimizely.event.log_event import LogEvent


    def test_an_app_that_sends_a_malformed_event(client, optimizely_events):
        dispatcher = client.application.config["OPTIMIZELY_DISPATCHER"]
        with dispatcher.request_scope():
            dispatcher.dispatch_event(
                LogEvent(
                    "https://logx.optimizely.com/v1/events",
                    {"account_id": "1", "visitors": []},
                    "POST",
                    {"Content-Type": "application/json"},
                )
            )
        # The test never reads the capture: the fixture still fails it.
"""


def test_a_malformed_event_fails_the_users_test(
    pytester: pytest.Pytester, user_project: str, event_endpoint: EventEndpoint
) -> None:
    write_user_file(pytester, "test_malformed", user_project, FLASK_APP, MALFORMED_EVENT)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_an_app_that_sends_a_malformed_event*",
            "E *optimizely_middleware.wire.validation.InvalidEventPayload: "
            "Invalid Optimizely event POST(s) (7 problem(s)):",
            "E *POST #1 project_id: missing",
            "E *POST #1 visitors: expected at least 1 item(s), got 0",
        ]
    )
    assert event_endpoint.arrived == 0


CLEANUP = """
    import pytest


    def test_fails_while_capturing(client, optimizely_events):
        client.post("/checkout/user-1")
        pytest.fail("the user's test fails")


    def test_without_the_fixture_events_go_out_as_usual(client):
        client.post("/checkout/user-2")
        dispatcher = client.application.config["OPTIMIZELY_DISPATCHER"]
        assert dispatcher.flush(10)
        assert dispatcher.stats()["delivered_events"] == 2
"""


def test_the_fixture_cleans_up_after_a_failing_test_and_leaves_other_tests_alone(
    pytester: pytest.Pytester, user_project: str, event_endpoint: EventEndpoint
) -> None:
    write_user_file(pytester, "test_cleanup", user_project, FLASK_APP, CLEANUP)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    # Only the test without the fixture reached the real endpoint: user-2's two events.
    visitors = event_endpoint.wait_for_visitors(2)
    assert [v["visitor_id"] for v in visitors] == ["user-2", "user-2"]

    # Nor is anything left installed in this process once the run is over.
    dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=event_endpoint.url))
    client = create_client(dispatcher, user_project_datafile(pytester))
    try:
        client.track("add_to_cart", "after-the-run")
        assert dispatcher.flush(10)
        assert event_endpoint.wait_for_visitors(3)[-1]["visitor_id"] == "after-the-run"
    finally:
        dispatcher.close(10)


def user_project_datafile(pytester: pytest.Pytester) -> str:
    return pytester.path.joinpath("datafile.json").read_text()


def test_the_fixture_comes_from_the_entry_point(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_uses_fixture="def test_it(optimizely_events):\n    pass\n")
    assert pytester.runpytest().ret == pytest.ExitCode.OK
    result = pytester.runpytest("-p", "no:optimizely_middleware")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'optimizely_events' not found*"])


def test_loading_the_plugin_imports_no_web_framework_and_not_the_kit() -> None:
    code = (
        "import sys, optimizely_middleware.testing.pytest_plugin\n"
        "loaded = [m for m in ('flask', 'starlette', 'fastapi', 'werkzeug.test', "
        "'optimizely_middleware.testing.capture') if m in sys.modules]\n"
        "print(loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
