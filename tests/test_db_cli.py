"""`python -m db bench scale`: the scale benchmark's command-line name, with its own arguments."""

from __future__ import annotations

import subprocess
import sys

from core.paths import REPO_ROOT
from core.settings import subprocess_env


def test_db_bench_scale_runs_the_scale_benchmark_with_its_arguments() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "db", "bench", "scale", "--help"],
        cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Scale benchmark: every page of the app" in done.stdout  # bench_scale.py's own help
    assert "--reviews" in done.stdout and "--backends" in done.stdout
    wrong = subprocess.run(
        [sys.executable, "-m", "db", "bench", "scale", "--images", "many"],
        cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert wrong.returncode == 2 and "invalid int value: 'many'" in wrong.stderr
