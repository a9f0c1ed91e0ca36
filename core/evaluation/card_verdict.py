"""Whether a model card's own evaluation earns its outputs the name "findings".

A model is presented as validated only when its card records, for a named split (the official test split
preferred, else the validation split), a mean AUROC with a confidence interval, computed over findings
with at least `MIN_POSITIVES` positives each, with at least `MIN_FINDINGS_SHARE` of the model's findings
having that many, and a mean of at least `MIN_MEAN_AUROC`. Anything else (no evaluation, too few
positives, a weak mean) is "scores from a weak/unvalidated model": nothing is listed as above threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MIN_MEAN_AUROC = 0.75
MIN_POSITIVES = 10
MIN_FINDINGS_SHARE = 0.5
PREFERRED_SPLITS = ("test", "val")
SPLIT_NAMES = {"test": "official test split", "val": "validation split"}


@dataclass(frozen=True)
class CardVerdict:
    validated: bool
    reason: str  # one sentence saying why (shown on the Predict page)
    split: str | None = None
    mean_auroc: float | None = None
    ci: tuple[float, float] | None = None
    n_images: int | None = None
    n_findings_enough: int = 0


def bar_text() -> str:
    return (
        f"mean AUROC of at least {MIN_MEAN_AUROC:.2f} with a 95% CI on a named split, over findings with "
        f"at least {MIN_POSITIVES} positives, for at least {MIN_FINDINGS_SHARE:.0%} of the findings"
    )


def _entry_figures(entry: dict[str, Any]) -> tuple[float | None, Any, int]:
    """(mean AUROC, its CI, findings with enough positives) of one card metrics entry."""
    n_pos = entry.get("n_pos")
    if not isinstance(n_pos, dict):
        return None, None, 0
    enough = sum(1 for value in n_pos.values() if isinstance(value, int | float) and value >= MIN_POSITIVES)
    if "mean_auroc_enough" in entry:
        return entry.get("mean_auroc_enough"), entry.get("mean_auroc_enough_ci"), enough
    return entry.get("mean_auroc"), entry.get("mean_auroc_ci"), enough


def judge_card(card: dict[str, Any]) -> CardVerdict:
    """The verdict on a model card (see the module docstring)."""
    n_labels = len(card.get("labels") or []) or 14
    needed = math.ceil(MIN_FINDINGS_SHARE * n_labels)
    entries = [
        entry
        for split in PREFERRED_SPLITS
        for entry in (card.get("metrics") or {}).values()
        if isinstance(entry, dict) and entry.get("split") == split
    ]
    if not any(entry.get("mean_auroc") is not None for entry in entries):
        return CardVerdict(False, "Its model card records no measured AUROC on a named split.")
    for entry in entries:
        mean, ci, enough = _entry_figures(entry)
        if mean is None or enough < needed:
            continue
        split = str(entry["split"])
        where = f"the {SPLIT_NAMES.get(split, split)} ({int(entry.get('n_images') or 0):,} images)"
        if not ci or ci[0] is None or ci[1] is None:
            return CardVerdict(False, f"Its mean AUROC on {where} has no confidence interval.", split, mean)
        figures = f"mean AUROC {mean:.3f} (95% CI {ci[0]:.3f}–{ci[1]:.3f}) on {where}"
        common = dict(split=split, mean_auroc=mean, ci=(ci[0], ci[1]), n_images=entry.get("n_images"),
                      n_findings_enough=enough)  # fmt: skip
        if mean < MIN_MEAN_AUROC:
            return CardVerdict(False, f"Its {figures} is below the bar of {MIN_MEAN_AUROC:.2f}.", **common)
        return CardVerdict(True, f"Its {figures} meets the bar of {MIN_MEAN_AUROC:.2f}.", **common)
    measured = [entry for entry in entries if isinstance(entry.get("mean_auroc"), int | float)]
    best = max(measured, key=lambda entry: (_entry_figures(entry)[2], int(entry.get("n_images") or 0)))
    mean = best.get("mean_auroc")
    recorded = ""
    if isinstance(mean, int | float):
        where = f"{best.get('split')}, {best.get('n_images')} images"
        recorded = f" (it records mean AUROC {mean:.3f} on {where})"
    return CardVerdict(
        False,
        f"No evaluation in its model card has at least {MIN_POSITIVES} positives for {needed} of its "
        f"{n_labels} findings{recorded}.",
        best.get("split"),
        mean,
        n_findings_enough=_entry_figures(best)[2],
    )
