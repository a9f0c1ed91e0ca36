"""The jobs layer's contracts without training: FineTuneParams (the one shape of a fine-tune's settings),
JobProgress (what a job reports and the page shows), the worker's error sentences and its behaviour
when the database goes away, and the layering rule that db imports nothing from training or inference.
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import re
from pathlib import Path

import pytest

from core.errors import UserError
from core.inference.artifact import ArtifactError
from core.paths import REPO_ROOT
from core.training import SettingsError, TrainProgress, TrainSettings
from core.training.config import number_text
from db.engine import create_configured_engine, dispose_engine, get_engine
from jobs.params import EvaluateParams, FineTuneParams, JobParamsError, PredictParams
from jobs.progress import MAX_MESSAGES, EpochRecord, ImageCount, JobProgress
from jobs.run import WorkerSettings
from jobs.worker import Worker, error_sentence
from webapp.formatting import duration_text

FORBIDDEN_IN_DB = (
    "core.training", "core.train", "core.evaluation.evaluate", "core.inference.predictor", "core.distributed"
)  # fmt: skip


def _imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_db_imports_nothing_from_training_inference_or_the_layers_above() -> None:
    offenders = {}
    files = sorted((REPO_ROOT / "db").rglob("*.py"))
    assert len(files) > 10
    for path in files:
        bad = sorted(
            name
            for name in _imported_modules(path)
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IN_DB)
            or name.split(".")[0] in ("jobs", "webapp", "streamlit")
        )
        if bad:
            offenders[str(path.relative_to(REPO_ROOT))] = bad
    assert offenders == {}


def test_jobs_never_import_the_web_app() -> None:
    for path in sorted((REPO_ROOT / "jobs").glob("*.py")):
        assert not {m for m in _imported_modules(path) if m.split(".")[0] in ("webapp", "streamlit")}, path


# ----------------------------------------------------------------------------------------------------
# FineTuneParams


def test_fine_tune_params_round_trip_through_the_job_row() -> None:
    params = FineTuneParams(
        name="tuned-1",
        base_version_id=3,
        data_dir="/data/cxr14",
        label_source="effective",
        settings=TrainSettings(epochs=7, lr=3e-5, class_weighting=True),
    )
    stored = params.to_dict()
    assert stored["data_dir"] == "/data/cxr14" and stored["settings"]["epochs"] == 7
    assert set(stored["settings"]) == {f.name for f in dataclasses.fields(TrainSettings)}
    assert FineTuneParams.from_dict(stored) == params
    assert isinstance(FineTuneParams.from_dict(stored).data_dir, Path)


@pytest.mark.parametrize(
    ("values", "sentence"),
    [
        ({"name": "x", "epochs": 2}, "Unknown fine-tune parameter(s): epochs."),
        ({"name": "bad name"}, "'bad name' is not a usable version name"),
        ({"name": "x", "label_source": "rumour"}, "Unknown label source 'rumour'"),
        ({"name": "x", "base_version_id": "3"}, "The base version id must be a whole number"),
        ({"name": "x", "resume": "yes"}, "'resume' must be true or false"),
        ({"name": "x", "settings": {"epochs": 0}}, "The epochs must be between 1 and 500, not 0."),
        ({"name": "x", "settings": {"colour": "red"}}, "Unknown training setting(s): colour."),
        ("epochs=3", "must be a mapping"),
    ],
)
def test_fine_tune_params_refuse_bad_rows_with_a_sentence(values, sentence) -> None:
    with pytest.raises(UserError) as refused:
        FineTuneParams.from_dict(values)
    assert sentence in str(refused.value)
    assert isinstance(refused.value, JobParamsError | SettingsError)


def test_every_bound_comes_from_the_settings_metadata() -> None:
    """A value just outside each setting's bounds is refused, with the bound the metadata states."""
    checked = 0
    for spec in dataclasses.fields(TrainSettings):
        setting = spec.metadata["setting"]
        whole = str(spec.type).startswith("int")
        for bound, outside in ((setting.minimum, -1), (setting.maximum, +1)):
            if bound is None:
                continue
            if whole:
                value = bound + outside
            elif bound == 0:
                value = -1.0
            else:
                value = bound * 2 if outside > 0 else bound / 2
            with pytest.raises(SettingsError, match=re.escape(number_text(bound))):
                FineTuneParams.from_dict({"name": "x", "settings": {spec.name: value}})
            checked += 1
    assert checked >= 8


def test_evaluate_and_predict_params() -> None:
    assert EvaluateParams.from_dict({"version_id": 2, "data_dir": "/d"}) == EvaluateParams(2, Path("/d"))
    assert PredictParams.from_dict({}).version_id is None
    with pytest.raises(JobParamsError, match="needs a dataset folder"):
        EvaluateParams.from_dict({"version_id": 2})
    with pytest.raises(JobParamsError, match="Unknown prediction parameter"):
        PredictParams.from_dict({"model": 1})


# ----------------------------------------------------------------------------------------------------
# JobProgress


def test_progress_follows_the_trainer_and_reads_back_as_the_page_shows_it() -> None:
    progress = JobProgress(kind="fine_tune")
    assert progress.apply_train_event(TrainProgress("cache", done=5, total=10)) is False
    assert progress.headline("running", duration_text) == "Preparing the image cache · 5/10 images"
    assert progress.completed_fraction("running") == 0.5
    assert progress.apply_train_event(TrainProgress("cache", done=10, total=10)) is True  # written at once
    for step in (1, 2):
        event = TrainProgress(
            "train", epoch=1, epochs=2, step=step, steps_per_epoch=4, loss=0.5 / step, eta_s=125, device="CPU"
        )
        assert progress.apply_train_event(event) is False  # throttled
    assert (
        progress.headline("running", duration_text)
        == "Training · epoch 1/2 · step 2/4 · about 2 min 05 s left"
    )
    assert progress.completed_fraction("running") == pytest.approx(0.25)
    assert progress.loss_history == [[0.25, 0.5], [0.5, 0.25]] and progress.last_loss == 0.25
    epoch = {"epoch": 1, "epochs": 2, "step": 4, "steps_per_epoch": 4, "val_mean_auroc": 0.7, "val_loss": 0.3}
    assert (
        progress.apply_train_event(TrainProgress("epoch", **epoch)) is True
    )  # a torchrun rank's dict works too
    assert progress.apply_train_event({"phase": "epoch", **epoch, "val_mean_auroc": 0.75}) is True
    assert [e.epoch for e in progress.epochs_done] == [1] and progress.best_val_auroc == 0.75
    assert progress.completed_fraction("running") == 0.5

    stored = progress.to_dict()
    again = JobProgress.from_dict(stored)
    assert again == progress and again.to_dict() == stored
    assert again.headline("queued", duration_text) == "Waiting for the worker…"


def test_progress_reads_any_row_leniently() -> None:
    assert JobProgress.from_dict(None) == JobProgress()
    odd = JobProgress.from_dict(
        {"stage": "evaluate", "future_field": 1, "evaluation": {"done": 1, "total": 4, "part": 2, "parts": 2}}
    )
    assert odd.evaluation == ImageCount(done=1, total=4, part=2, parts=2)
    assert odd.completed_fraction("running") == pytest.approx((1 + 0.25) / 2)
    assert JobProgress.from_dict(
        {"epochs_done": [{"epoch": 2, "val_loss": 0.2}, {"nonsense": 1}]}
    ).epochs_done == [EpochRecord(epoch=2, val_loss=0.2)]


def test_progress_keeps_the_last_messages_and_resumes_the_curves() -> None:
    progress = JobProgress()
    for number in range(MAX_MESSAGES + 5):
        progress.add_message(f"m{number}")
    assert len(progress.messages) == MAX_MESSAGES and progress.message == f"m{MAX_MESSAGES + 4}"
    previous = JobProgress(loss_history=[[0.5, 0.4], [1.0, 0.3], [1.5, 0.2]])
    state = {
        "epoch": 1,
        "history": [{"epoch": 1, "val_mean_auroc": 0.6}, {"epoch": 2, "val_mean_auroc": 0.7}],
    }
    progress.continue_from(state, previous)
    assert progress.loss_history == [[0.5, 0.4], [1.0, 0.3]] and progress.resumed_after_epoch == 1
    assert [e.epoch for e in progress.epochs_done] == [1]


# ----------------------------------------------------------------------------------------------------
# The worker


def test_error_sentences() -> None:
    assert error_sentence(ArtifactError("/m is not a model folder.")) == "/m is not a model folder."
    assert error_sentence(KeyError("version_id")) == "Unexpected error (KeyError): 'version_id'"
    assert error_sentence(RuntimeError()) == "Unexpected error (RuntimeError): no details"


def test_worker_says_once_that_the_database_is_unreachable_and_once_that_it_is_back(
    tmp_path, monkeypatch, caplog
) -> None:
    monkeypatch.setenv("CHEXNET_HOME", str(tmp_path / "home"))
    folder = tmp_path / "not-mounted-yet"
    url = f"sqlite:///{folder / 'studio.db'}"
    worker = Worker(create_configured_engine(url), settings=WorkerSettings(device="cpu"))
    caplog.set_level(logging.INFO, logger="chexnet.worker")
    try:
        for _ in range(4):
            assert worker.poll() is None
        folder.mkdir()
        get_engine(url)  # the database is there now, schema included
        assert worker.poll() is None and worker.poll() is None
    finally:
        worker.engine.dispose()
        dispose_engine(url)
    records = [r for r in caplog.records if r.name == "chexnet.worker"]
    assert [r.levelname for r in records] == ["WARNING", "INFO"]
    assert records[0].getMessage().startswith("The database is unreachable (unable to open database file)")
    assert records[1].getMessage() == "The database is reachable again."
    assert all(r.exc_info is None for r in records)  # one line each, no traceback
