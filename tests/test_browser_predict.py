"""Browser: a real Chromium uploads a real NIH X-ray to the Predict page and sees findings + CAM."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from core.inference.artifact import new_card, save_artifact
from core.inference.models import create_model
from core.labels import FINDINGS
from core.ood.probes import blank_probes, document_probes, photo_probes
from core.paths import BUNDLED_MODEL_DIR
from tests.browser_fixtures import streamlit_server

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    torch.manual_seed(0)
    model_dir = tmp_path_factory.mktemp("model") / "browser-model"
    save_artifact(create_model(), model_dir, new_card("browser-test-model"))
    home = tmp_path_factory.mktemp("home")
    # The server's default backend (OpenVINO on CPU): the other app tests run PyTorch to save compiling.
    env = {"CHEXNET_HOME": str(home), "CHEXNET_MODEL": str(model_dir), "CHEXNET_INFERENCE_BACKEND": "auto"}
    with streamlit_server(env, home / "app.log") as url:
        yield url


def test_upload_shows_fourteen_findings_and_overlay(new_page, app_url, full_resolution_images, tmp_path):
    page = new_page()
    page.goto(app_url)
    page.get_by_text("Upload a frontal chest X-ray").wait_for()
    page.locator("input[type=file]").set_input_files(str(full_resolution_images[0]))
    page.get_by_text("Where the model looked (CAM)").wait_for(timeout=120_000)
    # The plotly chart lists every finding; the overlay is an <img> beside the original.
    chart = page.locator(".js-plotly-plot").first
    chart.wait_for()
    chart_text = chart.inner_text()
    for label in FINDINGS:
        assert label.replace("_", " ") in chart_text
    page.get_by_text("CAM:").first.wait_for()
    # Streamlit streams elements in as the script runs: wait for the third image rather than count early.
    page.locator("[data-testid='stImage'] img").nth(2).wait_for()  # original, overlay, colour scale
    page.get_by_text("Colour scale, left to right").wait_for()
    page.get_by_text("Bar for findings").wait_for(state="attached")
    # An unvalidated model: its scores are labelled as such, nothing is above threshold, the card is open.
    assert page.get_by_text("not findings").count() >= 1
    assert page.get_by_text("Scores from a weak/unvalidated model", exact=True).count() == 1
    assert page.get_by_text(re.compile("^Above threshold:")).count() == 0  # case-sensitive
    assert "score (not a finding)" in chart_text and "operating threshold" in chart_text  # the legend
    assert page.get_by_text("Bar for findings").count() == 1  # the model card's table, expanded
    assert page.get_by_text("Colour scale, left to right").count() == 1
    page.screenshot(path=os.environ.get("SCREENSHOT_PATH", str(tmp_path / "predict.png")), full_page=True)


def test_refused_upload_shows_a_sentence(new_page, app_url, tmp_path):
    text_file = tmp_path / "notes.png"
    text_file.write_text("this is not an x-ray, just text pretending to be a png\n" * 20)
    page = new_page()
    page.goto(app_url)
    page.locator("input[type=file]").set_input_files(str(text_file))
    page.get_by_text("it looks like a text file").wait_for()
    assert page.locator("[data-testid='stException']").count() == 0


@pytest.fixture(scope="module")
def demo_app_url(tmp_path_factory):
    """The bundled demo model, whose card carries a fitted out-of-distribution gate."""
    home = tmp_path_factory.mktemp("demo-home")
    with streamlit_server(
        {"CHEXNET_HOME": str(home), "CHEXNET_MODEL": str(BUNDLED_MODEL_DIR)}, home / "app.log"
    ) as url:
        yield url


def test_blank_photo_and_document_get_no_findings_while_a_real_xray_passes(
    new_page, demo_app_url, full_resolution_images, tmp_path
):
    rng = np.random.default_rng(0)
    probes = [blank_probes()[0], photo_probes(rng, 1)[0], document_probes(rng, 1)[0]]
    files = []
    for probe in probes:
        files.append(tmp_path / f"{probe.kind}.png")
        files[-1].write_bytes(probe.data)
    for file in [*files, full_resolution_images[0]]:  # a fresh tab each: no text left from the last one
        page = new_page()
        page.goto(demo_app_url)
        page.get_by_text("Upload a frontal chest X-ray").wait_for()
        page.locator("input[type=file]").set_input_files(str(file))
        if file in files:
            page.get_by_text("No findings for this image:").wait_for(timeout=120_000)
            page.get_by_text("Show scores anyway").wait_for()  # scores only on request
            assert page.get_by_text("Where the model looked (CAM)").count() == 0, file.name
        else:
            page.get_by_text("Where the model looked (CAM)").wait_for(timeout=120_000)
            assert page.get_by_text("No findings for this image:").count() == 0
        assert page.locator("[data-testid='stException']").count() == 0
        page.context.close()
