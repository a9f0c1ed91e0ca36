"""Reading the official NIH ChestX-ray14 layout into tidy pandas tables.

The official download is a folder with `Data_Entry_2017*.csv` (one row per image), the images either
in `images/` or in `images_001/images` … `images_012/images`, `BBox_List_2017.csv`, the patient-wise
`train_val_list.txt` / `test_list.txt` and optionally Google's 2019 adjudicated labels. A partial copy
(the shared 555-image sample) is normal: images listed but absent are reported as a count, not an error.

Everything here is vectorised pandas plus one `os.scandir` per image folder, so the full 112,120-row
CSV loads in well under a couple of seconds.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from core.errors import UserError
from core.labels import FINDINGS, NO_FINDING, NUM_FINDINGS, parse_finding_labels

Progress = Callable[[int, int], None]

# How model cards and reports name the dataset (with the folder's name, never its absolute path).
DATASET_NAME = "ChestX-ray14"
DATA_ENTRY_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
BBOX_NAME = "BBox_List_2017.csv"
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
GOOGLE_LABELS_NAME = "google2019_nih-chest-xray-labels.csv"
GOOGLE_FINDINGS: tuple[str, ...] = ("Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass")

# BBox_List_2017.csv coordinates are in the space of the distributed 1024x1024 PNGs, NOT in the
# `OriginalImage[Width,Height]` space of Data_Entry (that is the pre-release DICOM size, e.g. 2048x2500).
BBOX_COORDINATE_SIZE = 1024
# BBox_List spells one finding differently from Data_Entry.
_BBOX_LABEL_ALIASES = {"Infiltrate": "Infiltration"}

# Data_Entry column -> our column. The size columns are optional (older copies may lack them).
_REQUIRED_COLUMNS = {
    "Image Index": "image_index",
    "Finding Labels": "finding_labels",
    "Follow-up #": "follow_up",
    "Patient ID": "patient_id",
    "Patient Age": "age",
    "Patient Gender": "sex",
    "View Position": "view",
}
_OPTIONAL_COLUMNS = {"OriginalImage[Width": "original_width", "Height]": "original_height"}
_IMAGE_DIR_PATTERN = re.compile(r"^images_\d{3}$")


class DatasetError(UserError, ValueError):
    """A folder cannot be read as ChestX-ray14 (one human sentence)."""


@dataclass
class ChestXray14:
    """One ChestX-ray14 folder, read.

    `entries` is indexed by image index (also kept as column `image_index`) and has one 0/1 int column
    per finding in `core.labels.FINDINGS` order. `boxes` holds each box in the 1024-px coordinate space
    of BBox_List (x, y, w, h) and scaled to the stored PNG's size (x_img, y_img, w_img, h_img).
    """

    root: Path
    entries: pd.DataFrame
    boxes: pd.DataFrame
    google_labels: pd.DataFrame | None
    image_dirs: list[Path]
    data_entry_name: str
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entries)

    def image_paths(self, image_indexes: Iterable[str] | None = None) -> dict[str, Path]:
        """image index -> PNG path, for the cache builder (images without a file are left out)."""
        paths = (
            self.entries["path"] if image_indexes is None else self.entries.loc[list(image_indexes), "path"]
        )
        return {index: Path(path) for index, path in paths.items() if isinstance(path, str)}

    def mark_unreadable(self, failures: dict[str, str]) -> None:
        """Drop images found unreadable later (e.g. by the cache builder) and record why.

        `failures` maps image index -> reason sentence.
        """
        failed = [index for index in failures if index in self.entries.index]
        if not failed:
            return
        self.entries = self.entries.drop(index=failed)
        self.boxes = self.boxes[~self.boxes["image_index"].isin(failed)].reset_index(drop=True)
        self.unreadable.extend(failed)
        self.problems.append(
            f"{len(failed):,} image file(s) could not be decoded and were dropped (e.g. {failed[0]}: "
            f"{failures[failed[0]]})."
        )


# ----------------------------------------------------------------------------------------------------
# Loading


def load_chestxray14(
    root: str | os.PathLike[str],
    *,
    blacklist: str | os.PathLike[str] | None = None,
    require_images: bool = True,
    progress: Progress | None = None,
) -> ChestXray14:
    """Read a ChestX-ray14 folder (official layout) into a `ChestXray14`.

    With `require_images` (the default) only images whose PNG is on disk are kept in `entries`; the
    others are counted in `problems` and listed in `missing`. `blacklist` is a text file of image
    indexes (one per line, `#` comments) or a CSV with an `Image Index`/`image_index` column; those
    images are removed and listed in `excluded`.
    """
    steps = 6
    tick = _ticker(progress, steps)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"The dataset folder {root} does not exist.")

    csv_path = next((root / name for name in DATA_ENTRY_NAMES if (root / name).is_file()), None)
    if csv_path is None:
        raise DatasetError(f"{root} is not a ChestX-ray14 folder: no {' or '.join(DATA_ENTRY_NAMES)} in it.")
    image_dirs = find_image_dirs(root)
    if not image_dirs:
        raise DatasetError(
            f"{root} has no image folder: expected images/ or images_001/images … images_012/images."
        )
    problems: list[str] = []

    entries = _read_data_entry(csv_path, problems)
    tick()

    files, duplicates = _scan_image_dirs(image_dirs)
    if duplicates:
        problems.append(
            f"{len(duplicates):,} image file(s) are present in more than one image folder; the first "
            f"copy is used (e.g. {duplicates[0]})."
        )
    entries["path"] = entries.index.map(files.get)
    tick()

    has_file = entries["path"].notna()
    missing = entries.index[~has_file].tolist()
    if missing:
        problems.append(
            f"{len(missing):,} images listed in {csv_path.name} are not in the folder (e.g. {missing[0]})."
        )
    unlisted = sorted(set(files).difference(entries.index.tolist()))
    if unlisted:
        problems.append(
            f"{len(unlisted):,} PNG file(s) in the image folders are not listed in {csv_path.name} "
            f"and are ignored (e.g. {unlisted[0]})."
        )
    if require_images:
        entries = entries[has_file]
        if entries.empty:
            raise DatasetError(
                f"None of the images listed in {csv_path.name} is in {', '.join(map(str, image_dirs))}."
            )

    excluded: list[str] = []
    if blacklist is not None:
        banned = read_image_list(blacklist)
        excluded = [index for index in entries.index.tolist() if index in banned]
        entries = entries.drop(index=excluded)
        problems.append(f"{len(excluded):,} image(s) excluded by the blacklist {Path(blacklist).name}.")
    tick()

    entries["split"] = _official_splits(root, entries.index, problems)
    tick()

    unreadable: list[str] = []
    boxes = _read_boxes(root, entries, unreadable, problems)
    tick()

    google_labels = _read_google_labels(root, entries.index, problems)
    tick()

    column_order = [
        "image_index",
        "patient_id",
        "follow_up",
        "age",
        "sex",
        "view",
        "original_width",
        "original_height",
        "path",
        "split",
        *FINDINGS,
    ]
    return ChestXray14(
        root=root,
        entries=entries[column_order],
        boxes=boxes,
        google_labels=google_labels,
        image_dirs=image_dirs,
        data_entry_name=csv_path.name,
        missing=missing,
        unreadable=unreadable,
        excluded=excluded,
        problems=problems,
    )


def find_image_dirs(root: Path) -> list[Path]:
    """The folders holding PNGs: `images/` and/or the official `images_NNN/images` (or `images_NNN/`)."""
    found: list[Path] = []
    if (root / "images").is_dir():
        found.append(root / "images")
    with os.scandir(root) as it:
        numbered = sorted(e.name for e in it if e.is_dir() and _IMAGE_DIR_PATTERN.match(e.name))
    for name in numbered:
        inner = root / name / "images"
        found.append(inner if inner.is_dir() else root / name)
    return found


def read_image_list(path: str | os.PathLike[str]) -> set[str]:
    """Image indexes from a text list (one per line, `#` comments) or a CSV with an image index column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"Cannot read the image list {path}: {exc.strerror or exc}.") from exc
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if lines and ("," in lines[0]):
        header = [h.strip() for h in lines[0].split(",")]
        for name in ("Image Index", "image_index"):
            if name in header:
                column = header.index(name)
                return {row.split(",")[column].strip() for row in lines[1:] if row.count(",") >= column}
        raise DatasetError(f"The CSV {path.name} has no 'Image Index' or 'image_index' column.")
    return {line.split()[0] for line in lines}


def read_labels_table(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, set[str]]:
    """A labels table CSV -> (image_index + 14 finding columns as 0/1, images marked for exclusion).

    Accepts `image_index` or `Image Index`; an optional `exclude` column (1/true/yes) marks images to
    leave out (e.g. rejected during label review).
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype={"image_index": str, "Image Index": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DatasetError(f"Cannot read the labels table {path.name}: {exc}.") from exc
    table.columns = [str(c).strip() for c in table.columns]
    if "image_index" not in table.columns and "Image Index" in table.columns:
        table = table.rename(columns={"Image Index": "image_index"})
    absent = [c for c in ("image_index", *FINDINGS) if c not in table.columns]
    if absent:
        raise DatasetError(f"The labels table {path.name} lacks the column(s) {', '.join(absent)}.")
    table["image_index"] = table["image_index"].astype(str).str.strip()
    values = table[list(FINDINGS)].apply(pd.to_numeric, errors="coerce")
    if values.isna().any().any() or not values.isin([0, 1]).all().all():
        raise DatasetError(f"The labels table {path.name} must hold only 0 or 1 in the finding columns.")
    table[list(FINDINGS)] = values.astype(np.int64)
    excluded: set[str] = set()
    if "exclude" in table.columns:
        flag = table["exclude"].astype(str).str.strip().str.lower().isin(["1", "1.0", "true", "yes", "y"])
        excluded = set(table.loc[flag, "image_index"])
    return table[["image_index", *FINDINGS]], excluded


def _ticker(progress: Progress | None, total: int) -> Callable[[], None]:
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    return tick


def _read_data_entry(csv_path: Path, problems: list[str]) -> pd.DataFrame:
    try:
        raw = pd.read_csv(csv_path, dtype={"Image Index": str, "Finding Labels": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DatasetError(f"Cannot read {csv_path.name}: {exc}.") from exc
    raw.columns = [str(c).strip() for c in raw.columns]
    absent = [c for c in _REQUIRED_COLUMNS if c not in raw.columns]
    if absent:
        raise DatasetError(f"{csv_path.name} lacks the column(s) {', '.join(repr(c) for c in absent)}.")

    entries = raw[list(_REQUIRED_COLUMNS)].rename(columns=_REQUIRED_COLUMNS)
    for source, target in _OPTIONAL_COLUMNS.items():
        entries[target] = (
            pd.to_numeric(raw[source], errors="coerce").astype("Int64") if source in raw else pd.NA
        )
    entries["image_index"] = entries["image_index"].str.strip()
    duplicated = entries["image_index"].duplicated()
    if duplicated.any():
        entries = entries[~duplicated]
    entries["patient_id"] = _as_int(entries["patient_id"], "Patient ID", csv_path)
    entries["follow_up"] = _as_int(entries["follow_up"], "Follow-up #", csv_path)
    # Older copies write ages as "058Y"; the v2020 file has plain integers.
    age = entries["age"]
    if not pd.api.types.is_numeric_dtype(age):
        age = age.astype(str).str.extract(r"(\d+)", expand=False)
    entries["age"] = pd.to_numeric(age, errors="coerce").astype("Int64")
    entries["sex"] = entries["sex"].astype(str).str.strip().str.upper()
    entries["view"] = entries["view"].astype(str).str.strip().str.upper()

    # Parse each distinct label string once with the project's parser, then broadcast (fast on 112k rows).
    label_text = entries["finding_labels"].fillna(NO_FINDING).astype(str)
    distinct = label_text.unique()
    one_hot = np.zeros((len(distinct), NUM_FINDINGS), dtype=np.int8)
    for row, text in enumerate(distinct):
        try:
            found = parse_finding_labels(text)
        except ValueError as exc:
            raise DatasetError(f"{csv_path.name}: {exc}") from exc
        one_hot[row, [FINDINGS.index(name) for name in found]] = 1
    codes = pd.Index(distinct).get_indexer(label_text)
    labels = pd.DataFrame(one_hot[codes].astype(np.int64), columns=list(FINDINGS), index=entries.index)
    entries = pd.concat([entries.drop(columns="finding_labels"), labels], axis=1)
    # Unnamed index: a column and an index level both called image_index make pandas refuse to group/merge.
    entries.index = pd.Index(entries["image_index"].to_numpy(), name=None)
    if duplicated.any():
        problems.append(f"{int(duplicated.sum()):,} duplicated row(s) in {csv_path.name} were ignored.")
    return entries


def _isin(values: pd.Index | pd.Series, members: set[str]) -> np.ndarray:
    # pandas' isin on Arrow-backed strings iterates element by element in Python; a set lookup is ~50x faster.
    return np.fromiter((value in members for value in values.tolist()), dtype=bool, count=len(values))


def _as_int(column: pd.Series, name: str, csv_path: Path) -> pd.Series:
    values = pd.to_numeric(column, errors="coerce")
    if values.isna().any():
        bad = column[values.isna()].iloc[0]
        raise DatasetError(f"{csv_path.name} has a non-numeric {name} ({bad!r}).")
    return values.astype(np.int64)


def _scan_image_dirs(image_dirs: Sequence[Path]) -> tuple[dict[str, str], list[str]]:
    """file name -> absolute path of every PNG, one os.scandir per folder."""
    files: dict[str, str] = {}
    duplicates: list[str] = []
    for folder in image_dirs:
        base = str(folder.resolve())
        with os.scandir(base) as it:
            for entry in it:
                name = entry.name
                if not name.lower().endswith(".png"):
                    continue
                if name in files:
                    duplicates.append(name)
                    continue
                files[name] = os.path.join(base, name)
    return files, duplicates


def _official_splits(root: Path, image_indexes: pd.Index, problems: list[str]) -> pd.Series:
    split = pd.Series(None, index=image_indexes, dtype=object)
    lists_found = 0
    for name, value in ((TRAIN_VAL_LIST, "train_val"), (TEST_LIST, "test")):
        path = root / name
        if not path.is_file():
            problems.append(f"{name} is missing, so no image is marked as official {value}.")
            continue
        lists_found += 1
        listed = set(path.read_text(encoding="utf-8").split())
        split[_isin(image_indexes, listed)] = value
    unsplit = int(split.isna().sum())
    if unsplit and lists_found == 2:
        problems.append(f"{unsplit:,} image(s) are in neither {TRAIN_VAL_LIST} nor {TEST_LIST}.")
    return split


def _read_boxes(
    root: Path, entries: pd.DataFrame, unreadable: list[str], problems: list[str]
) -> pd.DataFrame:
    columns = ["image_index", "label", "x", "y", "w", "h", "x_img", "y_img", "w_img", "h_img"]
    path = root / BBOX_NAME
    if not path.is_file():
        return pd.DataFrame(columns=columns)
    # Header is "Image Index,Finding Label,Bbox [x,y,w,h],,," — read positionally.
    raw = pd.read_csv(path, header=0, usecols=range(6), names=["image_index", "label", "x", "y", "w", "h"])
    raw["image_index"] = raw["image_index"].astype(str).str.strip()
    raw["label"] = raw["label"].astype(str).str.strip().replace(_BBOX_LABEL_ALIASES)
    boxes = raw[_isin(raw["image_index"], set(entries.index.tolist()))].reset_index(drop=True)
    for axis in ("x", "y", "w", "h"):
        boxes[axis] = boxes[axis].astype(float)

    # Scale to the stored PNG (the sample's copies are 512 px): only box images need a header read.
    stored_sizes: dict[str, tuple[float, float]] = {}
    for index in boxes["image_index"].unique():
        file = entries.at[index, "path"]
        if not isinstance(file, str):
            continue
        try:
            with Image.open(file) as image:
                stored_sizes[index] = (float(image.width), float(image.height))
        except (OSError, ValueError, Image.DecompressionBombError):
            unreadable.append(index)
    if unreadable:
        problems.append(
            f"{len(unreadable):,} image(s) with bounding boxes could not be opened (e.g. {unreadable[0]})."
        )
    width = boxes["image_index"].map(lambda i: stored_sizes.get(i, (np.nan, np.nan))[0]).astype(float)
    height = boxes["image_index"].map(lambda i: stored_sizes.get(i, (np.nan, np.nan))[1]).astype(float)
    sx, sy = width / BBOX_COORDINATE_SIZE, height / BBOX_COORDINATE_SIZE
    boxes["x_img"], boxes["w_img"] = boxes["x"] * sx, boxes["w"] * sx
    boxes["y_img"], boxes["h_img"] = boxes["y"] * sy, boxes["h"] * sy
    return boxes[columns]


def _read_google_labels(root: Path, image_indexes: pd.Index, problems: list[str]) -> pd.DataFrame | None:
    path = root / GOOGLE_LABELS_NAME
    if not path.is_file():
        return None
    raw = pd.read_csv(path, dtype=str)
    raw.columns = [str(c).strip() for c in raw.columns]
    needed = ["Image Index", *GOOGLE_FINDINGS, "Set Id"]
    absent = [c for c in needed if c not in raw.columns]
    if absent:
        problems.append(f"{path.name} lacks the column(s) {', '.join(absent)} and is ignored.")
        return None
    table = pd.DataFrame({"image_index": raw["Image Index"].str.strip()})
    for name in GOOGLE_FINDINGS:
        table[name] = (raw[name].str.strip().str.upper() == "YES").astype(np.int64)
    table["set_id"] = raw["Set Id"].str.strip()
    table = table[_isin(table["image_index"], set(image_indexes.tolist()))].drop_duplicates("image_index")
    return table.set_index(pd.Index(table["image_index"].to_numpy()))


# ----------------------------------------------------------------------------------------------------
# Summary


def summary(ds: ChestXray14) -> pd.DataFrame:
    """Per-finding image counts and percentages (like Table 1 of the ChestX-ray8 paper), with totals.

    Rows: the 14 findings, "No Finding", "Total images", "Patients". Columns: images, percent (of
    images), train_val, test (counts within each official split).
    """
    entries = ds.entries
    total = len(entries)
    findings = entries[list(FINDINGS)]
    no_finding = findings.sum(axis=1) == 0
    flags = pd.concat([findings.astype(bool), no_finding.rename(NO_FINDING)], axis=1)
    in_split = {name: (entries["split"] == name).to_numpy() for name in ("train_val", "test")}

    table = pd.DataFrame(
        {
            "images": flags.sum(axis=0).astype(np.int64),
            "train_val": flags[in_split["train_val"]].sum(axis=0).astype(np.int64),
            "test": flags[in_split["test"]].sum(axis=0).astype(np.int64),
        }
    )
    table.loc["Total images"] = [total, int(in_split["train_val"].sum()), int(in_split["test"].sum())]
    table.loc["Patients"] = [
        entries["patient_id"].nunique(),
        entries.loc[in_split["train_val"], "patient_id"].nunique(),
        entries.loc[in_split["test"], "patient_id"].nunique(),
    ]
    table["percent"] = (100.0 * table["images"] / total).round(2) if total else 0.0
    table.loc["Patients", "percent"] = np.nan
    table.index.name = "finding"
    return table[["images", "percent", "train_val", "test"]]


def format_summary(ds: ChestXray14) -> str:
    """The summary table as printable text, followed by the problems found while reading."""
    table = summary(ds)
    lines = [f"ChestX-ray14 at {ds.root} ({ds.data_entry_name})", ""]
    lines.append(f"{'finding':<20}{'images':>9}{'%':>8}{'train_val':>11}{'test':>8}")
    for name, row in table.iterrows():
        if name in ("Total images",):
            lines.append("-" * 56)
        percent = "" if pd.isna(row["percent"]) else f"{row['percent']:.2f}"
        lines.append(
            f"{name:<20}{int(row['images']):>9,}{percent:>8}{int(row['train_val']):>11,}{int(row['test']):>8,}"
        )
    views = ds.entries["view"].value_counts()
    lines.append("")
    lines.append("Views: " + ", ".join(f"{view} {count:,}" for view, count in views.items()))
    lines.append(f"Bounding boxes: {len(ds.boxes):,} on {ds.boxes['image_index'].nunique():,} image(s)")
    if ds.google_labels is not None:
        lines.append(f"Google 2019 adjudicated labels: {len(ds.google_labels):,} image(s)")
    if ds.problems:
        lines.append("")
        lines.extend(f"Note: {problem}" for problem in ds.problems)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Splits and labels


def split_patientwise(ds: ChestXray14, val_fraction: float = 0.1, seed: int = 0) -> dict[str, list[str]]:
    """train / val / test image indexes, patient-disjoint.

    test is the official test list. val is a random `val_fraction` of the *patients* of the rest
    (at least one patient whenever there are two or more), so no patient is in two splits. Images in
    neither official list join the train/val pool unless their patient is in test. Deterministic for
    a given seed; each list is sorted.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"The validation fraction must be in [0, 1), not {val_fraction}.")
    entries = ds.entries
    is_test = (entries["split"] == "test").to_numpy()
    test_patients = set(entries.loc[is_test, "patient_id"])
    pool = entries[~is_test & ~entries["patient_id"].isin(test_patients).to_numpy()]

    patients = np.sort(pool["patient_id"].unique())
    n_val = 0
    if len(patients) >= 2 and val_fraction > 0:
        n_val = min(len(patients) - 1, max(1, round(val_fraction * len(patients))))
    rng = np.random.default_rng(seed)
    val_patients = set(rng.permutation(patients)[:n_val].tolist())
    in_val = pool["patient_id"].isin(val_patients).to_numpy()
    return {
        "train": sorted(pool.index[~in_val]),
        "val": sorted(pool.index[in_val]),
        "test": sorted(entries.index[is_test]),
    }


def apply_exclusions(image_indexes: Sequence[str], exclude: Iterable[str] | None) -> list[str]:
    """`image_indexes` without the excluded ones (order kept)."""
    if not exclude:
        return list(image_indexes)
    banned = set(exclude)
    return [index for index in image_indexes if index not in banned]


def labels_matrix(
    ds: ChestXray14, image_indexes: Sequence[str], label_table: pd.DataFrame | None = None
) -> np.ndarray:
    """float32 [N, 14] targets in FINDINGS order.

    NLP labels from `ds.entries`, overridden per image by `label_table` (columns `image_index` + the 14
    finding columns, e.g. clinician-corrected labels) where it has the image.
    """
    indexes = pd.Index(list(image_indexes))
    unknown = indexes.difference(ds.entries.index)
    if len(unknown):
        raise DatasetError(f"{len(unknown):,} image(s) are not in the dataset (e.g. {unknown[0]}).")
    labels = ds.entries.loc[indexes, list(FINDINGS)].to_numpy(dtype=np.float32, copy=True)
    if label_table is not None and len(label_table):
        absent = [c for c in ("image_index", *FINDINGS) if c not in label_table.columns]
        if absent:
            raise DatasetError(f"The label table lacks the column(s) {', '.join(absent)}.")
        table = label_table.drop_duplicates("image_index", keep="last").set_index("image_index")
        rows = table.index.get_indexer(indexes)
        found = rows >= 0
        labels[found] = table[list(FINDINGS)].to_numpy(dtype=np.float32)[rows[found]]
    return labels
