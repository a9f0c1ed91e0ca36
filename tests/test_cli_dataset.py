"""`python -m core dataset` and `python -m core cache` on the real shared sample."""

from __future__ import annotations

import json

from core.cli.main import main


def test_dataset_summary_json(sample_dir, capsys):
    assert main(["dataset", str(sample_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    table = report["table"]
    assert table["Total images"]["images"] == 555
    assert table["Infiltration"]["images"] == 112 and table["Hernia"]["images"] == 18
    assert table["Total images"]["train_val"] == 551 and table["Total images"]["test"] == 4
    assert any("not in the folder" in problem for problem in report["problems"])


def test_not_a_dataset_is_one_sentence(tmp_path, capsys):
    assert main(["dataset", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


def test_cache_build_is_incremental(sample_dir, tmp_path, capsys):
    assert main(["cache", str(sample_dir), "--out", str(tmp_path / "cache")]) == 0
    assert "555 image(s) added" in capsys.readouterr().out
    assert main(["cache", str(sample_dir), "--out", str(tmp_path / "cache")]) == 0
    assert "0 image(s) added to the cache, 555 already there" in capsys.readouterr().out
