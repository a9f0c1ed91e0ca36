"""AppTest of the Models & ROC page on a real database, with evaluations run by the real worker:
promote asks first and shows the paired comparison with the active version, roll back walks back along
the promotion history with every view agreeing on the active version, and the dashboards show positives
with the too-few mark, calibration, subgroups and a reference comparator. Version names from model
folders are shown as plain text."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from core.evaluation.prediction_store import load_stored
from core.labels import FINDINGS
from core.paths import REPO_ROOT, active_model_dir, chexnet_home
from db.cam_feedback import save_cam_feedback
from db.engine import dispose_engine, session_scope
from db.jobs import list_jobs
from db.models import Image, User
from db.references import list_references
from db.registry import (
    get_active_version,
    list_versions,
    promote_version,
    register_existing_model,
    registry_events,
)
from jobs.worker import Worker
from tests.admin_helpers import fast_settings, make_studio, synthetic_dataset, tiny_model
from webapp.auth import SessionUser
from webapp.formatting import plain

MODELS_PAGE = str(REPO_ROOT / "webapp" / "views" / "models.py")
IMPORTED_NAME = "[Re-login](https:evil.example)"  # a card name chosen by whoever made the folder
UNESCAPED_LINK = re.compile(r"(?<!\\)\[[^\]]*(?<!\\)\]\(")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")  # shown literally, whatever it holds


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_dataset(tmp_path_factory.mktemp("cxr14"))


@pytest.fixture
def studio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synthetic_data: Path, fast_password_hashing):
    """The studio ("tiny-base" active) plus a second, imported version with a hostile name."""
    made = make_studio(tmp_path, monkeypatch, synthetic_data)
    with session_scope(made.engine) as session:
        register_existing_model(session, tiny_model(tmp_path / "models", IMPORTED_NAME, seed=1))
    yield made
    dispose_engine(made.url)


def markdown_texts(at: AppTest) -> list[str]:
    """Every text the page renders as markdown, code spans left out."""
    kinds = (at.title, at.subheader, at.markdown, at.caption, at.success, at.info, at.warning, at.error)
    texts = [element.value for kind in kinds for element in kind] + [e.label for e in at.expander]
    return [CODE_SPAN.sub("", text) for text in texts]


def open_page(studio) -> AppTest:
    at = AppTest.from_file(MODELS_PAGE, default_timeout=90)
    at.session_state["user"] = SessionUser(studio.admin_id, "boss", "admin")
    at.run()
    assert not at.exception, at.exception
    return at


def version_id(studio, name: str) -> int:
    with session_scope(studio.engine, read_only=True) as session:
        return next(v.id for v in list_versions(session) if v.name == name)


def evaluate_all(studio, at: AppTest, names: list[str]) -> None:
    """Press Evaluate for each version, then let the worker (in this process) run the jobs."""
    for name in names:
        at.selectbox(key="registry_version").set_value(version_id(studio, name)).run()
        at.button(key="evaluate").click().run()
        assert not at.exception and not at.error
    worker = Worker(studio.engine, settings=fast_settings())
    while worker.run_once() is not None:
        pass
    with session_scope(studio.engine, read_only=True) as session:
        assert {job.status for job in list_jobs(session)} == {"succeeded"}


def assert_views_agree(at: AppTest, studio, expected: str) -> None:
    """Registry row, table marker, version picker and ACTIVE pointer all name the same active version."""
    with session_scope(studio.engine, read_only=True) as session:
        active = get_active_version(session)
        assert active.name == expected
        folder = Path(active.path)
    table = at.dataframe[0].value
    assert list(table.loc[table["status"] == "active", "version"]) == [f"● {expected}"]
    picker = at.selectbox(key="registry_version")  # AppTest gives its options as shown (formatted)
    assert [title for title in picker.options if title.endswith("(active)")] == [f"{expected} (active)"]
    assert active_model_dir() == folder


def test_promote_confirms_with_a_paired_comparison_and_roll_back_walks_back(studio, tmp_path) -> None:
    at = open_page(studio)
    evaluate_all(studio, at, ["tiny-base", IMPORTED_NAME])
    with session_scope(studio.engine, read_only=True) as session:
        metrics = next(v.metrics for v in list_versions(session) if v.name == IMPORTED_NAME)
    # One inference pass per split, whatever the label sources; the per-image probabilities stored.
    assert metrics["evaluation_cost"]["inference_passes"] == 2
    stored = load_stored(chexnet_home() / metrics["predictions"]["file"])
    assert set(stored) == {"test", "val"} and len(stored["test"].ids) == 8
    assert stored["test"].probabilities.shape == (8, 14) and "nlp" in stored["test"].truth

    imported = version_id(studio, IMPORTED_NAME)
    at.run()
    at.selectbox(key="registry_version").set_value(imported).run()
    at.button(key="promote").click().run()
    assert not at.exception
    assert_views_agree(at, studio, "tiny-base")  # asked, not done
    assert any(f"Promote {plain(IMPORTED_NAME)}?" in m.value for m in at.markdown)
    comparison = at.dataframe[1].value  # the paired comparison inside the confirm step
    assert {"Δ (B − A)", "95% CI", "p", "p (Holm)", "positives"} <= set(comparison.columns)
    assert any("DeLong" in c.value for c in at.caption)
    assert at.success or at.error  # significantly worse findings are called out, or their absence said
    at.button(key="cancel_promote").click().run()
    assert not [b for b in at.button if b.key == "confirm_promote"]

    at.button(key="promote").click().run()
    at.button(key="confirm_promote").click().run()
    assert not at.exception and not at.error
    assert f"{plain(IMPORTED_NAME)} is now the active model" in at.success[0].value
    assert_views_agree(at, studio, IMPORTED_NAME)
    assert not [text for text in markdown_texts(at) if UNESCAPED_LINK.search(text)]

    with session_scope(studio.engine) as session:
        register_existing_model(session, tiny_model(tmp_path / "models", "third", seed=2))
    at.run()
    at.selectbox(key="registry_version").set_value(version_id(studio, "third")).run()
    at.button(key="promote").click().run()
    assert any("no stored per-image predictions" in w.value for w in at.warning)  # never evaluated
    at.button(key="confirm_promote").click().run()
    assert_views_agree(at, studio, "third")

    # A -> B -> C, roll back -> B, roll back -> A, then nowhere to go: no toggling.
    at.button(key="rollback").click().run()
    assert_views_agree(at, studio, "third")  # asked, not done
    at.button(key="confirm_rollback").click().run()
    assert f"{plain(IMPORTED_NAME)} is active again (rolled back)" in at.success[0].value
    assert_views_agree(at, studio, IMPORTED_NAME)
    at.button(key="rollback").click().run()
    at.button(key="confirm_rollback").click().run()
    assert "tiny-base is active again (rolled back)" in at.success[0].value
    assert_views_agree(at, studio, "tiny-base")
    assert at.button(key="rollback").disabled
    with session_scope(studio.engine, read_only=True) as session:
        assert len(list_versions(session)) == 3  # nothing deleted


def test_dashboards_show_positives_calibration_subgroups_and_a_reference(studio) -> None:
    at = open_page(studio)
    evaluate_all(studio, at, ["tiny-base", IMPORTED_NAME])
    at.run()
    at.segmented_control(key="compare_split").set_value("test").run()
    assert not at.exception
    table = next(
        d.value for d in at.dataframe if "finding" in d.value.columns and "tiny-base positives" in d.value
    )
    assert table["tiny-base positives"][:14].str.contains("too few").all()  # 8 test images: every finding
    assert table["tiny-base positives"].iloc[14] == "no finding with 10+"
    assert not [c for c in table.columns if "Δ" in c]  # no untested deltas
    assert any("left out of the mean" in c.value for c in at.caption)

    frames = [d.value for d in at.dataframe]
    calibration = next(f for f in frames if "ECE" in f.columns)
    assert len(calibration) == 14 and calibration["Brier"].between(0, 1).all()
    assert any(chart.proto.spec and "Reliability" in chart.proto.spec for chart in at.get("plotly_chart"))
    subgroups = next(f for f in frames if "view only (AP=1)" in f.columns)
    assert len(subgroups) == 14

    # A published model's predictions, uploaded as a reference: compared on the images it covers.
    with session_scope(studio.engine, read_only=True) as session:
        metrics = next(v.metrics for v in list_versions(session) if v.name == "tiny-base")
    val_ids = load_stored(chexnet_home() / metrics["predictions"]["file"])["val"].ids
    covered = val_ids[1:]  # a reference covers only some images: compared on those
    rng = np.random.default_rng(0)
    csv = pd.DataFrame(rng.random((len(covered), 14)), columns=[f"prob_{f}" for f in FINDINGS])
    csv.insert(0, "Image Index", covered)
    at.segmented_control(key="compare_split").set_value("val").run()
    at.text_input(key="reference_name").set_value("Published [CheXNet](x)").run()
    at.get("file_uploader")[0].set_value(("ref.csv", csv.to_csv(index=False).encode(), "text/csv"))
    at.run()
    at.button(key="add_reference").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    [entry] = list_references()
    assert entry.name == "Published [CheXNet](x)" and entry.n_images == len(covered)
    reference_key = f"reference:{entry.slug}"
    at.selectbox(key="compare_b").set_value(reference_key).run()
    assert not at.exception
    compared = next(d.value for d in at.dataframe if "p (Holm)" in d.value.columns)
    assert len(compared) >= 1
    assert any(f"same {len(covered)} images" in c.value for c in at.caption)
    assert not [text for text in markdown_texts(at) if UNESCAPED_LINK.search(text)]

    at.get("file_uploader")[0].set_value(("bad.csv", b"just,some\n1,2\n", "text/csv"))
    at.text_input(key="reference_name").set_value("broken").run()
    at.button(key="add_reference").click().run()
    assert any("has no 'Image Index' column" in e.value.replace("\\", "") for e in at.error)
    assert len(list_references()) == 1


def test_heat_map_feedback_per_model_and_finding_with_too_few_marked(studio) -> None:
    """Readers' saved verdicts (the Review page's path) as counted per version and finding; names plain."""
    with session_scope(studio.engine) as session:
        image_ids = session.scalars(select(Image.id).order_by(Image.id).limit(12)).all()
        reader, admin = session.get(User, studio.reader_id), session.get(User, studio.admin_id)
        for k, image_id in enumerate(image_ids):  # 12 marks, 9 "points at it": 75.0 %
            save_cam_feedback(session, image_id, reader, "tiny-base", "Effusion", k < 9)
        save_cam_feedback(session, image_ids[0], admin, "tiny-base", "Mass", True)
        save_cam_feedback(session, image_ids[0], reader, "tiny-base", "Mass", False)
        for image_id in image_ids[:3]:  # 3 marks: a share of 100 % that means nothing
            save_cam_feedback(session, image_id, reader, IMPORTED_NAME, "Nodule", True)
        save_cam_feedback(session, image_ids[1], reader, IMPORTED_NAME, "Nodule", True)  # changes nothing
    at = open_page(studio)
    frames = [d.value for d in at.dataframe if "Points at the finding" in d.value.columns]
    assert len(frames) == 2  # AppTest's dataframes carry no key: found by their columns
    per_model, per_finding = frames
    assert per_model.to_dict("records") == [
        {"Model": "tiny-base", "Status": "active", "Marks": 14, "Points at the finding": "71.4%"},
        {"Model": IMPORTED_NAME, "Status": "registered", "Marks": 3, "Points at the finding": "too few"},
    ]  # the hostile name is a plain cell, verbatim
    assert per_finding.to_dict("records") == [
        {"Model": "tiny-base", "Finding": "Effusion", "Marks": 12, "Points at the finding": "75.0%"},
        {"Model": "tiny-base", "Finding": "Mass", "Marks": 2, "Points at the finding": "too few"},
        {"Model": IMPORTED_NAME, "Finding": "Nodule", "Marks": 3, "Points at the finding": "too few"},
    ]
    assert any("Fewer than 10 marks: too few" in c.value for c in at.caption)
    assert not [text for text in markdown_texts(at) if UNESCAPED_LINK.search(text)]


def test_heat_map_feedback_says_when_nobody_has_marked_one(studio) -> None:
    at = open_page(studio)
    assert any("No reader has marked a heat map yet" in i.value for i in at.info)
    assert not [d for d in at.dataframe if "Points at the finding" in d.value.columns]


def _frame_with(at: AppTest, column: str) -> pd.DataFrame:
    """The one dataframe with `column` (AppTest's dataframes carry no key)."""
    [frame] = [d.value for d in at.dataframe if column in d.value.columns]
    return frame


def test_an_admin_sets_an_operating_point_with_a_reason_and_sees_it_in_use(studio) -> None:
    at = open_page(studio)
    at.selectbox(key="registry_version").set_value(studio.base_id).run()
    thresholds = _frame_with(at, "threshold in use").set_index("finding")
    assert thresholds.loc["Effusion", "threshold in use"] == 0.5
    assert thresholds.loc["Effusion", "from"].startswith("model card")

    at.text_input(key="op_reason").set_value("   ")  # a reason is required
    at.button(key="op_submit").click().run()
    assert any("the reason is required" in e.value for e in at.error)
    reason = "Screening [policy](https:evil.example): fewer misses"
    at.selectbox(key="op_finding").set_value("Effusion")
    at.number_input(key="op_threshold").set_value(0.25)
    at.text_input(key="op_reason").set_value(reason)
    at.button(key="op_submit").click().run()
    assert not at.exception and not at.error
    assert "Effusion of tiny-base now uses threshold 0.250" in at.success[0].value
    thresholds = _frame_with(at, "threshold in use").set_index("finding")
    assert thresholds.loc["Effusion", "threshold in use"] == 0.25
    assert thresholds.loc["Effusion", "from"].startswith("set by boss on ")
    assert thresholds.loc["Effusion", "from"].endswith(f": {reason}")  # a plain cell, verbatim
    assert thresholds.loc["Effusion", "model card threshold"] == 0.5
    assert thresholds.loc["Mass", "threshold in use"] == 0.5
    history = _frame_with(at, "set by")
    assert history[["finding", "threshold", "set by", "reason"]].values.tolist() == [
        ["Effusion", 0.25, "boss", reason]
    ]
    assert any("1 of 14 thresholds set by an admin" in c.value for c in at.caption)
    assert not [text for text in markdown_texts(at) if UNESCAPED_LINK.search(text)]


def test_promote_and_roll_back_record_who_and_why(studio) -> None:
    at = open_page(studio)
    imported = version_id(studio, IMPORTED_NAME)
    at.selectbox(key="registry_version").set_value(imported).run()
    at.button(key="promote").click().run()
    reason = "Better on [effusion](https:evil.example)"
    at.text_input(key="promote_reason").set_value(reason)  # typed in the confirm step itself
    at.button(key="confirm_promote").click().run()
    assert not at.exception and not at.error
    assert not [t for t in at.text_input if t.key == "promote_reason"]  # the confirm step is done
    at.button(key="rollback").click().run()
    at.button(key="confirm_rollback").click().run()
    assert "tiny-base is active again (rolled back)" in at.success[0].value

    events = _frame_with(at, "replacing")
    assert events[["action", "version", "replacing", "by", "reason"]].values.tolist() == [
        ["rolled back to", "tiny-base", IMPORTED_NAME, "boss", "—"],
        ["promoted", IMPORTED_NAME, "tiny-base", "boss", reason],
        ["promoted", "tiny-base", "—", "command line", "—"],  # the studio's set-up, outside the page
    ]
    at.selectbox(key="registry_version").set_value(studio.base_id).run()
    [details] = [line for m in at.markdown for line in m.value.splitlines() if "**Promoted:**" in line]
    assert re.search(
        r"\*\*Promoted:\*\* \S+ \S+ UTC from the command line; "
        r"active again by a roll back at \S+ \S+ UTC by boss$",
        details,
    )
    assert not [text for text in markdown_texts(at) if UNESCAPED_LINK.search(text)]


def _confirm_steps_page() -> None:
    """The registry's confirm steps alone, under a button that asks for a roll back."""
    import streamlit as st

    from webapp import admin_data, model_sections
    from webapp.formatting import show_flash

    show_flash()
    if st.button("Roll back", key="ask_rollback"):
        model_sections.ask_to_roll_back()
        st.rerun()
    model_sections.confirm_step(admin_data.load_versions())


def test_roll_back_records_the_reason_typed_in_its_confirm_step(studio) -> None:
    with session_scope(studio.engine) as session:
        promote_version(session, IMPORTED_NAME)
    at = AppTest.from_function(_confirm_steps_page, default_timeout=60)
    at.session_state["user"] = SessionUser(studio.admin_id, "boss", "admin")
    at.run()
    assert not at.exception and not at.text_input  # nothing asked, nothing to confirm
    at.button(key="ask_rollback").click().run()
    question = f"**Roll back to tiny-base?** It was active before, replacing {plain(IMPORTED_NAME)};"
    assert any(m.value.startswith(question) for m in at.markdown)
    at.button(key="cancel_rollback").click().run()
    assert not at.text_input and get_active_name(studio) == IMPORTED_NAME

    at.button(key="ask_rollback").click().run()
    reason = "Misses [nodules](https:evil.example) the old one found"
    at.text_input(key="rollback_reason").set_value(reason)
    at.button(key="confirm_rollback").click().run()
    assert not at.exception and not at.error
    assert "tiny-base is active again (rolled back)" in at.success[0].value
    assert not at.text_input and get_active_name(studio) == "tiny-base"
    with session_scope(studio.engine, read_only=True) as session:
        latest = registry_events(session)[0]
    assert (latest.action, latest.version, latest.previous, latest.by, latest.reason) == (
        "rollback",
        "tiny-base",
        IMPORTED_NAME,
        "boss",
        reason,
    )


def get_active_name(studio) -> str:
    with session_scope(studio.engine, read_only=True) as session:
        return get_active_version(session).name


def test_curve_figures_are_built_once_per_set_of_reports() -> None:
    """A 14-panel grid costs hundreds of milliseconds: reruns reuse it until a report changes."""
    from webapp.dashboards import ALL_FINDINGS, curve_figure

    def report(auroc: float) -> dict:
        curves = {f: {"fpr": [0, 0.5, 1], "tpr": [0, auroc, 1], "auroc": auroc} for f in FINDINGS}
        return {"n_images": 40, "auroc": {f: auroc for f in FINDINGS}, "roc": curves}

    first = curve_figure({"v1": report(0.7)}, "roc", ALL_FINDINGS)
    assert curve_figure({"v1": report(0.7)}, "roc", ALL_FINDINGS) is first  # an equal set: the same figure
    assert len(first.data) == 2 * len(FINDINGS)  # chance line + the version's curve per panel
    again = curve_figure({"v1": report(0.8)}, "roc", ALL_FINDINGS)  # re-evaluated: rebuilt
    assert again is not first and "0.80" in again.layout.annotations[0].text
    one = curve_figure({"v1": report(0.7)}, "roc", "Effusion")
    assert one is not first and one is curve_figure({"v1": report(0.7)}, "roc", "Effusion")
