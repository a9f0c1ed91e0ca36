"""The page formatters: markdown escaping of user strings, code spans, finding names, durations."""

from __future__ import annotations

import re

import pytest

from webapp.formatting import code, duration_text, plain, pretty

UNESCAPED = re.compile(r"(?<!\\)[\[\]()!<>`*_:]")  # a markup character without its backslash


@pytest.mark.parametrize(
    "text",
    [
        "[Session expired - click](https:evil.example).png",
        "![t](https:tracker.example).png",
        "<img src=x onerror=alert(1)>",
        "**bold** _it_ `code` :material/home: :red[red] $x^2$",
        "www.evil.example and someone@mail.example",
    ],
)
def test_plain_leaves_no_markup_character_unescaped(text):
    escaped = plain(text)
    assert not UNESCAPED.search(escaped), escaped
    assert "www." not in escaped and "mail.example" not in escaped  # no bare-URL or e-mail autolinks
    assert re.sub(r"\\(.)", r"\1", escaped) == text  # removing the escapes gives the text back


def test_plain_escapes_hyphens_only_where_a_line_starts():
    assert plain("tiny-base") == "tiny-base"
    assert plain("- item\n  - nested\n=== x") == "\\- item\n  \\- nested\n\\=== x"


def test_code_spans_hold_backticks():
    assert code("/models/a") == "`/models/a`"
    assert code("a`b") == "``a`b``"
    assert code("`start") == "`` `start ``"
    assert code("two\nlines") == "`two lines`"


def test_pretty_and_durations():
    assert pretty("Pleural_Thickening") == "Pleural Thickening"
    assert [duration_text(s) for s in (None, 42, 125, 7260)] == ["—", "42 s", "2 min 05 s", "2 h 01 min"]
