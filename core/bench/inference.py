"""`python -m core bench inference|loader|train`: each figure is a ratio measured within one run.

The inference benchmark alternates the naive baseline (core.bench.naive_baseline) and the project path
image by
image on the same real X-rays, times each step, reports the CPU features it detected, the model's share of
this CPU's measured fp32 peak, and then times both as real processes (`python -m core predict`).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def _machine() -> dict:
    info = {"platform": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()}
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


def _dense_macs(model: torch.nn.Module, size: int) -> int:
    """Multiply-accumulates of every convolution and linear layer for one size x size image (counted by
    hooks on a real forward; batch norm, activations and pooling are not counted)."""
    total = 0

    def count(module: torch.nn.Module, inputs, output) -> None:
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += output.numel() * kernel
        else:
            total += output.numel() * module.in_features

    hooks = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def _peak_flops(threads: int) -> tuple[float, str]:
    """This CPU's fp32 peak as PyTorch reaches it: the best of several large matrix products."""
    n, previous = 2048, torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm-up
        best = min(_seconds(lambda: torch.mm(a, b)) for _ in range(5))
    finally:
        torch.set_num_threads(previous)
    return 2 * n**3 / best, f"measured: best of 5 torch.mm {n}x{n} fp32 on {threads} threads"


def _seconds(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 2)


def _per_image_ms(command: list[str]) -> tuple[float, dict[str, np.ndarray]]:
    """Run a command that prints one JSON line per image; the median gap between consecutive lines is its
    time per image with the start-up (interpreter, imports, model load) left out."""
    import json
    import subprocess

    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    arrivals, records = [], {}
    assert process.stdout is not None
    for line in process.stdout:
        arrivals.append(time.perf_counter())
        record = json.loads(line)
        records[record["file"]] = np.array(list(record["probabilities"].values()))
    _, errors = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed: {errors.strip()[-500:]}")
    gaps = np.diff(arrivals)
    return round(float(np.median(gaps)) * 1000, 2), records


def _cli_comparison(files: list[Path], model_dir: Path, rounds: int = 2) -> dict:
    """The issue's "done when": `python -m core predict --json` vs the naive baseline as a script, both
    as real processes on the same files, alternating."""
    import sys

    # `core predict` makes no CAM, so neither does the baseline here: the same work on both sides.
    naive = [sys.executable, "-m", "core.bench.naive_baseline", str(model_dir), *map(str, files), "--no-cam"]
    project = [sys.executable, "-m", "core", "predict", "--json", "--model", str(model_dir), *map(str, files)]
    naive_ms, project_ms, difference = [], [], 0.0
    for _ in range(rounds):
        ms, naive_records = _per_image_ms(naive)
        naive_ms.append(ms)
        ms, project_records = _per_image_ms(project)
        project_ms.append(ms)
        for file, probabilities in naive_records.items():
            difference = max(difference, float(np.abs(probabilities - project_records[file]).max()))
    base, fast = statistics.median(naive_ms), statistics.median(project_ms)
    return {
        "images": len(files),
        "note": "the issue asks for 30 images; the sample has 24 at full resolution (1024 px)",
        "method": f"median gap between consecutive JSON lines (start-up excluded); median of {rounds} runs",
        "work": "decode + preprocess + model, no CAM on either side (the predict CLI makes none)",
        "naive_script_ms_per_image": round(base, 2),
        "project_cli_ms_per_image": round(fast, 2),
        "speedup": round(base / fast, 2),
        "max_probability_difference": round(difference, 6),
    }


def bench_inference(args: argparse.Namespace) -> dict:
    from core.bench.naive_baseline import naive_baseline
    from core.cpu_info import cpu_description
    from core.imaging.preprocess import crop_window, model_input
    from core.imaging.reader import read_xray
    from core.inference.artifact import read_artifact
    from core.inference.cam import cam_to_image
    from core.inference.predictor import Predictor
    from core.paths import active_model_dir

    load_before = os.getloadavg()[0]  # a shared CPU: other processes' load is part of the figures
    files = _sample_images(args.data, args.images)
    model_dir = Path(args.model) if args.model else active_model_dir()
    if model_dir is None:
        raise SystemExit("No model to benchmark: pass --model DIR.")
    artifact = read_artifact(model_dir)
    weights = {k: v.float() for k, v in artifact.load_model("cpu").state_dict().items()}
    baseline = naive_baseline(weights, len(artifact.labels))
    started = time.perf_counter()
    predictor = Predictor(artifact, device="cpu")
    load_s = time.perf_counter() - started
    resize, crop = predictor.resize, predictor.crop

    def project(path: Path) -> tuple[np.ndarray, dict]:
        """predict_one + one CAM, step by step (the same calls predict_one and Prediction.cam make)."""
        times = {}
        started = time.perf_counter()
        pixels = read_xray(path.read_bytes()).pixels
        times["decode"] = time.perf_counter() - started
        started = time.perf_counter()
        batch = model_input(pixels, resize, crop)[None]
        times["preprocess"] = time.perf_counter() - started
        started = time.perf_counter()
        logits, cams = predictor.backend(batch)
        probabilities = 1.0 / (1.0 + np.exp(-logits[0].astype(np.float64)))
        times["model"] = time.perf_counter() - started
        started = time.perf_counter()
        height, width = pixels.shape
        cam_to_image(
            cams[0][int(probabilities.argmax())], width, height, crop_window(width, height, resize, crop)
        )
        times["cam"] = time.perf_counter() - started
        return probabilities, times

    check = predictor.predict_one(read_xray(files[0].read_bytes()).pixels).probabilities
    if np.abs(np.array([check[k] for k in artifact.labels]) - project(files[0])[0]).max() > 1e-6:
        raise SystemExit("The step-by-step project path disagrees with Predictor.predict_one.")
    for path in files[:2]:  # warm-up both paths
        baseline(path), project(path)
    steps = ("decode", "preprocess", "model", "cam")
    measured = {name: {"total": [], **{step: [] for step in steps}} for name in ("naive", "project")}
    max_diff = 0.0
    # Alternating image by image, with a short pause between the paths: PyTorch's OpenMP threads spin for
    # a while after each call and would otherwise steal the CPU from whichever path runs right after.
    for _ in range(3):
        for path in files:
            results = {}
            for name, path_fn in (("naive", baseline), ("project", project)):
                time.sleep(0.02)
                started = time.perf_counter()
                results[name], times = path_fn(path)
                measured[name]["total"].append(time.perf_counter() - started)
                for step in steps:
                    measured[name][step].append(times[step])
            max_diff = max(max_diff, float(np.abs(results["naive"] - results["project"]).max()))
    summary = {
        name: {key: _median_ms(values) for key, values in parts.items()} for name, parts in measured.items()
    }
    threads = torch.get_num_threads()
    peak, peak_source = _peak_flops(threads)
    macs = _dense_macs(artifact.load_model("cpu").float().eval(), crop)
    model_s = summary["project"]["model"] / 1000
    info = predictor.backend_info
    return {
        "benchmark": "inference",
        "images": len(files),
        "image_folder": str(files[0].parent),
        "image_size": "as stored (1024x1024 originals by default)",
        "model": artifact.name,
        "baseline": "PIL decode, torchvision DenseNet-121 fp32 NCHW no_grad, batch 1, one CAM (torch resize)",
        "project": (
            "core.imaging.reader (fast grey-PNG path), core.imaging.preprocess, the Predictor's backend, "
            "one CAM"
        ),
        "backend": info,
        # What ran, and why: on a CPU without BF16 fp32 by necessity, on one with it by measurement.
        "precision": info.get("precision", "f32"),
        "precision_reason": (info.get("precision_decision") or {}).get("reason", "PyTorch runs fp32"),
        "naive_ms": summary["naive"],
        "project_ms": summary["project"],
        "speedup": round(summary["naive"]["total"] / summary["project"]["total"], 2),
        "model_speedup": round(summary["naive"]["model"] / summary["project"]["model"], 2),
        "max_probability_difference": round(max_diff, 6),
        "model_gmacs": round(macs / 1e9, 3),
        "model_gflop": round(2 * macs / 1e9, 3),
        "peak_gflops": round(peak / 1e9, 1),
        "peak_source": peak_source,
        "model_share_of_peak": round(2 * macs / model_s / peak, 3),
        "cpu": cpu_description(),
        "threads": {"torch": threads, "openvino": info.get("threads")},
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "model_load_s": round(load_s, 2),
        "cli": _cli_comparison(files, model_dir),
        **_machine(),
    }


def run(what: str, args: argparse.Namespace) -> dict:
    if what == "inference":
        return bench_inference(args)
    if what == "loader":
        from core.bench.loader import bench_loader
        from core.paths import SHARED_SAMPLE_DIR

        return bench_loader(
            Path(args.data) if args.data else SHARED_SAMPLE_DIR,
            n_images=args.images,
            batch_size=args.batch_size or 32,
        )
    if what == "train":
        from core.bench.train import bench_training

        return bench_training(args)
    raise SystemExit(f"Unknown benchmark '{what}'.")
