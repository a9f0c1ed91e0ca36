"""Training CheXNet on a ChestX-ray14 folder (see `loop` for the recipe). The public names live here."""

from core.training.loop import *  # noqa: F403  (split into focused modules below)
from core.training.loop import (  # noqa: F401
    BEST_WEIGHTS_FILE,
    DEFAULT_FINETUNE_LR,
    DEFAULT_LR,
    INITS,
    STATE_FILE,
    TrainConfig,
    TrainData,
    TrainingCancelled,
    TrainingError,
    TrainProgress,
    bench_training,
    config_dict,
    default_cache_folder,
    iterate_batches,
    load_train_state,
    optimization_step,
    predict_logits,
    prepare_data,
    read_labels_table,
    resolve_device,
    train,
)
