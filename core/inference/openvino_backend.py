"""The OpenVINO CPU backend: compiled for this machine, at the precision measured best here, cached safely.

Precision is chosen per machine when a model is first loaded there, by measurement, never assumed:
fp32 always; bf16 too when OpenVINO reports BF16 among the CPU's OPTIMIZATION_CAPABILITIES (AVX-512
BF16 or AMX); int8 too when the model folder holds a quantized graph accepted on held-out images for
these weights (core.inference.quantize). All run the same fixed inputs; a lower precision is kept only
if it is clearly faster (`MAX_TIME_RATIO` of fp32's time) and its probabilities stay within
`MAX_PROBABILITY_DIFFERENCE` of fp32's; the fastest such wins. The decision (precision, measured ms,
max differences, why) is stored and exposed as `OpenVinoBackend.info`. CHEXNET_INFERENCE_PRECISION
(core.settings) pins one instead.

Three cache entries per model and machine, each written atomically and checked when read
(core.file_cache): the converted model (IR, machine-independent: tracing PyTorch takes ~10 s), the
decision, and the compiled model (`export_model`, which imports ~3x faster than compiling). A damaged or
unreadable entry is discarded and rebuilt; failing to write one (disk full) costs only time. Entry names
carry `OUTPUTS_TAG`, so entries of a graph with other outputs are never read as this one.

The compiled graph has three outputs from one pass: logits, CAMs and the pooled features the OOD gate
(core.ood.gate) measures.
"""

from __future__ import annotations

import hashlib
import json
import queue
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core import file_cache
from core.cpu_info import cpu_description

if TYPE_CHECKING:  # torch is imported only to convert a model that is not cached yet
    import torch

__all__ = ["MAX_TIME_RATIO", "MAX_PROBABILITY_DIFFERENCE", "OpenVinoBackend", "choose_precision"]

PRECISIONS = ("auto", "f32", "bf16", "int8")
MAX_PROBABILITY_DIFFERENCE = 0.01
# A lower precision must take at most this share of fp32's time: a tie on a noisy machine keeps fp32.
MAX_TIME_RATIO = 0.9
_TRIAL_ROUNDS = 5
_DECISION_FORMAT = 2
# The graph's outputs, in cache entry names: "lcp" = logits, CAMs, pooled features. Entries of the older
# two-output graph ("logits, CAMs", unnamed) are left alone and never read.
OUTPUTS_TAG = "lcp"
_N_OUTPUTS = 3


@dataclass(frozen=True)
class QuantizedGraph:
    """A model folder's INT8 graph (core.inference.quantize) and the digest its card recorded for it."""

    xml: Path
    sha256: str  # of the .xml and .bin, checked by the caller against the card


def choose_precision(fp32_ms: float, candidates: dict[str, tuple[float, float]]) -> tuple[str, str]:
    """(precision, reason) from fp32's measured ms and each lower precision's (ms, largest probability
    difference to fp32): the fastest one within the bound and clearly faster than fp32, else fp32."""
    refused, kept = [], []
    for name, (ms, difference) in candidates.items():
        if difference > MAX_PROBABILITY_DIFFERENCE:
            refused.append(f"{name} moved a probability by {difference:.4f} (> {MAX_PROBABILITY_DIFFERENCE})")
        elif ms > MAX_TIME_RATIO * fp32_ms:
            refused.append(f"{name} was not faster enough ({ms:.1f} ms vs {fp32_ms:.1f} ms for fp32)")
        else:
            kept.append((ms, name, difference))
    if not kept:
        return "f32", "; ".join(refused) or "nothing but fp32 to choose from"
    ms, name, difference = min(kept)
    reason = f"{name} {ms:.1f} ms vs fp32 {fp32_ms:.1f} ms, max probability difference {difference:.4f}"
    return name, "; ".join([reason, *refused])


def import_openvino():
    """The openvino module, with its usage telemetry off. Importing openvino otherwise sends an event to
    Google Analytics from a child process (~0.3 s of a first page here, offline too), and nothing should
    leave a hospital's machine unasked; with `openvino_telemetry` unimportable, openvino uses its own
    no-op stub."""
    sys.modules.setdefault("openvino_telemetry", None)
    import openvino

    return openvino


def _config(precision: str, threads: int | None) -> dict:
    # An int8 graph runs its quantized layers in int8 and keeps the rest (first convolution, head) fp32.
    hint = "f32" if precision == "int8" else precision
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


def compile_for_cpu(core, model, precision: str, threads: int | None):
    """`model` (an OpenVINO graph) compiled for this CPU at `precision` ("f32", "bf16"; "int8" for a
    quantized graph), with `threads` inference threads (None: OpenVINO's choice)."""
    return core.compile_model(model, "CPU", _config(precision, threads))


def _effective_precision(compiled) -> str:
    """What OpenVINO actually runs: a bf16 hint on a CPU without bf16 silently runs fp32."""
    return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


def convert_model(model: torch.nn.Module, crop: int):
    """The PyTorch model as an OpenVINO graph with three outputs: logits, CAMs and pooled features."""
    ov = import_openvino()
    import torch

    from core.inference.features import FeatureOutputs

    example = torch.zeros(1, 3, crop, crop)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # OpenVINO traces with torch.jit internally
        shape = ov.PartialShape([-1, 3, crop, crop])
        return ov.convert_model(FeatureOutputs(model.float().eval()), example_input=example, input=[shape])


def _probe_inputs(crop: int) -> np.ndarray:
    """A few fixed, radiograph-like inputs (smooth shading plus grain), normalised: [4, 3, crop, crop]."""
    from PIL import Image

    from core.imaging.preprocess import model_input

    rng = np.random.default_rng(20170711)  # fixed: every machine compares on the same inputs
    inputs = []
    for _ in range(4):
        coarse = Image.fromarray(rng.uniform(20, 235, (6, 6)).astype(np.uint8))
        smooth = np.asarray(coarse.resize((crop, crop), Image.Resampling.BICUBIC), dtype=np.float64)
        grey = np.clip(smooth + rng.normal(0, 6, (crop, crop)), 0, 255).astype(np.uint8)
        inputs.append(model_input(grey, resize=crop, crop=crop))
    return np.stack(inputs)


class OpenVinoBackend:
    name = "openvino"

    def __init__(
        self,
        model: torch.nn.Module | Callable[[], torch.nn.Module],
        crop: int,
        cache_key: str | None = None,
        *,
        precision: str = "auto",
        threads: int | None = None,
        int8_graph: QuantizedGraph | None = None,
    ):
        """`model` may be a function that loads it: then it is only called when nothing usable is cached.
        `threads`: inference threads (None: OpenVINO's choice, all cores). `int8_graph`: the model
        folder's quantized graph (core.inference.quantize), a candidate of "auto" and what "int8" runs."""
        ov = import_openvino()

        if precision not in PRECISIONS:
            raise ValueError(f"Unknown precision '{precision}': use {', '.join(PRECISIONS)}.")
        if precision == "int8" and int8_graph is None:
            raise ValueError("This model has no quantized graph; make one with: python -m core quantize DIR")
        started = time.perf_counter()
        self._ov, self._core = ov, ov.Core()
        self._model, self._crop, self._threads = model, crop, threads
        self._ir = None
        self._int8_graph = int8_graph
        capabilities = tuple(self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        folder = _cache_folder() if cache_key else None
        machine = self._machine_key(capabilities)
        paths = None
        if folder is not None:
            ov_tag = hashlib.sha256(ov.get_version().encode()).hexdigest()[:8]
            stem = f"{cache_key}-{crop}-{OUTPUTS_TAG}"
            if int8_graph is not None:  # another quantized graph, another decision
                stem += "-q" + int8_graph.sha256[:8]
            paths = {
                "ir": folder / f"{stem}-{ov_tag}.ir",
                "decision": folder / f"{stem}-{machine}-{precision}.decision",
            }
        self._ir_path = paths["ir"] if paths else None
        self.ir_source: str | None = None

        decision = self._read_decision(paths["decision"]) if paths else None
        compiled = compiled_from = None
        if decision is None:
            decision, compiled = self._decide(precision, capabilities)
            compiled_from = "compiled"
            if paths:
                file_cache.write_json_entry(paths["decision"], decision)
        chosen = decision["precision"]
        if paths:
            paths["compiled"] = folder / f"{stem}-{machine}-{chosen}.compiled"
            if compiled is None:
                compiled = self._import(paths["compiled"], chosen)
                compiled_from = "cache" if compiled is not None else None
        if compiled is None:
            compiled = compile_for_cpu(self._core, self._graph(chosen), chosen, self._threads)
            compiled_from = "compiled"
        if paths and compiled_from == "compiled":
            self._store_compiled(paths["compiled"], compiled)
        self.compiled = compiled
        self._model = self._ir = None  # neither the torch model nor the IR is needed any more
        # An infer request is not thread-safe: each concurrent call borrows its own.
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self.info = {
            "name": self.name,
            "device": self._core.get_property("CPU", "FULL_DEVICE_NAME"),
            "precision": "int8" if chosen == "int8" else _effective_precision(compiled),
            "precision_decision": decision,
            "capabilities": list(capabilities),
            "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "compiled_from": compiled_from,
            "ir_from": self.ir_source,
            "cache": {k: str(v) for k, v in paths.items()} if paths else None,
            "load_s": round(time.perf_counter() - started, 3),
        }

    # ------------------------------------------------------------------------------------ the decision

    def _graph(self, precision: str):
        """The graph a precision compiles: the quantized one for int8, else the converted fp32 one."""
        if precision == "int8":
            return self._core.read_model(str(self._int8_graph.xml))
        return self._read_ir()

    def _decide(self, precision: str, capabilities: tuple[str, ...]) -> tuple[dict, object]:
        """Measure (when there is a choice) and return (decision, the compiled model chosen)."""
        fp32 = compile_for_cpu(self._core, self._read_ir(), "f32", self._threads)
        decision = {
            "format": _DECISION_FORMAT,
            "requested": precision,
            "capabilities": list(capabilities),
            "fp32_ms": None,
            "bf16_ms": None,
            "int8_ms": None,
            "max_probability_difference": None,  # bf16's
            "int8_max_probability_difference": None,
        }
        if precision == "f32":
            return {**decision, "precision": "f32", "reason": "asked for fp32"}, fp32
        candidates: dict[str, object] = {}
        notes = []
        if precision in ("auto", "bf16"):
            if "BF16" not in capabilities:
                notes.append("the CPU reports no BF16 support")
            else:
                bf16 = compile_for_cpu(self._core, self._read_ir(), "bf16", self._threads)
                if _effective_precision(bf16) == "bf16":
                    candidates["bf16"] = bf16
                else:
                    notes.append("OpenVINO ran the bf16 hint as fp32 here")
        if precision in ("auto", "int8"):
            if self._int8_graph is None:
                notes.append("the model has no accepted int8 graph (python -m core quantize)")
            else:
                candidates["int8"] = compile_for_cpu(self._core, self._graph("int8"), "int8", self._threads)
        if not candidates or (precision != "auto" and precision not in candidates):
            why = "; ".join(notes) + ", so fp32 is used"
            return {**decision, "precision": "f32", "reason": why}, fp32
        measured = self._trial(fp32, candidates)
        decision["fp32_ms"] = round(measured["f32"][0], 3)
        for name in candidates:
            ms, difference = measured[name]
            decision[f"{name}_ms"] = round(ms, 3)
            key = "max_probability_difference" if name == "bf16" else f"{name}_max_probability_difference"
            decision[key] = round(difference, 6)
        if precision != "auto":
            asked = {"precision": precision, "reason": f"asked for {precision}"}
            return {**decision, **asked}, candidates[precision]
        chosen, reason = choose_precision(measured["f32"][0], {k: measured[k] for k in candidates})
        reason = "; ".join([reason, *notes])
        return {**decision, "precision": chosen, "reason": reason}, candidates.get(chosen, fp32)

    def _trial(self, fp32, candidates: dict[str, object]) -> dict[str, tuple[float, float]]:
        """{precision: (median ms per image, largest probability difference to fp32)} on the fixed
        inputs, fp32 included (difference 0); run alternately, so all see the same machine load."""
        inputs = _probe_inputs(self._crop)
        models = {"f32": fp32, **candidates}
        requests = {key: model.create_infer_request() for key, model in models.items()}
        times: dict[str, list[float]] = {key: [] for key in models}
        logits: dict[str, list[np.ndarray]] = {key: [] for key in models}
        for round_index in range(_TRIAL_ROUNDS + 1):  # round 0 warms all up and is not timed
            for x in inputs:
                for key, request in requests.items():
                    started = time.perf_counter()
                    result = request.infer({0: x[None]})
                    elapsed = time.perf_counter() - started
                    if round_index == 0:
                        logits[key].append(np.array(result[models[key].output(0)]))
                    else:
                        times[key].append(elapsed)
        probabilities = {
            key: 1 / (1 + np.exp(-np.concatenate(v).astype(np.float64))) for key, v in logits.items()
        }
        return {
            key: (
                statistics.median(times[key]) * 1000,
                float(np.abs(probabilities[key] - probabilities["f32"]).max()),
            )
            for key in models
        }

    @staticmethod
    def _read_decision(path: Path) -> dict | None:
        decision = file_cache.read_json_entry(path)
        if decision is None:
            return None
        if decision.get("format") != _DECISION_FORMAT or decision.get("precision") not in PRECISIONS[1:]:
            file_cache.discard(path)
            return None
        return decision

    def _machine_key(self, capabilities: tuple[str, ...]) -> str:
        """Which machine a decision or a compiled model belongs to (CHEXNET_HOME may be shared)."""
        cpu = cpu_description()
        identity = {
            "openvino": self._ov.get_version(),
            "device": self._core.get_property("CPU", "FULL_DEVICE_NAME"),
            "capabilities": sorted(capabilities),
            "cpu": cpu["model"],
            "features": cpu["features"],
            "cpus": cpu["logical_cpus"],
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    # -------------------------------------------------------------------------- the model and its cache

    def _import(self, path: Path, precision: str):
        blob = file_cache.read_entry(path)
        if blob is None:
            return None
        try:
            compiled = self._core.import_model(blob, "CPU", _config(precision, self._threads))
        except Exception:  # noqa: BLE001 - a compiled model this OpenVINO cannot load: compile again
            file_cache.discard(path)
            return None
        if len(compiled.outputs) != _N_OUTPUTS:  # not the graph this code runs: compile again
            file_cache.discard(path)
            return None
        return compiled

    @staticmethod
    def _store_compiled(path: Path, compiled) -> None:
        try:
            blob = compiled.export_model().getvalue()
        except Exception:  # noqa: BLE001 - a plugin that cannot export: compile at each start instead
            return
        file_cache.write_entry(path, blob)

    def _read_ir(self):
        """The converted model: from the cache when a whole entry is there, else traced from PyTorch."""
        if self._ir is not None:
            return self._ir
        path = self._ir_path
        if path is not None:
            payload = file_cache.read_entry(path)
            if payload is not None:
                try:
                    self._ir = self._unpack_ir(payload)
                    self.ir_source = "cache"
                    return self._ir
                except Exception:  # noqa: BLE001 - checked bytes OpenVINO cannot parse: rebuild them
                    file_cache.discard(path)
        import torch

        model = self._model if isinstance(self._model, torch.nn.Module) else self._model()
        self._ir = convert_model(model, self._crop)
        self.ir_source = "converted"
        if path is not None:
            packed = self._pack_ir(self._ir)
            if packed is not None:
                file_cache.write_entry(path, packed)
        return self._ir

    def _pack_ir(self, converted) -> bytes | None:
        """The IR's .xml and .bin as one payload (8-byte .xml length first); None if it cannot be saved."""
        try:
            with tempfile.TemporaryDirectory(prefix="chexnet-ir-") as folder:
                xml = Path(folder) / "model.xml"
                self._ov.save_model(converted, str(xml), compress_to_fp16=False)
                text, weights = xml.read_bytes(), xml.with_suffix(".bin").read_bytes()
        except Exception:  # noqa: BLE001 - e.g. no space for the temporary copy: just do not cache it
            return None
        return len(text).to_bytes(8, "big") + text + weights

    def _unpack_ir(self, payload: bytes):
        length = int.from_bytes(payload[:8], "big")
        text, weights = payload[8 : 8 + length], payload[8 + length :]
        return self._core.read_model(text, self._ov.Tensor(np.frombuffer(weights, dtype=np.uint8).copy()))

    # ------------------------------------------------------------------------------------------ inference

    def _borrow(self):
        try:
            return self._requests.get_nowait()
        except queue.Empty:
            return self.compiled.create_infer_request()

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(logits [B, C], CAMs [B, C, h, w], pooled features [B, D]) of a model-input batch, one pass."""
        request = self._borrow()
        try:
            results = request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
            logits, cams, pooled = (np.array(results[self.compiled.output(i)]) for i in range(_N_OUTPUTS))
        finally:
            self._requests.put(request)
        return logits, cams, pooled

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, CAMs) only, for callers that need no features (the benchmark)."""
        logits, cams, _ = self.run(batch)
        return logits, cams


def _cache_folder() -> Path:
    from core.paths import cache_dir

    return cache_dir() / "openvino"
