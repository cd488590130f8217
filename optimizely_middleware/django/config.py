"""Reading and checking ``settings.OPTIMIZELY``.

Usage::

    from optimizely_middleware.django.config import load_settings

    config = load_settings()   # raises ImproperlyConfigured with a clear message

Every mistake found here is an :class:`~django.core.exceptions.ImproperlyConfigured`
that names the key, what was expected and, for a misspelt key or value, the
closest valid one.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from optimizely_middleware.dispatcher import FailedRequestPolicy, OutsideScopePolicy

__all__ = ["SETTING", "OptimizelySettings", "load_settings", "parse_settings"]

SETTING = "OPTIMIZELY"

# Each known key and what it takes, for the error messages.
KNOWN_KEYS: dict[str, str] = {
    "DATAFILE_PATH": "the path of a datafile (JSON)",
    "DATAFILE": "the datafile's JSON text",
    "SDK_KEY": "an SDK key (the datafile is then fetched and polled)",
    "EVENT_ENDPOINT": "a URL that receives every event instead of Optimizely (or None)",
    "FAILED_REQUESTS": "'keep' or 'discard'",
    "OUTSIDE_SCOPE": "'send', 'drop' or 'raise'",
    "SHUTDOWN_TIMEOUT": "seconds, a number >= 0",
    "MAX_EVENTS_PER_REQUEST": "an int >= 1",
    "CLIENT_OPTIONS": "a dict of keywords for optimizely_middleware.create_client",
    "VISITOR_COOKIE_NAME": "the cookie name of visitor_id(request)",
    "VISITOR_COOKIE_MAX_AGE": "seconds the visitor cookie lives, an int >= 1",
}

EXAMPLE = (
    'OPTIMIZELY = {"DATAFILE_PATH": BASE_DIR / "datafile.json"}   '
    '# or {"SDK_KEY": os.environ["OPTIMIZELY_SDK_KEY"]}'
)


@dataclass(frozen=True)
class OptimizelySettings:
    """``settings.OPTIMIZELY``, checked, with the defaults filled in.

    Example::

        config = parse_settings({"SDK_KEY": "abc", "FAILED_REQUESTS": "discard"})
        assert config.shutdown_timeout == 5.0
    """

    datafile: str | None = None
    sdk_key: str | None = None
    event_endpoint: str | None = None
    failed_requests: FailedRequestPolicy = "keep"
    outside_scope: OutsideScopePolicy = "send"
    shutdown_timeout: float = 5.0
    max_events_per_request: int = 1000
    client_options: Mapping[str, Any] = field(default_factory=dict)
    visitor_cookie_name: str = "optimizely_visitor_id"
    visitor_cookie_max_age: int = 365 * 24 * 3600


def load_settings() -> OptimizelySettings:
    """Read ``settings.OPTIMIZELY`` from Django's settings and check it."""
    if not hasattr(settings, SETTING):
        raise ImproperlyConfigured(
            "optimizely_middleware.django needs settings.OPTIMIZELY, a dict with a datafile "
            f"or an SDK key; add it to your settings, for example: {EXAMPLE}"
        )
    return parse_settings(getattr(settings, SETTING))


def parse_settings(value: Any) -> OptimizelySettings:
    """Check one ``OPTIMIZELY`` dict; raise ImproperlyConfigured on any mistake."""
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(
            f"settings.OPTIMIZELY must be a dict, not {type(value).__name__}; for example: "
            f"{EXAMPLE}"
        )
    for key in value:
        if key not in KNOWN_KEYS:
            raise ImproperlyConfigured(f"Unknown key {key!r} in settings.OPTIMIZELY{_hint(key)}")
    sdk_key = _optional_str(value, "SDK_KEY")
    return OptimizelySettings(
        datafile=_datafile(value, sdk_key),
        sdk_key=sdk_key,
        event_endpoint=_endpoint(value.get("EVENT_ENDPOINT")),
        failed_requests=cast(
            FailedRequestPolicy, _choice(value, "FAILED_REQUESTS", ("keep", "discard"), "keep")
        ),
        outside_scope=cast(
            OutsideScopePolicy, _choice(value, "OUTSIDE_SCOPE", ("send", "drop", "raise"), "send")
        ),
        shutdown_timeout=_number(value, "SHUTDOWN_TIMEOUT", 5.0),
        max_events_per_request=_positive_int(value, "MAX_EVENTS_PER_REQUEST", 1000),
        client_options=_client_options(value.get("CLIENT_OPTIONS")),
        visitor_cookie_name=_optional_str(value, "VISITOR_COOKIE_NAME") or "optimizely_visitor_id",
        visitor_cookie_max_age=_positive_int(value, "VISITOR_COOKIE_MAX_AGE", 365 * 24 * 3600),
    )


def _hint(key: object) -> str:
    known = list(KNOWN_KEYS)
    close = difflib.get_close_matches(str(key).upper(), known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return "; known keys: " + ", ".join(known) + "."


def _problem(key: str, value: Any) -> ImproperlyConfigured:
    return ImproperlyConfigured(
        f"settings.OPTIMIZELY[{key!r}] must be {KNOWN_KEYS[key]}, not {value!r}"
    )


def _optional_str(config: Mapping[str, Any], key: str) -> str | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _problem(key, value)
    return value


def _datafile(config: Mapping[str, Any], sdk_key: str | None) -> str | None:
    datafile = config.get("DATAFILE")
    path = config.get("DATAFILE_PATH")
    if datafile is not None and path is not None:
        raise ImproperlyConfigured(
            "settings.OPTIMIZELY has both DATAFILE and DATAFILE_PATH; keep one of them."
        )
    if path is not None:
        if not isinstance(path, (str, Path)) or not str(path):
            raise _problem("DATAFILE_PATH", path)
        try:
            datafile = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ImproperlyConfigured(
                f"settings.OPTIMIZELY['DATAFILE_PATH'] = {str(path)!r} cannot be read: {reason}"
            ) from exc
        source = f"the file {str(path)!r} (DATAFILE_PATH)"
    elif datafile is not None:
        if isinstance(datafile, bytes):
            datafile = datafile.decode("utf-8")
        if not isinstance(datafile, str):
            raise _problem("DATAFILE", datafile)
        source = "settings.OPTIMIZELY['DATAFILE']"
    elif sdk_key is None:
        raise ImproperlyConfigured(
            "settings.OPTIMIZELY needs a datafile or an SDK key: set DATAFILE_PATH, DATAFILE "
            f"or SDK_KEY, for example: {EXAMPLE}"
        )
    else:
        return None
    try:
        json.loads(datafile)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{source} is not valid JSON: {exc}") from exc
    return datafile


def _endpoint(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise _problem("EVENT_ENDPOINT", value)
    return value


def _choice(config: Mapping[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
    value = config.get(key, default)
    if value in choices:
        return str(value)
    close = difflib.get_close_matches(str(value).lower(), choices, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else "."
    raise ImproperlyConfigured(
        f"settings.OPTIMIZELY[{key!r}] must be {KNOWN_KEYS[key]}, not {value!r}{hint}"
    )


def _number(config: Mapping[str, Any], key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise _problem(key, value)
    return float(value)


def _positive_int(config: Mapping[str, Any], key: str, default: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _problem(key, value)
    return value


def _client_options(value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _problem("CLIENT_OPTIONS", value)
    return dict(value)
