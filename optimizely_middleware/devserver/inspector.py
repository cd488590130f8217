"""The devserver's inspector: a live page at ``/`` and the JSON API behind it.

The page (plain HTML, CSS and JavaScript in ``optimizely_middleware/devserver/static``,
no build step, nothing fetched from elsewhere) lists the POSTs as they
arrive, newest first, with each visitor's decisions and conversions, and
counts what arrived since the server started. The API is for scripts and
tests as much as for the page::

    GET    /api/posts?since=0&wait=10&visitor=&flag=&event=&limit=200
    GET    /api/posts/<id>/raw        the body exactly as it arrived
    DELETE /api/posts                 clear the list (the counts stay)
    GET    /api/stats                 the counts since the server started

``since`` returns only posts newer than that id; ``wait`` holds the answer
up to that many seconds until there is one (long polling); ``generation``
in the answer changes when the list is cleared. Example::

    with DevServer(port=0) as server:
        ...                                          # send events to server.url
        posts = requests.get(server.inspector_url + "api/posts").json()["posts"]

Payloads carry user ids and attributes: the page and the API answer only
requests from this machine (loopback peer and a local ``Host``), whatever
address the server listens on. For the same reason a page in a browser may
not POST events to the devserver from another origin
(:func:`browser_post_refusal`); SDKs and servers send no ``Origin`` and are
not affected.
"""

from __future__ import annotations

import ipaddress
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from http import HTTPStatus
from importlib import resources
from typing import Any, NamedTuple, Protocol
from urllib.parse import parse_qs

from optimizely_middleware.devserver.received import ReceivedPost, iso_time
from optimizely_middleware.wire.payloads import VisitorEvents

__all__ = [
    "EventCounts",
    "InspectedServer",
    "InspectorResponse",
    "PostFilter",
    "browser_post_refusal",
    "handle_inspector",
    "post_json",
]

MAX_WAIT = 30.0
DEFAULT_LIMIT = 200
# The files the page is made of, by the path they are served at.
STATIC_FILES = {
    "/": ("inspector.html", "text/html; charset=utf-8"),
    "/static/inspector.css": ("inspector.css", "text/css; charset=utf-8"),
    "/static/inspector.js": ("inspector.js", "text/javascript; charset=utf-8"),
}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


class InspectedServer(Protocol):
    """What the inspector reads of the server and asks of it (a ``DevServer`` is one).

    Example::

        handle_inspector(devserver, "GET", "/api/stats", "127.0.0.1", "127.0.0.1:8765")
    """

    @property
    def host(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def status(self) -> int: ...
    @property
    def delay(self) -> float: ...
    @property
    def generation(self) -> int: ...
    def clear(self) -> None: ...
    def counts(self) -> dict[str, Any]: ...
    def post_by_id(self, post_id: int) -> ReceivedPost | None: ...
    def posts_after(
        self, since: int, generation: int | None = None, timeout: float = 0.0
    ) -> tuple[list[ReceivedPost], int, int]: ...


class InspectorResponse(NamedTuple):
    """What the handler writes back: status, content type, body and extra headers."""

    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str] = PAGE_HEADERS


@dataclass(frozen=True)
class PostFilter:
    """Which visitors to show: case-insensitive substrings of their id, flag and event keys.

    ``visitor`` narrows to visitors whose id contains it. ``flag`` (a flag or,
    for ``activate()``, an experiment key) and ``event`` (a conversion's key)
    pick the kind of event; a visitor carries one SDK event, so with both set
    a visitor matches when either does.

    Example::

        PostFilter(visitor="alice", event="purchase").matches(visitor_events)
    """

    visitor: str = ""
    flag: str = ""
    event: str = ""

    @classmethod
    def from_query(cls, query: Mapping[str, list[str]]) -> PostFilter:
        def first(name: str) -> str:
            return (query.get(name) or [""])[0].strip().casefold()

        return cls(visitor=first("visitor"), flag=first("flag"), event=first("event"))

    def __bool__(self) -> bool:
        return bool(self.visitor or self.flag or self.event)

    def matches(self, visitor: VisitorEvents) -> bool:
        if self.visitor and self.visitor not in visitor.visitor_id.casefold():
            return False
        if not (self.flag or self.event):
            return True
        flag_match = bool(self.flag) and any(
            self.flag in i.flag_key.casefold() or self.flag in i.rule_key.casefold()
            for i in visitor.impressions
        )
        event_match = bool(self.event) and any(
            self.event in c.event_key.casefold() for c in visitor.conversions
        )
        return flag_match or event_match


class EventCounts:
    """What the accepted (2xx) POSTs carried since the server started.

    Only accepted POSTs count, so a batch that is retried after a simulated
    failure counts once. Clearing the list does not reset them. Callers hold
    the devserver's lock.

    Example::

        counts = EventCounts()
        counts.add(post)
        counts.as_json()["impressions"]   # [{"flag_key": ..., "variation_key": ..., "count": 3}]
    """

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self.posts = 0
        self.accepted_posts = 0
        self.visitor_ids: set[str] = set()
        self.visitor_events = 0
        self.impressions: Counter[tuple[str, str, str]] = Counter()
        self.conversions: Counter[str] = Counter()
        self.revenue: Counter[str] = Counter()

    def add(self, post: ReceivedPost) -> None:
        self.posts += 1
        if not post.accepted:
            return
        self.accepted_posts += 1
        for visitor in post.visitor_events:
            self.visitor_ids.add(visitor.visitor_id)
            self.visitor_events += 1
            for i in visitor.impressions:
                self.impressions[(i.flag_key, i.rule_key, i.variation_key)] += 1
            for c in visitor.conversions:
                self.conversions[c.event_key] += 1
                if isinstance(c.revenue, (int, float)) and not isinstance(c.revenue, bool):
                    self.revenue[c.event_key] += c.revenue

    def as_json(self) -> dict[str, Any]:
        return {
            "since": iso_time(self.started_at),
            "posts": self.posts,
            "accepted_posts": self.accepted_posts,
            "rejected_posts": self.posts - self.accepted_posts,
            "visitors": len(self.visitor_ids),
            "visitor_events": self.visitor_events,
            "impressions": [
                {"flag_key": flag, "rule_key": rule, "variation_key": variation, "count": n}
                for (flag, rule, variation), n in sorted(self.impressions.items())
            ],
            "conversions": [
                {"event_key": key, "count": n, "revenue": self.revenue.get(key, 0)}
                for key, n in sorted(self.conversions.items())
            ],
        }


def post_json(post: ReceivedPost, post_filter: PostFilter | None = None) -> dict[str, Any] | None:
    """One post for the API, or ``None`` when no visitor passes ``post_filter``.

    With a filter, ``visitors`` lists only the visitors that pass it;
    ``visitor_count`` is always the whole batch.
    """
    visitors = post.visitor_events
    shown = [v for v in visitors if post_filter.matches(v)] if post_filter else list(visitors)
    if post_filter and not shown:
        return None
    payload = post.payload if isinstance(post.payload, dict) else {}
    return {
        "id": post.id,
        "time": post.wall_time,
        "received_at": iso_time(post.wall_time),
        "path": post.path,
        "status": post.status,
        "accepted": post.accepted,
        "bytes": len(post.body),
        "visitor_count": len(visitors),
        "event_count": post.event_count,
        "envelope": {k: v for k, v in payload.items() if k != "visitors"},
        "problems": list(post.problems),
        "visitors": [_visitor_json(v) for v in shown],
    }


def handle_inspector(
    server: InspectedServer, method: str, target: str, peer: str, host_header: str | None
) -> InspectorResponse | None:
    """Answer a GET or DELETE for the page or the API; ``None`` when ``target`` is neither."""
    path, _, query_string = target.partition("?")
    is_api = path == "/api" or path.startswith("/api/")
    if path not in STATIC_FILES and not is_api:
        return None
    refusal = _refusal(peer, host_header, server.host)
    if refusal:
        return _json(HTTPStatus.FORBIDDEN, {"error": refusal})
    query = parse_qs(query_string)
    if method == "DELETE" and path == "/api/posts":
        server.clear()
        return _json(HTTPStatus.OK, {"generation": server.generation})
    if method != "GET":
        return _json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"{method} {path} is not supported"})
    if path in STATIC_FILES:
        name, content_type = STATIC_FILES[path]
        body = (
            resources.files("optimizely_middleware.devserver")
            .joinpath(f"static/{name}")
            .read_bytes()
        )
        return InspectorResponse(HTTPStatus.OK, content_type, body)
    if path == "/api/posts":
        return _list_posts(server, query)
    if path == "/api/stats":
        return _json(HTTPStatus.OK, _stats(server))
    if path.startswith("/api/posts/") and path.endswith("/raw"):
        post_id = path[len("/api/posts/") : -len("/raw")]
        post = server.post_by_id(int(post_id)) if post_id.isdigit() else None
        if post is None:
            return _json(HTTPStatus.NOT_FOUND, {"error": "no such post (cleared, or let go)"})
        is_json = post.payload is not None
        content_type = "application/json" if is_json else "text/plain; charset=utf-8"
        return InspectorResponse(HTTPStatus.OK, content_type, post.body)
    return _json(HTTPStatus.NOT_FOUND, {"error": f"no API at {path}"})


def _list_posts(server: InspectedServer, query: Mapping[str, list[str]]) -> InspectorResponse:
    try:
        since = int((query.get("since") or ["0"])[0])
        wait = min(max(float((query.get("wait") or ["0"])[0]), 0.0), MAX_WAIT)
        limit = int((query.get("limit") or [str(DEFAULT_LIMIT)])[0])
        generation_text = (query.get("generation") or [""])[0]
        generation = int(generation_text) if generation_text else None
    except ValueError:
        return _json(
            HTTPStatus.BAD_REQUEST, {"error": "since, wait, limit and generation are numbers"}
        )
    if limit < 1:
        return _json(HTTPStatus.BAD_REQUEST, {"error": "limit must be at least 1"})
    post_filter = PostFilter.from_query(query)
    posts, generation_now, last_id = server.posts_after(since, generation, wait)
    shown: list[dict[str, Any]] = []
    for post in reversed(posts):
        item = post_json(post, post_filter)
        if item is not None:
            shown.append(item)
            if len(shown) == limit:
                break
    return _json(
        HTTPStatus.OK,
        {
            "generation": generation_now,
            "last_id": last_id,
            "posts": shown,
            "stats": _stats(server),
        },
    )


def _stats(server: InspectedServer) -> dict[str, Any]:
    stats = server.counts()
    stats["endpoint"] = server.url
    stats["answer_status"] = server.status
    stats["answer_delay"] = server.delay
    return stats


def _visitor_json(visitor: VisitorEvents) -> dict[str, Any]:
    private = ("user_id", "attributes")
    return {
        "visitor_id": visitor.visitor_id,
        "attributes": visitor.attributes,
        "impressions": [_without(asdict(i), private) for i in visitor.impressions],
        "conversions": [_without(asdict(c), private) for c in visitor.conversions],
    }


def _without(item: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in keys}


def _refusal(peer: str, host_header: str | None, server_host: str) -> str | None:
    """Why a request may not see payloads, or ``None`` when it may."""
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return "the inspector answers requests from this machine only"
    mapped = getattr(address, "ipv4_mapped", None)
    if not (address.is_loopback or (mapped is not None and mapped.is_loopback)):
        return "the inspector answers requests from this machine only"
    if host_header:
        host = host_header.strip()
        name = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
        if name.lower() not in LOOPBACK_NAMES | {server_host.lower()}:
            # A page elsewhere whose name resolves to 127.0.0.1 (DNS rebinding).
            return f"open the inspector at 127.0.0.1 or localhost, not {name!r}"
    return None


def browser_post_refusal(
    origin: str | None, fetch_site: str | None, server_host: str, server_port: int
) -> str | None:
    """Why a POST sent by a browser page must be refused, or ``None`` when it may be taken.

    Browsers say where a request comes from: ``Origin`` (on every POST) and
    ``Sec-Fetch-Site``. A page on another origin, a ``null`` origin
    (sandboxed frames, ``file:``) or another site of this host (another
    port) is refused. SDKs and the package's sender send neither header.

    Example::

        browser_post_refusal("http://evil.example", "cross-site", "127.0.0.1", 8765)
        # "browser pages elsewhere may not send events here (Origin 'http://evil.example')"
    """
    if fetch_site is not None and fetch_site.strip().lower() not in ("same-origin", "none"):
        where = f"Origin {origin!r}" if origin else f"Sec-Fetch-Site {fetch_site!r}"
        return f"browser pages elsewhere may not send events here ({where})"
    if origin is None:
        return None
    scheme, _, authority = origin.strip().partition("://")
    name, port = _split_authority(authority)
    local = name.lower() in LOOPBACK_NAMES | {server_host.lower()}
    if scheme.lower() == "http" and local and port == server_port:
        return None
    return f"browser pages elsewhere may not send events here (Origin {origin!r})"


def _split_authority(authority: str) -> tuple[str, int | None]:
    """``("::1", 8765)`` from ``"[::1]:8765"``; the port is None when absent or not a number."""
    if authority.startswith("["):
        name, _, rest = authority[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = authority.partition(":")
    return name, int(port) if port.isdigit() else None


def _json(status: int, value: Any) -> InspectorResponse:
    body = json.dumps(value, separators=(",", ":"), default=str).encode()
    return InspectorResponse(status, "application/json", body)
