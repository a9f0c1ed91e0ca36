"""core.inference.models: CheXNet is torchvision's DenseNet-121 with a 14-way head, and its CAMs are exact."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torchvision.models import densenet121

from core.inference.models import CheXNet, ModelInitError, create_model
from core.labels import FINDINGS, NUM_FINDINGS, PUBLISHED_CHEXNET_AUROC
from core.paths import REPO_ROOT

# The spec: the output order of CheXNet (Rajpurkar et al. 2017) and of its public reproduction's
# CLASS_NAMES. A model imported from that reproduction is only right if our order is exactly this.
PUBLISHED_CHEXNET_ORDER = (
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


@pytest.fixture(scope="module")
def model() -> CheXNet:
    torch.manual_seed(0)
    return create_model().eval()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def outputs(model: CheXNet, batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """One set of forward passes shared by every test of the module (CPU time is scarce)."""
    with torch.no_grad():
        logits = model(batch)
        cam_logits, cams = model.forward_with_cam(batch)
    return {"logits": logits, "cam_logits": cam_logits, "cams": cams}


def test_label_order_is_chexnets_published_order():
    assert FINDINGS == PUBLISHED_CHEXNET_ORDER
    assert NUM_FINDINGS == 14
    assert tuple(PUBLISHED_CHEXNET_AUROC) == PUBLISHED_CHEXNET_ORDER


def test_output_is_one_logit_per_finding(model: CheXNet, outputs):
    assert outputs["logits"].shape == (2, NUM_FINDINGS)
    assert outputs["logits"].dtype == torch.float32
    assert torch.isfinite(outputs["logits"]).all()
    assert (model.classifier.in_features, model.classifier.out_features) == (1024, NUM_FINDINGS)
    # Different inputs give different outputs (the head is not degenerate).
    assert not torch.allclose(outputs["logits"][0], outputs["logits"][1])


def test_parameter_names_are_torchvision_densenet121s(model: CheXNet, batch: torch.Tensor, outputs):
    reference = densenet121(weights=None, num_classes=NUM_FINDINGS).eval()
    assert list(reference.state_dict()) == list(model.state_dict())
    reference.load_state_dict(model.state_dict(), strict=True)  # names and shapes, both ways
    with torch.no_grad():
        torch.testing.assert_close(reference(batch), outputs["logits"], rtol=0, atol=1e-6)


def test_forward_with_cam_logits_equal_forward(outputs):
    torch.testing.assert_close(outputs["cam_logits"], outputs["logits"], rtol=0, atol=1e-6)


def test_cam_grid_is_7x7_at_224(model: CheXNet, outputs):
    assert outputs["cams"].shape == (2, NUM_FINDINGS, 7, 7)
    # Computed in the same pass, without hooks: nothing is left on the shared module.
    assert not model._forward_hooks and not model._forward_pre_hooks and not model.training


def test_cam_mean_plus_bias_is_the_logit(model: CheXNet, outputs):
    # Global average pooling is linear: the logit is the spatial mean of the class's CAM plus its bias.
    from_cams = outputs["cams"].mean(dim=(2, 3)) + model.classifier.bias
    torch.testing.assert_close(from_cams, outputs["logits"], rtol=1e-5, atol=1e-5)


def test_create_model_errors_are_sentences():
    with pytest.raises(ModelInitError, match="Unknown architecture 'resnet9'"):
        create_model("resnet9")
    with pytest.raises(ModelInitError, match="Unknown initialisation 'zeros'") as info:
        create_model(init="zeros")
    assert "\n" not in str(info.value) and str(info.value).endswith(".")


def test_serving_a_model_does_not_import_torchvision():
    """torchvision pulls in torch._dynamo (seconds at every start): the web process and CLIs never need it."""
    code = (
        "import sys, core.inference.predictor, core.inference.models; core.inference.models.create_model(); "
        "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert out.stdout.strip() == "[]"


def test_training_mode_matches_torchvision_too(model: CheXNet, batch: torch.Tensor):
    """Batch-norm statistics and gradients flow the same way as in torchvision's DenseNet-121."""
    reference = densenet121(weights=None, num_classes=NUM_FINDINGS)
    reference.load_state_dict(model.state_dict())
    ours = CheXNet()
    ours.load_state_dict(model.state_dict())
    ours.train(), reference.train()
    torch.testing.assert_close(ours(batch), reference(batch), rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.features.norm5.running_mean, reference.features.norm5.running_mean)


def test_pages_that_only_list_models_do_not_import_torch():
    """Reading a card (the registry, Fine-tune, Models & ROC, Label quality) must not pay torch's import."""
    code = (
        "import sys, core.inference.artifact, db.registry, webapp.job_widgets, webapp.admin_data, "
        "webapp.dashboards, "
        "webapp.model_sections, webapp.quality_data; "
        "core.inference.artifact.read_artifact(core.paths.BUNDLED_MODEL_DIR); print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert out.stdout.strip() == "False"
