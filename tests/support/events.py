"""Helpers shared by the delivery engine's tests: SDK events, fake transports, log watching."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from optimizely.error_handler import NoOpErrorHandler
from optimizely.event.event_factory import EventFactory
from optimizely.event.log_event import LogEvent
from optimizely.event.user_event import UserEvent
from optimizely.event.user_event_factory import UserEventFactory
from optimizely.project_config import ProjectConfig

from optimizely_middleware.delivery.transport import TransportResponse
from tests.support.servers import free_port as free_port  # the engine's tests import it here

SDK_LOGGER = logging.getLogger("optimizely.sdk.tests")
SENDER_LOGGER = "optimizely_middleware.sender"


def compact(params: Any) -> bytes:
    return json.dumps(params, separators=(",", ":")).encode()


def project_config(datafile: str, *, revision: str | None = None) -> ProjectConfig:
    if revision is not None:
        data = json.loads(datafile)
        data["revision"] = revision
        datafile = json.dumps(data)
    return ProjectConfig(datafile, SDK_LOGGER, NoOpErrorHandler())


def impression(config: ProjectConfig, user_id: str, variation: str = "bold") -> UserEvent:
    experiment = config.get_experiment_from_key("headline_test")
    variation_id = config.get_variation_from_key("headline_test", variation).id
    event = UserEventFactory.create_impression_event(
        config,
        experiment,
        variation_id,
        "",
        "headline_test",
        "experiment",
        True,
        user_id,
        {"plan": "pro"},
        None,
    )
    assert event is not None
    return event


def conversion(config: ProjectConfig, user_id: str, revenue: int = 1299) -> UserEvent:
    event = UserEventFactory.create_conversion_event(
        config, "purchase", user_id, {"plan": "free"}, {"revenue": revenue, "value": 1.5}
    )
    assert event is not None
    return event


def log_event(user_events: UserEvent | list[UserEvent]) -> LogEvent:
    event = EventFactory.create_log_event(user_events, SDK_LOGGER)  # type: ignore[arg-type]
    assert event is not None
    return event


def three_events(datafile: str) -> list[LogEvent]:
    """A request's worth: two users, an impression and a conversion of user-1."""
    config = project_config(datafile)
    return [
        log_event(impression(config, "user-1")),
        log_event(conversion(config, "user-1")),
        log_event(impression(config, "user-2", "control")),
    ]


class RecordingTransport:
    """Records each POST (and the engine clock's time of it); answers with ``respond``.

    ``respond(n)`` gets the POST's number (0 first) and returns a
    TransportResponse or raises. ``posted`` is set at every POST.
    """

    def __init__(
        self,
        respond: Callable[[int], TransportResponse] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.posts: list[tuple[str, bytes, dict[str, str]]] = []
        self.times: list[float] = []
        self.respond = respond
        self.clock = clock
        self.lock = threading.Condition()

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> TransportResponse:
        with self.lock:
            n = len(self.posts)
            self.posts.append((url, body, headers))
            self.times.append(self.clock() if self.clock else 0.0)
            self.lock.notify_all()
        if self.respond is not None:
            return self.respond(n)
        return TransportResponse(200, {})

    def wait_for_posts(self, n: int, timeout: float = 10.0) -> None:
        with self.lock:
            assert self.lock.wait_for(lambda: len(self.posts) >= n, timeout), len(self.posts)

    @property
    def visitors(self) -> list[dict[str, Any]]:
        return [v for _, body, _ in self.posts for v in json.loads(body).get("visitors", [])]

    def close(self) -> None:
        pass


class LogWatcher(logging.Handler):
    """Records the sender's log lines; ``seen`` is set when one contains ``text``."""

    def __init__(self, text: str = "") -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.seen = threading.Event()
        self.messages: list[tuple[int, str]] = []
        logging.getLogger(SENDER_LOGGER).addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append((record.levelno, message))
        if self.text and self.text in message:
            self.seen.set()

    def remove(self) -> None:
        logging.getLogger(SENDER_LOGGER).removeHandler(self)
