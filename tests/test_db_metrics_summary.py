"""model_versions.metrics_summary: the metrics a list of every version reads, without the curves."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import InvalidRequestError

from db.engine import session_scope
from db.migrate import downgrade, upgrade
from db.models import ModelVersion
from db.registry import list_versions, register_model_version, version_metrics


def report(seed: float) -> dict:
    points = [[i / 1000, (i / 1000) ** seed] for i in range(1000)]
    return {
        "mean_auroc": 0.5 + seed / 10,
        "auroc": {"Effusion": 0.6 + seed / 10},
        "thresholds": {"Effusion": 0.1},
        "roc": {"Effusion": {"fpr": [p[0] for p in points], "tpr": [p[1] for p in points]}},
        "pr": {"Effusion": {"recall": [p[0] for p in points], "precision": [p[1] for p in points]}},
    }


METRICS = {
    "evaluations": {"nlp": {"test": report(1.0), "val": report(2.0)}, "reviewed": {"test": report(3.0)}},
    "training": {"mean_auroc": 0.7},
    "evaluation_errors": {"reviewed/val": "no reviewed image lies in the split"},
}


def test_the_summary_is_the_metrics_less_the_curves_and_follows_every_write(engine: Engine) -> None:
    with session_scope(engine) as session:
        version = register_model_version(session, "v1", "/models/v1", metrics=METRICS)
        version_id = version.id
    with session_scope(engine) as session:
        summary = session.get(ModelVersion, version_id).metrics_summary
    assert summary["training"] == METRICS["training"]
    assert summary["evaluation_errors"] == METRICS["evaluation_errors"]
    for labels, reports in METRICS["evaluations"].items():
        for split, full in reports.items():
            slim = summary["evaluations"][labels][split]
            assert "roc" not in slim and "pr" not in slim
            assert slim == {k: v for k, v in full.items() if k not in ("roc", "pr")}
    assert len(json.dumps(summary)) * 20 < len(json.dumps(METRICS))
    with session_scope(engine) as session:  # the evaluate job assigns new metrics: the summary follows
        version = session.get(ModelVersion, version_id)
        version.metrics = {**version.metrics, "training": {"mean_auroc": 0.8}}
    with session_scope(engine) as session:
        assert session.get(ModelVersion, version_id).metrics_summary["training"] == {"mean_auroc": 0.8}
        assert version_metrics(session, version_id)["evaluations"]["nlp"]["test"]["roc"] == report(1.0)["roc"]


def test_a_list_without_curves_never_reads_the_full_metrics(engine: Engine) -> None:
    with session_scope(engine) as session:
        register_model_version(session, "v1", "/models/v1", metrics=METRICS)
        register_model_version(session, "v2", "/models/v2")
    with session_scope(engine, read_only=True) as session:
        listed = list_versions(session, curves=False)
        assert [v.name for v in listed] == ["v2", "v1"]
        assert listed[1].metrics_summary["evaluations"]["nlp"]["test"]["mean_auroc"] == 0.6
        assert listed[0].metrics_summary is None
        with pytest.raises(InvalidRequestError):
            listed[1].metrics  # noqa: B018 - deferred with raiseload: reading it would be a bug


def test_the_migration_fills_the_summary_of_existing_versions(engine: Engine) -> None:
    downgrade(engine, "0007_trust")
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO model_versions (name, path, status, is_active, metrics, notes, created_at) "
                 "VALUES ('old', '/m', 'registered', false, :metrics, '', CURRENT_TIMESTAMP), "
                 "('bare', '/b', 'registered', false, NULL, '', CURRENT_TIMESTAMP)"),
            {"metrics": json.dumps(METRICS)},
        )  # fmt: skip
    upgrade(engine)
    with session_scope(engine, read_only=True) as session:
        by_name = {v.name: v for v in list_versions(session, curves=False)}
    assert by_name["old"].metrics_summary["evaluations"]["reviewed"]["test"]["mean_auroc"] == 0.8
    assert "roc" not in by_name["old"].metrics_summary["evaluations"]["nlp"]["val"]
    assert by_name["bare"].metrics_summary is None
