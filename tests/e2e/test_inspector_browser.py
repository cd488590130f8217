"""The inspector page in headless Chromium, fed by the real middleware and SDK.

The WSGI example app (``examples/wsgi_app.py``: ``OptimizelyWSGIMiddleware``
and a client from ``create_client``) runs on werkzeug and sends its events
with ``EventSender(endpoint=devserver.url)``. Chromium from the system
packages is driven by Selenium through the system chromedriver; nothing is
downloaded. Screenshots land in ``test-artifacts/``.

Run only these: ``.venv/bin/python -m pytest -m browser``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import requests

from optimizely_middleware import EventSender, RequestScopedEventDispatcher
from optimizely_middleware.devserver import DevServer
from tests.support.examples import load_example
from tests.support.servers import werkzeug_in_a_thread

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ROOT = Path(__file__).parents[2]
ARTIFACTS = ROOT / "test-artifacts"
WAIT = 20.0

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="needs Chromium and chromedriver from the system packages "
        "(apt-get install chromium chromium-driver)",
    ),
]

if CHROMIUM.exists():  # selenium is a dev dependency; only import it where it can run
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support.ui import WebDriverWait


class Shop:
    """The devserver plus the WSGI example app whose events it receives."""

    def __init__(self, datafile: str, max_posts: int = 1000) -> None:
        example = load_example("wsgi_app")
        self.devserver = DevServer(port=0, output=io.StringIO(), max_posts=max_posts).start()
        self.dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=self.devserver.url))
        app = example.create_app(self.dispatcher, datafile)
        self._app_server = ExitStack()
        port = self._app_server.enter_context(werkzeug_in_a_thread(app))
        self.url = f"http://127.0.0.1:{port}"
        self.session = requests.Session()

    def visit(self, user: str, path: str = "/", plan: str = "free") -> None:
        """One page view: ``/`` decides ``new_checkout``; ``/buy`` also tracks a purchase."""
        response = self.session.get(
            self.url + path, params={"user": user, "plan": plan}, timeout=WAIT
        )
        assert response.status_code == 200

    def delivered(self, visitors: int) -> None:
        assert self.dispatcher.flush(WAIT)
        assert self.devserver.wait_for_visitors(visitors, WAIT)

    def restart_devserver(self) -> None:
        """A new devserver on the same port, as when you stop it and start it again."""
        port = self.devserver.port
        self.devserver.stop()
        self.devserver = DevServer(port=port, output=io.StringIO()).start()

    def close(self) -> None:
        self.session.close()
        self._app_server.close()
        self.dispatcher.close(WAIT)
        self.devserver.stop()


@pytest.fixture
def shop(datafile: str) -> Iterator[Shop]:
    shop = Shop(datafile)
    try:
        yield shop
    finally:
        shop.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    os.environ["SE_AVOID_STATS"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        # Without these Chromium reaches out to the network on its own.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(argument)
    # An explicit driver path: Selenium Manager (which downloads drivers) never runs.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def open_inspector(browser: WebDriver, shop: Shop, width: int = 1280, height: int = 860) -> None:
    browser.set_window_size(width, height)
    browser.get(shop.devserver.inspector_url)
    until(
        browser, lambda: browser.find_element(By.ID, "live").get_attribute("data-state") == "live"
    )


def until(browser: WebDriver, condition: object, message: str = "") -> object:
    assert callable(condition)
    return WebDriverWait(browser, WAIT).until(lambda _: condition(), message)


def visitors_shown(browser: WebDriver) -> list[WebElement]:
    return browser.find_elements(By.CSS_SELECTOR, "#posts .visitor")


def ids_shown(browser: WebDriver) -> list[str]:
    # In one script: the list may be redrawn between two WebDriver calls.
    ids = browser.execute_script(
        "return [...document.querySelectorAll('#posts .visitor')].map((v) => v.dataset.visitorId);"
    )
    assert isinstance(ids, list)
    return [str(i) for i in ids]


def caught_up(browser: WebDriver, shop: Shop) -> bool:
    """The page has taken in (shown or filtered out) every POST the devserver has."""
    last = max((p.id for p in shop.devserver.posts), default=0)
    seen = browser.find_element(By.TAG_NAME, "body").get_attribute("data-last-id")
    return seen is not None and int(seen) >= last


def type_filter(browser: WebDriver, name: str, text: str) -> None:
    field = browser.find_element(By.ID, f"filter-{name}")
    field.clear()
    if text:
        field.send_keys(text)
    else:  # clear() sends no input event; an edit does
        field.send_keys("x", "\b")


def screenshot(browser: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    assert browser.save_screenshot(str(path))
    assert path.stat().st_size > 0
    return path


def test_events_appear_live_without_a_reload(browser: WebDriver, shop: Shop) -> None:
    open_inspector(browser, shop)
    assert browser.find_element(By.ID, "empty").is_displayed()
    browser.execute_script("window.sameDocument = true;")

    shop.visit("alice", "/", plan="pro")
    until(browser, lambda: "alice" in ids_shown(browser), "alice's decision did not appear")
    (alice,) = visitors_shown(browser)
    text = alice.text
    assert "plan=pro" in text and "DECISION" in text
    assert "new_checkout" in text and "rule new_checkout_test · feature-test" in text
    variation = alice.find_element(By.CLASS_NAME, "variation").text
    assert variation in ("on", "off")
    assert ("enabled" if variation == "on" else "flag off") in text

    shop.visit("bob", "/buy")
    until(browser, lambda: ids_shown(browser).count("bob") == 2, "bob's events did not appear")
    newest = browser.find_elements(By.CSS_SELECTOR, "#posts > .post")[0]
    assert "bob" in newest.text  # newest first
    purchase = browser.find_element(By.CSS_SELECTOR, "#posts .conversion")
    assert "purchase" in purchase.text and "revenue 4200" in purchase.text
    assert "value 42" in purchase.text
    head = newest.find_element(By.CLASS_NAME, "post-head").text
    assert "204" in head and "visitor" in head and "bytes" in head

    until(browser, lambda: browser.find_element(By.ID, "count-visitors").text == "2")
    assert browser.find_element(By.ID, "count-conversions").text == "1"
    assert browser.find_element(By.ID, "count-impressions").text == "2"
    breakdown = browser.find_element(By.CSS_SELECTOR, '#conversions [data-event="purchase"]')
    assert "revenue 4200" in breakdown.text

    # The raw body, on demand.
    newest.find_element(By.CSS_SELECTOR, "details.raw summary").click()
    raw = newest.find_element(By.CSS_SELECTOR, "details.raw pre")
    until(browser, lambda: '"account_id": "10001"' in raw.text, "the raw JSON did not load")
    assert '"visitor_id": "bob"' in raw.text

    assert browser.execute_script("return window.sameDocument === true;")
    screenshot(browser, "inspector-live.png")


def test_filters_narrow_the_list_live(browser: WebDriver, shop: Shop) -> None:
    shop.visit("alice", "/")
    shop.visit("bob", "/buy")
    shop.visit("carol", "/")
    shop.delivered(4)
    open_inspector(browser, shop)
    until(browser, lambda: sorted(ids_shown(browser)) == ["alice", "bob", "bob", "carol"])

    type_filter(browser, "visitor", "BO")
    until(browser, lambda: ids_shown(browser) == ["bob", "bob"], "visitor filter")
    assert "visitor=BO" in browser.current_url

    type_filter(browser, "visitor", "")
    type_filter(browser, "event", "purchase")
    until(browser, lambda: ids_shown(browser) == ["bob"], "event filter")
    assert browser.find_elements(By.CSS_SELECTOR, "#posts .impression") == []

    type_filter(browser, "event", "")
    type_filter(browser, "flag", "new_check")
    until(browser, lambda: sorted(ids_shown(browser)) == ["alice", "bob", "carol"], "flag filter")
    assert browser.find_elements(By.CSS_SELECTOR, "#posts .conversion") == []

    # With a filter set, matching events still arrive live, and others stay out.
    type_filter(browser, "flag", "")
    type_filter(browser, "visitor", "dave")
    until(browser, lambda: browser.find_element(By.ID, "no-match").is_displayed())
    assert "matches the filters" in browser.find_element(By.ID, "no-match").text
    assert not browser.find_element(By.ID, "empty").is_displayed()
    shop.visit("erin", "/")
    shop.visit("dave", "/buy")
    shop.delivered(7)
    until(browser, lambda: caught_up(browser, shop) and ids_shown(browser) == ["dave", "dave"])
    assert "the filters, of" in browser.find_element(By.ID, "shown").text
    screenshot(browser, "inspector-filtered.png")


def test_clear_button_empties_the_list(browser: WebDriver, shop: Shop) -> None:
    shop.visit("alice", "/buy")
    shop.delivered(2)
    open_inspector(browser, shop)
    until(browser, lambda: len(ids_shown(browser)) == 2)

    browser.find_element(By.ID, "clear").click()
    until(browser, lambda: ids_shown(browser) == [], "the list was not cleared")
    assert shop.devserver.posts == []
    assert browser.find_element(By.ID, "empty").is_displayed()
    assert browser.find_element(By.ID, "count-visitors").text == "1"  # counts since the start

    shop.visit("bob", "/")
    until(browser, lambda: ids_shown(browser) == ["bob"], "a new event after the clear")


def test_the_page_says_it_is_loading_until_the_first_answer(browser: WebDriver, shop: Shop) -> None:
    shop.visit("alice", "/")
    shop.delivered(1)
    # Chromium blocks the page's API requests: the page is up, and no answer has come.
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/api/*"]})
    try:
        browser.set_window_size(1280, 860)
        browser.get(shop.devserver.inspector_url)
        live = browser.find_element(By.ID, "live")
        until(browser, lambda: live.get_attribute("data-state") == "offline", "a blocked request")
        loading = browser.find_element(By.ID, "loading")
        assert loading.is_displayed() and "Loading" in loading.text
        assert not browser.find_element(By.ID, "empty").is_displayed()
        for name in ("visitors", "impressions", "conversions", "posts"):
            assert browser.find_element(By.ID, f"count-{name}").text == "…", name
        assert "0" not in browser.find_element(By.CLASS_NAME, "totals").text
        assert "None yet" not in browser.find_element(By.ID, "breakdown").text
        screenshot(browser, "inspector-loading.png")
    finally:
        browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})
        browser.execute_cdp_cmd("Network.disable", {})
    until(browser, lambda: ids_shown(browser) == ["alice"], "the first answer")
    assert not browser.find_element(By.ID, "loading").is_displayed()
    assert browser.find_element(By.ID, "count-visitors").text == "1"

    # An empty list after the first answer says so (and says nothing is loading).
    browser.find_element(By.ID, "clear").click()
    until(browser, lambda: browser.find_element(By.ID, "empty").is_displayed())
    assert not browser.find_element(By.ID, "loading").is_displayed()


def test_the_page_says_how_many_posts_were_let_go(browser: WebDriver, datafile: str) -> None:
    shop = Shop(datafile, max_posts=2)
    try:
        # One POST each. The count is cumulative: a server hands a request's events
        # over after its response, so a flush right after the response can come too soon.
        for arrived, user in enumerate(("alice", "bob", "carol"), start=1):
            shop.visit(user, "/")
            shop.delivered(arrived)
        open_inspector(browser, shop)
        until(browser, lambda: ids_shown(browser) == ["carol", "bob"])
        note = browser.find_element(By.ID, "let-go")
        assert note.is_displayed()
        assert note.text.startswith("1 older POST (")
        assert "let go to bound memory: the list keeps the newest 2 within 32.0 MiB" in note.text
        assert browser.find_element(By.ID, "count-visitors").text == "3"
    finally:
        shop.close()


def test_a_restarted_devserver_is_followed(browser: WebDriver, shop: Shop) -> None:
    open_inspector(browser, shop)
    shop.visit("alice", "/")
    until(browser, lambda: ids_shown(browser) == ["alice"])

    shop.restart_devserver()  # its POSTs are numbered from 1 again
    shop.visit("bob", "/")
    until(browser, lambda: ids_shown(browser) == ["bob"], "the new devserver's POST")
    live = browser.find_element(By.ID, "live")
    until(browser, lambda: live.get_attribute("data-state") == "live")


def test_reads_well_in_a_narrow_window(browser: WebDriver, shop: Shop) -> None:
    for user, path in (
        ("alice", "/"),
        ("bob", "/buy"),
        ("a-visitor-with-a-very-long-id-0123456789", "/"),
    ):
        shop.visit(user, path, plan="pro")
    shop.delivered(4)
    open_inspector(browser, shop, width=400, height=900)
    until(browser, lambda: len(ids_shown(browser)) == 4)
    # Nothing sticks out sideways: no horizontal scrolling at phone width.
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth;"
    )
    assert overflow <= 0
    for name in ("visitor", "flag", "event"):
        assert browser.find_element(By.ID, f"filter-{name}").is_displayed()
    assert browser.find_element(By.ID, "count-visitors").is_displayed()
    screenshot(browser, "inspector-narrow.png")


def test_screenshot_at_laptop_width(browser: WebDriver, shop: Shop) -> None:
    plans = {"alice": "pro", "bob": "free", "carol": "pro", "dave": "free", "erin": "pro"}
    for user, plan in plans.items():
        shop.visit(user, "/", plan=plan)
    shop.delivered(5)
    shop.visit("bob", "/buy", plan="free")
    shop.visit("erin", "/buy", plan="pro")
    shop.delivered(9)  # a purchase comes with its page's decision
    open_inspector(browser, shop, width=1280, height=860)
    until(browser, lambda: len(ids_shown(browser)) == 9)
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= document.documentElement.clientWidth;"
    )
    side = browser.find_element(By.CLASS_NAME, "side").rect
    feed = browser.find_element(By.CLASS_NAME, "feed").rect
    assert side["x"] > feed["x"] + feed["width"] - 1  # the counts sit beside the list
    path = screenshot(browser, "inspector.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
