"""The PyTorch inference backend: eager, channels_last, inference_mode, on CPU or CUDA.

Its own module because importing torch takes ~2.5 s: a web process serving with OpenVINO from a warm
cache (core.inference.openvino_backend) never imports it.
"""

from __future__ import annotations

import numpy as np
import torch

from core.inference.features import forward_with_features

__all__ = ["TorchBackend"]


class TorchBackend:
    name = "torch"

    def __init__(self, model: torch.nn.Module, device: torch.device | str):
        self.device = torch.device(device)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.info = {"name": self.name, "device": str(self.device), "precision": "f32"}

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(logits [B, C], CAMs [B, C, h, w], pooled features [B, D]) of a model-input batch, one pass."""
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
            outputs = forward_with_features(self.model, x)
            return tuple(t.float().cpu().numpy() for t in outputs)  # type: ignore[return-value]

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, CAMs) only, for callers that need no features (the benchmark)."""
        logits, cams, _ = self.run(batch)
        return logits, cams
