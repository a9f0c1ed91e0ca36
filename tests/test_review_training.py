"""How review outcomes reach training: the Uncertain policy (a TrainSettings field; "ignore" masks the
loss) and the disputed-image policy of the fine-tune's labels table (jobs.labels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from core.labels import FINDINGS
from core.training import TrainSettings
from core.training.config import SettingsError
from core.training.data import prepare_data, uncertain_matrix
from core.training.step import MaskedBCEWithLogits, positive_weights
from db.engine import session_scope
from db.reviews import adjudicate, save_review
from jobs.labels import write_labels_table
from jobs.params import FineTuneParams, JobParamsError
from tests.test_train import make_synthetic_dataset, small_config


def _label(*positive: str) -> dict[str, bool]:
    return {f: f in positive for f in FINDINGS}


def test_masked_loss_ignores_only_the_uncertain_targets() -> None:
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 14), (torch.rand(6, 14) > 0.5).float()
    weights = torch.rand(14) + 0.5
    assert torch.isclose(
        MaskedBCEWithLogits(weights)(logits, targets),
        nn.BCEWithLogitsLoss(pos_weight=weights)(logits, targets),
    )
    masked = targets.clone()
    masked[0, 3] = masked[2, 7] = -1.0
    known = masked >= 0
    expected = nn.BCEWithLogitsLoss(reduction="none")(logits, targets)[known].mean()
    assert torch.isclose(MaskedBCEWithLogits()(logits, masked), expected)
    y = np.array([[1, 0], [-1, 0], [0, 1], [1, -1]], dtype=np.float32)
    assert positive_weights(y).tolist() == [1.0 / 2.0, 2.0 / 1.0]  # -1 counts as neither


def test_uncertain_policy_is_a_checked_training_setting() -> None:
    assert TrainSettings().uncertain_policy == "ignore"
    assert TrainSettings.from_dict({"uncertain_policy": "positive"}).uncertain_policy == "positive"
    with pytest.raises(SettingsError, match="must be one of ignore, negative, positive"):
        TrainSettings(uncertain_policy="maybe")
    with pytest.raises(JobParamsError, match="disputed-image policy"):
        FineTuneParams(disputed_policy="coin toss")
    assert FineTuneParams.from_dict(FineTuneParams(disputed_policy="nlp").to_dict()).disputed_policy == "nlp"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("uncertain-cxr14"), n_train_val=24, n_test=4)


@pytest.mark.parametrize(("policy", "value"), [("ignore", -1.0), ("negative", 0.0), ("positive", 1.0)])
def test_prepare_data_applies_the_uncertain_policy(
    synthetic: Path, tmp_path: Path, policy: str, value: float
):
    from core.data.dataset import load_chestxray14

    entries = load_chestxray14(synthetic).entries
    table = entries[["image_index", *FINDINGS]].copy()
    table["exclude"] = 0
    table["uncertain"] = ""
    table.loc[table.index[:24], "uncertain"] = "Mass|Edema"  # every train_val image: Mass and Edema unsure
    path = tmp_path / "labels.csv"
    table.to_csv(path, index=False)
    assert uncertain_matrix(path, ["00000001_000.png"])[0].nonzero()[0].tolist() == [4, 9]
    config = small_config(synthetic, tmp_path / "out", labels_table=path, uncertain_policy=policy)
    data = prepare_data(config)
    mass, edema = FINDINGS.index("Mass"), FINDINGS.index("Edema")
    assert (data.y_train[:, [mass, edema]] == value).all()
    assert (data.y_val[:, [mass, edema]] == (1.0 if policy == "positive" else 0.0)).all()
    assert data.n_uncertain == 2 * (len(data.train_ids) + len(data.val_ids))
    assert set(np.unique(data.y_train[:, 0])) <= {0.0, 1.0}  # other findings untouched


@pytest.mark.parametrize("policy", ["exclude", "majority", "nlp", "uncertain"])
def test_disputed_images_follow_the_fine_tune_policy(engine, make_user, make_images, tmp_path: Path, policy):
    alice, bob, admin = make_user("alice"), make_user("bob"), make_user("boss", role="admin")
    disputed, settled = make_images(2, nlp={0: ["Mass"], 1: ["Mass"]})
    with session_scope(engine) as session:
        for image_id in (disputed, settled):
            save_review(
                session, image_id, alice, _label("Mass", "Edema"), False, False, "", None, blinded=True
            )
            save_review(session, image_id, bob, _label("Edema"), False, False, "", None, blinded=True)
        adjudicate(session, settled, admin, _label("Edema"), False, False, "", None, reason="no mass")
    with session_scope(engine, read_only=True) as session:
        snapshot = write_labels_table(
            session, "effective", tmp_path, tmp_path / "labels.csv", disputed_policy=policy
        )
    table = pd.read_csv(tmp_path / "labels.csv", keep_default_na=False).set_index("image_index")
    first, second = sorted(table.index)  # the disputed image was created first
    assert snapshot["disputed_policy"] == policy and snapshot["n_disputed"] == 1
    assert table.loc[second, "Mass"] == 0 and table.loc[second, "exclude"] == 0  # adjudicated: as decided
    row = table.loc[first]
    assert row["disputed"] == "Mass" and row["Edema"] == 1  # agreed findings keep the readers' answer
    expected = {
        "exclude": (0, 1, ""), "majority": (0, 0, ""), "nlp": (1, 0, ""), "uncertain": (0, 0, "Mass"),
    }[policy]  # fmt: skip
    assert (row["Mass"], row["exclude"], row["uncertain"]) == expected
