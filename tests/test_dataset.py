"""core.data.dataset on the real NIH sample and on small ChestX-ray14-shaped folders built in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.data.cache import build_cache
from core.data.dataset import (
    DatasetError,
    apply_exclusions,
    format_summary,
    labels_matrix,
    load_chestxray14,
    read_labels_table,
    split_patientwise,
    summary,
)
from core.labels import FINDINGS, NO_FINDING

# Facts from the sample's README.md.
SAMPLE_CLASS_COUNTS = {
    "Infiltration": 112,
    "Atelectasis": 85,
    "Nodule": 84,
    "Effusion": 74,
    "Consolidation": 73,
    "Pleural_Thickening": 62,
    "Mass": 58,
    "Cardiomegaly": 52,
    "Fibrosis": 43,
    "Pneumothorax": 39,
    "Emphysema": 35,
    "Pneumonia": 28,
    "Hernia": 18,
    "Edema": 15,
}
SAMPLE_TEST_IMAGES = ["00001369_000.png", "00009745_000.png", "00013911_000.png", "00015649_000.png"]

DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)


@pytest.fixture(scope="module")
def sample(sample_dir: Path):
    return load_chestxray14(sample_dir)


# ------------------------------------------------------------------------------------------- the sample


def test_sample_entries_match_the_readme(sample) -> None:
    entries = sample.entries
    assert len(entries) == 555
    assert entries.index.is_unique and (entries.index == entries["image_index"]).all()
    assert (entries["split"] == "train_val").sum() == 551
    assert (entries["split"] == "test").sum() == 4
    assert sorted(entries.index[entries["split"] == "test"]) == SAMPLE_TEST_IMAGES
    assert entries.loc[entries["split"] == "train_val", "patient_id"].nunique() == 551
    for finding, count in SAMPLE_CLASS_COUNTS.items():
        assert entries[finding].sum() == count, finding
    assert (entries[list(FINDINGS)].sum(axis=1) == 0).sum() == 92  # No Finding
    assert entries["view"].value_counts().to_dict() == {"PA": 463, "AP": 92}
    assert list(entries.columns[-14:]) == list(FINDINGS)
    assert entries["patient_id"].dtype == np.int64
    assert set(entries[list(FINDINGS)].dtypes) == {np.dtype(np.int64)}


def test_sample_rows_are_parsed_from_data_entry(sample) -> None:
    row = sample.entries.loc["00000001_000.png"]
    assert (row["patient_id"], row["follow_up"], row["age"], row["sex"], row["view"]) == (1, 0, 57, "M", "PA")
    assert (row["original_width"], row["original_height"]) == (2682, 2749)
    assert row["Cardiomegaly"] == 1 and row[list(FINDINGS)].sum() == 1
    assert Path(row["path"]).is_absolute() and Path(row["path"]).is_file()
    multi = sample.entries.loc["00013911_000.png"]
    assert {f for f in FINDINGS if multi[f]} == {"Effusion", "Mass", "Nodule", "Pleural_Thickening"}


def test_sample_missing_images_are_one_counted_problem(sample) -> None:
    assert len(sample.missing) == 112_120 - 555
    assert "00000001_001.png" in sample.missing
    missing_sentences = [p for p in sample.problems if "not in the folder" in p]
    assert len(missing_sentences) == 1 and "111,565" in missing_sentences[0]
    assert sample.unreadable == [] and sample.excluded == []


def test_sample_boxes_are_scaled_to_the_512_px_copies(sample) -> None:
    boxes = sample.boxes
    assert sorted(boxes["image_index"]) == SAMPLE_TEST_IMAGES
    for axis in "xywh":
        np.testing.assert_allclose(boxes[f"{axis}_img"], boxes[axis] * 0.5)
    row = boxes[boxes["image_index"] == "00015649_000.png"].iloc[0]
    assert row["label"] == "Mass"
    assert row["x"] == pytest.approx(641.489947089947) and row["x_img"] == pytest.approx(320.7449735)


def test_sample_google_labels(sample) -> None:
    google = sample.google_labels
    assert google is not None and len(google) > 0
    assert list(google.columns) == [
        "image_index",
        "Fracture",
        "Pneumothorax",
        "Airspace opacity",
        "Nodule or mass",
        "set_id",
    ]
    assert set(google["set_id"]) <= {"val", "test"}
    assert google.index.isin(sample.entries.index).all()
    assert google.loc["00001369_000.png", ["Fracture", "Pneumothorax"]].tolist() == [0, 0]


def test_full_csv_without_requiring_images(sample_dir: Path) -> None:
    ds = load_chestxray14(sample_dir, require_images=False)
    assert len(ds.entries) == 112_120
    assert ds.entries["path"].notna().sum() == 555
    assert len(ds.boxes) == 984 and ds.boxes["x_img"].notna().sum() == 4
    assert set(ds.boxes["label"]) <= set(FINDINGS)  # BBox_List's "Infiltrate" is renamed
    assert (ds.entries["split"] == "test").sum() == 25_596
    assert len(ds.google_labels) == 4_376


def test_summary_table(sample) -> None:
    table = summary(sample)
    assert table.loc["Hernia", "images"] == 18
    assert table.loc["Infiltration", "percent"] == pytest.approx(100 * 112 / 555, abs=0.01)
    assert table.loc[NO_FINDING, "images"] == 92
    assert table.loc["Total images"].tolist()[:1] == [555]
    assert (table.loc["Total images", "train_val"], table.loc["Total images", "test"]) == (551, 4)
    assert table.loc["Patients", "train_val"] == 551
    text = format_summary(sample)
    assert "Hernia" in text and "111,565" in text and "PA 463" in text


def test_progress_is_reported(sample_dir: Path) -> None:
    calls: list[tuple[int, int]] = []
    load_chestxray14(sample_dir, progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1][0] == calls[-1][1]


# ------------------------------------------------------------------------------------------- splits


def test_patientwise_split_on_the_sample(sample) -> None:
    splits = split_patientwise(sample, val_fraction=0.1, seed=0)
    assert splits["test"] == SAMPLE_TEST_IMAGES
    assert len(splits["train"]) + len(splits["val"]) == 551
    assert len(splits["val"]) == 55
    patient = sample.entries["patient_id"]
    groups = [set(patient[splits[name]]) for name in ("train", "val", "test")]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    assert split_patientwise(sample, seed=0) == splits
    assert split_patientwise(sample, seed=1)["val"] != splits["val"]


def _synthetic_dataset(tmp_path: Path, patients: dict[int, int], test_patients: set[int] = frozenset()):
    rows = []
    for patient, count in patients.items():
        for follow_up in range(count):
            rows.append((f"{patient:08d}_{follow_up:03d}.png", "No Finding", follow_up, patient))
    return _make_folder(tmp_path, rows, test={r[0] for r in rows if r[3] in test_patients})


def test_patientwise_split_keeps_each_patient_whole(tmp_path: Path) -> None:
    # 30 patients with 1..6 images each, 5 of them in the official test list.
    patients = {p: 1 + p % 6 for p in range(1, 31)}
    ds = load_chestxray14(_synthetic_dataset(tmp_path, patients, test_patients={2, 4, 6, 8, 10}))
    splits = split_patientwise(ds, val_fraction=0.2, seed=3)
    patient = ds.entries["patient_id"]
    by_split = {name: set(patient[images]) for name, images in splits.items()}
    assert by_split["test"] == {2, 4, 6, 8, 10}
    assert len(by_split["val"]) == 5  # 20 % of the 25 train_val patients
    assert not by_split["train"] & by_split["val"]
    assert not (by_split["train"] | by_split["val"]) & by_split["test"]
    # Every image of a patient lands in the same split.
    assert sum(len(v) for v in splits.values()) == len(ds.entries)
    for images in splits.values():
        assert len(images) == (patient.loc[patient.isin(set(patient[images]))]).size


def test_patientwise_split_of_a_tiny_dataset(tmp_path: Path) -> None:
    ds = load_chestxray14(_synthetic_dataset(tmp_path, {1: 3, 2: 1}))
    splits = split_patientwise(ds, val_fraction=0.1)
    assert len(splits["val"]) >= 1 and len(splits["train"]) >= 1
    one = load_chestxray14(_synthetic_dataset(tmp_path / "one", {7: 2}))
    assert split_patientwise(one)["val"] == [] and len(split_patientwise(one)["train"]) == 2
    with pytest.raises(DatasetError):
        split_patientwise(ds, val_fraction=1.5)


# ------------------------------------------------------------------------------------------- labels


def test_labels_matrix_nlp_and_corrected_labels(sample) -> None:
    images = ["00000001_000.png", "00013911_000.png", "00015649_000.png"]
    nlp = labels_matrix(sample, images)
    assert nlp.dtype == np.float32 and nlp.shape == (3, 14)
    assert nlp[0].tolist() == [1.0 if f == "Cardiomegaly" else 0.0 for f in FINDINGS]

    corrected = pd.DataFrame([{"image_index": "00013911_000.png", **{f: 0 for f in FINDINGS}, "Hernia": 1}])
    merged = labels_matrix(sample, images, label_table=corrected)
    assert merged[1].tolist() == [1.0 if f == "Hernia" else 0.0 for f in FINDINGS]
    np.testing.assert_array_equal(merged[[0, 2]], nlp[[0, 2]])  # not in the table: NLP labels

    with pytest.raises(DatasetError, match="not in the dataset"):
        labels_matrix(sample, ["nope.png"])
    with pytest.raises(DatasetError, match="Hernia"):
        labels_matrix(sample, images, label_table=corrected.drop(columns="Hernia"))


def test_apply_exclusions_keeps_order() -> None:
    assert apply_exclusions(["c", "a", "b", "d"], {"a", "d"}) == ["c", "b"]
    assert apply_exclusions(["c", "a"], None) == ["c", "a"]


# ------------------------------------------------------------------------------------------- folders


def _png(path: Path, size: int = 64, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(path)


def _make_folder(
    root: Path,
    rows: list[tuple[str, str, int, int]],
    *,
    on_disk: set[str] | None = None,
    test: set[str] = frozenset(),
    image_dir: str = "images",
    header: str = DATA_ENTRY_HEADER,
    png_size: int = 64,
) -> Path:
    """A ChestX-ray14-shaped folder: Data_Entry CSV, split lists and tiny PNGs."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [header]
    for name, labels, follow_up, patient in rows:
        lines.append(f"{name},{labels},{follow_up},{patient},45,F,PA,2048,2048,0.14,0.14")
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    names = [r[0] for r in rows]
    (root / "train_val_list.txt").write_text("\n".join(n for n in names if n not in test) + "\n")
    (root / "test_list.txt").write_text("\n".join(n for n in names if n in test) + "\n")
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    for name in names if on_disk is None else on_disk:
        _png(root / image_dir / name, png_size)
    return root


ROWS = [
    ("00000001_000.png", "Cardiomegaly", 0, 1),
    ("00000001_001.png", "Effusion|Mass", 1, 1),
    ("00000002_000.png", "No Finding", 0, 2),
    ("00000003_000.png", "Infiltration", 0, 3),
]


def test_not_a_dataset_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_chestxray14(tmp_path / "nowhere")
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="Data_Entry_2017"):
        load_chestxray14(tmp_path)


def test_csv_missing_a_column(tmp_path: Path) -> None:
    header = DATA_ENTRY_HEADER.replace("Patient ID,", "")
    root = tmp_path / "ds"
    root.mkdir()
    lines = [header, "00000001_000.png,Cardiomegaly,0,45,F,PA,2048,2048,0.14,0.14"]
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    _png(root / "images" / "00000001_000.png")
    with pytest.raises(DatasetError, match="'Patient ID'") as error:
        load_chestxray14(root)
    assert "\n" not in str(error.value)


def test_no_image_folder(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "ds", ROWS, on_disk=set())
    (root / "images").rmdir()
    with pytest.raises(DatasetError, match="no image folder"):
        load_chestxray14(root)


def test_unknown_finding_label(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "ds", [("00000001_000.png", "Cardiomegaly|Unicorn", 0, 1)])
    with pytest.raises(DatasetError, match="Unicorn"):
        load_chestxray14(root)


def test_listed_images_that_do_not_exist(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "ds", ROWS, on_disk={"00000001_000.png", "00000003_000.png"})
    _png(root / "images" / "99999999_000.png")  # on disk but not listed
    ds = load_chestxray14(root)
    assert sorted(ds.entries.index) == ["00000001_000.png", "00000003_000.png"]
    assert sorted(ds.missing) == ["00000001_001.png", "00000002_000.png"]
    assert any(
        p.startswith("2 images listed in Data_Entry_2017_v2020.csv are not in the folder")
        for p in ds.problems
    )
    assert any("1 PNG file(s)" in p and "99999999_000.png" in p for p in ds.problems)

    everything = load_chestxray14(root, require_images=False)
    assert len(everything.entries) == 4 and everything.entries["path"].isna().sum() == 2

    empty = _make_folder(tmp_path / "empty", ROWS, on_disk=set())
    with pytest.raises(DatasetError, match="None of the images"):
        load_chestxray14(empty)


def test_official_multi_folder_layout(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "ds", ROWS, on_disk=set())
    _png(root / "images_001" / "images" / "00000001_000.png")
    _png(root / "images_001" / "images" / "00000001_001.png")
    _png(root / "images_002" / "images" / "00000002_000.png")
    _png(root / "images_012" / "images" / "00000003_000.png")
    (root / "images").rmdir()
    ds = load_chestxray14(root)
    assert len(ds.entries) == 4 and ds.missing == []
    assert (
        Path(ds.entries.at["00000003_000.png", "path"]).parent == (root / "images_012" / "images").resolve()
    )
    assert [p.parent.name for p in ds.image_dirs] == ["images_001", "images_002", "images_012"]


def test_blacklist_excludes_images(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "ds", ROWS)
    blacklist = tmp_path / "blacklist.txt"
    blacklist.write_text("# known bad films\n00000002_000.png\n00000001_001.png  # rotated\nnot_here.png\n")
    ds = load_chestxray14(root, blacklist=blacklist)
    assert sorted(ds.excluded) == ["00000001_001.png", "00000002_000.png"]
    assert "00000002_000.png" not in ds.entries.index and len(ds.entries) == 2
    assert any("excluded by the blacklist" in p for p in ds.problems)

    with pytest.raises(DatasetError, match="Cannot read the image list"):
        load_chestxray14(root, blacklist=tmp_path / "no-such-list.txt")

    as_csv = tmp_path / "blacklist.csv"
    as_csv.write_text("image_index,reason\n00000003_000.png,lateral\n")
    assert load_chestxray14(root, blacklist=as_csv).excluded == ["00000003_000.png"]


def test_corrupted_png_is_reported_by_the_cache_not_a_crash(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "ds", ROWS)
    (root / "images" / "00000002_000.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    ds = load_chestxray14(root)  # reading the tables does not decode images
    assert len(ds.entries) == 4

    cache = build_cache(ds.image_paths(), tmp_path / "cache")
    assert len(cache) == 3 and "00000002_000.png" not in cache
    assert list(cache.report.failed) == ["00000002_000.png"]
    assert "00000002_000.png" in cache.report.problems[0]

    ds.mark_unreadable(cache.report.failed)
    assert ds.unreadable == ["00000002_000.png"] and len(ds.entries) == 3
    assert any("could not be decoded" in p for p in ds.problems)


def test_boxes_use_the_bbox_coordinate_space_and_alias(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "ds", ROWS, png_size=256)  # stored at 256 px: scale 0.25
    (root / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00000003_000.png,Infiltrate,100.0,200.0,40.0,80.0,,,\n"
        "00000001_000.png,Cardiomegaly,400,400,300,200,,,\n"
        "77777777_000.png,Mass,1,2,3,4,,,\n"
    )
    ds = load_chestxray14(root)
    boxes = ds.boxes.set_index("image_index")
    assert len(boxes) == 2  # the box of an image that is not in the dataset is dropped
    assert boxes.loc["00000003_000.png", "label"] == "Infiltration"
    assert boxes.loc["00000003_000.png", ["x_img", "y_img", "w_img", "h_img"]].tolist() == [25, 50, 10, 20]


def test_old_data_entry_name_and_age_format(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "ds", ROWS[:1])
    csv = root / "Data_Entry_2017_v2020.csv"
    text = csv.read_text().replace(",45,F,", ",058Y,F,")
    csv.unlink()
    (root / "Data_Entry_2017.csv").write_text(text)
    ds = load_chestxray14(root)
    assert ds.data_entry_name == "Data_Entry_2017.csv"
    assert ds.entries["age"].tolist() == [58]


def test_missing_split_lists_leave_images_unsplit_but_usable(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "ds", ROWS)
    (root / "test_list.txt").unlink()
    (root / "train_val_list.txt").unlink()
    ds = load_chestxray14(root)
    assert ds.entries["split"].isna().all()
    assert sum("is missing" in p for p in ds.problems) == 2
    splits = split_patientwise(ds, val_fraction=0.34)
    assert splits["test"] == [] and len(splits["train"]) + len(splits["val"]) == 4 and splits["val"]


def test_labels_table_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(
        "Image Index," + ",".join(FINDINGS) + ",exclude\n" + "a.png," + ",".join(["0"] * 13) + ",1,yes\n"
    )
    table, excluded = read_labels_table(path)
    assert list(table["image_index"]) == ["a.png"] and table["Hernia"].tolist() == [1]
    assert excluded == {"a.png"}
    path.write_text("image_index," + ",".join(FINDINGS) + "\n" + "a.png," + ",".join(["0.5"] * 14) + "\n")
    with pytest.raises(DatasetError, match="only 0 or 1"):
        read_labels_table(path)
