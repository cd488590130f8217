"""One settings model: the same mistakes are caught at start-up under Flask,
Starlette, FastAPI and from the environment, each named as its source spells it.

Django's side is in tests/unit/django/test_middleware.py (it needs Django's settings machinery)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from optimizely_middleware import EventSender
from optimizely_middleware.errors import ConfigurationError
from optimizely_middleware.fastapi import OptimizelyFastAPI
from optimizely_middleware.flask import OptimizelyFlask
from optimizely_middleware.settings.model import ENVIRONMENT, KEYWORDS, load_settings
from optimizely_middleware.starlette import OptimizelyStarlette, optimizely_client
from tests.support.endpoint import EventEndpoint

DATAFILE = Path(__file__).parents[2] / "data" / "datafile.json"

Start = Callable[[dict[str, Any]], object]


@pytest.fixture(autouse=True)
def no_optimizely_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("OPTIMIZELY_"):
            monkeypatch.delenv(name)


@pytest.fixture
def empty_file(tmp_path: Path) -> Path:
    path = tmp_path / "datafile.json"
    path.write_text("")
    return path


def start_flask(values: dict[str, Any]) -> object:
    app = Flask(__name__)
    app.config.update({f"OPTIMIZELY_{key}": value for key, value in values.items()})
    return OptimizelyFlask(app)


def start_starlette(values: dict[str, Any]) -> object:
    return OptimizelyStarlette(Starlette(), **{key.lower(): v for key, v in values.items()})


def start_fastapi(values: dict[str, Any]) -> object:
    return OptimizelyFastAPI(FastAPI(), **{key.lower(): v for key, v in values.items()})


FRAMEWORKS: dict[str, tuple[Start, Callable[[str], str]]] = {
    "flask": (start_flask, lambda key: f"OPTIMIZELY_{key}"),
    "starlette": (start_starlette, str.lower),
    "fastapi": (start_fastapi, str.lower),
}


@pytest.fixture(params=list(FRAMEWORKS))
def framework(request: pytest.FixtureRequest) -> tuple[Start, Callable[[str], str]]:
    return FRAMEWORKS[request.param]


# (settings, words the message must hold), in generic key names; {name} spells a key.
MISTAKES: list[tuple[dict[str, Any], list[str]]] = [
    (
        {"DATAFILE_PATH": str(DATAFILE), "ENDPOINT": "http://127.0.0.1:1/v1/events"},
        ["Unknown key '{ENDPOINT}'", "did you mean '{EVENT_ENDPOINT}'?"],
    ),
    (
        {"DATAFILE_PTH": str(DATAFILE)},
        ["Unknown key '{DATAFILE_PTH}'", "did you mean '{DATAFILE_PATH}'?"],
    ),
    ({"DATAFILE_PATH": "EMPTY"}, ["{DATAFILE_PATH}", "is not valid JSON (it is empty)"]),
    ({"DATAFILE": "{not json"}, ["{DATAFILE}", "is not valid JSON"]),
    ({"DATAFILE": "{}"}, ["{DATAFILE}", "The Optimizely SDK rejected the datafile"]),
    (
        {"DATAFILE_PATH": "/nonexistent/datafile.json"},
        ["{DATAFILE_PATH}", "cannot be read: No such file"],
    ),
    (
        {"DATAFILE_PATH": str(DATAFILE), "EVENT_ENDPOINT": "127.0.0.1:8765/v1/events"},
        ["{EVENT_ENDPOINT}", "must be a URL", "did you mean 'http://127.0.0.1:8765/v1/events'?"],
    ),
    (
        {"DATAFILE_PATH": str(DATAFILE), "FAILED_REQUESTS": "discrad"},
        ["{FAILED_REQUESTS}", "did you mean 'discard'?"],
    ),
    ({}, ["needs a datafile or an SDK key", "{DATAFILE_PATH}", "OPTIMIZELY_SDK_KEY"]),
]


def _spelled(values: dict[str, Any], empty_file: Path) -> dict[str, Any]:
    return {k: str(empty_file) if v == "EMPTY" else v for k, v in values.items()}


def _expected(words: list[str], spell: Callable[[str], str]) -> list[str]:
    keys = ["ENDPOINT", "EVENT_ENDPOINT", "DATAFILE_PTH", "DATAFILE_PATH", "DATAFILE"]
    keys += ["FAILED_REQUESTS"]
    return [word.format(**{key: spell(key) for key in keys}) for word in words]


@pytest.mark.parametrize("source", ["settings", "environment"])
@pytest.mark.parametrize(("values", "words"), MISTAKES)
def test_each_mistake_is_an_error_at_start_up_naming_the_key(
    framework: tuple[Start, Callable[[str], str]],
    values: dict[str, Any],
    words: list[str],
    source: str,
    empty_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same mistake, made in the app's own settings or in OPTIMIZELY_* variables."""
    start, spell = framework
    settings = _spelled(values, empty_file)
    if source == "environment":
        for key, value in settings.items():
            monkeypatch.setenv(f"OPTIMIZELY_{key}", value)
        settings, spell = {}, lambda key: f"OPTIMIZELY_{key}"
    with pytest.raises(ConfigurationError) as raised:
        start(settings)
    for word in _expected(words, spell):
        assert word in str(raised.value)


def test_keys_set_in_code_win_over_the_environment(
    framework: tuple[Start, Callable[[str], str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    start, _ = framework
    monkeypatch.setenv("OPTIMIZELY_EVENT_ENDPOINT", "not a url")  # would be an error
    monkeypatch.setenv("OPTIMIZELY_FAILED_REQUESTS", "discard")
    extension: Any = start(
        {"DATAFILE_PATH": str(DATAFILE), "EVENT_ENDPOINT": "http://127.0.0.1:1/v1/events"}
    )
    dispatcher = extension.dispatcher
    try:
        assert isinstance(dispatcher.sender, EventSender)
        assert dispatcher.sender.endpoint == "http://127.0.0.1:1/v1/events"
        assert dispatcher.failed_requests == "discard"  # not set in code: from the environment
    finally:
        dispatcher.close(0)


def test_where_the_datafile_comes_from_is_taken_from_one_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPTIMIZELY_SDK_KEY", "from-the-shell")
    monkeypatch.setenv("OPTIMIZELY_DATAFILE", "{not json}")  # never read
    settings = load_settings({"datafile_path": DATAFILE}, KEYWORDS)
    assert settings.sdk_key is None
    assert settings.datafile == DATAFILE.read_text()


def test_environment_values_are_converted_and_empty_ones_are_unset() -> None:
    settings = load_settings(
        None,
        ENVIRONMENT,
        environ={
            "OPTIMIZELY_DATAFILE_PATH": str(DATAFILE),
            "OPTIMIZELY_SHUTDOWN_TIMEOUT": "2.5",
            "OPTIMIZELY_MAX_EVENTS_PER_REQUEST": "7",
            "OPTIMIZELY_CLIENT_OPTIONS": '{"default_decide_options": ["DISABLE_DECISION_EVENT"]}',
            "OPTIMIZELY_EVENT_ENDPOINT": "",
            "OPTIMIZELY_API_TOKEN": "another tool's",
            "OPTIMIZELY_TEST_SDK_KEY": "named after a key, not a typo",
        },
    )
    assert (settings.shutdown_timeout, settings.max_events_per_request) == (2.5, 7)
    assert settings.client_options == {"default_decide_options": ["DISABLE_DECISION_EVENT"]}
    assert settings.event_endpoint is None
    with pytest.raises(ConfigurationError, match="OPTIMIZELY_SHUTDOWN_TIMEOUT must be seconds"):
        load_settings(None, ENVIRONMENT, environ={"OPTIMIZELY_SHUTDOWN_TIMEOUT": "5s"})


def test_the_defaults_are_the_delivery_engines() -> None:
    import inspect

    from optimizely_middleware import RequestScopedEventDispatcher

    settings = load_settings(None, ENVIRONMENT, environ={"OPTIMIZELY_SDK_KEY": "k"})
    dispatcher_defaults = inspect.signature(RequestScopedEventDispatcher).parameters
    assert (
        settings.shutdown_timeout
        == inspect.signature(EventSender).parameters["shutdown_timeout"].default
    )
    assert settings.max_events_per_request == dispatcher_defaults["max_events_per_request"].default
    assert settings.failed_requests == dispatcher_defaults["failed_requests"].default


def test_a_setting_of_another_framework_is_reported() -> None:
    app = Flask(__name__)
    app.config.update(OPTIMIZELY_DATAFILE_PATH=str(DATAFILE), OPTIMIZELY_VISITOR_COOKIE_NAME="v")
    with pytest.raises(ConfigurationError, match="setting of the Django integration"):
        OptimizelyFlask(app)


# -- the short Starlette setup, working ------------------------------------------------


@pytest.fixture
def endpoint_in_environment(
    event_endpoint: EventEndpoint, monkeypatch: pytest.MonkeyPatch
) -> Iterator[EventEndpoint]:
    monkeypatch.setenv("OPTIMIZELY_EVENT_ENDPOINT", event_endpoint.url)
    monkeypatch.setenv("OPTIMIZELY_DATAFILE_PATH", str(DATAFILE))
    yield event_endpoint


def test_one_line_adds_the_package_to_starlette_from_the_environment(
    endpoint_in_environment: EventEndpoint,
) -> None:
    async def home(request: Request) -> PlainTextResponse:
        client = optimizely_client(request)
        assert client is request.state.optimizely
        user = client.create_user_context(request.query_params["user"])
        return PlainTextResponse(str(user.decide("new_checkout").variation_key))

    app = Starlette(routes=[Route("/", home)])
    optimizely = OptimizelyStarlette(app)
    endpoint_in_environment.delay = 0.2
    with TestClient(app) as http:
        assert http.get("/", params={"user": "ann"}).status_code == 200
    # No waiting: leaving the client ran the lifespan shutdown, which flushed.
    assert [v["visitor_id"] for v in endpoint_in_environment.all_visitors()] == ["ann"]
    optimizely.dispatcher.close(0)


def test_init_app_twice_is_an_error(endpoint_in_environment: EventEndpoint) -> None:
    optimizely = OptimizelyStarlette(Starlette())
    with pytest.raises(RuntimeError, match="already set up"):
        optimizely.init_app(Starlette())
    optimizely.dispatcher.close(0)


def test_a_client_built_by_hand_needs_no_datafile_setting() -> None:
    from optimizely_middleware import RequestScopedEventDispatcher, create_client

    dispatcher = RequestScopedEventDispatcher()
    client = create_client(dispatcher, datafile=DATAFILE)
    optimizely = OptimizelyStarlette(Starlette(), client=client)
    assert (optimizely.client, optimizely.dispatcher) == (client, dispatcher)
    dispatcher.close(0)
