"""How values read on every page: finding names, durations, times, numbers, and one-shot messages.

Every user-supplied string (file names, comments, usernames) is shown with `st.text`/`plain()` or in a
dataframe, never inside markdown.
"""

from __future__ import annotations

import datetime as dt
import re

import streamlit as st

_FLASH_KEY = "_flash"
_FLASH_ICONS = {
    "success": ":material/check_circle:",
    "error": ":material/error:",
    "warning": ":material/warning:",
    "info": ":material/info:",
}


def pretty(finding: str) -> str:
    """'Pleural_Thickening' -> 'Pleural Thickening'."""
    return finding.replace("_", " ")


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def when_text(moment: dt.datetime | None) -> str:
    return "—" if moment is None else moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def number_text(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


_MARKDOWN_SPECIALS = "\\`*_{}[]()#+.!|<>~:$"
# "-" and "=" are markup only where a line starts (a list item, a rule, a heading underline); inside a
# word they stay as typed, so "tiny-base" reads the same in a message and in the text a test looks for.
_LINE_START_MARK = re.compile(r"(^|\n)([ \t]*)([-=])")


def plain(text: object) -> str:
    """`text` escaped so that st.markdown/st.caption/labels show it literally (no links, images, HTML)."""
    escaped = "".join("\\" + c if c in _MARKDOWN_SPECIALS else c for c in str(text))
    return _LINE_START_MARK.sub(r"\1\2\\\3", escaped)


def code(text: object) -> str:
    """`text` as a markdown code span: shown literally in a monospace font (paths, hashes)."""
    text = str(text).replace("\n", " ")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def flash(kind: str, text: str) -> None:
    """A message that survives the rerun that follows a button (kind: success | error | warning | info)."""
    st.session_state[_FLASH_KEY] = (kind, text)


def show_flash() -> None:
    kind, text = st.session_state.pop(_FLASH_KEY, (None, None))
    if kind is None:
        return
    getattr(st, kind if kind in _FLASH_ICONS else "info")(text, icon=_FLASH_ICONS.get(kind))
