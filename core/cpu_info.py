"""What this CPU can do, read from the operating system (never assumed): for benchmarks and cache keys."""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path

__all__ = ["cpu_description"]

# The instruction-set extensions that decide how fast a convolution runs, as /proc/cpuinfo names them.
_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@lru_cache(maxsize=1)
def cpu_description() -> dict:
    """{"model", "logical_cpus", "features": {name: bool}, "amx": bool, "source"}."""
    model, flags, source = platform.processor() or platform.machine(), set(), "platform"
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
            source = "/proc/cpuinfo"
    return {
        "model": model,
        "logical_cpus": os.cpu_count() or 1,
        "features": {name: name in flags for name in _FEATURES},
        "amx": any(flag.startswith("amx") for flag in flags),
        "source": source,
    }
