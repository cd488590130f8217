"""gunicorn settings for the end-to-end tests.

Records the path of every response that gunicorn sent with ``sendfile()``
(its ``wsgi.file_wrapper`` fast path) in the file named by
``OPTIMIZELY_TEST_SENDFILE_LOG``, so a test can check the fast path was taken.
"""

from __future__ import annotations

import os
from typing import Any

from gunicorn.http import wsgi

_sendfile = wsgi.Response.sendfile


def _recording_sendfile(self: Any, respiter: Any) -> bool:
    used = bool(_sendfile(self, respiter))
    log = os.environ.get("OPTIMIZELY_TEST_SENDFILE_LOG")
    if used and log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{self.req.path}\n")
    return used


wsgi.Response.sendfile = _recording_sendfile  # type: ignore[method-assign]
