"""Model registry: one place that knows how to build each architecture.

CheXNet (Rajpurkar et al. 2017) is torchvision's DenseNet-121 with its classifier replaced by
Linear(1024, 14). Parameter names are torchvision's own (`features.*`, `classifier.*`), so a
plain torchvision DenseNet-121 state dict loads unchanged. The trunk is built by core.inference.densenet
(the same
network without importing torchvision, which is slow to import); torchvision is imported only to fetch
ImageNet weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import UserError
from core.inference.densenet import densenet121_features
from core.labels import NUM_FINDINGS


class ModelInitError(UserError, RuntimeError):
    """A model could not be initialised as asked (one human sentence)."""


class CheXNet(nn.Module):
    """DenseNet-121 trunk + linear head that can also return class activation maps.

    `forward` returns logits (sigmoid is applied by callers at inference, BCE-with-logits in training).
    `forward_with_cam` returns logits and CAMs from the same forward pass: no hooks and no state on the
    module, so one instance can serve many threads at once.
    """

    def __init__(self, num_classes: int = NUM_FINDINGS):
        super().__init__()
        self.features, n_features = densenet121_features()
        self.classifier = nn.Linear(n_features, num_classes)

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        # After the last norm (norm5), as in torchvision's DenseNet.forward: the maps CAM weighs.
        return F.relu(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.feature_maps(x)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(maps, 1), 1))

    def forward_with_cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, C] and CAMs [B, C, h, w] (Zhou et al.: maps weighted by each class's row)."""
        maps = self.feature_maps(x)
        logits = self.classifier(torch.flatten(F.adaptive_avg_pool2d(maps, 1), 1))
        cams = torch.einsum("bfhw,cf->bchw", maps, self.classifier.weight)
        return logits, cams


def _densenet121(num_classes: int, init: str) -> CheXNet:
    model = CheXNet(num_classes)
    if init == "imagenet":
        try:
            from torchvision.models import DenseNet121_Weights

            weights = DenseNet121_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
        except Exception as exc:  # offline machines: urllib raises several different errors
            raise ModelInitError(
                "ImageNet weights could not be downloaded (is this machine offline?). "
                "Start from random initialisation or from an existing model instead."
            ) from exc
        weights = {k: v for k, v in weights.items() if not k.startswith("classifier.")}
        model.load_state_dict(weights, strict=False)
    elif init != "random":
        raise ModelInitError(f"Unknown initialisation '{init}': use 'random' or 'imagenet'.")
    return model


MODEL_REGISTRY: dict[str, Callable[[int, str], nn.Module]] = {"densenet121": _densenet121}


def create_model(arch: str = "densenet121", num_classes: int = NUM_FINDINGS, init: str = "random") -> CheXNet:
    if arch not in MODEL_REGISTRY:
        raise ModelInitError(f"Unknown architecture '{arch}'. Known: {', '.join(sorted(MODEL_REGISTRY))}.")
    return MODEL_REGISTRY[arch](num_classes, init)
