"""core.inference.artifact: model folders (save, read, card, errors) and importing the public CheXNet
checkpoint."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torchvision.models import densenet169, resnet18

from core.inference.artifact import (
    CARD_FILE,
    WEIGHTS_FILE,
    ArtifactError,
    ModelArtifact,
    import_chexnet_checkpoint,
    new_card,
    read_artifact,
    save_artifact,
    update_card,
)
from core.inference.models import CheXNet, create_model
from core.labels import FINDINGS
from core.paths import REPO_ROOT


def randomise_batch_norms(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN statistics, so that a buffer lost on the way would change the logits."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            module.weight.data.copy_(0.8 + 0.4 * torch.rand(n, generator=generator))
            module.bias.data.copy_(0.1 * torch.randn(n, generator=generator))


@pytest.fixture(scope="module")
def model() -> CheXNet:
    torch.manual_seed(0)
    model = create_model().eval()
    with torch.no_grad():
        randomise_batch_norms(model, seed=1)
    return model


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def reference_logits(model: CheXNet, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(batch)


@pytest.fixture(scope="module")
def saved(model: CheXNet, tmp_path_factory) -> dict[str, ModelArtifact]:
    root = tmp_path_factory.mktemp("artifacts")
    return {
        "fp32": save_artifact(model, root / "fp32", new_card("test-fp32"), half=False),
        "fp16": save_artifact(model, root / "fp16", new_card("test-fp16"), half=True),
    }


def logits_of(artifact: ModelArtifact, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return artifact.load_model()(batch)


def assert_sentence(error: BaseException) -> None:
    text = str(error)
    assert text and "\n" not in text and "Traceback" not in text, text
    assert text[0].isupper() or text[0] in "/." or text[0].isalnum(), text
    assert text.rstrip(")").endswith("."), text


def copy_artifact(artifact: ModelArtifact, destination: Path) -> Path:
    shutil.copytree(artifact.path, destination)
    return destination


# ------------------------------------------------------------------------------------------- round trip


def test_fp32_round_trip_gives_identical_logits(saved, batch, reference_logits):
    artifact = read_artifact(saved["fp32"].path)
    stored = load_file(str(artifact.path / WEIGHTS_FILE))
    assert stored["classifier.weight"].dtype == torch.float32
    assert artifact.card["weights_dtype"] == "float32"
    torch.testing.assert_close(logits_of(artifact, batch), reference_logits, rtol=0, atol=1e-6)


def test_fp16_round_trip_gives_the_same_predictions_within_tolerance(saved, batch, reference_logits):
    artifact = read_artifact(saved["fp16"].path)
    stored = load_file(str(artifact.path / WEIGHTS_FILE))
    assert stored["features.conv0.weight"].dtype == torch.float16
    assert stored["features.norm0.num_batches_tracked"].dtype == torch.int64  # integers stay integers
    assert artifact.card["weights_dtype"] == "float16"
    size_fp32 = (saved["fp32"].path / WEIGHTS_FILE).stat().st_size
    assert (artifact.path / WEIGHTS_FILE).stat().st_size < 0.6 * size_fp32
    model = artifact.load_model()
    assert model.classifier.weight.dtype == torch.float32  # computed in fp32 at inference
    probabilities = torch.sigmoid(logits_of(artifact, batch))
    torch.testing.assert_close(probabilities, torch.sigmoid(reference_logits), rtol=0, atol=3e-3)


def test_card_fields(saved):
    artifact = saved["fp16"]
    card = json.loads((artifact.path / CARD_FILE).read_text())
    assert card == artifact.card
    assert card["name"] == artifact.name == "test-fp16"
    assert card["arch"] == "densenet121"
    assert card["format_version"] == 1
    assert card["labels"] == list(FINDINGS) and artifact.labels == FINDINGS
    assert card["thresholds"] == {label: 0.5 for label in FINDINGS}
    assert artifact.thresholds == {label: 0.5 for label in FINDINGS}
    spec = artifact.input_spec
    assert (spec["resize_shorter_side"], spec["crop"], spec["channels"]) == (256, 224, 3)
    assert spec["normalization"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert "logits" in spec["output"]
    assert "research" in card["intended_use"].lower() and "not for diagnosis" in card["intended_use"].lower()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", card["created_at"])


def test_update_card_changes_only_what_is_asked(saved, tmp_path):
    path = copy_artifact(saved["fp16"], tmp_path / "m")
    thresholds = {label: 0.1 * (i % 9) + 0.05 for i, label in enumerate(FINDINGS)}
    updated = update_card(path, thresholds=thresholds, metrics={"auroc_mean": 0.81})
    assert updated.thresholds == pytest.approx(thresholds)
    assert read_artifact(path).card["metrics"] == {"auroc_mean": 0.81}
    unchanged = {k: v for k, v in saved["fp16"].card.items() if k not in ("thresholds", "metrics")}
    assert {k: v for k, v in updated.card.items() if k in unchanged} == unchanged
    assert sorted(p.name for p in path.iterdir()) == sorted([CARD_FILE, WEIGHTS_FILE])  # no temp file left


def test_weights_digest_identifies_the_weights(saved, model, tmp_path):
    # The compiled-model cache is keyed by this digest: the same weights must give the same key every time
    # they are saved (several saves, since a nondeterministic file layout may agree by chance).
    digests = {save_artifact(model, tmp_path / f"again{i}", new_card(f"other-name-{i}")).weights_digest()
               for i in range(5)}
    assert digests == {saved["fp16"].weights_digest()}
    assert saved["fp16"].weights_digest() != saved["fp32"].weights_digest()
    assert re.fullmatch(r"[0-9a-f]{64}", saved["fp32"].weights_digest())


# ------------------------------------------------------------------------------------------ atomic save


def test_save_leaves_no_temporary_folder_and_replaces_an_old_model(model, tmp_path):
    first = save_artifact(model, tmp_path / "m", new_card("first"))
    second = save_artifact(model, tmp_path / "m", new_card("second"))
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    assert sorted(p.name for p in second.path.iterdir()) == sorted([CARD_FILE, WEIGHTS_FILE])
    assert read_artifact(first.path).name == "second"


def test_a_failed_save_keeps_the_old_model_and_leaves_no_temporary_folder(model, saved, tmp_path):
    path = copy_artifact(saved["fp16"], tmp_path / "m")
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    with pytest.raises(ValueError):  # NaN is not JSON: refused while writing the card
        save_artifact(model, path, new_card("broken", metrics={"auroc": math.nan}))
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before


def test_save_refuses_a_card_whose_labels_do_not_match_the_outputs(model, tmp_path):
    with pytest.raises(ArtifactError) as info:
        save_artifact(model, tmp_path / "m", new_card("x", labels=FINDINGS[:13]))
    assert_sentence(info.value)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------- unusable folders


def test_a_folder_missing_files_is_refused(saved, tmp_path):
    with pytest.raises(ArtifactError, match=WEIGHTS_FILE) as info:
        read_artifact(tmp_path)
    assert_sentence(info.value)
    path = copy_artifact(saved["fp16"], tmp_path / "no-card")
    (path / CARD_FILE).unlink()
    with pytest.raises(ArtifactError, match="not a model folder"):
        read_artifact(path)
    with pytest.raises(ArtifactError):
        read_artifact(tmp_path / "does-not-exist")


def test_a_bad_card_is_refused(saved, tmp_path):
    path = copy_artifact(saved["fp16"], tmp_path / "m")
    (path / CARD_FILE).write_text('{"name": "x", "labels": [')
    with pytest.raises(ArtifactError, match="not valid JSON") as info:
        read_artifact(path)
    assert_sentence(info.value)
    (path / CARD_FILE).write_text(json.dumps({"name": "x"}))
    with pytest.raises(ArtifactError, match="'labels'") as info:
        read_artifact(path)
    assert_sentence(info.value)


def test_damaged_weights_are_refused(saved, tmp_path):
    path = copy_artifact(saved["fp16"], tmp_path / "m")
    data = (path / WEIGHTS_FILE).read_bytes()
    (path / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="could not be read") as info:
        read_artifact(path).load_model()
    assert_sentence(info.value)


def test_weights_missing_a_tensor_are_refused(saved, tmp_path):
    path = copy_artifact(saved["fp16"], tmp_path / "m")
    state = load_file(str(path / WEIGHTS_FILE))
    del state["features.denseblock4.denselayer16.conv2.weight"]
    save_file(state, str(path / WEIGHTS_FILE))
    with pytest.raises(ArtifactError, match="do not fit") as info:
        read_artifact(path).load_model()
    assert_sentence(info.value)


def test_weights_that_do_not_fit_the_cards_labels_are_refused(saved, tmp_path):
    # 14 outputs in the weights but 13 labels on the card: a shape mismatch, not a missing tensor.
    path = copy_artifact(saved["fp16"], tmp_path / "m")
    update_card(path, labels=list(FINDINGS[:13]))
    with pytest.raises(ArtifactError, match="do not fit") as info:
        read_artifact(path).load_model()
    assert_sentence(info.value)


def test_a_card_naming_an_unknown_architecture_is_refused(saved, tmp_path):
    path = copy_artifact(saved["fp16"], tmp_path / "m")
    update_card(path, arch="resnet9")
    with pytest.raises(ArtifactError, match="resnet9") as info:
        read_artifact(path).load_model()
    assert_sentence(info.value)


# ------------------------------------------------------------------------------ public CheXNet checkpoint


def reproduction_key(key: str) -> str:
    """This project's (= current torchvision's) name → the name in the public reproduction's model.pth.tar."""
    # Old torchvision wrote "norm.1" where current torchvision writes "norm1" (likewise relu, conv).
    key = re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key)
    key = key.replace("classifier.", "classifier.0.")  # classifier = Sequential(Linear, Sigmoid)
    return "module.densenet121." + key  # DataParallel(DenseNet121 wrapper)


def write_reproduction_checkpoint(model: torch.nn.Module, path: Path, *, keep_batch_counters: bool) -> Path:
    state = {reproduction_key(k): v.clone() for k, v in model.state_dict().items()}
    if not keep_batch_counters:  # the original was saved by PyTorch 0.3, before num_batches_tracked existed
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save({"epoch": 5, "arch": "densenet121", "state_dict": state, "best_loss": 0.1514}, path)
    return path


@pytest.fixture(scope="module")
def source_model() -> CheXNet:
    torch.manual_seed(11)
    source = create_model().eval()
    with torch.no_grad():
        randomise_batch_norms(source, seed=12)
    return source


@pytest.fixture(scope="module")
def source_logits(source_model: CheXNet, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return source_model(batch)


def test_reproduction_key_renaming_matches_the_public_checkpoint():
    assert (
        reproduction_key("features.denseblock1.denselayer1.norm1.weight")
        == "module.densenet121.features.denseblock1.denselayer1.norm.1.weight"
    )
    assert (
        reproduction_key("features.denseblock4.denselayer16.conv2.weight")
        == "module.densenet121.features.denseblock4.denselayer16.conv.2.weight"
    )
    transition = "features.transition1.norm.bias"  # not inside a dense layer: unchanged apart from the prefix
    assert reproduction_key(transition) == "module.densenet121." + transition
    assert reproduction_key("classifier.weight") == "module.densenet121.classifier.0.weight"


def test_import_checkpoint_gives_identical_logits(source_model, source_logits, batch, tmp_path):
    checkpoint = tmp_path / "model.pth.tar"
    write_reproduction_checkpoint(source_model, checkpoint, keep_batch_counters=False)
    artifact = import_chexnet_checkpoint(checkpoint, tmp_path / "imported")
    assert artifact.name == "model"
    assert artifact.labels == FINDINGS
    assert artifact.card["provenance"]["epochs"] == 5
    assert artifact.card["provenance"]["imported_from"] == "model.pth.tar"
    assert artifact.card["weights_dtype"] == "float32"
    imported_logits = logits_of(read_artifact(artifact.path), batch)
    torch.testing.assert_close(imported_logits, source_logits, rtol=0, atol=1e-6)


@pytest.mark.slow  # a subprocess (interpreter, torch and torchvision start-up)
def test_import_checkpoint_cli(source_model, source_logits, batch, tmp_path):
    checkpoint = tmp_path / "model.pth.tar"
    write_reproduction_checkpoint(source_model, checkpoint, keep_batch_counters=True)
    out = tmp_path / "imported"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "core", "import-checkpoint", str(checkpoint), "--out", str(out), "--name",
         "repro"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "repro" in result.stdout
    artifact = read_artifact(out)
    assert artifact.name == "repro"
    torch.testing.assert_close(logits_of(artifact, batch), source_logits, rtol=0, atol=1e-6)


class CodeOnLoad:
    """Unpickling this runs `_touch(marker)`: the kind of payload weights_only=True must refuse."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch, (self.marker,))


def _touch(path: str) -> None:
    Path(path).touch()


def test_a_checkpoint_holding_a_python_object_is_refused_without_running_it(source_model, tmp_path):
    marker = tmp_path / "code-ran"
    state = {reproduction_key(k): v for k, v in source_model.state_dict().items()}
    checkpoint = tmp_path / "model.pth.tar"
    torch.save({"epoch": 5, "state_dict": state, "extra": CodeOnLoad(marker)}, checkpoint)
    with pytest.raises(ArtifactError, match="could run code") as info:
        import_chexnet_checkpoint(checkpoint, tmp_path / "imported")
    assert_sentence(info.value)
    assert not marker.exists()
    assert not (tmp_path / "imported").exists()
    # The payload is live: plain unpickling runs it (so the assertions above mean something).
    pickle.loads(pickle.dumps(CodeOnLoad(marker)))
    assert marker.exists()


@pytest.mark.parametrize("architecture", ["densenet169", "resnet18", "fifteen-classes"])
def test_a_checkpoint_of_another_architecture_is_refused(architecture, tmp_path):
    if architecture == "densenet169":  # same names for a while, then other shapes and extra layers
        state = densenet169(weights=None).state_dict()
    elif architecture == "resnet18":  # entirely different names
        state = resnet18(weights=None).state_dict()
    else:
        state = create_model(num_classes=15).state_dict()
    checkpoint = tmp_path / "model.pth.tar"
    torch.save({"epoch": 1, "state_dict": {reproduction_key(k): v for k, v in state.items()}}, checkpoint)
    with pytest.raises(ArtifactError, match="not a CheXNet DenseNet-121 checkpoint") as info:
        import_chexnet_checkpoint(checkpoint, tmp_path / "imported")
    assert_sentence(info.value)
    assert not (tmp_path / "imported").exists()


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    junk = tmp_path / "model.pth.tar"
    junk.write_bytes(b"definitely not a checkpoint" * 10)
    with pytest.raises(ArtifactError) as info:
        import_chexnet_checkpoint(junk, tmp_path / "imported")
    assert_sentence(info.value)
    with pytest.raises(ArtifactError, match="could not be opened") as info:
        import_chexnet_checkpoint(tmp_path / "missing.pth.tar", tmp_path / "imported")
    assert_sentence(info.value)
    assert not (tmp_path / "imported").exists()
