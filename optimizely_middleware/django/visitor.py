"""A stable visitor id for anonymous visitors, kept in a cookie.

Usage::

    from optimizely_middleware.django import visitor_id

    def checkout(request):
        user = request.optimizely.create_user_context(visitor_id(request))
        ...

The first call for a visitor without the cookie makes a new random id; the
middleware sets the cookie on the response (``HttpOnly``, ``SameSite=Lax``,
``Secure`` on HTTPS) and adds ``Vary: Cookie``, so the visitor keeps the
same id, and the same variations, on every later request.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING

from django.utils.cache import patch_vary_headers

from optimizely_middleware.django.config import OptimizelySettings
from optimizely_middleware.django.state import get_state

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponseBase

__all__ = ["apply_visitor_cookie", "visitor_id"]

# The attribute of the request where visitor_id() leaves an id that is new.
NEW_ID_ATTRIBUTE = "_optimizely_new_visitor_id"
USED_ATTRIBUTE = "_optimizely_visitor_id_used"
# What an id read back from the cookie may look like (what we set, or an id
# that the app set itself); anything else is replaced.
VALID_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


def visitor_id(request: HttpRequest) -> str:
    """The visitor's id from the visitor cookie; a new random one if there is none.

    The cookie is named by ``settings.OPTIMIZELY["VISITOR_COOKIE_NAME"]``
    (default ``optimizely_visitor_id``) and lives
    ``VISITOR_COOKIE_MAX_AGE`` seconds (default one year). Calling it twice
    in one request gives the same id. It needs
    :class:`~optimizely_middleware.django.OptimizelyMiddleware` to set the
    cookie on the response.

    For signed-in users you may prefer your own stable id (``str(request.user.pk)``)
    when the experiment is about signed-in behaviour; never
    ``str(request.user.pk)`` for anonymous users: it is ``"None"`` for all of
    them, one visitor in Optimizely's results.

    Example::

        user = request.optimizely.create_user_context(visitor_id(request), {"plan": "free"})
    """
    new_id: str | None = getattr(request, NEW_ID_ATTRIBUTE, None)
    if new_id is not None:
        return new_id
    setattr(request, USED_ATTRIBUTE, True)
    existing = request.COOKIES.get(_settings().visitor_cookie_name)
    if isinstance(existing, str) and VALID_ID.fullmatch(existing):
        return existing
    new_id = uuid.uuid4().hex
    setattr(request, NEW_ID_ATTRIBUTE, new_id)
    return new_id


def apply_visitor_cookie(request: HttpRequest, response: HttpResponseBase) -> None:
    """Set the cookie of a new visitor id and ``Vary: Cookie`` (called by the middleware)."""
    if not getattr(request, USED_ATTRIBUTE, False):
        return
    patch_vary_headers(response, ("Cookie",))
    new_id: str | None = getattr(request, NEW_ID_ATTRIBUTE, None)
    if new_id is None:
        return
    config = _settings()
    response.set_cookie(
        config.visitor_cookie_name,
        new_id,
        max_age=config.visitor_cookie_max_age,
        secure=request.is_secure(),
        httponly=True,
        samesite="Lax",
    )


def _settings() -> OptimizelySettings:
    return get_state().settings
