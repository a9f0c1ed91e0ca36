"""Images imported from a real PACS (Orthanc) and labelled by readers are evaluated beside the dataset's
splits: the evaluate job reports them as the "pacs" set against the readers' labels (issue 18)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from core.evaluation.prediction_store import load_stored
from core.inference.predictor import Predictor
from core.labels import FINDINGS
from core.paths import chexnet_home
from db import pacs
from db.engine import dispose_engine, session_scope
from db.jobs import get_job
from db.models import Image, ModelVersion, User
from db.registry import get_version
from db.reviews import save_review
from jobs.dicomweb import SearchCriteria
from jobs.imported_evaluation import PACS_SPLIT, evaluate_imports, labelled_imports
from jobs.pacs_import import import_instances
from jobs.queue import enqueue_evaluate
from jobs.worker import Worker
from tests.admin_helpers import fast_settings, make_studio, synthetic_dataset
from tests.orthanc_fixtures import OrthancServer, store_sample_studies
from webapp.dashboards import missing_text, split_choice_text

pytestmark = pytest.mark.usefixtures("fast_password_hashing")


@pytest.fixture
def studio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    made = make_studio(tmp_path, monkeypatch, synthetic_dataset(tmp_path / "cxr14"))
    yield made
    dispose_engine(made.url)


def _import_and_review(studio, orthanc: OrthancServer, sample_dir: Path) -> list[int]:
    """Eight PACS images imported; six labelled by the reader (Effusion on three), one excluded."""
    store_sample_studies(orthanc, sample_dir, 8)
    with session_scope(studio.engine) as session:
        connection_id = pacs.create_connection(
            session,
            "PACS",
            orthanc.dicomweb_url,
            auth="basic",
            username=orthanc.user,
            secret=orthanc.password,
        ).id
    summary = import_instances(studio.engine, connection_id, SearchCriteria())
    assert summary.imported == 8
    ids = sorted(summary.image_ids)
    with session_scope(studio.engine) as session:
        reader = session.get(User, studio.reader_id)
        for n, image_id in enumerate(ids[:7]):
            findings = {f: f == "Effusion" and n % 2 == 0 for f in FINDINGS}
            save_review(session, image_id, reader, findings, not any(findings.values()), n == 6, "", None)
    return ids


def test_readers_labels_of_imported_images_make_the_pacs_report(studio, orthanc, sample_dir) -> None:
    ids = _import_and_review(studio, orthanc, sample_dir)
    with session_scope(studio.engine, read_only=True) as session:
        imports = labelled_imports(session)
        base_dir = session.scalar(select(ModelVersion.path).where(ModelVersion.id == studio.base_id))
    assert imports.image_ids == ids[:6]  # the excluded one and the unread one are not there
    assert imports.truth[:, FINDINGS.index("Effusion")].tolist() == [1, 0, 1, 0, 1, 0]
    assert int(imports.truth.sum()) == 3

    predictor = Predictor.from_path(base_dir, backend="torch", device="cpu")
    seen: list[tuple[int, int]] = []
    result = evaluate_imports(
        predictor, imports, model_name="tiny", n_boot=10, progress=lambda d, t: seen.append((d, t))
    )
    assert result is not None
    report = result.report
    assert report["split"] == PACS_SPLIT and report["n_images"] == 6 and report["n_unreadable"] == 0
    assert 0.0 <= report["auroc"]["Effusion"] <= 1.0
    assert report["auroc"]["Cardiomegaly"] is None  # no positive: no AUROC, not a made-up 0.5
    assert report["thresholds"]["Effusion"] == pytest.approx(predictor.thresholds["Effusion"])
    assert seen[-1] == (6, 6)
    # The stored probabilities are the predictor's own for those files.
    expected = predictor.predict_one(_pixels(imports.paths[0])).probabilities["Effusion"]
    assert result.stored.probabilities[0, FINDINGS.index("Effusion")] == pytest.approx(expected, abs=1e-5)
    assert result.stored.ids == [f"image-{i}" for i in ids[:6]]

    # A file gone since the import is counted, not a crash.
    Path(imports.paths[1]).unlink()
    again = evaluate_imports(predictor, imports, model_name="tiny", n_boot=0)
    assert again is not None and again.report["n_images"] == 5 and again.report["n_unreadable"] == 1


def _pixels(path: str) -> np.ndarray:
    from core.imaging.reader import read_xray

    return read_xray(Path(path).read_bytes()).pixels


def test_the_evaluate_job_reports_the_imports_and_stores_them_for_comparisons(
    studio, orthanc, sample_dir
) -> None:
    _import_and_review(studio, orthanc, sample_dir)
    with session_scope(studio.engine) as session:
        job_id = enqueue_evaluate(session, version_id=studio.base_id).id
    assert Worker(studio.engine, settings=fast_settings()).run_once() == job_id
    with session_scope(studio.engine, read_only=True) as session:
        job = get_job(session, job_id)
        assert job.status == "succeeded", job.error
        metrics = get_version(session, studio.base_id).metrics
        n_images = session.query(Image).count()
    assert n_images == 56 + 8  # the synthetic dataset's images and the imports
    imported = metrics["evaluations"]["reviewed"][PACS_SPLIT]
    assert imported["n_images"] == 6 and imported["labels_source"].startswith("readers' labels")
    assert "test" in metrics["evaluations"]["nlp"]  # the dataset's splits as before
    stored = load_stored(chexnet_home() / metrics["predictions"]["file"])
    assert len(stored[PACS_SPLIT].ids) == 6 and "reviewed" in stored[PACS_SPLIT].truth
    # The dashboard names the set and says why NLP labels do not apply to it.
    assert split_choice_text(PACS_SPLIT) == "PACS imports"
    assert "no NLP labels" in missing_text(["tiny-base"], "nlp", PACS_SPLIT)
