"""The progress of a job as one typed value: written to the job row by `jobs.run.JobRun`, read back and
rendered by the Fine-tune page through its methods (`headline`, `completed_fraction`, ...).

The row stores `to_dict()`; `from_dict()` is lenient (missing parts take their defaults, unknown keys
are ignored) so that the page can always show whatever a worker of any version wrote.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MAX_LOSS_POINTS = 1_500
MAX_MESSAGES = 30


@dataclass
class ImageCount:
    """Images handled by a stage: cache building, one of several evaluations, predictions."""

    done: int = 0
    total: int = 0
    part: int = 1  # evaluation: this report's number ...
    parts: int = 1  # ... of this many
    stored: int = 0  # predictions written
    unreadable: int = 0

    @property
    def fraction(self) -> float | None:
        """Share of the stage done (over all its parts), None while the total is unknown."""
        if not self.total:
            return None
        return ((self.part - 1) + self.done / self.total) / max(self.parts, 1)


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float | None = None
    val_loss: float | None = None
    val_mean_auroc: float | None = None
    val_auroc: dict[str, float | None] = field(default_factory=dict)


@dataclass
class JobProgress:
    kind: str = ""
    stage: str = "starting"  # starting | labels | cache | train | validate | evaluate | predict | <status>
    stage_text: str = "Starting"
    fraction: float = 0.0  # of the training (or prediction) run, 0..1
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    loss_history: list[list[float]] = field(default_factory=list)  # [position in epochs, loss]
    epochs_done: list[EpochRecord] = field(default_factory=list)
    message: str = ""  # the latest message
    messages: list[str] = field(default_factory=list)  # the last MAX_MESSAGES
    eta_s: float | None = None
    lr: float | None = None
    device: str = ""
    images_per_s: float | None = None
    cache: ImageCount | None = None
    evaluation: ImageCount | None = None
    predicted: ImageCount | None = None
    version: str | None = None  # the version being evaluated or predicted with
    result_version: str | None = None  # the version a fine-tune registered
    resumed_after_epoch: int | None = None
    started_at: str | None = None
    updated_at: str | None = None

    # ------------------------------------------------------------------------------------------------
    # Stored form

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> JobProgress:
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in values.items() if k in known and v is not None}
        for part in ("cache", "evaluation", "predicted"):
            if isinstance(kept.get(part), dict):
                kept[part] = _build(ImageCount, kept[part])
            else:
                kept.pop(part, None)
        kept["epochs_done"] = [
            _build(EpochRecord, record)
            for record in kept.get("epochs_done") or []
            if isinstance(record, dict) and "epoch" in record
        ]
        kept["loss_history"] = [list(point) for point in kept.get("loss_history") or [] if len(point) == 2]
        kept["messages"] = [str(m) for m in kept.get("messages") or []]
        return cls(**kept)

    # ------------------------------------------------------------------------------------------------
    # What the page shows

    def headline(self, status: str, duration_text: Callable[[float], str]) -> str:
        """One line under the progress bar: stage, epoch/step or images, time left (in the page's
        `duration_text` wording)."""
        if status == "queued":
            return "Waiting for the worker…"
        parts = [self.stage_text or status]
        if self.stage in ("train", "validate") and self.epochs:
            parts.append(f"epoch {self.epoch}/{self.epochs}")
            if self.stage == "train" and self.steps:
                parts.append(f"step {self.step}/{self.steps}")
        count = {"cache": self.cache, "evaluate": self.evaluation, "predict": self.predicted}.get(self.stage)
        if count is not None and count.total:
            parts.append(f"{count.done:,}/{count.total:,} images")
        if self.eta_s and status == "running" and self.stage == "train":
            parts.append(f"about {duration_text(self.eta_s)} left")
        return " · ".join(parts)

    def completed_fraction(self, status: str) -> float:
        """How full the progress bar is, 0..1."""
        count = {"cache": self.cache, "evaluate": self.evaluation}.get(self.stage)
        share = count.fraction if count is not None else None
        if share is None:
            share = self.fraction or (1.0 if status == "succeeded" else 0.0)
        return min(max(float(share), 0.0), 1.0)

    @property
    def last_loss(self) -> float | None:
        return self.loss_history[-1][1] if self.loss_history else None

    @property
    def best_val_auroc(self) -> float | None:
        values = [e.val_mean_auroc for e in self.epochs_done if e.val_mean_auroc is not None]
        return max(values, default=None)

    @property
    def has_curves(self) -> bool:
        return bool(self.loss_history or self.epochs_done)

    # ------------------------------------------------------------------------------------------------
    # What the worker writes

    def add_message(self, text: str) -> None:
        self.message = text
        self.messages = [*self.messages, text][-MAX_MESSAGES:]

    def end(self, status: str, message: str | None = None) -> None:
        self.stage, self.stage_text = status, status.capitalize()
        if status == "succeeded":
            self.fraction = 1.0
        if message:
            self.add_message(message)

    def apply_train_event(self, event: Any) -> bool:
        """Take in one trainer event (a core.training.TrainProgress, or its fields as a dict from a
        torchrun rank). Returns True when the event is worth writing at once (epoch ends, cache done)."""
        e = event if isinstance(event, dict) else dataclasses.asdict(event)
        phase = e.get("phase")
        for name in ("device", "eta_s", "images_per_s", "lr"):
            if phase in ("train", "validate", "epoch") and e.get(name) not in (None, ""):
                setattr(self, name, e[name])
        if phase == "cache":
            total, done = int(e.get("total") or 0), int(e.get("done") or 0)
            self.stage, self.stage_text = "cache", "Preparing the image cache"
            self.cache = ImageCount(done=done, total=total)
            return total > 0 and done >= total
        if phase == "train":
            self.epoch, self.epochs = int(e.get("epoch") or 1), int(e.get("epochs") or 1)
            self.step, self.steps = int(e.get("step") or 0), int(e.get("steps_per_epoch") or 1)
            position = (self.epoch - 1) + self.step / max(self.steps, 1)
            if e.get("loss") is not None:
                self._add_loss_point(position, float(e["loss"]))
            self.stage, self.stage_text = "train", "Training"
            self.fraction = min(position / max(self.epochs, 1), 1.0)
            return False
        if phase == "validate":
            self.stage, self.stage_text = "validate", "Validating"
            self.epoch = int(e.get("epoch") or self.epoch)
            return False
        if phase == "epoch":
            self.epoch, self.epochs = int(e.get("epoch") or 1), int(e.get("epochs") or 1)
            self.step, self.steps = int(e.get("step") or 0), int(e.get("steps_per_epoch") or 0)
            record = EpochRecord(
                epoch=self.epoch,
                train_loss=e.get("loss"),
                val_loss=e.get("val_loss"),
                val_mean_auroc=e.get("val_mean_auroc"),
                val_auroc=dict(e.get("val_auroc") or {}),
            )
            self.epochs_done = [r for r in self.epochs_done if r.epoch != self.epoch] + [record]
            self.stage, self.stage_text = "train", "Training"
            self.fraction = min(self.epoch / max(self.epochs, 1), 1.0)
            return True
        if phase == "done":
            self.stage, self.stage_text = "train", "Training finished"
            self.fraction, self.eta_s = 1.0, 0.0
        if e.get("message"):
            self.add_message(str(e["message"]))
            return True
        return phase == "done"

    def _add_loss_point(self, position: float, loss: float) -> None:
        if not math.isfinite(loss):
            return
        self.loss_history.append([round(position, 4), round(loss, 5)])
        if len(self.loss_history) > MAX_LOSS_POINTS:  # keep the whole run's shape: drop every other point
            self.loss_history = self.loss_history[::2]

    def continue_from(self, state: dict[str, Any], previous: JobProgress | None) -> None:
        """A resumed run starts with the curves of the epochs it continues from (`state`: the trainer's
        saved train state; `previous`: the progress of the job it continues)."""
        saved_epoch = int(state.get("epoch", 0))
        self.epochs_done = [
            EpochRecord(
                epoch=int(h["epoch"]),
                train_loss=h.get("train_loss"),
                val_loss=h.get("val_loss"),
                val_mean_auroc=h.get("val_mean_auroc"),
                val_auroc=dict(h.get("val_auroc") or {}),
            )
            for h in state.get("history") or []
            if int(h.get("epoch", 0)) <= saved_epoch
        ]
        points = previous.loss_history if previous is not None else []
        self.loss_history = [p for p in points if p[0] <= saved_epoch]
        self.resumed_after_epoch = saved_epoch


def _build(cls: type, values: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known and v is not None})
