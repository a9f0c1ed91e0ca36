"""Where runtime data lives: everything under one folder, CHEXNET_HOME (default ./var).

The folders made here are private (mode 0o700): they hold the database, uploads and model versions.
"""

from __future__ import annotations

from pathlib import Path

from core import settings
from core.errors import UserError

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


def promoted_model_dir() -> Path | None:
    """The folder the ACTIVE pointer names (the promoted version), whether or not it is usable; None
    when nothing was promoted."""
    pointer = active_model_pointer()
    if not pointer.is_file():
        return None
    named = pointer.read_text().strip()
    return Path(named) if named else None


def is_model_folder(path: Path) -> bool:
    # The two files core.inference.artifact needs, checked without importing it (it imports torch).
    return (path / "model.json").is_file() and (path / "model.safetensors").is_file()


class ActiveModelUnavailable(UserError):
    """The promoted model's folder is missing or is not a model folder (one sentence)."""


def active_model_dir() -> Path | None:
    """The model the app and CLIs use by default: $CHEXNET_MODEL, else the promoted one, else the demo.

    A promoted folder that has gone missing is still returned (so loading it fails loudly): it is never
    replaced by the demo model behind the registry's back. `require_active_model_dir` says so instead.
    """
    override = settings.model_override()
    if override is not None:
        return override
    promoted = promoted_model_dir()
    if promoted is not None:
        return promoted
    if is_model_folder(BUNDLED_MODEL_DIR):
        return BUNDLED_MODEL_DIR
    return None


def require_active_model_dir() -> Path:
    """`active_model_dir()`, or ActiveModelUnavailable with a sentence when there is none to use."""
    model_dir = active_model_dir()
    if model_dir is None:
        raise ActiveModelUnavailable(
            "No model is configured: pass --model DIR, set CHEXNET_MODEL, or promote one in the app."
        )
    promoted = settings.model_override() is None and model_dir == promoted_model_dir()
    if promoted and not is_model_folder(model_dir):
        raise ActiveModelUnavailable(
            f"The promoted model folder {model_dir} is missing or is not a model folder; restore it, "
            "promote another version in the app, or pass --model DIR (the demo model is not used instead)."
        )
    return model_dir
