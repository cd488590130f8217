"""The inspector's JSON API and page files, served by a real DevServer on 127.0.0.1."""

from __future__ import annotations

import fnmatch
import http.client
import re
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import requests

from optimizely_middleware import EventSender, RequestScopedEventDispatcher, create_client
from optimizely_middleware import testing as testing_kit
from optimizely_middleware.devserver import DevServer
from optimizely_middleware.devserver.inspector import browser_post_refusal, handle_inspector
from optimizely_middleware.wire import payloads

ROOT = Path(__file__).parents[3]
PACKAGE = ROOT / "optimizely_middleware"
WAIT = 20.0


def api(server: DevServer, path: str, **params: Any) -> Any:
    response = requests.get(server.inspector_url + path, params=params, timeout=WAIT)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    return response.json()


def send(server: DevServer, datafile: str, *users: tuple[str, str]) -> None:
    """Real SDK events through the real sender: ``(user, "decide"|"buy"|"activate")``."""
    dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=server.url))
    client = create_client(dispatcher, datafile=datafile)
    expected = len(server.visitors()) + len(users)
    try:
        for user_id, action in users:
            with dispatcher.request_scope():
                user = client.create_user_context(user_id, {"plan": "pro"})
                if action == "decide":
                    user.decide("new_checkout")
                elif action == "activate":
                    client.activate("headline_test", user_id)
                else:
                    user.track_event("purchase", {"revenue": 4200, "value": 42.5, "sku": "A1"})
        assert dispatcher.flush(WAIT)
        assert server.wait_for_visitors(expected, WAIT)
    finally:
        dispatcher.close(WAIT)


def visitor_ids(listing: dict[str, Any]) -> list[str]:
    return [v["visitor_id"] for post in listing["posts"] for v in post["visitors"]]


def test_lists_what_the_sdk_sent(devserver: DevServer, datafile: str) -> None:
    send(devserver, datafile, ("alice", "decide"), ("bob", "activate"), ("alice", "buy"))
    listing = api(devserver, "api/posts")

    assert listing["generation"] == 0
    assert listing["last_id"] == len(devserver.posts)
    posts = listing["posts"]
    assert [p["id"] for p in posts] == sorted((p["id"] for p in posts), reverse=True)
    assert sum(p["visitor_count"] for p in posts) == 3
    for post in posts:
        assert post["status"] == 204 and post["accepted"] and post["problems"] == []
        assert post["path"] == "/v1/events"
        assert post["envelope"]["account_id"] == "10001"
        assert "visitors" not in post["envelope"]
    visitors = [v for p in reversed(posts) for v in p["visitors"]]
    assert [v["visitor_id"] for v in visitors] == ["alice", "bob", "alice"]
    assert visitors[0]["attributes"]["plan"] == "pro"

    (decision,) = visitors[0]["impressions"]
    assert decision["flag_key"] == "new_checkout"
    assert decision["rule_key"] == "new_checkout_test"
    assert decision["rule_type"] == "feature-test"
    assert decision["variation_key"] in ("on", "off")
    assert decision["enabled"] is (decision["variation_key"] == "on")
    assert visitors[0]["conversions"] == []

    (experiment,) = visitors[1]["impressions"]
    assert (experiment["flag_key"], experiment["rule_key"]) == ("", "headline_test")

    (purchase,) = visitors[2]["conversions"]
    assert (purchase["event_key"], purchase["revenue"], purchase["value"]) == (
        "purchase",
        4200,
        42.5,
    )
    assert purchase["tags"]["sku"] == "A1"
    assert visitors[2]["impressions"] == []  # the impression marker is not a conversion


def test_since_returns_only_newer_posts(devserver: DevServer, datafile: str) -> None:
    send(devserver, datafile, ("alice", "decide"))
    first = api(devserver, "api/posts")
    send(devserver, datafile, ("bob", "decide"))
    newer = api(devserver, "api/posts", since=first["last_id"])
    assert visitor_ids(newer) == ["bob"]
    assert newer["last_id"] > first["last_id"]
    assert api(devserver, "api/posts", since=newer["last_id"])["posts"] == []


def test_a_waiting_request_gets_the_post_that_arrives(devserver: DevServer) -> None:
    answers: list[Any] = []
    waiting = threading.Thread(
        target=lambda: answers.append(api(devserver, "api/posts", since=0, wait=WAIT))
    )
    waiting.start()
    requests.post(devserver.url, json={"visitors": [{"visitor_id": "late"}]}, timeout=WAIT)
    waiting.join(WAIT + 5)
    (answer,) = answers
    assert visitor_ids(answer) == ["late"]


def test_wait_ends_empty_when_nothing_arrives(devserver: DevServer) -> None:
    listing = api(devserver, "api/posts", since=0, wait=0.2, generation=0)
    assert listing["posts"] == [] and listing["last_id"] == 0


def test_a_since_from_an_earlier_run_does_not_wait(devserver: DevServer) -> None:
    # A page open across a restart asks for ids this server never gave out: it
    # is answered at once, not when its (longest) wait of 30 s runs out.
    answers: list[Any] = []
    asking = threading.Thread(
        target=lambda: answers.append(api(devserver, "api/posts", since=7, wait=30))
    )
    asking.start()
    asking.join(WAIT)
    assert answers and answers[0]["last_id"] == 0


def test_filters_by_visitor_flag_and_event(devserver: DevServer, datafile: str) -> None:
    send(
        devserver,
        datafile,
        ("alice", "decide"),
        ("alice", "buy"),
        ("bob", "activate"),
        ("Bobby", "buy"),
    )
    assert sorted(visitor_ids(api(devserver, "api/posts", visitor="bob"))) == ["Bobby", "bob"]
    assert visitor_ids(api(devserver, "api/posts", visitor="ALICE", event="purch")) == ["alice"]
    assert visitor_ids(api(devserver, "api/posts", flag="checkout")) == ["alice"]
    # An experiment decided by activate() is found by its key.
    assert visitor_ids(api(devserver, "api/posts", flag="headline")) == ["bob"]
    assert sorted(visitor_ids(api(devserver, "api/posts", event="purchase"))) == ["Bobby", "alice"]
    # A visitor carries one SDK event: flag and event together pick either kind.
    both = api(devserver, "api/posts", visitor="alice", flag="new_checkout", event="purchase")
    assert visitor_ids(both) == ["alice", "alice"]
    assert api(devserver, "api/posts", visitor="nobody")["posts"] == []
    # A filtered post lists the matching visitors and still says how big its batch was.
    filtered = api(devserver, "api/posts", visitor="bobby")["posts"]
    assert sum(p["visitor_count"] for p in filtered) >= len(filtered)


def test_limit_keeps_the_newest(devserver: DevServer) -> None:
    for n in range(5):
        requests.post(devserver.url, json={"visitors": [{"visitor_id": f"u{n}"}]}, timeout=WAIT)
    assert visitor_ids(api(devserver, "api/posts", limit=2)) == ["u4", "u3"]


def test_bad_numbers_are_answered_400(devserver: DevServer) -> None:
    for params in ({"since": "x"}, {"wait": "soon"}, {"limit": "0"}, {"generation": "g"}):
        response = requests.get(devserver.inspector_url + "api/posts", params=params, timeout=WAIT)
        assert response.status_code == 400, params
        assert "error" in response.json()
    assert requests.get(devserver.inspector_url + "api/nothing", timeout=WAIT).status_code == 404


def test_clear_empties_the_list_and_keeps_the_counts(devserver: DevServer, datafile: str) -> None:
    send(devserver, datafile, ("alice", "decide"), ("alice", "buy"))
    before = api(devserver, "api/posts")
    response = requests.delete(devserver.inspector_url + "api/posts", timeout=WAIT)
    assert response.status_code == 200
    assert response.json() == {"generation": 1}

    after = api(devserver, "api/posts")
    assert after["posts"] == [] and after["generation"] == 1
    assert devserver.posts == []
    assert after["stats"]["visitors"] == before["stats"]["visitors"] == 1
    # A page that still waits on the old generation is told at once.
    told = api(devserver, "api/posts", since=after["last_id"], wait=WAIT, generation=0)
    assert told["generation"] == 1
    # New posts keep numbering on: "since" stays valid across a clear.
    send(devserver, datafile, ("carol", "decide"))
    assert visitor_ids(api(devserver, "api/posts", since=before["last_id"])) == ["carol"]


def test_stats_count_accepted_posts_since_the_start(devserver: DevServer, datafile: str) -> None:
    send(devserver, datafile, ("alice", "decide"), ("bob", "decide"), ("alice", "buy"))
    send(devserver, datafile, ("bob", "buy"), ("carol", "activate"))
    devserver.status = 503  # a rejected batch is retried by the sender: it must not count
    requests.post(devserver.url, json={"visitors": [{"visitor_id": "zed"}]}, timeout=WAIT)
    requests.post(devserver.url, data=b"not json", timeout=WAIT)

    stats = api(devserver, "api/stats")
    assert stats["visitors"] == 3
    assert stats["visitor_events"] == 5
    assert stats["rejected_posts"] == 2
    assert stats["posts"] == stats["accepted_posts"] + 2 == len(devserver.posts)
    assert stats["endpoint"] == devserver.url and stats["answer_status"] == 503
    assert sum(i["count"] for i in stats["impressions"]) == 3
    headline = [i for i in stats["impressions"] if i["rule_key"] == "headline_test"]
    assert [(i["flag_key"], i["count"]) for i in headline] == [("", 1)]
    checkout = [i for i in stats["impressions"] if i["flag_key"] == "new_checkout"]
    assert sum(i["count"] for i in checkout) == 2
    assert {i["variation_key"] for i in checkout} <= {"on", "off"}
    assert stats["conversions"] == [{"event_key": "purchase", "count": 2, "revenue": 8400}]
    assert api(devserver, "api/posts")["stats"]["visitors"] == 3


def test_raw_body_is_the_bytes_that_arrived(devserver: DevServer) -> None:
    body = b'{"visitors": [{"visitor_id": "raw"}],   "account_id": "1"}'
    requests.post(
        devserver.url, data=body, headers={"Content-Type": "application/json"}, timeout=WAIT
    )
    requests.post(devserver.url, data=b"not json", timeout=WAIT)
    first, second = (p.id for p in devserver.posts)

    raw = requests.get(f"{devserver.inspector_url}api/posts/{first}/raw", timeout=WAIT)
    assert raw.status_code == 200 and raw.content == body
    assert raw.headers["Content-Type"] == "application/json"
    text = requests.get(f"{devserver.inspector_url}api/posts/{second}/raw", timeout=WAIT)
    assert text.content == b"not json" and text.headers["Content-Type"].startswith("text/plain")

    devserver.clear()
    gone = requests.get(f"{devserver.inspector_url}api/posts/{first}/raw", timeout=WAIT)
    assert gone.status_code == 404


def test_the_api_says_how_many_posts_were_let_go() -> None:
    with DevServer(port=0, max_posts=2, max_bytes=10_000) as server:
        for n in range(3):
            requests.post(server.url, json={"visitors": [{"visitor_id": f"v{n}"}]}, timeout=WAIT)
        listing = api(server, "api/posts")
        assert visitor_ids(listing) == ["v2", "v1"]
        stats = listing["stats"]
        assert (stats["listed"], stats["let_go"], stats["posts"]) == (2, 1, 3)
        assert stats["let_go_bytes"] == len(b'{"visitors": [{"visitor_id": "v0"}]}')
        assert (stats["max_posts"], stats["max_bytes"]) == (2, 10_000)
        assert stats["listed_bytes"] == sum(len(p.body) for p in server.posts)
        assert api(server, "api/stats")["let_go"] == 1
        gone = requests.get(f"{server.inspector_url}api/posts/1/raw", timeout=WAIT)
        assert gone.status_code == 404 and "let go" in gone.json()["error"]


def test_a_foreign_host_name_is_refused(devserver: DevServer) -> None:
    # A page elsewhere whose name resolves to 127.0.0.1 (DNS rebinding) must not read payloads.
    requests.post(devserver.url, json={"visitors": [{"visitor_id": "secret"}]}, timeout=WAIT)
    for path in ("", "api/posts", "api/stats", "api/posts/1/raw"):
        response = requests.get(
            devserver.inspector_url + path, headers={"Host": "evil.example:80"}, timeout=WAIT
        )
        assert response.status_code == 403, path
        assert "secret" not in response.text
    refused = requests.delete(
        devserver.inspector_url + "api/posts", headers={"Host": "evil.example"}, timeout=WAIT
    )
    assert refused.status_code == 403
    assert len(devserver.posts) == 1
    local = {"Host": f"localhost:{devserver.port}"}
    assert requests.get(devserver.inspector_url, headers=local, timeout=WAIT).status_code == 200


def test_a_peer_on_another_machine_is_refused(devserver: DevServer) -> None:
    host = f"127.0.0.1:{devserver.port}"
    for peer in ("192.0.2.7", "::ffff:192.0.2.7", "2001:db8::1"):
        for method, path in (("GET", "/api/posts"), ("GET", "/"), ("DELETE", "/api/posts")):
            answer = handle_inspector(devserver, method, path, peer, host)
            assert answer is not None and answer.status == 403, (peer, method, path)
    for peer in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        answer = handle_inspector(devserver, "GET", "/api/stats", peer, host)
        assert answer is not None and answer.status == 200, peer
    # Event POSTs and other paths are not the inspector's.
    assert handle_inspector(devserver, "GET", "/v1/events", "192.0.2.7", host) is None


def test_page_is_self_contained(devserver: DevServer) -> None:
    page = requests.get(devserver.inspector_url, timeout=WAIT)
    assert page.status_code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store"
    linked = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert set(linked) == {"/static/inspector.css", "/static/inspector.js", "data:,"}
    for path, kind in (
        ("static/inspector.css", "text/css"),
        ("static/inspector.js", "text/javascript"),
    ):
        response = requests.get(devserver.inspector_url + path, timeout=WAIT)
        assert response.status_code == 200 and response.headers["Content-Type"].startswith(kind)
        # Nothing is fetched from elsewhere: the page works offline.
        assert not re.search(r"https?://|url\(", response.text), path
        assert "innerHTML" not in response.text
    # Only the page's own files are served, by name.
    connection = http.client.HTTPConnection("127.0.0.1", devserver.port, timeout=WAIT)
    connection.request("GET", "/static/../server.py")
    assert b"import" not in connection.getresponse().read()
    connection.close()


def test_get_on_the_event_path_points_to_the_inspector(devserver: DevServer) -> None:
    text = requests.get(devserver.url, timeout=WAIT).text
    assert devserver.url in text and devserver.inspector_url in text


def test_static_files_are_package_data() -> None:
    if sys.version_info < (3, 11):
        pytest.skip("tomllib is new in Python 3.11")
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["optimizely_middleware.devserver"]
    folder = PACKAGE / "devserver"
    files = [p.relative_to(folder).as_posix() for p in (folder / "static").iterdir()]
    assert files
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


def test_one_parser_for_devserver_and_testing_kit() -> None:
    assert testing_kit.Impression is payloads.Impression
    assert testing_kit.conversions_in is payloads.conversions_in
    # The impression event key is spelled once, in the parser.
    spelled = [
        path.name
        for path in PACKAGE.rglob("*.py")
        if payloads.IMPRESSION_EVENT_KEY in path.read_text()
    ]
    assert spelled == ["payloads.py"]


@pytest.mark.parametrize(
    ("origin", "fetch_site", "refused"),
    [
        (None, None, False),  # an SDK, the package's sender, curl
        ("http://127.0.0.1:8765", "same-origin", False),
        ("http://localhost:8765", None, False),
        ("http://[::1]:8765", None, False),
        (None, "none", False),  # typed in the address bar
        ("https://127.0.0.1:8765", None, True),
        ("http://127.0.0.1:8766", None, True),
        ("http://127.0.0.1", None, True),
        ("http://evil.example:8765", None, True),
        ("null", None, True),
        (None, "same-site", True),
        (None, "cross-site", True),
    ],
)
def test_which_browser_posts_are_refused(
    origin: str | None, fetch_site: str | None, refused: bool
) -> None:
    reason = browser_post_refusal(origin, fetch_site, "127.0.0.1", 8765)
    assert (reason is not None) is refused
