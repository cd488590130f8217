"""Settings of the example project: the Optimizely parts are ``MIDDLEWARE`` and ``OPTIMIZELY``.

``OPTIMIZELY_EVENT_ENDPOINT`` (default: the local devserver, ``python -m
optimizely_middleware.devserver``) and ``OPTIMIZELY_DATAFILE_PATH`` (default:
``examples/datafile.json``) come from the environment; leave
``EVENT_ENDPOINT`` out in production so the events go to Optimizely.

Every key of ``OPTIMIZELY`` can come from an ``OPTIMIZELY_*`` environment
variable instead (docs/configuration.md): with ``OPTIMIZELY_SDK_KEY`` set
there, the ``OPTIMIZELY`` dict can be left out; a key set here wins.
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "only-for-the-example")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}

MIDDLEWARE = [
    # First, so that it sees the final response and every event of the request.
    "optimizely_middleware.django.OptimizelyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]

ROOT_URLCONF = "mysite.urls"
WSGI_APPLICATION = "mysite.wsgi.application"
USE_TZ = True

OPTIMIZELY = {
    "DATAFILE_PATH": os.environ.get(
        "OPTIMIZELY_DATAFILE_PATH", str(BASE_DIR.parent / "datafile.json")
    ),  # or "SDK_KEY": os.environ["OPTIMIZELY_SDK_KEY"]
    "EVENT_ENDPOINT": os.environ.get(
        "OPTIMIZELY_EVENT_ENDPOINT", "http://127.0.0.1:8765/v1/events"
    ),
    "FAILED_REQUESTS": "keep",
    "SHUTDOWN_TIMEOUT": 5.0,
}
