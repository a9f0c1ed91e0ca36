"""Widgets of the Fine-tune page about jobs: the workers' devices, one input per training setting shown on
the form (read from `TrainSettings`' field metadata, so a new setting needs no form code) and the panel
of a job (read from its `JobProgress`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import streamlit as st

from core.training import TrainSettings
from jobs.listing import JobSummary
from jobs.params import DISPUTED_POLICIES, JOB_FINE_TUNE, LABEL_SOURCES, FineTuneParams
from jobs.worker_status import read_worker_statuses
from webapp.admin_data import VersionInfo
from webapp.formatting import code, duration_text, number_text, plain
from webapp.model_charts import PLOTLY_CONFIG, loss_curve, val_auroc_curve

KEY_PREFIX = "ft_"
STATUS_BADGES = {
    "queued": ":gray-badge[:material/schedule: queued]",
    "running": ":blue-badge[:material/sync: running]",
    "succeeded": ":green-badge[:material/check_circle: succeeded]",
    "failed": ":red-badge[:material/error: failed]",
    "cancelled": ":orange-badge[:material/cancel: cancelled]",
    "interrupted": ":violet-badge[:material/pause_circle: interrupted]",
}
# What each disputed-image policy does to an image (jobs.labels.apply_disputed_policy), for the form's help.
DISPUTED_POLICY_EFFECTS = {
    "exclude": "the image is left out of the fine-tune.",
    "majority": "each finding takes the readers' strict majority; a tie counts as absent.",
    "nlp": "the findings the readers dispute take the NLP-mined label; those they agree on keep theirs.",
    "uncertain": "the disputed findings train as Uncertain, as the *Uncertain findings* setting says.",
}


def worker_panel() -> str | None:
    """Says which device the workers train on; returns the first one's device kind ("cuda"/"cpu") or None."""
    workers = read_worker_statuses()
    if not workers:
        st.warning(
            "No training worker is running, so queued jobs wait. Start one beside the app with "
            "`python -m jobs` (`make run` does), or on a GPU machine that shares this database and "
            "CHEXNET_HOME (see the README).",
            icon=":material/power_off:",
        )
        return None
    for worker in workers:
        doing = f"running job #{worker['job_id']}" if worker.get("job_id") else "idle, waiting for jobs"
        text = f"**Training worker** {code(worker.get('host'))} · {plain(worker.get('device'))} · {doing}"
        if worker.get("device_kind") == "cuda":
            st.success(text, icon=":material/memory:")
        else:
            st.warning(
                text + ". No GPU: fine-tuning DenseNet-121 on the CPU is slow (minutes per hundred images, "
                "days for the full dataset); use it for small samples or start a worker on a GPU machine.",
                icon=":material/speed:",
            )
    return workers[0].get("device_kind")


def _value_text(value: Any) -> str:
    if value is None:
        return "default"
    if isinstance(value, float) and 0 < abs(value) < 1e-2:
        return f"{value:.0e}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _setting_input(spec: dataclasses.Field, default: Any) -> Any:
    """One widget for one setting: checkbox (bool), select slider (offered choices), number input."""
    setting = spec.metadata["setting"]
    key = KEY_PREFIX + spec.name
    if isinstance(default, bool) or str(spec.type).startswith("bool"):
        return st.checkbox(setting.label, value=bool(default), help=setting.help, key=key)
    if setting.choices:
        choices = sorted({*setting.choices, *([] if default is None else [default])})
        options = ([None] if setting.optional else []) + choices
        return st.select_slider(
            setting.label, options=options, value=default, format_func=_value_text, help=setting.help, key=key
        )
    whole = str(spec.type).startswith("int")
    kind = int if whole else float
    return st.number_input(  # an optional setting may be left empty (None)
        setting.label,
        min_value=None if setting.minimum is None else kind(setting.minimum),
        max_value=None if setting.maximum is None else kind(setting.maximum),
        value=None if default is None else kind(default),
        step=1 if whole else None,
        help=setting.help,
        key=key,
    )


def settings_inputs(defaults: TrainSettings) -> dict[str, Any]:
    """The form's values of every setting with `in_form`; the others keep `defaults`' values."""
    values = defaults.to_dict()
    for spec in dataclasses.fields(TrainSettings):
        if spec.metadata["setting"].in_form:
            values[spec.name] = _setting_input(spec, values[spec.name])
    return values


def _disputed_policy_input() -> str:
    default = FineTuneParams().disputed_policy
    effects = "\n".join(
        f"- **{DISPUTED_POLICIES[k]}**: {DISPUTED_POLICY_EFFECTS[k]}" for k in DISPUTED_POLICIES
    )
    return st.selectbox(
        "Disputed images",
        list(DISPUTED_POLICIES),
        index=list(DISPUTED_POLICIES).index(default),
        key="ft_disputed",
        format_func=DISPUTED_POLICIES.get,
        help="With reviewed labels: what to do with an image whose readers disagree and that no admin has "
        f"adjudicated yet.\n{effects}\n\nWhere they disagree on excluding it, every choice but the first "
        "follows their majority. Dataset labels ignore this.",
    )


def fine_tune_inputs(
    versions: list[VersionInfo], defaults: TrainSettings, data_dir: Path, n_reviewed: int
) -> dict[str, Any] | None:
    """The fine-tune form; once submitted, the FineTuneParams fields it sets (name, base version, labels,
    disputed-image policy, settings)."""
    choices = {v.id: v for v in sorted(versions, key=lambda v: (not v.is_active, -v.id))}
    with st.form("fine_tune", border=True):
        left, right = st.columns(2)
        with left:
            base_id = st.selectbox(
                "Start from version",
                [*choices, None],
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
                list(LABEL_SOURCES),
                key="ft_labels",
                format_func=LABEL_SOURCES.get,
                index=1 if n_reviewed else 0,
                help=f"{n_reviewed:,} images have clinician reviews. Reviewed labels use the consensus (or "
                "adjudication) where an image was reviewed and the NLP label elsewhere, and leave excluded "
                "images out.",
            )
            disputed_policy = _disputed_policy_input()
        with right:
            settings = settings_inputs(defaults)
        st.caption(
            f"Dataset: {code(data_dir)} · patient-wise train/validation split of the official train_val "
            "list · the best epoch by validation mean AUROC is kept."
        )
        submitted = st.form_submit_button("Queue fine-tune", type="primary", icon=":material/model_training:")
    if not submitted:
        return None
    return {
        "name": name,
        "base_version_id": base_id,
        "label_source": label_source,
        "disputed_policy": disputed_policy,
        "settings": settings,
    }


def job_panel(job: JobSummary) -> None:
    """Title, status, progress bar and, for a fine-tune, its figures and live curves; then the outcome."""
    p = job.progress
    head, badge = st.columns([5, 1])
    head.markdown(f"**{plain(job.title)}**")
    badge.markdown(STATUS_BADGES.get(job.status, plain(job.status)))
    st.progress(p.completed_fraction(job.status), text=p.headline(job.status, duration_text))
    if job.kind == JOB_FINE_TUNE and job.status != "queued":
        cols = st.columns(5)
        cols[0].metric("Epoch", f"{p.epoch}/{p.epochs or job.epochs or '—'}")
        cols[1].metric("Training loss", number_text(p.last_loss, 4))
        cols[2].metric("Best val. AUROC", number_text(p.best_val_auroc))
        cols[3].metric("Time left", duration_text(p.eta_s) if job.status == "running" else "—")
        cols[4].metric("Images/s", f"{p.images_per_s:,.1f}" if p.images_per_s else "—")
        resumed = f" · resumed after epoch {p.resumed_after_epoch}" if p.resumed_after_epoch else ""
        st.caption(f"Device: {plain(p.device or '—')} · running for {duration_text(job.duration_s)}{resumed}")
        if p.has_curves:
            left, right = st.columns(2)
            values = p.to_dict()
            left.plotly_chart(loss_curve(values), width="stretch", config=PLOTLY_CONFIG, key=f"loss_{job.id}")
            right.plotly_chart(
                val_auroc_curve(values), width="stretch", config=PLOTLY_CONFIG, key=f"auroc_{job.id}"
            )
    if job.status == "failed":
        st.error(f"Failed: {plain(job.error)}", icon=":material/error:")
    elif job.status == "interrupted":
        st.warning(plain(job.error or "Interrupted."), icon=":material/pause_circle:")
    elif job.status == "succeeded" and job.result_version:
        st.success(
            f"Registered version **{plain(job.result_version)}**: compare and promote it on "
            "**Models & ROC**.",
            icon=":material/check_circle:",
        )
    elif job.status == "succeeded" and p.message:
        st.success(plain(p.message), icon=":material/check_circle:")
    elif p.message and job.active:
        st.caption(plain(p.message))
