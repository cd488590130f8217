"""pytest-django with the package's ``optimizely_events`` fixture, as a user's
project runs it: a separate pytest process with ``DJANGO_SETTINGS_MODULE``
set to the example project's settings (so this process stays unconfigured)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.django import EXAMPLE_PROJECT, ROOT

pytestmark = pytest.mark.slow

USER_TESTS = """
import asyncio

from django.test import override_settings

from optimizely_middleware.django import get_dispatcher


def test_checkout(client, optimizely_events):          # pytest-django's client
    client.get("/")
    client.post("/buy")
    optimizely_events.assert_impression(flag_key="new_checkout", count=2)
    assert optimizely_events.last_request.conversions[0].revenue == 4200
    assert len(optimizely_events.requests) == 2
    # one visitor (the cookie), never "None"
    [visitor] = {r.impressions[0].user_id for r in optimizely_events.requests}
    assert visitor == client.cookies["optimizely_visitor_id"].value


def test_async_view(async_client, optimizely_events):
    response = asyncio.run(async_client.get("/async"))
    assert response.status_code == 200
    optimizely_events.assert_impression(flag_key="new_checkout", count=1)
    assert len(optimizely_events.requests) == 1


def test_settings_fixture_rebuilds_the_client(settings, client, optimizely_events):
    settings.OPTIMIZELY = {**settings.OPTIMIZELY, "FAILED_REQUESTS": "discard"}
    assert get_dispatcher().failed_requests == "discard"
    client.get("/")
    assert len(optimizely_events.impressions) == 1
"""


def test_pytest_django_client_and_the_optimizely_events_fixture(tmp_path: Path) -> None:
    (tmp_path / "test_shop.py").write_text(USER_TESTS)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "mysite.settings",
        "PYTHONPATH": os.pathsep.join([str(EXAMPLE_PROJECT), str(ROOT)]),
        # Nowhere to send: the fixture captures every POST in the test process.
        "OPTIMIZELY_EVENT_ENDPOINT": "http://127.0.0.1:9/v1/events",
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", "."],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
