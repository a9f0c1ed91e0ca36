"""Command-line interface. Each sub-command imports its heavy modules lazily so `--help` is instant."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_SOME_REFUSED = 2


class CliError(Exception):
    """A problem to print as one sentence on stderr (no traceback)."""


def _resolve_model(path: str | None) -> Path:
    from core.paths import active_model_dir

    model_dir = Path(path) if path else active_model_dir()
    if model_dir is None:
        raise CliError("No model is configured: pass --model DIR, set CHEXNET_MODEL, or promote one in the app.")
    return model_dir


def _load_predictor(path: str | None, backend: str = "auto"):
    from core.artifact import ArtifactError
    from core.predictor import Predictor

    try:
        return Predictor.from_path(_resolve_model(path), backend=backend)
    except ArtifactError as exc:
        raise CliError(str(exc)) from exc


def cmd_predict(args: argparse.Namespace) -> int:
    from core.imaging import ImageRejected, read_xray_file

    predictor = _load_predictor(args.model, args.backend)
    refused = 0
    for file in args.files:
        try:
            image = read_xray_file(file)
        except ImageRejected as exc:
            refused += 1
            record = {"file": file, "error": str(exc)}
        except OSError as exc:
            refused += 1
            record = {"file": file, "error": f"The file could not be opened ({exc.strerror or exc})."}
        else:
            prediction = predictor.predict_one(image.pixels)
            record = {
                "file": file,
                "model": predictor.name,
                "probabilities": {k: round(v, 6) for k, v in prediction.probabilities.items()},
                "positive": prediction.positive,
            }
        if args.json:
            print(json.dumps(record), flush=True)
        elif "error" in record:
            print(f"{file}: refused: {record['error']}", flush=True)
        else:
            ranked = sorted(record["probabilities"].items(), key=lambda kv: -kv[1])
            print(f"{file} ({predictor.name}): positive: {', '.join(record['positive']) or 'none'}")
            for label, p in ranked:
                print(f"  {label:<20} {p:.4f}  (threshold {predictor.thresholds[label]:.4f})")
    return EXIT_SOME_REFUSED if refused else EXIT_OK


def cmd_cam(args: argparse.Namespace) -> int:
    from PIL import Image

    from core.cam import render_overlay
    from core.imaging import ImageRejected, read_xray_file

    predictor = _load_predictor(args.model, args.backend)
    try:
        image = read_xray_file(args.file)
    except ImageRejected as exc:
        raise CliError(f"{args.file}: {exc}") from exc
    except OSError as exc:
        raise CliError(f"{args.file}: the file could not be opened ({exc.strerror or exc}).") from exc
    prediction = predictor.predict_one(image.pixels)
    label = args.label or prediction.most_probable()
    if label not in predictor.labels:
        raise CliError(f"Unknown finding '{label}'. Known: {', '.join(predictor.labels)}.")
    overlay = render_overlay(image.pixels, prediction.cam(label), args.opacity)
    Image.fromarray(overlay).save(args.out)
    print(f"{args.out}: CAM for {label} (p={prediction.probabilities[label]:.4f}) from {predictor.name}")
    return EXIT_OK


def cmd_import_checkpoint(args: argparse.Namespace) -> int:
    from core.artifact import ArtifactError, import_chexnet_checkpoint

    try:
        artifact = import_chexnet_checkpoint(args.checkpoint, args.out, name=args.name)
    except ArtifactError as exc:
        raise CliError(str(exc)) from exc
    print(f"Wrote model '{artifact.name}' to {artifact.path}")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from core import bench

    result = bench.run(args.what, args)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="CheXNet Studio's ML engine.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="predict the 14 findings for X-ray files (PNG, JPEG, DICOM)")
    p.add_argument("files", nargs="+")
    p.add_argument("--json", action="store_true", help="one JSON object per file on stdout")
    p.add_argument("--model", help="model folder (default: the app's active model)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "openvino"])
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("cam", help="write a class activation map overlay for one file")
    p.add_argument("file")
    p.add_argument("--label", help="finding (default: the most probable)")
    p.add_argument("--out", required=True)
    p.add_argument("--opacity", type=float, default=0.45)
    p.add_argument("--model")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "openvino"])
    p.set_defaults(func=cmd_cam)

    p = sub.add_parser("import-checkpoint", help="convert a public CheXNet model.pth.tar into a model folder")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--name")
    p.set_defaults(func=cmd_import_checkpoint)

    p = sub.add_parser("bench", help="benchmarks: inference | loader | train")
    p.add_argument("what", choices=["inference", "loader", "train"])
    p.add_argument("--json", action="store_true")
    p.add_argument("--data", help="ChestX-ray14 folder (default: the shared sample)")
    p.add_argument("--images", type=int, default=None, help="how many images to use")
    p.add_argument("--model", help="model folder (default: the active model)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
