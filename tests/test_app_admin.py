"""AppTest of the Fine-tune and Models & ROC pages: real database, real worker, Streamlit's test runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from core.inference.artifact import read_artifact
from core.paths import REPO_ROOT, active_model_dir
from core.training import TrainSettings
from db import accounts
from db.__main__ import main as db_main
from db.engine import dispose_engine, session_scope
from db.jobs import claim_next_job, enqueue_job, list_jobs, update_progress
from db.models import TrainingJob
from db.registry import get_active_version, list_versions
from jobs.params import DISPUTED_POLICIES, JOB_FINE_TUNE, FineTuneParams
from jobs.progress import EpochRecord, JobProgress
from jobs.worker import Worker
from tests.admin_helpers import (
    PASSWORD,
    fast_settings,
    make_studio,
    synthetic_dataset,
    tiny_model,
)
from webapp.auth import SessionUser
from webapp.formatting import plain

ADMIN_PAGE = str(REPO_ROOT / "webapp" / "views" / "admin.py")
MODELS_PAGE = str(REPO_ROOT / "webapp" / "views" / "models.py")


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_dataset(tmp_path_factory.mktemp("cxr14"))


@pytest.fixture
def studio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synthetic_data: Path, fast_password_hashing):
    made = make_studio(tmp_path, monkeypatch, synthetic_data)
    yield made
    dispose_engine(made.url)


def page(path: str, user: SessionUser) -> AppTest:
    at = AppTest.from_file(path, default_timeout=120)
    at.session_state["user"] = user
    at.run()
    assert not at.exception, at.exception
    return at


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def texts(at: AppTest) -> str:
    kinds = (at.markdown, at.success, at.error, at.warning, at.info, at.caption)
    return "\n".join(element.value for kind in kinds for element in kind)


def test_admin_queues_a_fine_tune_sees_its_result_then_promotes_and_rolls_back(studio) -> None:
    admin = SessionUser(studio.admin_id, "boss", "admin")
    at = page(ADMIN_PAGE, admin)
    assert "No training worker is running" in texts(at)
    assert at.metric[0].label == "Images" and at.metric[0].value == "56"
    at.selectbox(key="ft_base").set_value(studio.base_id)
    at.text_input(key="ft_name").set_value("apptest-ft")
    # The settings widgets come from TrainSettings: one per setting shown on the form, its default set.
    assert at.number_input(key="ft_epochs").value == TrainSettings().epochs
    assert at.select_slider(key="ft_batch_size").value == TrainSettings().batch_size
    assert at.select_slider(key="ft_lr").value is None  # empty: the trainer's default for a fine-tune
    assert at.checkbox(key="ft_class_weighting").value is False
    assert not [w for w in at.number_input if w.key == "ft_patience"]  # in_form=False
    at.number_input(key="ft_epochs").set_value(1)
    at.select_slider(key="ft_lr").set_value(1e-3)
    at.select_slider(key="ft_batch_size").set_value(8)
    at.checkbox(key="ft_class_weighting").check()
    assert at.number_input(key="ft_seed").value == 0
    at.number_input(key="ft_seed").set_value(7)
    at.radio(key="ft_labels").set_value("effective")
    button(at, "Queue fine-tune").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "Job #1 queued: fine-tune → apptest-ft." in texts(at)
    assert "Waiting for the worker" in at.get("progress")[0].proto.text
    with session_scope(studio.engine, read_only=True) as session:
        [job] = list_jobs(session)
        assert job.status == "queued" and job.created_by_id == studio.admin_id
        params = FineTuneParams.from_dict(job.params)  # the row holds the contract, nothing else
        assert params.label_source == "effective" and params.base_version_id == studio.base_id
        assert params.data_dir == studio.data and params.name == "apptest-ft"
        assert params.settings == TrainSettings(epochs=1, lr=1e-3, batch_size=8, class_weighting=True, seed=7)

    # The worker (here in-process) runs the job; the page then shows the outcome and the curves.
    assert Worker(studio.engine, settings=fast_settings()).run_once() == job.id
    at.run()
    assert not at.exception
    assert "Registered version **apptest-ft**" in texts(at)
    with session_scope(studio.engine, read_only=True) as session:
        version = next(v for v in list_versions(session) if v.name == "apptest-ft")
        card = read_artifact(version.path).card
    assert card["provenance"]["settings"]["seed"] == 7  # form -> job row -> trainer -> card
    assert card["provenance"]["data"]["split"]["seed"] == 7
    assert len(at.get("plotly_chart")) == 2  # loss and validation AUROC

    models = page(MODELS_PAGE, admin)
    assert len(models.get("plotly_chart")) >= 1  # ROC grid of the compared versions
    with session_scope(studio.engine, read_only=True) as session:
        new_id = next(v.id for v in list_versions(session) if v.name == "apptest-ft")
    models.selectbox(key="registry_version").set_value(new_id)
    models.run()
    button(models, "Promote").click()
    models.run()
    models.button(key="confirm_promote").click().run()  # the confirm step with the paired comparison
    assert not models.exception
    assert "apptest-ft is now the active model" in texts(models)
    with session_scope(studio.engine, read_only=True) as session:
        assert get_active_version(session).name == "apptest-ft"
    assert active_model_dir() == studio.home / "models" / "apptest-ft"  # what the Predict page loads

    button(models, "Roll back").click()
    models.run()
    models.button(key="confirm_rollback").click().run()
    assert not models.exception
    assert "tiny-base is active again" in texts(models)
    with session_scope(studio.engine, read_only=True) as session:
        assert get_active_version(session).name == "tiny-base"
        assert len(list_versions(session)) == 2  # nothing deleted
    assert active_model_dir().name == "tiny-base"


def test_the_disputed_image_policy_chosen_on_the_form_is_stored_with_the_job(studio) -> None:
    at = page(ADMIN_PAGE, SessionUser(studio.admin_id, "boss", "admin"))
    policy = at.selectbox(key="ft_disputed")
    assert policy.value == FineTuneParams().disputed_policy == "exclude"  # the params' default
    assert policy.options == list(DISPUTED_POLICIES.values())  # shown by their readable labels
    assert all(label in policy.help for label in DISPUTED_POLICIES.values())  # each one explained
    at.radio(key="ft_labels").set_value("effective")
    policy.set_value("uncertain")
    button(at, "Queue fine-tune").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    with session_scope(studio.engine, read_only=True) as session:
        [job] = list_jobs(session)
    assert job.params["disputed_policy"] == "uncertain"
    params = FineTuneParams.from_dict(job.params)  # what the worker hands to the labels table
    assert (params.label_source, params.disputed_policy) == ("effective", "uncertain")


def test_live_progress_panel_shows_a_running_job_and_cancels_it(studio) -> None:
    progress = JobProgress(
        kind=JOB_FINE_TUNE,
        stage="train",
        stage_text="Training",
        epoch=2,
        epochs=3,
        step=5,
        steps=10,
        fraction=0.5,
        eta_s=95,
        device="NVIDIA H100 80GB HBM3",
        images_per_s=812.5,
        loss_history=[[0.5, 0.41], [1.0, 0.33], [1.5, 0.29]],
        epochs_done=[EpochRecord(1, 0.35, 0.31, 0.71, {"Atelectasis": 0.7})],
    )
    params = FineTuneParams(name="live", data_dir=studio.data, settings=TrainSettings(epochs=3))
    with session_scope(studio.engine) as session:
        job_id = enqueue_job(session, params.to_dict(), kind=JOB_FINE_TUNE).id
        claim_next_job(session, "gpu-box:1")
        update_progress(session, job_id, "gpu-box:1", progress.to_dict())
    at = page(ADMIN_PAGE, SessionUser(studio.admin_id, "boss", "admin"))
    shown = texts(at)
    assert plain("Job #1 · Fine-tune → live") in shown
    bar = at.get("progress")[0].proto
    assert bar.value == 50 and "epoch 2/3 · step 5/10 · about 1 min 35 s left" in bar.text
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Epoch"] == "2/3" and metrics["Best val. AUROC"] == "0.710"
    assert metrics["Images/s"] == "812.5" and metrics["Training loss"] == "0.2900"
    assert "NVIDIA H100" in shown
    assert len(at.get("plotly_chart")) == 2
    button(at, "Cancel").click()
    at.run()
    with session_scope(studio.engine, read_only=True) as session:
        assert session.get(TrainingJob, job_id).cancel_requested


def test_first_start_import_registers_the_demo_model_and_queues_its_evaluation(
    tmp_path, monkeypatch, synthetic_data, fast_password_hashing
) -> None:
    """An empty studio: start-up (`python -m db init-admin`, what `make run` calls) registers the bundled
    model as the active version; importing a dataset through the page queues its evaluation so the
    dashboards get curves. Opening the page writes nothing."""
    monkeypatch.setenv("CHEXNET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CHEXNET_MODEL", raising=False)
    monkeypatch.setattr("core.paths.BUNDLED_MODEL_DIR", tiny_model(tmp_path / "repo-models", "demo-model"))
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    with session_scope(url) as session:
        admin_id = accounts.create_user(session, "boss", PASSWORD, role="admin").id
    try:
        with session_scope(url, read_only=True) as session:
            assert list_versions(session) == []
        assert db_main(["init-admin"]) == 0
        assert db_main(["init-admin"]) == 0  # a second start registers nothing more
        at = page(ADMIN_PAGE, SessionUser(admin_id, "boss", "admin"))
        assert "No dataset is imported yet" in texts(at)
        at.text_input(key="import_folder").set_value(str(synthetic_data))
        button(at, "Import").click()
        at.run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        shown = texts(at)
        assert "56 images added" in shown and "Job #1 evaluates demo-model" in shown
        assert at.metric[0].value == "56"
        with session_scope(url, read_only=True) as session:
            [version] = list_versions(session)
            assert version.name == "demo-model" and version.is_active
            [job] = list_jobs(session)
            assert job.kind == "evaluate" and job.params["version_id"] == version.id
            assert job.params["data_dir"] == str(synthetic_data)
        button(at, "Queue predictions").click()  # for the review queue's "model disagrees most"
        at.run()
        assert not at.exception and "Job #2 queued: store predictions of the active model." in texts(at)
        with session_scope(url, read_only=True) as session:
            predict = next(j for j in list_jobs(session) if j.kind == "predict")
            assert predict.created_by_id == admin_id and predict.params["version_id"] == version.id
    finally:
        dispose_engine(url)


@pytest.mark.parametrize("path", [ADMIN_PAGE, MODELS_PAGE])
def test_clinicians_and_visitors_get_nothing(studio, path) -> None:
    at = AppTest.from_file(path, default_timeout=60)
    at.session_state["user"] = SessionUser(studio.reader_id, "reader", "clinician")
    at.run()
    assert not at.exception
    assert [e.value for e in at.error] == ["Your account does not have access to this page."]
    assert not at.get("form") and not at.button and not at.selectbox
    visitor = AppTest.from_file(path, default_timeout=60)
    visitor.run()
    assert "Please log in" in visitor.warning[0].value and not visitor.button
    with session_scope(studio.engine, read_only=True) as session:
        assert session.scalars(select(TrainingJob)).all() == []
