"""The checked settings (:class:`OptimizelySettings`), read from any source in one order.

Usage::

    from optimizely_middleware.settings.model import DJANGO, load_settings

    settings = load_settings({"DATAFILE_PATH": "datafile.json"}, DJANGO)
    settings.event_endpoint    # None, or OPTIMIZELY_EVENT_ENDPOINT from the environment

Flask's ``app.config["OPTIMIZELY_*"]``, Django's ``settings.OPTIMIZELY``, the
keywords of the Starlette and FastAPI extensions and the ``OPTIMIZELY_*``
environment variables all name the same keys (``DATAFILE_PATH``,
``SDK_KEY``, ``EVENT_ENDPOINT``, ...) and are checked here, by the same code.
A mistake is a :class:`~optimizely_middleware.errors.ConfigurationError`
that names the key the way its source spells it and, for a misspelt key or
value, the closest valid one.

Precedence, key by key: the framework's settings (or keywords), then the
environment, then the defaults. Where the datafile comes from
(``DATAFILE_PATH``, ``DATAFILE``, ``SDK_KEY``) is taken as a whole from one
place: if the settings name any of them, the environment's are not used, so
a datafile path in the code and an SDK key in a shell never mix by accident.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, cast

from optimizely_middleware.delivery.sender import EventSender
from optimizely_middleware.dispatcher import (
    FailedRequestPolicy,
    OutsideScopePolicy,
    RequestScopedEventDispatcher,
)
from optimizely_middleware.errors import ConfigurationError
from optimizely_middleware.settings.values import (
    DATAFILE_SOURCES,
    KEYS,
    NoDatafileError,
    boolean,
    checked_datafile,
    choice,
    client_options,
    close_match,
    endpoint,
    number,
    optional_str,
    positive_int,
    problem,
)

__all__ = [
    "DATAFILE_SOURCES",
    "DJANGO",
    "ENVIRONMENT",
    "ENV_PREFIX",
    "FLASK",
    "KEYS",
    "KEYWORDS",
    "ConfigurationError",
    "NoDatafileError",
    "OptimizelySettings",
    "SettingsSource",
    "close_match",
    "keywords_of",
    "load_settings",
]

ENV_PREFIX = "OPTIMIZELY_"
# OPTIMIZELY_* variables of Optimizely's own tools that look like a typo of a key.
OTHER_TOOLS = frozenset({"OPTIMIZELY_SDKKEYS"})  # Optimizely Agent


def _engine_default(owner: Callable[..., object], name: str) -> Any:
    """A default that belongs to the dispatcher or the sender: read, not restated."""
    return inspect.signature(owner).parameters[name].default


# The engine's defaults, read from its public constructors (the one place they are written).
DEFAULT_FAILED_REQUESTS: FailedRequestPolicy = _engine_default(
    RequestScopedEventDispatcher, "failed_requests"
)
DEFAULT_OUTSIDE_SCOPE: OutsideScopePolicy = _engine_default(
    RequestScopedEventDispatcher, "outside_scope"
)
DEFAULT_MAX_EVENTS_PER_REQUEST: int = _engine_default(
    RequestScopedEventDispatcher, "max_events_per_request"
)
DEFAULT_SHUTDOWN_TIMEOUT: float = _engine_default(EventSender, "shutdown_timeout")

# Keys that only one integration reads; elsewhere they are reported, not ignored.
ONLY_IN = {
    "CLOSE_AT_EXIT": "Flask",
    "VISITOR_COOKIE_NAME": "Django",
    "VISITOR_COOKIE_MAX_AGE": "Django",
}


@dataclass(frozen=True)
class OptimizelySettings:
    """The checked settings, with the defaults filled in.

    Example::

        settings = load_settings({"SDK_KEY": "abc", "FAILED_REQUESTS": "discard"}, DJANGO)
        assert settings.failed_requests == "discard"
    """

    datafile: str | None = None
    sdk_key: str | None = None
    event_endpoint: str | None = None
    failed_requests: FailedRequestPolicy = DEFAULT_FAILED_REQUESTS
    outside_scope: OutsideScopePolicy = DEFAULT_OUTSIDE_SCOPE
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    max_events_per_request: int = DEFAULT_MAX_EVENTS_PER_REQUEST
    client_options: Mapping[str, Any] = field(default_factory=dict)
    close_at_exit: bool = True
    visitor_cookie_name: str = "optimizely_visitor_id"
    visitor_cookie_max_age: int = 365 * 24 * 3600
    #: Where each given key came from, as its source spells it (for later messages).
    origins: Mapping[str, str] = field(default_factory=dict, compare=False)

    def origin(self, key: str) -> str:
        """How the source of ``key`` spells it, e.g. ``OPTIMIZELY_DATAFILE_PATH``."""
        return self.origins.get(key, key)


@dataclass(frozen=True)
class SettingsSource:
    """Where settings come from, and how its messages spell a key.

    Example::

        FLASK.name("DATAFILE_PATH")    # 'OPTIMIZELY_DATAFILE_PATH'
        FLASK.label("DATAFILE_PATH")   # "app.config['OPTIMIZELY_DATAFILE_PATH']"
    """

    framework: str
    #: Where the keys are set, for messages: ``app.config``, ``settings.OPTIMIZELY``.
    where: str
    #: A key as the source spells it: ``OPTIMIZELY_DATAFILE_PATH``, ``datafile_path``.
    name: Callable[[str], str]
    #: A key with its place: ``app.config['OPTIMIZELY_DATAFILE_PATH']``.
    label: Callable[[str], str]
    example: str


FLASK = SettingsSource(
    "Flask",
    "app.config",
    lambda key: ENV_PREFIX + key,
    lambda key: f"app.config[{ENV_PREFIX + key!r}]",
    'app.config["OPTIMIZELY_DATAFILE_PATH"] = "datafile.json"',
)
DJANGO = SettingsSource(
    "Django",
    "settings.OPTIMIZELY",
    lambda key: key,
    lambda key: f"settings.OPTIMIZELY[{key!r}]",
    'OPTIMIZELY = {"DATAFILE_PATH": BASE_DIR / "datafile.json"}',
)


def keywords_of(owner: str) -> SettingsSource:
    """The keyword arguments of ``owner`` (``OptimizelyStarlette``, ``OptimizelyFastAPI``)."""
    return SettingsSource(
        "Starlette",
        f"the keywords of {owner}",
        lambda key: key.lower(),
        lambda key: f"{owner}({key.lower()}=...)",
        f'{owner}(app, datafile_path="datafile.json")',
    )


KEYWORDS = keywords_of("OptimizelyStarlette")
ENVIRONMENT = SettingsSource(
    "environment",
    "the environment",
    lambda key: ENV_PREFIX + key,
    lambda key: f"the environment variable {ENV_PREFIX + key}",
    "OPTIMIZELY_DATAFILE_PATH=datafile.json",
)


def load_settings(
    values: Mapping[str, Any] | None,
    source: SettingsSource,
    *,
    environ: Mapping[str, str] | None = None,
    require_datafile: bool = True,
) -> OptimizelySettings:
    """Check ``values`` (keys spelt as ``source`` spells them) and the environment.

    ``environ`` defaults to ``os.environ``; pass ``{}`` to read no environment.
    ``require_datafile=False`` when the client is given rather than built.
    Raises :class:`ConfigurationError` on any mistake.
    """
    given: dict[str, tuple[Any, str]] = {}
    for key, value in (values or {}).items():
        known = _known_key(key, source)
        given[known] = (value, source.label(known))
    from_env = _from_environment(os.environ if environ is None else environ)
    if any(key in given for key in DATAFILE_SOURCES):
        from_env = {k: v for k, v in from_env.items() if k not in DATAFILE_SOURCES}
    return _parse({**from_env, **given}, source, require_datafile)


def _applies(key: str, framework: str) -> bool:
    return ONLY_IN.get(key, framework) == framework


def _known_key(key: object, source: SettingsSource) -> str:
    spelt = str(key)
    known = [k for k in KEYS if _applies(k, source.framework)]
    for candidate in KEYS:
        if source.name(candidate) == spelt:
            if candidate in known:
                return candidate
            raise ConfigurationError(
                f"{source.label(candidate)} is a setting of the {ONLY_IN[candidate]} "
                f"integration; {source.framework} does not read it. Remove it."
            )
    match = close_match(spelt, [source.name(k) for k in known])
    if match:
        hint = f"; did you mean {match!r}?"
    else:
        hint = "; known keys: " + ", ".join(source.name(k) for k in known) + "."
    raise ConfigurationError(f"Unknown key {spelt!r} in {source.where}{hint}")


def _from_environment(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    found: dict[str, tuple[Any, str]] = {}
    env_keys = [k for k in KEYS if ONLY_IN.get(k) is None]
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :]
        if key in env_keys:
            if value.strip():  # VAR= (empty) means unset, as shells write it
                found[key] = (_from_text(key, value), ENVIRONMENT.label(key))
            continue
        # Another program's variable may share the prefix (OPTIMIZELY_API_TOKEN, or one
        # named after a key, OPTIMIZELY_TEST_SDK_KEY): only a near miss is a typo.
        match = close_match(key, env_keys, cutoff=0.7)
        named_after_a_key = any(key.endswith("_" + k) for k in env_keys)
        if match is not None and not named_after_a_key and name not in OTHER_TOOLS:
            raise ConfigurationError(
                f"Unknown key {name!r} in the environment; did you mean {ENV_PREFIX + match!r}?"
            )
    return found


def _from_text(key: str, text: str) -> Any:
    """An environment variable's text as the value its key takes."""
    if key in ("SHUTDOWN_TIMEOUT", "MAX_EVENTS_PER_REQUEST"):
        try:
            return int(text) if key == "MAX_EVENTS_PER_REQUEST" else float(text)
        except ValueError:
            raise problem(key, text, ENVIRONMENT.label(key)) from None
    if key == "CLIENT_OPTIONS":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ConfigurationError(
                f"{ENVIRONMENT.label(key)} must be a JSON object of keywords for "
                f"create_client: {exc}"
            ) from None
    return text


def _parse(
    merged: Mapping[str, tuple[Any, str]], source: SettingsSource, require_datafile: bool
) -> OptimizelySettings:
    def value(key: str) -> Any:
        return merged[key][0] if key in merged else None

    def label(key: str) -> str:
        return merged[key][1] if key in merged else source.label(key)

    defaults = OptimizelySettings()
    sdk_key = optional_str(value("SDK_KEY"), "SDK_KEY", label("SDK_KEY"))
    checked = OptimizelySettings(
        sdk_key=sdk_key,
        event_endpoint=endpoint(value("EVENT_ENDPOINT"), label("EVENT_ENDPOINT")),
        failed_requests=cast(
            FailedRequestPolicy,
            choice(value("FAILED_REQUESTS"), "FAILED_REQUESTS", label, defaults.failed_requests),
        ),
        outside_scope=cast(
            OutsideScopePolicy,
            choice(value("OUTSIDE_SCOPE"), "OUTSIDE_SCOPE", label, defaults.outside_scope),
        ),
        shutdown_timeout=number(value("SHUTDOWN_TIMEOUT"), label, defaults.shutdown_timeout),
        max_events_per_request=positive_int(
            value("MAX_EVENTS_PER_REQUEST"),
            "MAX_EVENTS_PER_REQUEST",
            label,
            defaults.max_events_per_request,
        ),
        client_options=client_options(value("CLIENT_OPTIONS"), label("CLIENT_OPTIONS")),
        close_at_exit=boolean(value("CLOSE_AT_EXIT"), label("CLOSE_AT_EXIT")),
        visitor_cookie_name=optional_str(
            value("VISITOR_COOKIE_NAME"), "VISITOR_COOKIE_NAME", label("VISITOR_COOKIE_NAME")
        )
        or defaults.visitor_cookie_name,
        visitor_cookie_max_age=positive_int(
            value("VISITOR_COOKIE_MAX_AGE"),
            "VISITOR_COOKIE_MAX_AGE",
            label,
            defaults.visitor_cookie_max_age,
        ),
        origins={key: where for key, (_, where) in merged.items()},
    )
    # Last, so that a wrong value is reported before a missing datafile.
    missing = None
    if require_datafile:
        names = ", ".join(source.name(key) for key in DATAFILE_SOURCES)
        missing = (
            f"optimizely_middleware needs a datafile or an SDK key: set {names} in "
            f"{source.where} (for example {source.example}), or OPTIMIZELY_DATAFILE_PATH "
            "or OPTIMIZELY_SDK_KEY in the environment."
        )
    return replace(checked, datafile=checked_datafile(merged, sdk_key, missing))
