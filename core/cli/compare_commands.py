"""`python -m core compare` (paired DeLong comparison) and `python -m core ood fit|check` (the OOD gate)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.cli.console import EXIT_OK, EXIT_USAGE
from core.errors import UserError

SPLITS = ("test", "val", "train", "train_val", "all")  # core.evaluation.evaluate.SPLITS (tested equal)
MIN_POSITIVES = 10  # core.evaluation.compare.MIN_POSITIVES (tested equal)


def _tqdm_progress(desc: str, unit: str = "img"):
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return bar, progress


def _data_dir(path: str | None) -> Path:
    from core.paths import SHARED_SAMPLE_DIR

    return Path(path) if path else SHARED_SAMPLE_DIR


def cmd_compare(args: argparse.Namespace) -> int:
    from core.evaluation.compare import compare_predictions
    from core.evaluation.prediction_sets import split_predictions

    bar, progress = _tqdm_progress(f"predict {args.split}")
    with bar:
        gathered = split_predictions([args.model_a, args.model_b], _data_dir(args.data), args.split,
                                     backend=args.backend, progress=progress)  # fmt: skip
    name_a, name_b = gathered.probabilities
    result = compare_predictions(
        gathered.y_true, gathered.probabilities[name_a], gathered.probabilities[name_b], gathered.labels,
        min_positives=args.min_positives, include_too_few_in_mean=args.include_too_few,
    )  # fmt: skip
    result.update(a=name_a, b=name_b, split=args.split, info=gathered.info)
    if args.details:
        result["details"] = _details(gathered, args.min_positives)
    if args.json:
        print(json.dumps(result, allow_nan=False))
        return EXIT_OK
    print(f"A: {name_a}, B: {name_b}, on {args.split} ({result['n_images']} images); delta = B - A")
    for label, row in result["classes"].items():
        lo, hi = row["ci"]
        mark = " (too few positives)" if row["too_few"] else ""
        print(f"  {label:<20} {row['auroc_a']:.3f} -> {row['auroc_b']:.3f}  delta {row['delta']:+.3f} "
              f"[{lo:+.3f}, {hi:+.3f}]  p {row['p']:.3g}  Holm {row['p_holm']:.3g}  "
              f"n_pos {row['n_pos']}{mark}")  # fmt: skip
    mean = result["mean"]
    if mean["delta"] is None:
        print(f"  mean: no finding has {args.min_positives} or more positives")
    else:
        print(f"  mean over {mean['n_findings']} findings: delta {mean['delta']:+.3f} "
              f"[{mean['ci'][0]:+.3f}, {mean['ci'][1]:+.3f}]")  # fmt: skip
    return EXIT_OK


def _details(gathered, min_positives: int) -> dict:
    from core.evaluation.calibration import calibration_report
    from core.evaluation.subgroups import subgroup_report

    return {
        name: {
            "calibration": calibration_report(
                gathered.y_true, probs, gathered.labels, min_positives=min_positives
            ),
            "subgroups": subgroup_report(
                gathered.y_true, probs, gathered.entries, gathered.labels, min_positives=min_positives
            ),  # fmt: skip
        }
        for name, probs in gathered.probabilities.items()
    }


def _model_dir(path: str | None) -> Path:
    from core.paths import active_model_dir

    model_dir = Path(path) if path else active_model_dir()
    if model_dir is None:
        raise UserError(
            "No model is configured: pass --model DIR, set CHEXNET_MODEL, or promote one in the app."
        )
    return model_dir


def cmd_ood_fit(args: argparse.Namespace) -> int:
    from core.evaluation.ood_fit import fit_gate
    from core.inference.artifact import update_card

    bar, progress = _tqdm_progress("OOD features")
    with bar:
        gate = fit_gate(args.model_dir, _data_dir(args.data), args.split, min_age=args.min_age,
                        max_images=args.max_images, progress=progress)  # fmt: skip
    update_card(args.model_dir, ood=gate.to_dict())
    info = gate.info
    summary = {
        "model_dir": str(args.model_dir),
        "n_images": info["n_images"],
        "distance_limit": gate.limit,
        "out_of_fold_flag_rate": info["out_of_fold_flag_rate"],
        "false_flag_target": info["false_flag_target"],
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"Stored the OOD gate in {Path(args.model_dir) / 'model.json'}: fitted on {info['n_images']} "
              f"images of {args.split}, {info['out_of_fold_flag_rate']:.1%} of them flagged out of fold "
              f"(target {info['false_flag_target']:.0%}).")  # fmt: skip
    return EXIT_OK


def cmd_ood_check(args: argparse.Namespace) -> int:
    from core.inference.artifact import read_artifact
    from core.inference.features import screen_files, stored_gate

    model_dir = _model_dir(args.model)
    if stored_gate(read_artifact(model_dir)) is None:
        print(f"note: {model_dir} has no OOD gate fitted for its weights; only the pixel checks ran "
              "(fit one: python -m core ood fit MODEL_DIR).", file=sys.stderr)  # fmt: skip
    refused = 0
    for file, result, error in screen_files(model_dir, args.files):
        if result is None:
            refused += 1
            record = {"file": file, "error": error}
        else:
            record = {"file": file, "ood": result.to_dict()}
        if args.json:
            print(json.dumps(record), flush=True)
        elif result is None:
            print(f"{file}: refused: {error}", flush=True)
        else:
            verdict = f"flagged: {result.reason}" if result.flagged else "looks like a chest X-ray"
            print(f"{file}: {verdict} (score {result.score:.2f})", flush=True)
    return EXIT_USAGE if refused else EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `compare` and `ood` on `python -m core`'s sub-commands (imports nothing heavy)."""
    p = sub.add_parser("compare", help="paired DeLong comparison of two models (or a reference CSV)")
    p.add_argument("model_a", help="model folder or reference predictions CSV (A)")
    p.add_argument("model_b", help="model folder or reference predictions CSV (B); delta = B - A")
    p.add_argument("--data", help="ChestX-ray14 folder (default: the shared sample)")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--min-positives", type=int, default=MIN_POSITIVES, help="fewer positives: too_few")
    p.add_argument("--include-too-few", action="store_true", help="keep too_few findings in the mean")
    p.add_argument("--details", action="store_true", help="add calibration and subgroups of both")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "openvino"])
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_compare)

    ood = sub.add_parser("ood", help="out-of-distribution gate: fit it on a split, check images")
    ood_sub = ood.add_subparsers(dest="ood_command", required=True)
    p = ood_sub.add_parser("fit", help="fit the gate on a split's adult frontal images; store it in the card")
    p.add_argument("model_dir")
    p.add_argument("--data", help="ChestX-ray14 folder (default: the shared sample)")
    p.add_argument("--split", default="train_val", choices=SPLITS)
    p.add_argument("--min-age", type=int, default=18, help="younger patients are left out (not adult)")
    p.add_argument("--max-images", type=int, default=None, help="fit on a random subset of this size")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ood_fit)
    p = ood_sub.add_parser("check", help="say whether images look like the model's chest X-rays")
    p.add_argument("files", nargs="+")
    p.add_argument("--model", help="model folder (default: the app's active model)")
    p.add_argument("--json", action="store_true", help="one JSON object per file on stdout")
    p.set_defaults(func=cmd_ood_check)
