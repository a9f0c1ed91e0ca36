"""The screening job end to end: the demo model's OOD gate over an imported folder of real NIH X-rays
with a blank PNG and a broken file planted; both are listed as suggested exclusions (in the database and
on the Suggested exclusions page, an AppTest), nothing is dropped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image as PilImage
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from core.ood.gate import UNIFORM_REASON
from core.paths import BUNDLED_MODEL_DIR, REPO_ROOT
from db import accounts
from db.engine import dispose_engine, get_engine, session_scope
from db.importer import import_chestxray14
from db.jobs import get_job
from db.models import Image, Review, TrainingJob
from db.ood_suspects import UNREADABLE, list_suspects, screened_versions, suspect_counts, suspects_of_image
from db.registry import promote_version, register_existing_model
from jobs.params import JobParamsError
from jobs.queue import enqueue_screen
from jobs.run import WorkerSettings
from jobs.screen import JOB_SCREEN, ScreenParams
from jobs.worker import Worker
from tests.mini_dataset import DATA_ENTRY, make_mini_dataset
from webapp.auth import SessionUser

BLANK = "99999999_000.png"
BROKEN = "99999998_000.png"
N_TRAIN_VAL = 6
PAGE = str(REPO_ROOT / "webapp" / "views" / "suspects.py")
PASSWORD = "correct horse battery"


def _plant(root: Path, name: str, data: bytes | None, template: pd.Series) -> None:
    path = root / "images" / name
    if data is None:
        PilImage.new("L", (512, 512), 0).save(path)
    else:
        path.write_bytes(data)
    row = template.copy()
    row["Image Index"], row["Patient ID"] = name, int(name[:8])
    entries = pd.read_csv(root / DATA_ENTRY)
    pd.concat([entries, row.to_frame().T]).to_csv(root / DATA_ENTRY, index=False)
    with open(root / "train_val_list.txt", "a") as out:
        out.write(f"{name}\n")


@pytest.fixture
def studio(tmp_path, monkeypatch, sample_dir, fast_password_hashing):
    """CHEXNET_HOME, a SQLite database with the mini folder imported, the demo model active, users
    "boss" (admin) and "reader" (clinician)."""
    from core.data.dataset import load_chestxray14

    monkeypatch.setenv("CHEXNET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CHEXNET_MODEL", raising=False)
    entries = load_chestxray14(sample_dir).entries
    test_ids = entries[entries["split"] == "test"].index.tolist()
    adults = entries[(entries["split"] == "train_val") & (entries["age"] >= 18)].index.tolist()
    train_val = [adults[i] for i in np.random.default_rng(1).choice(len(adults), N_TRAIN_VAL, replace=False)]
    root = make_mini_dataset(tmp_path / "data", sample_dir, test=test_ids, train_val=train_val)
    template = pd.read_csv(root / DATA_ENTRY).iloc[0]
    _plant(root, BLANK, None, template)
    _plant(root, BROKEN, b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, template)  # a PNG signature, then nothing
    url = f"sqlite:///{tmp_path / 'studio.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    engine = get_engine(url)
    import_chestxray14(engine, root, hash_images=False)
    with session_scope(engine) as session:
        version = register_existing_model(session, BUNDLED_MODEL_DIR)
        promote_version(session, version.id)
        version_id = version.id
        for name, role in (("boss", "admin"), ("reader", "clinician")):
            accounts.create_user(session, name, PASSWORD, role=role)
    yield engine, version_id, len(test_ids) + N_TRAIN_VAL + 2
    dispose_engine(url)


def _settings() -> WorkerSettings:
    return WorkerSettings(device="cpu", eval_backend="torch", heartbeat_s=0.2, progress_interval_s=0.2)


def _user(engine, name: str) -> SessionUser:
    with session_scope(engine, read_only=True) as session:
        account = accounts.get_user(session, name)
        return SessionUser(account.id, account.username, account.role)


def _page(user: SessionUser | None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    if user is not None:
        at.session_state["user"] = user
    at.run()
    assert not at.exception, at.exception
    return at


def _image_id(session, name: str) -> int:
    return session.scalar(select(Image.id).where(Image.image_index == name))


def test_planted_non_xrays_become_suggested_exclusions_and_nothing_is_dropped(studio) -> None:
    engine, version_id, n_images = studio
    with session_scope(engine) as session:
        job_id = enqueue_screen(session).id
        with pytest.raises(JobParamsError, match=f"Job #{job_id} is already screening"):
            enqueue_screen(session)
    worker = Worker(engine, settings=_settings())
    assert worker.run_once() == job_id
    with session_scope(engine, read_only=True) as session:
        job = get_job(session, job_id)
        assert job.status == "succeeded", job.error
        assert job.kind == JOB_SCREEN and "2 suggested exclusions" in job.progress["message"]
        suspects = {row.image_name: row for row in list_suspects(session, version_id)}
        assert set(suspects) == {BLANK, BROKEN}  # every real X-ray passed
        blank, broken = suspects[BLANK], suspects[BROKEN]
        assert (blank.check, blank.reason, blank.version) == ("uniform", UNIFORM_REASON, "chexnet-demo")
        assert broken.check == UNREADABLE and "damaged" in broken.reason
        assert suspect_counts(session, version_id) == {UNREADABLE: 1, "uniform": 1}
        assert screened_versions(session) == [(version_id, "chexnet-demo", 2)]
        assert [r.image_name for r in suspects_of_image(session, _image_id(session, BLANK))] == [BLANK]
        # Suggestions only: every image is still imported, with its file and split; nobody excluded any.
        kept = session.execute(select(Image.path, Image.split).where(Image.image_index == BLANK)).one()
        assert kept.path and kept.split == "train_val"
        assert session.scalar(select(func.count()).select_from(Image)) == n_images
        assert session.scalar(select(func.count()).select_from(Review)) == 0

    # Reviewers see the list and why; only an admin may start a screening.
    reader = _page(_user(engine, "reader"))
    [table] = [frame.value for frame in reader.dataframe if "reason" in frame.value.columns]
    assert set(table["file"]) == {BLANK, BROKEN}
    assert table.set_index("file").loc[BLANK, "reason"] == UNIFORM_REASON
    assert not reader.button
    admin = _page(_user(engine, "boss"))
    next(b for b in admin.button if b.label == "Screen the imported images").click().run()
    assert not admin.exception and "queued: screening with chexnet-demo" in admin.success[0].value
    assert "Please log in" in _page(None).warning[0].value

    # Screening again replaces the rows instead of adding to them.
    with session_scope(engine, read_only=True) as session:
        again = session.scalar(select(TrainingJob.id).where(TrainingJob.status == "queued"))
    assert worker.run_once() == again
    with session_scope(engine, read_only=True) as session:
        assert get_job(session, again).status == "succeeded"
        assert suspect_counts(session, version_id) == {UNREADABLE: 1, "uniform": 1}


def test_screen_params_are_checked() -> None:
    assert ScreenParams.from_dict({"version_id": 3}).to_dict() == {"version_id": 3}
    with pytest.raises(JobParamsError, match="Unknown screening parameter"):
        ScreenParams.from_dict({"version": 3})
    with pytest.raises(JobParamsError, match="whole number"):
        ScreenParams.from_dict({"version_id": "3"})
