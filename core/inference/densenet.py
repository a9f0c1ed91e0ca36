"""DenseNet-121 (Huang et al. 2017) with torchvision's module names, built without importing torchvision.

Importing torchvision pulls in torch._dynamo (through torchvision.ops), which costs seconds at start-up
of every web process and CLI. The network here is the same graph with the same parameter and buffer
names (`features.conv0`, `features.denseblock1.denselayer1.norm1`, ..., `features.norm5`), so
torchvision DenseNet-121 state dicts and CheXNet checkpoints load unchanged; tests compare the two on
the same weights. torchvision is imported only to fetch ImageNet weights (core.inference.models).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

GROWTH_RATE = 32
BOTTLENECK_WIDTH = 4  # 1x1 convolutions output BOTTLENECK_WIDTH * GROWTH_RATE channels
BLOCK_LAYERS = (6, 12, 24, 16)  # DenseNet-121
STEM_FEATURES = 64


class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 over the concatenation of every earlier output in the block."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        width = BOTTLENECK_WIDTH * GROWTH_RATE
        self.norm1 = nn.BatchNorm2d(in_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_features, width, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, GROWTH_RATE, kernel_size=3, padding=1, bias=False)

    def forward(self, earlier: list[torch.Tensor]) -> torch.Tensor:
        bottleneck = self.conv1(self.relu1(self.norm1(torch.cat(earlier, 1))))
        return self.conv2(self.relu2(self.norm2(bottleneck)))


class DenseBlock(nn.ModuleDict):
    def __init__(self, n_layers: int, in_features: int) -> None:
        super().__init__()
        for index in range(n_layers):
            self.add_module(f"denselayer{index + 1}", DenseLayer(in_features + index * GROWTH_RATE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [x]
        for layer in self.values():
            outputs.append(layer(outputs))
        return torch.cat(outputs, 1)


class Transition(nn.Sequential):
    """Halves the channels (1x1 convolution) and the resolution (2x2 average pooling)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(in_features))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(in_features, out_features, kernel_size=1, bias=False))
        self.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))


def densenet121_features() -> tuple[nn.Sequential, int]:
    """(the convolutional trunk up to and including `norm5`, its number of output channels)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv0=nn.Conv2d(3, STEM_FEATURES, kernel_size=7, stride=2, padding=3, bias=False),
        norm0=nn.BatchNorm2d(STEM_FEATURES),
        relu0=nn.ReLU(inplace=True),
        pool0=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    channels = STEM_FEATURES
    for block, n_layers in enumerate(BLOCK_LAYERS, start=1):
        layers[f"denseblock{block}"] = DenseBlock(n_layers, channels)
        channels += n_layers * GROWTH_RATE
        if block < len(BLOCK_LAYERS):
            layers[f"transition{block}"] = Transition(channels, channels // 2)
            channels //= 2
    layers["norm5"] = nn.BatchNorm2d(channels)
    features = nn.Sequential(layers)
    _initialise(features)
    return features, channels


def _initialise(module: nn.Module) -> None:
    # The initialisation of the DenseNet paper's reference code (and torchvision's).
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.constant_(layer.weight, 1)
            nn.init.constant_(layer.bias, 0)
