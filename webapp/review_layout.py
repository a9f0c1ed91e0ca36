"""The reading layout of the Review page: the X-ray fills the height of the window, the findings and
Save & next beside it, all without scrolling from 1024x768 up (tests/test_browser_reading_layout.py
measures the element boxes in Chromium).

The stage's height is set here in CSS from the viewport height minus what is above it (the page's slim
top row beside the app header's » button, and the viewer's toolbar); the figure gets the same height in
pixels once the browser has said its window's height (`?vh=`, below), and until then is stretched to
its container. The answer column has a fixed width
(two columns of seven finding buttons); the viewer takes the rest, and the square X-ray is then limited
by the narrower of its two sides.
"""

from __future__ import annotations

import streamlit as st

ANSWER_WIDTH = 400  # px: two columns of finding buttons with their names, hotkeys and "?" whole
# px above the stage: the page's top margin 8, top row 44 (beside the app header's » button), toolbar 40,
# the gaps; and a margin below it.
STAGE_OFFSET = 120

_CSS = f"""<style>
.stMainBlockContainer {{padding: 0.5rem 1rem 1rem 1rem; max-width: none;}}
[data-testid="stHeader"] {{background: transparent;}}
[data-testid="stHeader"], [data-testid="stHeader"] div {{pointer-events: none !important;}}
[data-testid="stHeader"] button, [data-testid="stStatusWidget"] {{pointer-events: auto !important;}}
.st-key-review_topbar {{padding-left: 2.75rem; padding-right: 5.5rem;}}
.st-key-review_topbar h1 {{font-size: 1.25rem; padding: 0; margin: 0; white-space: nowrap;}}
.st-key-review_topbar [data-testid="stMetric"] > div {{display: flex; flex-direction: row; gap: 0.4rem;
  align-items: baseline;}}
.st-key-review_topbar [data-testid="stMetricValue"] {{font-size: 1rem;}}
.st-key-review_topbar [data-testid="stMetricValue"] > div {{font-size: 1rem; line-height: 1.6rem;}}
.st-key-review_topbar [data-testid="stMetricLabel"] {{font-size: 0.8rem;}}
.st-key-review_topbar [data-testid="stMetricLabel"] p {{font-size: 0.8rem;}}
.st-key-review_messages [data-testid="stAlert"] > div {{padding: 0.3rem 0.6rem; font-size: 0.85rem;}}
.st-key-review_stage {{height: calc(100vh - {STAGE_OFFSET}px) !important; flex: none !important;}}
.st-key-review_stage_pair {{height: calc(100vh - {STAGE_OFFSET}px) !important; flex: none !important;}}
.st-key-review_stage_prior, .st-key-review_stage_current {{height: calc(100vh - {STAGE_OFFSET}px) !important;
  flex: none !important; min-width: 0;}}
.st-key-review_toolbar button {{min-height: 2rem; padding: 0.15rem 0.5rem;}}
.st-key-review_toolbar [aria-label^="Shortcut"] {{display: none;}}
.st-key-review_grid button {{min-height: 2rem; padding: 0.1rem 0.4rem; font-size: 0.85rem;}}
.st-key-review_grid button p {{font-size: 0.85rem; white-space: nowrap;}}
.st-key-review_title h3 {{font-size: 1.1rem; padding: 0; margin: 0; line-height: 1.5rem;}}
.st-key-review_title [data-testid="stHeading"] > div {{margin: 0;}}
.st-key-review_answer_column [data-testid="stCaptionContainer"] p {{margin: 0;}}
.st-key-review_actions button, .st-key-review_marks button {{min-height: 2rem; padding: 0.1rem 0.6rem;}}
</style>"""


# The window's height, for the figure's own height: a chart sized by its container (height="stretch") is
# drawn twice on every new image (at its default height, then measured), a fifth of a second more from
# Save & next to the next image on this CPU. This script keeps `?vh=<window height>` in the address,
# which every later rerun sends; the first run before it is known stretches the chart instead.
_VIEWPORT_SCRIPT = """<script>
(() => {
  const sync = () => {
    const url = new URL(window.location.href);
    const height = String(window.innerHeight);
    if (url.searchParams.get("vh") !== height) {
      url.searchParams.set("vh", height);
      window.history.replaceState(window.history.state, "", url);
    }
  };
  sync();
  if (!window.chexnetReviewViewport) {
    window.chexnetReviewViewport = true;
    window.addEventListener("resize", sync);
  }
})();
</script>"""
MIN_STAGE, MAX_VIEWPORT = 240, 4320


def reading_css() -> None:
    st.html(_CSS)  # styles only: Streamlit gives it no room on the page


def viewport_probe() -> None:
    """The script above; drawn in the slim top row, where an empty element costs no height."""
    st.html(_VIEWPORT_SCRIPT, unsafe_allow_javascript=True, width=1)


def stage_height() -> int | None:
    """The stage's height in px (the CSS one) once the browser has said its window's height, else None."""
    try:
        viewport = int(st.query_params.get("vh", ""))
    except ValueError:
        return None
    if not 0 < viewport <= MAX_VIEWPORT:
        return None
    return max(MIN_STAGE, viewport - STAGE_OFFSET)
