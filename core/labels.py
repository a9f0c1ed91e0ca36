"""The ChestX-ray14 label vocabulary, in CheXNet's output order."""

from __future__ import annotations

FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"
NUM_FINDINGS = len(FINDINGS)

# Per-class AUROC published in Rajpurkar et al. 2017 (CheXNet), the reference column of dashboards.
PUBLISHED_CHEXNET_AUROC: dict[str, float] = {
    "Atelectasis": 0.8094,
    "Cardiomegaly": 0.9248,
    "Effusion": 0.8638,
    "Infiltration": 0.7345,
    "Mass": 0.8676,
    "Nodule": 0.7802,
    "Pneumonia": 0.7680,
    "Pneumothorax": 0.8887,
    "Consolidation": 0.7901,
    "Edema": 0.8878,
    "Emphysema": 0.9371,
    "Fibrosis": 0.8047,
    "Pleural_Thickening": 0.8062,
    "Hernia": 0.9164,
}


def parse_finding_labels(text: str) -> list[str]:
    """Split Data_Entry's `Finding Labels` ("A|B" or "No Finding") into known findings."""
    names = [part.strip() for part in str(text).split("|")]
    unknown = [n for n in names if n and n != NO_FINDING and n not in FINDINGS]
    if unknown:
        raise ValueError(f"Unknown finding label(s): {', '.join(unknown)}.")
    return [n for n in FINDINGS if n in names]
