"""Fine-tune (admins): dataset and label status, dataset import, fine-tune jobs and their live progress.

Nothing trains here: the page queues jobs in the database and the worker process (`python -m db.worker`,
started by `make run`) runs them; the job panel re-reads their progress every two seconds.
"""

from __future__ import annotations

import streamlit as st

from webapp.auth import require_role

user = require_role("admin")

from pathlib import Path  # noqa: E402

from core.paths import SHARED_SAMPLE_DIR  # noqa: E402
from db import training_service as service  # noqa: E402
from db.errors import DbUserError  # noqa: E402
from db.jobs import request_cancel  # noqa: E402
from db.models import User  # noqa: E402
from db.registry import get_active_version  # noqa: E402
from db.worker_status import read_worker_statuses  # noqa: E402
from webapp import admin_data  # noqa: E402
from webapp.admin_data import JobInfo, duration_text, number_text  # noqa: E402
from webapp.database import engine_or_stop, session  # noqa: E402
from webapp.model_charts import PLOTLY_CONFIG, loss_curve, val_auroc_curve  # noqa: E402

STATUS_BADGES = {
    "queued": ":gray-badge[:material/schedule: queued]",
    "running": ":blue-badge[:material/sync: running]",
    "succeeded": ":green-badge[:material/check_circle: succeeded]",
    "failed": ":red-badge[:material/error: failed]",
    "cancelled": ":orange-badge[:material/cancel: cancelled]",
    "interrupted": ":violet-badge[:material/pause_circle: interrupted]",
}
state = st.session_state
engine_or_stop()

st.title("Fine-tune")
st.caption(
    "Retrain CheXNet on the corrected labels. Jobs run in the background training worker, one at a time; "
    "each finished job becomes a new model version on the **Models & ROC** page (nothing is promoted "
    "automatically)."
)


def flash(kind: str, text: str) -> None:
    """A message that survives the rerun that follows a button."""
    state["admin_flash"] = (kind, text)


def show_flash() -> None:
    kind, text = state.pop("admin_flash", (None, None))
    if kind == "success":
        st.success(text, icon=":material/check_circle:")
    elif kind == "error":
        st.error(text, icon=":material/error:")


# ----------------------------------------------------------------------------------------------------
# Worker


def worker_panel() -> str | None:
    """Says which device the worker will train on; returns its device kind ("cuda"/"cpu") or None."""
    workers = read_worker_statuses()
    if not workers:
        st.warning(
            "No training worker is running, so queued jobs wait. Start one beside the app with "
            "`python -m db.worker` (`make run` does), or on a GPU machine that shares this database and "
            "CHEXNET_HOME (see the README).",
            icon=":material/power_off:",
        )
        return None
    for worker in workers:
        doing = f"running job #{worker['job_id']}" if worker.get("job_id") else "idle, waiting for jobs"
        text = f"**Training worker** `{worker.get('host')}` · {worker.get('device')} · {doing}"
        if worker.get("device_kind") == "cuda":
            st.success(text, icon=":material/memory:")
        else:
            st.warning(
                text + ". No GPU: fine-tuning DenseNet-121 on the CPU is slow (minutes per hundred images, "
                "days for the full dataset); use it for small samples or start a worker on a GPU machine.",
                icon=":material/speed:",
            )
    return workers[0].get("device_kind")


# ----------------------------------------------------------------------------------------------------
# Dataset and labels


def dataset_section() -> int:
    st.subheader("Dataset and labels")
    status = admin_data.dataset_status()
    if not status.n_images:
        st.info("No dataset is imported yet. Import a ChestX-ray14 folder below to fine-tune.")
        return 0
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
            help=f"Images reviewed or adjudicated after {status.active_name} was registered "
            f"({admin_data.when_text(status.active_created_at)}) whose label now differs from the NLP label; "
            f"{status.n_label_events_since_active:,} label saves since then.",
        )
    else:
        cols[4].metric("Labels changed by review", f"{status.n_changed:,}")
    with st.expander("Label counts per finding"):
        st.dataframe(admin_data.finding_frame(status), hide_index=True, width="stretch", height=35 * 15 + 3)
        st.caption(
            "Effective label = adjudication, else the reviewers' consensus, else the NLP label; excluded "
            "images are not counted. “Changed” counts reviewed images whose effective label differs from the "
            "NLP label on that finding."
        )
    return status.n_images


def import_section(n_images: int) -> None:
    with st.expander(
        "Import a ChestX-ray14 folder", expanded=n_images == 0, icon=":material/drive_folder_upload:"
    ):
        st.caption(
            "The official layout: Data_Entry_2017(_v2020).csv, images/ (or images_001 … images_012), "
            "train_val_list.txt, test_list.txt and optionally BBox_List_2017.csv. Only metadata and labels "
            "are read (seconds even for all 112,120 images); importing again adds only what is new."
        )
        default = str(SHARED_SAMPLE_DIR) if SHARED_SAMPLE_DIR.is_dir() else ""
        folder = st.text_input("Dataset folder", value=default, key="import_folder")
        hash_images = st.checkbox(
            "Also fingerprint the image files (sha256)",
            value=False,
            key="import_hash",
            help="Lets an upload that is byte-identical to a dataset image be recognised as it. Reads every "
            "file: slow for the full dataset.",
        )
        if st.button("Import", icon=":material/download:", key="import_button"):
            run_import(folder.strip(), hash_images)


def run_import(folder: str, hash_images: bool) -> None:
    from core.dataset import DatasetError
    from db.importer import import_chestxray14

    if not folder or not Path(folder).expanduser().is_dir():
        st.error(f"The folder {folder!r} does not exist on the server.")
        return
    bar = st.progress(0.0, text="Reading the metadata…")
    stages = [
        "Reading the metadata",
        "Fingerprinting images",
        "Adding images",
        "Adding labels",
        "Adding boxes",
    ]

    def progress(done: int, total: int) -> None:
        text = stages[min(done, len(stages) - 1)] if done < total else "Done"
        bar.progress(done / max(total, 1), text=f"{text}…" if done < total else text)

    try:
        stats = import_chestxray14(
            engine_or_stop(), Path(folder).expanduser(), hash_images=hash_images, progress=progress
        )
    except (DatasetError, DbUserError) as exc:
        bar.empty()
        st.error(str(exc))
        return
    text = f"Imported {folder}: {stats.summary()}"
    if stats.problems:
        text += f" Notes: {' '.join(stats.problems[:3])}"
    # The active version gets curves on the new data (the worker evaluates it in the background).
    with session() as db:
        active = get_active_version(db)
        job = service.ensure_evaluated(db, active.id, db.get(User, user.id)) if active else None
        if job is not None:
            text += f" Job #{job.id} evaluates {active.name} on it for the Models & ROC dashboards."
    flash("success", text)
    st.rerun()


# ----------------------------------------------------------------------------------------------------
# New fine-tune


def fine_tune_form(device_kind: str | None, n_images: int) -> None:
    st.subheader("Start a fine-tune")
    versions = admin_data.load_versions()
    with session(read_only=True) as db:
        data_dir = service.dataset_root(db)
        n_reviewed = service.n_reviewed_images(db)
    if not n_images or data_dir is None:
        st.info("Import a dataset first: fine-tuning reads its images from the imported folder.")
        return
    ordered = sorted(versions, key=lambda v: (not v.is_active, -v.id))
    choices = {v.id: v for v in ordered}
    with st.form("fine_tune", border=True):
        left, right = st.columns(2)
        with left:
            base_id = st.selectbox(
                "Start from version",
                list(choices) + [None],
                key="ft_base",
                format_func=lambda i: choices[i].title if i is not None else "random weights (from scratch)",
                help="Fine-tuning starts from this version's weights; it becomes the new version's parent.",
            )
            name = st.text_input(
                "New version name",
                key="ft_name",
                placeholder="automatic, e.g. chexnet-demo-ft1",
                help="Letters, digits, '.', '_' and '-'; becomes the model folder's name.",
            )
            label_source = st.radio(
                "Labels",
                list(service.LABEL_SOURCES),
                key="ft_labels",
                format_func=service.LABEL_SOURCES.get,
                index=1 if n_reviewed else 0,
                help=f"{n_reviewed:,} images have clinician reviews. Reviewed labels use the consensus (or "
                "adjudication) where an image was reviewed and the NLP label elsewhere, and leave excluded "
                "images out.",
            )
        with right:
            epochs = st.number_input("Epochs", min_value=1, max_value=500, value=3, step=1, key="ft_epochs")
            lr = st.select_slider(
                "Learning rate",
                options=[1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3],
                value=1e-4,
                key="ft_lr",
                format_func=lambda v: f"{v:.0e}",
                help="Adam; divided by 10 when the validation loss stalls.",
            )
            batch = st.select_slider(
                "Batch size",
                options=[4, 8, 16, 32, 64, 128, 256],
                value=64 if device_kind == "cuda" else 16,
                key="ft_batch",
            )
            weighting = st.checkbox(
                "Class weighting",
                key="ft_weighting",
                help="Weight each finding's positives by its negatives/positives ratio in "
                "the training labels (helps rare findings such as Hernia).",
            )
        st.caption(
            f"Dataset: `{data_dir}` · patient-wise 90/10 train/validation split of the official "
            "train_val list · the best epoch by validation mean AUROC is kept."
        )
        submitted = st.form_submit_button("Queue fine-tune", type="primary", icon=":material/model_training:")
    if submitted:
        try:
            with session() as db:
                job = service.enqueue_fine_tune(
                    db,
                    base_version_id=base_id,
                    epochs=int(epochs),
                    batch_size=int(batch),
                    lr=float(lr),
                    label_source=label_source,
                    class_weighting=weighting,
                    name=name.strip() or None,
                    data_dir=data_dir,
                    created_by=db.get(User, user.id),
                )
                job_id, new_name = job.id, job.params["name"]
        except DbUserError as exc:
            st.error(str(exc), icon=":material/error:")
            return
        flash("success", f"Job #{job_id} queued: fine-tune → {new_name}.")
        st.rerun()


# ----------------------------------------------------------------------------------------------------
# Jobs: live progress and history


def progress_text(job: JobInfo) -> str:
    p = job.progress
    if job.status == "queued":
        return "Waiting for the worker…"
    parts = [p.get("stage_text") or job.status]
    if p.get("stage") in ("train", "validate") and p.get("epochs"):
        parts.append(f"epoch {p.get('epoch')}/{p.get('epochs')}")
        if p.get("stage") == "train" and p.get("steps"):
            parts.append(f"step {p.get('step')}/{p.get('steps')}")
    if p.get("stage") == "cache" and (p.get("cache") or {}).get("total"):
        parts.append(f"{p['cache']['done']:,}/{p['cache']['total']:,} images")
    if p.get("stage") in ("evaluate", "predict"):
        counts = p.get("evaluation") if p.get("stage") == "evaluate" else p.get("predicted")
        if counts and counts.get("total"):
            parts.append(f"{counts['done']:,}/{counts['total']:,} images")
    if p.get("eta_s") and job.status == "running" and p.get("stage") == "train":
        parts.append(f"about {duration_text(p['eta_s'])} left")
    return " · ".join(parts)


def progress_fraction(job: JobInfo) -> float:
    p = job.progress
    if p.get("stage") == "evaluate" and (p.get("evaluation") or {}).get("total"):
        e = p["evaluation"]
        return ((e["part"] - 1) + e["done"] / e["total"]) / e["parts"]
    if p.get("stage") == "cache" and (p.get("cache") or {}).get("total"):
        return p["cache"]["done"] / p["cache"]["total"]
    return float(p.get("fraction") or (1.0 if job.status == "succeeded" else 0.0))


def job_panel(job: JobInfo) -> None:
    p = job.progress
    with st.container(border=True):
        head, badge = st.columns([5, 1])
        head.markdown(f"**{job.title}**")
        badge.markdown(STATUS_BADGES.get(job.status, job.status))
        st.progress(min(max(progress_fraction(job), 0.0), 1.0), text=progress_text(job))
        if job.kind == service.JOB_FINE_TUNE and job.status != "queued":
            epochs_done = p.get("epochs_done") or []
            last_loss = (p.get("loss_history") or [[None, None]])[-1][1]
            best = max(
                (e["val_mean_auroc"] for e in epochs_done if e.get("val_mean_auroc") is not None),
                default=None,
            )
            cols = st.columns(5)
            cols[0].metric("Epoch", f"{p.get('epoch') or 0}/{p.get('epochs') or job.params.get('epochs')}")
            cols[1].metric("Training loss", number_text(last_loss, 4))
            cols[2].metric("Best val. AUROC", number_text(best))
            cols[3].metric("Time left", duration_text(p.get("eta_s")) if job.status == "running" else "—")
            speed = p.get("images_per_s")
            cols[4].metric("Images/s", f"{speed:,.1f}" if speed else "—")
            st.caption(
                f"Device: {p.get('device') or '—'} · running for {duration_text(job.duration_s)}"
                + (
                    f" · resumed after epoch {p['resumed_after_epoch']}"
                    if p.get("resumed_after_epoch")
                    else ""
                )
            )
            if p.get("loss_history") or epochs_done:
                left, right = st.columns(2)
                left.plotly_chart(loss_curve(p), width="stretch", config=PLOTLY_CONFIG, key=f"loss_{job.id}")
                right.plotly_chart(
                    val_auroc_curve(p), width="stretch", config=PLOTLY_CONFIG, key=f"auroc_{job.id}"
                )
        if job.status == "failed":
            st.error(f"Failed: {job.error}", icon=":material/error:")
        elif job.status == "interrupted":
            st.warning(job.error or "Interrupted.", icon=":material/pause_circle:")
        elif job.status == "succeeded" and job.result_version:
            st.success(
                f"Registered version **{job.result_version}**: compare and promote it on **Models & ROC**.",
                icon=":material/check_circle:",
            )
        elif job.status == "succeeded" and p.get("message"):
            st.success(p["message"], icon=":material/check_circle:")
        elif p.get("message") and job.active:
            st.caption(p["message"])
        buttons = st.columns([1, 1, 4])
        if job.active:
            label = "Cancelling…" if job.cancel_requested else "Cancel"
            if buttons[0].button(
                label, key=f"cancel_{job.id}", icon=":material/stop_circle:", disabled=job.cancel_requested
            ):
                with session() as db:
                    request_cancel(db, job.id)
                st.rerun(scope="fragment")
        if job.resumable:
            resume_button(job, buttons[1])


def resume_button(job: JobInfo, where) -> None:
    if where.button(
        "Resume",
        key=f"resume_{job.id}",
        icon=":material/play_circle:",
        help="Continue from the last finished epoch (same version name and folders).",
    ):
        try:
            with session() as db:
                new = service.resume_job(db, job.id, created_by=db.get(User, user.id))
                new_id = new.id
        except DbUserError as exc:
            flash("error", str(exc))
        else:
            flash("success", f"Job #{new_id} queued: continuing job #{job.id}.")
        st.rerun()


@st.fragment(run_every="2s")
def jobs_fragment() -> None:
    current, jobs = admin_data.load_jobs()
    if current is None:
        st.info("No jobs yet.")
        return
    # Refresh the whole page (registry, label counts) once when the live job ends.
    previous = state.get("admin_live_job")
    state["admin_live_job"] = (current.id, current.status)
    if previous and previous[0] == current.id and previous[1] in ("queued", "running") and not current.active:
        st.rerun()
    job_panel(current)
    with st.expander(f"Job history ({len(jobs)})", expanded=False, icon=":material/history:"):
        st.dataframe(
            admin_data.jobs_frame(jobs),
            hide_index=True,
            width="stretch",
            column_config={
                "job": st.column_config.NumberColumn("job", format="#%d", width="small"),
                "message": st.column_config.TextColumn("message", width="large"),
            },
        )
        resumable = [j for j in jobs if j.resumable and j.id != current.id]
        for job in resumable[:5]:
            cols = st.columns([4, 1])
            cols[0].markdown(f"{job.title} · {STATUS_BADGES.get(job.status, job.status)}")
            resume_button(job, cols[1])


def predictions_section() -> None:
    with st.expander("Model predictions for the review queue", icon=":material/query_stats:"):
        n_files = admin_data.n_images_with_files()
        st.caption(
            f"Stores the active model's 14 probabilities for every imported image ({n_files:,} with files). "
            "The review page's “Model disagrees most” queue ranks images by them; run it again after "
            "promoting a new version."
        )
        if st.button(
            "Queue predictions", icon=":material/play_arrow:", key="queue_predict", disabled=not n_files
        ):
            try:
                with session() as db:
                    job_id = service.enqueue_predict(db, created_by=db.get(User, user.id)).id
            except DbUserError as exc:
                st.error(str(exc))
            else:
                flash("success", f"Job #{job_id} queued: store predictions of the active model.")
                st.rerun()


show_flash()
device = worker_panel()
n_images = dataset_section()
import_section(n_images)
st.divider()
fine_tune_form(device, n_images)
st.divider()
st.subheader("Jobs")
jobs_fragment()
predictions_section()
