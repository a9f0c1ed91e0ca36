"""numba kernels compiled on first use (numba is imported only then), once per process, and used only
after they computed a known answer correctly. Without numba, or when a kernel fails its check, callers
get None and take their pure-Python/Pillow path."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

Kernel = Callable[..., Any]


def compile_checked(function: Kernel, check: Callable[[Kernel], bool]) -> Kernel | None:
    """`function` compiled by numba (nogil), or None when numba is missing or the result fails `check`."""
    try:
        import numba
    except ImportError:
        return None
    for cache in (True, False):  # cache=True keeps the compiled code in __pycache__ across processes
        try:
            kernel = numba.njit(cache=cache, nogil=True)(function)
            if check(kernel):
                return kernel
        except Exception:  # noqa: BLE001 - e.g. no writable cache folder; then try without, then no numba
            continue
    return None


class LazyKernel:
    """`compile_checked(function, check)` run by the first caller of `get()`, under a lock."""

    def __init__(self, function: Kernel, check: Callable[[Kernel], bool]) -> None:
        self._function, self._check = function, check
        self._lock = threading.Lock()
        self._compiled = False
        self._kernel: Kernel | None = None

    def get(self) -> Kernel | None:
        if not self._compiled:
            with self._lock:
                if not self._compiled:
                    self._kernel = compile_checked(self._function, self._check)
                    self._compiled = True
        return self._kernel
