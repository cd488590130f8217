from __future__ import annotations

import datetime
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
from optimizely import optimizely
from optimizely.event.event_processor import ForwardingEventProcessor
from optimizely.event.log_event import LogEvent
from optimizely.helpers import enums
from optimizely.notification_center import NotificationCenter
from pytest_httpserver import HTTPServer

from optimizely_middleware import (
    EventSender,
    RequestScopedEventDispatcher,
    WiringWarning,
    check_client,
    create_client,
)
from optimizely_middleware.delivery.encoding import EventEncoder, PendingUserEvent
from optimizely_middleware.errors import ConfigurationError
from optimizely_middleware.processor import RequestScopedEventProcessor
from optimizely_middleware.sdk_logging import SDKLogger
from tests.support.endpoint import EventEndpoint
from tests.support.fakes import RecordingSink


def test_create_client_keeps_user_events_in_the_request_and_fires_log_event_after(
    datafile: str,
) -> None:
    sink = RecordingSink()
    dispatcher = RequestScopedEventDispatcher(sink)
    client = create_client(dispatcher, datafile=datafile)
    assert isinstance(client.event_processor, RequestScopedEventProcessor)
    notified: list[LogEvent] = []
    client.notification_center.add_notification_listener(
        enums.NotificationTypes.LOG_EVENT, notified.append
    )
    with dispatcher.request_scope():
        decision = client.create_user_context("user-1").decide("new_checkout")
        assert sink.batches == []
    assert decision.variation_key in ("on", "off")
    ((item,),) = sink.batches
    assert isinstance(item, PendingUserEvent)
    assert item.notification_center is client.notification_center
    assert notified == []  # nothing was built on the request's thread
    encoded = EventEncoder().encode(item)  # what the sender does after the response
    assert len(notified) == 1
    assert json.loads(encoded.prefix + encoded.visitors + encoded.suffix) == notified[0].params
    assert check_client(client, dispatcher) is True


def test_create_client_delivers_to_a_real_endpoint_and_counts_bad_events(
    datafile: str, event_endpoint: EventEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=event_endpoint.url))
    client = create_client(dispatcher, datafile=datafile)
    user = client.create_user_context("secret-user", {"plan": "secret-plan"})
    bad_tags: list[dict[str, Any]] = [
        {"s": {1, 2}},
        {"when": datetime.datetime(2026, 1, 1)},
        {"b": b"secret-bytes"},
        {"deep": deep(10_000)},
        {"x": math.nan},
    ]
    try:
        with caplog.at_level(logging.INFO), dispatcher.request_scope():
            user.decide("new_checkout")
            for tags in bad_tags:
                user.track_event("purchase", tags)  # never raises into the app
            user.track_event("purchase", {"revenue": 1299})
        assert dispatcher.flush(10)
        visitors = event_endpoint.wait_for_visitors(2)
        stats = dispatcher.stats()
    finally:
        dispatcher.close(5)
    assert len(visitors) == 2
    assert stats["dropped"] == {"unserializable": 5}
    assert stats["delivered_events"] == 2
    lines = [r for r in caplog.records if "unserializable" in r.getMessage()]
    assert lines and all("secret" not in r.getMessage() for r in caplog.records)


def deep(n: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(n):
        value = {"a": value}
    return value


def test_create_client_keeps_a_given_notification_center(datafile: str) -> None:
    dispatcher = RequestScopedEventDispatcher(RecordingSink())
    center = NotificationCenter()
    client = create_client(dispatcher, datafile=datafile, notification_center=center)
    assert client.notification_center is center
    assert client.event_processor.notification_center is center  # type: ignore[attr-defined]


def test_create_client_refuses_settings_that_would_break_the_wiring(datafile: str) -> None:
    dispatcher = RequestScopedEventDispatcher(RecordingSink())
    with pytest.raises(TypeError, match="datafile or an sdk_key"):
        create_client(dispatcher)
    with pytest.raises(TypeError, match="event_processor"):
        create_client(dispatcher, datafile=datafile, event_processor=object())
    with pytest.raises(TypeError, match="event_dispatcher"):
        create_client(dispatcher, datafile=datafile, event_dispatcher=object())
    with pytest.raises(TypeError, match="event_processor_options"):
        create_client(dispatcher, datafile=datafile, event_processor_options={"batch_size": 1})
    with pytest.raises(TypeError, match="config_manager or the polling options"):
        create_client(
            dispatcher,
            sdk_key="local-test-sdk-key",
            update_interval=10,
            config_manager=object(),
        )


def test_create_client_with_an_sdk_key_polls_the_datafile(
    datafile: str, httpserver: HTTPServer, event_endpoint: EventEndpoint
) -> None:
    httpserver.expect_request("/datafiles/local-test-sdk-key.json").respond_with_data(
        datafile, content_type="application/json"
    )
    dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=event_endpoint.url))
    client = create_client(
        dispatcher,
        sdk_key="local-test-sdk-key",
        url_template=httpserver.url_for("/datafiles/{sdk_key}.json"),
        blocking_timeout=10,
    )
    try:
        assert isinstance(client.event_processor, RequestScopedEventProcessor)
        with dispatcher.request_scope():
            client.track("purchase", "user-2")
        assert dispatcher.flush(10)
        visitors = event_endpoint.wait_for_visitors(1)
        assert visitors[0]["visitor_id"] == "user-2"
    finally:
        client.close()
        dispatcher.close(5)


def test_check_client_warns_for_the_default_batch_processor(datafile: str) -> None:
    dispatcher = RequestScopedEventDispatcher(RecordingSink())
    client = optimizely.Optimizely(datafile, event_dispatcher=dispatcher)
    try:
        with pytest.warns(WiringWarning, match="BatchEventProcessor"):
            assert check_client(client, dispatcher) is False
    finally:
        client.close()


def test_check_client_warns_for_a_separate_notification_center(datafile: str) -> None:
    dispatcher = RequestScopedEventDispatcher(RecordingSink())
    processor = ForwardingEventProcessor(dispatcher)  # its own NotificationCenter
    client = optimizely.Optimizely(datafile, event_dispatcher=dispatcher, event_processor=processor)
    with pytest.warns(WiringWarning, match="LOG_EVENT"):
        assert check_client(client, dispatcher) is False


def test_check_client_warns_for_another_dispatcher(datafile: str) -> None:
    ours = RequestScopedEventDispatcher(RecordingSink())
    other = RequestScopedEventDispatcher(RecordingSink())
    client = create_client(other, datafile=datafile)
    with pytest.warns(WiringWarning, match="different dispatcher"):
        assert check_client(client, ours) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_client(client, other) is True


def test_check_client_accepts_a_forwarding_processor_wired_right(datafile: str) -> None:
    dispatcher = RequestScopedEventDispatcher(RecordingSink())
    center = NotificationCenter()
    client = optimizely.Optimizely(
        datafile,
        event_processor=ForwardingEventProcessor(dispatcher, notification_center=center),
        notification_center=center,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_client(client, dispatcher) is True


def test_check_client_warns_for_a_request_scoped_processor_without_the_clients_centre(
    datafile: str,
) -> None:
    dispatcher = RequestScopedEventDispatcher(RecordingSink())
    client = optimizely.Optimizely(
        datafile, event_processor=RequestScopedEventProcessor(dispatcher)
    )
    with pytest.warns(WiringWarning, match="LOG_EVENT"):
        assert check_client(client, dispatcher) is False


# -- the SDK's logs ------------------------------------------------------------


def test_an_app_logging_at_info_gets_no_visitor_ids_from_the_sdk(
    datafile: str, caplog: pytest.LogCaptureFixture
) -> None:
    dispatcher = RequestScopedEventDispatcher(RecordingSink())
    client = create_client(dispatcher, datafile=datafile)
    with caplog.at_level(logging.INFO), dispatcher.request_scope():
        user = client.create_user_context("visitor-42", {"plan": "pro"})
        user.decide("new_checkout")
        user.track_event("purchase", {"value": "2.5"})
        client.activate("headline_test", "visitor-42")
        client.track("no_such_event", "visitor-42")
    assert "visitor-42" not in caplog.text
    # The SDK's own lines are there, one level down, for whoever asks.
    with (
        caplog.at_level(logging.DEBUG, logger="optimizely_middleware.sdk"),
        dispatcher.request_scope(),
    ):
        client.track("purchase", "visitor-43")
    sdk = [r for r in caplog.records if r.name == "optimizely_middleware.sdk"]
    assert any("visitor-43" in r.getMessage() for r in sdk)
    assert all(r.levelno == logging.DEBUG for r in sdk if "visitor-43" in r.getMessage())


def test_sdk_warnings_keep_their_level_without_the_user_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sdk_logger = SDKLogger()
    with caplog.at_level(logging.DEBUG, logger="optimizely_middleware.sdk"):
        sdk_logger.warning('Failed to save user profile of user "visitor-44" because x.')
        sdk_logger.error("Error dispatching event: {'visitor_id': 'visitor-44'} boom")
        sdk_logger.warning("Datafile has an unknown version.")
    loud = [(r.levelno, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == [
        (logging.WARNING, 'Failed to save user profile of user "<redacted>" because x.'),
        (logging.ERROR, "Error dispatching event: <redacted>"),
        (logging.WARNING, "Datafile has an unknown version."),
    ]
    assert sum("visitor-44" in r.getMessage() for r in caplog.records) == 2  # at DEBUG


def test_a_logger_passed_to_create_client_is_used_as_it_is(
    datafile: str, caplog: pytest.LogCaptureFixture
) -> None:
    mine = logging.getLogger("tests.my_sdk_logger")
    dispatcher = RequestScopedEventDispatcher(RecordingSink())
    client = create_client(dispatcher, datafile=datafile, logger=mine)
    with caplog.at_level(logging.INFO, logger="tests.my_sdk_logger"):
        client.track("purchase", "visitor-45")
    assert any("visitor-45" in r.getMessage() for r in caplog.records if r.name == mine.name)


# -- the datafile: JSON text, a path, or a clear error ---------------------------------


@pytest.mark.parametrize("as_type", [str, Path], ids=["str", "Path"])
def test_create_client_takes_the_path_of_a_datafile(
    as_type: type, tmp_path: Path, datafile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "datafile.json").write_text(datafile)
    monkeypatch.chdir(tmp_path)  # a relative path, as a user writes it
    dispatcher = RequestScopedEventDispatcher(RecordingSink())
    client = create_client(dispatcher, datafile=as_type("datafile.json"))
    with dispatcher.request_scope():
        decision = client.create_user_context("user-1").decide("new_checkout")
    assert decision.variation_key is not None  # the client decides: the file was read
    client.close()


@pytest.mark.parametrize(
    ("datafile", "message"),
    [
        ("missing.json", "names a file, and that file cannot be read: No such file"),
        (Path("missing.json"), "cannot be read: No such file"),
        ("", "got an empty datafile"),
        ("{not json", "rejected the datafile: it is not valid JSON"),
        ("{}", "rejected the datafile: it is JSON, but not an Optimizely datafile"),
        ('{"version": "4"}', "rejected the datafile"),
    ],
)
def test_a_datafile_that_cannot_be_used_is_an_error(
    datafile: str | Path, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError) as raised:
        create_client(RequestScopedEventDispatcher(RecordingSink()), datafile=datafile)
    assert message in str(raised.value)


def test_a_file_the_sdk_rejects_is_named(tmp_path: Path) -> None:
    path = tmp_path / "datafile.json"
    path.write_text('{"not": "a datafile"}')
    with pytest.raises(ConfigurationError, match=f"rejected the datafile in '{path}'"):
        create_client(RequestScopedEventDispatcher(RecordingSink()), datafile=path)
