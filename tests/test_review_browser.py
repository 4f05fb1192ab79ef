"""The review page end to end in headless Chromium: Debian's `chromium` and `chromium-driver` (which `.ci/run`
installs), driven by Selenium with that driver. Nothing is downloaded: the driver path is given, so Selenium
Manager never runs (the `no_selenium_manager` fixture makes sure). Without the browser the tests skip."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from flask import Flask, request
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.common.selenium_manager import SeleniumManager
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.serving import make_server

from data_synthesis.review import ReviewStore, create_app

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason=f"headless Chromium is not installed ({CHROMIUM}, {CHROMEDRIVER}): "
    "`apt-get install chromium chromium-driver` (as .ci/run does) to run the browser tests",
)


@contextmanager
def serving(app: Flask) -> Iterator[str]:
    """`app` served on a free loopback port in a thread; its URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        thread.join()


@pytest.fixture
def review_server(small_dataset, tmp_path):
    """The review app over the small dataset (every pair), served on a free loopback port in a thread."""
    db_path = tmp_path / "review.sqlite"
    with serving(create_app(small_dataset, db_path=db_path, all_pairs=True)) as url:
        yield url, db_path


@pytest.fixture
def no_selenium_manager(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Selenium Manager ran: it would try to download a browser or driver")

    monkeypatch.setattr(SeleniumManager, "binary_paths", refuse)


class ReviewPage:
    """One reviewer's page in its own headless Chromium."""

    def __init__(self, url: str, window: tuple[int, int] = (1366, 768)):
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
            options.add_argument(argument)
        options.add_argument(f"--window-size={window[0]},{window[1]}")
        self.driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
        self.driver.get(url)

    def wait(self, previous: str | None = None) -> str:
        """The pair shown once the page is idle and shows a pair other than `previous`."""

        def shown(driver) -> str | None:
            state, pair_id = driver.execute_script(
                "const root = document.getElementById('review'); return [root.dataset.state, root.dataset.pairId];"
            )
            return pair_id if state == "ready" and pair_id and pair_id != previous else None

        return WebDriverWait(self.driver, 30).until(shown)

    def press(self, key: str, shown: str) -> str:
        """Press `key` while pair `shown` is on screen; the pair shown next."""
        self.driver.find_element(By.TAG_NAME, "body").send_keys(key)
        return self.wait(previous=shown)

    def progress(self) -> str:
        return self.driver.find_element(By.ID, "progress").text


def test_keyboard_decisions_and_an_undo_are_exactly_what_sqlite_holds_after_a_reload(
    review_server, no_selenium_manager
):
    url, db_path = review_server
    page = ReviewPage(f"{url}/?reviewer=alice")
    try:
        first = page.wait()
        second = page.press(Keys.ARROW_LEFT, first)
        third = page.press("n", second)
        fourth = page.press(Keys.ARROW_RIGHT, third)
        assert page.progress() == "3 / 60"
        assert page.press("u", fourth) == third  # undo shows the undone pair again
        page.driver.refresh()
        assert page.wait() == third and page.progress() == "2 / 60"
    finally:
        page.driver.quit()
    store = ReviewStore(db_path)
    assert [(d.reviewer, d.pair_id, d.choice) for d in store.decisions()] == [
        ("alice", first, "left"),
        ("alice", second, "neither"),
    ]
    undone = [d for d in store.decisions(include_undone=True) if d.undone_at is not None]
    assert [(d.pair_id, d.choice) for d in undone] == [(third, "right")]


def test_two_reviewers_in_parallel_lose_no_decision(review_server, no_selenium_manager):
    url, db_path = review_server
    keys = {Keys.ARROW_LEFT: "left", Keys.ARROW_RIGHT: "right", "n": "neither", "b": "both", "f": "flag", "1": "left"}

    def review(reviewer: str) -> list[tuple[str, str]]:
        page = ReviewPage(f"{url}/?reviewer={reviewer}")
        try:
            decided, shown = [], page.wait()
            for key, choice in keys.items():
                decided.append((shown, choice))
                shown = page.press(key, shown)
            return decided
        finally:
            page.driver.quit()

    with ThreadPoolExecutor(2) as pool:
        expected = dict(zip(("alice", "bob"), pool.map(review, ("alice", "bob")), strict=True))
    store = ReviewStore(db_path)
    for reviewer, decided in expected.items():
        assert [(d.pair_id, d.choice) for d in store.decisions(reviewer)] == decided
    assert len(store.decisions(include_undone=True)) == 2 * len(keys)


def test_image_responses_carry_no_name_or_date_that_tells_the_images_apart(review_server, no_selenium_manager):
    """What script on the page sees of the two image responses: no file name, no Last-Modified, ETags that are
    content hashes; apart from the ETag and length, both carry the same headers."""
    url, _ = review_server
    page = ReviewPage(f"{url}/?reviewer=alice")
    try:
        page.wait()
        headers = page.driver.execute_async_script(
            """const done = arguments[arguments.length - 1];
            const urls = [document.getElementById('image-left').src, document.getElementById('image-right').src];
            Promise.all(urls.map((u) => fetch(u).then((r) => Object.fromEntries(r.headers.entries()))))
              .then(done, (error) => done(String(error)));"""
        )
    finally:
        page.driver.quit()
    assert len(headers) == 2
    for received in headers:
        assert "content-disposition" not in received and "last-modified" not in received
        assert not any("perfect" in value or "perturbed" in value for value in received.values())
        assert len(received["etag"].strip('"')) == 64  # sha256 of the bytes
    left, right = ({k: v for k, v in h.items() if k not in ("etag", "content-length", "date")} for h in headers)
    assert left == right


def test_a_held_or_doubled_key_decides_one_pair(review_server, no_selenium_manager):
    """A held key: ten keydowns 50 ms apart (the first fresh, the rest auto-repeats) decide one pair. A doubled key:
    two fresh presses 61 ms apart decide one pair. Two decisions in all, each on the pair that was on screen."""
    url, db_path = review_server
    page = ReviewPage(f"{url}/?reviewer=alice")
    presses = """const [key, repeats, gap] = [arguments[0], arguments[1], arguments[2]];
        const done = arguments[arguments.length - 1];
        let count = 0;
        const press = () => document.body.dispatchEvent(
          new KeyboardEvent('keydown', {key, repeat: repeats && count > 0, bubbles: true}));
        press();
        const timer = setInterval(() => { count += 1; press(); if (count === 9 || !repeats) {
          clearInterval(timer); setTimeout(done, 100); } }, gap);"""
    try:
        first = page.wait()
        page.driver.execute_async_script(presses, "ArrowLeft", True, 50)  # held: 10 keydowns in 0.45 s
        second = page.wait(previous=first)
        page.driver.execute_async_script(presses, "f", False, 61)  # doubled: 2 fresh presses 61 ms apart
        page.wait(previous=second)
        assert page.progress() == "2 / 60"
    finally:
        page.driver.quit()
    assert [(d.pair_id, d.choice) for d in ReviewStore(db_path).decisions()] == [(first, "left"), (second, "flag")]


def test_the_page_fits_1366_by_768_with_a_long_prompt(review_server, no_selenium_manager):
    """At 1366 x 768, with a prompt four times the longest the dataset has, the question, every button and both
    images are inside the window and nothing scrolls."""
    url, _ = review_server
    page = ReviewPage(f"{url}/?reviewer=alice", window=(1366, 768))
    try:
        page.wait()
        fits = page.driver.execute_script(
            """const prompt = document.getElementById('prompt');
            prompt.textContent = (prompt.textContent + ' ').repeat(4);
            const ids = ['question', 'image-left', 'image-right'];
            const items = [...ids.map((id) => document.getElementById(id)),
                           ...document.querySelectorAll('button[data-choice]')];
            const outside = items.filter((e) => { const r = e.getBoundingClientRect();
              return r.height === 0 || r.top < 0 || r.bottom > window.innerHeight || r.right > window.innerWidth; });
            return {outside: outside.map((e) => e.id || e.dataset.choice),
                    scrolls: document.documentElement.scrollHeight > window.innerHeight,
                    image: document.getElementById('image-left').getBoundingClientRect().height};"""
        )
    finally:
        page.driver.quit()
    assert fits["outside"] == [] and not fits["scrolls"]
    assert fits["image"] >= 220  # the images still get a useful size


def test_a_pair_cannot_be_decided_before_its_images_have_loaded(small_dataset, tmp_path, no_selenium_manager):
    """Images that take 1.5 s to arrive: a key pressed 0.7 s in (past the minimum display time counted from the
    pair's text) decides nothing, and the page turns ready only once both images have loaded."""
    db_path = tmp_path / "review.sqlite"
    app = create_app(small_dataset, db_path=db_path, all_pairs=True)

    @app.after_request
    def slow_images(response):
        if request.path.startswith("/image/"):
            time.sleep(1.5)
        return response

    with serving(app) as url:
        page = ReviewPage(f"{url}/?reviewer=alice")
        try:
            loaded_when_ready = page.driver.execute_async_script(
                """const done = arguments[arguments.length - 1];
                const root = document.getElementById('review');
                const images = [...document.querySelectorAll('#pair img')];
                const loaded = () => images.map((image) => image.complete && image.naturalWidth > 0);
                setTimeout(() => document.body.dispatchEvent(
                  new KeyboardEvent('keydown', {key: 'ArrowLeft', bubbles: true})), 700);
                const timer = setInterval(() => { if (root.dataset.state === 'ready') {
                  clearInterval(timer); done(loaded()); } }, 10);"""
            )
            assert page.progress() == "0 / 60"
        finally:
            page.driver.quit()
    assert loaded_when_ready == [True, True]
    assert ReviewStore(db_path).decisions() == []
