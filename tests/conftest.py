"""Shared fixtures. Area-specific fixtures live in their own plugin modules listed below."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from core.paths import SHARED_SAMPLE_DIR

pytest_plugins = ["tests.browser_fixtures", "tests.db_fixtures", "tests.orthanc_fixtures"]

# Runtime data of the tests never touches the developer's ./var; each pytest-xdist worker has its own.
os.environ.setdefault(
    "CHEXNET_HOME", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"chexnet-test-{os.getpid()}")
)
# Pages predict with PyTorch in the tests: OpenVINO compiles each new model for seconds, and nearly every
# test makes a new one. The backends' agreement is tested directly (tests/test_predictor.py) and the
# browser Predict test serves with the default (tests/test_browser_predict.py).
os.environ.setdefault("CHEXNET_INFERENCE_BACKEND", "torch")
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["CHEXNET_HOME"] = str(Path(os.environ["CHEXNET_HOME"]) / os.environ["PYTEST_XDIST_WORKER"])


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    # On a small shared CPU, 2 intra-op threads fighting other processes are several times slower than 1.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def numba_kernels() -> None:
    """Tests of the numba fast paths: compile them even where a web module turned that off (core.jit)."""
    from core import jit

    previous = jit.compile_on_first_use(True)
    yield
    jit.compile_on_first_use(previous)


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The real NIH ChestX-ray14 sample that lies beside the repository."""
    if not (SHARED_SAMPLE_DIR / "Data_Entry_2017_v2020.csv").exists():
        pytest.fail(f"The shared ChestX-ray14 sample is missing at {SHARED_SAMPLE_DIR}.")
    return SHARED_SAMPLE_DIR


@pytest.fixture(scope="session")
def full_resolution_images(sample_dir: Path) -> list[Path]:
    return sorted((sample_dir / "full-resolution").glob("*.png"))


@pytest.fixture(autouse=True)
def no_unexpected_page_errors(caplog):
    """The app shows a bug as one sentence (webapp.database.outage_guard); a test still fails on it."""
    yield
    from webapp.database import UNEXPECTED_LOG_MESSAGE

    crashes = [
        record
        for record in caplog.get_records("call")
        if record.levelno >= logging.ERROR and record.getMessage().startswith(UNEXPECTED_LOG_MESSAGE)
    ]
    assert not crashes, "A page hit an unexpected error:\n" + "\n".join(caplog.text.splitlines()[-40:])
