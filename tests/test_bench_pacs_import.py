"""scripts/bench_pacs_import.py runs end to end on a small PACS of its own (issue 18's throughput
benchmark): every stage counts every instance, and the JSON has the figures the issue asks for."""

from __future__ import annotations

import json
import subprocess
import sys

from core.paths import REPO_ROOT
from jobs.pacs_import import STAGES
from tests.orthanc_fixtures import OrthancServer


def test_the_benchmark_imports_every_instance_and_reports_each_stage(orthanc_server: OrthancServer) -> None:
    # (orthanc_server: Orthanc is installed and starts, else this is skipped, or fails under CI, like
    # the other PACS tests; the script starts an Orthanc of its own.)
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "bench_pacs_import.py"), "--instances", "20", "--json"],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert (result["benchmark"], result["instances"], result["database"]) == ("pacs_import", 20, "sqlite")
    assert (result["found"], result["imported"], result["skipped"]) == (20, 20, 0)
    assert list(result["stages"]) == [*STAGES, "end_to_end"]
    for stage, figures in result["stages"].items():
        assert figures["instances"] == 20, stage
        assert figures["seconds"] > 0 and figures["instances_per_s"] > 0, stage
    assert set(result["rss"]) == {"before_mb", "at_10pct_mb", "at_50pct_mb", "at_100pct_mb", "peak_mb"}
    assert result["rss"]["peak_mb"] >= result["rss"]["at_100pct_mb"] > 0
    assert {"model", "logical_cpus", "avx2", "avx512f"} <= set(result["cpu"])
