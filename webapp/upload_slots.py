"""A process-wide cap on heavy work per upload (decoding, the network, a full-resolution overlay).

Each such step holds large temporary arrays; with every tab free to start one at once, a handful of
large uploads could exhaust the server's memory. At most CHEXNET_UPLOAD_SLOTS run at a time; the rest
wait their turn, saying so.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from core import settings

WAITING_TEXT = "Waiting for other uploads to finish…"


@st.cache_resource(show_spinner=False)
def _slots() -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(settings.upload_slots())


@contextmanager
def upload_slot() -> Iterator[None]:
    """Hold one slot for the block (in a script run: a wait shows a spinner)."""
    slots = _slots()
    if not slots.acquire(blocking=False):
        with st.spinner(WAITING_TEXT):
            slots.acquire()
    try:
        yield
    finally:
        slots.release()


def upload_slots_for_later() -> threading.BoundedSemaphore:
    """For work done after the script run, on another thread (a download's data): the same slots, taken
    here because Streamlit's caches are only reachable from a script run. `with` it; waiting shows nothing."""
    return _slots()
