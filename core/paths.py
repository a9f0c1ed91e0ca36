"""Where runtime data lives: everything under one folder, CHEXNET_HOME (default ./var)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# The demo model committed with the repository; used when no other model is configured.
BUNDLED_MODEL_DIR = REPO_ROOT / "models" / "chexnet-demo"
# The real NIH sample shipped beside the repository (tests, CI, demo model, benchmarks).
SHARED_SAMPLE_DIR = REPO_ROOT.parent / "shared" / "data" / "chestxray14-sample"


def chexnet_home() -> Path:
    home = Path(os.environ.get("CHEXNET_HOME", REPO_ROOT / "var")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def models_dir() -> Path:
    path = chexnet_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    path = chexnet_home() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


ACTIVE_MODEL_POINTER = "ACTIVE"


def active_model_pointer() -> Path:
    """A one-line file naming the active model folder; the registry rewrites it on promotion."""
    return models_dir() / ACTIVE_MODEL_POINTER


def set_active_model_dir(path: Path) -> None:
    pointer = active_model_pointer()
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(str(Path(path).resolve()) + "\n")
    tmp.replace(pointer)  # atomic: readers see the old or the new model, never half a path


def active_model_dir() -> Path | None:
    """The model the app and CLIs use by default: $CHEXNET_MODEL, else the promoted one, else the demo."""
    if os.environ.get("CHEXNET_MODEL"):
        return Path(os.environ["CHEXNET_MODEL"]).expanduser()
    pointer = active_model_pointer()
    if pointer.is_file():
        named = Path(pointer.read_text().strip())
        if named.is_dir():
            return named
    if (BUNDLED_MODEL_DIR / "model.json").is_file():
        return BUNDLED_MODEL_DIR
    return None
