"""Where runtime data lives: everything under one folder, CHEXNET_HOME (default ./var).

The folders made here are private (mode 0o700): they hold the database, uploads and model versions.
"""

from __future__ import annotations

from pathlib import Path

from core import settings

REPO_ROOT = Path(__file__).resolve().parent.parent
# The demo model committed with the repository; used when no other model is configured.
BUNDLED_MODEL_DIR = REPO_ROOT / "models" / "chexnet-demo"
# The real NIH sample shipped beside the repository (tests, CI, demo model, benchmarks).
SHARED_SAMPLE_DIR = REPO_ROOT.parent / "shared" / "data" / "chestxray14-sample"


PRIVATE_MODE = 0o700


def _private_folder(path: Path) -> Path:
    # Only the folder itself is made private: parents above CHEXNET_HOME are not ours to restrict.
    path.mkdir(mode=PRIVATE_MODE, parents=True, exist_ok=True)
    return path


def chexnet_home() -> Path:
    return _private_folder(settings.chexnet_home())


def models_dir() -> Path:
    return _private_folder(chexnet_home() / "models")


def cache_dir() -> Path:
    return _private_folder(chexnet_home() / "cache")


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
    override = settings.model_override()
    if override is not None:
        return override
    pointer = active_model_pointer()
    if pointer.is_file():
        named = Path(pointer.read_text().strip())
        if named.is_dir():
            return named
    if (BUNDLED_MODEL_DIR / "model.json").is_file():
        return BUNDLED_MODEL_DIR
    return None
