"""AppTest of the Predict page: real model code, real images, Streamlit's own test runner."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.errors import UserError
from core.imaging.display import DISPLAY_MAX_SIDE
from core.inference.artifact import new_card, save_artifact, update_card
from core.inference.models import create_model
from core.labels import FINDINGS
from core.paths import REPO_ROOT
from webapp import predict_data

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


def _entry(mean: float, split: str = "test", n_pos: int = 40, n_images: int = 2000) -> dict:
    """A card metrics entry as jobs.evaluate writes it (core.evaluation.evaluate.card_metrics_entry)."""
    return {
        "split": split, "n_images": n_images, "mean_auroc": mean, "mean_auroc_ci": [mean - 0.02, mean + 0.02],
        "n_pos": {label: n_pos for label in FINDINGS}, "too_few": [], "mean_auroc_enough": mean,
        "mean_auroc_enough_ci": [mean - 0.02, mean + 0.02],
    }  # fmt: skip


def _carded(tmp_path, name: str, **card) -> object:
    folder = tmp_path / name
    save_artifact(create_model(), folder, new_card(name))
    update_card(folder, **card)
    return folder


def unescaped(text: str) -> str:
    """Markdown text as the reader sees it (webapp.formatting.plain escapes every special character)."""
    return text.replace("\\", "")


def _upload(at: AppTest, path) -> None:
    at.run()
    at.get("file_uploader")[0].set_value(("xray.png", path.read_bytes(), "image/png"))
    at.run()
    assert not at.exception, at.exception


def test_real_image_gives_fourteen_probabilities_and_a_cam(
    monkeypatch, model_dir, tmp_path, full_resolution_images
):
    at = _page(monkeypatch, model_dir, tmp_path)
    _upload(at, full_resolution_images[3])
    assert not at.error
    finding = at.selectbox(key="cam_finding")
    assert len(finding.options) == 14
    prediction = at.session_state["prediction"]
    assert list(prediction.probabilities) == list(FINDINGS)
    # Default CAM finding is the most probable one.
    assert finding.value == prediction.most_probable()
    assert len(at.get("plotly_chart")) == 1
    # Random weights are never presented as findings: no "above threshold", the card is open.
    assert any("not findings" in w.value and "records no measured AUROC" in w.value for w in at.warning)
    assert [h.value for h in at.subheader][0] == "Scores from a weak/unvalidated model"
    assert not [m for m in at.markdown if "Above threshold" in m.value]
    assert at.expander[0].proto.expanded

    at.selectbox(key="cam_finding").set_value("Hernia")
    at.slider(key="cam_opacity").set_value(0.8)
    at.toggle(key="cam_fixed_scale").set_value(True)
    at.run()
    assert not at.exception
    assert at.session_state["prediction"] is prediction  # moving a control does not re-run the network
    assert any("lowest to highest activation of any finding" in c.value for c in at.caption)


def test_a_large_upload_is_kept_and_drawn_at_screen_size_and_downloaded_at_its_own(
    monkeypatch, model_dir, tmp_path, full_resolution_images
):
    """Bounded memory per upload: the page keeps a screen copy and the small prediction, never the full
    pixels; the full-resolution overlay is rendered only when the download asks for it."""
    big = tmp_path / "big.png"
    Image.open(full_resolution_images[3]).convert("L").resize((3000, 2600)).save(big)
    at = _page(monkeypatch, model_dir, tmp_path)
    _upload(at, big)
    view, prediction = at.session_state["upload_view"], at.session_state["prediction"]
    assert (view.width, view.height) == (3000, 2600)
    assert view.display.shape == (round(2600 * DISPLAY_MAX_SIDE / 3000), DISPLAY_MAX_SIDE)
    assert prediction.image_size == (3000, 2600) and prediction.cams.nbytes < 10_000
    [download] = at.get("download_button")
    assert download.proto.label == "Download overlay (PNG, 3000×2600)"

    render = predict_data.full_resolution_overlay(big.read_bytes(), prediction, "Effusion", 0.45, False)
    with Image.open(io.BytesIO(render())) as overlay:
        assert overlay.size == (3000, 2600) and overlay.mode == "RGB"


def test_validated_model_shows_findings_with_measured_precision(
    monkeypatch, tmp_path, full_resolution_images
):
    points = {
        "description": "Thresholds chosen by Youden's J on val (5000 images), reported on test.",
        "reported_on": {"split": "test", "n_images": 2000},
        "classes": {f: {"threshold": 0.3, "precision": 0.41, "recall": 0.77, "n_pos": 40} for f in FINDINGS},
    }  # fmt: skip
    validated = _carded(tmp_path, "validated-model", metrics={"test": _entry(0.82)}, operating_points=points)
    at = _page(monkeypatch, validated, tmp_path)
    _upload(at, full_resolution_images[0])
    assert not any("not findings" in w.value for w in at.warning)
    assert [h.value for h in at.subheader][0] == "Findings"
    assert [m for m in at.markdown if "Above threshold" in m.value]
    assert not at.expander[0].proto.expanded  # a validated model's card starts closed
    table = at.dataframe[-1].value
    assert set(table["precision at threshold"]) == {0.41} and set(table["recall at threshold"]) == {0.77}
    assert "above threshold" in table.columns
    assert any("reported on test" in c.value for c in at.caption)


@pytest.mark.parametrize(
    ("metrics", "why"),
    [
        ({"test": _entry(0.61)}, "below the bar of 0.75"),
        ({"test": _entry(0.9, n_pos=3)}, "at least 10 positives for 7 of its 14 findings"),
    ],
)
def test_weak_or_small_evaluations_are_scores_not_findings(
    monkeypatch, tmp_path, full_resolution_images, metrics, why
):
    weak = _carded(tmp_path, "weak-model", metrics=metrics)
    at = _page(monkeypatch, weak, tmp_path)
    _upload(at, full_resolution_images[0])
    assert any(why in unescaped(w.value) and "not findings" in w.value for w in at.warning)
    assert [h.value for h in at.subheader][0] == "Scores from a weak/unvalidated model"
    assert not [m for m in at.markdown if "Above threshold" in m.value]
    assert "above threshold" not in at.dataframe[-1].value.columns
    assert at.expander[0].proto.expanded


def test_the_shipped_demo_model_shows_as_weak(monkeypatch, tmp_path, full_resolution_images):
    from core.paths import BUNDLED_MODEL_DIR

    at = _page(monkeypatch, BUNDLED_MODEL_DIR, tmp_path)
    _upload(at, full_resolution_images[1])
    assert any("weak/unvalidated" in w.value and "0.599" in unescaped(w.value) for w in at.warning)
    assert not [m for m in at.markdown if "Above threshold" in m.value]


def test_an_image_flagged_by_the_ood_gate_shows_no_findings(monkeypatch, tmp_path, full_resolution_images):
    validated = _carded(tmp_path, "validated-model", metrics={"test": _entry(0.82)})
    at = _page(monkeypatch, validated, tmp_path)
    _upload(at, full_resolution_images[0])
    assert [h.value for h in at.subheader][0] == "Findings"
    # What the predictor's OOD gate (core.ood.gate) attaches to a Prediction; the page reads it through one
    # hook.
    at.session_state["prediction"].ood = {
        "flagged": True,
        "score": 9.5,
        "reason": "The image is almost uniform.",
    }
    at.run()
    assert not at.exception
    assert any(
        "No findings for this image" in e.value and "almost uniform" in unescaped(e.value) for e in at.error
    )
    assert not at.get("plotly_chart") and not [m for m in at.markdown if "Above threshold" in m.value]
    at.toggle(key="show_scores_anyway").set_value(True).run()
    assert not at.exception
    assert [h.value for h in at.subheader][0].startswith("Scores shown on request")
    assert not [m for m in at.markdown if "Above threshold" in m.value]


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


def test_an_unavailable_active_version_is_named_and_the_demo_served_loudly(monkeypatch, tmp_path) -> None:
    """The registry's active version lost its folder: Predict says so and what it serves instead; the
    folder's path is shown to admins only; the CLI refuses instead of using the demo model."""
    import shutil

    from core.paths import BUNDLED_MODEL_DIR, active_model_dir, require_active_model_dir
    from db.accounts import create_user
    from db.engine import get_engine, session_scope
    from db.registry import promote_version, register_existing_model
    from webapp.auth import SessionUser

    at = _page(monkeypatch, None, tmp_path)
    monkeypatch.setattr("core.paths.BUNDLED_MODEL_DIR", BUNDLED_MODEL_DIR)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'predict.db'}")
    engine = get_engine()
    gone = _carded(tmp_path / "models", "gone-model")
    with session_scope(engine) as session:
        register_existing_model(session, gone)
        promote_version(session, "gone-model")
        admin_id = create_user(session, "boss", "correct horse battery", "admin").id
    assert active_model_dir() == gone.resolve()
    shutil.rmtree(gone)

    at.run()
    assert not at.exception
    [error] = at.error
    assert "The active model version 'gone-model' is unavailable" in unescaped(error.value)
    assert "bundled demo model 'chexnet-demo' instead" in unescaped(error.value)
    shown = [e.value for kind in (at.error, at.caption, at.markdown, at.warning, at.info) for e in kind]
    assert not [text for text in shown if str(tmp_path) in text]  # anonymous: no server paths
    assert at.get("file_uploader")  # the demo model still serves, said above

    at.session_state["user"] = SessionUser(id=admin_id, username="boss", role="admin")
    at.run()
    assert any(str(gone) in unescaped(c.value) for c in at.caption)
    with pytest.raises(UserError, match="promoted model folder .* is missing"):
        require_active_model_dir()


def test_a_blank_upload_is_flagged_by_the_real_gate_and_shows_no_findings(
    monkeypatch, tmp_path, full_resolution_images
) -> None:
    """The predictor's own OOD verdict (core.ood.gate's cheap checks, no stand-in) reaches the page's hook."""
    import io

    from PIL import Image as PILImage

    validated = _carded(tmp_path, "validated-model", metrics={"test": _entry(0.82)})
    buffer = io.BytesIO()
    PILImage.new("L", (512, 512), 0).save(buffer, format="PNG")
    at = _page(monkeypatch, validated, tmp_path)
    at.run()
    at.get("file_uploader")[0].set_value(("blank.png", buffer.getvalue(), "image/png"))
    at.run()
    assert not at.exception
    assert at.session_state["prediction"].ood.flagged
    assert any("No findings for this image" in e.value for e in at.error)
    assert not at.get("plotly_chart") and not [m for m in at.markdown if "Above threshold" in m.value]


def test_an_admins_operating_points_of_the_served_version_set_the_thresholds_and_findings(
    monkeypatch, tmp_path, full_resolution_images
) -> None:
    """Operating points an admin set on the active version (db.operating_points) are what the page uses:
    the bars' threshold marks, the findings above threshold, the table and where the thresholds come
    from; the reason is shown as plain text."""
    import json

    from db.accounts import create_user
    from db.engine import get_engine, session_scope
    from db.operating_points import set_operating_point
    from db.registry import promote_version, register_existing_model

    at = _page(monkeypatch, None, tmp_path)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'points.db'}")
    validated = _carded(tmp_path / "models", "validated-model", metrics={"test": _entry(0.82)})
    reason = "Screening [policy](https:evil.example): never miss one"
    with session_scope(get_engine()) as session:
        version = register_existing_model(session, validated)
        promote_version(session, version.id)
        admin = create_user(session, "boss", "correct horse battery", "admin")
        set_operating_point(session, version.id, "Effusion", 0.9, "a first try", admin)
        set_operating_point(session, version.id, "Effusion", 0.0, reason, admin)  # the latest is in use
        set_operating_point(session, version.id, "Hernia", 1.0, "Off for now.", admin)
    _upload(at, full_resolution_images[0])
    assert [h.value for h in at.subheader][0] == "Findings"

    prediction = at.session_state["prediction"]
    assert "Effusion" in prediction.positive and "Hernia" not in prediction.positive
    [above] = [m.value for m in at.markdown if "Above threshold" in m.value]
    assert "Effusion" in above and "Hernia" not in above
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    [marks] = [trace for trace in spec["data"] if trace.get("name") == "operating threshold"]
    by_finding = dict(zip(marks["y"], marks["x"], strict=True))
    assert (by_finding["Effusion"], by_finding["Hernia"], by_finding["Mass"]) == (0.0, 1.0, 0.5)

    table = at.dataframe[-1].value.set_index("finding")
    assert (table.loc["Effusion", "threshold"], table.loc["Hernia", "threshold"]) == (0.0, 1.0)
    assert table.loc["Effusion", "threshold from"] == "admin, by boss"
    assert table.loc["Mass", "threshold from"] == "model card" and table.loc["Mass", "threshold"] == 0.5
    assert bool(table.loc["Effusion", "above threshold"]) and not bool(table.loc["Hernia", "above threshold"])
    [origin] = [c.value for c in at.caption if c.value.startswith("Where the thresholds come from")]
    assert "Set by an admin on Models & ROC for 2 finding(s)" in unescaped(origin)
    assert "Effusion 0.000, set by boss on " in unescaped(origin) and reason in unescaped(origin)
    assert "[policy](" not in origin  # the reason is escaped, never a link
    assert "a first try" not in unescaped(origin)

    # The Review page's model (webapp.model_loader) is the one served here, thresholds included.
    from webapp.model_loader import is_validated, load_active_predictor

    review_predictor, problem = load_active_predictor()
    assert problem is None and review_predictor.name == "validated-model"
    assert review_predictor.thresholds == {**dict.fromkeys(FINDINGS, 0.5), "Effusion": 0.0, "Hernia": 1.0}
    assert is_validated(review_predictor.artifact)
