"""Browser: an admin logs in, queues a short fine-tune, watches a real worker process run it, promotes the
new version on Models & ROC, and the Predict page then uses it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.paths import REPO_ROOT
from db.engine import dispose_engine, session_scope
from db.registry import get_active_version
from tests.admin_helpers import ONE_THREAD_ENV, PASSWORD, make_studio, synthetic_dataset
from tests.browser_fixtures import click_in_sidebar, log_in, streamlit_server

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def admin_app(tmp_path_factory):
    """A server and a worker process on one database + CHEXNET_HOME, the synthetic dataset imported."""
    root = tmp_path_factory.mktemp("admin-app")
    data = synthetic_dataset(root / "cxr14")
    with pytest.MonkeyPatch.context() as monkeypatch:
        studio = make_studio(root, monkeypatch, data)
    env = {"CHEXNET_HOME": str(studio.home), "DATABASE_URL": studio.url}
    worker_log = root / "worker.log"
    with open(worker_log, "wb") as log:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jobs",
                "--device",
                "cpu",
                "--backend",
                "torch",
                "--n-boot",
                "20",
                "--poll",
                "0.5",
                "--heartbeat",
                "1",
            ],
            cwd=REPO_ROOT,
            env={**os.environ, **env, **ONE_THREAD_ENV, "PYTHONPATH": str(REPO_ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        # The page says which workers run when it opens: wait for this one's status file first (its start
        # imports torch, which takes a while on a busy CPU).
        deadline = time.monotonic() + 180
        while not list((studio.home / "workers").glob("*.json")):
            assert worker.poll() is None and time.monotonic() < deadline, worker_log.read_text()[-3000:]
            time.sleep(0.2)
        with streamlit_server(env, root / "app.log") as url:
            yield url, studio, worker_log
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        dispose_engine(studio.url)


def screenshot(page, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("SCREENSHOT_DIR", tmp_path))
    page.screenshot(path=str(folder / name), full_page=True)


def test_admin_fine_tunes_promotes_and_predict_uses_the_new_model(new_page, admin_app, tmp_path):
    url, studio, worker_log = admin_app
    page = new_page()
    log_in(page, url, "boss", PASSWORD)

    click_in_sidebar(page, "Fine-tune")
    page.get_by_text("Training worker").first.wait_for(timeout=30_000)  # the worker announced its CPU
    form = page.get_by_test_id("stForm")
    form.get_by_role("textbox", name="New version name").fill("browser-ft")
    epochs = form.get_by_role("spinbutton", name="Epochs")
    epochs.fill("1")
    epochs.press("Tab")
    form.get_by_role("button", name="Queue fine-tune").click()
    page.get_by_text("Job #1 queued: fine-tune → browser-ft.").wait_for()

    # The live panel follows the worker; it ends with the registered version and both curves.
    try:
        page.get_by_text("Registered version browser-ft").wait_for(timeout=300_000)
    except Exception:
        raise AssertionError(f"The job did not finish:\n{worker_log.read_text()[-3000:]}") from None
    page.get_by_text(re.compile("Validation AUROC per epoch")).first.wait_for()
    assert page.locator("[data-testid='stException']").count() == 0
    screenshot(page, "admin.png", tmp_path)

    click_in_sidebar(page, "Models & ROC")
    page.get_by_text("Compare versions").wait_for()
    page.get_by_test_id("stSelectbox").filter(has_text="Version").first.click()
    page.get_by_role("option", name="browser-ft").click()
    page.get_by_role("button", name="Promote", exact=True).click()
    page.get_by_role("button", name="Confirm promotion").click()  # after the paired comparison
    page.get_by_text("browser-ft is now the active model").wait_for()
    with session_scope(studio.engine, read_only=True) as session:
        assert get_active_version(session).name == "browser-ft"
    page.locator(".js-plotly-plot").first.wait_for()
    screenshot(page, "models.png", tmp_path)

    click_in_sidebar(page, "Predict")
    try:
        page.get_by_text("Model card: browser-ft").wait_for()
    except Exception:
        body = page.inner_text("body")[:3000]
        raise AssertionError(f"Predict does not serve browser-ft:\n{body}") from None
    page.get_by_text("Measured mean AUROC").wait_for()  # a one-epoch model is unvalidated: its card is open
    assert page.locator("[data-testid='stException']").count() == 0
