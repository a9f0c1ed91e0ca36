"""Device choice and description (core.devices), torchrun ranks (core.distributed) and the private
runtime folders (core.paths), all read from the environment through core.settings."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import torch

from core import paths
from core.devices import DeviceError, describe_worker_device, device_description, resolve_device
from core.distributed import DistInfo, env_dist_info


def test_cpu_is_resolved_and_described() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    threads = torch.get_num_threads()
    text = device_description(torch.device("cpu"))
    assert text == f"CPU ({threads} thread{'s' if threads > 1 else ''})"
    assert device_description(torch.device("cpu"), world_size=2) == text + " x 2 processes"
    assert resolve_device("cpu", DistInfo(rank=1, world_size=2, local_rank=1)) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusals of a machine without a GPU")
def test_without_a_gpu() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="no GPU is available"):
        resolve_device("cuda")
    kind, text = describe_worker_device("auto", nproc=2)
    assert kind == "cpu" and text == f"CPU ({torch.get_num_threads()} threads) x 2 processes"
    assert describe_worker_device("cuda")[0] == "cpu"  # the worker falls back; it never fails here


def test_an_unknown_device_is_one_sentence() -> None:
    with pytest.raises(DeviceError, match="Unknown device 'gpu0'"):
        resolve_device("gpu0")


def test_torchrun_ranks_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert env_dist_info() == DistInfo()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = env_dist_info()
    assert info == DistInfo(rank=3, world_size=4, local_rank=1) and info.enabled and not info.is_main
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process: no process group
    assert not env_dist_info().enabled


def test_runtime_folders_are_private(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    home = tmp_path / "not-yet" / "home"
    monkeypatch.setenv("CHEXNET_HOME", str(home))
    assert paths.chexnet_home() == home
    for folder in (home, paths.models_dir(), paths.cache_dir()):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert folder.parent == home


def test_the_model_override_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CHEXNET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CHEXNET_MODEL", str(tmp_path / "elsewhere"))
    assert paths.active_model_dir() == tmp_path / "elsewhere"
    monkeypatch.setenv("CHEXNET_MODEL", " ")  # blank: as if unset
    assert paths.active_model_dir() == paths.BUNDLED_MODEL_DIR
