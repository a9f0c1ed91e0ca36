"""core.data.augment: the batched CheXNet input transform."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.data.augment import IMAGENET_MEAN, IMAGENET_STD, _gather_crops, _random_offsets, to_model_input
from core.data.cache import load_preprocessed
from core.imaging.preprocess import model_input
from core.imaging.reader import read_xray_file

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation: [B, 3, H, W] float -> [B, H, W] 0..255 (channel 0; all three are equal)."""
    grey = (x * STD + MEAN) * 255.0
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-3) and torch.allclose(
        grey[:, 0], grey[:, 2], atol=1e-3
    )
    return grey[:, 0].round()


def _coordinate_batch(batch: int, size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Two batches whose pixels hold their own row (resp. column) index, to read crop offsets back."""
    steps = torch.arange(size, dtype=torch.uint8)
    rows = steps[:, None].expand(size, size).expand(batch, size, size).contiguous()
    cols = steps[None, :].expand(size, size).expand(batch, size, size).contiguous()
    return rows, cols


def test_shapes_dtype_and_memory_format() -> None:
    batch = torch.randint(0, 256, (5, 256, 256), dtype=torch.uint8)
    for train in (True, False):
        out = to_model_input(batch, train=train)
        assert out.shape == (5, 3, 224, 224) and out.dtype == torch.float32
        assert out.is_contiguous(memory_format=torch.channels_last)
    assert to_model_input(batch[:, None], train=False).shape == (5, 3, 224, 224)  # [B, 1, H, W] too
    assert to_model_input(batch, train=True, crop=200).shape == (5, 3, 200, 200)


def test_normalisation_values() -> None:
    batch = torch.stack([torch.full((256, 256), v, dtype=torch.uint8) for v in (0, 128, 255)])
    out = to_model_input(batch, train=False)
    for i, value in enumerate((0, 128, 255)):
        for channel in range(3):
            expected = (value / 255.0 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
            assert out[i, channel].min().item() == pytest.approx(expected, abs=1e-5)
            assert out[i, channel].max().item() == pytest.approx(expected, abs=1e-5)
    assert out[0, 0, 0, 0].item() == pytest.approx(-0.485 / 0.229, abs=1e-5)


def test_eval_is_a_deterministic_centre_crop() -> None:
    rows, cols = _coordinate_batch(3)
    out_rows = _to_pixels(to_model_input(rows, train=False))
    out_cols = _to_pixels(to_model_input(cols, train=False))
    assert torch.equal(out_rows[:, :, 0], torch.arange(16, 240).float().expand(3, 224))
    assert torch.equal(out_cols[:, 0, :], torch.arange(16, 240).float().expand(3, 224))
    random = torch.randint(0, 256, (4, 256, 256), dtype=torch.uint8)
    assert torch.equal(to_model_input(random, train=False), to_model_input(random, train=False))


def test_eval_matches_the_predictors_preprocessing(sample_dir: Path) -> None:
    path = sample_dir / "images" / "00000001_000.png"
    cached = torch.from_numpy(load_preprocessed(path))[None]
    ours = to_model_input(cached, train=False)[0]
    theirs = torch.from_numpy(model_input(read_xray_file(path).pixels))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_eval_resize_variant() -> None:
    batch = torch.full((2, 256, 256), 77, dtype=torch.uint8)
    out = to_model_input(batch, train=False, eval_transform="resize")
    assert out.shape == (2, 3, 224, 224)
    torch.testing.assert_close(out, to_model_input(batch[:, :224, :224], train=False))
    with pytest.raises(ValueError):
        to_model_input(batch, train=False, eval_transform="squash")  # type: ignore[arg-type]


def test_train_crops_vary_and_flip_about_half() -> None:
    # 64-px images cropped to 32: the same code path as 256 -> 224, with offsets in 0..32, but 50x cheaper.
    batch, crop = 400, 32
    rows, cols = _coordinate_batch(batch, size=64)
    generator = torch.Generator().manual_seed(123)
    out_rows = _to_pixels(to_model_input(rows, train=True, crop=crop, generator=generator))
    generator = torch.Generator().manual_seed(123)
    out_cols = _to_pixels(to_model_input(cols, train=True, crop=crop, generator=generator))

    # Row offsets: each crop is a contiguous run of rows starting somewhere in 0..32.
    tops = out_rows[:, 0, 0]
    assert torch.equal(out_rows[:, :, 0], tops[:, None] + torch.arange(crop))
    assert tops.min() >= 0 and tops.max() <= 32 and len(tops.unique()) > 20

    # Columns run left-to-right (not flipped) or right-to-left (flipped), from an offset in 0..32.
    first, last = out_cols[:, 0, 0], out_cols[:, 0, -1]
    flipped = first > last
    lefts = torch.where(flipped, last, first)
    steps = torch.arange(crop)
    expected = torch.where(flipped[:, None], lefts[:, None] + crop - 1 - steps, lefts[:, None] + steps)
    assert torch.equal(out_cols[:, 0, :], expected)
    assert lefts.min() >= 0 and lefts.max() <= 32 and len(lefts.unique()) > 20
    assert 0.4 < flipped.float().mean().item() < 0.6
    # Rows and columns are drawn independently.
    assert not torch.equal(tops, lefts)


def test_default_train_crop_offsets_stay_inside_256() -> None:
    rows, cols = _coordinate_batch(16)
    generator = torch.Generator().manual_seed(0)
    out_rows = _to_pixels(to_model_input(rows, train=True, generator=generator))
    out_cols = _to_pixels(to_model_input(cols, train=True, generator=generator))
    assert out_rows.min() >= 0 and out_rows.max() <= 255 and out_cols.min() >= 0 and out_cols.max() <= 255
    assert len(out_rows[:, 0, 0].unique()) > 1  # offsets differ within one batch


def test_train_is_reproducible_with_a_generator() -> None:
    batch = torch.randint(0, 256, (8, 256, 256), dtype=torch.uint8)
    a = to_model_input(batch, train=True, generator=torch.Generator().manual_seed(7))
    b = to_model_input(batch, train=True, generator=torch.Generator().manual_seed(7))
    c = to_model_input(batch, train=True, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_flipped_crop_is_the_mirror_image() -> None:
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    batch = image.expand(16, 64, 64).contiguous()
    generator = torch.Generator().manual_seed(1)
    out = _to_pixels(to_model_input(batch, train=True, crop=40, generator=generator))
    windows = image.unfold(0, 40, 1).unfold(1, 40, 1).float()  # every possible crop
    for crop in out:
        plain = bool((windows == crop).flatten(2).all(-1).any())
        mirrored = bool((windows == crop.flip(-1)).flatten(2).all(-1).any())
        assert plain != mirrored  # exactly one of the two (random pixels are never symmetric)


def test_vectorised_and_loop_crops_agree() -> None:
    # The vectorised path is what runs on CUDA; check it on CPU against the per-sample loop.
    images = torch.randint(0, 256, (64, 256, 256), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(2)
    top, left, flip = _random_offsets(64, 32, 32, generator, images.device)
    assert 0 < int(flip.sum()) < 64
    looped = _gather_crops(images, top, left, flip, 224, vectorised=False)
    vectorised = _gather_crops(images, top, left, flip, 224, vectorised=True)
    assert torch.equal(looped, vectorised)
    assert torch.equal(
        looped[0],
        images[0, top[0] : top[0] + 224, left[0] : left[0] + 224].flip(-1)
        if flip[0]
        else images[0, top[0] : top[0] + 224, left[0] : left[0] + 224],
    )


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(torch.zeros(2, 256, 256), train=True)
    with pytest.raises(ValueError, match="crop"):
        to_model_input(torch.zeros(2, 100, 100, dtype=torch.uint8), train=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    batch = torch.randint(0, 256, (16, 256, 256), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(5)
    on_cpu = to_model_input(batch, train=True, generator=generator)
    generator = torch.Generator().manual_seed(5)
    on_gpu = to_model_input(batch.cuda(), train=True, generator=generator)
    assert on_gpu.device.type == "cuda" and on_gpu.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(on_gpu.cpu(), on_cpu)
    torch.testing.assert_close(
        to_model_input(batch.cuda(), train=False).cpu(), to_model_input(batch, train=False)
    )
