"""Models & ROC (admins): the model registry (promote, roll back, evaluate) and dashboards comparing versions.

Nothing is ever deleted: promoting makes one version active (the Predict page uses it on its next run),
rolling back promotes an earlier one.
"""

from __future__ import annotations

import streamlit as st

from webapp.auth import require_role

user = require_role("admin")

from core.labels import FINDINGS  # noqa: E402
from db import training_service as service  # noqa: E402
from db.errors import DbUserError  # noqa: E402
from db.models import User  # noqa: E402
from webapp import admin_data  # noqa: E402
from webapp.admin_data import LABEL_CHOICES, SPLIT_CHOICES, VersionInfo, pretty  # noqa: E402
from webapp.database import engine_or_stop, session  # noqa: E402
from webapp.model_charts import PLOTLY_CONFIG, curve_grid, curve_overlay  # noqa: E402

ALL_FINDINGS = "__all__"
state = st.session_state
engine_or_stop()

st.title("Models & ROC")
st.caption(
    "Every trained or imported model version, which one the app uses, and how they compare. Test-split "
    "figures use each model's own operating thresholds (chosen on its validation split)."
)


def flash(kind: str, text: str) -> None:
    state["models_flash"] = (kind, text)


def show_flash() -> None:
    kind, text = state.pop("models_flash", (None, None))
    if kind == "success":
        st.success(text, icon=":material/check_circle:")
    elif kind == "error":
        st.error(text, icon=":material/error:")


# ----------------------------------------------------------------------------------------------------
# Registry


def registry_section(versions: list[VersionInfo]) -> None:
    st.subheader("Registry")
    active = next((v for v in versions if v.is_active), None)
    if active is None:
        st.info("No version is active: the app uses the bundled demo model. Promote one below.")
    st.dataframe(
        admin_data.registry_frame(versions),
        hide_index=True,
        width="stretch",
        key="registry_table",
        column_config={
            "version": st.column_config.TextColumn("version", help="● marks the version the app uses."),
            "test AUROC": st.column_config.TextColumn(
                "test AUROC", help="Mean over the 14 findings, official test split, NLP labels."
            ),
            "val AUROC": st.column_config.TextColumn(
                "val AUROC", help="Mean over the 14 findings on the version's own validation split."
            ),
            "test AUROC, reviewed labels": st.column_config.TextColumn(
                "test AUROC, reviewed labels",
                help="Same test images, labels corrected by the reviewers where reviewed.",
            ),
        },
    )
    by_id = {v.id: v for v in versions}
    left, right = st.columns([3, 4], vertical_alignment="bottom")
    chosen = left.selectbox(
        "Version", list(by_id), key="registry_version", format_func=lambda i: by_id[i].title
    )
    version = by_id[chosen]
    buttons = right.columns(3)
    if buttons[0].button(
        "Promote",
        key="promote",
        type="primary",
        icon=":material/rocket_launch:",
        disabled=version.is_active,
        width="stretch",
        help="Make this the model the Predict page and the review queue use.",
    ):
        act(lambda db: service.promote_version(db, version.id), "is now the active model")
    if buttons[1].button(
        "Roll back",
        key="rollback",
        icon=":material/undo:",
        width="stretch",
        disabled=not any(v.status == "retired" and v.promoted_at for v in versions),
        help="Promote the version that was active before the current one.",
    ):
        act(lambda db: service.rollback_version(db), "is active again (rolled back)")
    if buttons[2].button(
        "Evaluate",
        key="evaluate",
        icon=":material/analytics:",
        width="stretch",
        help="Queue an evaluation on the imported dataset's test and validation splits, "
        "against the NLP and the reviewed labels (the worker runs it).",
    ):
        try:
            with session() as db:
                job = service.enqueue_evaluate(db, version_id=version.id, created_by=db.get(User, user.id))
                flash(
                    "success",
                    f"Job #{job.id} queued: evaluate {version.name}. Follow it on the Fine-tune page.",
                )
        except DbUserError as exc:
            flash("error", str(exc))
        st.rerun()
    details(version)


def act(action, done: str) -> None:
    try:
        with session() as db:
            name = action(db).name
    except DbUserError as exc:
        flash("error", str(exc))
    else:
        flash("success", f"{name} {done}. The Predict page uses it from its next run.")
    st.rerun()


def details(version: VersionInfo) -> None:
    with st.expander(f"Details of {version.name}", icon=":material/info:"):
        snapshot = version.label_snapshot
        rows = {
            "Folder": f"`{version.path}`",
            "Parent": version.parent or "—",
            "Created": admin_data.when_text(version.created_at),
            "Promoted": admin_data.when_text(version.promoted_at),
            "Labels": version.label_source,
        }
        if snapshot.get("sha256"):
            rows["Label table"] = (
                f"{snapshot.get('n_images', 0):,} images, {snapshot.get('n_excluded', 0):,} "
                f"excluded · sha256 `{snapshot['sha256'][:16]}…`"
            )
        hp = version.hyperparams
        if hp:
            keys = [
                ("epochs", "epochs"),
                ("batch_size", "batch"),
                ("lr", "lr"),
                ("class_weighting", "class weighting"),
                ("image_size", "image size"),
                ("device", "device"),
            ]
            rows["Training"] = " · ".join(f"{label} {hp[k]}" for k, label in keys if hp.get(k) is not None)
        errors = version.metrics.get("evaluation_errors")
        if errors:
            rows["Evaluation notes"] = " ".join(errors)
        st.markdown("\n".join(f"- **{k}:** {v}" for k, v in rows.items()))
        if version.notes:
            st.caption(version.notes)


# ----------------------------------------------------------------------------------------------------
# Dashboards


def dashboards(versions: list[VersionInfo]) -> None:
    st.subheader("Compare versions")
    active = next((v for v in versions if v.is_active), None)
    names = [v.name for v in versions]
    default = [v.name for v in versions if v.is_active] + [v.name for v in versions if not v.is_active][:1]
    controls = st.columns([4, 2, 2])
    picked = controls[0].multiselect(
        "Versions",
        names,
        default=default,
        key="compare_versions",
        help="The active version is drawn first (dark blue).",
    )
    labels = (
        controls[1].segmented_control(
            "Evaluated against",
            list(LABEL_CHOICES),
            default="nlp",
            format_func=lambda k: LABEL_CHOICES[k].capitalize() if k == "reviewed" else LABEL_CHOICES[k],
            key="compare_labels",
        )
        or "nlp"
    )
    split = (
        controls[2].segmented_control(
            "Split",
            list(SPLIT_CHOICES),
            default=admin_data.default_split(versions),
            format_func=lambda s: "Test" if s == "test" else "Validation",
            key="compare_split",
        )
        or "test"
    )
    chosen = sorted(
        (v for v in versions if v.name in picked), key=lambda v: (not v.is_active, names.index(v.name))
    )
    if not chosen:
        st.info("Pick at least one version.")
        return
    reports = {v.name: v.report(labels, split) for v in chosen}
    missing = [name for name, report in reports.items() if report is None]
    reports = {name: report for name, report in reports.items() if report is not None}
    if missing:
        why = " (made where reviewed images lie in the split)" if labels == "reviewed" else ""
        st.info(
            f"No evaluation of {', '.join(missing)} on the {SPLIT_CHOICES[split]} against "
            f"{LABEL_CHOICES[labels]}{why}. Select it in the registry and press **Evaluate**; meanwhile the "
            "AUROC table shows the figures of its model card where there are any.",
            icon=":material/info:",
        )
    if reports:
        first = next(iter(reports.values()))
        source = first.get("labels_source") or LABEL_CHOICES[labels]
        st.caption(
            f"{first.get('n_images', 0):,} images · labels: {source} · "
            f"{int(round(100 * (first.get('ci_level') or 0.95)))}% CIs from {first.get('n_boot', 0):,} "
            "bootstrap resamples"
        )

    tab_roc, tab_table, tab_pr, tab_points = st.tabs(
        [
            ":material/show_chart: ROC curves",
            ":material/table: AUROC table",
            ":material/ssid_chart: PR curves",
            ":material/tune: Operating thresholds",
        ]
    )
    with tab_roc:
        curves(reports, "roc")
    with tab_table:
        table = admin_data.auroc_table(chosen, active, labels, split)
        st.dataframe(
            admin_data.style_auroc_table(table),
            hide_index=True,
            width="stretch",
            height=35 * (len(table) + 1) + 3,
            column_config={"finding": st.column_config.TextColumn("finding", width=135)},
        )
        st.caption(
            "Δ: difference to the active version's AUROC (green better, red worse). CheXNet (published): "
            "Rajpurkar et al. 2017, official test split, NLP labels."
        )
    with tab_pr:
        curves(reports, "pr")
    with tab_points:
        if not reports:
            st.info("No evaluation to show.")
        else:
            name = st.selectbox("Version", list(reports), key="points_version")
            report = reports[name]
            points = admin_data.operating_points_frame(report)
            st.dataframe(
                points,
                hide_index=True,
                width="stretch",
                height=35 * (len(points) + 1) + 3,
                column_config={
                    c: st.column_config.NumberColumn(c, format="%.3f")
                    for c in ("threshold", "precision", "recall", "specificity", "F1", "AUROC")
                },
            )
            st.caption(
                f"Thresholds: {admin_data.threshold_source_text(report)}. Recall is sensitivity; "
                "precision is the positive predictive value at this split's prevalence."
            )


def curves(reports: dict, kind: str) -> None:
    if not reports:
        st.info("No evaluation with curves to show.")
        return
    options = [ALL_FINDINGS, *FINDINGS]
    finding = st.selectbox(
        "Finding",
        options,
        key=f"{kind}_finding",
        format_func=lambda f: "All 14 findings" if f == ALL_FINDINGS else pretty(f),
    )
    if finding == ALL_FINDINGS:
        st.plotly_chart(curve_grid(reports, kind), width="stretch", config=PLOTLY_CONFIG, key=f"{kind}_grid")
        st.caption(
            "Axes 0–1: "
            + (
                "false positive rate →, true positive rate ↑. "
                if kind == "roc"
                else "recall →, precision ↑. "
            )
            + "Panel titles give each version's "
            + ("AUROC" if kind == "roc" else "average precision")
            + " in legend order; “undefined” where the split has no positive of the finding."
        )
    else:
        _, middle, _ = st.columns([1, 4, 1])
        middle.plotly_chart(
            curve_overlay(reports, finding, kind), width="stretch", config=PLOTLY_CONFIG, key=f"{kind}_one"
        )
        st.caption("Diamonds: each version's operating threshold.")


show_flash()
all_versions = admin_data.load_versions()
if not all_versions:
    st.info(
        "No model is registered yet. Train one on the Fine-tune page, or put a model folder under "
        "models/ and restart."
    )
    st.stop()
registry_section(all_versions)
st.divider()
dashboards(all_versions)
