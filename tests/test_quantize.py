"""INT8 (core.inference.quantize, `python -m core quantize`): calibrated on train_val images read as
inference reads them, judged on held-out test images, and used only where accepted and faster.

The model is a random-initialised DenseNet-121 (no pretrained weights here) quantized with plain
post-training quantization on a few images; NNCF's accuracy control is the command's default and takes
minutes, so it is measured by scripts/bench_int8.py instead of here.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from core.cli.quantize_command import split_sets
from core.imaging.reader import read_xray_file
from core.inference.artifact import new_card, read_artifact, save_artifact
from core.inference.models import create_model
from core.inference.openvino_backend import MAX_PROBABILITY_DIFFERENCE, OpenVinoBackend, QuantizedGraph
from core.inference.predictor import Predictor
from core.inference.quantize import INT8_XML, QuantizationError, quantize_artifact, usable_int8_graph
from core.labels import FINDINGS

pytestmark = pytest.mark.slow  # a conversion and a quantization: ~30 s of CPU for the module

N_CALIBRATION, N_VALIDATION = 8, 6


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, sample_dir) -> tuple[Path, dict, list[Path]]:
    """A model folder quantized through the command line, the card's entry, the validation files."""
    from core.cli.main import main

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("int8") / "m"
    save_artifact(create_model(), folder, new_card("int8-test"), half=False)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["quantize", str(folder), "--data", str(sample_dir), "--calibration", str(N_CALIBRATION),
                     "--control", "0", "--validation", str(N_VALIDATION), "--json"])  # fmt: skip
    assert code == 0
    entry = json.loads(out.getvalue().strip().splitlines()[-1])
    _, _, validation = split_sets(sample_dir, N_CALIBRATION, 0, N_VALIDATION)
    return folder, entry, validation


def test_calibration_and_validation_are_patient_disjoint_and_validation_takes_the_test_split(sample_dir):
    import pandas as pd

    calibration, control, validation = split_sets(sample_dir, 20, 10, 15, seed=3)
    names = [{p.name for p in files} for files in (calibration, control, validation)]
    assert [len(n) for n in names] == [20, 10, 15]
    entries = pd.read_csv(sample_dir / "Data_Entry_2017_v2020.csv").set_index("Image Index")
    patients = [set(entries.loc[sorted(n), "Patient ID"]) for n in names]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    test_list = set((sample_dir / "test_list.txt").read_text().split())
    present_test = {p.name for p in (sample_dir / "images").glob("*.png")} & test_list
    assert present_test <= names[2]  # every test image the folder has (4 here), topped up from train_val
    assert not (names[0] | names[1]) & test_list
    assert split_sets(sample_dir, 20, 10, 15, seed=3) == (calibration, control, validation)  # seeded
    assert split_sets(sample_dir, 20, 10, 15, seed=4)[0] != calibration


def test_the_card_records_the_figures_and_they_are_true(quantized):
    folder, entry, validation = quantized
    assert (folder / INT8_XML).is_file() and (folder / INT8_XML).with_suffix(".bin").is_file()
    card = read_artifact(folder).card["int8"]
    assert card == entry and entry["weights_sha256"] == read_artifact(folder).weights_digest()
    assert entry["calibration_images"] == N_CALIBRATION and entry["validation"]["images"] == N_VALIDATION
    assert entry["method"] == "nncf post-training" and entry["fp32_layers"] == 3  # first conv, head, CAM
    figures = entry["validation"]
    assert entry["accepted"] == (
        figures["max_probability_difference"] <= MAX_PROBABILITY_DIFFERENCE
        and figures["cam_mean_difference"] <= 0.01
        and figures["cam_min_correlation"] >= 0.99
    )
    # Recomputed independently: the int8 predictor against plain PyTorch on the same held-out files.
    artifact = read_artifact(folder)
    pixels = [read_xray_file(f).pixels for f in validation]
    int8 = Predictor(artifact, backend="openvino", device="cpu", precision="int8")
    fp32 = Predictor(artifact, backend="torch", device="cpu")

    def probabilities(predictor: Predictor) -> np.ndarray:
        return np.array([[p.probabilities[f] for f in FINDINGS] for p in predictor.predict(pixels)])

    difference = np.abs(probabilities(int8) - probabilities(fp32)).max()
    assert difference > 0  # int8 really ran
    assert difference == pytest.approx(figures["max_probability_difference"], abs=1e-3)


def test_asked_for_int8_it_runs_the_quantized_graph_and_records_the_measurement(quantized):
    folder, _, _ = quantized
    info = Predictor(read_artifact(folder), backend="openvino", device="cpu", precision="int8").backend_info
    decision = info["precision_decision"]
    assert info["precision"] == decision["precision"] == "int8" and decision["requested"] == "int8"
    assert decision["int8_ms"] > 0 and decision["fp32_ms"] > 0
    assert decision["int8_max_probability_difference"] >= 0


def test_only_an_accepted_graph_of_these_very_weights_is_used(quantized, tmp_path):
    folder, entry, _ = quantized
    copy = Path(shutil.copytree(folder, tmp_path / "m"))
    artifact = read_artifact(copy)
    digest = artifact.weights_digest()
    graph = QuantizedGraph(copy / INT8_XML, entry["sha256"])
    assert usable_int8_graph(artifact, digest, accepted_only=False) == graph
    assert (usable_int8_graph(artifact, digest) is not None) == entry["accepted"]
    assert usable_int8_graph(artifact, "0" * 64, accepted_only=False) is None  # other weights
    weights = (copy / INT8_XML).with_suffix(".bin")
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)  # changed since it was validated
    assert usable_int8_graph(read_artifact(copy), digest, accepted_only=False) is None
    with pytest.raises(ValueError, match="no quantized graph"):
        Predictor(read_artifact(copy), backend="openvino", device="cpu", precision="int8")


@pytest.mark.parametrize(("int8_ms", "int8_difference", "expected"),
                         [(9.0, 0.004, "int8"), (9.0, 0.03, "f32"), (34.0, 0.004, "f32")])  # fmt: skip
def test_auto_keeps_int8_only_when_faster_and_within_the_bound(
    int8_ms, int8_difference, expected, quantized, tmp_path, monkeypatch
):
    """The decision path with an int8 candidate and the trial's figures faked; a bf16 candidate (on a
    CPU with BF16) is faked as no faster, so the answer is the same on every CPU."""
    folder, entry, _ = quantized
    monkeypatch.setenv("CHEXNET_HOME", str(tmp_path))  # decide afresh, in a cache of its own

    def trial(self, fp32, candidates):
        assert "int8" in candidates
        faked = {name: (35.0, 0.0) for name in candidates}
        return {**faked, "f32": (35.0, 0.0), "int8": (int8_ms, int8_difference)}

    monkeypatch.setattr(OpenVinoBackend, "_trial", trial)
    artifact = read_artifact(folder)
    graph = QuantizedGraph(folder / INT8_XML, entry["sha256"])
    backend = OpenVinoBackend(lambda: artifact.load_model("cpu"), artifact.crop, cache_key="int8-choice",
                              precision="auto", int8_graph=graph)  # fmt: skip
    decision = backend.info["precision_decision"]
    assert decision["precision"] == expected and backend.info["precision"] == expected
    assert (decision["int8_ms"], decision["int8_max_probability_difference"]) == (int8_ms, int8_difference)


def test_calibration_images_may_not_be_validation_images(quantized):
    folder, _, validation = quantized
    with pytest.raises(QuantizationError, match="validation images are calibration images too"):
        quantize_artifact(read_artifact(folder), validation[:2], validation)
