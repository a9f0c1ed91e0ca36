"""Inference: load an artifact once, predict probabilities, positives and CAMs for many images.

Two interchangeable backends run the same network and return (logits, CAMs, pooled features) from one
pass:
- "torch" (core.inference.torch_backend): eager PyTorch, channels_last, inference_mode (CUDA when present);
- "openvino" (core.inference.openvino_backend): the same weights compiled by OpenVINO for this CPU, at the
precision
  measured best on this machine (bf16 only where it is faster and within 0.01 of fp32), about twice as
  fast as PyTorch on CPUs (see `python -m core bench inference`).
Both are stateless per call, so one Predictor serves every browser session concurrently.
`Predictor.backend_info` says which backend, precision and cache entries are in use. Serving with
OpenVINO from its cache never imports torch (~2.5 s and ~300 MB of a web process).

Every prediction carries the out-of-distribution gate's verdict (`Prediction.ood`, a core.ood.gate.OodResult):
the gate stored in the model card (`python -m core ood fit`) judges the pooled features of the same pass;
a model without a gate still gets the pixel checks (blank, noise, document, colour), with score 0.0. The
colour check needs the uploaded file's bytes (`file_bytes`): without them a colour photo is judged on its
grey pixels alone.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core import settings
from core.devices import cuda_available
from core.imaging.preprocess import CropWindow, crop_window, model_input
from core.inference.artifact import ArtifactError, ModelArtifact, read_artifact
from core.inference.cam import cam_to_image
from core.inference.openvino_backend import OpenVinoBackend, import_openvino
from core.inference.quantize import usable_int8_graph
from core.ood.gate import OodError, OodGate, OodResult, check_image, colourfulness, stored_gate

__all__ = ["OpenVinoBackend", "Prediction", "Predictor", "openvino_available"]


@dataclass
class Prediction:
    labels: tuple[str, ...]
    probabilities: dict[str, float]
    positive: list[str]
    cams: np.ndarray  # [C, h, w] raw class activation maps in model space
    image_size: tuple[int, int]  # (width, height) of the original image
    window: CropWindow  # where the model's crop lies in the original image
    features: np.ndarray | None = None  # float32 [D]: the pooled features the classifier read
    ood: OodResult | None = None  # the OOD gate's verdict: .flagged, .score, .reason (to_dict for JSON)

    def cam(self, label: str, size: tuple[int, int] | None = None) -> np.ndarray:
        """The CAM for `label` as float32 [height, width] in [0, 1] over the original image, or over a
        resized copy of it when `size` (width, height) is given (a screen-size view)."""
        width, height = size or self.image_size
        return cam_to_image(self.cams[self.labels.index(label)], width, height, self.window_at(size))

    def window_at(self, size: tuple[int, int] | None = None) -> CropWindow:
        """The model's crop window in a copy of the image resized to `size` (the original's when None)."""
        if size is None or tuple(size) == tuple(self.image_size):
            return self.window
        scale_x, scale_y = size[0] / self.image_size[0], size[1] / self.image_size[1]
        return CropWindow(self.window.left * scale_x, self.window.top * scale_y, self.window.side * scale_x)

    def most_probable(self) -> str:
        return max(self.probabilities, key=self.probabilities.__getitem__)


def inference_threads() -> int:
    """PyTorch's thread count (torch.set_num_threads, else OMP_NUM_THREADS, else every core), without
    importing torch when nothing has yet."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else settings.compute_threads()


def openvino_available() -> bool:
    try:
        import_openvino()
    except ImportError:
        return False
    return True


class Predictor:
    def __init__(
        self,
        artifact: ModelArtifact,
        *,
        backend: str | None = None,
        device: str | None = None,
        precision: str | None = None,
    ):
        # backend / precision None: the server's settings (CHEXNET_INFERENCE_BACKEND and
        # CHEXNET_INFERENCE_PRECISION, "auto" unless set); the precision is OpenVINO's (torch runs fp32).
        backend = backend or settings.inference_backend()
        self.artifact = artifact
        self.labels = artifact.labels
        self.thresholds = artifact.thresholds
        self.resize, self.crop = artifact.resize, artifact.crop
        device = device or ("cuda" if cuda_available() else "cpu")
        digest = artifact.weights_digest() if backend != "torch" or artifact.card.get("ood") else None
        try:
            self.ood_gate: OodGate | None = stored_gate(artifact, digest)
        except OodError as exc:  # a damaged gate is a damaged card: said, never skipped silently
            raise ArtifactError(f"The model in {artifact.path} cannot be used: {exc}") from exc
        if backend == "auto":
            backend = "openvino" if str(device).startswith("cpu") and openvino_available() else "torch"
        if backend == "openvino":
            # The PyTorch model is only loaded (and torch imported) if nothing usable is cached; it is
            # then traced once. OpenVINO takes as many threads as PyTorch would: one setting for both.
            precision = precision or settings.inference_precision()
            # A quantized graph takes part when it was accepted on held-out images, or when asked for.
            int8 = usable_int8_graph(artifact, digest, accepted_only=precision != "int8")
            self.backend = OpenVinoBackend(
                lambda: artifact.load_model("cpu"), self.crop, cache_key=digest, threads=inference_threads(),
                precision=precision, int8_graph=int8,
            )  # fmt: skip
        elif backend == "torch":
            from core.inference.torch_backend import TorchBackend

            self.backend = TorchBackend(artifact.load_model("cpu"), device)
        else:
            raise ValueError(f"Unknown inference backend '{backend}': use auto, torch or openvino.")

    @classmethod
    def from_path(cls, path: str | Path, **kwargs) -> Predictor:
        return cls(read_artifact(path), **kwargs)

    @property
    def name(self) -> str:
        return self.artifact.name

    @property
    def backend_info(self) -> dict:
        """Which backend runs the model, at which precision, and (OpenVINO) why and from which cache."""
        return dict(self.backend.info)

    def predict(
        self,
        images: Sequence[np.ndarray],
        batch_size: int = 8,
        *,
        file_bytes: Sequence[bytes | None] | None = None,
        check_ood: bool = True,
    ) -> list[Prediction]:
        """Predict for grey uint8 images of any size (each HxW); `file_bytes`: each image's original file
        (same order), for the OOD gate's colour check. `check_ood=False` (an evaluation over a known
        dataset) leaves `ood` None and saves the gate's few milliseconds per image."""
        if file_bytes is not None and len(file_bytes) != len(images):
            raise ValueError("file_bytes needs one entry (or None) per image.")
        sources = list(file_bytes) if file_bytes is not None else [None] * len(images)
        results: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            end = start + batch_size
            chunk = images[start:end]
            batch = np.stack([model_input(img, self.resize, self.crop) for img in chunk])
            logits, cams, pooled = self.backend.run(batch)
            probabilities = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
            outputs = zip(chunk, probabilities, cams, pooled, sources[start:end], strict=True)
            for img, probs, cam, features, data in outputs:
                height, width = img.shape
                by_label = {label: float(p) for label, p in zip(self.labels, probs, strict=True)}
                results.append(
                    Prediction(
                        labels=self.labels,
                        probabilities=by_label,
                        positive=[
                            label for label in self.labels if by_label[label] >= self.thresholds[label]
                        ],
                        cams=cam,
                        image_size=(width, height),
                        window=crop_window(width, height, self.resize, self.crop),
                        features=features,
                        ood=self.check_ood(img, features, data) if check_ood else None,
                    )
                )
        return results

    def predict_one(self, image: np.ndarray, *, file_bytes: bytes | None = None) -> Prediction:
        return self.predict([image], file_bytes=[file_bytes])[0]

    def check_ood(self, pixels: np.ndarray, features: np.ndarray, data: bytes | None = None) -> OodResult:
        """The gate's verdict on one image (its grey pixels, pooled features and, if known, file bytes)."""
        colour = colourfulness(data) if data is not None else None
        return check_image(self.ood_gate, pixels, features, colour, resize=self.resize)
