"""Training CheXNet on a ChestX-ray14 folder. The public names live here; the modules each do one thing:

- `config`: what a run is asked to do (`TrainSettings`, `TrainConfig`), its progress events, its errors;
- `data`: the split, labels, exclusions, the image cache and the batches;
- `step`: the initial model, the loss, one optimisation step, validation logits;
- `checkpoints`: the per-epoch saved state that `resume` continues from;
- `card`: the model folder and card a run writes;
- `loop`: `train()`, one function per epoch and one for validation;
- `flags`: the `python -m core train` flags built from the settings.

Each name is imported from its module on first use (PEP 562), so that reading the settings contract
(a CLI's --help, the Fine-tune form) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "BEST_WEIGHTS_FILE",
    "DEFAULT_FINETUNE_LR",
    "DEFAULT_LR",
    "INITS",
    "STATE_FILE",
    "ProgressCallback",
    "SettingsError",
    "TrainConfig",
    "TrainData",
    "TrainProgress",
    "TrainSettings",
    "TrainingCancelled",
    "TrainingError",
    "iterate_batches",
    "load_train_state",
    "optimization_step",
    "predict_logits",
    "prepare_data",
    "train",
]
# Where the names of __all__ are defined, lightest module first (config imports neither torch nor numpy).
_MODULES = ("config", "data", "step", "checkpoints", "loop")

if TYPE_CHECKING:
    from core.training.checkpoints import load_train_state
    from core.training.config import (
        BEST_WEIGHTS_FILE,
        DEFAULT_FINETUNE_LR,
        DEFAULT_LR,
        INITS,
        STATE_FILE,
        ProgressCallback,
        SettingsError,
        TrainConfig,
        TrainingCancelled,
        TrainingError,
        TrainProgress,
        TrainSettings,
    )
    from core.training.data import TrainData, iterate_batches, prepare_data
    from core.training.loop import train
    from core.training.step import optimization_step, predict_logits


def __getattr__(name: str) -> Any:
    if name in __all__:
        for module_name in _MODULES:
            module = importlib.import_module(f"core.training.{module_name}")
            if name in vars(module):
                globals()[name] = value = vars(module)[name]  # the next access is a plain attribute
                return value
    raise AttributeError(f"module 'core.training' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
