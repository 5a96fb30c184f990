"""Model output is untrusted: make it plain text inside our Markdown reply."""

from __future__ import annotations

import html
import re
from typing import Final

_URL: Final = re.compile(r"\b(?:https?|javascript|data|vbscript|file):\S*", re.IGNORECASE)
_MARKDOWN_SPECIALS: Final = re.compile(r"([\\`*_{}\[\]()<>#+!|~>-])")
_INVISIBLE: Final = re.compile("[\u0000-\u0008\u000b-\u001f\u007f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def plain(text: str) -> str:
    """Text that renders as itself: no links, images, HTML or Markdown formatting, no bidi overrides."""
    text = _INVISIBLE.sub("", text)
    text = _URL.sub("[link removed]", text)
    text = html.escape(text, quote=False)
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text)


def quote_block(quote: str) -> str:
    """A quote as bold Markdown lines, each neutralised."""
    lines = [line.strip() for line in quote.splitlines() if line.strip()]
    return "  \n".join(f"**{plain(line)}**" for line in lines)
