"""Settings of the served test project: the example project's settings, the
test views added, and a few values from the environment.

The servers run with ``DJANGO_SETTINGS_MODULE=tests.apps.django_settings``
and ``examples/django_project`` on the Python path, so they load the
example's own ``mysite/wsgi.py`` and ``mysite/asgi.py``:
``OPTIMIZELY_EVENT_ENDPOINT`` and ``OPTIMIZELY_DATAFILE_PATH`` (read by the
example), ``OPTIMIZELY_TEST_FAILED_REQUESTS``, ``OPTIMIZELY_TEST_SHUTDOWN_TIMEOUT``;
``OPTIMIZELY_TEST_SDK_KEY`` with ``OPTIMIZELY_TEST_DATAFILE_URL`` (a URL
template) polls the datafile from a local server instead of reading the file.
"""

from __future__ import annotations

import os

from mysite.settings import *  # noqa: F403
from mysite.settings import OPTIMIZELY

from tests.support.django import SERVER_LOGGING

ROOT_URLCONF = "tests.apps.django_e2e_urls"

OPTIMIZELY = {
    **OPTIMIZELY,
    "FAILED_REQUESTS": os.environ.get("OPTIMIZELY_TEST_FAILED_REQUESTS", "keep"),
    "SHUTDOWN_TIMEOUT": float(os.environ.get("OPTIMIZELY_TEST_SHUTDOWN_TIMEOUT", "30")),
}

if "OPTIMIZELY_TEST_SDK_KEY" in os.environ:
    del OPTIMIZELY["DATAFILE_PATH"]
    OPTIMIZELY["SDK_KEY"] = os.environ["OPTIMIZELY_TEST_SDK_KEY"]
    OPTIMIZELY["CLIENT_OPTIONS"] = {
        "url_template": os.environ["OPTIMIZELY_TEST_DATAFILE_URL"],
        "update_interval": 0.2,
    }

LOGGING = SERVER_LOGGING
