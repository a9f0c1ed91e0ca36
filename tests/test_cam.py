"""core.inference.cam: CAMs land where the model looked, in the original image's pixels, and render
faithfully."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.imaging.display import DISPLAY_MAX_SIDE, display_copy, display_size
from core.imaging.preprocess import CropWindow, crop_window, model_input
from core.imaging.reader import read_xray_file
from core.inference.artifact import new_card, save_artifact
from core.inference.cam import cam_to_image, colorize, normalise, peak_location, render_overlay
from core.inference.models import create_model
from core.inference.predictor import Prediction, Predictor
from core.labels import FINDINGS

GRID = 7


def cell_bounds(window: CropWindow, row: int, col: int, grid: int = GRID) -> tuple[float, ...]:
    """(x0, x1, y0, y1) of one CAM cell in original-image pixels."""
    cell = window.side / grid
    return (
        window.left + col * cell,
        window.left + (col + 1) * cell,
        window.top + row * cell,
        window.top + (row + 1) * cell,
    )


def assert_peak_in_cell(cam01: np.ndarray, window: CropWindow, row: int, col: int) -> None:
    x, y = peak_location(cam01)
    x0, x1, y0, y1 = cell_bounds(window, row, col)
    assert x0 - 1 <= x <= x1 + 1 and y0 - 1 <= y <= y1 + 1, (x, y, (x0, x1, y0, y1))


def hand_made_cam(row: int, col: int, seed: int = 0) -> np.ndarray:
    cam = np.random.default_rng(seed).uniform(-2.0, 1.0, size=(GRID, GRID)).astype(np.float32)
    cam[row, col] = 3.0
    return cam


# --------------------------------------------------------------------------------- hand-made CAM arrays


@pytest.mark.parametrize(
    ("width", "height", "row", "col"),
    [(1024, 1024, 2, 5), (1024, 640, 0, 6), (1024, 640, 6, 0), (600, 900, 3, 3), (333, 517, 6, 1)],
)
def test_cam_peak_lands_in_the_matching_region_of_the_original_image(width, height, row, col):
    window = crop_window(width, height, 256, 224)
    full = cam_to_image(hand_made_cam(row, col), width, height, window)
    assert full.shape == (height, width) and full.dtype == np.float32
    # Normalised to [0, 1]; bilinear upsampling may fall just short of the sample value at the peak.
    assert full.min() >= 0.0 and full.max() == pytest.approx(1.0, abs=1e-2)
    assert_peak_in_cell(full, window, row, col)


@pytest.mark.parametrize(("width", "height"), [(1024, 1024), (1024, 640), (600, 900)])
def test_cam_is_zero_outside_the_crop_the_model_saw(width, height):
    window = crop_window(width, height, 256, 224)
    cam = np.ones((GRID, GRID), dtype=np.float32)
    cam[0, 0] = 0.0  # not flat, and high along every edge of the window
    full = cam_to_image(cam, width, height, window)
    left, top = round(window.left), round(window.top)
    right, bottom = left + round(window.side), top + round(window.side)
    assert full[:, : left - 1].max(initial=0) == 0 and full[:, right + 1 :].max(initial=0) == 0
    assert full[: top - 1].max(initial=0) == 0 and full[bottom + 1 :].max(initial=0) == 0
    assert full[top + 2 : bottom - 2, right - 3].min() > 0.9  # the window's right edge is covered
    assert full[bottom - 3, (left + right) // 2 : right - 2].min() > 0.9


def test_the_window_is_the_centre_of_the_shorter_side():
    # 1024x640: centre square 640 at x=192, resized 640→256, crop 224 → 560 original pixels at x=232.
    assert crop_window(1024, 640, 256, 224) == CropWindow(left=232.0, top=40.0, side=560.0)
    assert crop_window(600, 900, 256, 224) == CropWindow(left=37.5, top=187.5, side=525.0)


def test_a_flat_or_broken_cam_highlights_nothing():
    assert not normalise(np.full((GRID, GRID), 4.2)).any()
    assert not normalise(np.full((GRID, GRID), np.nan)).any()
    window = crop_window(300, 300, 256, 224)
    assert not cam_to_image(np.zeros((GRID, GRID)), 300, 300, window).any()


def test_prediction_cam_uses_the_asked_findings_map():
    width, height = 900, 700
    cams = np.zeros((len(FINDINGS), GRID, GRID), dtype=np.float32)
    cells = {label: divmod(i * 3 % (GRID * GRID), GRID) for i, label in enumerate(FINDINGS)}
    for i, label in enumerate(FINDINGS):
        cams[i] = hand_made_cam(*cells[label], seed=i)
    window = crop_window(width, height, 256, 224)
    prediction = Prediction(
        labels=FINDINGS,
        probabilities=dict.fromkeys(FINDINGS, 0.5),
        positive=[],
        cams=cams,
        image_size=(width, height),
        window=window,
    )
    for label in ("Atelectasis", "Effusion", "Hernia"):
        full = prediction.cam(label)
        assert full.shape == (height, width)
        assert_peak_in_cell(full, window, *cells[label])


@pytest.mark.parametrize(("width", "height"), [(1024, 1024), (1024, 640), (333, 517)])
def test_upsampling_is_pillows_bilinear_resize_of_the_map(width, height):
    """The two small matrix products give what resizing the map as a float image gives (edges held)."""
    cam = hand_made_cam(2, 4, seed=3)
    window = crop_window(width, height, 256, 224)
    side = round(window.side)
    as_image = Image.fromarray(normalise(cam), mode="F")
    expected = np.asarray(as_image.resize((side, side), Image.Resampling.BILINEAR))
    full = cam_to_image(cam, width, height, window)
    left, top = round(window.left), round(window.top)
    inside = full[max(top, 0) : top + side, max(left, 0) : left + side]
    np.testing.assert_allclose(inside, expected[: inside.shape[0], : inside.shape[1]], rtol=0, atol=1e-5)
    assert full.max() <= 1.0 and full.min() >= 0.0


# ---------------------------------------------------------------------------------- through the model


@pytest.fixture(scope="module")
def xray(full_resolution_images) -> np.ndarray:
    """A real X-ray cropped to landscape, so that the crop window is not the whole image."""
    pixels = read_xray_file(full_resolution_images[0]).pixels
    return np.ascontiguousarray(pixels[100:800, :])  # 1024 wide, 700 high


@pytest.fixture(scope="module")
def probe(xray: np.ndarray, tmp_path_factory):
    """A CheXNet whose Effusion row selects one feature channel (the one with the clearest single peak)."""
    torch.manual_seed(0)
    model = create_model().eval()
    x = torch.from_numpy(model_input(xray))[None]
    with torch.no_grad():
        maps = model.feature_maps(x)[0]  # [1024, 7, 7]
    top2 = maps.flatten(1).topk(2, dim=1).values
    channel = int((top2[:, 0] - top2[:, 1]).argmax())
    k = FINDINGS.index("Effusion")
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.weight[k, channel] = 1.0
        model.classifier.bias.zero_()
        logits, cams = model.forward_with_cam(x)
    artifact = save_artifact(model, tmp_path_factory.mktemp("probe") / "m", new_card("probe"), half=False)
    return {
        "model": model,
        "maps": maps,
        "channel": channel,
        "k": k,
        "logits": logits[0],
        "cams": cams[0],
        "artifact": artifact,
    }


def test_cam_of_a_one_hot_row_is_that_feature_channels_map(probe):
    channel_map = probe["maps"][probe["channel"]]
    torch.testing.assert_close(probe["cams"][probe["k"]], channel_map, rtol=0, atol=1e-6)
    others = torch.cat([probe["cams"][: probe["k"]], probe["cams"][probe["k"] + 1 :]])
    assert not others.any()
    assert float(probe["logits"][probe["k"]]) == pytest.approx(float(channel_map.mean()), rel=1e-5)


def test_predictor_cam_peaks_where_the_feature_map_peaks(probe, xray):
    prediction = Predictor(probe["artifact"], backend="torch", device="cpu").predict_one(xray)
    channel_map = probe["maps"][probe["channel"]].numpy()
    np.testing.assert_allclose(prediction.cams[probe["k"]], channel_map, rtol=1e-4, atol=1e-4)
    row, col = np.unravel_index(int(channel_map.argmax()), channel_map.shape)
    height, width = xray.shape
    window = crop_window(width, height, 256, 224)
    assert prediction.window == window
    full = prediction.cam("Effusion")
    assert full.shape == (height, width)
    assert_peak_in_cell(full, window, int(row), int(col))
    assert not full[:, : int(window.left) - 1].any()  # the sides the model never saw stay cold


# ---------------------------------------------------------------------------------------------- overlay


@pytest.fixture(scope="module")
def hot_block(xray: np.ndarray) -> np.ndarray:
    cam01 = np.zeros(xray.shape, dtype=np.float32)
    cam01[200:300, 400:600] = 1.0
    cam01[400:450, 100:150] = 0.5
    return cam01


def test_overlay_is_rgb_at_the_original_resolution(xray, hot_block):
    overlay = render_overlay(xray, hot_block, 0.45)
    assert overlay.shape == (*xray.shape, 3) and overlay.dtype == np.uint8


def test_overlay_at_opacity_zero_is_the_grey_image_exactly(xray, hot_block):
    assert np.array_equal(render_overlay(xray, hot_block, 0.0), np.repeat(xray[:, :, None], 3, axis=2))


def test_overlay_at_opacity_one_paints_hot_pixels_and_keeps_cold_ones(xray, hot_block):
    overlay = render_overlay(xray, hot_block, 1.0)
    hottest = colorize(np.ones((1, 1), dtype=np.float32))[0, 0]
    assert (overlay[200:300, 400:600] == hottest).all()
    cold = hot_block == 0
    assert np.array_equal(overlay[cold], np.repeat(xray[cold][:, None], 3, axis=1))
    half = overlay[400:450, 100:150].astype(int)
    expected = 0.5 * xray[400:450, 100:150, None] + 0.5 * colorize(np.full((1, 1), 0.5, np.float32))[0, 0]
    assert np.abs(half - expected).max() <= 1
    assert np.array_equal(render_overlay(xray, hot_block, 7.0), overlay)  # opacity is clipped to [0, 1]


def test_overlay_refuses_a_cam_of_another_size(xray):
    with pytest.raises(ValueError, match="same size"):
        render_overlay(xray, np.zeros((7, 7), dtype=np.float32))


def test_colormap_runs_from_dark_blue_to_dark_red():
    ends = colorize(np.array([[0.0, 1.0]], dtype=np.float32))[0]
    assert ends.tolist() == [[0, 0, 128], [128, 0, 0]]


# ------------------------------------------------------------------------------------ screen-size copies


def test_a_screen_size_cam_is_the_full_cam_shrunk(probe, xray):
    """The Predict page draws the CAM over a screen copy (core.imaging.display): the map over the copy must be
    the full-resolution map at that size, its cold sides included."""
    prediction = Predictor(probe["artifact"], backend="torch", device="cpu").predict_one(xray)
    height, width = xray.shape  # 700 x 1024
    size = display_size(width, height, max_side=512)
    assert size == (512, 350)
    small = prediction.cam("Effusion", size)
    assert small.shape == (350, 512)
    full = prediction.cam("Effusion")
    shrunk = np.asarray(Image.fromarray(full).resize(size, Image.Resampling.BOX))
    assert np.abs(small - shrunk).max() < 0.05
    assert peak_location(small) == pytest.approx(np.array(peak_location(full)) / 2, abs=3)
    window = prediction.window_at(size)
    assert window.side == pytest.approx(prediction.window.side / 2)
    assert not small[:, : int(window.left) - 1].any()
    assert prediction.cam("Effusion", (width, height)).tobytes() == full.tobytes()


def test_display_copy_fits_the_screen_and_leaves_small_images_alone(xray):
    assert display_copy(xray) is xray  # 1024 x 700 already fits
    tall = np.repeat(xray, 3, axis=0)  # 1024 wide, 2100 high
    copy = display_copy(tall)
    assert copy.shape == (DISPLAY_MAX_SIDE, round(1024 * DISPLAY_MAX_SIDE / 2100)) and copy.dtype == np.uint8
    assert abs(float(copy.mean()) - float(tall.mean())) < 1.0  # area averaging keeps the brightness


def test_overlay_in_strips_equals_the_whole_image_formula(xray):
    """render_overlay blends a few hundred rows at a time; the result is the one-shot blend exactly."""
    tall = np.ascontiguousarray(np.concatenate([xray, xray[::-1]])[:1000])  # several strips, a partial last
    rng = np.random.default_rng(0)
    cam01 = rng.random(tall.shape, dtype=np.float32)
    alpha = (0.6 * cam01)[:, :, None]
    expected = (np.repeat(tall[:, :, None].astype(np.float32), 3, axis=2) * (1 - alpha)
                + colorize(cam01).astype(np.float32) * alpha).round().astype(np.uint8)  # fmt: skip
    assert np.array_equal(render_overlay(tall, cam01, 0.6), expected)
