"""Starlette on AWS Lambda through Mangum, called in-process with API Gateway
v2 events. With Mangum's default lifespan="auto" every invocation runs a
lifespan startup and shutdown; events must arrive at each invocation's end
(the platform may freeze the process then) and the next one must still work."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from mangum import Mangum

from optimizely_middleware import RequestScopedEventDispatcher, WiringWarning
from tests.apps.e2e_starlette import build_app
from tests.support.endpoint import EventEndpoint
from tests.support.load import EVENTS_PER_REQUEST, assert_exactly_once, report

pytestmark = pytest.mark.slow

INVOCATIONS = 50


def api_gateway_v2(path: str) -> dict[str, Any]:
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"host": "abc.execute-api.eu-west-1.amazonaws.com", "user-agent": "test"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc",
            "domainName": "abc.execute-api.eu-west-1.amazonaws.com",
            "http": {
                "method": "GET",
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "test",
            },
            "requestId": "id",
            "routeKey": "$default",
            "stage": "$default",
            "time": "01/Dec/2026:00:00:00 +0000",
            "timeEpoch": 1796083200000,
        },
        "isBase64Encoded": False,
    }


@pytest.fixture
def lambda_app(event_endpoint: EventEndpoint) -> Iterator[tuple[Any, RequestScopedEventDispatcher]]:
    app, dispatcher = build_app(event_endpoint.url)
    yield app, dispatcher
    dispatcher.close(10)


@pytest.mark.parametrize("lifespan", ["auto", "off"])
def test_every_warm_invocation_delivers_its_events_before_it_returns(
    lifespan: str,
    lambda_app: tuple[Any, RequestScopedEventDispatcher],
    event_endpoint: EventEndpoint,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, dispatcher = lambda_app
    handler = Mangum(app, lifespan=lifespan)  # type: ignore[arg-type]
    users = [f"lambda{i}" for i in range(INVOCATIONS)]
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
        warnings.simplefilter("error", WiringWarning)
        for i, user in enumerate(users):
            response = handler(api_gateway_v2(f"/work/{user}"), None)
            assert response["statusCode"] == 200, response
            # No waiting: the environment may be frozen from here.
            assert len(event_endpoint.all_visitors()) == EVENTS_PER_REQUEST * (i + 1)
    arrived = assert_exactly_once(event_endpoint, users)
    ours = [r for r in caplog.records if r.name.startswith("optimizely_middleware")]
    assert ours == [], [r.getMessage() for r in ours]
    assert dispatcher.stats()["dropped"] == {}
    report(f"mangum lifespan={lifespan}", EVENTS_PER_REQUEST * INVOCATIONS, arrived)
