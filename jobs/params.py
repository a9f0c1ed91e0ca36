"""What each job kind is asked to do: the one typed shape of a job row's `params`.

A fine-tune's settings take exactly one shape between the Fine-tune form and the trainer: the form
builds a `FineTuneParams`, `jobs.queue.enqueue_fine_tune` stores `to_dict()` in the job row, the
fine-tune handler reads it back with `from_dict()` and hands `settings` (a `TrainSettings`) to the
trainer's `TrainConfig` as it is. Defaults and bounds live in `TrainSettings`' field metadata only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.training import TrainSettings

JOB_FINE_TUNE = "fine_tune"
JOB_EVALUATE = "evaluate"
JOB_PREDICT = "predict"
JOB_KIND_TEXT = {
    JOB_FINE_TUNE: "Fine-tune",
    JOB_PREDICT: "Store predictions",
    JOB_EVALUATE: "Evaluate",
    "screen_ood": "Screen for suggested exclusions",
    "pacs_import": "Import from a PACS",
    "pacs_write_back": "Write results back to a PACS",
    "pacs_label_write_back": "Write reader labels back to a PACS",
    "pacs_screen": "Screen a PACS for new studies",
}

LABEL_SOURCES: dict[str, str] = {
    "nlp": "Dataset labels (NLP-mined)",
    "effective": "Reviewed labels where available, NLP elsewhere",
}
# What a fine-tune on reviewed labels does with an image whose readers disagree and that no admin has
# adjudicated yet (jobs.labels applies it to db.export's trainer table).
DISPUTED_POLICIES: dict[str, str] = {
    "exclude": "Leave disputed images out",
    "majority": "Use the readers' majority (a tie counts as absent)",
    "nlp": "Use the NLP label on the disputed findings",
    "uncertain": "Treat the disputed findings as Uncertain",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class JobParamsError(UserError, ValueError):
    """A job cannot be queued or run with the parameters it was given (one human sentence)."""


def _known_only(values: Any, cls: type, what: str) -> dict[str, Any]:
    if not isinstance(values, Mapping):
        raise JobParamsError(
            f"The parameters of a {what} job must be a mapping, not {type(values).__name__}."
        )
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise JobParamsError(f"Unknown {what} parameter(s): {', '.join(unknown)}.")
    return dict(values)


def _optional_id(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise JobParamsError(f"The {what} must be a whole number, not {value!r}.")
    return value


def _optional_path(value: Any, what: str) -> Path | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str | Path):
        raise JobParamsError(f"The {what} must be a folder path, not {value!r}.")
    return Path(value).expanduser()


def check_version_name(name: str) -> None:
    if not _NAME.match(name):
        raise JobParamsError(
            f"{name!r} is not a usable version name: use letters, digits, '.', '_' or '-' (at most 100)."
        )


@dataclass(frozen=True)
class FineTuneParams:
    """A fine-tune job. `name` "" and `data_dir` None are filled in when queued (a free name, the
    imported dataset's folder); a stored job always has both."""

    name: str = ""
    base_version_id: int | None = None  # None: from random weights
    data_dir: Path | None = None
    label_source: str = "nlp"  # a key of LABEL_SOURCES
    disputed_policy: str = "exclude"  # a key of DISPUTED_POLICIES (label_source "effective" only)
    resume: bool = False  # continue `name`'s saved epoch (a job queued by jobs.queue.resume_job)
    resumed_from: int | None = None  # the job continued
    settings: TrainSettings = field(default_factory=TrainSettings)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise JobParamsError(f"The version name must be text, not {self.name!r}.")
        name = self.name.strip()
        if name:
            check_version_name(name)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "base_version_id", _optional_id(self.base_version_id, "base version id"))
        object.__setattr__(self, "resumed_from", _optional_id(self.resumed_from, "resumed job id"))
        object.__setattr__(self, "data_dir", _optional_path(self.data_dir, "dataset folder"))
        if self.label_source not in LABEL_SOURCES:
            raise JobParamsError(
                f"Unknown label source {self.label_source!r}: use {' or '.join(LABEL_SOURCES)}."
            )
        if self.disputed_policy not in DISPUTED_POLICIES:
            raise JobParamsError(
                f"Unknown disputed-image policy {self.disputed_policy!r}: use {', '.join(DISPUTED_POLICIES)}."
            )
        if not isinstance(self.resume, bool):
            raise JobParamsError(f"'resume' must be true or false, not {self.resume!r}.")
        if isinstance(self.settings, Mapping):
            object.__setattr__(self, "settings", TrainSettings.from_dict(self.settings))
        elif not isinstance(self.settings, TrainSettings):
            raise JobParamsError(f"The training settings must be a mapping, not {self.settings!r}.")

    def to_dict(self) -> dict[str, Any]:
        """What the job row stores (JSON values)."""
        return {
            "name": self.name,
            "base_version_id": self.base_version_id,
            "data_dir": None if self.data_dir is None else str(self.data_dir),
            "label_source": self.label_source,
            "disputed_policy": self.disputed_policy,
            "resume": self.resume,
            "resumed_from": self.resumed_from,
            "settings": self.settings.to_dict(),
        }

    @classmethod
    def from_dict(cls, values: Any) -> FineTuneParams:
        """The params of a stored job, checked; a UserError with a sentence when they are not usable."""
        return cls(**_known_only(values, cls, "fine-tune"))


@dataclass(frozen=True)
class EvaluateParams:
    """Evaluate a registered version on a dataset's test and validation splits."""

    version_id: int
    data_dir: Path

    def __post_init__(self) -> None:
        if _optional_id(self.version_id, "version id") is None:
            raise JobParamsError("An evaluation needs the id of the version to evaluate.")
        data_dir = _optional_path(self.data_dir, "dataset folder")
        if data_dir is None:
            raise JobParamsError("An evaluation needs a dataset folder.")
        object.__setattr__(self, "data_dir", data_dir)

    def to_dict(self) -> dict[str, Any]:
        return {"version_id": self.version_id, "data_dir": str(self.data_dir)}

    @classmethod
    def from_dict(cls, values: Any) -> EvaluateParams:
        values = _known_only(values, cls, "evaluation")
        return cls(version_id=values.get("version_id"), data_dir=values.get("data_dir"))


@dataclass(frozen=True)
class PredictParams:
    """Store a version's probabilities for every imported image (None: the active version)."""

    version_id: int | None = None

    def __post_init__(self) -> None:
        _optional_id(self.version_id, "version id")

    def to_dict(self) -> dict[str, Any]:
        return {"version_id": self.version_id}

    @classmethod
    def from_dict(cls, values: Any) -> PredictParams:
        return cls(**_known_only(values, cls, "prediction"))
