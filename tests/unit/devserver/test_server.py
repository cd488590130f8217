"""The local event endpoint: as a library with the real SDK and sender, and as a command."""

from __future__ import annotations

import io
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import requests

import optimizely_middleware
from optimizely_middleware import EventSender, RequestScopedEventDispatcher, create_client
from optimizely_middleware.devserver import (
    DevServer,
    OutputFormat,
    ReceivedPost,
    describe_conversion,
    describe_decision,
    format_post,
)
from optimizely_middleware.devserver.cli import parse_size

WAIT = 20.0


def send_request_events(server: DevServer, datafile: str) -> RequestScopedEventDispatcher:
    """One request's worth of real SDK events, sent by the real sender to ``server``."""
    dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=server.url))
    client = create_client(dispatcher, datafile=datafile)
    with dispatcher.request_scope():
        user = client.create_user_context("user-1", {"plan": "pro"})
        user.decide("new_checkout")
        client.activate("headline_test", "user-2")
        user.track_event("purchase", {"revenue": 4200, "value": 42.5, "category": "shoes"})
    assert dispatcher.flush(WAIT)
    return dispatcher


def test_prints_decisions_and_conversions_from_the_real_sdk(
    devserver: DevServer, datafile: str
) -> None:
    dispatcher = send_request_events(devserver, datafile)
    try:
        assert devserver.wait_for_visitors(3, WAIT)
        assert dispatcher.stats()["delivered_events"] == 3
    finally:
        dispatcher.close(WAIT)

    assert all(post.status == 204 and post.path == "/v1/events" for post in devserver.posts)
    assert [v["visitor_id"] for v in devserver.visitors()] == ["user-1", "user-2", "user-1"]
    assert all(post.problems == [] for post in devserver.posts)

    assert isinstance(devserver.output, io.StringIO)
    text = devserver.output.getvalue()
    # The sender may merge the three events into fewer POSTs; each visitor is printed.
    posts = devserver.posts
    assert text.count("POST /v1/events  ") == len(posts)
    assert sum(len(p.visitors) for p in posts) == 3
    assert text.count("-> 204 No Content") == len(posts)
    assert text.count("  visitor '") == 3
    assert "visitor 'user-1'  plan='pro'" in text
    assert "decision    new_checkout: new_checkout_test (feature-test) -> on" in text
    assert "decision    headline_test (experiment) -> bold" in text
    assert "conversion  purchase  revenue=4200 value=42.5 tags={'category': 'shoes'}" in text
    # The impression marker the SDK puts beside a decision is not a conversion.
    assert "campaign_activated" not in text


def test_answers_204_with_no_body(devserver: DevServer) -> None:
    response = requests.post(devserver.url, json={"visitors": []}, timeout=WAIT)
    assert response.status_code == 204
    assert response.content == b""
    assert devserver.wait_for_posts(1, WAIT)


def test_accepts_any_path(devserver: DevServer) -> None:
    url = devserver.url.replace("/v1/events", "/proxy/logx/v1/events")
    assert requests.post(url, json={}, timeout=WAIT).status_code == 204
    assert devserver.posts[0].path == "/proxy/logx/v1/events"


def test_simulated_failure_status_is_answered_and_recorded(devserver: DevServer) -> None:
    devserver.status = 503
    response = requests.post(devserver.url, json={"visitors": []}, timeout=WAIT)
    assert response.status_code == 503
    (post,) = devserver.posts
    assert not post.accepted
    assert devserver.visitors() == []
    assert isinstance(devserver.output, io.StringIO)
    assert "-> 503 Service Unavailable" in devserver.output.getvalue()


def test_sender_sees_the_simulated_failure(datafile: str) -> None:
    with DevServer(port=0, status=400) as server:
        dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=server.url))
        client = create_client(dispatcher, datafile=datafile)
        with dispatcher.request_scope():
            client.create_user_context("user-1").decide("new_checkout")
        try:
            assert dispatcher.flush(WAIT)
            stats = dispatcher.stats()
        finally:
            dispatcher.close(WAIT)
        assert server.wait_for_posts(1, WAIT)
    assert stats["delivered_events"] == 0
    assert sum(stats["dropped"].values()) == 1
    assert "400" in str(stats["last_error"])


def test_delay_holds_the_answer(devserver: DevServer) -> None:
    devserver.delay = 2.0
    # The answer cannot come before the delay; the client gives up well before it.
    with pytest.raises(requests.ReadTimeout):
        requests.post(devserver.url, json={}, timeout=(WAIT, 0.5))
    assert devserver.wait_for_posts(1, WAIT)


def test_body_that_is_not_json_is_answered_400(devserver: DevServer) -> None:
    response = requests.post(devserver.url, data=b"not json", timeout=WAIT)
    assert response.status_code == 400
    (post,) = devserver.posts
    assert post.payload is None
    assert post.problems == ["the body is not JSON"]
    assert isinstance(devserver.output, io.StringIO)
    assert "! the body is not JSON" in devserver.output.getvalue()


def test_malformed_payload_is_flagged(devserver: DevServer) -> None:
    response = requests.post(devserver.url, json={"visitors": [{}]}, timeout=WAIT)
    assert response.status_code == 204  # like Optimizely's endpoint: stored, not validated
    (post,) = devserver.posts
    assert "account_id: missing" in post.problems
    assert isinstance(devserver.output, io.StringIO)
    assert "! account_id: missing" in devserver.output.getvalue()


def test_get_explains_where_to_post(devserver: DevServer) -> None:
    response = requests.get(devserver.url, timeout=WAIT)
    assert response.status_code == 200
    assert devserver.url in response.text


def printed_lines(output_format: OutputFormat, datafile: str) -> list[str]:
    """What a server printing in ``output_format`` prints for one request's events:
    one line per POST."""
    out = io.StringIO()
    with DevServer(port=0, output=out, output_format=output_format) as server:
        send_request_events(server, datafile).close(WAIT)
        assert server.wait_for_visitors(3, WAIT)
    lines = out.getvalue().splitlines()
    assert len(lines) == len(server.posts)
    return lines


def test_json_output_is_one_parsable_line_per_post(datafile: str) -> None:
    records = [json.loads(line) for line in printed_lines("json", datafile)]
    assert {r["status"] for r in records} == {204}
    visitors = [v["visitor_id"] for r in records for v in r["payload"]["visitors"]]
    assert visitors == ["user-1", "user-2", "user-1"]


def test_quiet_output_has_no_user_data(datafile: str) -> None:
    lines = printed_lines("quiet", datafile)
    assert not any("user-" in line for line in lines)
    assert sum(int(line.split(" visitor(s)")[0].rsplit(" ", 1)[1]) for line in lines) == 3


def test_decision_without_metadata_falls_back_to_ids() -> None:
    decision = {"campaign_id": "1", "experiment_id": "40001", "variation_id": "60002"}
    assert describe_decision(decision) == "experiment 40001 -> variation 60002"


def test_flag_that_is_off_is_marked() -> None:
    decision = {
        "experiment_id": "40003",
        "variation_id": "60005",
        "metadata": {
            "flag_key": "new_checkout",
            "rule_key": "default-rollout-80001",
            "rule_type": "rollout",
            "variation_key": "off",
            "enabled": False,
        },
    }
    assert describe_decision(decision) == (
        "new_checkout: default-rollout-80001 (rollout) -> off  [flag off]"
    )


def test_conversion_without_revenue() -> None:
    assert describe_conversion({"key": "add_to_cart"}) == "add_to_cart"
    assert describe_conversion({"key": "add_to_cart", "tags": {"sku": "a1"}}) == (
        "add_to_cart  tags={'sku': 'a1'}"
    )


def test_format_post_counts_visitors_in_a_batch() -> None:
    visitor = {"visitor_id": "u", "attributes": [], "snapshots": [{"events": [{"key": "k"}]}]}
    post = ReceivedPost(
        path="/v1/events",
        headers={},
        body=b"{}",
        status=204,
        received_at=0.0,
        wall_time=0.0,
        payload={"visitors": [visitor, dict(visitor, visitor_id="v")]},
    )
    text = format_post(post)
    assert "2 visitor(s), 2 event(s)" in text
    assert "visitor 'u'" in text and "visitor 'v'" in text


def test_rejects_invalid_options() -> None:
    with pytest.raises(ValueError, match="status"):
        DevServer(status=42)
    with pytest.raises(ValueError, match="delay"):
        DevServer(delay=-1)
    with pytest.raises(ValueError, match="max_posts"):
        DevServer(max_posts=0)
    with pytest.raises(ValueError, match="max_bytes"):
        DevServer(max_bytes=0)


# -- memory -------------------------------------------------------------------------


def post_visitor(server: DevServer, visitor_id: str, padding: int = 0) -> requests.Response:
    """One POST of one visitor; ``padding`` bytes of attribute make the body bigger."""
    body = {
        "account_id": "10001",
        "visitors": [{"visitor_id": visitor_id, "note": "x" * padding, "snapshots": []}],
    }
    return requests.post(server.url, json=body, timeout=WAIT)


def test_keeps_the_newest_posts_up_to_a_count() -> None:
    output = io.StringIO()
    with DevServer(port=0, output=output, output_format="quiet", max_posts=3) as server:
        for n in range(5):
            assert post_visitor(server, f"user-{n}").status_code == 204
        assert [v["visitor_id"] for v in server.visitors()] == ["user-2", "user-3", "user-4"]
        assert [p.id for p in server.posts] == [3, 4, 5]
        counts = server.counts()
        assert (counts["listed"], counts["let_go"], counts["posts"]) == (3, 2, 5)
        assert counts["let_go_bytes"] == sum(len(p.body) for p in server.posts[:2])
        assert counts["visitors"] == 5  # the counts since the start keep what was let go
        assert server.post_by_id(1) is None and server.post_by_id(5) is not None
        # What arrived counts for the waits, kept or not.
        assert server.wait_for_posts(5, 0) and server.wait_for_visitors(5, 0)
    notes = [line for line in output.getvalue().splitlines() if "let go" in line]
    assert notes == [
        "(Memory: keeping the newest 3 POSTs within 32 MiB; older ones are let go from the "
        "list and the inspector, and counted. --max-posts and --max-bytes change this.)"
    ]


def test_keeps_the_newest_posts_within_a_byte_budget() -> None:
    with DevServer(port=0, max_bytes=25_000) as server:
        for n in range(4):
            post_visitor(server, f"user-{n}", padding=10_000)
        kept = server.posts
        assert [v["visitor_id"] for p in kept for v in p.visitors] == ["user-2", "user-3"]
        counts = server.counts()
        assert counts["listed_bytes"] == sum(len(p.body) for p in kept) <= 25_000
        assert counts["let_go"] == 2 and counts["max_bytes"] == 25_000

        # One POST over the whole budget is kept, alone: the newest is always there.
        post_visitor(server, "big", padding=30_000)
        assert [v["visitor_id"] for p in server.posts for v in p.visitors] == ["big"]
        assert server.counts()["let_go"] == 4


def test_memory_stays_bounded_under_big_posts() -> None:
    """The issue's case: 1.2 MB POSTs, many of them; what is kept stays within the budget."""
    budget = 4 * 1024 * 1024
    with DevServer(port=0, max_bytes=budget) as server:
        for n in range(12):
            post_visitor(server, f"user-{n}", padding=1_200_000)
        assert server.counts()["listed_bytes"] <= budget
        assert len(server.posts) == 3 and server.counts()["let_go"] == 9


# -- browsers ----------------------------------------------------------------------


def test_a_cross_origin_post_from_a_browser_page_is_refused_and_not_stored(
    devserver: DevServer, datafile: str
) -> None:
    own = f"http://127.0.0.1:{devserver.port}"
    foreign = [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": f"http://localhost:{devserver.port + 1}"},  # another port: another origin
        {"Origin": f"http://evil.example:{devserver.port}"},  # DNS rebinding
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": f"http://localhost:{devserver.port + 1}"},
    ]
    with requests.Session() as session:  # one connection: a refusal leaves it usable
        for headers in foreign:
            response = post_as(session, devserver, headers, "made-up")
            assert response.status_code == 403, headers
            assert "browser pages elsewhere may not send events here" in response.json()["error"]
        assert devserver.posts == [] and devserver.counts()["posts"] == 0
        assert devserver.counts()["refused_posts"] == len(foreign)
        # The page itself (same origin) and a browser's direct request are not refused.
        assert post_as(session, devserver, {"Origin": own}, "same-origin").status_code == 204
        assert post_as(session, devserver, {"Sec-Fetch-Site": "none"}, "typed").status_code == 204

    # The SDK through the package's sender sends no Origin: its events arrive.
    dispatcher = send_request_events(devserver, datafile)
    dispatcher.close(WAIT)
    assert devserver.wait_for_visitors(5, WAIT)
    ids = [v["visitor_id"] for v in devserver.visitors()]
    assert "made-up" not in ids and ids[:2] == ["same-origin", "typed"]
    assert isinstance(devserver.output, io.StringIO)
    refused = [line for line in devserver.output.getvalue().splitlines() if "refused" in line]
    assert len(refused) == len(foreign)
    assert "POST /v1/events refused: browser pages elsewhere" in refused[0]
    assert "'http://evil.example'" in refused[0]


def post_as(
    session: requests.Session, server: DevServer, headers: dict[str, str], visitor_id: str
) -> requests.Response:
    body = {"account_id": "10001", "visitors": [{"visitor_id": visitor_id, "snapshots": []}]}
    return session.post(server.url, json=body, headers=headers, timeout=WAIT)


# -- the command ------------------------------------------------------------------


class Command:
    """``python -m optimizely_middleware.devserver`` as a subprocess."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "optimizely_middleware.devserver", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=Path(__file__).parents[3],
        )
        self.stdout = self._reader(self.process.stdout)
        self.stderr = self._reader(self.process.stderr)

    @staticmethod
    def _reader(stream: IO[str] | None) -> queue.Queue[str]:
        lines: queue.Queue[str] = queue.Queue()

        def pump() -> None:
            assert stream is not None
            for line in stream:
                lines.put(line.rstrip("\n"))

        threading.Thread(target=pump, daemon=True).start()
        return lines

    def read_until(self, lines: queue.Queue[str], text: str) -> list[str]:
        seen: list[str] = []
        while True:
            try:
                line = lines.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(f"{text!r} not printed; got {seen!r}") from None
            seen.append(line)
            if text in line:
                return seen

    def url(self) -> str:
        return self.url_from(self.read_until(self.stderr, "Send events to "))

    @staticmethod
    def url_from(notes: list[str]) -> str:
        return notes[-1].split("Send events to ")[1].split(" ")[0]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=WAIT)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def command() -> Iterator[list[Command]]:
    started: list[Command] = []
    try:
        yield started
    finally:
        for c in started:
            if c.process.poll() is None:
                c.process.kill()
                c.process.wait()


def test_command_prints_each_post_and_stops_cleanly(command: list[Command], datafile: str) -> None:
    cmd = Command("--port", "0")
    command.append(cmd)
    url = cmd.url()
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1/events")

    dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=url))
    client = create_client(dispatcher, datafile=datafile)
    with dispatcher.request_scope():
        user = client.create_user_context("user-7", {"plan": "free"})
        user.decide("new_checkout")
        user.track_event("add_to_cart")
    try:
        assert dispatcher.flush(WAIT)
        assert dispatcher.stats()["delivered_events"] == 2
    finally:
        dispatcher.close(WAIT)

    printed = "\n".join(cmd.read_until(cmd.stdout, "conversion  add_to_cart"))
    assert "visitor 'user-7'  plan='free'" in printed
    assert "decision    new_checkout: new_checkout_test (feature-test) ->" in printed
    assert cmd.stop() == 0
    stopped = cmd.read_until(cmd.stderr, "Stopped after ")[-1]
    assert stopped == "Stopped after 1 POST(s): 2 event(s) from 1 visitor(s)."


def test_command_says_it_listens_on_localhost_only(command: list[Command]) -> None:
    cmd = Command("--port", "0", "--status", "503", "--delay", "0.25")
    command.append(cmd)
    notes = cmd.read_until(cmd.stderr, "Send events to ")
    assert "Listening on 127.0.0.1 only (event payloads carry user ids)." in notes
    assert "answering 503 Service Unavailable after 0.25s" in notes[-1]
    assert not any("WARNING" in line for line in notes)
    (inspector,) = [line for line in notes if line.startswith("Inspector: ")]
    page = inspector.split()[1]
    assert page == cmd.url_from(notes).replace("/v1/events", "/")
    assert "<title>Optimizely events" in requests.get(page, timeout=WAIT).text
    assert cmd.stop() == 0


def test_command_warns_when_told_to_listen_elsewhere(command: list[Command]) -> None:
    # 127.0.0.2 is not one of the names the devserver knows as local-only, so it warns.
    cmd = Command("--host", "127.0.0.2", "--port", "0")
    command.append(cmd)
    notes = cmd.read_until(cmd.stderr, "Send events to ")
    (warning,) = [line for line in notes if line.startswith("WARNING: listening on 127.0.0.2")]
    assert "payloads carry user ids" in warning
    assert "The inspector still answers this machine only." in warning
    (inspector,) = [line for line in notes if line.startswith("Inspector: ")]
    page = inspector.split()[1]
    assert page.startswith("http://127.0.0.2:")
    assert requests.get(page + "api/stats", timeout=WAIT).json()["posts"] == 0
    assert cmd.stop() == 0


def test_inspector_url_for_a_wildcard_address_is_loopback() -> None:
    assert DevServer("0.0.0.0", 8765).inspector_url == "http://127.0.0.1:8765/"
    assert DevServer("::1", 8765).inspector_url == "http://[::1]:8765/"
    assert DevServer("127.0.0.1", 9000).url == "http://127.0.0.1:9000/v1/events"


def test_command_reports_a_port_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "optimizely_middleware.devserver", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_command_help_lists_the_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "optimizely_middleware.devserver", "--help"],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == 0
    for option in (
        "--host",
        "--port",
        "--delay",
        "--status",
        "--quiet",
        "--json",
        "--max-posts",
        "--max-bytes",
        "--version",
    ):
        assert option in result.stdout
    assert "inspector page at /" in result.stdout


def test_command_keeps_posts_within_the_limits_it_is_given(command: list[Command]) -> None:
    cmd = Command("--port", "0", "--quiet", "--max-posts", "2", "--max-bytes", "1MiB")
    command.append(cmd)
    server_url = cmd.url()
    with requests.Session() as session:
        for visitor_id in ("ann", "ann", "bea"):
            body = {"account_id": "1", "visitors": [{"visitor_id": visitor_id, "snapshots": []}]}
            assert session.post(server_url, json=body, timeout=WAIT).status_code == 204
        stats = session.get(server_url.replace("/v1/events", "/api/stats"), timeout=WAIT).json()
    assert (stats["max_posts"], stats["max_bytes"], stats["let_go"]) == (2, 1024 * 1024, 1)
    note = cmd.read_until(cmd.stdout, "(Memory: ")[-1]
    assert note.startswith("(Memory: keeping the newest 2 POSTs within 1 MiB;")
    assert cmd.stop() == 0
    assert cmd.read_until(cmd.stderr, "Stopped after ")[-1] == (
        "Stopped after 3 POST(s): 0 event(s) from 2 visitor(s); 1 older POST(s) were let go "
        "from memory (keeping 2 within 1 MiB)."
    )


@pytest.mark.parametrize(
    "program",
    [
        [sys.executable, "-m", "optimizely_middleware.devserver"],
        [str(Path(sys.executable).with_name("optimizely-devserver"))],
    ],
    ids=["module", "script"],
)
def test_command_prints_its_version(program: list[str]) -> None:
    result = subprocess.run(
        [*program, "--version"], capture_output=True, text=True, timeout=WAIT, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"optimizely-devserver {optimizely_middleware.__version__}\n"


@pytest.mark.parametrize(
    ("text", "size"),
    [("1000", 1000), ("512k", 512 * 1024), ("32MiB", 32 * 1024**2), ("1 GB", 1024**3)],
)
def test_sizes_are_read_in_binary_units(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_a_size_that_is_not_one_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "optimizely_middleware.devserver", "--max-bytes", "lots"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert result.returncode == 2
    assert "'lots' is not a size" in result.stderr
