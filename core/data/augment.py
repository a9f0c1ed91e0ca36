"""CheXNet input pipeline on whole batches of tensors (CPU or CUDA), no per-sample Python loop on GPU.

Training (Rajpurkar et al. 2017 used random horizontal flips; like most reproductions we also take a
random 224 crop of the 256 cache image): per-sample random crop offsets and flips are applied to the
uint8 batch (one indexing kernel on GPU, see `_gather_crops`), then the crops are scaled to [0, 1],
replicated to 3 channels and ImageNet-normalised.

Evaluation: CheXNet itself resized straight to 224x224. We default to the common reproduction recipe
"resize to 256 (the cache) + centre crop 224" (`eval_transform="center_crop"`); `eval_transform="resize"`
resizes the 256 image to 224 instead, i.e. sees the whole film as CheXNet did — use it to compare with
models trained that way (e.g. the reference predictions of reproduce-chexnet).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from core.imaging.preprocess import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["DEFAULT_CROP", "IMAGENET_MEAN", "IMAGENET_STD", "to_model_input"]

DEFAULT_CROP = 224


def to_model_input(
    batch_uint8: torch.Tensor,
    *,
    train: bool,
    crop: int = DEFAULT_CROP,
    generator: torch.Generator | None = None,
    eval_transform: Literal["center_crop", "resize"] = "center_crop",
) -> torch.Tensor:
    """uint8 [B, H, W] (or [B, 1, H, W]) grey batch -> float32 [B, 3, crop, crop], channels_last.

    `train`: per-sample random crop + random horizontal flip (p = 0.5), drawn from `generator`
    (a CPU or same-device generator; default: torch's global RNG). Not train: deterministic
    `eval_transform`. The result is on the batch's device.
    """
    if batch_uint8.dim() == 4 and batch_uint8.shape[1] == 1:
        batch_uint8 = batch_uint8[:, 0]
    if batch_uint8.dim() != 3 or batch_uint8.dtype != torch.uint8:
        raise ValueError(
            f"Expected a uint8 [B, H, W] batch, got {batch_uint8.dtype} {tuple(batch_uint8.shape)}."
        )
    batch, height, width = batch_uint8.shape
    if height < crop or width < crop:
        raise ValueError(f"Cannot crop {crop} px from {height}x{width} images.")
    device = batch_uint8.device

    if train:
        top, left, flip = _random_offsets(batch, height - crop, width - crop, generator, device)
        grey = _gather_crops(batch_uint8, top, left, flip, crop)
        return _normalize(grey)
    if eval_transform == "resize":
        if (height, width) == (crop, crop):
            return _normalize(batch_uint8)
        resized = F.interpolate(
            batch_uint8[:, None].float(),
            size=(crop, crop),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        return _normalize(resized[:, 0].round_().clamp_(0, 255))
    if eval_transform != "center_crop":
        raise ValueError(f"Unknown eval_transform {eval_transform!r}; use 'center_crop' or 'resize'.")
    top, left = (height - crop) // 2, (width - crop) // 2
    return _normalize(batch_uint8[:, top : top + crop, left : left + crop])


def _random_offsets(
    batch: int, max_top: int, max_left: int, generator: torch.Generator | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Draw where the generator lives (CPU by default), then move the B-sized vectors: cheap, reproducible.
    draw_device = generator.device if generator is not None else torch.device("cpu")
    top = torch.randint(0, max_top + 1, (batch,), generator=generator, device=draw_device)
    left = torch.randint(0, max_left + 1, (batch,), generator=generator, device=draw_device)
    flip = torch.rand(batch, generator=generator, device=draw_device) < 0.5
    return top.to(device), left.to(device), flip.to(device)


def _gather_crops(
    images: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    flip: torch.Tensor,
    crop: int,
    *,
    vectorised: bool | None = None,
) -> torch.Tensor:
    """[B, crop, crop] with image b cropped at (top[b], left[b]) and mirrored where flip[b].

    On an accelerator (default there): one indexing kernel over an `unfold` view of every crop window,
    [B, H-crop+1, W-crop+1, crop, crop] (no copy), then a whole-batch select for the flips; nothing
    syncs with the host. On CPU (default there): B slice copies, ~10x faster than PyTorch's per-element
    index kernel (0.5 ms vs 6 ms for 32 images). Both give identical results (tested).
    """
    if vectorised is None:
        vectorised = images.device.type != "cpu"
    if vectorised:
        windows = images.unfold(1, crop, 1).unfold(2, crop, 1)
        crops = windows[torch.arange(images.shape[0], device=images.device), top, left]
        return torch.where(flip[:, None, None], crops.flip(-1), crops)
    crops = torch.empty((images.shape[0], crop, crop), dtype=images.dtype)
    for i, (y, x, mirrored) in enumerate(zip(top.tolist(), left.tolist(), flip.tolist(), strict=True)):
        window = images[i, y : y + crop, x : x + crop]
        crops[i] = window.flip(-1) if mirrored else window
    return crops


def _normalize(grey: torch.Tensor) -> torch.Tensor:
    """uint8 or float [B, H, W] in 0..255 -> ImageNet-normalised float32 [B, 3, H, W] in channels_last."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=grey.device)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=grey.device)
    # (x / 255 - mean) / std as one fused multiply-add; computing in NHWC and permuting gives
    # channels_last strides without an extra copy.
    nhwc = torch.addcmul(-mean / std, grey.to(torch.float32)[..., None], 1.0 / (255.0 * std))  # [B, H, W, 3]
    return nhwc.permute(0, 3, 1, 2)
