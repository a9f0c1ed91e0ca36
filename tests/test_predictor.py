"""core.inference.predictor on real NIH X-rays: both backends, thresholds, batching, threads and image
geometry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from core import file_cache
from core.imaging.preprocess import crop_window, model_input
from core.imaging.reader import read_xray_file
from core.inference.artifact import (
    ArtifactError,
    ModelArtifact,
    new_card,
    read_artifact,
    save_artifact,
    update_card,
)
from core.inference.features import pooled_features
from core.inference.models import create_model
from core.inference.openvino_backend import OUTPUTS_TAG, choose_precision
from core.inference.predictor import OpenVinoBackend, Prediction, Predictor
from core.inference.torch_backend import TorchBackend
from core.labels import FINDINGS
from core.ood.gate import COLOUR_REASON, UNIFORM_REASON, OodGate, OodResult
from core.ood.probes import blank_probes, photo_probes
from core.paths import REPO_ROOT, cache_dir

# Compiling for OpenVINO takes ~10 s of CPU: its tests are marked slow (and nothing else triggers it).
EACH_BACKEND = ["torch", pytest.param("openvino", marks=pytest.mark.slow)]
N_IMAGES = 6
N_SINGLE = 4


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> ModelArtifact:
    torch.manual_seed(0)
    return save_artifact(
        create_model(), tmp_path_factory.mktemp("predictor") / "m", new_card("test-random"), half=False
    )


class PerBackend(dict):
    """Built on first use, once per module: a backend nobody asks for is never compiled."""

    def __init__(self, make):
        super().__init__()
        self.make = make

    def __missing__(self, backend: str):
        self[backend] = self.make(backend)
        return self[backend]


@pytest.fixture(scope="module")
def predictors(artifact: ModelArtifact) -> PerBackend:
    """ "torch", "openvino" (pinned to fp32: the exactness tests hold on every CPU) and "bf16" (OpenVINO
    asked for bf16; its tests skip where the CPU has none)."""

    def make(key: str) -> Predictor:
        if key == "bf16":
            return Predictor(artifact, backend="openvino", device="cpu", precision="bf16")
        return Predictor(artifact, backend=key, device="cpu", precision="f32")

    return PerBackend(make)


def cpu_has_bf16() -> bool:
    from core.inference.openvino_backend import import_openvino

    return "BF16" in import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


needs_bf16 = pytest.mark.skipif("not cpu_has_bf16()", reason="no BF16: OpenVINO reports no bf16 on this CPU")


@pytest.fixture(scope="module")
def files(full_resolution_images):
    assert len(full_resolution_images) >= N_IMAGES
    return full_resolution_images[:N_IMAGES]


@pytest.fixture(scope="module")
def images(files) -> list[np.ndarray]:
    return [read_xray_file(f).pixels for f in files]


# The CheXNet reproduction's evaluation transform, written independently of core.imaging.preprocess.
EVAL_TRANSFORM = transforms.Compose(
    [
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ]
)


@pytest.fixture(scope="module")
def reference_inputs(files) -> torch.Tensor:
    return torch.stack([EVAL_TRANSFORM(Image.open(f).convert("L").convert("RGB")) for f in files])


@pytest.fixture(scope="module")
def reference_probabilities(artifact: ModelArtifact, reference_inputs: torch.Tensor) -> np.ndarray:
    """A plain fp32 PyTorch forward (no channels_last, no CAM path): what the predictor must reproduce."""
    with torch.no_grad():
        return torch.sigmoid(artifact.load_model()(reference_inputs)).double().numpy()


@pytest.fixture(scope="module")
def batched(predictors, images) -> PerBackend:
    return PerBackend(lambda backend: predictors[backend].predict(images, batch_size=4))


@pytest.fixture(scope="module")
def sequential(predictors, images) -> PerBackend:
    return PerBackend(lambda backend: [predictors[backend].predict_one(img) for img in images[:N_SINGLE]])


def probabilities(predictions: list[Prediction]) -> np.ndarray:
    return np.array([[p.probabilities[label] for label in FINDINGS] for p in predictions])


# ---------------------------------------------------------------------------------------------- numbers


def test_model_input_matches_the_reproductions_eval_transform(images, reference_inputs):
    ours = np.stack([model_input(img) for img in images])
    assert ours.shape == (N_IMAGES, 3, 224, 224) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference_inputs.numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", EACH_BACKEND)
def test_backend_is_what_it_says(backend, predictors):
    expected = {"torch": TorchBackend, "openvino": OpenVinoBackend}[backend]
    assert isinstance(predictors[backend].backend, expected)


@pytest.mark.parametrize("backend", EACH_BACKEND)
def test_backend_matches_a_plain_fp32_forward(backend, batched, reference_probabilities):
    ours = probabilities(batched[backend])
    assert ours.shape == (N_IMAGES, len(FINDINGS))
    np.testing.assert_allclose(ours, reference_probabilities, rtol=0, atol=1e-3)
    # The images differ by more than the tolerance, so an order mix-up could not pass unnoticed.
    assert np.abs(np.diff(reference_probabilities, axis=0)).max(axis=1).min() > 2e-3


@pytest.mark.slow
def test_backends_agree_on_probabilities_and_cams(batched):
    np.testing.assert_allclose(
        probabilities(batched["torch"]), probabilities(batched["openvino"]), rtol=0, atol=1e-3
    )
    for ours, theirs in zip(batched["torch"], batched["openvino"], strict=True):
        assert ours.cams.shape == theirs.cams.shape == (len(FINDINGS), 7, 7)
        scale = float(np.abs(ours.cams).max())
        np.testing.assert_allclose(theirs.cams, ours.cams, rtol=0, atol=1e-3 * scale)


@pytest.mark.parametrize("backend", EACH_BACKEND)
def test_the_pooled_features_come_from_the_same_pass(backend, artifact, batched, reference_inputs):
    """Each prediction carries the features its classifier read: the head applied to them gives its
    probabilities, and they equal a plain PyTorch pass's pooled features."""
    features = np.stack([p.features for p in batched[backend]])
    assert features.shape == (N_IMAGES, 1024) and features.dtype == np.float32
    head = artifact.load_model().classifier
    weight, bias = head.weight.detach().double().numpy(), head.bias.detach().double().numpy()
    logits = features.astype(np.float64) @ weight.T + bias
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), probabilities(batched[backend]), rtol=0, atol=1e-5)
    plain = pooled_features(artifact.load_model(), reference_inputs.numpy())
    np.testing.assert_allclose(features, plain, rtol=0, atol=1e-3 * float(np.abs(plain).max()))


# ------------------------------------------------------------------------------------------- thresholds


def test_positive_follows_the_default_thresholds(batched):
    every = [label for prediction in batched["torch"] for label in prediction.positive]
    assert every and len(every) < N_IMAGES * len(FINDINGS)  # some positive, some not: a meaningful test
    for prediction in batched["torch"]:
        assert prediction.positive == [label for label in FINDINGS if prediction.probabilities[label] >= 0.5]


def test_positive_follows_thresholds_edited_on_the_card(artifact, batched, images, tmp_path):
    path = shutil.copytree(artifact.path, tmp_path / "m")
    first = batched["torch"][0].probabilities
    # Just below the probability for even-numbered findings, just above for odd ones.
    thresholds = {label: first[label] + (-0.01 if i % 2 == 0 else 0.01) for i, label in enumerate(FINDINGS)}
    update_card(path, thresholds=thresholds)
    predictor = Predictor(read_artifact(path), backend="torch", device="cpu")
    assert predictor.thresholds == pytest.approx(thresholds)
    prediction = predictor.predict_one(images[0])
    assert prediction.positive == list(FINDINGS[::2])
    assert prediction.probabilities == pytest.approx(first, abs=1e-6)


# ------------------------------------------------------------------------------- batching and threading


@pytest.mark.parametrize("backend", EACH_BACKEND)
def test_a_batch_equals_one_image_at_a_time(backend, batched, sequential):
    assert len(batched[backend]) == N_IMAGES  # 6 images in batches of 4: a full and a partial batch
    np.testing.assert_allclose(
        probabilities(batched[backend][:N_SINGLE]), probabilities(sequential[backend]), rtol=0, atol=1e-5
    )
    for together, alone in zip(batched[backend], sequential[backend], strict=False):
        assert together.positive == alone.positive
        np.testing.assert_allclose(together.cams, alone.cams, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", EACH_BACKEND)
def test_concurrent_predictions_equal_sequential_ones(backend, predictors, images, sequential):
    expected_results, predictor = sequential[backend], predictors[backend]  # built before the threads start
    work = [i % N_SINGLE for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: predictor.predict_one(images[i]), work))
    for i, result in zip(work, results, strict=True):
        expected = expected_results[i]
        assert result.positive == expected.positive
        assert result.probabilities == pytest.approx(expected.probabilities, abs=1e-6)
        np.testing.assert_allclose(result.cams, expected.cams, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("shape", ["landscape", "portrait"])
def test_a_non_square_image_is_judged_on_its_centre_square(shape, predictors, images):
    full = images[0]
    if shape == "landscape":
        image = np.ascontiguousarray(full[100:740, :])  # 1024 x 640: centre square at x = 192
        centre = image[:, 192:832]
    else:
        image = np.ascontiguousarray(full[:, 211:812])  # 601 x 1024: centre square at y = (1024 - 601) // 2
        centre = image[211:812, :]
    height, width = image.shape
    prediction = predictors["torch"].predict_one(image)
    assert prediction.image_size == (width, height)
    assert prediction.window == crop_window(width, height, 256, 224)
    assert prediction.cam("Effusion").shape == (height, width)
    square = predictors["torch"].predict_one(np.ascontiguousarray(centre))
    assert prediction.probabilities == pytest.approx(square.probabilities, abs=1e-6)


def test_the_crop_window_is_where_the_model_input_comes_from():
    width, height = 1024, 640
    window = crop_window(width, height, 256, 224)  # x from 232 to 792, y from 40 to 600
    image = np.zeros((height, width), dtype=np.uint8)
    image[300:340, 480:520] = 255  # inside the window, centred on (500, 320)
    image[300:340, 250:270] = 255  # just inside the left edge
    image[300:340, 190:215] = 255  # in the centre square but outside the crop
    image[300:340, 20:60] = 255  # outside the centre square
    seen = model_input(image)[0] > 0  # black is negative after normalisation
    rows, cols = np.nonzero(seen)
    assert seen.any()
    scale = window.side / 224
    # Every bright model pixel maps back into one of the two marks inside the window.
    xs, ys = window.left + (cols + 0.5) * scale, window.top + (rows + 0.5) * scale
    assert (ys > 300 - 2 * scale).all() and (ys < 340 + 2 * scale).all()

    def near(low: int, high: int) -> np.ndarray:
        return (xs > low - 2 * scale) & (xs < high + 2 * scale)

    assert (near(480, 520) | near(250, 270)).all()
    centre_mark = xs > 400
    assert window.left + (cols[centre_mark].mean() + 0.5) * scale == pytest.approx(500, abs=scale)
    assert window.top + (rows.mean() + 0.5) * scale == pytest.approx(320, abs=scale)
    assert (~centre_mark).any()  # the mark just inside the edge is seen too


# -------------------------------------------------------------------------------------------- OOD gate


def _probe_pixels(data: bytes) -> np.ndarray:
    from core.imaging.reader import read_xray

    return read_xray(data).pixels


def test_without_a_gate_only_the_pixel_checks_run(predictors, batched, images):
    assert predictors["torch"].ood_gate is None  # the test model's card has none
    for prediction in batched["torch"]:  # real NIH X-rays
        assert prediction.ood == OodResult(False, 0.0, "")
    blank = blank_probes()[0].data
    judged = predictors["torch"].predict_one(_probe_pixels(blank), file_bytes=blank).ood
    assert judged.to_dict() == {"flagged": True, "score": 0.0, "reason": UNIFORM_REASON}
    unchecked = predictors["torch"].predict(images[:1], check_ood=False)[0]  # an evaluation's choice
    assert unchecked.ood is None
    assert unchecked.probabilities == pytest.approx(batched["torch"][0].probabilities, abs=1e-5)


def test_the_colour_check_needs_the_file_bytes(predictors):
    photo = photo_probes(np.random.default_rng(3), 1)[0].data
    pixels = _probe_pixels(photo)
    assert predictors["torch"].predict_one(pixels, file_bytes=photo).ood.reason == COLOUR_REASON
    assert predictors["torch"].predict_one(pixels).ood.reason != COLOUR_REASON  # grey pixels alone
    with pytest.raises(ValueError, match="one entry"):
        predictors["torch"].predict([pixels, pixels], file_bytes=[photo])


@pytest.fixture(scope="module")
def gated(artifact, predictors, full_resolution_images, tmp_path_factory) -> tuple[Predictor, OodGate]:
    """The test model with a gate fitted on the pooled features of the 24 full-resolution images."""
    path = shutil.copytree(artifact.path, tmp_path_factory.mktemp("gated") / "m")
    pixels = [read_xray_file(f).pixels for f in full_resolution_images]
    features = np.stack([p.features for p in predictors["torch"].predict(pixels)])
    gate = OodGate.fit(features, pixels, folds=3, source={"weights_sha256": artifact.weights_digest()})
    update_card(path, ood=gate.to_dict())
    return Predictor(read_artifact(path), backend="torch", device="cpu"), gate


def test_a_stored_gate_judges_the_features_of_the_same_pass(gated, images):
    predictor, gate = gated
    assert predictor.ood_gate is not None and predictor.ood_gate.limit == pytest.approx(gate.limit)
    for image, prediction in zip(images, predictor.predict(images), strict=True):
        expected = gate.check(image, prediction.features)  # the gate as fitted, before storing (float16)
        assert (prediction.ood.flagged, prediction.ood.reason) == (expected.flagged, expected.reason)
        assert prediction.ood.score == pytest.approx(expected.score, rel=1e-3)
        assert prediction.ood.score > 0  # a real distance, not the gate-less 0.0


def test_a_damaged_gate_refuses_the_model_with_a_sentence(gated, tmp_path):
    predictor, _ = gated
    path = shutil.copytree(predictor.artifact.path, tmp_path / "m")
    damaged = {**predictor.artifact.card["ood"], "format": 99}
    update_card(path, ood=damaged)
    with pytest.raises(ArtifactError, match="OOD gate stored in the model card is damaged"):
        Predictor(read_artifact(path), backend="torch", device="cpu")


# ------------------------------------------------------------------------------------------------ misc


@pytest.mark.slow
def test_auto_picks_openvino_on_cpu_and_reuses_the_compiled_cache(artifact, predictors, images):
    first = predictors["openvino"]
    entries = {kind: Path(path) for kind, path in first.backend_info["cache"].items()}
    assert set(entries) == {"ir", "decision", "compiled"}
    assert all(path.parent == cache_dir() / "openvino" for path in entries.values())
    assert all(f"-{OUTPUTS_TAG}-" in path.name for path in entries.values())  # the 3-output graph's names
    assert all(file_cache.read_entry(path) is not None for path in entries.values())  # whole and checked
    written = {kind: path.stat().st_mtime_ns for kind, path in entries.items()}
    auto = Predictor(artifact, backend="auto", device="cpu", precision="f32")
    assert isinstance(auto.backend, OpenVinoBackend)
    assert auto.backend_info["compiled_from"] == "cache"
    assert auto.backend_info["ir_from"] is None  # neither traced nor even read: the compiled model sufficed
    assert {kind: path.stat().st_mtime_ns for kind, path in entries.items()} == written  # read, not rewritten
    again = auto.predict_one(images[0]).probabilities
    assert again == pytest.approx(first.predict_one(images[0]).probabilities, abs=1e-6)
    assert not leftovers(cache_dir() / "openvino")


@pytest.mark.slow
def test_serving_from_the_openvino_cache_never_imports_torch(artifact, predictors, files):
    # A web process's first page run: importing torch would cost ~2.5 s and ~300 MB for nothing.
    expected = predictors["openvino"].predict_one(read_xray_file(files[0]).pixels).probabilities
    script = (
        "import json, sys\n"
        "from core.imaging.reader import read_xray_file\n"
        "from core.inference.predictor import Predictor\n"
        f"predictor = Predictor.from_path({str(artifact.path)!r}, backend='auto', device='cpu', "
        "precision='f32')\n"
        f"prediction = predictor.predict_one(read_xray_file({str(files[0])!r}).pixels)\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'probabilities': prediction.probabilities,\n"
        "                  'from': predictor.backend_info['compiled_from']}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, check=True
    )
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["from"] == "cache"
    assert answer["torch"] is False
    assert answer["probabilities"] == pytest.approx(expected, abs=1e-6)


def test_without_a_backend_the_server_setting_decides(artifact, predictors, monkeypatch):
    monkeypatch.setenv("CHEXNET_INFERENCE_BACKEND", "torch")
    assert isinstance(Predictor(artifact, device="cpu").backend, TorchBackend)
    monkeypatch.setenv("CHEXNET_INFERENCE_BACKEND", "OpenVINO")
    monkeypatch.setenv("CHEXNET_INFERENCE_PRECISION", "F32")  # compiled already: read from the cache
    served = Predictor(artifact, device="cpu")
    assert isinstance(served.backend, OpenVinoBackend)
    assert served.backend_info["precision_decision"]["requested"] == "f32"
    monkeypatch.setenv("CHEXNET_INFERENCE_PRECISION", "int4")
    with pytest.raises(ValueError, match="Unknown precision 'int4'"):
        Predictor(artifact, device="cpu")
    monkeypatch.delenv("CHEXNET_INFERENCE_PRECISION")
    monkeypatch.setenv("CHEXNET_INFERENCE_BACKEND", "tensorrt")
    with pytest.raises(ValueError, match="Unknown inference backend 'tensorrt'"):
        Predictor(artifact, device="cpu")


@pytest.mark.slow
def test_the_precision_is_chosen_by_measurement_on_this_machine(artifact):
    info = Predictor(artifact, backend="openvino", device="cpu", precision="auto").backend_info
    decision = info["precision_decision"]
    assert info["precision"] == decision["precision"]  # what OpenVINO runs is what was decided
    if "BF16" in info["capabilities"]:
        assert decision["fp32_ms"] > 0 and decision["bf16_ms"] > 0
        measured = {"bf16": (decision["bf16_ms"], decision["max_probability_difference"])}
        expected, _ = choose_precision(decision["fp32_ms"], measured)
        assert decision["precision"] == expected
    else:
        assert decision["precision"] == "f32" and "no BF16" in decision["reason"]
        assert decision["bf16_ms"] is None


def test_a_lower_precision_is_kept_only_when_clearly_faster_and_within_the_bound():
    assert choose_precision(35.0, {"bf16": (18.0, 0.0012)})[0] == "bf16"
    assert choose_precision(35.0, {"bf16": (33.0, 0.0012)})[0] == "f32"  # timing noise: the exact fp32 stays
    assert choose_precision(35.0, {"bf16": (18.0, 0.02)})[0] == "f32"  # fast but not accurate enough
    assert "0.0200" in choose_precision(35.0, {"bf16": (18.0, 0.02)})[1]
    # The fastest of those within the bound; one outside it is refused however fast, and said so.
    both = {"bf16": (18.0, 0.002), "int8": (9.0, 0.004)}
    assert choose_precision(35.0, both)[0] == "int8"
    chosen, reason = choose_precision(35.0, {"bf16": (18.0, 0.002), "int8": (9.0, 0.03)})
    assert chosen == "bf16" and "int8 moved a probability by 0.0300" in reason
    assert choose_precision(35.0, {})[0] == "f32"


# ------------------------------------------------------------------------------------------------- bf16
# What a bf16 CPU runs when the measurement picks bf16: close to fp32, not equal to it.
BF16_PROBABILITY_BOUND = 0.01  # the backend's own bound (MAX_PROBABILITY_DIFFERENCE)


@needs_bf16
@pytest.mark.slow
def test_bf16_probabilities_stay_within_the_bound_and_the_decision_is_recorded(predictors, batched):
    info = predictors["bf16"].backend_info
    decision = info["precision_decision"]
    assert info["precision"] == decision["precision"] == "bf16" and decision["requested"] == "bf16"
    assert decision["fp32_ms"] > 0 and decision["bf16_ms"] > 0
    assert 0 < decision["max_probability_difference"] <= BF16_PROBABILITY_BOUND
    assert file_cache.read_json_entry(Path(info["cache"]["decision"])) == decision
    difference = np.abs(probabilities(batched["bf16"]) - probabilities(batched["torch"]))
    assert 0 < difference.max() <= BF16_PROBABILITY_BOUND  # bf16 really ran, and stayed close


@needs_bf16
@pytest.mark.slow
def test_bf16_cams_look_the_same_as_fp32_ones(batched):
    """Each finding's map, on the scale the overlay gives it (its own range): under 1% of that range off on
    average and 5% at most (a random-init model's maps, nearly flat, measured 0.4% and 2.5%), the same
    pattern (correlation 0.99), and a hottest cell that fp32 too ranks within 5% of its top."""
    for ours, theirs in zip(batched["torch"], batched["bf16"], strict=True):
        for fp32, bf16 in zip(ours.cams, theirs.cams, strict=True):
            span = float(fp32.max() - fp32.min())
            difference = np.abs(bf16 - fp32)
            assert difference.mean() <= 0.01 * span and difference.max() <= 0.05 * span
            assert np.corrcoef(fp32.ravel(), bf16.ravel())[0, 1] >= 0.99
            assert fp32.flat[int(bf16.argmax())] >= fp32.max() - 0.05 * span


@needs_bf16
@pytest.mark.slow
def test_bf16_pooled_features_come_from_the_same_pass(artifact, batched):
    features = np.stack([p.features for p in batched["bf16"]])
    head = artifact.load_model().classifier
    weight, bias = head.weight.detach().double().numpy(), head.bias.detach().double().numpy()
    logits = features.astype(np.float64) @ weight.T + bias
    # The graph's own classifier ran in bf16; the same head in float64 on its features lands close.
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), probabilities(batched["bf16"]), rtol=0, atol=5e-3)


@needs_bf16
@pytest.mark.slow
@pytest.mark.parametrize(("bf16_ms", "expected"), [(18.0, "bf16"), (34.0, "f32")])
def test_auto_keeps_bf16_only_when_its_measured_time_says_so(
    bf16_ms, expected, artifact, predictors, private_cache, monkeypatch
):
    """The whole decision path with the trial's timings faked (the probabilities it compares are real)."""
    source = Path(predictors["openvino"].backend_info["cache"]["ir"])
    private_cache.mkdir(parents=True)
    shutil.copy(source, private_cache / source.name)  # spare the conversion; decide afresh in this cache
    real_trial = OpenVinoBackend._trial

    def trial(self, fp32, candidates):
        measured = real_trial(self, fp32, candidates)
        return {"f32": (35.0, 0.0), "bf16": (bf16_ms, measured["bf16"][1])}

    monkeypatch.setattr(OpenVinoBackend, "_trial", trial)
    info = Predictor(artifact, backend="openvino", device="cpu", precision="auto").backend_info
    decision = info["precision_decision"]
    assert (decision["precision"], info["precision"]) == (expected, expected)
    assert (decision["fp32_ms"], decision["bf16_ms"]) == (35.0, bf16_ms)
    measured = {"bf16": (bf16_ms, decision["max_probability_difference"])}
    assert decision["reason"].startswith(choose_precision(35.0, measured)[1])


def leftovers(folder: Path) -> list[str]:
    """Temporary files of interrupted or failed writes (every entry is written as a dot-file first)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def private_cache(predictors, tmp_path, monkeypatch) -> Path:
    predictors["openvino"]  # built in the shared cache first: the tests name or copy its entries
    monkeypatch.setenv("CHEXNET_HOME", str(tmp_path))
    return tmp_path / "cache" / "openvino"


@pytest.mark.slow
def test_damaged_cache_entries_are_discarded_and_rebuilt(artifact, predictors, images, private_cache):
    named = predictors["openvino"].backend_info["cache"]
    entries = {kind: private_cache / Path(path).name for kind, path in named.items()}
    private_cache.mkdir(parents=True)
    entries["ir"].write_bytes(b"")  # what a full disk left before: a 0-byte model
    entries["decision"].write_bytes(b"\x00" * 100)  # zeroed blocks after a crash
    file_cache.write_entry(entries["compiled"], b"<net>not a compiled model</net>")  # whole, but unusable
    predictor = Predictor(artifact, backend="openvino", device="cpu", precision="f32")
    info = predictor.backend_info
    assert info["ir_from"] == "converted" and info["compiled_from"] == "compiled"
    assert all(file_cache.read_entry(path) is not None for path in entries.values())  # rebuilt, whole
    assert entries["compiled"].stat().st_size > 1_000_000
    expected = predictors["openvino"].predict_one(images[0]).probabilities
    assert predictor.predict_one(images[0]).probabilities == pytest.approx(expected, abs=1e-6)
    assert not leftovers(private_cache)


@pytest.mark.slow
def test_a_full_disk_costs_time_but_never_a_prediction_or_a_partial_file(artifact, predictors, images,
                                                                         private_cache):  # fmt: skip
    import resource
    import signal

    source = {kind: Path(path) for kind, path in predictors["openvino"].backend_info["cache"].items()}
    private_cache.mkdir(parents=True)
    shutil.copy(source["ir"], private_cache / source["ir"].name)  # spare this test the conversion
    compiled = private_cache / source["compiled"].name
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))  # files over 1 MiB cannot be written: "full"
    try:
        starved = Predictor(artifact, backend="openvino", device="cpu", precision="f32")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    expected = predictors["openvino"].predict_one(images[0]).probabilities
    assert starved.predict_one(images[0]).probabilities == pytest.approx(expected, abs=1e-6)
    assert not compiled.exists() and not leftovers(private_cache)  # the 28 MB model did not fit: no trace
    refilled = Predictor(artifact, backend="openvino", device="cpu", precision="f32")  # space again
    assert refilled.backend_info["compiled_from"] == "compiled"
    assert file_cache.read_entry(compiled) is not None
    again = Predictor(artifact, backend="openvino", device="cpu", precision="f32")
    assert again.backend_info["compiled_from"] == "cache"


def test_the_torch_backend_says_what_it_runs(predictors):
    assert predictors["torch"].backend_info == {"name": "torch", "device": "cpu", "precision": "f32"}


def test_an_unknown_backend_is_refused(artifact):
    with pytest.raises(ValueError, match="Unknown inference backend 'tensorrt'"):
        Predictor(artifact, backend="tensorrt", device="cpu")


def test_openvino_sends_no_telemetry(tmp_path):
    # openvino_telemetry writes a client id under ~/intel before it sends; with it blocked, nothing is.
    script = (
        "import sys\n"
        "from core.inference.openvino_backend import import_openvino\n"
        "ov = import_openvino()\n"
        "ov.Core().get_property('CPU', 'FULL_DEVICE_NAME')\n"
        "import openvino.tools.ovc\n"
        "assert sys.modules['openvino_telemetry'] is None\n"
    )
    env = {**os.environ, "HOME": str(tmp_path)}
    subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, timeout=120, check=True)
    assert list(tmp_path.iterdir()) == []
