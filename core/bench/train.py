"""`python -m core bench train`: training images/s at 224 px, extrapolated to a full ChestX-ray14 epoch."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from core.data.augment import to_model_input
from core.data.cache import DEFAULT_SIZE
from core.devices import device_description, resolve_device
from core.labels import FINDINGS
from core.training.config import FULL_DATASET_IMAGES
from core.training.step import optimization_step, precision_text


def bench_training(args: Any) -> dict:
    """Training throughput at 224 px (forward + backward + Adam step, augmentation on the device).

    CPU: a small batch for a few steps (under ~2 minutes on two cores). CUDA: bf16 autocast,
    channels_last, batch >= 128. Data: synthetic 256-px uint8 batches (what the cache serves), so the
    figure is the model's speed, not the disk's. Extrapolated to one 112,120-image epoch.
    """
    from core.inference.models import create_model

    device = resolve_device(getattr(args, "device", None) or "auto")
    cuda = device.type == "cuda"
    batch = int(getattr(args, "batch_size", None) or (256 if cuda else 8))
    if cuda:
        batch = max(batch, 128)
    images = getattr(args, "images", None)
    steps = max(2, math.ceil(images / batch)) if images else (20 if cuda else 3)
    warmup = 5 if cuda else 1
    if cuda:
        torch.backends.cudnn.benchmark = True
    model = create_model("densenet121").to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    criterion = nn.BCEWithLogitsLoss()
    generator = torch.Generator(device=device).manual_seed(0)
    source = torch.randint(
        0, 256, (batch, DEFAULT_SIZE, DEFAULT_SIZE), dtype=torch.uint8, generator=generator, device=device
    )
    targets = (torch.rand(batch, len(FINDINGS), generator=generator, device=device) < 0.1).float()

    def step() -> torch.Tensor:
        x = to_model_input(source, train=True, crop=224, generator=generator)
        return optimization_step(model, x, targets, criterion, optimizer, device)

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    loss = torch.zeros((), device=device)
    for _ in range(steps):
        loss += step()
    float(loss)  # one sync at the end
    seconds = time.perf_counter() - started
    per_s = steps * batch / seconds
    result = {
        "benchmark": "train",
        "device": device_description(device),
        "image_size": 224,
        "batch_size": batch,
        "steps": steps,
        "warmup_steps": warmup,
        "precision": precision_text(device),
        "channels_last": True,
        "data": (
            "synthetic 256-px uint8 batches through core.data.augment (random crop 224 + flip) on the device"
        ),
        "images_per_s": round(per_s, 2),
        "step_ms": round(1000 * seconds / steps, 1),
        "epoch_112k_s": round(FULL_DATASET_IMAGES / per_s, 1),
        "epoch_112k_h": round(FULL_DATASET_IMAGES / per_s / 3600, 3),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if cuda:
        result["gpu"] = torch.cuda.get_device_name(device)
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result
