"""FastAPI with ``app.add_middleware(OptimizelyASGIMiddleware, ...)`` unchanged:
real FastAPI, the real SDK, the real EventSender and a real local endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import pytest
from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException
from optimizely.optimizely import Optimizely
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.testclient import TestClient

from optimizely_middleware import (
    OptimizelyASGIMiddleware,
    RequestScopedEventDispatcher,
)
from optimizely_middleware.fastapi import OptimizelyClient as FastAPIClient
from optimizely_middleware.fastapi import OptimizelyFastAPI
from optimizely_middleware.starlette import defer_events, optimizely_client
from tests.support.asgi import (
    Wired,
    arrivals_by_visitor,
    posts_per_visitor,
    visit_the_example,
    visitor_ids,
)
from tests.support.endpoint import EventEndpoint

OptimizelyClient = Annotated[Optimizely, Depends(optimizely_client)]


class Api(Wired):
    def __init__(self, endpoint: EventEndpoint, datafile: str, **options: Any) -> None:
        super().__init__(endpoint, datafile, **options)
        self.shutdown_user = "shutdown"

        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            yield
            # the app's own shutdown code still gets its events out
            self.client.create_user_context(self.shutdown_user).track_event("add_to_cart")

        app = FastAPI(lifespan=lifespan)
        app.add_middleware(OptimizelyASGIMiddleware, dispatcher=self.dispatcher, client=self.client)

        @app.get("/async")
        async def decide_async(optimizely: OptimizelyClient, user: str) -> dict[str, Any]:
            decision = optimizely.create_user_context(user).decide("new_checkout")
            return {"user": user, "variation": decision.variation_key}

        @app.get("/sync")
        def decide_sync(
            optimizely: OptimizelyClient, tasks: BackgroundTasks, user: str
        ) -> dict[str, Any]:
            context = optimizely.create_user_context(user)
            decision = context.decide("new_checkout")
            tasks.add_task(context.track_event, "purchase")
            return {"user": user, "variation": decision.variation_key}

        @app.get("/missing")
        async def missing(optimizely: OptimizelyClient, user: str) -> None:
            optimizely.create_user_context(user).decide("new_checkout")
            raise HTTPException(status_code=404)

        @app.get("/broken")
        def broken(optimizely: OptimizelyClient, user: str) -> None:
            optimizely.create_user_context(user).decide("new_checkout")
            raise RuntimeError("bug")

        self.app = self.timeline.wrap(app)


@pytest.fixture
def api(event_endpoint: EventEndpoint, datafile: str) -> Iterator[Api]:
    with Api(event_endpoint, datafile).running() as api:
        yield api


@pytest.mark.parametrize("path", ["/async", "/sync"])
def test_responses_are_complete_while_the_endpoint_holds_the_posts(
    path: str, api: Api, event_endpoint: EventEndpoint
) -> None:
    expected_events = 1 if path == "/async" else 2
    event_endpoint.hold()
    with TestClient(api.app) as http:
        responses = [http.get(path, params={"user": f"u{i}"}) for i in range(3)]
        assert [r.json()["user"] for r in responses] == ["u0", "u1", "u2"]
        event_endpoint.wait_for_arrivals(1)  # responses complete while the POST is held
        event_endpoint.release()
        event_endpoint.wait_for_visitors(3 * expected_events)

    handed_over = f"handed_over:{expected_events}:ok"
    assert api.timeline.entries == ["response.start:200", "response.end", handed_over] * 3
    ended_at = dict(zip(["u0", "u1", "u2"], api.timeline.ended_at, strict=True))
    for user, arrivals in arrivals_by_visitor(event_endpoint.posts).items():
        if user in ended_at:
            assert min(arrivals) >= ended_at[user], user
    per_visitor = posts_per_visitor(event_endpoint.posts)
    assert per_visitor == {"u0": 1, "u1": 1, "u2": 1, "shutdown": 1}
    assert api.dispatcher.stats()["outside_scope_sent"] == 1  # the lifespan's own event


def test_http_exceptions_and_errors_follow_the_failed_request_policy(
    event_endpoint: EventEndpoint, datafile: str
) -> None:
    api = Api(event_endpoint, datafile, failed_requests="discard")
    with api.timeline.listening(), TestClient(api.app, raise_server_exceptions=False) as http:
        assert http.get("/missing", params={"user": "lost"}).status_code == 404
        assert http.get("/broken", params={"user": "broken"}).status_code == 500
    assert api.timeline.entries == [
        "response.start:404",
        "response.end",
        "handed_over:1:ok",
        # the exception reaches the middleware before Starlette's outermost
        # ServerErrorMiddleware turns it into the 500 response
        "handed_over:1:failed",
        "response.start:500",
        "response.end",
    ]
    assert visitor_ids(event_endpoint.all_visitors()) == ["lost", "shutdown"]
    assert api.dispatcher.stats()["dropped"] == {"failed_request": 1}


def test_the_app_lifespan_runs_and_its_events_are_delivered_at_shutdown(
    api: Api, event_endpoint: EventEndpoint
) -> None:
    event_endpoint.delay = 0.2
    with TestClient(api.app) as http:
        http.get("/sync", params={"user": "last"})
    # No waiting: the lifespan shutdown flushed before the app stopped.
    assert visitor_ids(event_endpoint.all_visitors()) == ["last", "last", "shutdown"]


def test_the_fastapi_example(
    event_endpoint: EventEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, buy = visit_the_example("fastapi_app", event_endpoint, monkeypatch, user="bob")
    assert buy.json()["bought"] is True


# -- the one-line setup, and defer_events refused on path operations ------------------


def test_one_line_adds_the_package_and_the_client_is_a_dependency(
    event_endpoint: EventEndpoint, datafile: str
) -> None:
    shutdown_ran: list[bool] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        shutdown_ran.append(True)

    app = FastAPI(lifespan=lifespan)
    optimizely = OptimizelyFastAPI(app, datafile=datafile, event_endpoint=event_endpoint.url)

    @app.get("/")
    def home(optimizely: FastAPIClient, user: str) -> dict[str, Any]:
        context = optimizely.create_user_context(user)
        return {"variation": context.decide("new_checkout").variation_key}

    event_endpoint.delay = 0.2
    with TestClient(app) as http:
        assert http.get("/", params={"user": "dora"}).json()["variation"]
    # The app's own lifespan ran, and the flush at shutdown delivered (no waiting here).
    assert shutdown_ran == [True]
    assert visitor_ids(event_endpoint.all_visitors()) == ["dora"]
    optimizely.dispatcher.close(0)


def test_defer_events_on_a_path_operation_fails_when_decorating(datafile: str) -> None:
    app = FastAPI()
    dispatcher = RequestScopedEventDispatcher()
    with pytest.raises(TypeError) as raised:

        @app.get("/")
        @defer_events(dispatcher)
        def home(user: str = "anon") -> dict[str, Any]:
            return {"user": user}

    assert "OptimizelyFastAPI(app)" in str(raised.value)
    assert "OptimizelyClient" in str(raised.value)
    dispatcher.close(0)


def test_defer_events_on_a_path_operation_that_takes_the_request_says_what_to_do(
    datafile: str,
) -> None:
    app = FastAPI()
    dispatcher = RequestScopedEventDispatcher()

    @app.get("/")
    @defer_events(dispatcher)
    def home(request: Request) -> Response:  # looks like a Starlette endpoint
        return PlainTextResponse("never sent")

    with TestClient(app) as http, pytest.raises(TypeError, match=r"called by FastAPI\."):
        http.get("/")
    dispatcher.close(0)
