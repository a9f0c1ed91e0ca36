"""Parts of the Models & ROC page: the confirm steps of a promotion and of a roll back, the paired
comparison, calibration, subgroups and the reference comparators (the page file keeps the layout, these
draw one part each).

A confirm step holds the optional reason, so the reason recorded is the one typed where the admin
confirms that very action (never one left in a field for some later action)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from core.labels import FINDINGS
from core.paths import SHARED_SAMPLE_DIR
from db.references import list_references
from webapp import dashboards, model_registry
from webapp.admin_data import SPLIT_CHOICES, VersionInfo, default_split
from webapp.dashboards import SUBGROUP_ATTRIBUTES, table_height
from webapp.formatting import plain, pretty
from webapp.model_charts import PLOTLY_CONFIG, reliability_diagram

SAMPLE_REFERENCE = SHARED_SAMPLE_DIR / "reference_chexnet_predictions.csv"


def comparison_table(result: dict[str, Any], a: str, b: str) -> None:
    if not result["classes"]:
        st.info(
            f"None of the {result['n_images']:,} images both cover has a finding with positive and negative "
            "images on this split: there is nothing to compare (pick the other split)."
        )
        return
    frame = dashboards.comparison_frame(result)
    st.dataframe(
        dashboards.style_comparison(frame), hide_index=True, width="stretch", height=table_height(len(frame))
    )
    st.caption(dashboards.comparison_caption(result, a, b))


def promote_confirmation(candidate: VersionInfo, active: VersionInfo | None) -> None:
    """Promote's confirm step: first the paired comparison with the active version, worse findings called
    out."""
    with st.container(border=True, key="promote_confirmation"):
        st.markdown(
            f"**Promote {plain(candidate.name)}?** The Predict page and the review queue then use it."
        )
        if active is not None:
            first = default_split([active, candidate])
            found = dashboards.comparables([active, candidate], [])
            a, b = found.get(f"version:{active.id}"), found.get(f"version:{candidate.id}")
            if a is None or b is None:
                lacking = [v.name for v, c in ((active, a), (candidate, b)) if c is None]
                st.warning(
                    f"No paired comparison with the active version {plain(active.name)}: "
                    f"{', '.join(map(plain, lacking))} has no stored per-image predictions. Evaluate it "
                    "first (**Evaluate**), or promote without the comparison."
                )
            else:
                # The larger split first; the other when no finding has both classes there.
                for split in (first, *(s for s in SPLIT_CHOICES if s != first)):
                    result, why = dashboards.paired_comparison(a, b, split, "nlp")
                    if result is not None and result["classes"]:
                        break
                if result is None:
                    st.warning(why)
                else:
                    st.markdown(
                        f"Against the active version **{plain(active.name)}** ({SPLIT_CHOICES[split]}, "
                        "NLP labels):"
                    )
                    worse = dashboards.worse_text(result, active.name, candidate.name)
                    if worse:
                        st.error(worse, icon=":material/trending_down:")
                    else:
                        st.success(
                            "No finding is significantly worse than the active version (Holm p < 0.05)."
                        )
                    comparison_table(result, active.name, candidate.name)
        reason = _reason_input("promote_reason")
        left, right, _ = st.columns([2, 1, 3])
        if left.button("Confirm promotion", key="confirm_promote", type="primary", width="stretch"):
            model_registry.promote(candidate.id, reason)
            st.rerun()
        if right.button("Cancel", key="cancel_promote", width="stretch"):
            model_registry.cancel_promotion()
            st.rerun()


PENDING_ROLLBACK = "rollback_pending"  # session key: Roll back was pressed, its confirm step is shown


def ask_to_roll_back() -> None:
    """Roll back asks first, like Promote (one confirm step at a time)."""
    model_registry.cancel_promotion()
    st.session_state[PENDING_ROLLBACK] = True


def confirm_step(versions: list[VersionInfo]) -> None:
    """The confirm step of the promotion or roll back waiting for its Confirm, if one is."""
    active = next((v for v in versions if v.is_active), None)
    candidate = model_registry.pending_promotion(versions)
    if candidate is not None:
        st.session_state.pop(PENDING_ROLLBACK, None)  # Promote was pressed after Roll back
        promote_confirmation(candidate, active)
        return
    target = model_registry.rollback_target(versions) if st.session_state.get(PENDING_ROLLBACK) else None
    if target is None:
        st.session_state.pop(PENDING_ROLLBACK, None)
    else:
        rollback_confirmation(target, active)


def rollback_confirmation(target: VersionInfo, active: VersionInfo | None) -> None:
    """Roll back's confirm step: which version comes back, which one it replaces, and the reason."""
    with st.container(border=True, key="rollback_confirmation"):
        replaces = f", replacing {plain(active.name)}" if active is not None else ""
        st.markdown(
            f"**Roll back to {plain(target.name)}?** It was active before{replaces}; the Predict page and "
            "the review queue then use it."
        )
        reason = _reason_input("rollback_reason")
        left, right, _ = st.columns([2, 1, 3])
        if left.button("Confirm roll back", key="confirm_rollback", type="primary", width="stretch"):
            st.session_state.pop(PENDING_ROLLBACK, None)
            model_registry.roll_back(reason)
            st.rerun()
        if right.button("Cancel", key="cancel_rollback", width="stretch"):
            st.session_state.pop(PENDING_ROLLBACK, None)
            st.rerun()


def _reason_input(key: str) -> str:
    return st.text_input(
        "Reason (optional)",
        key=key,
        max_chars=500,
        help="Recorded with your name and the time in the promotion history.",
    )


def paired_comparison(versions: list[VersionInfo], labels: str, split: str) -> None:
    references = list_references()
    found = dashboards.comparables(versions, references)
    if len(found) < 2:
        st.info(
            "A paired comparison needs two versions evaluated here (their per-image predictions are "
            "stored by **Evaluate**), or one and a reference below."
        )
    else:
        keys = list(found)
        active = next(
            (f"version:{v.id}" for v in versions if v.is_active and f"version:{v.id}" in found), keys[0]
        )
        columns = st.columns(2)
        a = columns[0].selectbox(
            "A (baseline)",
            keys,
            index=keys.index(active),
            key="compare_a",
            format_func=lambda k: found[k].name,
        )
        others = [k for k in keys if k != a]
        b = columns[1].selectbox(
            "B (compared; delta = B − A)", others, key="compare_b", format_func=lambda k: found[k].name
        )
        result, why = dashboards.paired_comparison(found[a], found[b], split, labels)
        if result is None:
            st.info(why)
        else:
            worse = dashboards.worse_text(result, found[a].name, found[b].name)
            if worse:
                st.error(worse)
            comparison_table(result, found[a].name, found[b].name)
    reference_admin(references)


def reference_admin(references: list[Any]) -> None:
    with st.expander(
        "Reference comparators (published predictions, not runnable)", icon=":material/bookmark:"
    ):
        if references:
            st.dataframe(
                [
                    {
                        "reference": r.name,
                        "images": r.n_images,
                        "findings": len(r.labels),
                        "file": r.source_file,
                        "added": r.added_at,
                        "by": r.added_by or "—",
                    }
                    for r in references
                ],
                hide_index=True,
                width="stretch",
            )
        st.caption(
            "A CSV with an `Image Index` column and one column per finding (named like the finding or "
            "`prob_<finding>`). It is compared with versions on the images it covers; it is never "
            "promoted or run."
        )
        name = st.text_input("Name", key="reference_name", max_chars=80)
        upload = st.file_uploader("Reference predictions CSV", type=["csv"], key="reference_csv")
        user = st.session_state.get("user")
        by = getattr(user, "username", None)
        if st.button("Add reference", key="add_reference", disabled=upload is None):
            model_registry.add_uploaded_reference(by, name, upload.name, upload.getvalue())
            st.rerun()
        sample_label = "Add the shared sample's reference_chexnet_predictions.csv"
        if SAMPLE_REFERENCE.is_file() and st.button(sample_label, key="add_sample_reference"):
            model_registry.add_server_reference(by, name or "CheXNet reproduction (sample)", SAMPLE_REFERENCE)
            st.rerun()


def _version_with(reports: dict[str, dict[str, Any]], part: str, what: str) -> tuple[Any, dict, str] | None:
    """(the column beside the version choice, the reports that have `part` by version name, the chosen
    name); None, with a note, when no report has `part`."""
    usable = {name: r for name, r in reports.items() if r.get(part)}
    if not usable:
        st.info(f"No evaluation with {what} yet: press **Evaluate** for the version.")
        return None
    columns = st.columns([2, 3])
    name = columns[0].selectbox("Version", list(usable), key=f"{part}_version")
    return columns[1], usable, name


def calibration(reports: dict[str, dict[str, Any]]) -> None:
    chosen = _version_with(reports, "calibration", "calibration figures")
    if chosen is None:
        return
    beside, usable, name = chosen
    finding = beside.selectbox(
        "Reliability diagram of", list(FINDINGS), key="calibration_finding", format_func=pretty
    )
    frame = dashboards.calibration_frame(usable[name])
    st.dataframe(
        frame.style.format("{:.3f}", subset=["ECE", "Brier", "ECE after temperature"], na_rep="—"),
        hide_index=True,
        width="stretch",
        height=table_height(len(frame)),
    )
    st.caption(dashboards.calibration_caption(usable[name]))
    _, middle, _ = st.columns([1, 4, 1])
    middle.plotly_chart(
        reliability_diagram(usable, finding), width="stretch", config=PLOTLY_CONFIG, key="reliability"
    )


def subgroups(reports: dict[str, dict[str, Any]]) -> None:
    chosen = _version_with(reports, "subgroups", "subgroup figures")
    if chosen is None:
        return
    beside, usable, name = chosen
    attribute = beside.segmented_control(
        "By",
        list(SUBGROUP_ATTRIBUTES),
        default="view",
        format_func=SUBGROUP_ATTRIBUTES.get,
        key="subgroup_attribute",
    )
    baseline = usable[name]["subgroups"]["view_only_baseline"]
    if baseline["shortcut_findings"]:
        st.warning(f"View-position shortcut: {plain(baseline['note'])}", icon=":material/warning:")
    else:
        st.caption(plain(baseline["note"]))
    frame = dashboards.subgroup_frame(usable[name], attribute or "view")
    st.dataframe(frame, hide_index=True, width="stretch", height=table_height(len(frame)))
    st.caption(
        "Each cell: AUROC (positives in the group; too few below 10). View only: the AUROC of predicting the "
        f"finding from AP vs PA alone ({baseline['n']:,} frontal images, {baseline['n_ap']:,} AP); a model "
        "near it, or good overall but poor within PA and within AP, may have learnt the view."
    )
