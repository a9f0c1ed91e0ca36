"""What the web process loads: its modules leave the heavy libraries of training and batch work alone.

A page's first run in a new process pays for every import it makes: torch (~2.5 s, ~300 MB), sklearn
and scipy (~1.5 s), numba (~1.4 s with its compiled kernels). The web app serves with OpenVINO from its
cache, computes kappa from counts and decodes with Pillow, so none of them is needed to show a page.
"""

from __future__ import annotations

import json
import subprocess
import sys

from core.paths import REPO_ROOT

HEAVY = ("torch", "torchvision", "sklearn", "scipy", "numba")

_IMPORT_EVERY_WEB_MODULE = """
import importlib, json, pkgutil, sys
import webapp
for module in pkgutil.iter_modules(webapp.__path__):
    if module.name != "app" and not module.ispkg:  # app.py draws the navigation when imported
        importlib.import_module("webapp." + module.name)
print(json.dumps(sorted(name for name in sys.argv[1:] if name in sys.modules)))
"""


def test_no_web_module_imports_the_libraries_of_training_and_batch_work() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_EVERY_WEB_MODULE, *HEAVY],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, check=True,
    )  # fmt: skip
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
