"""Predict from the PACS (issue 18) against a real PACS (Orthanc, tests/orthanc_fixtures.py): a logged-in
reader finds a study by accession number or Study UID on the Predict page (Streamlit's AppTest, a small
random-init model) and gets the upload's results for the de-identified image; no planted identity reaches
the page, the database, CHEXNET_HOME or the log; the sentences for what cannot be predicted on and for
a PACS that went down; anonymous visitors see no PACS source."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import torch
from sqlalchemy import Engine
from streamlit.testing.v1 import AppTest

from core.inference.artifact import new_card, save_artifact
from core.inference.models import create_model
from core.labels import FINDINGS
from core.paths import REPO_ROOT
from db import accounts, pacs
from db.engine import dispose_engine, get_engine, session_scope
from tests.db_fixtures import TEST_PASSWORD
from tests.orthanc_fixtures import (
    PLANTED_ACCESSION_PREFIX,
    PLANTED_IDENTITIES,
    OrthancServer,
    PlantedInstance,
    dicom_from_png,
    running_orthanc,
    sample_views,
    search_files,
    stow,
)
from webapp.auth import SessionUser

PAGE = str(REPO_ROOT / "webapp" / "views" / "predict.py")
PLANTED = list(PLANTED_IDENTITIES)
TYPED = "pacs_predict_key"  # the text input: it shows back what the reader typed, and only that


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(3)
    folder = tmp_path_factory.mktemp("models") / "pacs-look-model"
    save_artifact(create_model(), folder, new_card("pacs-look-model"))
    return folder


@dataclass(frozen=True)
class Studio:
    home: Path  # CHEXNET_HOME, the SQLite database inside it
    engine: Engine
    reader_id: int

    def connect(self, server: OrthancServer, name: str = "Orthanc") -> int:
        with session_scope(self.engine) as session:
            return pacs.create_connection(
                session, name, server.dicomweb_url, auth="basic", username=server.user, secret=server.password
            ).id

    def page(self, *, logged_in: bool = True) -> AppTest:
        at = AppTest.from_file(PAGE, default_timeout=180)
        if logged_in:
            at.session_state["user"] = SessionUser(self.reader_id, "reader", "clinician")
        at.run()
        assert not at.exception, at.exception
        return at


@pytest.fixture
def studio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_dir: Path, fast_password_hashing
) -> Iterator[Studio]:
    home = tmp_path / "home"
    url = f"sqlite:///{home / 'studio.db'}"
    monkeypatch.setenv("CHEXNET_HOME", str(home))
    monkeypatch.setenv("CHEXNET_MODEL", str(model_dir))
    monkeypatch.setenv("DATABASE_URL", url)
    home.mkdir()
    engine = get_engine(url)
    with session_scope(engine) as session:
        reader_id = accounts.create_user(session, "reader", TEST_PASSWORD, role="clinician").id
    try:
        yield Studio(home, engine, reader_id)
    finally:
        dispose_engine(url)


def frontal_pngs(sample_dir: Path, n: int) -> list[tuple[Path, str]]:
    views = sample_views(sample_dir)
    pngs = sorted((sample_dir / "images").glob("*.png"))
    return [(png, views[png.name]) for png in pngs if views[png.name] in ("PA", "AP")][:n]


def store_study(server: OrthancServer, sample_dir: Path, number: int, views: list[str]) -> list:
    """One study of instances (one series each, numbered from 1) with these view positions ("": none
    given, "SR": a report without pixels): [(dataset, PlantedInstance)]."""
    made, study_uid = [], None
    for series, ((png, _), view) in enumerate(
        zip(frontal_pngs(sample_dir, len(views)), views, strict=True), start=1
    ):
        ds, info = dicom_from_png(png, number=number, view=view or "PA", study_uid=study_uid)
        study_uid = info.study_uid
        ds.SeriesNumber = series
        if not view:
            del ds.ViewPosition
        if view == "SR":
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
            ds.Modality = "SR"
            del ds.PixelData
        made.append((ds, info))
    stow(server, [ds for ds, _ in made])
    return made


def unescaped(text: str) -> str:
    """Markdown text as the reader sees it (webapp.formatting.plain escapes every special character)."""
    return text.replace("\\", "")


def find(at: AppTest, text: str) -> None:
    if at.radio(key="predict_source").value != "From the PACS":
        at.radio(key="predict_source").set_value("From the PACS").run()
    at.text_input(key=TYPED).set_value(text)
    next(b for b in at.button if b.label == "Find study").click()
    at.run()
    assert not at.exception, at.exception


def shown(at: AppTest) -> str:
    """Everything the page sent to the browser (texts, labels, options, charts, image captions), but the
    box the reader typed into."""
    return "\n".join(
        str(node.proto)
        for root in (at.main, at.sidebar)
        for node in root
        if getattr(node, "key", None) != TYPED
    )


def leaks(text: str, planted: list[PlantedInstance]) -> list[str]:
    needles = [*PLANTED, *(p.patient_id for p in planted), *(p.accession for p in planted)]
    return [needle for needle in needles if needle.lower() in text.lower()]


def test_reader_predicts_on_a_study_found_by_accession_or_uid_and_no_identity_is_shown_or_kept(
    studio: Studio, orthanc: OrthancServer, sample_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # Series 1 without a view position, series 2 PA, series 3 AP, series 4 lateral, series 5 a report.
    study = store_study(orthanc, sample_dir, 11, ["", "PA", "AP", "LL", "SR"])
    other = store_study(orthanc, sample_dir, 12, ["AP"])
    planted = [info for _, info in study + other]
    studio.connect(orthanc)
    at = studio.page()
    assert at.get("file_uploader")  # the upload stays the first source
    find(at, study[0][1].accession)

    assert not at.error
    images = at.selectbox(key="pacs_predict_image_1")
    # Frontal first (the one whose view the PACS does not give is listed after them), then by series.
    assert images.options == ["Series 2, image 1: PA, CR", "Series 3, image 1: AP, CR",
                              "Series 1, image 1: view not given, CR"]  # fmt: skip
    assert images.index == 0
    caption = next(unescaped(c.value) for c in at.caption if c.value.startswith("Found 3 images"))
    assert "Not listed: 1 lateral or other non-frontal view (LL), 1 non-image instance (a report" in caption
    # The upload's results: 14 scores, the CAM beside the original, the model card.
    assert len(at.selectbox(key="cam_finding").options) == 14
    assert list(at.session_state["prediction"].probabilities) == list(FINDINGS)
    assert len(at.get("plotly_chart")) == 1
    captions = [caption for image in at.image for caption in image.captions]
    assert captions[0] == "Original (DICOM, 512×512)" and captions[1].startswith("CAM: ")
    assert at.expander[0].label.startswith("Model card")
    assert not [b for b in at.button if b.key == "send_to_review"]  # a look is not an import
    # What the tab keeps: the de-identified file only, the same pixels as the PACS's.
    kept = at.session_state["pacs_predict_look"][1]
    clean = pydicom.dcmread(io.BytesIO(kept))
    assert clean.PatientIdentityRemoved == "YES" and clean.ViewPosition == "PA"
    assert (clean.pixel_array == study[1][0].pixel_array).all()
    assert not leaks(kept.decode("latin-1"), planted) and study[1][1].sop_uid.encode() not in kept
    first = at.session_state["prediction"]

    at.selectbox(key="pacs_predict_image_1").set_value(2).run()  # the PACS gave no view: the fetch says
    assert not at.exception
    assert [unescaped(e.value) for e in at.error] == [
        "Its view position is not given, not a frontal (PA or AP) chest view."
    ]
    at.selectbox(key="pacs_predict_image_1").set_value(1).run()  # the AP
    assert not at.exception and not at.error
    assert pydicom.dcmread(io.BytesIO(at.session_state["pacs_predict_look"][1])).ViewPosition == "AP"

    find(at, other[0][1].study_uid)  # by Study Instance UID
    assert not at.error
    assert at.selectbox(key="pacs_predict_image_2").options == ["Series 1, image 1: AP, CR"]
    assert len(at.selectbox(key="cam_finding").options) == 14
    assert at.session_state["prediction"].probabilities != first.probabilities

    assert not leaks(shown(at), planted)
    assert at.text_input(key=TYPED).value == other[0][1].study_uid  # what was typed, as typed
    assert not (studio.home / "uploads").exists()
    studio.engine.dispose()
    assert not search_files(studio.home, [*PLANTED, *(p.patient_id for p in planted)])
    assert not leaks(caplog.text, planted)


def test_what_cannot_be_predicted_on_is_one_sentence_each(
    studio: Studio, orthanc: OrthancServer, sample_dir: Path
) -> None:
    lateral = store_study(orthanc, sample_dir, 21, ["LL"])
    frames_ds, frames = dicom_from_png(frontal_pngs(sample_dir, 1)[0][0], number=22, view="PA", modality="DX")
    frames_ds.NumberOfFrames = 2
    frames_ds.PixelData = frames_ds.PixelData * 2
    stow(orthanc, [frames_ds])
    report = store_study(orthanc, sample_dir, 23, ["SR"])
    shared = [
        store_study(orthanc, sample_dir, 24, ["PA"])[0][1] for _ in range(2)
    ]  # one accession, 2 studies
    studio.connect(orthanc)
    at = studio.page()
    where = orthanc.http_url.removeprefix("http://")
    expected = {
        lateral[0][1].accession: "This study holds no single-frame frontal (PA or AP) chest radiograph to "
        "predict on: 1 lateral or other non-frontal view (LL).",
        frames.accession: "This study holds no single-frame frontal (PA or AP) chest radiograph to predict "
        "on: 1 multi-frame image.",
        report[0][1].accession: "This study holds no single-frame frontal (PA or AP) chest radiograph to "
        "predict on: 1 non-image instance (a report, presentation state or other object).",
        shared[0].accession: "2 studies have this accession number; type the Study Instance UID of the one "
        "to use.",
        "NOSUCH-ACC-1": f"The PACS at {where} has no study with this accession number or Study UID.",
        "1.2.840.99999.1": f"The PACS at {where} has no study with this accession number or Study UID.",
        # A pattern would list other patients' studies: matching is exact, a wildcard is refused.
        f"{PLANTED_ACCESSION_PREFIX}*": "An accession number or Study Instance UID is at most 64 "
        "characters, without wildcards (* ?), commas or backslashes.",
    }
    for text, sentence in expected.items():
        find(at, text)
        assert [unescaped(e.value) for e in at.error] == [sentence], text
        assert not [box for box in at.selectbox if box.key == "cam_finding"]  # nothing predicted
    assert not leaks(shown(at).replace(f"{PLANTED_ACCESSION_PREFIX}*", ""), [lateral[0][1], frames])


def test_a_pacs_going_down_is_one_sentence_and_the_reader_picks_among_connections(
    studio: Studio, orthanc: OrthancServer, sample_dir: Path, tmp_path: Path
) -> None:
    studio.connect(orthanc, "Main PACS")
    with running_orthanc(tmp_path / "second-pacs") as second:
        study = store_study(second, sample_dir, 31, ["PA", "AP"])
        studio.connect(second, "Second PACS")
        at = studio.page()
        at.radio(key="predict_source").set_value("From the PACS").run()
        connections = at.selectbox(key="pacs_predict_connection")
        assert connections.options == ["Main PACS", "Second PACS"]
        connections.set_value("Second PACS")
        find(at, study[0][1].accession)
        assert not at.error and len(at.selectbox(key="cam_finding").options) == 14
        second.stop()
        at.selectbox(key="pacs_predict_image_1").set_value(1).run()  # fetching the AP now
    assert not at.exception
    [error] = [unescaped(e.value) for e in at.error]
    where = second.http_url.removeprefix("http://")
    assert error.startswith(f"The PACS at {where} ") and error.count(". ") == 0 and error.endswith(".")
    assert not at.get("plotly_chart")  # nothing predicted on the image that did not come
    find(at, study[0][1].accession)  # and so is a look-up
    [error] = [unescaped(e.value) for e in at.error]
    assert error.startswith(f"The PACS at {where} ") and error.count(". ") == 0 and error.endswith(".")


def test_an_anonymous_visitor_sees_no_pacs_source(
    studio: Studio, orthanc: OrthancServer, sample_dir: Path
) -> None:
    store_study(orthanc, sample_dir, 41, ["PA"])
    studio.connect(orthanc)
    at = studio.page(logged_in=False)
    assert not [r for r in at.radio if r.key == "predict_source"]
    assert not [t for t in at.text_input if t.key == TYPED]
    assert at.get("file_uploader")
    reader = studio.page()
    assert reader.radio(key="predict_source").options == ["Upload a file", "From the PACS"]
