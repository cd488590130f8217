"""Helpers shared by the Django tests."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from optimizely_middleware.dispatcher import (
    RequestScopedEventDispatcher,
    add_request_end_listener,
    remove_request_end_listener,
)
from tests.support.fakes import visitor_id_of

ROOT = Path(__file__).resolve().parents[2]
DATAFILE_PATH = ROOT / "tests" / "data" / "datafile.json"
EXAMPLE_PROJECT = ROOT / "examples" / "django_project"

# settings.LOGGING of the served test projects: the package's INFO lines (start-up,
# shutdown flush, drops) on stderr, where the tests read the server's log.
SERVER_LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"optimizely_middleware": {"handlers": ["stderr"], "level": "INFO"}},
}


def configure_django() -> None:
    """Configure Django in this process once, for the in-process tests.

    Called by a fixture, not at import, so collecting the suite does not
    configure Django (pytest-django stays inactive for the other tests).
    """
    import django
    from django.conf import settings

    if settings.configured:
        return
    settings.configure(
        DEBUG=False,
        SECRET_KEY="tests-only",
        ALLOWED_HOSTS=["testserver", "127.0.0.1", "localhost"],
        INSTALLED_APPS=[],
        DATABASES={},
        MIDDLEWARE=["optimizely_middleware.django.OptimizelyMiddleware"],
        ROOT_URLCONF="tests.apps.django_views",
        USE_TZ=True,
        OPTIMIZELY={"DATAFILE_PATH": str(DATAFILE_PATH)},
    )
    django.setup()


class HandOffs:
    """Each request scope that closed: (visitor ids, failed), in order."""

    def __init__(self) -> None:
        self.ended: list[tuple[list[str], bool]] = []

    def __call__(self, d: RequestScopedEventDispatcher, events: list[Any], failed: bool) -> None:
        self.ended.append(([visitor_id_of(e) for e in events], failed))

    def __len__(self) -> int:
        return len(self.ended)


@contextmanager
def recording_hand_offs() -> Iterator[HandOffs]:
    hand_offs = HandOffs()
    add_request_end_listener(hand_offs)
    try:
        yield hand_offs
    finally:
        remove_request_end_listener(hand_offs)


class DatafileServer:
    """Serves ``datafile`` (the test datafile unless replaced) at any path, on
    127.0.0.1; ``/count`` says how many datafile GETs it answered."""

    def __init__(self) -> None:
        self.fetches = 0
        self.delay = 0.0  # seconds before each datafile answer: a slow CDN
        self.datafile = DATAFILE_PATH.read_bytes()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/count":
                    body = str(server.fetches).encode()
                else:
                    time.sleep(server.delay)
                    server.fetches += 1
                    body = server.datafile
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def count(self) -> int:
        with urllib.request.urlopen(self.url + "/count", timeout=10) as response:
            return int(response.read())

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
