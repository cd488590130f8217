"""Django views for the tests (in-process and served), with their ``urlpatterns``.

Each view takes the visitor id from the URL, so tests can count events per
visitor. ``/stream-flushed/<user>`` fires its event mid-stream and then waits
for the dispatcher to deliver everything handed over so far, so a test that
reads the next chunk knows whether the event had already been handed over.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.urls import path

from optimizely_middleware.django import get_dispatcher

STATIC_FILE = Path(__file__).resolve().parents[1] / "data" / "datafile.json"


def decide(request: HttpRequest, user_id: str) -> bool:
    user = request.optimizely.create_user_context(user_id, {"plan": "pro"})
    return bool(user.decide("new_checkout").enabled)


def decide_view(request: HttpRequest, user_id: str) -> JsonResponse:
    return JsonResponse({"user": user_id, "enabled": decide(request, user_id)})


def page(request: HttpRequest, user_id: str) -> HttpResponse:
    """A 20 kB page with two events (a decision and a conversion)."""
    decide(request, user_id)
    request.optimizely.create_user_context(user_id).track_event("purchase", {"revenue": 4200})
    return HttpResponse(f"{user_id}:" + "x" * 20_000)


def stream(request: HttpRequest, user_id: str) -> StreamingHttpResponse:
    def body() -> Iterator[bytes]:
        yield b"first chunk\n"
        decide(request, user_id)
        yield b"second chunk\n"

    return StreamingHttpResponse(body())


def stream_flushed(request: HttpRequest, user_id: str) -> StreamingHttpResponse:
    def body() -> Iterator[bytes]:
        yield b"first chunk\n"
        decide(request, user_id)
        # Had the event been handed over already, this would wait for its POST.
        get_dispatcher().flush(10)
        yield b"decided\n"
        yield b"last chunk\n"

    return StreamingHttpResponse(body())


def async_stream(request: HttpRequest, user_id: str) -> StreamingHttpResponse:
    async def body() -> AsyncIterator[bytes]:
        yield b"first chunk\n"
        await asyncio.sleep(0)
        decide(request, user_id)
        yield b"second chunk\n"

    return StreamingHttpResponse(body())


def file(request: HttpRequest, user_id: str) -> FileResponse:
    decide(request, user_id)
    return FileResponse(STATIC_FILE.open("rb"), content_type="application/json")


def raising(request: HttpRequest, user_id: str) -> HttpResponse:
    decide(request, user_id)
    raise RuntimeError("the view failed")


def unavailable(request: HttpRequest, user_id: str) -> HttpResponse:
    decide(request, user_id)
    return HttpResponse("try later", status=503)


def not_found(request: HttpRequest, user_id: str) -> HttpResponse:
    decide(request, user_id)
    raise Http404("no such thing")


async def async_view(request: HttpRequest, user_id: str) -> JsonResponse:
    await asyncio.sleep(0)
    return JsonResponse({"user": user_id, "enabled": decide(request, user_id)})


urlpatterns = [
    path("decide/<str:user_id>", decide_view),
    path("page/<str:user_id>", page),
    path("stream/<str:user_id>", stream),
    path("stream-flushed/<str:user_id>", stream_flushed),
    path("async-stream/<str:user_id>", async_stream),
    path("file/<str:user_id>", file),
    path("raise/<str:user_id>", raising),
    path("unavailable/<str:user_id>", unavailable),
    path("not-found/<str:user_id>", not_found),
    path("async/<str:user_id>", async_view),
]
