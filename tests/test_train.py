"""Training end to end on a synthetic ChestX-ray14 folder: reader -> cache -> augment -> DenseNet -> artifact.

The synthetic images carry planted findings (a bright disc = Atelectasis, a bright horizontal bar =
Cardiomegaly; the other 12 labels are random noise), so a short CPU run must learn the planted classes.
Images are 96 px and the network sees 32-px crops of a 37-px cache, which keeps every run to seconds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.bench.train import bench_training
from core.inference.artifact import read_artifact
from core.labels import FINDINGS, NO_FINDING
from core.paths import BUNDLED_MODEL_DIR
from core.training import (
    STATE_FILE,
    SettingsError,
    TrainConfig,
    TrainingCancelled,
    TrainingError,
    TrainProgress,
    TrainSettings,
    load_train_state,
    train,
)

IMAGE_PX = 96
CROP = 32
DISC, BAR = FINDINGS[0], FINDINGS[1]  # Atelectasis, Cardiomegaly


def synthetic_image(rng: np.random.Generator, disc: bool, bar: bool) -> np.ndarray:
    pixels = rng.normal(70, 18, size=(IMAGE_PX, IMAGE_PX))
    yy, xx = np.mgrid[:IMAGE_PX, :IMAGE_PX]
    if disc:
        cy, cx = rng.integers(30, 66, size=2)
        pixels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 12**2] += 140
    if bar:
        top = rng.integers(20, 70)
        pixels[top : top + 8, 12:84] += 140
    return np.clip(pixels, 0, 255).astype(np.uint8)


def make_synthetic_dataset(root: Path, n_train_val: int = 96, n_test: int = 8, seed: int = 0) -> Path:
    """An official-layout folder: images/, Data_Entry CSV, split lists, BBox_List for the test images.

    One image per patient. Test images all have a disc (Atelectasis) and its box.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows, boxes, train_val, test = [], [], [], []
    for i in range(n_train_val + n_test):
        is_test = i >= n_train_val
        index = f"{i + 1:08d}_000.png"
        disc = True if is_test else bool(i % 2)
        bar = bool(rng.random() < 0.4)
        noise = [FINDINGS[c] for c in range(2, len(FINDINGS)) if rng.random() < 0.15]
        findings = [name for name, on in ((DISC, disc), (BAR, bar)) if on] + noise
        pixels = synthetic_image(rng, disc, bar and not is_test)
        if is_test:  # a disc at a known place, and its box in BBox_List's 1024-px coordinates
            pixels = synthetic_image(rng, False, False)
            yy, xx = np.mgrid[:IMAGE_PX, :IMAGE_PX]
            pixels[(yy - 40) ** 2 + (xx - 56) ** 2 <= 12**2] = 230
            scale = 1024 / IMAGE_PX
            boxes.append(f"{index},{DISC},{44 * scale},{28 * scale},{24 * scale},{24 * scale},,,")
            findings = [DISC]
        Image.fromarray(pixels).save(root / "images" / index)
        label_text = "|".join(findings) or NO_FINDING
        rows.append(f"{index},{label_text},0,{i + 1},50,M,PA,{IMAGE_PX},{IMAGE_PX},0.14,0.14")
        (test if is_test else train_val).append(index)
    header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")  # fmt: skip
    (root / "Data_Entry_2017_v2020.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    (root / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,,,\n" + "\n".join(boxes) + "\n"
    )
    return root


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic-cxr14"))


def small_config(data: Path, out: Path, **overrides) -> TrainConfig:
    """A fast run; `overrides` may name TrainSettings fields (epochs, batch_size...) or TrainConfig ones."""
    settings = dict(epochs=4, batch_size=16, image_size=CROP, val_fraction=0.25, patience=None)
    options = dict(data_dir=data, out_dir=out, device="cpu", cache_dir=out.parent / "cache",
                   workers=1, threads=1)  # fmt: skip
    names = set(TrainSettings().to_dict())
    settings.update({k: v for k, v in overrides.items() if k in names})
    options.update({k: v for k, v in overrides.items() if k not in names})
    return TrainConfig(settings=TrainSettings(**settings), **options)


def write_labels_table(data: Path, path: Path, exclude: list[str]) -> Path:
    """The NLP labels, except Hernia := the planted disc (so only a model trained on this table learns
    Hernia), and an exclude column marking `exclude`."""
    import pandas as pd

    from core.data.dataset import load_chestxray14

    entries = load_chestxray14(data).entries
    table = entries[["image_index", *FINDINGS]].copy()
    table["Hernia"] = table[DISC]
    table["exclude"] = table["image_index"].isin(exclude).astype(int)
    pd.DataFrame(table).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def trained(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """One short run with a labels table and an exclusion list; returns (artifact, progress events)."""
    work = tmp_path_factory.mktemp("trained")
    train_val = (synthetic_data / "train_val_list.txt").read_text().split()
    table = write_labels_table(synthetic_data, work / "labels.csv", exclude=train_val[:3])
    (work / "exclude.txt").write_text("# left out by review\n" + "\n".join(train_val[3:5]) + "\n")
    events: list[TrainProgress] = []
    config = small_config(synthetic_data, work / "models" / "synthetic", labels_table=table,
                          exclude=work / "exclude.txt", name="synthetic-test")  # fmt: skip
    artifact = train(config, progress=events.append)
    return artifact, events, config


def test_training_learns_the_planted_findings(trained) -> None:
    artifact, _, _ = trained
    history = artifact.card["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    last = history[-1]["val_auroc"]
    # The disc (Data_Entry label) and Hernia (planted through the labels table only) are learnt...
    assert last[DISC] > 0.9
    assert last["Hernia"] > 0.8
    # ...while the 11 labels that are pure noise stay far below.
    noise = [v for k, v in last.items() if k not in (DISC, BAR, "Hernia") and v is not None]
    assert np.mean(noise) < 0.8
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_card_records_what_was_done(trained, synthetic_data: Path) -> None:
    artifact, _, config = trained
    card = read_artifact(artifact.path).card
    assert card["name"] == "synthetic-test"
    assert card["weights_dtype"] == "float16"
    provenance = card["provenance"]
    data = provenance["data"]
    # The dataset by name and folder name; the run's files (outside the dataset here) by their names.
    assert data["dataset"] == "ChestX-ray14" and data["folder_name"] == synthetic_data.name
    assert data["labels_table"] == "labels.csv" and data["exclude_list"] == "exclude.txt"
    assert provenance["exclusions"]["sources"] == ["labels.csv (exclude column)", "exclude.txt"]
    assert provenance["settings"] == config.settings.to_dict()
    # 96 train_val images, 5 excluded (3 by the table's exclude column, 2 by the list).
    assert provenance["exclusions"]["count"] == 5
    assert data["n_train_images"] + data["n_val_images"] == 91
    assert data["n_train_patients"] == data["n_train_images"]  # one image per patient
    assert "labels.csv" in provenance["label_source"]
    assert provenance["init"] == "random" and provenance["parent"] is None
    assert provenance["device"].startswith("CPU")
    assert provenance["hyperparameters"]["lr"] == pytest.approx(1e-3)
    assert provenance["hyperparameters"]["image_size"] == CROP
    assert card["input"]["crop"] == CROP and card["input"]["resize_shorter_side"] == config.cache_size
    assert set(card["thresholds"]) == set(FINDINGS)
    assert all(0.0 <= t <= 1.0 for t in card["thresholds"].values())
    val = card["metrics"]["val"]
    assert val["n_images"] == data["n_val_images"]
    assert val["epoch"] == provenance["best_epoch"]
    best = max(card["history"], key=lambda h: h["val_mean_auroc"])
    assert val["mean_auroc"] == pytest.approx(best["val_mean_auroc"])
    for entry in card["history"]:
        assert {"train_loss", "val_loss", "val_auroc", "val_mean_auroc", "lr", "seconds"} <= set(entry)
    assert "random initialisation" in card["description"]
    json.dumps(card, allow_nan=False)
    # Without --keep-work the work folder (train_state.pt) is gone after success.
    assert not config.work_dir.exists()


def test_progress_events(trained) -> None:
    _, events, _ = trained
    phases = {e.phase for e in events}
    assert {"cache", "train", "validate", "epoch", "done"} <= phases
    steps = [e for e in events if e.phase == "train" and e.step > 0]
    assert all(e.steps_per_epoch >= e.step and e.device.startswith("CPU") for e in steps)
    assert all(e.loss is not None and e.images_per_s > 0 for e in steps)
    # lr starts at 1e-3; ReduceLROnPlateau may divide it by 10 after two epochs without a lower val loss.
    assert all(e.lr == pytest.approx(1e-3) for e in steps if e.epoch == 1)
    assert all(any(e.lr == pytest.approx(1e-3 * 0.1**k) for k in range(4)) for e in steps)
    assert steps[-1].images_seen > steps[0].images_seen
    epoch_events = [e for e in events if e.phase == "epoch"]
    assert [e.epoch for e in epoch_events] == [1, 2, 3, 4]
    assert all(e.val_auroc is not None and e.val_loss is not None for e in epoch_events)
    assert epoch_events[-1].eta_s == 0.0 and epoch_events[0].eta_s > 0


def test_cancel_then_resume_from_an_artifact(trained, synthetic_data: Path, tmp_path: Path) -> None:
    """Fine-tune the trained model; cancel at the start of epoch 2; resume and finish epoch 2."""
    parent, _, _ = trained
    # No image size and no base_crop: train() keeps the parent's crop itself.
    config = small_config(synthetic_data, tmp_path / "finetuned", epochs=2, init="artifact",
                          base_model=parent.path, image_size=None)  # fmt: skip
    assert config.base_crop is None
    seen: list[TrainProgress] = []
    with pytest.raises(TrainingCancelled, match="epoch 1 is saved"):
        train(config, seen.append, should_cancel=lambda: any(e.epoch == 2 for e in seen))
    assert not config.out_dir.exists()
    state = load_train_state(config.work_dir)
    assert state is not None and state["epoch"] == 1 and len(state["history"]) == 1
    assert torch.load(config.work_dir / STATE_FILE, map_location="cpu", weights_only=True)["epoch"] == 1

    # Settings that would make the saved state meaningless are refused on resume.
    with pytest.raises(TrainingError, match="batch_size"):
        train(small_config(synthetic_data, tmp_path / "finetuned", epochs=2, init="artifact",
                           base_model=parent.path, image_size=None, batch_size=8, resume=True))  # fmt: skip

    resumed: list[TrainProgress] = []
    config.resume = True
    artifact = train(config, resumed.append)
    assert any(e.phase == "message" and "Resuming after epoch 1" in e.message for e in resumed)
    assert {e.epoch for e in resumed if e.phase in ("train", "epoch")} == {2}
    history = artifact.card["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0] == state["history"][0]
    provenance = artifact.card["provenance"]
    assert provenance["init"] == "artifact" and provenance["parent"] == "synthetic-test"
    assert provenance["hyperparameters"]["lr"] == pytest.approx(1e-4)  # fine-tuning default
    assert artifact.card["input"]["crop"] == parent.card["input"]["crop"] == CROP
    assert provenance["settings"]["image_size"] is None


def test_cancel_before_the_first_step_saves_nothing(synthetic_data: Path, tmp_path: Path) -> None:
    config = small_config(synthetic_data, tmp_path / "never", epochs=1)
    with pytest.raises(TrainingCancelled, match="nothing was saved"):
        train(config, should_cancel=lambda: True)
    assert not config.out_dir.exists()
    assert load_train_state(config.work_dir) is None


def test_configuration_errors_are_sentences(synthetic_data: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="--base-model"):
        train(small_config(synthetic_data, tmp_path / "x", init="artifact"))
    with pytest.raises(SettingsError, match="validation fraction must be between"):
        small_config(synthetic_data, tmp_path / "x", val_fraction=0.0)
    from core.data.dataset import load_chestxray14, split_patientwise

    val_ids = split_patientwise(load_chestxray14(synthetic_data), 0.25, 0)["val"]
    (tmp_path / "no-val.txt").write_text("\n".join(val_ids) + "\n")
    with pytest.raises(TrainingError, match="validation split is empty"):
        train(small_config(synthetic_data, tmp_path / "x", exclude=tmp_path / "no-val.txt"))
    with pytest.raises(TrainingError, match="does not exist"):
        train(small_config(tmp_path / "nowhere", tmp_path / "x"))


def _absolute_paths(value, where: str = "card") -> list[str]:
    """Every string value of a JSON document that is, or holds, an absolute path."""
    if isinstance(value, dict):
        return [hit for key, item in value.items() for hit in _absolute_paths(item, f"{where}.{key}")]
    if isinstance(value, list):
        return [hit for i, item in enumerate(value) for hit in _absolute_paths(item, f"{where}[{i}]")]
    if isinstance(value, str):
        words = [word.strip("'\"()[]{},;") for word in value.split()]
        # /dir..., ~/dir..., C:\dir...: a bare "/" (as in "uint8 / 255") is no path.
        if any(re.match(r"(~?/|[A-Za-z]:[\\/])[\w.-]", word) for word in words):
            return [f"{where}: {value}"]
    return []


def test_no_card_holds_an_absolute_path(trained, synthetic_data: Path) -> None:
    """A card travels between machines: the dataset by name, files relative to it, never this machine."""
    artifact, _, config = trained
    card = json.loads((artifact.path / "model.json").read_text())
    assert _absolute_paths(card) == []
    text = json.dumps(card)
    for folder in (synthetic_data.resolve(), config.out_dir.parent.resolve()):
        assert str(folder) not in text
    assert _absolute_paths({"a": ["see /etc/passwd", "1 / 2"], "b": "C:\\data"}) == [  # the scan works
        "card.a[0]: see /etc/passwd",
        "card.b: C:\\data",
    ]

    shipped = json.loads((BUNDLED_MODEL_DIR / "model.json").read_text())
    assert _absolute_paths(shipped) == []
    assert shipped["provenance"]["data"]["dataset"] == "ChestX-ray14"
    assert shipped["provenance"]["data"]["folder_name"] == "chestxray14-sample"


def test_cli_fine_tunes_with_the_settings_flags(trained, synthetic_data: Path, tmp_path: Path, capsys):
    """`python -m core train`: flags built from TrainSettings (old names and units kept), the base
    model's crop taken from its card, the settings recorded in the new card."""
    from core.cli.main import main

    parent, _, _ = trained
    out = tmp_path / "cli-tuned"
    code = main(["train", "--data", str(synthetic_data), "--out", str(out), "--init", "artifact",
                 "--base-model", str(parent.path), "--epochs", "1", "--val-fraction", "0.25",
                 "--patience", "0", "--time-budget", "30", "--class-weighting", "--device", "cpu",
                 "--threads", "1", "--workers", "1", "--cache", str(parent.path.parent / "cache"),
                 "--json"])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["model"] == "cli-tuned" and summary["epochs"] == 1
    card = read_artifact(out).card
    assert card["provenance"]["settings"] == {
        **TrainSettings().to_dict(),
        "epochs": 1, "val_fraction": 0.25, "patience": None, "time_budget_s": 1800.0, "class_weighting": True,
    }  # fmt: skip
    assert card["input"]["crop"] == CROP and card["provenance"]["parent"] == "synthetic-test"
    assert card["provenance"]["hyperparameters"]["pos_weight"] is not None


def test_settings_flags_are_checked_against_the_settings_bounds(tmp_path: Path, capsys) -> None:
    from core.cli.main import main

    base = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "x")]
    assert main([*base, "--epochs", "0"]) == 1
    assert capsys.readouterr().err.strip() == "error: The epochs must be between 1 and 500, not 0."
    assert main([*base, "--val-fraction", "0.95"]) == 1
    assert "validation fraction must be between 0.01 and 0.9" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # not a number: an argparse usage error
        main([*base, "--batch-size", "many"])
    assert exit_info.value.code == 2
    with pytest.raises(SettingsError, match="batch size"):
        small_config(tmp_path, tmp_path / "x", batch_size=0)


def test_the_seed_makes_runs_reproducible(synthetic_data: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    def weights(name: str, seed: int) -> dict:
        config = small_config(
            synthetic_data, tmp_path / name, epochs=1, seed=seed, cache_dir=tmp_path / "cache"
        )
        train(config)
        return load_file(str(tmp_path / name / "model.safetensors"))

    first, again, other = weights("a", 3), weights("b", 3), weights("c", 4)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)
    assert read_artifact(tmp_path / "a").card["provenance"]["settings"]["seed"] == 3


def test_epoch_shards_cover_every_image_once() -> None:
    from core.distributed import DistInfo, shard_epoch_order

    shards = [shard_epoch_order(10, 3, 0, DistInfo(rank=r, world_size=4)) for r in range(4)]
    assert len({len(s) for s in shards}) == 1  # equal step counts on every rank
    assert set(np.concatenate(shards)) == set(range(10))
    assert sorted(shard_epoch_order(10, 3, 0, DistInfo())) == list(range(10))
    assert not np.array_equal(
        shard_epoch_order(10, 3, 0, DistInfo()), shard_epoch_order(10, 4, 0, DistInfo())
    )


@pytest.mark.slow
def test_bench_training_on_cpu() -> None:
    from argparse import Namespace

    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # a full 224-px DenseNet step: one thread copes best with a busy shared CPU
    try:
        result = bench_training(Namespace(batch_size=1, images=1, device="cpu", data=None, json=True))
    finally:
        torch.set_num_threads(previous)
    assert result["device"].startswith("CPU") and result["image_size"] == 224
    assert result["images_per_s"] > 0
    # images_per_s is rounded to 2 decimals: allow for that rounding on a slow CPU.
    rounding = 0.005 / result["images_per_s"]
    assert result["epoch_112k_s"] == pytest.approx(112_120 / result["images_per_s"], rel=0.01 + rounding)
