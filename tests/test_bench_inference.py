"""Pieces of `python -m core bench inference` that can be checked quickly: FLOP count and CPU features."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.bench.inference import _dense_macs
from core.cpu_info import cpu_description
from core.inference.models import create_model


def test_densenet121_at_224_is_2_83_giga_multiply_accumulates():
    # torchvision's model card gives 2.83 "GFLOPS" for DenseNet-121, counted as multiply-accumulates.
    assert _dense_macs(create_model().eval(), 224) == pytest.approx(2.834e9, rel=0.005)


def test_cpu_features_are_read_from_the_operating_system():
    described = cpu_description()
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    flags = next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")).split()
    assert described["source"] == "/proc/cpuinfo"
    for name, present in described["features"].items():
        assert present == (name in flags), name
    assert described["amx"] == any(flag.startswith("amx") for flag in flags)
