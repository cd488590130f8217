"""pytest plugin for asserting on the Optimizely events a request sends.

Installed with the package (through the ``pytest11`` entry point), it adds one
fixture, ``optimizely_events``: an :class:`~optimizely_middleware.testing.EventCapture`
installed for the duration of the test. Nothing else in the process changes,
and tests that do not ask for the fixture are not touched.

Usage::

    def test_checkout(client, optimizely_events):
        client.post("/checkout")
        optimizely_events.assert_impression(flag_key="new_checkout", variation_key="on")
        optimizely_events.assert_conversion(event_key="purchase", revenue=1299, count=1)

To capture without validating payloads, override the fixture in a
``conftest.py``::

    @pytest.fixture
    def optimizely_events():
        with EventCapture(validate=False) as events:
            yield events
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from optimizely_middleware.testing.capture import EventCapture

__all__ = ["optimizely_events"]


@pytest.fixture
def optimizely_events() -> Iterator[EventCapture]:
    """Every Optimizely event sent during the test, captured instead of sent.

    Reads (``impressions``, ``conversions``, ``requests``, ``last_request``,
    ``posts``) flush the senders first. A POST with a malformed payload fails
    the test. The capture is removed when the test ends, pass or fail.
    """
    # Imported here so that loading the plugin in every pytest run stays cheap.
    from optimizely_middleware.testing.capture import EventCapture

    with EventCapture() as capture:
        yield capture
