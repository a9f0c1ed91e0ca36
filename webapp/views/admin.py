"""Fine-tune (admins): dataset and label status, dataset import, fine-tune jobs and their live progress.

Nothing trains here: the page queues jobs (jobs.queue) and the worker process (`python -m jobs`, started
by `make run`) runs them; the job panel re-reads their progress every two seconds.
"""

from __future__ import annotations

import streamlit as st

from webapp.auth import require_role

user = require_role("admin")

from core.errors import UserError  # noqa: E402
from core.training import TrainSettings  # noqa: E402
from db.importer import import_chestxray14  # noqa: E402
from db.jobs import request_cancel  # noqa: E402
from db.models import User  # noqa: E402
from db.registry import get_active_version  # noqa: E402
from jobs import queue  # noqa: E402
from jobs.folders import dataset_root  # noqa: E402
from jobs.labels import n_reviewed_images  # noqa: E402
from jobs.listing import JobSummary  # noqa: E402
from jobs.params import FineTuneParams  # noqa: E402
from webapp import admin_data  # noqa: E402
from webapp.database import engine_or_stop, outage_guard, session  # noqa: E402
from webapp.dataset_widgets import import_inputs, import_progress_bar, label_status_summary  # noqa: E402
from webapp.formatting import flash, plain, show_flash  # noqa: E402
from webapp.job_widgets import STATUS_BADGES, fine_tune_inputs, job_panel, worker_panel  # noqa: E402
from webapp.pacs_section import pacs_section  # noqa: E402
from webapp.queue_button import queue_job  # noqa: E402

state = st.session_state
engine_or_stop()

st.title("Fine-tune")
st.caption(
    "Retrain CheXNet on the corrected labels. Jobs run in the background training worker, one at a time; "
    "each finished job becomes a new model version on the **Models & ROC** page (nothing is promoted "
    "automatically)."
)


def dataset_section() -> int:
    st.subheader("Dataset and labels")
    status = admin_data.dataset_status()
    if status.n_images:
        label_status_summary(status)
    else:
        st.info("No dataset is imported yet. Import a ChestX-ray14 folder below to fine-tune.")
    return status.n_images


def import_section(n_images: int) -> None:
    asked = import_inputs(expanded=n_images == 0)
    if asked is None:
        return
    progress, remove_bar = import_progress_bar()
    try:
        stats = import_chestxray14(engine_or_stop(), asked[0], hash_images=asked[1], progress=progress)
    except UserError as exc:
        remove_bar()
        st.error(plain(exc))
        return
    text = f"Imported {plain(asked[0])}: {stats.summary()}"
    if stats.problems:
        text += f" Notes: {plain(' '.join(stats.problems[:3]))}"
    # The active version gets curves on the new data (the worker evaluates it in the background).
    with session() as db:
        active = get_active_version(db)
        job = queue.ensure_evaluated(db, active.id, db.get(User, user.id)) if active else None
        if job is not None:
            text += f" Job #{job.id} evaluates {plain(active.name)} on it for the Models & ROC dashboards."
    flash("success", text)
    st.rerun()


def fine_tune_form(device_kind: str | None, n_images: int) -> None:
    st.subheader("Start a fine-tune")
    versions = admin_data.load_versions()
    with session(read_only=True) as db:
        data_dir, n_reviewed = dataset_root(db), n_reviewed_images(db)
    if not n_images or data_dir is None:
        st.info("Import a dataset first: fine-tuning reads its images from the imported folder.")
        return
    # A GPU worker takes larger batches; every other default comes from TrainSettings.
    defaults = TrainSettings().replace(batch_size=64) if device_kind == "cuda" else TrainSettings()
    asked = fine_tune_inputs(versions, defaults, data_dir, n_reviewed)
    if asked is not None:
        try:
            params = FineTuneParams(data_dir=data_dir, **asked)
            with session() as db:
                job = queue.enqueue_fine_tune(db, params, created_by=db.get(User, user.id))
                job_id, new_name = job.id, job.params["name"]
        except UserError as exc:
            st.error(plain(exc), icon=":material/error:")
            return
        flash("success", f"Job #{job_id} queued: fine-tune → {plain(new_name)}.")
        st.rerun()


def job_buttons(job: JobSummary, cancel_column, resume_column) -> None:
    if job.active and cancel_column.button(
        "Cancelling…" if job.cancel_requested else "Cancel",
        key=f"cancel_{job.id}",
        icon=":material/stop_circle:",
        disabled=job.cancel_requested,
    ):
        with session() as db:
            request_cancel(db, job.id)
        # The whole page: the click may arrive in a full run (scope="fragment" fails outside a fragment's).
        st.rerun()
    if job.resumable and resume_column.button(
        "Resume",
        key=f"resume_{job.id}",
        icon=":material/play_circle:",
        help="Continue from the last finished epoch (same version name and folders).",
    ):
        try:
            with session() as db:
                new_id = queue.resume_job(db, job.id, created_by=db.get(User, user.id)).id
        except UserError as exc:
            flash("error", plain(exc))
        else:
            flash("success", f"Job #{new_id} queued: continuing job #{job.id}.")
        st.rerun()


@st.fragment(run_every="2s")
def jobs_fragment() -> None:
    # A fragment rerun skips the page's top: check the role again (a demoted admin loses it here too).
    require_role("admin")
    with outage_guard():
        live_jobs()


def live_jobs() -> None:
    current, jobs = admin_data.load_jobs()
    if current is None:
        st.info("No jobs yet.")
        return
    # Refresh the whole page (registry, label counts) once when the live job ends.
    previous = state.get("admin_live_job")
    state["admin_live_job"] = (current.id, current.status)
    if previous and previous[0] == current.id and previous[1] in ("queued", "running") and not current.active:
        st.rerun()
    with st.container(border=True):
        job_panel(current)
        job_buttons(current, *st.columns([1, 1, 4])[:2])
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
        for job in [j for j in jobs if j.resumable and j.id != current.id][:5]:
            cols = st.columns([4, 1])
            cols[0].markdown(f"{plain(job.title)} · {STATUS_BADGES.get(job.status, plain(job.status))}")
            job_buttons(job, cols[1], cols[1])


def predictions_section() -> None:
    with st.expander("Model predictions for the review queue", icon=":material/query_stats:"):
        with session(read_only=True) as db:
            n_files = queue.n_images_with_files(db)
        st.caption(
            f"Stores the active model's 14 probabilities for every imported image ({n_files:,} with files). "
            "The review page's “Model disagrees most” queue ranks images by them; run it again after "
            "promoting a new version."
        )
        if st.button(
            "Queue predictions", icon=":material/play_arrow:", key="queue_predict", disabled=not n_files
        ):
            queue_job(queue.enqueue_predict, user.id, "store predictions of the active model.")


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
pacs_section(user.id)
