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


def test_logged_in_reader_can_send_an_upload_to_review_once(
    monkeypatch, model_dir, tmp_path, full_resolution_images
):
    from sqlalchemy import select

    from db.accounts import create_user
    from db.engine import get_engine, session_scope
    from db.models import Image
    from webapp.auth import SessionUser

    at = _page(monkeypatch, model_dir, tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    engine = get_engine()
    with session_scope(engine) as session:
        user = create_user(session, "dr-upload", "correct horse battery", "clinician")
        session.flush()
        user_id = user.id
    at.session_state["user"] = SessionUser(id=user_id, username="dr-upload", role="clinician")
    at.run()
    data = full_resolution_images[5].read_bytes()
    at.get("file_uploader")[0].set_value(("upload.png", data, "image/png"))
    at.run()
    for _ in range(2):  # the same bytes twice: stored once
        at.button(key="send_to_review").click()
        at.run()
        assert not at.exception
        assert any("Stored for review" in s.value for s in at.success)
    with session_scope(engine) as session:
        uploads = session.scalars(select(Image).where(Image.source == "upload")).all()
        assert len(uploads) == 1 and uploads[0].uploaded_by_id == user_id
        assert open(uploads[0].path, "rb").read() == data


def test_anonymous_uploads_are_never_stored(monkeypatch, model_dir, tmp_path, full_resolution_images):
    at = _page(monkeypatch, model_dir, tmp_path)
    at.run()
    at.get("file_uploader")[0].set_value(("x.png", full_resolution_images[0].read_bytes(), "image/png"))
    at.run()
    assert not at.exception
    assert not [b for b in at.button if b.key == "send_to_review"]
    assert not (tmp_path / "uploads").exists()


def test_monochrome1_dicom_upload_predicts_like_the_same_image_as_png(
    monkeypatch, model_dir, tmp_path, full_resolution_images
):
    import io

    import numpy as np
    from PIL import Image as PILImage

    from tests.test_imaging import dicom_bytes

    grey = np.asarray(PILImage.open(full_resolution_images[2]).convert("L"))
    scaled = (grey.astype(np.float64) - grey.min()) / (grey.max() - grey.min())
    buffer = io.BytesIO()
    PILImage.fromarray(np.round(scaled * 255).astype(np.uint8)).save(buffer, format="PNG")
    # The same radiograph as a 12-bit MONOCHROME1 DICOM (bright = low values), full 0..4095 range.
    stored = np.round((1.0 - scaled) * 4095).astype(np.uint16)
    dicom = dicom_bytes(stored, photometric="MONOCHROME1", bits_stored=12)

    results = {}
    for name, data in (("png", buffer.getvalue()), ("dicom", dicom)):
        at = _page(monkeypatch, model_dir, tmp_path)
        at.run()
        at.get("file_uploader")[0].set_value((f"upload.{name}", data, "application/octet-stream"))
        at.run()
        assert not at.exception and not at.error
        results[name] = at.session_state["prediction"].probabilities
    for label in FINDINGS:
        assert abs(results["png"][label] - results["dicom"][label]) < 0.01, label
