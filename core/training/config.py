"""What a training run is asked to do, and how it reports back.

`TrainSettings` holds the choices a person makes about a run. It is the one shape those choices take
everywhere: the Fine-tune form builds its widgets from the fields' `Setting` metadata (label, help,
default, bounds, choices), the job row stores `to_dict()`, the torchrun runner and the trainer read it
back with `from_dict()`, and the model card records `to_dict()`. A new setting is one field here plus
the code that uses it.

`TrainConfig` adds where the run reads and writes and how it runs (device, threads, resume...).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import Cancelled, UserError

STATE_FILE = "train_state.pt"
BEST_WEIGHTS_FILE = "best.safetensors"
INITS = ("random", "imagenet", "artifact")
DEFAULT_LR = 1e-3
DEFAULT_FINETUNE_LR = 1e-4
DEFAULT_CROP = 224
# Full ChestX-ray14: what "time per epoch" figures are extrapolated to.
FULL_DATASET_IMAGES = 112_120
# How a finding a reader marked Uncertain (the labels table's `uncertain` column) trains.
UNCERTAIN_POLICIES = ("ignore", "negative", "positive")


class TrainingError(UserError, RuntimeError):
    """Training cannot start or go on as asked (one human sentence)."""


class SettingsError(UserError, ValueError):
    """A training setting outside its bounds or of the wrong type (one human sentence)."""


class TrainingCancelled(Cancelled):
    """`should_cancel()` returned True; the last finished epoch is saved and can be resumed."""


# ----------------------------------------------------------------------------------------------------
# Settings a person chooses


@dataclass(frozen=True)
class Setting:
    """How one `TrainSettings` field is shown and checked."""

    label: str
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None  # offered values (the form's slider); any in-bounds value is valid
    optional: bool = False  # None is allowed (its meaning is in `help`)
    in_form: bool = True  # shown on the Fine-tune form (else CLI / API only)


def _setting(default: Any, label: str, help: str, **kwargs: Any) -> Any:
    return field(default=default, metadata={"setting": Setting(label, help, **kwargs)})


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = _setting(3, "Epochs", "Passes over the training split.", minimum=1, maximum=500)
    batch_size: int = _setting(
        16,
        "Batch size",
        "Images per optimisation step (split over the GPUs of a multi-GPU run).",
        minimum=1,
        maximum=4096,
        choices=(4, 8, 16, 32, 64, 128, 256, 512),
    )
    lr: float | None = _setting(
        None,
        "Learning rate",
        "Adam, divided by 10 when the validation loss stalls. Empty: 1e-3 from scratch, 1e-4 from a model.",
        minimum=1e-7,
        maximum=1.0,
        choices=(1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3),
        optional=True,
    )
    class_weighting: bool = _setting(
        False,
        "Class weighting",
        "Weight each finding's positives by its negatives/positives ratio in the training labels "
        "(helps rare findings such as Hernia).",
    )
    seed: int = _setting(
        0,
        "Random seed",
        "Seeds the patient-wise split, the initial weights, the shuffling and the augmentation: the same "
        "seed, data and settings give the same model on the same hardware.",
        minimum=0,
        maximum=2**31 - 1,
    )
    weight_decay: float = _setting(
        0.0, "Weight decay", "Adam's L2 penalty.", minimum=0.0, maximum=1.0, in_form=False
    )
    val_fraction: float = _setting(
        0.1,
        "Validation fraction",
        "Share of the official train_val patients held out for validation (patient-wise).",
        minimum=0.01,
        maximum=0.9,
        in_form=False,
    )
    patience: int | None = _setting(
        3,
        "Early-stopping patience",
        "Epochs without a better validation mean AUROC before stopping. Empty: never stop early.",
        minimum=1,
        maximum=100,
        optional=True,
        in_form=False,
    )
    image_size: int | None = _setting(
        None,
        "Input size",
        "The square crop the network sees. Empty: the base model's (224 px from scratch).",
        minimum=32,
        maximum=1024,
        optional=True,
        in_form=False,
    )
    uncertain_policy: str = _setting(
        "ignore",
        "Uncertain findings",
        "How a finding a reader marked Uncertain trains: ignore (left out of the loss), negative (as 0) "
        "or positive (as 1). Validation scores it as absent unless the policy is positive.",
        choices=UNCERTAIN_POLICIES,
    )
    time_budget_s: float | None = _setting(
        None,
        "Time budget (s)",
        "No epoch is started that would end past this many seconds. Empty: no budget.",
        minimum=1.0,
        optional=True,
        in_form=False,
    )

    def __post_init__(self) -> None:
        for spec in fields():
            _check(spec, getattr(self, spec.name))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> TrainSettings:
        """Settings from stored values (a job row, a form, a card); unknown names are refused."""
        values = dict(values or {})
        known = {spec.name for spec in fields()}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingsError(f"Unknown training setting(s): {', '.join(unknown)}.")
        by_name = {spec.name: spec for spec in fields()}
        return cls(**{name: _coerce(by_name[name], value) for name, value in values.items()})

    def replace(self, **changes: Any) -> TrainSettings:
        return TrainSettings.from_dict({**self.to_dict(), **changes})


def fields() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(TrainSettings)


def spec_of(name: str) -> Setting:
    return next(f for f in fields() if f.name == name).metadata["setting"]


def value_type(name: str) -> type:
    """bool, int, float or str (a choice): the type a setting's (non-empty) value has."""
    return _kind(next(f for f in fields() if f.name == name))


def _kind(spec: dataclasses.Field) -> type:
    default = spec.default
    if isinstance(default, bool):
        return bool
    if isinstance(default, str):
        return str
    text = str(spec.type)
    if text.startswith("bool"):
        return bool
    if text.startswith("int"):
        return int
    return float


def _coerce(spec_field: dataclasses.Field, value: Any) -> Any:
    """Form and JSON values to the field's type ("" and None mean None for optional settings)."""
    if value is None or value == "":
        return None
    kind = _kind(spec_field)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _check(spec_field: dataclasses.Field, value: Any) -> None:
    spec: Setting = spec_field.metadata["setting"]
    kind = _kind(spec_field)
    name = spec.label.lower()
    if value is None:
        if not spec.optional:
            raise SettingsError(f"The {name} must be given.")
        return
    if kind is bool:
        if not isinstance(value, bool):
            raise SettingsError(f"The {name} must be true or false, not {value!r}.")
        return
    if kind is str:
        if value not in (spec.choices or ()):
            raise SettingsError(f"The {name} must be one of {', '.join(spec.choices or ())}, not {value!r}.")
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingsError(f"The {name} must be a number, not {value!r}.")
    if kind is int and value != int(value):
        raise SettingsError(f"The {name} must be a whole number, not {value!r}.")
    if not math.isfinite(float(value)):
        raise SettingsError(f"The {name} must be a finite number, not {value!r}.")
    low, high = spec.minimum, spec.maximum
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (
            f"between {number_text(low)} and {number_text(high)}"
            if high is not None
            else (f"at least {number_text(low)}")
        )
        raise SettingsError(f"The {name} must be {bounds}, not {number_text(value)}.")


def number_text(value: float) -> str:
    """1e-07, 0.9, 500, 2147483647: whole numbers in full, others as %g."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# ----------------------------------------------------------------------------------------------------
# One run


@dataclass
class TrainConfig:
    data_dir: Path
    out_dir: Path
    settings: TrainSettings = field(default_factory=TrainSettings)
    init: str = "random"  # random | imagenet | artifact
    base_model: Path | None = None  # the artifact to start from (init="artifact")
    labels_table: Path | None = None  # CSV: image_index + the 14 findings (+ optional exclude column)
    exclude: Path | None = None  # image index list (text or CSV) left out of training and validation
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    workers: int = 0  # threads for the cache build and batch prefetch; 0: automatic
    resume: bool = False
    name: str | None = None  # model name (default: the output folder's name)
    cache_dir: Path | None = None  # default: a folder per dataset under core.paths.cache_dir()
    description: str | None = None  # prepended to the generated description
    keep_work: bool = False  # keep `<out>.work/` (train_state.pt) after a successful run
    progress_every: int | None = None  # steps between progress events (None: 1 on CPU, 25 on CUDA)
    # CPU threads for this run (torch.set_num_threads, restored afterwards); None: torch's default. On a
    # CPU shared with other busy processes 1 thread wastes far less time in OpenMP spin-waits.
    threads: int | None = None
    # The base model's crop when fine-tuning (read from its card by whoever builds the config).
    base_crop: int | None = None

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser()
        self.out_dir = Path(self.out_dir).expanduser()
        if isinstance(self.settings, dict):
            self.settings = TrainSettings.from_dict(self.settings)
        for name in ("base_model", "labels_table", "exclude", "cache_dir"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value).expanduser())
        if self.init not in INITS:
            raise SettingsError(f"Unknown initialisation {self.init!r}: use {', '.join(INITS)}.")

    @property
    def learning_rate(self) -> float:
        if self.settings.lr is not None:
            return float(self.settings.lr)
        return DEFAULT_FINETUNE_LR if self.init == "artifact" else DEFAULT_LR

    @property
    def image_size(self) -> int:
        """The crop the network sees: the setting, else the base model's, else CheXNet's 224."""
        return int(self.settings.image_size or self.base_crop or DEFAULT_CROP)

    @property
    def cache_size(self) -> int:
        """Side of the cached images: 256 for the standard 224 crop, the same 256:224 ratio otherwise."""
        from core.data.cache import DEFAULT_SIZE  # here: importing the contract must stay light (CLI --help)

        size = self.image_size
        return DEFAULT_SIZE if size == DEFAULT_CROP else round(size * DEFAULT_SIZE / DEFAULT_CROP)

    @property
    def work_dir(self) -> Path:
        # Beside the output, not in it: save_artifact replaces the output folder as a whole.
        return self.out_dir.with_name(self.out_dir.name + ".work")

    @property
    def model_name(self) -> str:
        return self.name or self.out_dir.name

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly values (paths as strings, settings as their dict)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["settings"] = self.settings.to_dict()
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls(**json.loads(text))


# ----------------------------------------------------------------------------------------------------
# Progress


@dataclass
class TrainProgress:
    """One progress event. `phase`: "cache" (done/total images), "train" (every few steps), "validate",
    "epoch" (an epoch finished: val_* filled in), "message" (text only) and "done"."""

    phase: str
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    images_seen: int = 0
    loss: float | None = None  # mean training loss since the previous "train" event
    lr: float | None = None
    val_loss: float | None = None
    val_auroc: dict[str, float | None] | None = None
    val_mean_auroc: float | None = None
    eta_s: float | None = None
    device: str = ""
    images_per_s: float | None = None
    done: int = 0
    total: int = 0
    message: str = ""


ProgressCallback = Callable[[TrainProgress], None]
