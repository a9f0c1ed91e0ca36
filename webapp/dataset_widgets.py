"""Widgets of the Fine-tune page about the imported dataset: its label status and the import form."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import streamlit as st

from core.paths import SHARED_SAMPLE_DIR
from db.label_status import LabelStatus
from webapp.admin_data import finding_frame
from webapp.formatting import plain, when_text

IMPORT_STAGES = (
    "Reading the metadata",
    "Fingerprinting images",
    "Adding images",
    "Adding labels",
    "Adding boxes",
)


def label_status_summary(status: LabelStatus) -> None:
    """Images, reviews, adjudications, exclusions and changed labels, with the per-finding counts."""
    cols = st.columns(5)
    splits = ", ".join(f"{split}: {count:,}" for split, count in status.by_split.items())
    cols[0].metric("Images", f"{status.n_images:,}", help=f"By split: {splits}.")
    cols[1].metric("Reviewed images", f"{status.n_reviewed:,}", help="Images with at least one review.")
    cols[2].metric("Adjudicated", f"{status.n_adjudicated:,}")
    cols[3].metric("Excluded", f"{status.n_excluded:,}", help="Left out of training by the reviewers.")
    if status.active_name:
        cols[4].metric(
            "Changed since active",
            f"{status.n_images_changed_since_active:,}",
            help=f"Images reviewed or adjudicated after {plain(status.active_name)} was registered "
            f"({when_text(status.active_created_at)}) whose label now differs from the NLP label; "
            f"{status.n_label_events_since_active:,} label saves since then.",
        )
    else:
        cols[4].metric("Labels changed by review", f"{status.n_changed:,}")
    with st.expander("Label counts per finding"):
        st.dataframe(finding_frame(status), hide_index=True, width="stretch", height=35 * 15 + 3)
        st.caption(
            "Effective label = adjudication, else the reviewers' consensus, else the NLP label; excluded "
            "images are not counted. “Changed” counts reviewed images whose effective label differs from the "
            "NLP label on that finding."
        )


def import_inputs(expanded: bool) -> tuple[Path, bool] | None:
    """The import form; (folder, fingerprint the files?) once Import is pressed on an existing folder."""
    with st.expander(
        "Import a ChestX-ray14 folder", expanded=expanded, icon=":material/drive_folder_upload:"
    ):
        st.caption(
            "The official layout: Data_Entry_2017(_v2020).csv, images/ (or images_001 … images_012), "
            "train_val_list.txt, test_list.txt and optionally BBox_List_2017.csv. Only metadata and labels "
            "are read (seconds even for all 112,120 images); importing again adds only what is new."
        )
        default = str(SHARED_SAMPLE_DIR) if SHARED_SAMPLE_DIR.is_dir() else ""
        folder = st.text_input("Dataset folder", value=default, key="import_folder").strip()
        hash_images = st.checkbox(
            "Also fingerprint the image files (sha256)",
            key="import_hash",
            help="Lets an upload that is byte-identical to a dataset image be recognised as it. Reads every "
            "file: slow for the full dataset.",
        )
        if not st.button("Import", icon=":material/download:", key="import_button"):
            return None
        if not folder or not Path(folder).expanduser().is_dir():
            st.error(f"The folder {plain(repr(folder))} does not exist on the server.")
            return None
        return Path(folder).expanduser(), hash_images


def import_progress_bar() -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """(progress callback of db.importer, remove the bar)."""
    bar = st.progress(0.0, text=f"{IMPORT_STAGES[0]}…")

    def progress(done: int, total: int) -> None:
        text = f"{IMPORT_STAGES[min(done, len(IMPORT_STAGES) - 1)]}…" if done < total else "Done"
        bar.progress(done / max(total, 1), text=text)

    return progress, bar.empty
