"""The reference the inference benchmark measures against: the paper-style way to run CheXNet.

PIL decode, torchvision's DenseNet-121 in fp32 NCHW, torchvision transforms, batch 1, no_grad, and one
CAM (the most probable finding's) upsampled to the original resolution with torch. Each step is timed.
`python -m core.bench.naive_baseline MODEL_DIR FILE... [--no-cam]` prints one JSON line per file
(probabilities
in the model's label order), flushed, so that a caller can time it image by image like the project's CLI.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

__all__ = ["naive_baseline"]


def naive_baseline(
    weights: dict[str, torch.Tensor], num_classes: int, *, cam: bool = True
) -> Callable[[Path], tuple[np.ndarray, dict]]:
    """A function path -> (probabilities, {"decode", "preprocess", "model", "cam"} in seconds)."""
    from PIL import Image
    from torchvision import models, transforms

    net = models.densenet121(weights=None)
    net.classifier = torch.nn.Linear(1024, num_classes)
    net.load_state_dict(weights)
    net.eval()
    transform = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Lambda(lambda t: t.repeat(3, 1, 1)),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )

    def run(path: Path) -> tuple[np.ndarray, dict]:
        times = {}
        started = time.perf_counter()
        with Image.open(path) as img:
            grey = img.convert("L")
        times["decode"] = time.perf_counter() - started
        started = time.perf_counter()
        x = transform(grey).unsqueeze(0)
        times["preprocess"] = time.perf_counter() - started
        with torch.no_grad():
            started = time.perf_counter()
            maps = torch.relu(net.features(x))
            logits = net.classifier(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(maps, 1), 1))
            probs = torch.sigmoid(logits)[0]
            times["model"] = time.perf_counter() - started
            started = time.perf_counter()
            if cam:
                top = int(probs.argmax())
                shown = torch.einsum("fhw,f->hw", maps[0], net.classifier.weight[top])
                # Upsampled to the original resolution, as the app shows it.
                torch.nn.functional.interpolate(shown[None, None], size=grey.size[::-1], mode="bilinear")
            times["cam"] = time.perf_counter() - started
        return probs.numpy().astype(np.float64), times

    return run


def main(argv: list[str]) -> int:
    from core.inference.artifact import read_artifact

    artifact = read_artifact(argv[0])
    weights = {k: v.float() for k, v in artifact.load_model("cpu").state_dict().items()}
    with_cam = "--no-cam" not in argv
    argv = [arg for arg in argv if arg != "--no-cam"]
    run = naive_baseline(weights, len(artifact.labels), cam=with_cam)
    for file in argv[1:]:
        probabilities, _ = run(Path(file))
        record = {
            "file": file,
            "probabilities": dict(zip(artifact.labels, probabilities.tolist(), strict=True)),
        }
        print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
