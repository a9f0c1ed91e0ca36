"""Where jobs find and keep files: the imported dataset's folder and each run's own folder."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.paths import models_dir
from db.models import Image
from jobs.params import JobParamsError

DATA_ENTRY_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
RUNS_FOLDER = ".runs"  # under models_dir(): per-run label tables, kept for provenance and resumption


def run_folder(name: str) -> Path:
    """Files of one run that outlive its work folder (the labels table it trained on, torchrun logs)."""
    path = models_dir() / RUNS_FOLDER / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_dataset_folder(path: str | Path) -> bool:
    folder = Path(path).expanduser()
    return folder.is_dir() and any((folder / name).is_file() for name in DATA_ENTRY_NAMES)


def require_dataset_folder(path: str | Path | None) -> Path:
    if path is None or not is_dataset_folder(path):
        raise JobParamsError(
            f"The dataset folder {str(path or '')!r} is not a ChestX-ray14 folder (no Data_Entry CSV)."
        )
    return Path(path).expanduser()


def dataset_root(session: Session) -> Path | None:
    """The ChestX-ray14 folder the imported images come from (the folder holding Data_Entry), if any."""
    path = session.scalar(
        select(Image.path)
        .where(Image.source == "dataset", Image.path.is_not(None))
        .order_by(Image.id)
        .limit(1)
    )
    if not path:
        return None
    for parent in list(Path(path).parents)[:4]:  # images/x.png or images_001/images/x.png
        if is_dataset_folder(parent):
            return parent
    return None
