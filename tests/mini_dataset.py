"""A small ChestX-ray14 folder made of chosen real sample images, so CLI tests predict a few dozen images.

A plain function, not a fixture: each test module wraps it in its own fixture. Images are symlinks to the
shared sample (never copies); Data_Entry and the split lists hold only the chosen rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

DATA_ENTRY = "Data_Entry_2017_v2020.csv"


def make_mini_dataset(
    root: Path, sample_dir: Path, *, test: Sequence[str] = (), train_val: Sequence[str] = ()
) -> Path:
    chosen = list(test) + list(train_val)
    (root / "images").mkdir(parents=True)
    for name in chosen:
        (root / "images" / name).symlink_to(sample_dir / "images" / name)
    entries = pd.read_csv(sample_dir / DATA_ENTRY)
    entries[entries["Image Index"].isin(set(chosen))].to_csv(root / DATA_ENTRY, index=False)
    (root / "test_list.txt").write_text("".join(f"{name}\n" for name in test))
    (root / "train_val_list.txt").write_text("".join(f"{name}\n" for name in train_val))
    return root
