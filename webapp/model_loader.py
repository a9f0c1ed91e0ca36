"""The shared model: loaded once per process and reloaded only when the active model changes."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.artifact import CARD_FILE, ArtifactError, ModelArtifact, read_artifact
from core.paths import active_model_dir
from core.predictor import Predictor


@st.cache_resource(show_spinner="Loading the model…", max_entries=3)
def _load(model_dir: str, card_mtime: float) -> Predictor:
    # card_mtime is part of the key: re-saving or promoting a model reloads it without an app restart.
    return Predictor.from_path(model_dir)


def active_artifact() -> ModelArtifact | None:
    model_dir = active_model_dir()
    if model_dir is None:
        return None
    try:
        return read_artifact(model_dir)
    except ArtifactError:
        return None


def load_active_predictor() -> tuple[Predictor | None, str | None]:
    """The active model's predictor, or (None, a sentence saying why there is none)."""
    model_dir = active_model_dir()
    if model_dir is None:
        return (
            None,
            "No model is configured yet, so nothing can be predicted. An admin can train or import one.",
        )
    try:
        mtime = (Path(model_dir) / CARD_FILE).stat().st_mtime
        return _load(str(model_dir), mtime), None
    except (ArtifactError, OSError) as exc:
        return None, f"The configured model at {model_dir} cannot be loaded: {exc}"


def is_validated(artifact: ModelArtifact) -> bool:
    """A model whose card carries a measured AUROC; anything else is not presented as findings."""
    metrics = artifact.card.get("metrics") or {}
    return any(
        isinstance(section, dict) and section.get("mean_auroc") is not None
        for section in [metrics, *metrics.values()]
        if isinstance(section, dict)
    )
