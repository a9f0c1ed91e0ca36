"""Measure the OOD gate: false flags on real NIH X-rays it never saw, detection on probes.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_ood.py [--model models/chexnet-demo] [--json]

Honest held-out design: the adult frontal train_val images are split patient-wise into 5 outer folds; for
each, a gate is fitted (with its own inner out-of-fold calibration) on the other 4 and measured on the held
one, on the official test images and on the full-resolution originals of held images. Probes are built
from held images (rotated, inverted, zoomed out) or from nothing (blank, noise, photos, documents). The
sample's children (age < 18, left out of fitting as not adult) are measured as a real paediatric probe.
Features are cached under CHEXNET_HOME/cache/ood-bench (git-ignored); the first run takes ~3-4 minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.data.dataset import load_chestxray14  # noqa: E402
from core.evaluation.ood_fit import ADULT_AGE  # noqa: E402
from core.imaging.reader import read_xray  # noqa: E402
from core.inference.artifact import read_artifact  # noqa: E402
from core.inference.features import FeatureExtractor  # noqa: E402
from core.ood.gate import OodGate, colourfulness  # noqa: E402
from core.ood.probes import all_probes  # noqa: E402
from core.paths import BUNDLED_MODEL_DIR, SHARED_SAMPLE_DIR, cache_dir  # noqa: E402

PROBE_SOURCES_PER_FOLD = 6


def _decode(data: bytes) -> tuple[np.ndarray, float | None]:
    return read_xray(data).pixels, colourfulness(data)


def _cached_features(extractor: FeatureExtractor, key: str, images: list[np.ndarray]) -> np.ndarray:
    path = cache_dir() / "ood-bench" / f"{extractor.artifact.weights_digest()[:16]}-{key}.npy"
    if path.is_file():
        cached = np.load(path)
        if cached.shape[0] == len(images):
            return cached
    started = time.perf_counter()
    features = extractor.features(images)
    print(f"features of {len(images)} {key} images: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, features)
    return features


def _rate(flags: list[bool]) -> dict:
    return {
        "n": len(flags),
        "flagged": int(sum(flags)),
        "rate": round(float(np.mean(flags)), 4) if flags else None,
    }


def run(model_dir: Path, data_dir: Path, folds: int = 5, seed: int = 0) -> dict:
    torch.set_num_threads(1)
    artifact = read_artifact(model_dir)
    extractor = FeatureExtractor(artifact)
    ds = load_chestxray14(data_dir)
    entries = ds.entries
    ids = sorted(entries.index)
    raw = {i: Path(p).read_bytes() for i, p in ds.image_paths(ids).items()}
    decoded = {i: _decode(raw[i]) for i in ids}
    features = dict(
        zip(ids, _cached_features(extractor, "sample", [decoded[i][0] for i in ids]), strict=True)
    )
    full_files = sorted((data_dir / "full-resolution").glob("*.png"))
    full = {f.name: _decode(f.read_bytes()) for f in full_files}
    full_features = dict(
        zip(full, _cached_features(extractor, "full", [v[0] for v in full.values()]), strict=True)
    )

    adult_frontal = [
        i for i in ids
        if entries.at[i, "split"] == "train_val" and entries.at[i, "age"] >= ADULT_AGE
        and entries.at[i, "view"] in ("PA", "AP")
    ]  # fmt: skip
    children = [i for i in ids if entries.at[i, "age"] < ADULT_AGE]
    test_ids = [i for i in ids if entries.at[i, "split"] == "test"]
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(adult_frontal, rng.permutation(len(adult_frontal)) % folds, strict=True))
    probe_sources = {
        f: rng.choice([i for i in adult_frontal if fold_of[i] == f], PROBE_SOURCES_PER_FOLD, replace=False)
        for f in range(folds)
    }
    probes = list(all_probes([(i, decoded[i][0]) for f in range(folds) for i in probe_sources[f]], seed=seed))
    probe_decoded = [_decode(p.data) for p in probes]
    probe_features = _cached_features(extractor, f"probes-{seed}", [d[0] for d in probe_decoded])
    source_fold = {}
    for probe in probes:  # X-ray probes are named "<image index>-<variant>"
        source = probe.name.split("-")[0]
        if source in fold_of:
            source_fold[probe.name] = fold_of[source]

    held_out: list[bool] = []
    held_checks: dict[str, int] = {}
    test_flags: list[bool] = []
    full_flags: list[bool] = []
    child_flags: list[bool] = []
    child_checks: dict[str, int] = {}
    by_kind: dict[str, list[bool]] = {}
    probe_checks: dict[str, dict[str, int]] = {}
    started = time.perf_counter()
    for fold in range(folds):
        fit_ids = [i for i in adult_frontal if fold_of[i] != fold]
        gate = OodGate.fit(
            np.stack([features[i] for i in fit_ids]), [decoded[i][0] for i in fit_ids],
            groups=[entries.at[i, "patient_id"] for i in fit_ids], seed=seed,
        )  # fmt: skip

        def flagged(pixels, feats, colour, tally=None, gate=gate):
            result = gate.check(pixels, feats, colour)
            if tally is not None and result.flagged:
                tally[result.check] = tally.get(result.check, 0) + 1
            return result.flagged

        for i in adult_frontal:
            if fold_of[i] == fold:
                held_out.append(flagged(decoded[i][0], features[i], decoded[i][1], held_checks))
                if i in full:
                    full_flags.append(flagged(full[i][0], full_features[i], full[i][1]))
        for i in test_ids:  # never fitted on: each fold's gate measures them (512 px and 1024 px)
            test_flags.append(flagged(decoded[i][0], features[i], decoded[i][1]))
            if i in full:
                test_flags.append(flagged(full[i][0], full_features[i], full[i][1]))
        child_flags.extend(flagged(decoded[i][0], features[i], decoded[i][1], child_checks) for i in children)
        for probe, (pixels, colour), feats in zip(probes, probe_decoded, probe_features, strict=True):
            if probe.name in source_fold and source_fold[probe.name] != fold:
                continue  # an X-ray probe is measured only by the gate that never saw its source
            tally = probe_checks.setdefault(probe.kind, {})
            by_kind.setdefault(probe.kind, []).append(flagged(pixels, feats, colour, tally))
    fit_seconds = time.perf_counter() - started

    final = OodGate.fit(
        np.stack([features[i] for i in adult_frontal]), [decoded[i][0] for i in adult_frontal],
        groups=[entries.at[i, "patient_id"] for i in adult_frontal], seed=seed,
    )  # fmt: skip
    card_bytes = len(json.dumps(final.to_dict()))
    return {
        "model": artifact.name,
        "design": f"{folds}-fold patient-wise outer cross-validation over the adult frontal train_val images",
        "n_fitting_images_per_fold": int(len(adult_frontal) * (folds - 1) / folds),
        "false_flags": {
            "held_out_train_val_512px": {**_rate(held_out), "by_check": held_checks},
            "official_test_images_512_and_1024px": _rate(test_flags),
            "full_resolution_1024px_held_out": _rate(full_flags),
        },
        "counting": (
            "n counts (gate, image) pairs: synthetic probes and test/child images are measured by each "
            "fold's gate; held-out and X-ray-derived probes only by the gate that never saw their source"
        ),
        "detection": {
            kind: {**_rate(flags), "by_check": probe_checks[kind]} for kind, flags in by_kind.items()
        },
        "paediatric_nih_age_under_18": {
            **_rate(child_flags),
            "by_check": child_checks,
            "note": "real NIH children, measured by every fold's gate (none was fitted on children)",
        },
        "final_gate": {
            "n_images": len(adult_frontal),
            **{k: final.info[k] for k in final.info if "rate" in k},
            "distance_limit": round(final.limit, 3),
            "orientation_limit": round(final.orientation.limit, 4),
            "json_bytes": card_bytes,
        },  # fmt: skip
        "seconds_fitting_gates": round(fit_seconds, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(BUNDLED_MODEL_DIR))
    parser.add_argument("--data", default=str(SHARED_SAMPLE_DIR))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(Path(args.model), Path(args.data))
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
