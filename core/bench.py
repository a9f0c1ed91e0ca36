"""`python -m core bench inference|loader|train`: each figure is a ratio measured within one run."""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def _machine() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _sample_images(data: str | None, count: int | None) -> list[Path]:
    from core.paths import SHARED_SAMPLE_DIR

    folder = Path(data) if data else SHARED_SAMPLE_DIR / "full-resolution"
    if (folder / "full-resolution").is_dir():
        folder = folder / "full-resolution"
    files = sorted(folder.glob("*.png"))
    if not files:
        raise SystemExit(f"No PNG images found in {folder}.")
    return files[: count or 24]


def _naive_baseline(weights: dict[str, torch.Tensor], num_classes: int):
    """The reference path: torchvision DenseNet-121, fp32, NCHW, no_grad, one image at a time."""
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

    def run(path: Path) -> np.ndarray:
        with Image.open(path) as img:
            grey = img.convert("L")
        x = transform(grey).unsqueeze(0)
        with torch.no_grad():
            maps = torch.relu(net.features(x))
            logits = net.classifier(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(maps, 1), 1))
            probs = torch.sigmoid(logits)[0]
            top = int(probs.argmax())
            cam = torch.einsum("fhw,f->hw", maps[0], net.classifier.weight[top])
            # Upsample to the original resolution, as the app shows it.
            torch.nn.functional.interpolate(cam[None, None], size=grey.size[::-1], mode="bilinear")
        return probs.numpy()

    return run


def bench_inference(args: argparse.Namespace) -> dict:
    from core.artifact import read_artifact
    from core.imaging import read_xray
    from core.paths import active_model_dir
    from core.predictor import Predictor

    files = _sample_images(args.data, args.images)
    model_dir = Path(args.model) if args.model else active_model_dir()
    if model_dir is None:
        raise SystemExit("No model to benchmark: pass --model DIR.")
    artifact = read_artifact(model_dir)
    weights = {k: v.float() for k, v in artifact.load_model("cpu").state_dict().items()}
    baseline = _naive_baseline(weights, len(artifact.labels))
    started = time.perf_counter()
    predictor = Predictor(artifact, device="cpu")
    load_s = time.perf_counter() - started

    def project(path: Path) -> np.ndarray:
        image = read_xray(path.read_bytes())
        prediction = predictor.predict_one(image.pixels)
        prediction.cam(prediction.most_probable())
        return np.array([prediction.probabilities[label] for label in artifact.labels])

    for path in files[:2]:  # warm-up both paths
        baseline(path), project(path)
    base_times, fast_times, max_diff = [], [], 0.0
    # Alternating blocks rather than alternating images: PyTorch's OpenMP threads keep spinning for a
    # while after each call and would otherwise steal the CPU from whichever path runs right after.
    for _ in range(3):
        base_probs = []
        for path in files:
            started = time.perf_counter()
            base_probs.append(baseline(path))
            base_times.append(time.perf_counter() - started)
        for path, p_base in zip(files, base_probs, strict=True):
            started = time.perf_counter()
            p_fast = project(path)
            fast_times.append(time.perf_counter() - started)
            max_diff = max(max_diff, float(np.abs(p_base - p_fast).max()))
    base_ms = statistics.median(base_times) * 1000
    fast_ms = statistics.median(fast_times) * 1000
    return {
        "benchmark": "inference",
        "images": len(files),
        "image_size": "as stored (1024x1024 originals by default)",
        "model": artifact.name,
        "backend": predictor.backend.name,
        "baseline": "torchvision DenseNet-121 fp32 NCHW no_grad, batch 1, decode + predict + CAM",
        "baseline_median_ms": round(base_ms, 2),
        "project_median_ms": round(fast_ms, 2),
        "speedup": round(base_ms / fast_ms, 2),
        "max_probability_difference": round(max_diff, 6),
        "model_load_s": round(load_s, 2),
        **_machine(),
    }


def run(what: str, args: argparse.Namespace) -> dict:
    if what == "inference":
        return bench_inference(args)
    if what == "loader":
        from core.bench_loader import bench_loader
        from core.paths import SHARED_SAMPLE_DIR

        return bench_loader(
            Path(args.data) if args.data else SHARED_SAMPLE_DIR,
            n_images=args.images,
            batch_size=args.batch_size or 32,
        )
    if what == "train":
        from core.training import bench_training

        return bench_training(args)
    raise SystemExit(f"Unknown benchmark '{what}'.")
