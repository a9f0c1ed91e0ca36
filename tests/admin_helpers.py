"""Helpers of the worker and admin-page tests: a tiny model, fast worker settings, a ready studio.

Plain functions, not fixtures: each test module wraps them in its own fixtures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from sqlalchemy import Engine

from core.inference.artifact import default_input_spec, new_card, save_artifact
from core.inference.models import create_model
from db import accounts
from db.engine import get_engine, session_scope
from db.importer import import_chestxray14
from db.registry import promote_version, register_existing_model
from jobs.run import WorkerSettings
from tests.test_train import make_synthetic_dataset

CROP, RESIZE = 48, 55  # what the synthetic 96-px data trains at (see tests/test_train.py)
PASSWORD = "correct horse battery"


# Subprocesses get one intra-op thread too: on a small shared CPU, 2 threads fighting other processes
# are many times slower than 1 (OpenMP threads spin at every barrier while the other is descheduled).
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1"}


def synthetic_dataset(root: Path) -> Path:
    """48 train_val + 8 test images, one patient each: a 1-epoch fine-tune is 3 steps of 16."""
    return make_synthetic_dataset(root, n_train_val=48, n_test=8)


def tiny_model(folder: Path, name: str, seed: int = 0) -> Path:
    """A randomly initialised CheXNet whose card asks for 48-px crops."""
    torch.manual_seed(seed)
    card = new_card(name, input={**default_input_spec(), "resize_shorter_side": RESIZE, "crop": CROP})
    save_artifact(create_model(), folder / name, card)
    return folder / name


def fast_settings(**overrides) -> WorkerSettings:
    settings = dict(
        device="cpu",
        eval_backend="torch",
        n_boot=20,
        heartbeat_s=0.2,
        progress_interval_s=0.2,
        poll_s=0.1,
        train_workers=1,
        stale_after_s=120,
    )
    settings.update(overrides)
    return WorkerSettings(**settings)


@dataclass
class Studio:
    engine: Engine
    url: str
    home: Path
    data: Path
    base_id: int
    admin_id: int
    reader_id: int


def make_studio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: Path) -> Studio:
    """CHEXNET_HOME + a SQLite database with `data` imported, users "boss" (admin) and "reader"
    (clinician), and the tiny model "tiny-base" registered and active."""
    home = tmp_path / "home"
    monkeypatch.setenv("CHEXNET_HOME", str(home))
    monkeypatch.delenv("CHEXNET_MODEL", raising=False)
    url = f"sqlite:///{tmp_path / 'studio.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    engine = get_engine(url)
    import_chestxray14(engine, data, hash_images=False)
    base_dir = tiny_model(tmp_path / "models", "tiny-base")
    with session_scope(engine) as session:
        admin = accounts.create_user(session, "boss", PASSWORD, role="admin")
        reader = accounts.create_user(session, "reader", PASSWORD, role="clinician")
        base = register_existing_model(session, base_dir)
        promote_version(session, base.id)
        ids = (base.id, admin.id, reader.id)
    return Studio(engine, url, home, data, *ids)
