"""Models & ROC (admins): the model registry (promote, roll back, evaluate) and dashboards comparing versions.

Nothing is ever deleted: promoting (after a confirm step showing the paired comparison with the active
version) makes one version active, the Predict page uses it on its next run; rolling back (after its own
confirm step) goes one step back along the promotion history. Each confirm step takes the reason.
"""

from __future__ import annotations

import streamlit as st

from webapp.auth import require_role

user = require_role("admin")

from core.labels import FINDINGS  # noqa: E402
from webapp import admin_data, dashboards, model_registry, model_sections  # noqa: E402
from webapp.admin_data import LABEL_CHOICES, SPLIT_CHOICES, VersionInfo  # noqa: E402
from webapp.cam_agreement_section import cam_agreement_section  # noqa: E402
from webapp.dashboards import ALL_FINDINGS, table_height  # noqa: E402
from webapp.database import engine_or_stop  # noqa: E402
from webapp.formatting import plain, show_flash  # noqa: E402
from webapp.model_charts import PLOTLY_CONFIG  # noqa: E402

engine_or_stop()

st.title("Models & ROC")
st.caption(
    "Every trained or imported model version, which one the app uses, and how they compare. Test-split "
    "figures use operating thresholds chosen on the validation split, never on the split reported."
)


def registry_section(versions: list[VersionInfo]) -> None:
    st.subheader("Registry")
    if not any(v.is_active for v in versions):
        st.info("No version is active: the app uses the bundled demo model. Promote one below.")
    st.dataframe(
        admin_data.registry_frame(versions),
        hide_index=True,
        width="stretch",
        key="registry_table",
        column_config=model_registry.registry_columns(),
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
        model_registry.ask_to_promote(version.id)
        st.rerun()
    back = model_registry.rollback_target(versions)
    if buttons[1].button(
        "Roll back",
        key="rollback",
        icon=":material/undo:",
        width="stretch",
        disabled=back is None,
        help=f"Re-activate {plain(back.name)}, promoted before the current one." if back else None,
    ):
        model_sections.ask_to_roll_back()
        st.rerun()
    if buttons[2].button(
        "Evaluate",
        key="evaluate",
        icon=":material/analytics:",
        width="stretch",
        help="Queue an evaluation on the imported dataset's test and validation splits, "
        "against the NLP and the reviewed labels (the worker runs it).",
    ):
        model_registry.queue_evaluation(user.id, version)
        st.rerun()
    model_sections.confirm_step(versions)
    with st.expander(f"Details of {plain(version.name)}", icon=":material/info:"):
        st.markdown(model_registry.details_markdown(version))
        if version.notes:
            st.caption(plain(version.notes))
    from webapp.operating_points_section import operating_points_section  # thresholds, promotion records

    operating_points_section(version, user)


def dashboards_section(versions: list[VersionInfo]) -> None:
    st.subheader("Compare versions")
    controls = st.columns([4, 2, 2])
    picked = controls[0].multiselect(
        "Versions",
        [v.name for v in versions],
        default=dashboards.default_compared(versions),
        key="compare_versions",
        help="The active version is drawn first (dark blue).",
    )
    labels = (
        controls[1].segmented_control(
            "Evaluated against",
            list(LABEL_CHOICES),
            default="nlp",
            format_func=dashboards.label_choice_text,
            key="compare_labels",
        )
        or "nlp"
    )
    split = (
        controls[2].segmented_control(
            "Split",
            list(SPLIT_CHOICES),
            default=admin_data.default_split(versions),
            format_func=dashboards.split_choice_text,
            key="compare_split",
        )
        or "test"
    )
    chosen = dashboards.compared(versions, picked)
    if not chosen:
        st.info("Pick at least one version.")
        return
    reports, missing = dashboards.evaluation_reports(chosen, labels, split)
    if missing:
        st.info(dashboards.missing_text(missing, labels, split), icon=":material/info:")
    caption = dashboards.reports_caption(reports, labels)
    if caption:
        st.caption(caption)

    tab_roc, tab_table, tab_paired, tab_calibration, tab_groups, tab_pr, tab_points = st.tabs(dashboards.TABS)
    with tab_roc:
        curves(reports, "roc")
    with tab_table:
        table = admin_data.auroc_table(chosen, labels, split)
        st.dataframe(
            admin_data.style_auroc_table(table),
            hide_index=True,
            width="stretch",
            height=table_height(len(table)),
            column_config={"finding": st.column_config.TextColumn("finding", width=135)},
        )
        st.caption(
            "Positives: images with the finding in the split. Below 10 an AUROC is marked too few (greyed) "
            "and left out of the mean. Differences between versions: the Paired comparison tab (DeLong's "
            "test on the same images). CheXNet (published): Rajpurkar et al. 2017, official test split, NLP "
            "labels."
        )
    with tab_paired:
        model_sections.paired_comparison(versions, labels, split)
    with tab_calibration:
        model_sections.calibration(reports)
    with tab_groups:
        model_sections.subgroups(reports)
    with tab_pr:
        curves(reports, "pr")
    with tab_points:
        operating_points(reports)


def curves(reports: dict, kind: str) -> None:
    if not reports:
        st.info("No evaluation with curves to show.")
        return
    finding = st.selectbox(
        "Finding",
        [ALL_FINDINGS, *FINDINGS],
        key=f"{kind}_finding",
        format_func=dashboards.finding_choice_text,
    )
    figure = dashboards.curve_figure(reports, kind, finding)  # built once per set of reports
    if finding == ALL_FINDINGS:
        st.plotly_chart(figure, width="stretch", config=PLOTLY_CONFIG, key=f"{kind}_grid")
        st.caption(dashboards.grid_caption(kind))
    else:
        _, middle, _ = st.columns([1, 4, 1])
        middle.plotly_chart(figure, width="stretch", config=PLOTLY_CONFIG, key=f"{kind}_one")
        st.caption("Diamonds: each version's operating threshold.")


def operating_points(reports: dict) -> None:
    if not reports:
        st.info("No evaluation to show.")
        return
    name = st.selectbox("Version", list(reports), key="points_version")
    report = reports[name]
    points = admin_data.operating_points_frame(report)
    st.dataframe(
        points,
        hide_index=True,
        width="stretch",
        height=table_height(len(points)),
        column_config=dashboards.metric_columns(),
    )
    st.caption(
        f"Thresholds: {admin_data.threshold_source_text(report)}. Recall is sensitivity; "
        "precision is the positive predictive value at this split's prevalence."
    )


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
dashboards_section(all_versions)
cam_agreement_section(all_versions)
