"""AppTest of the Predict page: real model code, real images, Streamlit's own test runner."""

from __future__ import annotations

import pytest
import torch
from streamlit.testing.v1 import AppTest

from core.artifact import new_card, save_artifact, update_card
from core.labels import FINDINGS
from core.models import create_model
from core.paths import REPO_ROOT

PAGE = str(REPO_ROOT / "webapp" / "views" / "predict.py")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("models") / "apptest-model"
    save_artifact(create_model(), folder, new_card("apptest-model"))
    return folder


def _page(monkeypatch, model_dir, tmp_path) -> AppTest:
    monkeypatch.setenv("CHEXNET_HOME", str(tmp_path))
    if model_dir is None:
        monkeypatch.delenv("CHEXNET_MODEL", raising=False)
        monkeypatch.setattr("core.paths.BUNDLED_MODEL_DIR", tmp_path / "no-bundled-model")
    else:
        monkeypatch.setenv("CHEXNET_MODEL", str(model_dir))
    return AppTest.from_file(PAGE, default_timeout=180)


def test_real_image_gives_fourteen_probabilities_and_a_cam(
    monkeypatch, model_dir, tmp_path, full_resolution_images
):
    at = _page(monkeypatch, model_dir, tmp_path)
    at.run()
    at.get("file_uploader")[0].set_value(("xray.png", full_resolution_images[3].read_bytes(), "image/png"))
    at.run()
    assert not at.exception
    assert not at.error
    finding = at.selectbox(key="cam_finding")
    assert len(finding.options) == 14
    prediction = at.session_state["prediction"]
    assert list(prediction.probabilities) == list(FINDINGS)
    # Default CAM finding is the most probable one.
    assert finding.value == prediction.most_probable()
    assert len(at.get("plotly_chart")) == 1
    # Random weights are never presented as findings.
    assert any("not findings" in w.value for w in at.warning)

    at.selectbox(key="cam_finding").set_value("Hernia")
    at.slider(key="cam_opacity").set_value(0.8)
    at.run()
    assert not at.exception
    assert at.session_state["prediction"] is prediction  # moving a control does not re-run the network


def test_validated_model_shows_findings(monkeypatch, model_dir, tmp_path, full_resolution_images):
    validated = tmp_path / "validated"
    save_artifact(create_model(), validated, new_card("validated-model"))
    update_card(validated, metrics={"validation": {"mean_auroc": 0.61, "split": "val", "n_images": 55}})
    at = _page(monkeypatch, validated, tmp_path)
    at.run()
    at.get("file_uploader")[0].set_value(("x.png", full_resolution_images[0].read_bytes(), "image/png"))
    at.run()
    assert not at.exception
    assert not any("not findings" in w.value for w in at.warning)
    assert any("Findings" == h.value for h in at.subheader)


def test_refused_upload_shows_its_sentence(monkeypatch, model_dir, tmp_path):
    at = _page(monkeypatch, model_dir, tmp_path)
    at.run()
    at.get("file_uploader")[0].set_value(("scan.dcm", b"%PDF-1.7\n" + b"0" * 500, "application/dicom"))
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and "PDF" in at.error[0].value


def test_no_model_says_so_and_predicts_nothing(monkeypatch, tmp_path):
    at = _page(monkeypatch, None, tmp_path)
    at.run()
    assert not at.exception
    assert any("No model is configured" in i.value for i in at.info)
    assert len(at.get("file_uploader")) == 0
