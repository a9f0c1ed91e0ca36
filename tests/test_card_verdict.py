"""When a model's outputs may be called findings (core.evaluation.card_verdict), and a reference CSV
compared on the
images it covers (core.evaluation.prediction_store) with DeLong's test exactly as on arrays."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from core.evaluation.card_verdict import MIN_MEAN_AUROC, judge_card
from core.evaluation.compare import compare_predictions
from core.evaluation.prediction_store import StoredSplit, compare_stored, reference_split, significantly_worse
from core.labels import FINDINGS
from core.paths import BUNDLED_MODEL_DIR


def card(**entries) -> dict:
    return {"labels": list(FINDINGS), "metrics": entries}


def entry(mean: float, *, split: str = "test", n_pos: int = 30, enough: int = 14, ci: bool = True) -> dict:
    positives = {label: (n_pos if i < enough else 2) for i, label in enumerate(FINDINGS)}
    return {
        "split": split, "n_images": 3000, "mean_auroc": mean, "n_pos": positives,
        "mean_auroc_enough": mean, "mean_auroc_enough_ci": [mean - 0.02, mean + 0.02] if ci else None,
    }  # fmt: skip


def test_the_shipped_demo_model_is_not_validated() -> None:
    verdict = judge_card(json.loads((BUNDLED_MODEL_DIR / "model.json").read_text()))
    assert not verdict.validated
    assert "0.599 on val, 55 images" in verdict.reason  # its 55-image validation: few positives


@pytest.mark.parametrize(
    ("metrics", "validated", "why"),
    [
        ({}, False, "records no measured AUROC"),
        ({"test": entry(0.85)}, True, "meets the bar of 0.75"),
        ({"test": entry(0.70)}, False, "below the bar of 0.75"),
        ({"test": entry(0.90, enough=6)}, False, "at least 10 positives for 7 of its 14 findings"),
        ({"test": entry(0.90, ci=False)}, False, "no confidence interval"),
        # A test split too small to judge, a validation split that is large enough: judged on val.
        ({"test": entry(0.95, enough=0), "val": entry(0.80, split="val")}, True, "validation split"),
        ({"test": {"split": "test", "mean_auroc": 0.9, "mean_auroc_ci": [0.8, 0.95]}}, False, "positives"),
        # A split measured on no positives next to a small measured one (a short fine-tune's card).
        (
            {
                "test": {**entry(0.9), "mean_auroc": None, "mean_auroc_enough": None},
                "val": entry(0.6, split="val", enough=3),
            },
            False,
            "records mean AUROC 0.600 on val",
        ),
    ],
)
def test_verdicts(metrics: dict, validated: bool, why: str) -> None:
    verdict = judge_card(card(**metrics))
    assert verdict.validated is validated
    assert why in verdict.reason
    if validated:
        assert verdict.mean_auroc >= MIN_MEAN_AUROC and verdict.ci is not None


def test_a_reference_is_compared_on_the_images_it_covers() -> None:
    rng = np.random.default_rng(3)
    n = 300
    y = (rng.random((n, 14)) < 0.3).astype(np.int8)
    model = np.clip(y * 0.3 + rng.random((n, 14)) * 0.7, 0, 1).astype(np.float32)
    ids = [f"{i:08d}_000.png" for i in range(n)]
    stored = StoredSplit("test", ids, tuple(FINDINGS), model, {"nlp": y}, {"nlp": np.ones(n, dtype=bool)})
    covered = ids[50:]  # the reference lacks the first 50 images
    better = np.clip(y[50:] * 0.6 + rng.random((n - 50, 14)) * 0.4, 0, 1)
    reference = pd.DataFrame(better, index=covered, columns=list(FINDINGS))
    side = reference_split(reference, stored, "published")
    assert side.ids == covered and side.truth["nlp"].shape == (n - 50, 14)

    result = compare_stored(stored, side, "nlp")
    direct = compare_predictions(y[50:], model[50:], better, FINDINGS)
    assert result["n_images"] == n - 50 and result["n_only_a"] == 50
    for label in FINDINGS:
        assert result["classes"][label]["delta"] == pytest.approx(direct["classes"][label]["delta"], abs=1e-6)
        assert result["classes"][label]["p_holm"] == pytest.approx(
            direct["classes"][label]["p_holm"], rel=1e-4
        )
    # The reference is much better: comparing the other way round calls the model significantly worse.
    worse = significantly_worse(compare_stored(side, _restricted(stored, covered), "nlp"))
    assert len(worse) >= 10


def _restricted(stored: StoredSplit, ids: list[str]) -> StoredSplit:
    rows = [stored.ids.index(i) for i in ids]
    return StoredSplit(stored.split, ids, stored.labels, stored.probabilities[rows],
                       {"nlp": stored.truth["nlp"][rows]}, {"nlp": stored.included["nlp"][rows]})  # fmt: skip
