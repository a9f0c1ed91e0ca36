"""The OOD gate on the real demo model and real NIH images: fit via the CLI, probes refused, X-rays pass.

Kept small (a 40-image fit): `scripts/bench_ood.py` measures the rates on the whole sample.
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from core.imaging.reader import read_xray, read_xray_file
from core.ood.gate import (
    COLOUR_REASON,
    DOCUMENT_REASON,
    NOISE_REASON,
    ORIENTATION_REASON,
    UNIFORM_REASON,
    OodError,
    OodGate,
    check_image,
    colourfulness,
    pixel_checks,
)
from core.ood.probes import blank_probes, document_probes, noise_probes, photo_probes, xray_probes
from core.paths import BUNDLED_MODEL_DIR, SHARED_SAMPLE_DIR

N_FIT = 40


@pytest.fixture(scope="module")
def ood_world(tmp_path_factory, sample_dir):
    """A copy of the demo model and a mini folder: 40 adult train_val images to fit on, the 4 test ones."""
    from core.data.dataset import load_chestxray14
    from tests.mini_dataset import make_mini_dataset

    entries = load_chestxray14(sample_dir).entries
    adults = entries[(entries["split"] == "train_val") & (entries["age"] >= 18)].index.tolist()
    fit_ids = [adults[i] for i in np.random.default_rng(0).choice(len(adults), N_FIT, replace=False)]
    test_ids = entries[entries["split"] == "test"].index.tolist()
    root = tmp_path_factory.mktemp("ood")
    data = make_mini_dataset(root / "data", sample_dir, test=test_ids, train_val=fit_ids)
    model = root / "model"
    shutil.copytree(BUNDLED_MODEL_DIR, model)
    return {"model": model, "data": data, "test_ids": test_ids, "root": root}


@pytest.fixture(scope="module")
def fitted(ood_world):
    from core.cli.main import main

    assert main(["ood", "fit", str(ood_world["model"]), "--data", str(ood_world["data"]), "--json"]) == 0
    return ood_world


def _write(folder, name: str, data: bytes):
    path = folder / name
    path.write_bytes(data)
    return str(path)


def test_fit_stores_a_small_gate_in_the_card(fitted):
    from core.inference.artifact import read_artifact
    from core.ood.gate import stored_gate

    artifact = read_artifact(fitted["model"])
    stored = artifact.card["ood"]
    assert len(json.dumps(stored)) < 200_000
    gate = stored_gate(artifact)
    assert gate is not None and gate.feature_dim == 1024
    assert gate.info["n_images"] == N_FIT and gate.info["split"] == "train_val"
    assert gate.info["weights_sha256"] == artifact.weights_digest()
    assert 0 <= gate.info["out_of_fold_flag_rate"] <= 0.1
    assert gate.limit > 0 and 0 < gate.orientation.limit <= 0.5


def test_cli_check_refuses_probes_with_a_reason_and_passes_real_xrays(fitted, sample_dir, capsys):
    from core.cli.main import main

    folder = fitted["root"] / "probes"
    folder.mkdir()
    rng = np.random.default_rng(5)
    expected = {}
    for probe in blank_probes() + noise_probes(rng, 2) + photo_probes(rng, 2) + document_probes(rng, 2):
        reason = {"blank": UNIFORM_REASON, "noise": NOISE_REASON, "photo": COLOUR_REASON,
                  "document": DOCUMENT_REASON}[probe.kind]  # fmt: skip
        expected[_write(folder, f"{probe.name}.png", probe.data)] = reason
    xrays = [(i, read_xray_file(sample_dir / "images" / i).pixels) for i in fitted["test_ids"][:2]]
    for probe in xray_probes(xrays):
        if probe.kind in ("rotated", "inverted"):
            expected[_write(folder, f"{probe.name}.png", probe.data)] = ORIENTATION_REASON
    real = [str(sample_dir / "images" / i) for i in fitted["test_ids"]]
    real += [str(sample_dir / "full-resolution" / i) for i in fitted["test_ids"]]
    not_an_image = _write(folder, "notes.txt", b"hello, this is not an image\n")

    code = main(["ood", "check", *expected, *real, not_an_image, "--model", str(fitted["model"]), "--json"])
    records = {r["file"]: r for r in map(json.loads, capsys.readouterr().out.strip().splitlines())}
    assert code == 2  # one file refused, as predict does
    assert "error" in records[not_an_image]
    for file, reason in expected.items():
        ood = records[file]["ood"]
        assert set(ood) == {"flagged", "score", "reason"}
        assert ood["flagged"] and ood["reason"] == reason, file
    for file in real:  # never fitted on (official test list), at 512 px and at 1024 px
        ood = records[file]["ood"]
        assert not ood["flagged"] and ood["reason"] == "" and 0 < ood["score"] < 1, file


def test_the_gate_survives_json_and_refuses_a_damaged_one(fitted, sample_dir):
    from core.inference.artifact import read_artifact
    from core.inference.features import FeatureExtractor
    from core.ood.gate import stored_gate

    artifact = read_artifact(fitted["model"])
    gate = stored_gate(artifact)
    again = OodGate.from_dict(json.loads(json.dumps(gate.to_dict())))
    images = [read_xray_file(sample_dir / "images" / i).pixels for i in fitted["test_ids"]]
    features = FeatureExtractor(artifact).features(images)
    assert np.allclose(again.distance(features), gate.distance(features), rtol=1e-6)
    assert [again.check(img, f).to_dict() for img, f in zip(images, features, strict=True)] == [
        gate.check(img, f).to_dict() for img, f in zip(images, features, strict=True)
    ]
    damaged = gate.to_dict()
    damaged["distance"]["precision"]["shape"] = [3, 3]
    with pytest.raises(OodError, match="damaged"):
        OodGate.from_dict(damaged)
    with pytest.raises(OodError, match="damaged"):
        OodGate.from_dict({**gate.to_dict(), "format": 99})


def test_a_gate_fitted_for_other_weights_is_not_used(fitted, tmp_path):
    from core.inference.artifact import read_artifact, update_card
    from core.ood.gate import stored_gate

    model = tmp_path / "model"
    shutil.copytree(fitted["model"], model)
    card = read_artifact(model).card
    update_card(model, ood={**card["ood"], "info": {**card["ood"]["info"], "weights_sha256": "0" * 64}})
    assert stored_gate(read_artifact(model)) is None


def test_pooled_features_are_what_the_predictor_classifies(sample_dir):
    """Same input tensor as core.inference.predictor: the classifier applied to the features gives its
    probabilities."""
    from core.inference.artifact import read_artifact
    from core.inference.features import FeatureExtractor
    from core.inference.predictor import Predictor

    artifact = read_artifact(BUNDLED_MODEL_DIR)
    images = [read_xray_file(p).pixels for p in sorted((sample_dir / "full-resolution").glob("*.png"))[:3]]
    extractor = FeatureExtractor(artifact)
    features = extractor.features(images)
    head = extractor.model.classifier
    logits = features @ head.weight.detach().numpy().T + head.bias.detach().numpy()
    expected = [list(p.probabilities.values()) for p in Predictor(artifact, backend="torch").predict(images)]
    assert np.allclose(1 / (1 + np.exp(-logits)), expected, atol=1e-5)


def test_a_model_without_a_gate_still_runs_the_pixel_checks(tmp_path, capsys):
    from core.cli.main import main
    from core.inference.artifact import update_card

    model = tmp_path / "model"
    shutil.copytree(BUNDLED_MODEL_DIR, model)
    update_card(model, ood=None)
    blank = _write(tmp_path, "blank.png", blank_probes()[0].data)
    assert main(["ood", "check", blank, "--model", str(model), "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["ood"] == {"flagged": True, "score": 0.0, "reason": UNIFORM_REASON}
    assert "no OOD gate" in out.err


def test_pixel_checks_pass_every_real_full_resolution_image(full_resolution_images):
    for path in full_resolution_images:  # one of them is RGBA: grey in colour channels
        data = path.read_bytes()
        result = check_image(None, read_xray(data).pixels, None, colourfulness(data))
        assert not result.flagged and result.score == 0.0, path.name


def test_pixel_checks_by_hand():
    grey = np.full((300, 400), 90, dtype=np.uint8)
    grey[::7] = 94  # faint lines: still almost uniform
    assert pixel_checks(grey).reason == UNIFORM_REASON
    buffer = io.BytesIO()
    Image.new("RGB", (200, 200), (200, 40, 40)).save(buffer, format="PNG")
    assert colourfulness(buffer.getvalue()) > 50
    buffer = io.BytesIO()
    Image.new("L", (200, 200), 120).save(buffer, format="PNG")
    assert colourfulness(buffer.getvalue()) is None  # no colour channels to measure
    smooth = np.tile(np.linspace(0, 255, 256, dtype=np.uint8), (256, 1))
    assert not pixel_checks(smooth).flagged
    assert pixel_checks(smooth, colourfulness=35.0).reason == COLOUR_REASON


def test_fitting_refuses_too_few_images():
    with pytest.raises(OodError, match="at least 20"):
        OodGate.fit(np.ones((5, 1024)), [np.zeros((64, 64), dtype=np.uint8)] * 5)


def test_the_demo_models_card_carries_a_gate_fitted_for_its_weights():
    from core.inference.artifact import read_artifact
    from core.ood.gate import stored_gate

    artifact = read_artifact(BUNDLED_MODEL_DIR)
    gate = stored_gate(artifact)
    assert gate is not None, "fit it: python -m core ood fit models/chexnet-demo"
    assert gate.info["weights_sha256"] == artifact.weights_digest()
    assert gate.info["n_images"] >= 500 and gate.info["split"] == "train_val"
    assert gate.info["out_of_fold_flag_rate"] <= 0.02
    # No server path in a card that ships (and that a page may show).
    assert "/" not in gate.info["dataset"]
    assert str(SHARED_SAMPLE_DIR.resolve().parent) not in json.dumps(gate.info)
    assert len(json.dumps(artifact.card["ood"])) < 150_000
