"""A one-module Django project (settings and URLconf) for the runserver test:
``GET /work/<user>`` fires 3 events through ``request.optimizely``.

``DJANGO_SETTINGS_MODULE=tests.apps.e2e_django_runserver``; events go to
``OPTIMIZELY_TEST_EVENT_ENDPOINT``; ``OPTIMIZELY_TEST_SIGTERM_FLUSH=1`` calls
``install_sigterm_flush()`` here, in settings, where the dispatcher is not at
hand yet (so every sender of the process is flushed on SIGTERM).
"""

from __future__ import annotations

import os
from pathlib import Path

from django.http import HttpRequest, JsonResponse
from django.urls import path

from optimizely_middleware import install_sigterm_flush
from tests.support.django import SERVER_LOGGING

DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
SECRET_KEY = "test-only"
ROOT_URLCONF = __name__
INSTALLED_APPS: list[str] = []
MIDDLEWARE = ["optimizely_middleware.django.OptimizelyMiddleware"]
DATABASES: dict[str, object] = {}
USE_TZ = True
OPTIMIZELY = {
    "DATAFILE_PATH": str(Path(__file__).resolve().parents[1] / "data" / "datafile.json"),
    "EVENT_ENDPOINT": os.environ.get("OPTIMIZELY_TEST_EVENT_ENDPOINT"),
    "SHUTDOWN_TIMEOUT": 20.0,
}
LOGGING = SERVER_LOGGING

if os.environ.get("OPTIMIZELY_TEST_SIGTERM_FLUSH"):
    install_sigterm_flush(timeout=20.0)


def work(request: HttpRequest, user_id: str) -> JsonResponse:
    user = request.optimizely.create_user_context(user_id, {"plan": "pro"})  # type: ignore[attr-defined]
    enabled = user.decide("new_checkout").enabled
    user.track_event("add_to_cart")
    user.track_event("purchase", {"revenue": 4200})
    return JsonResponse({"user": user_id, "enabled": enabled, "pid": os.getpid()})


urlpatterns = [path("work/<str:user_id>", work)]
