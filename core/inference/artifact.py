"""Model artifacts: a folder holding `model.safetensors` and `model.json` (MONAI-bundle style).

model.json is the model's card: labels (in output order), input format, per-class operating
thresholds, provenance (data, label source, epochs, hyper-parameters, parent version) and metrics.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import UserError
from core.imaging.preprocess import IMAGENET_MEAN, IMAGENET_STD
from core.labels import FINDINGS

if TYPE_CHECKING:
    import torch

    from core.inference.models import CheXNet

# torch, safetensors and core.inference.models are imported where weights are read or written: reading a card
# (the registry, every page listing models) must not pay for importing torch.

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"
FORMAT_VERSION = 1
INTENDED_USE = "Research use only — not for diagnosis."


class ArtifactError(UserError, ValueError):
    """A model folder or checkpoint that cannot be used (one human sentence)."""


def default_input_spec() -> dict[str, Any]:
    # Shorter side resized to 256, centre crop 224: the common CheXNet reproduction's eval transform,
    # and the same geometry the training cache and augmentation use.
    return {
        "resize_shorter_side": 256,
        "crop": 224,
        "channels": 3,
        "grey_replicated_to_rgb": True,
        "scale": "uint8 / 255",
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "output": "logits (apply sigmoid for probabilities)",
    }


def new_card(
    name: str, *, labels: tuple[str, ...] = FINDINGS, arch: str = "densenet121", **extra: Any
) -> dict:
    card: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "arch": arch,
        "labels": list(labels),
        "input": default_input_spec(),
        "thresholds": {label: 0.5 for label in labels},
        "intended_use": INTENDED_USE,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "provenance": {},
        "metrics": {},
    }
    card.update(extra)
    return card


@dataclass
class ModelArtifact:
    path: Path
    card: dict[str, Any] = field(repr=False)

    @property
    def name(self) -> str:
        return self.card["name"]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.card["labels"])

    @property
    def thresholds(self) -> dict[str, float]:
        return {label: float(self.card.get("thresholds", {}).get(label, 0.5)) for label in self.labels}

    @property
    def input_spec(self) -> dict[str, Any]:
        return self.card.get("input") or default_input_spec()

    @property
    def resize(self) -> int:
        """The shorter side the image is resized to before the centre crop (256 for CheXNet); also the
        size of the preprocessed image caches, whose pixels are then exactly the model's input."""
        return int(self.input_spec.get("resize_shorter_side", 256))

    @property
    def crop(self) -> int:
        """The side of the square the network sees (224 for CheXNet)."""
        return int(self.input_spec.get("crop", 224))

    def weights_digest(self) -> str:
        """sha256 of the weights file: identifies exactly these weights (e.g. for compiled caches)."""
        digest = hashlib.sha256()
        with open(self.path / WEIGHTS_FILE, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def load_model(self, device: str | torch.device = "cpu") -> CheXNet:
        from safetensors.torch import load_file

        from core.inference.models import ModelInitError, create_model

        try:
            model = create_model(self.card.get("arch", "densenet121"), num_classes=len(self.labels))
        except ModelInitError as exc:
            raise ArtifactError(f"The model card in {self.path} names an unusable model: {exc}") from exc
        try:
            state = load_file(str(self.path / WEIGHTS_FILE), device=str(device))
        except Exception as exc:
            raise ArtifactError(f"The weights in {self.path} could not be read ({exc}).") from exc
        state = {k: v.float() for k, v in state.items()}
        arch, outputs = self.card.get("arch"), len(self.labels)
        _load_exactly(model, state, f"The weights in {self.path} do not fit a {arch} with {outputs} outputs")
        return model.to(device).eval()


def _load_exactly(model: torch.nn.Module, state: dict[str, torch.Tensor], does_not_fit: str) -> None:
    """Load every tensor or raise ArtifactError("<does_not_fit> (what differs).")."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensor shape mismatches raise even with strict=False
        raise ArtifactError(f"{does_not_fit} (tensor shapes differ).") from exc
    if missing or unexpected:
        raise ArtifactError(
            f"{does_not_fit} ({len(missing)} tensors missing, {len(unexpected)} unexpected, "
            f"e.g. {(missing or unexpected)[0]})."
        )


def is_artifact(path: str | Path) -> bool:
    path = Path(path)
    return (path / WEIGHTS_FILE).is_file() and (path / CARD_FILE).is_file()


def read_artifact(path: str | Path) -> ModelArtifact:
    path = Path(path)
    if not is_artifact(path):
        raise ArtifactError(f"{path} is not a model folder (it needs {WEIGHTS_FILE} and {CARD_FILE}).")
    try:
        card = json.loads((path / CARD_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"The model card {path / CARD_FILE} is not valid JSON ({exc}).") from exc
    for key in ("name", "labels"):
        if key not in card:
            raise ArtifactError(f"The model card {path / CARD_FILE} has no '{key}'.")
    return ModelArtifact(path=path, card=card)


def save_artifact(
    model: torch.nn.Module, out_dir: str | Path, card: dict, *, half: bool = True
) -> ModelArtifact:
    """Write the artifact atomically: a reader never sees a half-written folder."""
    import torch
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if len(card["labels"]) != model.classifier.out_features:
        raise ArtifactError("The card's labels do not match the model's number of outputs.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        dtype = torch.float16 if half else torch.float32
        state = {
            k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
            for k, v in model.state_dict().items()
        }
        card = {**card, "weights_dtype": str(dtype).removeprefix("torch.")}
        # One metadata key only: safetensors writes a multi-key map in random order, which would make
        # weights_digest() (the compiled-model cache key) differ between saves of the same weights.
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2, allow_nan=False) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; a web server running as another user must read it
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return read_artifact(out_dir)


def update_card(path: str | Path, **changes: Any) -> ModelArtifact:
    artifact = read_artifact(path)
    card = {**artifact.card, **changes}
    tmp = Path(path) / f".{CARD_FILE}.tmp"
    tmp.write_text(json.dumps(card, indent=2, allow_nan=False) + "\n")
    tmp.replace(Path(path) / CARD_FILE)
    return read_artifact(path)


# Old torchvision DenseNet names used dots inside layer names ("norm.1"); current ones do not ("norm1").
_OLD_LAYER_NAME = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])")


def convert_chexnet_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the well-known CheXNet reproduction's keys to this project's CheXNet keys."""
    converted = {}
    for key, tensor in state.items():
        new = key.removeprefix("module.").removeprefix("densenet121.")
        new = _OLD_LAYER_NAME.sub(r"\1\2", new)
        new = new.replace("classifier.0.", "classifier.")
        converted[new] = tensor
    return converted


def import_chexnet_checkpoint(
    checkpoint: str | Path, out_dir: str | Path, *, name: str | None = None
) -> ModelArtifact:
    """Convert a public CheXNet `model.pth.tar` (a dict with `state_dict`) into an artifact."""
    import torch

    from core.inference.models import create_model

    checkpoint = Path(checkpoint)
    try:
        raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise ArtifactError(f"{checkpoint} could not be opened ({exc.strerror or exc}).") from exc
    except Exception as exc:
        # torch's own message is several paragraphs (and suggests weights_only=False): keep one sentence.
        raise ArtifactError(
            f"{checkpoint.name} is not a PyTorch checkpoint this app can read safely: it is damaged, or it "
            "holds Python objects other than tensors, which are refused because loading them could run code."
        ) from exc
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not state:
        raise ArtifactError(f"{checkpoint.name} holds no state_dict.")
    state = convert_chexnet_state_dict(state)
    model = create_model("densenet121", num_classes=len(FINDINGS))
    _load_exactly(
        model,
        state,
        f"{checkpoint.name} is not a CheXNet DenseNet-121 checkpoint with {len(FINDINGS)} outputs",
    )
    card = new_card(
        name or checkpoint.stem.removesuffix(".pth"),
        provenance={
            "imported_from": checkpoint.name,
            "format": "CheXNet reproduction model.pth.tar",
            "epochs": raw.get("epoch") if isinstance(raw, dict) else None,
        },
    )
    return save_artifact(model, out_dir, card, half=False)
