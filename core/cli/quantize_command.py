"""`python -m core quantize MODEL_DIR`: an INT8 graph for the model folder (core.inference.quantize)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.cli.console import EXIT_OK
from core.errors import UserError


def split_sets(
    data_dir: Path, n_calibration: int, n_control: int, n_validation: int, seed: int = 0
) -> tuple[list[Path], list[Path], list[Path]]:
    """(calibration, control, validation) files, patient-disjoint, each a seeded draw of the images present:
    calibration and control from train_val; validation from test (other patients by the official split),
    topped up with train_val patients used by neither of the others when the folder has too few."""
    import numpy as np

    from core.data.dataset import DatasetError, load_chestxray14

    try:
        dataset = load_chestxray14(data_dir)
    except DatasetError as exc:
        raise UserError(str(exc)) from exc
    paths = dataset.image_paths()
    entries = dataset.entries.loc[sorted(index for index in dataset.entries.index if index in paths)]
    rng = np.random.default_rng(seed)

    def by_patient(split: str) -> list[list[str]]:
        groups = entries[entries["split"] == split].groupby("patient_id").groups
        patients = sorted(groups)
        return [sorted(groups[patients[i]]) for i in rng.permutation(len(patients))]

    def take(groups: list[list[str]], n: int) -> list[str]:
        taken: list[str] = []
        while groups and len(taken) < n:
            taken.extend(groups.pop(0))
        return taken[:n]

    train, test = by_patient("train_val"), by_patient("test")
    calibration, control = take(train, n_calibration), take(train, n_control)
    validation = take(test, n_validation)
    validation += take(train, n_validation - len(validation))
    if (len(calibration), len(control), len(validation)) != (n_calibration, n_control, n_validation):
        raise UserError(
            f"{data_dir} has too few images for {n_calibration} calibration, {n_control} control and "
            f"{n_validation} validation images from different patients."
        )
    return [paths[i] for i in calibration], [paths[i] for i in control], [paths[i] for i in validation]


def cmd_quantize(args: argparse.Namespace) -> int:
    from core.inference.artifact import read_artifact
    from core.inference.quantize import quantize_artifact
    from core.paths import SHARED_SAMPLE_DIR

    data_dir = Path(args.data) if args.data else SHARED_SAMPLE_DIR
    calibration, control, validation = split_sets(
        data_dir, args.calibration, args.control, args.validation, args.seed
    )
    entry = quantize_artifact(
        read_artifact(args.model_dir), calibration, validation, control=control, max_drop=args.max_drop,
        progress=lambda text: print(f"{text} ...", file=sys.stderr),
    )  # fmt: skip
    if not args.json:
        figures = entry["validation"]
        verdict = "accepted: it joins this model's per-machine precision choice" if entry["accepted"] else (
            "NOT accepted (outside the bounds): it is kept for inspection and never chosen"
        )  # fmt: skip
        print(
            f"INT8 graph written to {Path(args.model_dir) / entry['file']} ({entry['method']}, "
            f"{entry['calibration_images']} calibration images). On {figures['images']} held-out "
            f"images: max |Δprob| {figures['max_probability_difference']:.4f}, CAM mean difference "
            f"{figures['cam_mean_difference']:.2%} of range, min correlation "
            f"{figures['cam_min_correlation']:.4f} - {verdict}."
        )
    print(json.dumps(entry))
    return EXIT_OK


def add_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="make and validate an INT8 graph of a model folder (NNCF)")
    p.add_argument("model_dir")
    p.add_argument("--data", help="ChestX-ray14 folder (default: the shared sample)")
    p.add_argument("--calibration", type=int, default=300, help="train_val images for activation ranges")
    p.add_argument(
        "--control", type=int, default=100, help="other train_val images for accuracy control (0: plain PTQ)"
    )
    p.add_argument("--validation", type=int, default=100, help="held-out images, test split first")
    p.add_argument(
        "--max-drop", type=float, default=0.01, help="accuracy control: largest probability change allowed"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="only the card's int8 entry, as JSON")
    p.set_defaults(func=cmd_quantize)
