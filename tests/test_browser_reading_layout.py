"""Browser: the Review page's reading layout, measured from element boxes in Debian's Chromium.

At 1024x768, 1280x800 and 1440x900, without scrolling: the whole X-ray at no less than 60 % of the
viewport's height, the 14 finding buttons with their hotkeys, Save & next and Skip all lie inside the
viewport; nothing is wider than the window and no column of the label table is cut. Then the prior
study: a patient with follow-ups, its previous image opened with one key beside the current one, with
its place in the series and its label, while the answer saved is the current image's.

The database holds a few real sample images and patient 1's series 00000001_000..002 (its real NIH
rows). The sample has one image per patient, so follow-ups 001 and 002 are drawn with the pixels of
other sample images (re-encoded, so their bytes differ): what is tested is the pairing, not the pixels.
"""

from __future__ import annotations

import os
import re

import pandas as pd
import pytest
import torch
from PIL import Image as PILImage

from core.inference.artifact import new_card, save_artifact
from core.inference.models import create_model
from core.labels import FINDINGS
from db import accounts
from db.engine import dispose_engine, get_engine, session_scope
from db.importer import import_chestxray14
from db.models import Image, Review
from tests.browser_fixtures import log_in, settle, streamlit_server
from tests.test_browser_review import PASSWORD, heading, ready_for_keys

pytestmark = pytest.mark.browser

READER = "dr-layout"
SERIES = ("00000001_000.png", "00000001_001.png", "00000001_002.png")
STAND_INS = {"00000001_001.png": "00000002_000.png", "00000001_002.png": "00000004_000.png"}
OTHERS = ("00000005_000.png", "00000075_000.png", "00000100_000.png", "00000129_000.png")
VIEWPORTS = ((1024, 768), (1280, 800), (1440, 900))
DATA_ENTRY = "Data_Entry_2017_v2020.csv"


def _dataset(root, sample_dir):
    (root / "images").mkdir(parents=True)
    for name in (SERIES[0], *OTHERS):
        (root / "images" / name).symlink_to(sample_dir / "images" / name)
    for name, source in STAND_INS.items():
        PILImage.open(sample_dir / "images" / source).save(root / "images" / name, compress_level=1)
    names = [*SERIES, *OTHERS]
    entries = pd.read_csv(sample_dir / DATA_ENTRY)
    entries[entries["Image Index"].isin(names)].to_csv(root / DATA_ENTRY, index=False)
    (root / "train_val_list.txt").write_text("".join(f"{name}\n" for name in names))
    (root / "test_list.txt").write_text("")
    return root


@pytest.fixture(scope="module")
def layout_app(tmp_path_factory, sample_dir):
    torch.manual_seed(0)
    model_dir = tmp_path_factory.mktemp("model") / "layout-model"
    save_artifact(create_model(), model_dir, new_card("layout-model"))
    home = tmp_path_factory.mktemp("home")
    url = f"sqlite:///{home / 'layout.db'}"
    engine = get_engine(url)
    import_chestxray14(engine, _dataset(tmp_path_factory.mktemp("series"), sample_dir))
    with session_scope(engine) as session:
        accounts.create_user(session, READER, PASSWORD, role="clinician")
    env = {"CHEXNET_HOME": str(home), "DATABASE_URL": url, "CHEXNET_MODEL": str(model_dir)}
    env["OMP_NUM_THREADS"] = "1"
    with streamlit_server(env, home / "app.log") as app_url:
        yield app_url, engine
    dispose_engine(url)


BOXES = """() => {
  const box = (element) => {
    if (!element) return null;
    const r = element.getBoundingClientRect();
    return {x: r.left, y: r.top, right: r.right, bottom: r.bottom, width: r.width, height: r.height};
  };
  const one = (selector) => box(document.querySelector(selector));
  const findings = {};
  for (const name of FINDING_NAMES) {
    const button = document.querySelector(`.st-key-review_f_${name} button`);
    findings[name] = {...box(button), text: button ? button.innerText : ""};
  }
  const scroller = document.querySelector('[data-testid="stDataFrame"] .dvn-scroller');
  return {
    xray: one('.st-key-review_figure .js-plotly-plot .layer-below image, .st-key-review_figure image'),
    save: one('.st-key-review_save button'), skip: one('.st-key-review_skip button'), findings,
    table: one('[data-testid="stDataFrame"]'),
    tableScroll: scroller ? [scroller.scrollWidth, scroller.clientWidth] : null,
    scrollX: window.scrollX, scrollY: window.scrollY,
    pageWidth: document.documentElement.scrollWidth,
  };
}""".replace("FINDING_NAMES", str(list(FINDINGS)))


def open_by_name(page, name: str) -> None:
    """The top row's "Open" popover, as a reader uses it."""
    box = page.get_by_role("textbox", name="Image")
    if not box.is_visible():
        page.locator(".st-key-review_topbar [data-testid='stPopover'] button").first.click()
    box.fill(name)
    page.get_by_test_id("stBaseButton-secondaryFormSubmit").filter(has_text="Open").click()
    heading(page).filter(has_text=name).wait_for()
    settle(page)


def inside(box: dict, width: int, height: int) -> bool:
    return box["x"] >= 0 and box["y"] >= 0 and box["right"] <= width + 0.5 and box["bottom"] <= height + 0.5


@pytest.mark.parametrize("width,height", VIEWPORTS)
def test_xray_findings_and_save_fit_the_first_screen(new_page, layout_app, tmp_path, width, height):
    """On the first image (the chart sized by its container) and the next (sized from the window)."""
    app_url, _ = layout_app
    page = new_page()
    page.set_viewport_size({"width": width, "height": height})
    log_in(page, app_url, READER, PASSWORD)
    ready_for_keys(page)
    page.locator(".st-key-review_figure image").first.wait_for()
    shots = os.environ.get("REVIEW_LAYOUT_SCREENSHOTS", str(tmp_path))
    page.screenshot(path=os.path.join(shots, f"review-{width}x{height}.png"))
    assert_reading_layout(page, width, height)
    # The next image (Skip: S) is drawn at the window's height the page has learnt meanwhile (?vh=).
    first = heading(page).inner_text().strip()
    page.keyboard.press("s")
    heading(page).filter(has_not_text=first).wait_for()
    ready_for_keys(page)
    assert f"vh={height}" in page.url
    assert_reading_layout(page, width, height)


def assert_reading_layout(page, width: int, height: int) -> None:
    boxes = page.evaluate(BOXES)
    assert boxes["scrollX"] == 0 and boxes["scrollY"] == 0 and boxes["pageWidth"] <= width, boxes
    xray = boxes["xray"]
    assert inside(xray, width, height), xray  # the whole X-ray ...
    assert xray["height"] >= 0.6 * height, (xray, height)  # ... at 60 % of the height or more
    for finding, key in zip(FINDINGS, "AGEIMNPTODYFLH", strict=True):
        button = boxes["findings"][finding]
        assert inside(button, width, height), (finding, button)
        assert key in button["text"].split(), (finding, button["text"])  # its hotkey shows on it
    for name in ("save", "skip"):
        assert inside(boxes[name], width, height), (name, boxes[name])
    # The label table: within the window, and its columns whole (no horizontal scroll inside it).
    assert boxes["table"]["right"] <= width, boxes["table"]
    scroll_width, client_width = boxes["tableScroll"]
    assert scroll_width <= client_width + 1, boxes["tableScroll"]
    print(f"{width}x{height}: X-ray {xray['width']:.0f}x{xray['height']:.0f} px at y {xray['y']:.0f}")


def test_prior_study_side_by_side_with_one_key(new_page, layout_app, tmp_path):
    app_url, engine = layout_app
    page = new_page()
    page.set_viewport_size({"width": 1440, "height": 900})
    log_in(page, app_url, READER, PASSWORD)
    ready_for_keys(page)
    open_by_name(page, SERIES[2])
    ready_for_keys(page)
    page.keyboard.press("w")  # the prior study, beside this image
    prior = page.locator(".st-key-review_prior_figure image")
    prior.first.wait_for()
    settle(page)
    shots = os.environ.get("REVIEW_LAYOUT_SCREENSHOTS", str(tmp_path))
    page.screenshot(path=os.path.join(shots, "review-prior-1440x900.png"))
    caption = page.get_by_text(re.compile("Prior:")).inner_text()
    assert SERIES[1] in caption and "follow-up 1 (earlier) of 3 image(s) of this patient" in caption, caption
    assert "NLP label: Cardiomegaly, Emphysema" in caption
    current = page.get_by_text(re.compile("This image:")).inner_text()
    assert SERIES[2] in current and "follow-up 2" in current, current
    prior_box = prior.first.bounding_box()
    current_box = page.locator(".st-key-review_figure image").first.bounding_box()
    assert prior_box["x"] + prior_box["width"] <= current_box["x"] + 1  # side by side, the prior left
    assert abs(prior_box["y"] - current_box["y"]) < 40 and prior_box["y"] + prior_box["height"] <= 900
    # The answer belongs to the current image.
    assert heading(page).inner_text().strip() == SERIES[2]
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    page.keyboard.press("m")  # Mass (not in either NLP label)
    page.locator(".st-key-review_f_Mass [data-testid='stBaseButton-primary']").first.wait_for()
    settle(page)
    page.keyboard.press("Enter")
    page.get_by_text(f"Saved your review of {SERIES[2]} (version 1).").wait_for()
    with session_scope(engine, read_only=True) as session:
        saved = session.query(Review).join(Image, Image.id == Review.image_id).one()
        image = session.get(Image, saved.image_id)
        assert image.image_index == SERIES[2] and saved.mass and saved.effusion  # Effusion: NLP, kept
    # The first of the series has no prior: said so, no second picture.
    open_by_name(page, SERIES[0])
    page.get_by_text("No earlier image of this patient").wait_for()
    assert page.locator(".st-key-review_prior_figure").count() == 0
