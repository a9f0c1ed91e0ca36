"""INT8 post-training quantization of a model folder with NNCF, validated on held-out images.

    python -m core quantize MODEL_DIR [--data DIR] [--calibration 300] [--control 100] [--validation 100]

Three disjoint sets of real X-rays, each read and preprocessed exactly as inference reads them
(core.imaging.reader, then `model_input` at the card's resize and crop; an earlier attempt that fed
other pixels moved probabilities by 0.3-0.5):
- calibration: train_val images, for the activation ranges;
- control (accuracy control only): other train_val images; NNCF reverts the layers that cost most to
  fp32 until no probability on them moves by more than the bound;
- validation: test-split images (other patients), never seen by quantization: the reported figures.
NNCF's CPU defaults give per-channel symmetric weights; the first convolution and the classifier / CAM
head (the MatMul and einsum after the pooled features) stay fp32; bias correction is on.

The quantized graph (the same three outputs as the fp32 one: logits, CAMs, pooled features) is written
next to the weights as `model-int8.xml` / `.bin`, and the card's "int8" entry records the sets, the
figures and whether it is accepted: max |Δprob| <= MAX_PROBABILITY_DIFFERENCE and CAMs that look the
same (mean |Δ| under 1% of each map's range, correlation >= 0.99). Only an accepted graph for these
very weights takes part in the per-machine choice (core.inference.openvino_backend); it is kept there
only where it also measures faster.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from core.inference.artifact import ModelArtifact, update_card
from core.inference.openvino_backend import (
    MAX_PROBABILITY_DIFFERENCE,
    QuantizedGraph,
    convert_model,
    import_openvino,
)

INT8_XML = "model-int8.xml"
CAM_MEAN_BOUND = 0.01  # mean |Δ| over each map, as a share of the map's range (what the overlay shows)
CAM_MIN_CORRELATION = 0.99
Progress = Callable[[str], None]


class QuantizationError(UserError, RuntimeError):
    """Quantization that cannot be done as asked (one sentence)."""


@dataclass(frozen=True)
class Agreement:
    max_probability_difference: float
    cam_mean_difference: float  # share of each map's range, averaged over every map
    cam_min_correlation: float

    @property
    def within_bounds(self) -> bool:
        return (
            self.max_probability_difference <= MAX_PROBABILITY_DIFFERENCE
            and self.cam_mean_difference <= CAM_MEAN_BOUND
            and self.cam_min_correlation >= CAM_MIN_CORRELATION
        )

    def to_dict(self) -> dict[str, float]:
        return {
            "max_probability_difference": round(self.max_probability_difference, 6),
            "cam_mean_difference": round(self.cam_mean_difference, 6),
            "cam_min_correlation": round(self.cam_min_correlation, 6),
        }


def _outputs(compiled: Any, inputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, C], CAMs [N, C, h, w]) of model inputs [1, 3, crop, crop], one at a time."""
    request = compiled.create_infer_request()
    probabilities, cams = [], []
    for x in inputs:
        result = request.infer({0: x})
        logits = np.array(result[compiled.output(0)], dtype=np.float64)
        probabilities.append(1 / (1 + np.exp(-logits)))
        cams.append(np.array(result[compiled.output(1)]))
    return np.concatenate(probabilities), np.concatenate(cams)


def agreement(reference: Any, candidate: Any, inputs: Sequence[np.ndarray]) -> Agreement:
    """How far a compiled candidate's probabilities and CAMs are from the fp32 reference's."""
    p_ref, cam_ref = _outputs(reference, inputs)
    p_new, cam_new = _outputs(candidate, inputs)
    flat_ref = cam_ref.reshape(-1, cam_ref.shape[-2] * cam_ref.shape[-1])
    flat_new = cam_new.reshape(flat_ref.shape)
    span = np.maximum(flat_ref.max(axis=1) - flat_ref.min(axis=1), 1e-12)
    mean_difference = float((np.abs(flat_new - flat_ref).mean(axis=1) / span).mean())
    centred_ref = flat_ref - flat_ref.mean(axis=1, keepdims=True)
    centred_new = flat_new - flat_new.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred_ref, axis=1) * np.linalg.norm(centred_new, axis=1)
    correlation = float((np.sum(centred_ref * centred_new, axis=1) / np.maximum(norms, 1e-12)).min())
    return Agreement(float(np.abs(p_new - p_ref).max()), mean_difference, correlation)


def model_inputs(artifact: ModelArtifact, files: Sequence[Path]) -> list[np.ndarray]:
    """[1, 3, crop, crop] float32 inputs of X-ray files, exactly as the predictor makes them."""
    from core.imaging.preprocess import model_input
    from core.imaging.reader import read_xray_file

    return [model_input(read_xray_file(f).pixels, artifact.resize, artifact.crop)[None] for f in files]


def graph_digest(xml: Path) -> str:
    """sha256 of a saved graph's .xml and .bin together: what the card records and serving checks."""
    return hashlib.sha256(xml.read_bytes() + xml.with_suffix(".bin").read_bytes()).hexdigest()


def _fp32_heads(model: Any) -> list[str]:
    """The operations kept in fp32: the first convolution and everything after the pooled features."""
    ops = model.get_ordered_ops()
    convolutions = [op.get_friendly_name() for op in ops if op.get_type_name() == "Convolution"]
    heads = [op.get_friendly_name() for op in ops if op.get_type_name() in ("MatMul", "Einsum")]
    return convolutions[:1] + heads


def quantize_artifact(
    artifact: ModelArtifact,
    calibration: Sequence[Path],
    validation: Sequence[Path],
    *,
    control: Sequence[Path] = (),
    max_drop: float = MAX_PROBABILITY_DIFFERENCE,
    threads: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Quantize, validate, write model-int8.xml/.bin and the card's "int8" entry; returns that entry.

    With `control` images, NNCF's accuracy-controlled quantization reverts layers to fp32 until no
    probability on them moves by more than `max_drop`; without, plain post-training quantization. The
    held-out validation images then decide acceptance, whatever the control images said.
    """
    import nncf

    from core.inference.openvino_backend import compile_for_cpu

    say = progress or (lambda _text: None)
    overlap = {Path(p).name for p in calibration} & {Path(p).name for p in validation}
    if overlap:
        raise QuantizationError(f"{len(overlap)} validation images are calibration images too; use others.")
    if not calibration or not validation:
        raise QuantizationError("Quantization needs calibration images and held-out validation images.")
    ov = import_openvino()
    started = time.perf_counter()
    say(f"Reading {len(calibration) + len(control) + len(validation)} images")
    calibration_inputs = model_inputs(artifact, calibration)
    control_inputs = model_inputs(artifact, control)
    validation_inputs = model_inputs(artifact, validation)
    say("Converting the model")
    fp32_graph = convert_model(artifact.load_model("cpu"), artifact.crop)
    core = ov.Core()
    reference = compile_for_cpu(core, fp32_graph, "f32", threads)
    ignored = nncf.IgnoredScope(names=_fp32_heads(fp32_graph), validate=False)
    options: dict[str, Any] = {
        "preset": nncf.QuantizationPreset.PERFORMANCE,  # symmetric activations: the fastest on CPU
        "subset_size": len(calibration_inputs),
        "ignored_scope": ignored,
        "fast_bias_correction": True,
    }
    if control_inputs:
        say(f"Quantizing with accuracy control on {len(control_inputs)} images")
        control_reference = _outputs(reference, control_inputs)[0]

        def control_metric(compiled: Any, items: Any) -> float:
            probabilities = _outputs(compiled, list(items))[0]
            return 1.0 - float(np.abs(probabilities - control_reference).max())

        quantized = nncf.quantize_with_accuracy_control(
            fp32_graph, nncf.Dataset(calibration_inputs), nncf.Dataset(control_inputs), control_metric,
            max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE, **options,
        )  # fmt: skip
    else:
        say(f"Quantizing on {len(calibration_inputs)} calibration images")
        quantized = nncf.quantize(fp32_graph, nncf.Dataset(calibration_inputs), **options)
    say(f"Validating on {len(validation_inputs)} held-out images")
    measured = agreement(reference, compile_for_cpu(core, quantized, "f32", threads), validation_inputs)
    xml = artifact.path / INT8_XML
    ov.save_model(quantized, str(xml), compress_to_fp16=False)
    entry = {
        "file": INT8_XML,
        "sha256": graph_digest(xml),
        "weights_sha256": artifact.weights_digest(),
        "accepted": measured.within_bounds,
        "bounds": {
            "max_probability_difference": MAX_PROBABILITY_DIFFERENCE,
            "cam_mean_difference": CAM_MEAN_BOUND,
            "cam_min_correlation": CAM_MIN_CORRELATION,
        },
        "validation": {"images": len(validation_inputs), **measured.to_dict()},
        "calibration_images": len(calibration_inputs),
        "control_images": len(control_inputs),
        "control_max_drop": max_drop if control_inputs else None,
        "method": "nncf accuracy control" if control_inputs else "nncf post-training",
        "fp32_layers": len(ignored.names),
        "nncf": nncf.__version__,
        "seconds": round(time.perf_counter() - started, 1),
    }
    update_card(artifact.path, int8=entry)
    return entry


def usable_int8_graph(
    artifact: ModelArtifact, digest: str | None, *, accepted_only: bool = True
) -> QuantizedGraph | None:
    """The folder's quantized graph when its card entry belongs to these weights and the files are the
    ones it validated (and it was accepted, unless `accepted_only` is off); else None."""
    entry = artifact.card.get("int8")
    if not isinstance(entry, dict) or digest is None or entry.get("weights_sha256") != digest:
        return None
    if accepted_only and not entry.get("accepted"):
        return None
    xml = artifact.path / str(entry.get("file", INT8_XML))
    try:
        found = graph_digest(xml)
    except OSError:
        return None
    return QuantizedGraph(xml, found) if found == entry.get("sha256") else None
