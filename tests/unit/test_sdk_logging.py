"""The SDK's logger (``optimizely_middleware.sdk_logging``): no visitor id above DEBUG.

The end-to-end test drives the real SDK, with the test datafile and a user
profile service that fails, with visitor ids made of the characters that
broke a quote-delimited redaction: quotes, backslashes, newlines, and the
SDK's own text around the id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from optimizely.helpers.event_tag_utils import EventTags
from optimizely.optimizely_user_context import UserAttributes

from optimizely_middleware import RequestScopedEventDispatcher, create_client
from optimizely_middleware.sdk_logging import SDK_TEMPLATES, SDKLogger, redact_sdk_line
from tests.support.fakes import RecordingSink

MARKER = "SECRET42"

VISITOR_IDS = [
    f'a-user"{MARKER}',
    f'"{MARKER}"',
    f'back\\slash\\"{MARKER}\\',
    f"new\nline\n{MARKER}\n",
    f'quote" as lookup failed.{MARKER}" as lookup failed.',
    f'user "{MARKER}".',
    f"{MARKER}",
]


class FailingProfiles:
    """A user profile service whose lookups or saves fail, as a broken store does.

    ``mode``: ``"lookup"`` raises on lookup, ``"save"`` raises on save (the
    exception's text repeats the id, as a store's errors often do) and
    ``"corrupt"`` returns a profile whose bucket map cannot be updated.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def lookup(self, user_id: str) -> dict[str, Any] | None:
        if self.mode == "lookup":
            raise ConnectionError(f"no profile store for {user_id}")
        if self.mode == "corrupt":
            frozen = FrozenMap({"retired-experiment": {"variation_id": "1"}})
            return {"user_id": user_id, "experiment_bucket_map": frozen}
        return None

    def save(self, profile: dict[str, Any]) -> None:
        if self.mode == "save":
            raise ConnectionError(f"cannot save {profile['user_id']}")


class FrozenMap(dict[str, Any]):
    """A bucket map that refuses updates (a profile store handing out read-only data)."""

    def update(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("read-only profile")


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record of every logger, DEBUG included."""
    with caplog.at_level(logging.DEBUG):
        yield caplog


def visible_text(record: logging.LogRecord) -> str:
    """What a handler would write for ``record``: the message and any traceback."""
    return logging.Formatter("%(message)s").format(record)


@pytest.mark.parametrize("mode", ["lookup", "save", "corrupt"])
def test_no_visitor_id_reaches_info_or_above_through_the_real_sdk(
    datafile: str, mode: str, logs: pytest.LogCaptureFixture
) -> None:
    dispatcher = RequestScopedEventDispatcher(RecordingSink())
    client = create_client(
        dispatcher, datafile=datafile, user_profile_service=FailingProfiles(mode)
    )
    with dispatcher.request_scope():
        for visitor_id in VISITOR_IDS:
            client.activate("headline_test", visitor_id, UserAttributes({"plan": "pro"}))
            user = client.create_user_context(visitor_id, UserAttributes({"plan": "pro"}))
            assert user is not None
            user.decide("new_checkout")
            user.track_event("purchase", EventTags({"revenue": 1299, "note": MARKER}))
            client.track("add_to_cart", visitor_id)
            client.is_feature_enabled("new_checkout", visitor_id)

    records = logs.records
    loud = [r for r in records if r.levelno >= logging.INFO]
    leaked = [visible_text(r) for r in loud if MARKER in visible_text(r)]
    assert leaked == []
    # The failures were logged, loud and redacted, and in full at DEBUG only.
    expected = {
        "lookup": 'Unable to retrieve user profile for user "<redacted>" as lookup failed.',
        "save": 'Failed to save user profile of user "<redacted>".',
        "corrupt": 'Unable to save user profile for user "<redacted>".',
    }[mode]
    assert sum(r.getMessage() == expected for r in loud) >= len(VISITOR_IDS)
    assert all(r.levelno >= logging.WARNING for r in loud if r.getMessage() == expected)
    full = [r for r in records if r.levelno == logging.DEBUG and MARKER in visible_text(r)]
    for visitor_id in VISITOR_IDS:
        assert any(visitor_id in r.getMessage() for r in full), visitor_id


@given(visitor_id=st.text(), error=st.text())
def test_every_template_redacts_any_id(visitor_id: str, error: str) -> None:
    lines = {
        'Unable to retrieve user profile for user "{}" as lookup failed.': (visitor_id,),
        'Unable to save user profile for user "{}".': (visitor_id,),
        'Failed to save user profile of user "{}" for exception:{}".': (visitor_id, error),
        "Error dispatching event: {} {}": (visitor_id, error),
        "ODP event send failed ({}).": (visitor_id,),
    }
    for template, (prefix, suffix) in zip(
        lines, ((t.prefix, t.suffix) for t in SDK_TEMPLATES), strict=True
    ):
        line = template.format(*lines[template])
        assert redact_sdk_line(line) == f"{prefix}<redacted>{suffix}"


def test_a_line_of_another_sdk_version_loses_everything_between_its_first_and_last_quote() -> None:
    line = f'Could not bucket user "x\\"{MARKER}\n" into experiment "exp".'
    assert redact_sdk_line(line) == 'Could not bucket user "<redacted>".'
    assert redact_sdk_line("Datafile has an unknown version.") == (
        "Datafile has an unknown version."
    )


def test_a_redacted_line_keeps_its_level_and_its_traceback_goes_to_debug(
    logs: pytest.LogCaptureFixture,
) -> None:
    try:
        raise ConnectionError(f"no profile store for {MARKER}")
    except ConnectionError:
        SDKLogger().exception(
            f'Unable to retrieve user profile for user "{MARKER}" as lookup failed.'
        )
    [debug, error] = logs.records
    assert (error.levelno, error.exc_info) == (logging.ERROR, None)
    assert MARKER not in visible_text(error)
    assert debug.levelno == logging.DEBUG and MARKER in visible_text(debug)
    assert debug.exc_info is not None
