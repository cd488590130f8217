from __future__ import annotations

import subprocess
import sys

import optimizely_middleware


def test_every_public_name_resolves() -> None:
    for name in optimizely_middleware.__all__:
        assert getattr(optimizely_middleware, name) is not None
    assert optimizely_middleware.__version__ == "0.1.0"


def test_importing_the_package_does_not_import_the_sdk_or_a_framework() -> None:
    code = (
        "import sys, optimizely_middleware, optimizely_middleware.pytest_plugin;"
        "print(sorted(m for m in ('optimizely', 'flask', 'starlette', 'requests')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
