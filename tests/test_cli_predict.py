"""`python -m core predict | cam`: the command-line contract, run as a real subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.cli.main import main
from core.imaging.preprocess import crop_window
from core.imaging.reader import read_xray_file
from core.inference.artifact import new_card, save_artifact
from core.inference.cam import render_overlay
from core.inference.models import create_model
from core.inference.predictor import Predictor
from core.labels import FINDINGS
from core.ood.gate import COLOUR_REASON, DOCUMENT_REASON, UNIFORM_REASON
from core.ood.probes import blank_probes, document_probes, photo_probes
from core.paths import BUNDLED_MODEL_DIR, REPO_ROOT

MODEL_NAME = "cli-test"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cli") / "model"
    save_artifact(create_model(), path, new_card(MODEL_NAME), half=True)
    return path


@pytest.fixture(scope="module")
def predictor(model_dir: Path) -> Predictor:
    return Predictor.from_path(model_dir, backend="torch", device="cpu")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, full_resolution_images) -> Path:
    """A folder with two real X-rays, a text file, a truncated PNG and a landscape crop of a real X-ray."""
    root = tmp_path_factory.mktemp("files")
    shutil.copy(full_resolution_images[0], root / "first.png")
    (root / "notes.txt").write_text("Patient notes: not an image at all.\n" * 20)
    data = full_resolution_images[2].read_bytes()
    (root / "cut.png").write_bytes(data[: len(data) // 2])
    pixels = read_xray_file(full_resolution_images[3]).pixels
    Image.fromarray(np.ascontiguousarray(pixels[150:850, :])).save(root / "wide.png")  # 1024 x 700
    return root


def start_cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("CHEXNET_MODEL", None)
    command = [sys.executable, "-m", "core", *args]
    pipe = subprocess.PIPE
    return subprocess.Popen(command, stdout=pipe, stderr=pipe, text=True, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def cli_runs(workdir, model_dir, full_resolution_images, tmp_path_factory) -> dict:
    """The subprocess runs of this module, started together: interpreter start-up (torch, torchvision)
    dominates each run, and the runs overlap well."""
    out = tmp_path_factory.mktemp("cam") / "x.png"
    model = ["--model", str(model_dir), "--backend", "torch"]
    predict_files = ["first.png", "notes.txt", str(full_resolution_images[1]), "cut.png", "missing.png"]
    commands = {
        "predict": ["predict", *predict_files, "--json", *model],
        "cam": ["cam", "wide.png", "--label", "Effusion", "--out", str(out), *model],
        "no-model": ["predict", "first.png", "--json", "--model", str(workdir / "no-such-model")],
    }
    started = {name: start_cli(*args, cwd=workdir) for name, args in commands.items()}
    runs = {}
    try:
        for name, process in started.items():
            stdout, stderr = process.communicate(timeout=300)
            runs[name] = subprocess.CompletedProcess(commands[name], process.returncode, stdout, stderr)
    finally:
        for process in started.values():  # a hung run must not outlive the test session
            if process.poll() is None:
                process.kill()
                process.communicate()
    runs["predict_files"], runs["cam_out"] = predict_files, out
    return runs


def assert_one_line_error(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith("."), result.stderr


@pytest.mark.slow  # a subprocess (interpreter, torch and torchvision start-up)
def test_predict_json_contract(cli_runs, workdir, predictor, full_resolution_images):
    second = str(full_resolution_images[1])  # an absolute path, read where it lies; the others are relative
    given = cli_runs["predict_files"]
    result = cli_runs["predict"]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["file"] for r in records] == given  # one object per file, in order, named as given

    expected = {
        "first.png": predictor.predict_one(read_xray_file(workdir / "first.png").pixels),
        second: predictor.predict_one(read_xray_file(second).pixels),
    }
    for record in records:
        if record["file"] in expected:
            assert set(record) == {"file", "model", "probabilities", "positive", "ood"}
            # No gate in this model's card: the pixel checks alone, which real X-rays pass.
            assert record["ood"] == {"flagged": False, "score": 0.0, "reason": ""}
            assert record["model"] == MODEL_NAME
            assert list(record["probabilities"]) == list(FINDINGS)
            assert all(0.0 <= p <= 1.0 for p in record["probabilities"].values())
            assert record["positive"] == [k for k, p in record["probabilities"].items() if p >= 0.5]
            truth = expected[record["file"]]
            assert record["probabilities"] == pytest.approx(truth.probabilities, abs=2e-6)
            assert record["positive"] == truth.positive
        else:
            assert set(record) == {"file", "error"}
            sentence = record["error"]
            assert sentence and "\n" not in sentence and sentence.endswith("."), sentence
    errors = {r["file"]: r["error"] for r in records if "error" in r}
    assert "text file" in errors["notes.txt"]
    assert "damaged or incomplete" in errors["cut.png"]
    assert "could not be opened" in errors["missing.png"]
    # The two real images do not give the same numbers (the records are not copies of one another).
    assert records[0]["probabilities"] != records[2]["probabilities"]


@pytest.mark.slow  # a subprocess (interpreter, torch and torchvision start-up)
def test_cam_writes_an_overlay_of_the_original_size(cli_runs, workdir, predictor):
    out = cli_runs["cam_out"]
    result = cli_runs["cam"]
    assert result.returncode == 0, result.stderr
    assert "Effusion" in result.stdout
    with Image.open(out) as written:
        assert written.format == "PNG" and written.mode == "RGB" and written.size == (1024, 700)
        overlay = np.asarray(written)
    grey = read_xray_file(workdir / "wide.png").pixels
    expected = render_overlay(grey, predictor.predict_one(grey).cam("Effusion"), 0.45)
    assert np.abs(overlay.astype(int) - expected).max() <= 2
    # Outside the crop the model saw the X-ray is untouched; inside, the map colours it.
    window = crop_window(1024, 700, 256, 224)
    outside = overlay[:, : int(window.left) - 1]
    assert np.array_equal(outside, np.repeat(grey[:, : int(window.left) - 1, None], 3, axis=2))
    inside = overlay[:, int(window.left) + 1 : int(window.left + window.side) - 1].astype(int)
    assert (np.abs(inside[..., 0] - inside[..., 2]) > 10).mean() > 0.1


@pytest.mark.slow  # a subprocess (interpreter, torch and torchvision start-up)
def test_a_missing_model_folder_is_a_one_line_error(cli_runs):
    result = cli_runs["no-model"]
    assert_one_line_error(result)
    assert "no-such-model" in result.stderr
    assert result.stdout == ""


# In-process: the same `main` that `python -m core` runs, without paying for another interpreter start.


def test_predict_with_only_good_files_exits_0(workdir, model_dir, full_resolution_images, monkeypatch,
                                              capsys):
    monkeypatch.chdir(workdir)
    second = str(full_resolution_images[1])
    code = main(["predict", "first.png", second, "--json", "--model", str(model_dir), "--backend", "torch"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["file"] for r in records] == ["first.png", second]
    assert all(len(r["probabilities"]) == len(FINDINGS) for r in records)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cam", "missing.png", "--label", "Effusion"], "could not be opened"),
        (["cam", "notes.txt"], "text file"),
        (["cam", "first.png", "--label", "Broken_Heart"], "Unknown finding 'Broken_Heart'"),
    ],
)
def test_cam_errors_are_one_line(args, message, workdir, model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    code = main([*args, "--out", str(tmp_path / "x.png"), "--model", str(model_dir), "--backend", "torch"])
    captured = capsys.readouterr()
    assert code == 1
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], captured.err
    assert not (tmp_path / "x.png").exists()


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> dict[str, str]:
    """Built non-X-rays as files: {path: the reason the gate must give}."""
    folder = tmp_path_factory.mktemp("probes")
    rng = np.random.default_rng(11)
    reasons = {"blank": UNIFORM_REASON, "document": DOCUMENT_REASON, "photo": COLOUR_REASON}
    made = {}
    for probe in blank_probes()[:2] + document_probes(rng, 2) + photo_probes(rng, 2):
        path = folder / f"{probe.name}.png"
        path.write_bytes(probe.data)
        made[str(path)] = reasons[probe.kind]
    return made


def test_the_demo_models_gate_flags_probes_with_reasons_and_passes_real_xrays(probes, sample_dir, capsys):
    """The shipped card's fitted gate, through the CLI: NIH test-list images (never fitted on) at 512 px
    and their 1024-px originals pass; blank frames, documents and colour photos are flagged, each with its
    sentence, and still get their scores (the contract: every result object has "ood")."""
    official_test = set((sample_dir / "test_list.txt").read_text().split())
    test_ids = sorted(p.name for p in (sample_dir / "images").glob("*.png") if p.name in official_test)
    assert len(test_ids) >= 3
    real = [str(sample_dir / "images" / name) for name in test_ids]
    real += [str(p) for p in sorted((sample_dir / "full-resolution").glob("*.png")) if p.name in test_ids]
    model = ["--model", str(BUNDLED_MODEL_DIR), "--backend", "torch"]
    code = main(["predict", *real, *probes, "--json", *model])
    records = {r["file"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert code == 0 and set(records) == set(real) | set(probes)
    for file in real:
        ood = records[file]["ood"]
        assert not ood["flagged"] and ood["reason"] == "" and 0 < ood["score"] < 1, (file, ood)
    for file, reason in probes.items():
        record = records[file]
        assert record["ood"]["flagged"] and record["ood"]["reason"] == reason, (file, record["ood"])
        assert isinstance(record["ood"]["score"], float) and len(record["probabilities"]) == len(FINDINGS)


def test_text_output_does_not_present_findings_for_a_flagged_image(probes, capsys):
    blank = next(file for file, reason in probes.items() if reason == UNIFORM_REASON)
    assert main(["predict", blank, "--model", str(BUNDLED_MODEL_DIR), "--backend", "torch"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "not judged" in first and UNIFORM_REASON in first and "positive:" not in first
