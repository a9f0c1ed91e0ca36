"""numba kernels compiled on first use (numba is imported only then), once per process, and used only
after they computed a known answer correctly. Without numba, or when a kernel fails its check, callers
get None and take their pure-Python/Pillow path, which gives the same result bit for bit.

Compiling (numba's import plus its cached code) costs ~1.4 s once per process and saves ~15 ms per
image: worth it for batch work, not for a web server answering one image per request, whose first page
would wait for it. `compile_on_first_use(False)` (the web app) makes a kernel that nothing in the
process compiled yet answer None instead."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

Kernel = Callable[..., Any]

_compile_on_first_use = True


def compile_on_first_use(enabled: bool) -> bool:
    """Process-wide: whether `LazyKernel.get()` compiles a kernel not compiled yet; returns the previous
    setting."""
    global _compile_on_first_use
    previous, _compile_on_first_use = _compile_on_first_use, enabled
    return previous


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
        """The compiled kernel, or None (no numba, a failed check, or not compiled and not compiling
        on first use)."""
        if not self._compiled:
            if not _compile_on_first_use:
                return None
            with self._lock:
                if not self._compiled:
                    self._kernel = compile_checked(self._function, self._check)
                    self._compiled = True
        return self._kernel
