"""The settings keys, and how each value is checked.

Usage::

    from optimizely_middleware.settings.values import endpoint

    endpoint("localhost:8765", "OPTIMIZELY_EVENT_ENDPOINT")
    # ConfigurationError: OPTIMIZELY_EVENT_ENDPOINT must be a URL (http:// or https://) ...;
    # did you mean 'http://localhost:8765'?

Each check takes the value and the ``label`` that names its key the way its
source spells it; :mod:`optimizely_middleware.settings.model` puts them together.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from optimizely_middleware.errors import ConfigurationError

__all__ = [
    "DATAFILE_SOURCES",
    "KEYS",
    "NoDatafileError",
    "boolean",
    "checked_datafile",
    "choice",
    "client_options",
    "close_match",
    "endpoint",
    "number",
    "optional_str",
    "positive_int",
    "problem",
]

DATAFILE_SOURCES = ("DATAFILE_PATH", "DATAFILE", "SDK_KEY")

# Each key and what it takes, for the error messages and docs/configuration.md.
KEYS: dict[str, str] = {
    "DATAFILE_PATH": "the path of a datafile (a JSON file)",
    "DATAFILE": "the datafile's JSON text",
    "SDK_KEY": "an SDK key (the datafile is then fetched and polled)",
    "EVENT_ENDPOINT": "a URL (http:// or https://) that receives every event instead of "
    "Optimizely's endpoint, or None",
    "FAILED_REQUESTS": "'keep' or 'discard'",
    "OUTSIDE_SCOPE": "'send', 'drop' or 'raise'",
    "SHUTDOWN_TIMEOUT": "seconds, a number >= 0",
    "MAX_EVENTS_PER_REQUEST": "an int >= 1",
    "CLIENT_OPTIONS": "a dict of keywords for optimizely_middleware.create_client",
    "CLOSE_AT_EXIT": "True or False",
    "VISITOR_COOKIE_NAME": "the cookie name of visitor_id(request)",
    "VISITOR_COOKIE_MAX_AGE": "seconds the visitor cookie lives, an int >= 1",
}


class NoDatafileError(ConfigurationError):
    """Neither a datafile nor an SDK key is set anywhere."""


def close_match(name: str, choices: list[str] | tuple[str, ...], cutoff: float = 0.6) -> str | None:
    """The closest of ``choices`` to ``name`` (case-insensitive), or None."""
    close = difflib.get_close_matches(name.upper(), [c.upper() for c in choices], 1, cutoff)
    if not close:
        return None
    return next(c for c in choices if c.upper() == close[0])


def problem(key: str, value: Any, label: str, hint: str = "") -> ConfigurationError:
    return ConfigurationError(f"{label} must be {KEYS[key]}, not {value!r}{hint}")


def optional_str(value: Any, key: str, label: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise problem(key, value, label)
    return value


def checked_datafile(
    merged: Mapping[str, tuple[Any, str]], sdk_key: str | None, missing: str | None
) -> str | None:
    """The datafile's text from DATAFILE_PATH or DATAFILE, checked as JSON.

    ``missing``: the message when neither (nor an SDK key) is set; None when
    that is allowed (a client given rather than built).
    """
    datafile, text_label = merged.get("DATAFILE", (None, ""))
    path, path_label = merged.get("DATAFILE_PATH", (None, ""))
    if datafile is not None and path is not None:
        raise ConfigurationError(f"Both {text_label} and {path_label} are set; keep one of them.")
    if path is not None:
        if not isinstance(path, (str, Path)) or not str(path).strip():
            raise problem("DATAFILE_PATH", path, path_label)
        try:
            datafile = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigurationError(
                f"{path_label} = {str(path)!r} cannot be read: {reason}. "
                "Give the path of the datafile JSON (relative paths start from the "
                f"current directory, {os.getcwd()!r})."
            ) from exc
        where = f"the file {str(path)!r} ({path_label})"
    elif datafile is not None:
        if isinstance(datafile, bytes):
            datafile = datafile.decode("utf-8")
        if not isinstance(datafile, str):
            raise problem("DATAFILE", datafile, text_label)
        where = text_label
    elif sdk_key is None and missing is not None:
        raise NoDatafileError(missing)
    else:
        return None
    try:
        json.loads(datafile)
    except ValueError as exc:
        empty = " (it is empty)" if not datafile.strip() else ""
        raise ConfigurationError(
            f"{where} is not valid JSON{empty}: {exc}. Download the datafile of your "
            "project's environment from Optimizely (Settings > Environments)."
        ) from exc
    return datafile


def endpoint(value: Any, label: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        hint = ""
        if isinstance(value, str) and "://" not in value and value.strip():
            hint = f"; did you mean 'http://{value}'?"
        raise problem("EVENT_ENDPOINT", value, label, hint)
    return value


def choice(value: Any, key: str, label: Callable[[str], str], default: str) -> str:
    if value is None:
        return default
    choices = ("keep", "discard") if key == "FAILED_REQUESTS" else ("send", "drop", "raise")
    if value in choices:
        return str(value)
    match = close_match(str(value), choices, cutoff=0.5)
    hint = f"; did you mean {match!r}?" if match else "."
    raise problem(key, value, label(key), hint)


def number(value: Any, label: Callable[[str], str], default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise problem("SHUTDOWN_TIMEOUT", value, label("SHUTDOWN_TIMEOUT"))
    return float(value)


def positive_int(value: Any, key: str, label: Callable[[str], str], default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise problem(key, value, label(key))
    return value


def boolean(value: Any, label: str) -> bool:
    if value is None:
        return True
    if not isinstance(value, bool):
        raise problem("CLOSE_AT_EXIT", value, label)
    return value


def client_options(value: Any, label: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise problem("CLIENT_OPTIONS", value, label)
    return dict(value)
