"""Browser: a clinician logs in, corrects a label on the Review page, and the change shows in the queue,
the image's review count and (as the admin, on the Label quality page) the exported labels."""

from __future__ import annotations

import io
import os
import re

import pandas as pd
import pytest
import torch

from core.artifact import new_card, save_artifact
from core.models import create_model
from db import accounts
from db.engine import dispose_engine, get_engine, session_scope
from db.importer import import_chestxray14
from db.models import LabelEvent, Review
from tests.browser_fixtures import streamlit_server

pytestmark = pytest.mark.browser

CLINICIAN, ADMIN, PASSWORD = "dr-ames", "reviewer-admin", "browser test password"
BOX_IMAGE = "00015649_000.png"  # a test-split image of the sample with an NIH box (Mass)


@pytest.fixture(scope="module")
def review_app(tmp_path_factory, sample_dir):
    """A server on a database with the real sample imported, one clinician and one admin."""
    torch.manual_seed(0)
    model_dir = tmp_path_factory.mktemp("model") / "browser-review-model"
    save_artifact(create_model(), model_dir, new_card("browser-review-model"))
    home = tmp_path_factory.mktemp("home")
    url = f"sqlite:///{home / 'review.db'}"
    engine = get_engine(url)
    import_chestxray14(engine, sample_dir)
    with session_scope(engine) as session:
        accounts.create_user(session, CLINICIAN, PASSWORD, role="clinician")
        accounts.create_user(session, ADMIN, PASSWORD, role="admin")
    env = {"CHEXNET_HOME": str(home), "DATABASE_URL": url, "CHEXNET_MODEL": str(model_dir)}
    with streamlit_server(env, home / "app.log") as app_url:
        yield app_url, engine
    dispose_engine(url)


def log_in(page, app_url: str, username: str) -> None:
    page.goto(app_url)
    page.get_by_role("link", name="Log in").click()
    page.get_by_role("textbox", name="Username").fill(username)
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    # The navigation now offers the account's pages (the login page itself is gone from it).
    page.get_by_role("link", name=f"Log out ({username})").wait_for()


def settle(page) -> None:
    """Wait until the script run has finished (Streamlit marks the previous run's elements stale)."""
    page.wait_for_timeout(300)
    page.wait_for_function("() => document.querySelectorAll('[data-stale=\"true\"]').length === 0")


def remaining(page) -> int:
    metric = page.get_by_test_id("stMetric").filter(has_text="Left in this queue")
    return int(re.sub(r"\D", "", metric.get_by_test_id("stMetricValue").inner_text()))


def test_clinician_corrects_a_label_and_sees_it_in_queue_and_export(new_page, review_app, tmp_path):
    app_url, engine = review_app
    page = new_page()
    log_in(page, app_url, CLINICIAN)
    page.get_by_role("link", name="Review labels").click()
    page.get_by_role("heading", name=re.compile(r"\d{8}_\d{3}\.png")).wait_for(timeout=120_000)
    page.locator(".js-plotly-plot").first.wait_for()
    page.get_by_text("Not reviewed yet").wait_for()
    image_name = page.get_by_role("heading", name=re.compile(r"\d{8}_\d{3}\.png")).inner_text().strip()
    left_before = remaining(page)

    # Correct the label: untick No Finding if the NLP said so, tick Effusion, comment, Save & next.
    form = page.get_by_test_id("stForm")
    no_finding = form.get_by_role("checkbox", name="No Finding")
    if no_finding.is_checked():
        form.get_by_text("No Finding", exact=True).click()
    effusion = form.get_by_role("checkbox", name="Effusion")
    if not effusion.is_checked():
        form.get_by_text("Effusion", exact=True).click()
    form.get_by_label("Comment").fill("effusion at the left base")
    form.get_by_role("button", name="Save & next").click()

    page.get_by_text(f"Saved your review of {image_name} (version 1). 1 review, consensus:").wait_for()
    assert "Effusion" in page.get_by_test_id("stAlertContentSuccess").inner_text()
    heading = page.get_by_role("heading", name=re.compile(r"\d{8}_\d{3}\.png"))
    heading.filter(has_not_text=image_name).wait_for()  # the next image
    assert remaining(page) == left_before - 1

    # The viewer on an image with an NIH box, CAM on: the screenshot of the page.
    page.get_by_role("button", name="Open an image").click()
    page.get_by_role("textbox", name="Image index").fill(BOX_IMAGE)
    page.get_by_role("textbox", name="Image index").press("Enter")
    page.get_by_role("heading", name=BOX_IMAGE).wait_for()
    settle(page)
    page.keyboard.press("Escape")
    page.get_by_text("CAM overlay").click()
    page.get_by_text("CAM of").wait_for()
    page.get_by_text("Boxes: Mass (NIH).").wait_for()
    assert page.locator(".js-plotly-plot .shapelayer path").count() >= 1  # the box is drawn
    # The form shows this image's NLP label (Mass among them), not the previous image's input.
    assert page.get_by_test_id("stForm").get_by_role("checkbox", name="Mass").is_checked()
    page.set_viewport_size({"width": 1400, "height": 1450})  # Streamlit scrolls inside the page: grow it
    page.wait_for_timeout(1000)
    page.screenshot(path=os.environ.get("REVIEW_SCREENSHOT_PATH", str(tmp_path / "review.png")))

    with session_scope(engine, read_only=True) as session:
        review = session.query(Review).one()
        assert review.effusion and review.comment == "effusion at the left base"
        assert session.query(LabelEvent).filter_by(image_id=review.image_id).count() == 1

    # The admin downloads the Data_Entry-shaped export from the Label quality page.
    page.get_by_role("link", name=re.compile("Log out")).click()
    admin_page = new_page()
    log_in(admin_page, app_url, ADMIN)
    admin_page.get_by_role("link", name="Label quality").click()
    admin_page.get_by_text("Export the consensus labels").wait_for()
    with admin_page.expect_download() as download_info:
        admin_page.get_by_role("button", name=re.compile("Data_Entry")).click()
    table = pd.read_csv(io.BytesIO(open(download_info.value.path(), "rb").read()))
    row = table.loc[table["Image Index"] == image_name].iloc[0]
    assert "Effusion" in row["Finding Labels"].split("|")
    assert row["Reviewer Count"] == 1
    assert len(table) == 555
    assert admin_page.locator("[data-testid='stException']").count() == 0
