"""Every environment variable is read in core/settings.py, and the README lists each of them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from core import settings
from core.paths import REPO_ROOT

PACKAGES = ("core", "db", "jobs", "webapp")


def _reads_environment(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv"):
            if isinstance(node.value, ast.Name) and node.value.id == "os":
                lines.append(node.lineno)
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            if any(alias.name in ("environ", "getenv") for alias in node.names):
                lines.append(node.lineno)
    return lines


def test_only_the_settings_module_reads_the_environment():
    offenders = []
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            if path == REPO_ROOT / "core" / "settings.py":
                continue
            lines = _reads_environment(ast.parse(path.read_text(), str(path)))
            offenders += [f"{path.relative_to(REPO_ROOT)}:{line}" for line in lines]
    assert offenders == [], "read the environment through core.settings: " + ", ".join(offenders)


def test_readme_lists_every_environment_variable():
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme[readme.index("## Environment variables") :]
    listed = set(re.findall(r"^\| `([A-Z_]+)` \|", table, flags=re.M))
    assert listed == {var.name for var in settings.ALL}


def test_blank_values_fall_back_to_defaults(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CHEXNET_WORKER_GPUS", "  ")
    monkeypatch.setenv("CHEXNET_WORKER_DEVICE", "")
    assert settings.worker_gpus() == 1
    assert settings.worker_device() == "auto"
    monkeypatch.setenv("CHEXNET_WORKER_GPUS", "four")
    assert settings.worker_gpus() == 1
    monkeypatch.setenv("CHEXNET_WORKER_GPUS", "4")
    assert settings.worker_gpus() == 4


def test_torchrun_ranks_only_for_several_processes(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("RANK", raising=False)
    assert settings.torchrun_ranks() is None
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert settings.torchrun_ranks() is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert settings.torchrun_ranks() == (1, 2, 1)


def test_chexnet_home_follows_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("CHEXNET_HOME", str(tmp_path / "home"))
    assert settings.chexnet_home() == tmp_path / "home"
    monkeypatch.delenv("CHEXNET_HOME")
    assert settings.chexnet_home() == REPO_ROOT / "var"
