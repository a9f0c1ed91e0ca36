"""Evaluation of an artifact on a split: report keys, AUROC equal to sklearn's on the same predictions,
localization on boxed images, thresholds from the card, the CLI's last-line JSON, and the real sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from core.data.dataset import labels_matrix, load_chestxray14
from core.evaluation.evaluate import EvaluationError, evaluate, split_images
from core.evaluation.metrics import image_set_fingerprint
from core.inference.artifact import default_input_spec, new_card, read_artifact, save_artifact
from core.inference.models import create_model
from core.inference.predictor import Predictor
from core.labels import FINDINGS
from tests.test_train import make_synthetic_dataset

REPORT_KEYS = {
    "model", "split", "n_images", "auroc", "auroc_ci", "mean_auroc", "mean_auroc_ci", "thresholds",
    "precision", "recall", "mean_precision", "mean_recall", "localization", "roc", "pr",
    "youden_on_this_split", "thresholds_source", "split_info",
}  # fmt: skip


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("eval-data"), n_train_val=40, n_test=6, seed=1)


@pytest.fixture(scope="module")
def model_dir(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained model (evaluation does not care how good it is) with a card like core.training writes."""
    import torch

    torch.manual_seed(0)
    ds = load_chestxray14(synthetic_data)
    recipe = {"val_fraction": 0.25, "seed": 0}
    card = {"provenance": {"data": {"split": recipe}}}
    val_ids, _ = split_images(ds, "val", card)
    recipe["val_images_sha256"] = image_set_fingerprint(val_ids)
    thresholds = {label: 0.3 + 0.01 * i for i, label in enumerate(FINDINGS)}
    card = new_card(
        "eval-test", input={**default_input_spec(), "resize_shorter_side": 73, "crop": 64},
        thresholds=thresholds, thresholds_source="test thresholds", provenance={"data": {"split": recipe}},
    )  # fmt: skip
    out = tmp_path_factory.mktemp("eval-model") / "eval-test"
    save_artifact(create_model("densenet121"), out, card)
    return out


def _predictions(model: Path, data: Path, ids: list[str]) -> np.ndarray:
    from core.imaging.reader import read_xray_file

    ds = load_chestxray14(data)
    paths = ds.image_paths(ids)
    predictor = Predictor.from_path(model, backend="torch", device="cpu")
    predictions = predictor.predict([read_xray_file(paths[i]).pixels for i in ids])
    return np.array([[p.probabilities[label] for label in FINDINGS] for p in predictions])


def test_val_report_matches_sklearn(model_dir: Path, synthetic_data: Path) -> None:
    report = evaluate(model_dir, synthetic_data, "val", n_boot=50, backend="torch", device="cpu")
    assert REPORT_KEYS <= set(report)
    json.dumps(report, allow_nan=False)
    ds = load_chestxray14(synthetic_data)
    ids, info = split_images(ds, "val", read_artifact(model_dir).card)
    assert report["split_info"]["matches_training"] is True and info["matches_training"] is True
    assert report["n_images"] == len(ids) == 10
    assert report["image_set_sha256"] == image_set_fingerprint(ids)

    y = labels_matrix(ds, ids)
    probabilities = _predictions(model_dir, synthetic_data, ids)
    checked = 0
    for c, label in enumerate(FINDINGS):
        if 0 < y[:, c].sum() < len(ids):
            assert report["auroc"][label] == pytest.approx(
                roc_auc_score(y[:, c], probabilities[:, c]), abs=1e-6
            )
            checked += 1
        else:
            assert report["auroc"][label] is None
    assert checked >= 2
    defined = [v for v in report["auroc"].values() if v is not None]
    assert report["mean_auroc"] == pytest.approx(np.mean(defined))
    # Default thresholds: the model card's (chosen on validation), with Youden on this split beside them.
    assert report["thresholds"] == pytest.approx(read_artifact(model_dir).thresholds)
    assert "model card" in report["thresholds_source"]
    assert set(report["youden_on_this_split"]["thresholds"]) == set(FINDINGS)
    assert report["localization"] is None  # no val image has a box


def test_test_split_localization_and_youden_option(model_dir: Path, synthetic_data: Path) -> None:
    report = evaluate(
        model_dir, synthetic_data, "test", n_boot=0, thresholds="youden", backend="torch", device="cpu"
    )
    assert report["n_images"] == 6
    overall = report["localization"]["overall"]
    assert overall["n_boxes"] == 6 and report["n_localization_boxes"] == 6
    assert 0.0 <= overall["pointing_accuracy"] <= 1.0
    assert set(report["localization"]["per_label"]) == {FINDINGS[0]}
    assert report["thresholds_source"].startswith("Youden")
    assert "model_card_thresholds" in report
    # Every test image is positive for the disc only: no class has both outcomes, so AUROC is undefined.
    assert report["mean_auroc"] is None


def test_labels_table_and_exclusions(model_dir: Path, synthetic_data: Path, tmp_path: Path) -> None:
    from tests.test_train import write_labels_table

    ds = load_chestxray14(synthetic_data)
    ids, _ = split_images(ds, "val", read_artifact(model_dir).card)
    table = write_labels_table(synthetic_data, tmp_path / "labels.csv", exclude=ids[:2])
    report = evaluate(
        model_dir, synthetic_data, "val", labels_table=table, n_boot=0, backend="torch", device="cpu"
    )
    assert report["n_excluded"] == 2 and report["n_images"] == len(ids) - 2
    assert "labels.csv" in report["labels_source"]
    # The table's Hernia column is the planted disc: its prevalence follows the table, not Data_Entry.
    assert report["prevalence"]["Hernia"] == pytest.approx(report["prevalence"][FINDINGS[0]])


def test_unknown_split_and_model_are_sentences(model_dir: Path, synthetic_data: Path, tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="Unknown split"):
        evaluate(model_dir, synthetic_data, "holdout", backend="torch")
    with pytest.raises(EvaluationError, match="not a model folder"):
        evaluate(tmp_path, synthetic_data, "test", backend="torch")


def test_cli_prints_the_report_as_its_last_line(model_dir: Path, synthetic_data: Path, capsys) -> None:
    from core.cli.main import main

    argv = ["evaluate", "--model", str(model_dir), "--data", str(synthetic_data), "--split", "val", "--json",
            "--n-boot", "20", "--backend", "torch", "--write-card"]  # fmt: skip
    assert main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    report = json.loads(last)
    assert REPORT_KEYS <= set(report) and report["split"] == "val"
    stored = read_artifact(model_dir).card["metrics"]["val"]
    assert stored["mean_auroc"] == pytest.approx(report["mean_auroc"]) and stored["n_images"] == 10
    assert "roc" not in stored  # curves stay out of the card
    # The report names this machine's folder; the card, which travels, only the dataset and folder name.
    assert report["data_dir"] == str(synthetic_data.resolve())
    assert stored["dataset"] == "ChestX-ray14" and stored["folder_name"] == synthetic_data.name
    assert str(synthetic_data.resolve()) not in json.dumps(stored)


def test_real_sample_test_split(sample_dir: Path, tmp_path: Path) -> None:
    """The shared sample's 4 official test images all have NIH boxes: localization scores every box."""
    out = save_artifact(create_model("densenet121"), tmp_path / "random", new_card("random")).path
    report = evaluate(out, sample_dir, "test", n_boot=0, backend="torch", device="cpu")
    assert report["n_images"] == 4
    ds = load_chestxray14(sample_dir)
    test_ids = set(ds.entries.index[ds.entries["split"] == "test"])
    n_boxes = int(ds.boxes["image_index"].isin(test_ids).sum())
    assert report["localization"]["overall"]["n_boxes"] == n_boxes > 0


def test_suite_predicts_each_split_once_for_every_label_source(
    model_dir: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    """One inference pass per split serves both label sources, with the same figures as one evaluate()
    per (split, labels); thresholds are chosen on val and reported on test; predictions are stored."""
    from core.evaluation.calibration import expected_calibration_error
    from core.evaluation.metrics import youden_thresholds
    from core.evaluation.prediction_store import compare_stored, load_stored, save_stored
    from core.evaluation.suite import evaluate_suite
    from tests.test_train import write_labels_table

    ds = load_chestxray14(synthetic_data)
    val_ids, _ = split_images(ds, "val", read_artifact(model_dir).card)
    table = write_labels_table(synthetic_data, tmp_path / "labels.csv", exclude=val_ids[:2])
    suite = evaluate_suite(model_dir, synthetic_data, {"nlp": None, "reviewed": table}, n_boot=30,
                           backend="torch", device="cpu")  # fmt: skip
    assert suite.errors == []
    assert suite.n_inference_passes == 2 and suite.n_images_predicted == 6 + len(val_ids)
    for labels, labels_table in (("nlp", None), ("reviewed", table)):
        single = evaluate(model_dir, synthetic_data, "val", labels_table=labels_table, n_boot=30,
                          backend="torch", device="cpu")  # fmt: skip
        report = suite.reports[labels]["val"]
        assert report["n_images"] == single["n_images"] and report["n_excluded"] == single["n_excluded"]
        assert report["auroc"] == pytest.approx(single["auroc"], abs=1e-6)
        assert report["n_pos"] == single["n_pos"] and report["too_few"] == single["too_few"]
    assert suite.reports["reviewed"]["val"]["n_images"] == len(val_ids) - 2

    val, test = suite.reports["nlp"]["val"], suite.reports["nlp"]["test"]
    stored = suite.stored
    chosen = youden_thresholds(stored["val"].truth["nlp"], stored["val"].probabilities, FINDINGS)
    points = test["operating_points"]
    assert points["chosen_on"]["split"] == "val" and points["reported_on"]["split"] == "test"
    assert {k: v for k, v in points["thresholds"].items() if v is not None} == pytest.approx(
        {k: v for k, v in chosen.items() if v is not None}, abs=1e-6
    )
    assert "chosen by Youden's J on val" in test["thresholds_source"]
    assert "optimistic" in val["thresholds_source"]
    # Calibration, temperature (fitted on val) and subgroups ride along, computed on the same numbers.
    c = FINDINGS.index("Atelectasis")
    assert val["calibration"]["classes"]["Atelectasis"]["ece"] == pytest.approx(
        expected_calibration_error(stored["val"].truth["nlp"][:, c], stored["val"].probabilities[:, c]),
        abs=1e-6,
    )
    assert test["temperature"]["split"] == "val" and test["temperature"]["temperature"] > 0
    assert set(val["subgroups"]) >= {"sex", "age_band", "view", "view_only_baseline"}
    assert all(n < 10 for n in val["n_pos"].values()) and val["mean_auroc_enough"] is None  # 10 images

    path = save_stored(tmp_path / "predictions.npz", stored)
    loaded = load_stored(path)
    assert loaded["val"].ids == stored["val"].ids
    assert np.array_equal(loaded["val"].truth["reviewed"], stored["val"].truth["reviewed"])
    assert loaded["val"].included["reviewed"].sum() == len(val_ids) - 2
    same = compare_stored(loaded["val"], loaded["val"], "nlp")
    assert same["n_images"] == len(val_ids) and same["classes"]
    assert all(row["delta"] == 0 and row["p"] == 1.0 for row in same["classes"].values())


def test_a_report_counts_positives_and_leaves_too_few_out_of_the_mean(
    model_dir: Path, synthetic_data: Path
) -> None:
    report = evaluate(model_dir, synthetic_data, "val", n_boot=20, backend="torch", device="cpu")
    assert report["n_pos"] == {label: int(report["support"][label]) for label in FINDINGS}
    assert set(report["too_few"]) == {f for f in FINDINGS if report["auroc"][f] is not None}
    assert report["mean_auroc_enough"] is None and "left out as too few" in report["mean_note"]


def test_the_suite_reads_the_image_cache_instead_of_the_files(
    model_dir: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    """With a cache folder, every split image is decoded once into it and the network reads it (boxed test
    images excepted): the same probabilities, and a file damaged after caching no longer matters."""
    import shutil

    from core.data.cache import ImageCache
    from core.evaluation.suite import evaluate_suite

    data = Path(shutil.copytree(synthetic_data, tmp_path / "data"))
    plain = evaluate_suite(model_dir, data, {"nlp": None}, n_boot=30, backend="torch", device="cpu")
    ds = load_chestxray14(data)
    card = read_artifact(model_dir).card
    n_images = sum(len(split_images(ds, split, card)[0]) for split in ("test", "val"))
    folder, ticks = tmp_path / "cache", []
    tick = lambda done, total: ticks.append((done, total))  # noqa: E731
    cached = evaluate_suite(model_dir, data, {"nlp": None}, n_boot=30, backend="torch", device="cpu",
                            cache_folder=folder, cache_progress=tick)  # fmt: skip
    assert ticks[-1] == (n_images, n_images) and len(ImageCache.open(folder)) == n_images
    for split in ("test", "val"):
        assert cached.stored[split].ids == plain.stored[split].ids
        np.testing.assert_allclose(cached.stored[split].probabilities, plain.stored[split].probabilities,
                                   atol=1e-5)  # fmt: skip
    assert cached.reports["nlp"]["test"]["localization"] == plain.reports["nlp"]["test"]["localization"]

    val_ids, _ = split_images(ds, "val", card)
    ds.image_paths(val_ids[:1])[val_ids[0]].write_bytes(b"not a PNG any more")
    ticks.clear()
    again = evaluate_suite(model_dir, data, {"nlp": None}, n_boot=30, backend="torch", device="cpu",
                           cache_folder=folder, cache_progress=tick)  # fmt: skip
    assert ticks == [(0, 0)]  # nothing left to decode
    assert again.stored["val"].ids == plain.stored["val"].ids  # the damaged file was read from the cache
    np.testing.assert_allclose(again.stored["val"].probabilities, plain.stored["val"].probabilities,
                               atol=1e-5)  # fmt: skip
    without = evaluate_suite(model_dir, data, {"nlp": None}, n_boot=30, backend="torch", device="cpu")
    assert val_ids[0] not in without.stored["val"].ids  # without the cache it is unreadable
