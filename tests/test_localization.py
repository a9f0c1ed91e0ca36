"""core.evaluation.localization on hand-computed boxes and synthetic CAMs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.evaluation.localization import (
    LocalizationInputError,
    cam_peak,
    cam_to_box,
    iobb,
    iou,
    localization_report,
    pointing_hit,
)


def blob(shape, centre, sigma, peak=1.0):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return peak * np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * sigma**2))


def block_cam(shape, box, value=1.0):
    """A CAM that is `value` inside box (x, y, w, h) and 0 elsewhere."""
    cam = np.zeros(shape)
    x, y, w, h = box
    cam[y : y + h, x : x + w] = value
    return cam


# ---------------------------------------------------------------------------------------- IoBB / IoU


def test_iobb_and_iou_hand_computed():
    pred, gt = (0, 0, 10, 10), (5, 5, 10, 10)  # overlap 5x5 = 25
    assert iobb(pred, gt) == pytest.approx(25 / 100)
    assert iou(pred, gt) == pytest.approx(25 / 175)
    # IoBB divides by the predicted box only: a small box inside the truth scores 1.
    assert iobb((2, 2, 2, 3), (0, 0, 10, 10)) == 1.0
    assert iou((2, 2, 2, 3), (0, 0, 10, 10)) == pytest.approx(6 / 100)
    # ...and a huge box covering the truth scores low IoBB.
    assert iobb((0, 0, 100, 100), (10, 10, 10, 10)) == pytest.approx(0.01)
    assert iou((1, 2, 3, 4), (1, 2, 3, 4)) == 1.0


def test_iobb_iou_disjoint_touching_and_empty():
    assert iobb((0, 0, 5, 5), (5, 0, 5, 5)) == 0.0  # shares an edge only
    assert iou((0, 0, 5, 5), (20, 20, 5, 5)) == 0.0
    assert iobb((3, 3, 0, 4), (0, 0, 10, 10)) == 0.0  # empty predicted box
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0
    assert iobb((0.5, 0.5, 2.0, 2.0), (1.5, 0.5, 2.0, 1.0)) == pytest.approx(1.0 / 4.0)  # float boxes


@pytest.mark.parametrize("bad", [(0, 0, -1, 2), (0, 0, 1), (0, float("nan"), 1, 1)])
def test_bad_boxes_raise(bad):
    with pytest.raises(LocalizationInputError):
        iobb(bad, (0, 0, 1, 1))


# ------------------------------------------------------------------------------------------ cam_to_box


def test_cam_to_box_recovers_a_block():
    cam = block_cam((64, 80), (30, 10, 15, 10)) + 0.05 * np.random.default_rng(0).random((64, 80))
    assert cam_to_box(cam) == (30, 10, 15, 10)


def test_cam_to_box_on_a_gaussian_blob_is_the_half_maximum_square():
    cam = blob((100, 120), centre=(40, 70), sigma=8)
    x, y, w, h = cam_to_box(cam, threshold_fraction=0.5)
    radius = 8 * np.sqrt(2 * np.log(2))  # half maximum of a Gaussian
    # The box is centred on the blob (pixel centres at x + 0.5) and spans ~2 * radius.
    assert x + w / 2 - 0.5 == pytest.approx(70, abs=0.01) and y + h / 2 - 0.5 == pytest.approx(40, abs=0.01)
    assert 2 * radius - 1 <= w <= 2 * radius + 1 and w == h
    # A higher threshold keeps a smaller core.
    assert cam_to_box(cam, threshold_fraction=0.9)[2] < w


def test_cam_to_box_keeps_the_largest_region_not_the_brightest():
    cam = block_cam((60, 60), (5, 5, 20, 20), value=0.8)  # large, moderately hot
    cam += block_cam((60, 60), (45, 45, 4, 4), value=1.0)  # small, hottest
    assert cam_to_box(cam, threshold_fraction=0.5) == (5, 5, 20, 20)
    # Below the threshold a region does not count, however large.
    cam += block_cam((60, 60), (0, 30, 40, 30), value=0.3)
    assert cam_to_box(cam, threshold_fraction=0.5) == (5, 5, 20, 20)


def test_cam_to_box_regions_are_eight_connected_and_ties_go_to_the_peak():
    cam = np.zeros((10, 10))
    cam[2, 2] = cam[3, 3] = cam[4, 4] = 1.0  # a diagonal: one region under 8-connectivity
    cam[8, 0] = cam[8, 1] = 0.9
    assert cam_to_box(cam) == (2, 2, 3, 3)
    tie = np.zeros((10, 10))
    tie[1, 1:3] = 0.8
    tie[7, 6:8] = [0.8, 1.0]  # same size, holds the maximum
    assert cam_to_box(tie) == (6, 7, 2, 1)


def test_cam_to_box_scales_to_the_image_and_handles_flat_and_bad_cams():
    cam = block_cam((8, 8), (4, 2, 2, 2))
    assert cam_to_box(cam, image_size=(1024, 512)) == (512.0, 128.0, 256.0, 128.0)
    assert cam_to_box(np.full((7, 7), 0.3)) is None
    assert cam_to_box(cam[None]) == (4, 2, 2, 2)  # a [1, H, W] map is accepted
    with pytest.raises(LocalizationInputError):
        cam_to_box(np.zeros(5))
    with pytest.raises(LocalizationInputError):
        cam_to_box(np.full((3, 3), np.inf))
    with pytest.raises(LocalizationInputError):
        cam_to_box(cam, threshold_fraction=0)


# ------------------------------------------------------------------------------------------- pointing


def test_pointing_hit_and_miss():
    cam = blob((50, 50), centre=(20, 30), sigma=3)
    assert cam_peak(cam) == (30.5, 20.5)
    assert pointing_hit(cam, (25, 15, 10, 10))
    assert not pointing_hit(cam, (0, 0, 20, 20))
    assert pointing_hit(cam, (30.5, 20.5, 5, 5))  # edges count as inside
    assert not pointing_hit(cam, (31, 21, 5, 5))
    # A 7x7 CAM over a 700x700 image: peak pixel (row 2, col 5) -> centre (550, 250).
    small = np.zeros((7, 7))
    small[2, 5] = 1
    assert pointing_hit(small, (500, 200, 100, 100), image_size=(700, 700))
    assert not pointing_hit(small, (0, 0, 500, 700), image_size=(700, 700))


# -------------------------------------------------------------------------------------------- report


def test_localization_report_on_constructed_cases():
    shape = (100, 100)
    gt = (20, 20, 40, 40)
    items = [
        ("Atelectasis", block_cam(shape, gt), gt),  # IoBB 1, IoU 1, hit
        ("Atelectasis", block_cam(shape, (40, 20, 40, 40)), gt),  # half inside: IoBB 0.5, IoU 1/3, hit
        ("Atelectasis", block_cam(shape, (70, 70, 10, 10)), gt),  # disjoint: 0, miss
        ("Infiltrate", np.zeros(shape), gt),  # flat CAM: no box, counted as a miss
        ("Cardiomegaly", block_cam(shape, (25, 25, 10, 20)), gt),  # inside: IoBB 1, IoU 1/8
    ]
    calls = []
    report = localization_report(iter(items), progress=lambda d, t: calls.append((d, t)))
    json.dumps(report, allow_nan=False)
    assert list(report["per_label"]) == ["Atelectasis", "Cardiomegaly", "Infiltration"]

    atelectasis = report["per_label"]["Atelectasis"]
    assert atelectasis["n_boxes"] == 3 and atelectasis["n_no_box"] == 0
    assert atelectasis["mean_iobb"] == pytest.approx(0.5)
    assert atelectasis["mean_iou"] == pytest.approx((1 + 1 / 3) / 3)
    assert atelectasis["iobb_accuracy"] == pytest.approx(
        {"0.1": 2 / 3, "0.2": 2 / 3, "0.3": 2 / 3, "0.4": 2 / 3, "0.5": 2 / 3, "0.6": 1 / 3, "0.7": 1 / 3}
    )
    assert atelectasis["iou_accuracy"]["0.3"] == pytest.approx(2 / 3)
    assert atelectasis["iou_accuracy"]["0.4"] == pytest.approx(1 / 3)
    assert atelectasis["pointing_accuracy"] == pytest.approx(2 / 3)

    infiltration = report["per_label"]["Infiltration"]
    assert infiltration["n_no_box"] == 1 and infiltration["mean_iobb"] == 0.0
    assert infiltration["pointing_accuracy"] == 0.0  # argmax of a flat map is (0, 0), outside

    overall = report["overall"]
    assert overall["n_boxes"] == 5 and overall["n_no_box"] == 1
    assert overall["iobb_accuracy"]["0.5"] == pytest.approx(3 / 5)
    assert overall["iobb_accuracy"]["0.7"] == pytest.approx(2 / 5)
    assert overall["mean_iobb"] == pytest.approx(2.5 / 5)
    assert overall["pointing_accuracy"] == pytest.approx(3 / 5)
    assert calls == [(i, 0) for i in range(1, 6)]  # a generator has no length


def test_localization_report_with_small_cams_and_custom_thresholds():
    gt = (512, 256, 256, 256)  # in 1024x1024 image pixels
    cam = block_cam((16, 16), (8, 4, 4, 4))  # exactly gt once scaled by 64
    items = [("Mass", cam, gt), ("Mass", block_cam((16, 16), (8, 4, 8, 4)), gt)]  # second: twice as wide
    report = localization_report(items, image_size=(1024, 1024), t_values=(0.25, 0.75))
    mass = report["per_label"]["Mass"]
    assert mass["iobb_accuracy"] == {"0.25": 1.0, "0.75": 0.5}
    assert mass["mean_iobb"] == pytest.approx(0.75)
    assert mass["pointing_accuracy"] == 1.0
    assert report["t_values"] == [0.25, 0.75]


def test_localization_report_empty():
    report = localization_report([])
    assert report["per_label"] == {} and report["overall"] is None
