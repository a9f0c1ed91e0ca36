"""Training end to end on a synthetic ChestX-ray14 folder: reader -> cache -> augment -> DenseNet -> artifact.

The synthetic images carry planted findings (a bright disc = Atelectasis, a bright horizontal bar =
Cardiomegaly; the other 12 labels are random noise), so a short CPU run must learn the planted classes.
Images are 96 px and the network sees 48-px crops of a 55-px cache, which keeps every run to seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.artifact import read_artifact
from core.labels import FINDINGS, NO_FINDING
from core.train import (
    STATE_FILE,
    TrainConfig,
    TrainingCancelled,
    TrainingError,
    TrainProgress,
    bench_training,
    load_train_state,
    read_labels_table,
    train,
)

IMAGE_PX = 96
CROP = 48
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
    settings = dict(
        data_dir=data, out_dir=out, epochs=4, batch_size=16, image_size=CROP, val_fraction=0.25, seed=0,
        device="cpu", cache_dir=out.parent / "cache", patience=None, workers=1,
    )  # fmt: skip
    settings.update(overrides)
    return TrainConfig(**settings)
