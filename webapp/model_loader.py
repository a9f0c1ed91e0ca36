"""The model the Review and Adjudicate pages use: exactly the one the Predict page serves
(webapp.active_model.served_model: the registry's active version with its admin-set thresholds, or the
fallback that page announces), loaded once per process, so no two pages disagree; and whether its card
earns its outputs the name "findings", by the Predict page's rule (core.evaluation.card_verdict)."""

from __future__ import annotations

from core.evaluation.card_verdict import judge_card
from core.inference.artifact import ModelArtifact
from core.inference.predictor import Predictor
from webapp.active_model import served_model


def load_active_predictor() -> tuple[Predictor | None, str | None]:
    """The served model's predictor, or (None, a sentence saying why there is none)."""
    served = served_model()
    if served.predictor is None:
        return None, served.problem or served.unavailable or "No model can be served."
    return served.predictor, None


def is_validated(artifact: ModelArtifact) -> bool:
    """Whether the card's own evaluation meets the bar for "findings"
    (core.evaluation.card_verdict.judge_card)."""
    return judge_card(artifact.card).validated
