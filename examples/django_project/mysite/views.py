"""The example's views: one decision per page, a conversion on ``/buy``."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed

from optimizely_middleware.django import visitor_id


def index(request: HttpRequest) -> HttpResponse:
    # visitor_id(): a stable id from a cookie (set on the first visit), never "None".
    user = request.optimizely.create_user_context(visitor_id(request), {"plan": "free"})
    decision = user.decide("new_checkout")  # collected, sent after the response
    return HttpResponse(f"You get the {decision.variation_key} checkout.\n")


def buy(request: HttpRequest) -> HttpResponse:
    # (The example has no CsrfViewMiddleware and no forms; keep CSRF protection in yours.)
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    user = request.optimizely.create_user_context(visitor_id(request), {"plan": "free"})
    decision = user.decide("new_checkout")
    user.track_event("purchase", {"revenue": 4200})
    return HttpResponse(f"Thanks for your order ({decision.variation_key} checkout).\n")


async def async_index(request: HttpRequest) -> HttpResponse:
    # Async views work the same; the SDK call itself is CPU only, no I/O.
    user = request.optimizely.create_user_context(visitor_id(request))
    decision = user.decide("new_checkout")
    return HttpResponse(f"You get the {decision.variation_key} checkout (async).\n")
