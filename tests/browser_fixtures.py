"""A real Streamlit server and a real headless Chromium (Debian's /usr/bin/chromium) for browser tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from core.paths import REPO_ROOT

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialling out on this closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def streamlit_server(env: dict[str, str], log_path: Path) -> Iterator[str]:
    """Run `streamlit run webapp/app.py` on a free localhost port until the block ends."""
    port = _free_port()
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                str(REPO_ROOT / "webapp" / "app.py"),
                "--server.port",
                str(port),
                "--server.address",
                "127.0.0.1",
                "--server.headless",
                "true",
                "--browser.gatherUsageStats",
                "false",
                "--server.fileWatcherType",
                "none",
            ],
            cwd=REPO_ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"streamlit exited early:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
        # The app turns a bug into one sentence on the page; the server log still fails the test.
        from webapp.database import UNEXPECTED_LOG_MESSAGE

        log_text = log_path.read_text(errors="replace")
        if UNEXPECTED_LOG_MESSAGE in log_text:
            start = log_text.index(UNEXPECTED_LOG_MESSAGE)
            raise AssertionError(f"A page hit an unexpected error:\n{log_text[start : start + 3000]}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
def chromium_browser():
    if not Path(CHROMIUM).exists():
        message = f"Chromium is not installed at {CHROMIUM} (make test installs Debian's chromium)."
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def new_page(chromium_browser, tmp_path) -> Iterator[Callable]:
    contexts = []

    def make():
        context = chromium_browser.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(60_000)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


def click_in_sidebar(page, name: str, timeout_s: float = 60.0) -> None:
    """Click a navigation link, opening the sidebar where a page collapses it (Review does, once its
    script has run: so the sidebar may collapse after the link was found, and the click is retried)."""
    import time

    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    deadline = time.monotonic() + timeout_s
    while True:
        expand = page.get_by_test_id("stExpandSidebarButton")
        if expand.count() and expand.is_visible():
            expand.click()
        try:
            page.get_by_role("link", name=name).click(timeout=3_000)
            return
        except PlaywrightTimeout:
            if time.monotonic() > deadline:
                raise


def settle(page) -> None:
    """Wait until the script run has finished and nothing on the page is stale."""
    page.wait_for_timeout(200)
    page.wait_for_function("() => document.querySelectorAll('[data-stale=\"true\"]').length === 0")
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"] button')")


def log_in(page, app_url: str, username: str, password: str) -> None:
    """Log in on the login page and wait for the sidebar's log-out link."""
    page.goto(f"{app_url}/login")
    # The server's first page run imports and migrates; on a busy 2-core machine that takes a while.
    page.get_by_role("textbox", name="Username").wait_for(timeout=180_000)
    submit_login(page, username, password)
    page.get_by_role("link", name=f"Log out ({username})").wait_for()


def submit_login(page, username: str, password: str) -> None:
    """Fill the login form and press Log in (the page says what came of it)."""
    page.get_by_role("textbox", name="Username").fill(username)
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Log in").click()
