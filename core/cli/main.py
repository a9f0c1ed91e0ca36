"""Command-line interface. Each sub-command imports its heavy modules lazily so `--help` is instant."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.cli.console import EXIT_OK, EXIT_USAGE, run_command
from core.errors import UserError

EXIT_SOME_REFUSED = EXIT_USAGE  # some inputs were refused (predict)


class CliError(UserError):
    """A problem to print as one sentence on stderr (no traceback)."""


def _resolve_model(path: str | None) -> Path:
    from core.paths import require_active_model_dir

    # A promoted model whose folder is gone is refused with a sentence, never replaced by the demo model.
    return Path(path) if path else require_active_model_dir()


def _load_predictor(path: str | None, backend: str = "auto"):
    from core.inference.artifact import ArtifactError
    from core.inference.predictor import Predictor

    try:
        return Predictor.from_path(_resolve_model(path), backend=backend)
    except ArtifactError as exc:
        raise CliError(str(exc)) from exc


def _read_file(file: str):
    """(decoded X-ray, the file's bytes); ImageRejected or OSError as the reader raises them."""
    from core.imaging.reader import read_xray

    data = Path(file).read_bytes()
    return read_xray(data), data


def cmd_predict(args: argparse.Namespace) -> int:
    from core.imaging.reader import ImageRejected

    predictor = _load_predictor(args.model, args.backend)
    refused = 0
    for file in args.files:
        try:
            image, data = _read_file(file)
        except ImageRejected as exc:
            refused += 1
            record = {"file": file, "error": str(exc)}
        except OSError as exc:
            refused += 1
            record = {"file": file, "error": f"The file could not be opened ({exc.strerror or exc})."}
        else:
            prediction = predictor.predict_one(image.pixels, file_bytes=data)
            record = {
                "file": file,
                "model": predictor.name,
                "probabilities": {k: round(v, 6) for k, v in prediction.probabilities.items()},
                "positive": prediction.positive,
                "ood": prediction.ood.to_dict(),
            }
        if args.json:
            print(json.dumps(record), flush=True)
        elif "error" in record:
            print(f"{file}: refused: {record['error']}", flush=True)
        else:
            ranked = sorted(record["probabilities"].items(), key=lambda kv: -kv[1])
            if record["ood"]["flagged"]:
                # Scores only on request and marked as such: this is no finding of a chest X-ray.
                print(f"{file} ({predictor.name}): not judged: {record['ood']['reason']} "
                      "Scores below are the model's raw output, not findings.")  # fmt: skip
            else:
                print(f"{file} ({predictor.name}): positive: {', '.join(record['positive']) or 'none'}")
            for label, p in ranked:
                print(f"  {label:<20} {p:.4f}  (threshold {predictor.thresholds[label]:.4f})")
    return EXIT_SOME_REFUSED if refused else EXIT_OK


def cmd_cam(args: argparse.Namespace) -> int:
    from PIL import Image

    from core.imaging.reader import ImageRejected
    from core.inference.cam import render_overlay

    predictor = _load_predictor(args.model, args.backend)
    try:
        image, data = _read_file(args.file)
    except ImageRejected as exc:
        raise CliError(f"{args.file}: {exc}") from exc
    except OSError as exc:
        raise CliError(f"{args.file}: the file could not be opened ({exc.strerror or exc}).") from exc
    prediction = predictor.predict_one(image.pixels, file_bytes=data)
    label = args.label or prediction.most_probable()
    if label not in predictor.labels:
        raise CliError(f"Unknown finding '{label}'. Known: {', '.join(predictor.labels)}.")
    overlay = render_overlay(image.pixels, prediction.cam(label), args.opacity)
    Image.fromarray(overlay).save(args.out)
    print(f"{args.out}: CAM for {label} (p={prediction.probabilities[label]:.4f}) from {predictor.name}")
    if prediction.ood.flagged:  # the map was asked for, so it is written, but not as a finding
        print(f"warning: {args.file}: {prediction.ood.reason} The map shows the model's raw output, "
              "not a finding.", file=sys.stderr)  # fmt: skip
    return EXIT_OK


def cmd_import_checkpoint(args: argparse.Namespace) -> int:
    from core.inference.artifact import ArtifactError, import_chexnet_checkpoint

    try:
        artifact = import_chexnet_checkpoint(args.checkpoint, args.out, name=args.name)
    except ArtifactError as exc:
        raise CliError(str(exc)) from exc
    print(f"Wrote model '{artifact.name}' to {artifact.path}")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from core.bench import inference as bench

    result = bench.run(args.what, args)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return EXIT_OK


def cmd_dataset(args: argparse.Namespace) -> int:
    """The dataset paper's table: images, patients, per-finding counts and percentages, split sizes."""
    from core.data.dataset import DatasetError, format_summary, load_chestxray14, summary
    from core.paths import SHARED_SAMPLE_DIR

    try:
        data_dir = Path(args.data) if args.data else SHARED_SAMPLE_DIR
        dataset = load_chestxray14(data_dir, blacklist=args.blacklist)
    except DatasetError as exc:
        raise CliError(str(exc)) from exc
    if args.json:
        table = summary(dataset)
        print(json.dumps({"root": str(dataset.root), "problems": dataset.problems,
                          "table": json.loads(table.to_json(orient="index"))}))
    else:
        print(format_summary(dataset))
        for problem in dataset.problems:
            print(f"note: {problem}", file=sys.stderr)
    return EXIT_OK


def cmd_cache(args: argparse.Namespace) -> int:
    """Decode every image once into the preprocessed cache training reads (incremental)."""
    from tqdm import tqdm

    from core.data.cache import build_cache, default_cache_folder
    from core.data.dataset import DatasetError, load_chestxray14
    from core.paths import SHARED_SAMPLE_DIR

    data_dir = Path(args.data) if args.data else SHARED_SAMPLE_DIR
    try:
        dataset = load_chestxray14(data_dir, blacklist=args.blacklist)
    except DatasetError as exc:
        raise CliError(str(exc)) from exc
    folder = Path(args.out) if args.out else default_cache_folder(data_dir, args.size)
    with tqdm(total=len(dataset.entries), unit="img", desc="image cache") as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        cache = build_cache(
            dataset.image_paths(), folder, size=args.size, workers=args.workers or None, progress=progress
        )
    print(f"{folder}: {cache.report.describe()}")
    for problem in cache.report.problems[:20]:
        print(f"note: {problem}", file=sys.stderr)
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from core.distributed import env_dist_info
    from core.training import TrainConfig, TrainProgress, train
    from core.training.flags import settings_from_flags
    from core.training.step import base_crop_of

    base_model = Path(args.base_model) if args.base_model else None
    config = TrainConfig(
        data_dir=Path(args.data), out_dir=Path(args.out), settings=settings_from_flags(args), init=args.init,
        base_model=base_model, labels_table=Path(args.labels) if args.labels else None,
        exclude=Path(args.exclude) if args.exclude else None, device=args.device,
        workers=args.workers, resume=args.resume, name=args.name,
        cache_dir=Path(args.cache) if args.cache else None, description=args.description,
        keep_work=args.keep_work, threads=args.threads,
        # A fine-tune keeps the base model's input size unless --image-size says otherwise.
        base_crop=base_crop_of(base_model) if args.init == "artifact" and base_model else None,
    )  # fmt: skip
    is_main = env_dist_info().is_main  # under torchrun only rank 0 prints
    bars: dict[str, tqdm] = {}

    def bar(key: str, total: int, desc: str, unit: str) -> tqdm:
        if key not in bars:
            bars[key] = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
        return bars[key]

    def close(key: str) -> None:
        if key in bars:
            bars.pop(key).close()

    def progress(event: TrainProgress) -> None:
        if event.phase == "cache":
            if event.total:
                b = bar("cache", event.total, "image cache", "img")
                b.update(event.done - b.n)
            if event.done >= event.total:
                close("cache")
        elif event.phase == "train":
            desc = f"epoch {event.epoch}/{event.epochs}"
            b = bar(f"epoch{event.epoch}", event.steps_per_epoch, desc, "step")
            b.update(event.step - b.n)
            if event.step == 0:  # the epoch's opening event: nothing measured yet
                return
            b.set_postfix(loss=f"{event.loss:.4f}" if event.loss is not None else "nan", lr=f"{event.lr:.1e}",
                          img_s=f"{event.images_per_s:.1f}")  # fmt: skip
        elif event.phase == "epoch":
            close(f"epoch{event.epoch}")
            mean = "n/a" if event.val_mean_auroc is None else f"{event.val_mean_auroc:.4f}"
            eta = "" if not event.eta_s else f", eta {event.eta_s / 60:.1f} min"
            tqdm.write(f"epoch {event.epoch}/{event.epochs}: train loss {event.loss:.4f}, val loss "
                       f"{event.val_loss:.4f}, val mean AUROC {mean}, lr {event.lr:.1e}, "
                       f"{event.images_per_s:.1f} img/s on {event.device}{eta}", file=sys.stderr)  # fmt: skip
        elif event.message:
            tqdm.write(event.message, file=sys.stderr)

    try:
        artifact = train(config, progress if is_main else None)
    finally:
        for key in list(bars):
            close(key)
    if is_main:
        summary = {
            "model": artifact.name,
            "path": str(artifact.path),
            "epochs": artifact.card["provenance"]["epochs"],
            "best_epoch": artifact.card["provenance"]["best_epoch"],
            "val_mean_auroc": artifact.card["metrics"]["val"]["mean_auroc"],
        }
        text = (f"Wrote model '{artifact.name}' to {artifact.path} (best epoch {summary['best_epoch']}, "
                f"val mean AUROC {summary['val_mean_auroc']})")  # fmt: skip
        print(json.dumps(summary) if args.json else text)
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from core.evaluation.evaluate import EvaluationError, card_metrics_entry, evaluate
    from core.inference.artifact import update_card
    from core.paths import SHARED_SAMPLE_DIR

    model_dir = _resolve_model(args.model)
    with tqdm(desc=f"evaluate {args.split}", unit="img", file=sys.stderr, dynamic_ncols=True) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            report = evaluate(
                model_dir, Path(args.data) if args.data else SHARED_SAMPLE_DIR, args.split,
                labels_table=args.labels, progress=progress, n_boot=args.n_boot,
                thresholds=args.thresholds, backend=args.backend, exclude=args.exclude,
            )  # fmt: skip
        except EvaluationError as exc:
            raise CliError(str(exc)) from exc
    if args.write_card:
        metrics = {**_card_metrics(model_dir), args.split: card_metrics_entry(report)}
        card = update_card(model_dir, metrics=metrics)
        print(f"Stored the {args.split} metrics in {card.path / 'model.json'}", file=sys.stderr)
    if not args.json:
        print(f"{report['model']} on {report['split']} ({report['n_images']} images): mean AUROC "
              f"{report['mean_auroc']}, CI {report['mean_auroc_ci']}")  # fmt: skip
        for label, value in report["auroc"].items():
            print(f"  {label:<20} {'n/a' if value is None else f'{value:.4f}'}")
    print(json.dumps(report, allow_nan=False))  # the last line on stdout: one JSON object
    return EXIT_OK


def _card_metrics(model_dir: Path) -> dict:
    from core.inference.artifact import read_artifact

    return dict(read_artifact(model_dir).card.get("metrics") or {})


def build_parser() -> argparse.ArgumentParser:
    from core.training.config import INITS
    from core.training.flags import add_settings_flags

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

    p = sub.add_parser("dataset", help="summarise a ChestX-ray14 folder like the dataset paper's table")
    p.add_argument("data", nargs="?", help="ChestX-ray14 folder (default: the shared sample)")
    p.add_argument("--blacklist", help="file listing unusable images, one Image Index a line")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dataset)

    p = sub.add_parser("cache", help="build (or extend) the preprocessed image cache used for training")
    p.add_argument("data", nargs="?", help="ChestX-ray14 folder (default: the shared sample)")
    p.add_argument("--out", help="cache folder (default: one per dataset under CHEXNET_HOME/cache)")
    p.add_argument("--size", type=int, default=256, help="cached side in pixels (centre square)")
    p.add_argument("--workers", type=int, default=0, help="decoding threads (0: auto)")
    p.add_argument("--blacklist", help="file listing unusable images, one Image Index a line")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("train", help="train CheXNet on a ChestX-ray14 folder (torchrun for several GPUs)")
    p.add_argument("--data", required=True, help="ChestX-ray14 folder (official layout)")
    p.add_argument("--out", required=True, help="model folder to write")
    add_settings_flags(p)
    p.add_argument("--init", default="random", choices=list(INITS))
    p.add_argument("--base-model", help="model folder to fine-tune (--init artifact)")
    p.add_argument("--labels", help="labels table CSV (image_index + 14 findings, optional exclude column)")
    p.add_argument("--exclude", help="image indexes to leave out (text list or CSV)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--workers", type=int, default=0, help="threads for the cache build and loading (0: auto)")
    p.add_argument("--resume", action="store_true", help="continue after the last saved epoch")
    p.add_argument("--name", help="model name (default: the output folder's name)")
    p.add_argument("--cache", help="image cache folder (default: one per dataset under CHEXNET_HOME/cache)")
    p.add_argument("--description", help="text put before the generated model description")
    p.add_argument("--keep-work", action="store_true", help="keep <out>.work/ (train_state.pt) afterwards")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's; 1 suits a busy shared CPU)")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="AUROC, operating points and localization of a model on a split")
    p.add_argument("--model", help="model folder (default: the app's active model)")
    p.add_argument("--data", help="ChestX-ray14 folder (default: the shared sample)")
    p.add_argument("--split", default="test", choices=["test", "val", "train", "train_val", "all"])
    p.add_argument("--labels", help="labels table CSV overriding the NLP labels")
    p.add_argument("--exclude", help="image indexes to leave out (text list or CSV)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for CIs (0: none)")
    p.add_argument("--thresholds", default="validation", choices=["validation", "youden"],
                   help="the model card's thresholds (chosen on validation) or Youden's J on this split")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "openvino"])
    p.add_argument("--write-card", action="store_true", help="store the AUROC summary in the model card")
    p.add_argument("--json", action="store_true", help="only the JSON report (always its last line)")
    p.set_defaults(func=cmd_evaluate)

    from core.cli.compare_commands import add_commands  # compare, ood
    from core.cli.quantize_command import add_command as add_quantize

    add_commands(sub)
    add_quantize(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)
