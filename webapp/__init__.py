"""The Streamlit UI. Importing it configures the web process: numba kernels are used only when something
in the process compiled them already (core.jit), so no page waits ~1.4 s for numba on a first request."""

from core import jit

jit.compile_on_first_use(False)
