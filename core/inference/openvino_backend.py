"""The OpenVINO CPU backend: compiled for this machine, at the precision measured best here, cached safely.

Precision is chosen per machine when a model is first loaded there, by measurement, never assumed:
fp32 always; bf16 too when OpenVINO reports BF16 among the CPU's OPTIMIZATION_CAPABILITIES (AVX-512
BF16 or AMX). Both run the same fixed inputs; bf16 is kept only if it is clearly faster
(`BF16_MAX_TIME_RATIO`) and its probabilities stay within `MAX_PROBABILITY_DIFFERENCE` of fp32's. The
decision (precision, measured ms, max difference) is stored and exposed as `OpenVinoBackend.info`.

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
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core import file_cache
from core.cpu_info import cpu_description

if TYPE_CHECKING:  # torch is imported only to convert a model that is not cached yet
    import torch

__all__ = ["BF16_MAX_TIME_RATIO", "MAX_PROBABILITY_DIFFERENCE", "OpenVinoBackend", "choose_precision"]

MAX_PROBABILITY_DIFFERENCE = 0.01
# bf16 must take at most this share of fp32's time: a tie on a noisy machine keeps the exact fp32.
BF16_MAX_TIME_RATIO = 0.9
_TRIAL_ROUNDS = 5
_DECISION_FORMAT = 1
# The graph's outputs, in cache entry names: "lcp" = logits, CAMs, pooled features. Entries of the older
# two-output graph ("logits, CAMs", unnamed) are left alone and never read.
OUTPUTS_TAG = "lcp"
_N_OUTPUTS = 3


def choose_precision(fp32_ms: float, bf16_ms: float, max_difference: float) -> tuple[str, str]:
    """(precision, reason) from measured times and the largest probability difference to fp32."""
    if max_difference > MAX_PROBABILITY_DIFFERENCE:
        return "f32", f"bf16 moved a probability by {max_difference:.4f} (> {MAX_PROBABILITY_DIFFERENCE})"
    if bf16_ms > BF16_MAX_TIME_RATIO * fp32_ms:
        return "f32", f"bf16 was not faster enough ({bf16_ms:.1f} ms vs {fp32_ms:.1f} ms for fp32)"
    return (
        "bf16",
        f"bf16 {bf16_ms:.1f} ms vs fp32 {fp32_ms:.1f} ms, max probability difference {max_difference:.4f}",
    )


def import_openvino():
    """The openvino module, with its usage telemetry off. Importing openvino otherwise sends an event to
    Google Analytics from a child process (~0.3 s of a first page here, offline too), and nothing should
    leave a hospital's machine unasked; with `openvino_telemetry` unimportable, openvino uses its own
    no-op stub."""
    sys.modules.setdefault("openvino_telemetry", None)
    import openvino

    return openvino


def _config(precision: str, threads: int | None) -> dict:
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


def _effective_precision(compiled) -> str:
    """What OpenVINO actually runs: a bf16 hint on a CPU without bf16 silently runs fp32."""
    return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


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
    ):
        """`model` may be a function that loads it: then it is only called when nothing usable is cached.
        `threads`: inference threads (None: OpenVINO's choice, all cores)."""
        ov = import_openvino()

        if precision not in ("auto", "f32", "bf16"):
            raise ValueError(f"Unknown precision '{precision}': use auto, f32 or bf16.")
        started = time.perf_counter()
        self._ov, self._core = ov, ov.Core()
        self._model, self._crop, self._threads = model, crop, threads
        self._ir = None
        capabilities = tuple(self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        folder = _cache_folder() if cache_key else None
        machine = self._machine_key(capabilities)
        paths = None
        if folder is not None:
            ov_tag = hashlib.sha256(ov.get_version().encode()).hexdigest()[:8]
            stem = f"{cache_key}-{crop}-{OUTPUTS_TAG}"
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
            compiled = self._core.compile_model(self._read_ir(), "CPU", _config(chosen, self._threads))
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
            "precision": _effective_precision(compiled),
            "precision_decision": decision,
            "capabilities": list(capabilities),
            "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "compiled_from": compiled_from,
            "ir_from": self.ir_source,
            "cache": {k: str(v) for k, v in paths.items()} if paths else None,
            "load_s": round(time.perf_counter() - started, 3),
        }

    # ------------------------------------------------------------------------------------ the decision

    def _decide(self, precision: str, capabilities: tuple[str, ...]) -> tuple[dict, object]:
        """Measure (when there is a choice) and return (decision, the compiled model chosen)."""
        fp32 = self._core.compile_model(self._read_ir(), "CPU", _config("f32", self._threads))
        decision = {
            "format": _DECISION_FORMAT,
            "requested": precision,
            "capabilities": list(capabilities),
            "fp32_ms": None,
            "bf16_ms": None,
            "max_probability_difference": None,
        }
        if precision == "f32" or (precision == "auto" and "BF16" not in capabilities):
            why = (
                "asked for fp32" if precision == "f32" else "the CPU reports no BF16 support, so fp32 is used"
            )
            return {**decision, "precision": "f32", "reason": why}, fp32
        bf16 = self._core.compile_model(self._read_ir(), "CPU", _config("bf16", self._threads))
        if _effective_precision(bf16) != "bf16":
            return {**decision, "precision": "f32", "reason": "OpenVINO ran the bf16 hint as fp32 here"}, fp32
        fp32_ms, bf16_ms, difference = self._trial(fp32, bf16)
        measured = {"fp32_ms": round(fp32_ms, 3), "bf16_ms": round(bf16_ms, 3),
                    "max_probability_difference": round(difference, 6)}  # fmt: skip
        if precision == "bf16":
            return {**decision, **measured, "precision": "bf16", "reason": "asked for bf16"}, bf16
        chosen, reason = choose_precision(fp32_ms, bf16_ms, difference)
        return {**decision, **measured, "precision": chosen, "reason": reason}, (
            bf16 if chosen == "bf16" else fp32
        )

    def _trial(self, fp32, bf16) -> tuple[float, float, float]:
        """Median ms per image of each (alternating, so both see the same machine load) and the largest
        probability difference between them on the fixed inputs."""
        inputs = _probe_inputs(self._crop)
        models = {"f32": fp32, "bf16": bf16}
        requests = {key: model.create_infer_request() for key, model in models.items()}
        times: dict[str, list[float]] = {"f32": [], "bf16": []}
        logits: dict[str, list[np.ndarray]] = {"f32": [], "bf16": []}
        for round_index in range(_TRIAL_ROUNDS + 1):  # round 0 warms both up and is not timed
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
        difference = float(np.abs(probabilities["f32"] - probabilities["bf16"]).max())
        return statistics.median(times["f32"]) * 1000, statistics.median(times["bf16"]) * 1000, difference

    @staticmethod
    def _read_decision(path: Path) -> dict | None:
        decision = file_cache.read_json_entry(path)
        if decision is None:
            return None
        if decision.get("format") != _DECISION_FORMAT or decision.get("precision") not in ("f32", "bf16"):
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
        self._ir = self._convert(model, self._crop)
        self.ir_source = "converted"
        if path is not None:
            packed = self._pack_ir(self._ir)
            if packed is not None:
                file_cache.write_entry(path, packed)
        return self._ir

    @staticmethod
    def _convert(model: torch.nn.Module, crop: int):
        ov = import_openvino()
        import torch

        from core.inference.features import FeatureOutputs

        example = torch.zeros(1, 3, crop, crop)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # OpenVINO traces with torch.jit internally
            return ov.convert_model(
                FeatureOutputs(model.float().eval()),
                example_input=example,
                input=[ov.PartialShape([-1, 3, crop, crop])],
            )

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
