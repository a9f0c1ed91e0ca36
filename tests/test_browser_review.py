"""Browser: the review study end to end, in Debian's Chromium against `streamlit run`.

An admin assigns one image to two clinicians for a double read; both read it blind and disagree (one
with the keyboard alone); it appears under Adjudicate; the admin decides with a reason; the image's
history shows all three events; the export and the fine-tune's labels table carry the decision. Then
the time from Save & next to the next image being ready is measured over a run of keyboard reads
(median written to $REVIEW_TIMING_PATH when set).
"""

from __future__ import annotations

import io
import json
import os
import re
import statistics
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from core.inference.artifact import new_card, save_artifact
from core.inference.models import create_model
from db import accounts
from db.engine import dispose_engine, get_engine, session_scope
from db.importer import import_chestxray14
from db.models import Image, LabelEvent, Review
from jobs.labels import write_labels_table
from tests.browser_fixtures import click_in_sidebar, log_in, settle, streamlit_server

pytestmark = pytest.mark.browser

READER_A, READER_B, ADMIN, PASSWORD = "dr-ames", "dr-banks", "study-admin", "browser test password"
IMAGE_NAME = re.compile(r"\d{8}_\d{3}\.png")
N_TIMED_READS = 10


@pytest.fixture(scope="module")
def review_app(tmp_path_factory, sample_dir):
    """A server on a database with the real sample imported, two clinicians and an admin, a model."""
    torch.manual_seed(0)
    model_dir = tmp_path_factory.mktemp("model") / "browser-review-model"
    save_artifact(create_model(), model_dir, new_card("browser-review-model"))
    home = tmp_path_factory.mktemp("home")
    url = f"sqlite:///{home / 'review.db'}"
    engine = get_engine(url)
    import_chestxray14(engine, sample_dir)
    with session_scope(engine) as session:
        accounts.create_user(session, READER_A, PASSWORD, role="clinician")
        accounts.create_user(session, READER_B, PASSWORD, role="clinician")
        accounts.create_user(session, ADMIN, PASSWORD, role="admin")
    env = {
        "CHEXNET_HOME": str(home),
        "DATABASE_URL": url,
        "CHEXNET_MODEL": str(model_dir),
        "OMP_NUM_THREADS": "1",
    }
    with streamlit_server(env, home / "app.log") as app_url:
        yield app_url, engine
    dispose_engine(url)


def download(page, button: str, attempts: int = 3) -> bytes:
    """The file a download button gives. A click that lands while the page is still running can be lost
    with the button it redraws (seen on a loaded machine): clicked again after a settle."""
    for attempt in range(attempts):
        settle(page)
        try:
            with page.expect_download(timeout=30_000) as download_info:
                page.get_by_role("button", name=re.compile(button)).click()
            return Path(download_info.value.path()).read_bytes()
        except PlaywrightTimeoutError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def heading(page):
    return page.get_by_role("heading", name=IMAGE_NAME)


def ready_for_keys(page) -> None:
    """The review page drawn and idle, the keyboard focus on the page itself (not in a text box)."""
    heading(page).wait_for(timeout=300_000)  # the first image also waits for the model to load
    page.locator(".js-plotly-plot").first.wait_for()
    settle(page)
    page.evaluate("() => document.activeElement && document.activeElement.blur()")


def pressed(page, finding: str):
    """The finding's button shown as Present (primary)."""
    return page.locator(f".st-key-review_f_{finding} [data-testid='stBaseButton-primary']").first


def test_blind_double_read_dispute_adjudication_history_and_export(
    new_page, review_app, tmp_path, sample_dir
):
    app_url, engine = review_app

    # The admin assigns one image to both clinicians: a 100 % double read.
    admin = new_page()
    log_in(admin, app_url, ADMIN, PASSWORD)
    click_in_sidebar(admin, "Assignments & study")
    admin.get_by_text("Assign images").first.wait_for()
    readers = admin.get_by_test_id("stMultiSelect")
    for name in (READER_A, READER_B):
        readers.click()
        admin.get_by_role("option", name=name).click()
    admin.keyboard.press("Escape")
    images = admin.get_by_label("Images")
    images.fill("1")
    admin.get_by_role("slider").first.focus()
    admin.keyboard.press("End")  # double-read share: 100 %
    admin.get_by_role("button", name="Assign").click()
    admin.get_by_text("Assigned 1 images, 1 of them twice").wait_for()

    # Reader A, blind, with the keyboard alone: X (No Finding: clears every finding) unless it is on
    # already, then G (Cardiomegaly, which clears No Finding), then Enter (save & next).
    reader_a = new_page()
    log_in(reader_a, app_url, READER_A, PASSWORD)
    ready_for_keys(reader_a)
    assigned = heading(reader_a).inner_text().strip()
    reader_a.get_by_text("0 of 1 assigned read").wait_for()
    reader_a.get_by_text("Blinded read").wait_for()
    keys = []
    if not reader_a.locator(".st-key-review_no_finding [data-testid='stBaseButton-primary']").count():
        keys.append("x")
        reader_a.keyboard.press("x")
        reader_a.locator(".st-key-review_no_finding [data-testid='stBaseButton-primary']").first.wait_for()
        settle(reader_a)
    keys.append("g")
    reader_a.keyboard.press("g")
    pressed(reader_a, "Cardiomegaly").wait_for()
    settle(reader_a)
    keys.append("Enter")
    reader_a.keyboard.press("Enter")
    reader_a.get_by_text("You have read every image assigned to you").wait_for()
    reader_a.get_by_text(f"Saved your review of {assigned} (version 1).").wait_for()

    # Reader B opens the same image from their assignments: nothing of A's read shows; B says No Finding.
    reader_b = new_page()
    log_in(reader_b, app_url, READER_B, PASSWORD)
    ready_for_keys(reader_b)
    assert heading(reader_b).inner_text().strip() == assigned
    body = reader_b.get_by_test_id("stMainBlockContainer").inner_text()
    assert "1 review" not in body and "consensus" not in body and READER_A not in body
    no_finding = reader_b.locator(".st-key-review_no_finding button").first
    if not reader_b.locator(".st-key-review_no_finding [data-testid='stBaseButton-primary']").count():
        no_finding.click()
    reader_b.locator(".st-key-review_no_finding [data-testid='stBaseButton-primary']").first.wait_for()
    settle(reader_b)
    reader_b.get_by_role("button", name=re.compile("Save & next")).click()
    reader_b.get_by_text("You have read every image assigned to you").wait_for()

    # The admin finds it under Adjudicate, sees both answers, decides with a reason.
    click_in_sidebar(admin, "Adjudicate")
    admin.get_by_text("Readers differ on: Cardiomegaly.").wait_for()
    admin.get_by_role("heading", name=assigned).wait_for()
    decision = admin.locator("[class*='st-key-adjudicate_'][class*='_Cardiomegaly']").first
    decision.get_by_text("Present", exact=True).click()
    admin.get_by_label("Reason for the decision").fill("cardiothoracic ratio above 0.5")
    admin.get_by_role("button", name="Record the decision").click()
    admin.get_by_text(f"Recorded the decision on {assigned} (adjudication version 1).").wait_for()
    admin.get_by_text("No image is disputed").wait_for()

    # Its history: all three events, who and why.
    click_in_sidebar(admin, "Image history")
    image_box = admin.get_by_role("textbox", name="Image")
    image_box.fill(assigned)
    image_box.press("Enter")
    admin.get_by_text("3 event(s).").wait_for()
    history = admin.get_by_test_id("stTable").inner_text()
    for text in (READER_A, READER_B, ADMIN, "adjudication", "cardiothoracic ratio above 0.5",
                 "created: Cardiomegaly present", "created: No Finding"):  # fmt: skip
        assert text in history, text

    # The export (downloaded as an admin does) and the fine-tune's labels carry the decision.
    click_in_sidebar(admin, "Label quality")
    admin.get_by_text("Export the consensus labels").wait_for()
    exported = pd.read_csv(io.BytesIO(download(admin, "Trainer labels table")), keep_default_na=False)
    row = exported.set_index("image_index").loc[assigned]
    assert row["Cardiomegaly"] == 1 and row["exclude"] == 0 and row["disputed"] == ""
    with session_scope(engine, read_only=True) as session:
        write_labels_table(session, "effective", sample_dir, tmp_path / "labels.csv")
        image_id = session.query(Image.id).filter_by(image_index=assigned).scalar()
        reads = session.query(Review).filter_by(image_id=image_id).all()
        assert len(reads) == 2 and all(read.blinded for read in reads)
        assert session.query(LabelEvent).filter_by(image_id=image_id).count() == 3
    fine_tune = pd.read_csv(tmp_path / "labels.csv", keep_default_na=False).set_index("image_index")
    assert fine_tune.loc[assigned, "Cardiomegaly"] == 1 and fine_tune.loc[assigned, "exclude"] == 0
    assert admin.locator("[data-testid='stException']").count() == 0
    assert len(keys) <= 3  # the keyboard read: two or three keys, no click
    print("keyboard read:", "+".join(keys))


def test_save_to_next_time_and_keys_per_image(new_page, review_app, tmp_path):
    """Keyboard reads on the sample: E (Effusion) then Enter; the time from Enter to the next image and
    its own answer drawn (nothing stale), in the real browser."""
    app_url, _ = review_app
    page = new_page()
    page.set_viewport_size({"width": 1024, "height": 1000})
    log_in(page, app_url, READER_A, PASSWORD)
    queue = page.get_by_test_id("stSelectbox").filter(has_text="Queue")
    queue.wait_for(timeout=180_000)
    settle(page)
    queue.click()
    page.get_by_role("option", name="Unreviewed first").click()
    ready_for_keys(page)
    page.screenshot(
        path=os.environ.get("REVIEW_SCREENSHOT_PATH", str(tmp_path / "review-1024.png")), full_page=True
    )
    timings = []
    for _ in range(N_TIMED_READS):
        ready_for_keys(page)
        page.wait_for_timeout(300)  # a reader looks at the image; the page reads the next one ahead
        name = heading(page).inner_text().strip()
        if not pressed(page, "Effusion").count():
            page.keyboard.press("e")
            pressed(page, "Effusion").wait_for()
            settle(page)
        started = time.perf_counter()
        page.keyboard.press("Enter")
        heading(page).filter(has_not_text=name).wait_for()
        page.wait_for_function("() => document.querySelectorAll('[data-stale=\"true\"]').length === 0")
        timings.append(time.perf_counter() - started)
    median = statistics.median(timings)
    result = {"median_s": round(median, 3), "timings_s": [round(t, 3) for t in timings], "keys_per_image": 2}
    if os.environ.get("REVIEW_TIMING_PATH"):
        with open(os.environ["REVIEW_TIMING_PATH"], "w") as handle:
            json.dump(result, handle)
    print("save -> next:", json.dumps(result))
    assert median < 5.0, result  # the target is 0.5 s on a quiet machine; a loaded CI box is slower
